"""The audit (``pipeline.ops.audit``) and its command, against sources built by hand in moto.

Each test builds the bucket, the table, the DLQ ledger and the DLQ itself (moto in process) so
that every class of the audit has a known member: what the workflow would have written, but
written here, so a case the workflow rarely produces (a stale record, a raw S3 notification on
the DLQ, an S3 Inventory report) is as easy to pin as a common one.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from pipeline import aws
from pipeline.cli import main
from pipeline.names import SIDECAR_PREFIX
from pipeline.ops.audit import CLASSES, AuditError, AuditReport, audit
from pipeline.ops.audit import dlq as audit_dlq
from pipeline.ops.audit import run as audit_run
from pipeline.ops.reindex import ObjectRef, reindex_record
from pipeline.ops.target import Target
from pipeline.workflow.dlq import dlq_message, ledger_key, record_events, s3_ref
from pipeline.workflow.table import local_ledger_definition, local_table_definition

BUCKET = "images"
INVENTORY_BUCKET = "inventories"
TABLE = "metadata"
LEDGER = "ledger"
T0 = "2026-01-01T00:00:00.000Z"
T1 = "2026-01-01T00:00:01.000Z"
T2 = "2026-01-01T00:00:02.000Z"
INVENTORY_SCHEMA = (
    "Bucket, Key, VersionId, IsLatest, IsDeleteMarker, Size, LastModifiedDate, ETag, StorageClass"
)


@pytest.fixture(autouse=True)
def no_long_polling(monkeypatch: pytest.MonkeyPatch) -> None:
    """moto in process really waits for a long poll: the DLQ peek's last, empty receive."""
    monkeypatch.setattr(audit_dlq, "DLQ_WAIT_SECONDS", 0)


def _event(key: str, when: str, name: str = "ObjectCreated:Put") -> dict[str, Any]:
    """An S3 event record as moto sends it (no sequencer) for ``key`` at ``when``."""
    return {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "eventName": name,
        "eventTime": when,
        "s3": {"bucket": {"name": BUCKET}, "object": {"key": key.replace(" ", "+")}},
    }


@dataclass
class World:
    """The target's resources in moto, and helpers that put one thing in each."""

    queue_url: str
    dlq_url: str
    versioned: bool = False
    etags: dict[str, str] = field(default_factory=dict)

    @property
    def target(self) -> Target:
        return Target(
            bucket=BUCKET,
            queue_url=self.queue_url,
            dlq_url=self.dlq_url,
            table=TABLE,
            ledger_table=LEDGER,
            region="us-east-1",
        )

    def put(self, key: str, body: bytes = b"DICM", bucket: str = BUCKET) -> dict[str, Any]:
        resp = aws.client("s3").put_object(Bucket=bucket, Key=key, Body=body)
        self.etags[key] = resp["ETag"].strip('"')
        return {"etag": self.etags[key], "version_id": resp.get("VersionId")}

    def record(
        self,
        key: str,
        *,
        etag: str | None = None,
        status: str = "indexed",
        when: str = T0,
        version_id: str | None = None,
        orthanc_instance_id: str | None = None,
        sidecar: str | None = None,
    ) -> None:
        item: dict[str, Any] = {
            "s3_key": {"S": key},
            "status": {"S": status},
            "event_order": {"S": "T" + when},
            "event_time": {"S": when},
            "indexed_at": {"S": when},
        }
        if status == "indexed":
            item["etag"] = {"S": etag or self.etags[key]}
            item["size"] = {"N": "4"}
            item["StudyInstanceUID"] = {"S": "1.2.3"}
        if version_id:
            item["version_id"] = {"S": version_id}
        if orthanc_instance_id:
            item["orthanc_instance_id"] = {"S": orthanc_instance_id}
        if sidecar:
            item["dicom_json_s3"] = {"S": sidecar}
        aws.client("dynamodb").put_item(TableName=TABLE, Item=item)

    def ledger(self, key: str, code: str, when: str = T1) -> None:
        aws.client("dynamodb").put_item(
            TableName=LEDGER,
            Item={
                "s3_key": {"S": key},
                "event_order": {"S": "T" + when},
                "code": {"S": code},
                "failed_at": {"S": when},
                "expires_at": {"N": "9999999999"},
            },
        )

    def dlq_v1(self, key: str, code: str, when: str = T1) -> None:
        message = dlq_message(
            code=code,
            message="what and where",
            s3=s3_ref(BUCKET, key, self.etags.get(key), None),
            record=_event(key, when),
            failed_at=when,
            execution="arn:aws:states:us-east-1:123456789012:execution:ingest:x",
            state="ParseHeaders",
        )
        self.send_dlq(json.dumps(message))

    def dlq_raw(self, key: str, when: str = T1) -> None:
        """What the ingest queue's redrive moves to the DLQ: the notification itself."""
        self.send_dlq(json.dumps({"Records": [_event(key, when)]}))

    def send_dlq(self, body: str) -> None:
        aws.client("sqs").send_message(QueueUrl=self.dlq_url, MessageBody=body)

    def dlq_bodies(self) -> list[str]:
        """Every body on the DLQ, received and deleted (after the audit: all must be there)."""
        sqs = aws.client("sqs")
        bodies: list[str] = []
        while messages := sqs.receive_message(
            QueueUrl=self.dlq_url, MaxNumberOfMessages=10, WaitTimeSeconds=0
        ).get("Messages", []):
            for m in messages:
                bodies.append(m["Body"])
                sqs.delete_message(QueueUrl=self.dlq_url, ReceiptHandle=m["ReceiptHandle"])
        return bodies


@pytest.fixture
def world(aws_env: None) -> Iterator[World]:
    from moto import mock_aws

    with mock_aws():
        s3, ddb, sqs = aws.client("s3"), aws.client("dynamodb"), aws.client("sqs")
        s3.create_bucket(Bucket=BUCKET)
        ddb.create_table(**local_table_definition(TABLE))
        ddb.create_table(**local_ledger_definition(LEDGER))
        queue = sqs.create_queue(QueueName="ingest")["QueueUrl"]
        dlq = sqs.create_queue(QueueName="dlq")["QueueUrl"]
        yield World(queue_url=queue, dlq_url=dlq)


def _by_key(report: AuditReport) -> dict[str | None, Any]:
    return {e.key: e for e in report.entries}


# -- the classes ----------------------------------------------------------------------------------
def test_every_object_record_and_failure_falls_in_exactly_one_class(world: World) -> None:
    # Given one key of each kind
    world.put("orthanc/indexed.dcm")
    world.record(
        "orthanc/indexed.dcm", orthanc_instance_id="aaaaaaaa-bbbbbbbb-cccccccc-dddddddd-eeeeeeee"
    )
    world.put("orthanc/stale.dcm", b"the second upload")
    world.record("orthanc/stale.dcm", etag="0" * 32)  # the record of an earlier upload
    world.put("orthanc/failed.dcm", b"not dicom")
    world.ledger("orthanc/failed.dcm", "NOT_DICOM")  # the workflow's two traces of one failure
    world.dlq_v1("orthanc/failed.dcm", "NOT_DICOM")
    world.put("orthanc/raw.dcm")
    world.dlq_raw("orthanc/raw.dcm")  # a batch the ingest queue gave up on
    world.put("orthanc/missing.dcm")
    world.put("orthanc/recreated.dcm")  # deleted, then put again: no event seen
    world.record("orthanc/recreated.dcm", status="deleted")
    world.record("orthanc/orphan.dcm", etag="1" * 32)
    world.record("orthanc/deleted.dcm", status="deleted")
    world.put("orthanc/fixed.dcm")  # failed once, then overwritten and indexed
    world.ledger("orthanc/fixed.dcm", "TRUNCATED", when=T0)
    world.record("orthanc/fixed.dcm", when=T1)
    # and objects the pipeline never indexes, under Orthanc's prefix and outside it
    for key in (
        "orthanc/x.dcm.head",
        "dicom-json/indexed.dcm/T1.json.gz",
        "workflow-staging/b.json",
    ):
        world.put(key)
    world.put("orthanc/notes.txt")

    # When the target is audited
    report = audit(world.target)

    # Then each key is in the one class that explains it
    entries = _by_key(report)
    assert {k: e.klass for k, e in entries.items()} == {
        "orthanc/indexed.dcm": "indexed",
        "orthanc/fixed.dcm": "indexed",
        "orthanc/stale.dcm": "stale",
        "orthanc/failed.dcm": "failed",
        "orthanc/raw.dcm": "failed",
        "orthanc/missing.dcm": "missing",
        "orthanc/recreated.dcm": "missing",
        "orthanc/orphan.dcm": "orphan_record",
        "orthanc/deleted.dcm": "tombstone",
    }
    assert report.counts() == {
        "indexed": 2,
        "stale": 1,
        "failed": 2,
        "missing": 2,
        "orphan_record": 1,
        "dangling_sidecar": 0,
        "tombstone": 1,
        "orthanc_not_indexed": 0,
    }
    assert list(report.counts()) == list(CLASSES)
    assert report.problems() == 3
    # and what explains it is on the entry
    assert entries["orthanc/stale.dcm"].etag == world.etags["orthanc/stale.dcm"]
    assert entries["orthanc/stale.dcm"].record_etag == "0" * 32
    assert entries["orthanc/failed.dcm"].code == "NOT_DICOM"
    assert entries["orthanc/failed.dcm"].failed_at == T1
    assert entries["orthanc/failed.dcm"].failure_source == "dlq+ledger"  # one failure, two traces
    assert entries["orthanc/raw.dcm"].code == "UNKNOWN"
    assert entries["orthanc/raw.dcm"].failure_source == "dlq-raw"
    assert entries["orthanc/recreated.dcm"].status == "deleted"
    assert entries["orthanc/missing.dcm"].size == 4 and entries["orthanc/missing.dcm"].last_modified
    assert entries["orthanc/indexed.dcm"].orthanc_instance_id.startswith("aaaaaaaa-")
    assert (
        entries["orthanc/fixed.dcm"].code is None
        and "TRUNCATED" in entries["orthanc/fixed.dcm"].note
    )
    # and the objects under Orthanc's prefix that are not .dcm are counted, not audited (those
    # outside it, the sidecars and staged items, are not read at all)
    assert report.not_audited == {
        "Orthanc header copies (.dcm.head)": 1,
        "other objects (not .dcm)": 1,
    }
    # and the sources say what they held
    assert report.sources["s3"] == {
        "from": "list",
        "bucket": BUCKET,
        "prefix": "orthanc/",
        "objects": 7,
    }
    assert report.sources["table"]["items"] == 6
    assert report.sources["ledger"]["entries"] == 2
    assert report.sources["dlq"] == {"messages": 2, "v1": 1, "raw": 1, "unreadable": 0}
    assert report.sources["orthanc"] == {"skipped": "the target names no Orthanc"}


def test_objects_outside_orthancs_prefix_are_not_audited(world: World) -> None:
    # Given one of Orthanc's objects, indexed, and .dcm objects outside its prefix that no
    # record names: one at the bucket's root (stored before Orthanc had a prefix), one in
    # another folder, and a sidecar
    world.put("orthanc/a.dcm")
    world.record("orthanc/a.dcm")
    for key in ("legacy.dcm", "elsewhere/b.dcm", f"{SIDECAR_PREFIX}orthanc/a.dcm/T1.json.gz"):
        world.put(key)
    # and an inventory of them all (S3 Inventory reports the whole bucket)
    inventory = _inventory(world, [[_row(k, e) for k, e in world.etags.items()]])

    # When audited, from a listing and from the inventory
    for report in (audit(world.target), audit(world.target, inventory_manifest=inventory)):
        # Then only Orthanc's object is audited: the others are neither missing nor counted
        assert {k: e.klass for k, e in _by_key(report).items()} == {"orthanc/a.dcm": "indexed"}
        assert report.sources["s3"]["objects"] == 1
        assert report.not_audited == {}
        assert report.problems() == 0


def test_a_failure_counts_only_when_it_is_newer_than_the_record(world: World) -> None:
    # Given two stale records: one whose newer upload failed, one with an older failure
    for key in ("orthanc/newer-failure.dcm", "orthanc/older-failure.dcm"):
        world.put(key, b"the second upload")
        world.record(key, etag="0" * 32, when=T1)
    world.ledger("orthanc/newer-failure.dcm", "TRUNCATED", when=T2)
    world.ledger("orthanc/older-failure.dcm", "TRUNCATED", when=T0)

    # When audited
    entries = _by_key(audit(world.target))

    # Then the newer failure explains its key; the older one does not (the record replaced it)
    assert entries["orthanc/newer-failure.dcm"].klass == "failed"
    assert entries["orthanc/newer-failure.dcm"].code == "TRUNCATED"
    assert entries["orthanc/newer-failure.dcm"].failure_source == "ledger"  # no DLQ message found
    assert entries["orthanc/older-failure.dcm"].klass == "stale"
    assert entries["orthanc/older-failure.dcm"].code is None


def test_a_reindex_failure_pairs_with_its_ledger_entry(world: World) -> None:
    # Given a reindex of an object without a record that failed: the v1 message carries the
    # synthetic record (with its reindex marker), and the workflow noted the failure in the
    # ledger under the order it gave the event (redrive's order: after + R + its time)
    world.put("orthanc/broken.dcm")
    record = reindex_record(
        BUCKET, ObjectRef("orthanc/broken.dcm"), after=None, now=datetime(2026, 1, 1)
    )
    (event,) = record_events("m", record)
    message = dlq_message(
        code="TRUNCATED",
        message="what and where",
        s3=s3_ref(BUCKET, "orthanc/broken.dcm", None, None),
        record=record,
        failed_at=T1,
        execution="arn:aws:states:us-east-1:123456789012:execution:ingest:x",
        state="ParseHeaders",
    )
    world.send_dlq(json.dumps(message))
    aws.client("dynamodb").put_item(
        TableName=LEDGER,
        Item={
            **ledger_key("orthanc/broken.dcm", event.order, now=0),
            "code": {"S": "TRUNCATED"},
            "failed_at": {"S": T1},
        },
    )

    # When audited
    entry = _by_key(audit(world.target))["orthanc/broken.dcm"]

    # Then the message and the entry are one failure, seen in both places
    assert entry.klass == "failed" and entry.code == "TRUNCATED"
    assert entry.failure_source == "dlq+ledger"


def test_a_failed_delete_of_an_indexed_record_is_failed_not_orphaned(world: World) -> None:
    # Given an indexed record whose object was deleted, and the delete event in the DLQ
    world.record("orthanc/gone.dcm", etag="2" * 32, when=T0)
    world.dlq_raw("orthanc/gone.dcm", when=T1)

    # When audited / Then it is accounted for by the DLQ: a redrive would write the tombstone
    report = audit(world.target)
    assert _by_key(report)["orthanc/gone.dcm"].klass == "failed"
    assert report.problems() == 0


def test_the_dlq_is_read_without_losing_a_message(world: World) -> None:
    # Given 23 DLQ messages (more than one receive's 10): v1, raw, a test event, and junk
    for i in range(10):
        world.put(f"orthanc/v1-{i}.dcm")
        world.dlq_v1(f"orthanc/v1-{i}.dcm", "MALFORMED")
    for i in range(10):
        world.put(f"orthanc/raw-{i}.dcm")
        world.dlq_raw(f"orthanc/raw-{i}.dcm")
    world.send_dlq(json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent"}))
    world.send_dlq("not json")
    world.send_dlq(json.dumps({"schema": "dicom-pipeline/dlq/v1", "s3": {}}))
    sent = 23

    # When audited twice
    first = audit(world.target)
    second = audit(world.target)

    # Then both saw every message and classed every key failed
    for report in (first, second):
        assert report.counts()["failed"] == 20
        assert report.sources["dlq"] == {"messages": sent, "v1": 10, "raw": 10, "unreadable": 2}
        assert any("2 DLQ messages name no object" in n for n in report.notes)
    # and every message is still on the DLQ, visible at once
    attrs = aws.client("sqs").get_queue_attributes(
        QueueUrl=world.dlq_url, AttributeNames=["ApproximateNumberOfMessages"]
    )["Attributes"]
    assert int(attrs["ApproximateNumberOfMessages"]) == sent
    assert len(world.dlq_bodies()) == sent


def test_without_a_ledger_failures_come_from_the_dlq_alone(world: World) -> None:
    # Given a target without a ledger table and a v1 failure on the DLQ
    world.put("orthanc/a.dcm")
    world.dlq_v1("orthanc/a.dcm", "STORAGE_ENCODED")
    target = Target(bucket=BUCKET, queue_url=world.queue_url, dlq_url=world.dlq_url, table=TABLE)

    # When audited / Then the failure is found, and the report says where failures came from
    report = audit(target)
    assert _by_key(report)["orthanc/a.dcm"].code == "STORAGE_ENCODED"
    assert _by_key(report)["orthanc/a.dcm"].failure_source == "dlq"
    assert "ledger" not in report.sources
    assert any("no DLQ ledger" in n for n in report.notes)


def test_a_key_that_changes_during_the_audit_is_read_again(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an object whose record is written after the table was scanned (the pipeline at work)
    world.put("orthanc/late.dcm")
    real_scan = audit_run.scan_table

    def scan_then_index(table: str, phase: Any) -> Any:
        records = real_scan(table, phase)
        world.record("orthanc/late.dcm", when=T1)
        return records

    monkeypatch.setattr(audit_run, "scan_table", scan_then_index)

    # When audited / Then the suspect key was read again and is indexed, not missing
    report = audit(world.target)
    assert _by_key(report)["orthanc/late.dcm"].klass == "indexed"
    assert report.rechecked == 1
    assert report.problems() == 0


def test_progress_is_reported_per_phase_in_the_callers_thread(world: World) -> None:
    # Given 25 objects, one of them missing, and a DLQ message
    for i in range(25):
        world.put(f"orthanc/{i:02}.dcm")
        if i:
            world.record(f"orthanc/{i:02}.dcm")
    world.dlq_raw("orthanc/24.dcm")
    calls: list[tuple[str, int, int | None, threading.Thread]] = []

    # When audited with a progress callback
    audit(
        world.target,
        progress=lambda phase, done, total: calls.append(
            (phase, done, total, threading.current_thread())
        ),
    )

    # Then every phase was reported, last with what it read, from the caller's thread
    last = {phase: (done, total) for phase, done, total, _ in calls}
    assert last == {
        "s3": (25, None),
        "table": (24, None),
        "ledger": (0, None),
        "dlq": (1, 1),
        "recheck": (1, 1),
    }
    assert {thread for *_, thread in calls} == {threading.current_thread()}
    for phase in last:
        dones = [done for p, done, *_ in calls if p == phase]
        assert dones == sorted(dones)


def test_orthanc_is_skipped_with_a_note_without_credentials(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a target that names an Orthanc, and no credentials anywhere
    monkeypatch.delenv("DICOM_PIPELINE_USERNAME", raising=False)
    monkeypatch.delenv("DICOM_PIPELINE_PASSWORD", raising=False)
    target = Target(
        bucket=BUCKET,
        queue_url=world.queue_url,
        dlq_url=world.dlq_url,
        table=TABLE,
        orthanc_url="https://pacs.example.org",
    )

    # When audited / Then Orthanc is not asked, and the report says why
    report = audit(target)
    assert report.sources["orthanc"] == {"skipped": "no credentials"}
    assert any("DICOM_PIPELINE_USERNAME" in n for n in report.notes)


def test_json_and_records_views(world: World) -> None:
    # Given an indexed key, a tombstone and a missing key
    world.put("orthanc/a.dcm")
    world.record("orthanc/a.dcm")
    world.record("orthanc/b.dcm", status="deleted")
    world.put("orthanc/c.dcm")

    # When audited
    report = audit(world.target)

    # Then to_records has one flat dict per entry, all of them
    rows = report.to_records()
    assert [r["key"] for r in rows] == ["orthanc/a.dcm", "orthanc/c.dcm", "orthanc/b.dcm"]
    assert all(not isinstance(v, dict | list) for r in rows for v in r.values())
    # and to_json lists what disagrees (all with all_entries), and is JSON
    doc = json.loads(json.dumps(report.to_json()))
    assert doc["schema"] == "dicom-pipeline/audit/v1"
    assert [e["key"] for e in doc["entries"]] == ["orthanc/c.dcm"]
    assert doc["counts"]["missing"] == 1 and doc["problems"] == 1
    assert len(report.to_json(all_entries=True)["entries"]) == 3


# -- S3 Inventory -------------------------------------------------------------------------------
def _inventory(
    world: World,
    files: list[list[list[str]]],
    *,
    schema: str = INVENTORY_SCHEMA,
    source: str = BUCKET,
    file_format: str = "CSV",
) -> str:
    """Write an inventory report as S3 writes it (gzip CSV files, no header, keys URL-encoded
    with ``+`` for a space, a manifest.json naming them); returns the manifest's URI."""
    s3 = aws.client("s3")
    s3.create_bucket(Bucket=INVENTORY_BUCKET)
    prefix = f"inventory/{source}/daily"
    entries = []
    for i, rows in enumerate(files):
        text = io.StringIO()
        csv.writer(text, quoting=csv.QUOTE_ALL, lineterminator="\n").writerows(rows)
        data = gzip.compress(text.getvalue().encode())
        key = f"{prefix}/data/part-{i}.csv.gz"
        s3.put_object(Bucket=INVENTORY_BUCKET, Key=key, Body=data)
        entries.append({"key": key, "size": len(data), "MD5checksum": "0" * 32})
    manifest = {
        "sourceBucket": source,
        "destinationBucket": f"arn:aws:s3:::{INVENTORY_BUCKET}",
        "version": "2016-11-30",
        "creationTimestamp": "1767225600000",
        "fileFormat": file_format,
        "fileSchema": schema,
        "files": entries,
    }
    key = f"{prefix}/2026-01-01T00-00Z/manifest.json"
    s3.put_object(Bucket=INVENTORY_BUCKET, Key=key, Body=json.dumps(manifest).encode())
    return f"s3://{INVENTORY_BUCKET}/{key}"


def _row(key: str, etag: str, *, version: str = "", latest: str = "true", marker: str = "false"):
    encoded = key.replace(" ", "+")
    return [BUCKET, encoded, version, latest, marker, "4", T0, etag, "STANDARD"]


def test_an_inventory_report_is_read_instead_of_listing_the_bucket(world: World) -> None:
    # Given objects in the bucket, indexed, and an inventory of them in two files: a key with a
    # space, an older version and a delete marker (versioned inventory), a .dcm.head copy
    for key in ("orthanc/study 1/a.dcm", "orthanc/b.dcm", "orthanc/deleted.dcm"):
        world.put(key)
    world.record("orthanc/study 1/a.dcm")
    world.record("orthanc/b.dcm")
    world.record("orthanc/deleted.dcm", status="deleted")
    manifest = _inventory(
        world,
        [
            [
                _row("orthanc/study 1/a.dcm", world.etags["orthanc/study 1/a.dcm"], version="v2"),
                _row("orthanc/study 1/a.dcm", "9" * 32, version="v1", latest="false"),
                _row("orthanc/x.dcm.head", "8" * 32),
            ],
            [
                _row("orthanc/b.dcm", world.etags["orthanc/b.dcm"]),
                _row("orthanc/deleted.dcm", "", marker="true"),
            ],
        ],
    )
    # and an object put after the inventory, not indexed yet: the inventory cannot know it
    world.put("orthanc/after-the-snapshot.dcm")

    # When audited with the inventory
    report = audit(world.target, inventory_manifest=manifest)

    # Then the inventory's current objects are what the audit saw, keys decoded
    entries = _by_key(report)
    assert {k: e.klass for k, e in entries.items()} == {
        "orthanc/study 1/a.dcm": "indexed",
        "orthanc/b.dcm": "indexed",
        "orthanc/deleted.dcm": "tombstone",
    }
    assert entries["orthanc/study 1/a.dcm"].version_id == "v2"
    assert report.not_audited == {"Orthanc header copies (.dcm.head)": 1}
    assert report.sources["s3"] == {
        "from": "inventory",
        "manifest": manifest,
        "snapshot": "2026-01-01T00:00:00Z",
        "files": 2,
        "bucket": BUCKET,
        "prefix": "orthanc/",
        "objects": 2,
    }


def test_changes_since_the_inventory_snapshot_are_read_again(world: World) -> None:
    # Given an inventory that still lists an object deleted since (its record a tombstone now)
    # and lacks one created and indexed since
    world.record("orthanc/gone.dcm", status="deleted", when=T2)
    world.put("orthanc/new.dcm")
    world.record("orthanc/new.dcm", when=T2)
    manifest = _inventory(world, [[_row("orthanc/gone.dcm", "7" * 32)]])

    # When audited with the inventory
    report = audit(world.target, inventory_manifest=manifest)

    # Then neither is a problem: both keys were read again, as they are now
    entries = _by_key(report)
    assert entries["orthanc/gone.dcm"].klass == "tombstone"
    assert entries["orthanc/new.dcm"].klass == "indexed"
    assert report.rechecked == 2 and report.problems() == 0


def test_an_indexed_record_whose_sidecar_is_gone_is_a_problem(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given two indexed records whose DICOM JSON is in a sidecar: one sidecar exists, the
    # other was deleted (as when the old sidecar went before a write that never landed)
    for key in ("orthanc/kept.dcm", "orthanc/dangling.dcm"):
        world.put(key)
        world.record(key, sidecar=f"s3://{BUCKET}/{SIDECAR_PREFIX}{key}/T1.json.gz")
    world.put(f"{SIDECAR_PREFIX}orthanc/kept.dcm/T1.json.gz", b"gzip")

    # When audited
    report = audit(world.target)

    # Then the record without its sidecar is dangling_sidecar, a problem; the other indexed
    entries = _by_key(report)
    assert entries["orthanc/kept.dcm"].klass == "indexed"
    assert entries["orthanc/dangling.dcm"].klass == "dangling_sidecar"
    assert "dangling.dcm/T1.json.gz" in (entries["orthanc/dangling.dcm"].note or "")
    assert report.problems() == 1


def test_a_record_of_another_version_is_stale(world: World) -> None:
    # Given a versioned bucket where the same bytes were put twice (same ETag, two versions),
    # and a record of the first version; the inventory lists the second
    aws.client("s3").put_bucket_versioning(
        Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"}
    )
    first = world.put("orthanc/v.dcm")
    second = world.put("orthanc/v.dcm")
    world.record("orthanc/v.dcm", version_id=first["version_id"])
    manifest = _inventory(
        world, [[_row("orthanc/v.dcm", second["etag"], version=second["version_id"])]]
    )

    # When audited / Then the record is stale, though its ETag is the object's
    entry = _by_key(audit(world.target, inventory_manifest=manifest))["orthanc/v.dcm"]
    assert entry.klass == "stale"
    assert entry.etag == entry.record_etag
    assert (entry.version_id, entry.record_version_id) == (
        second["version_id"],
        first["version_id"],
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"file_format": "ORC"}, "only CSV inventories are read, this one is ORC"),
        ({"source": "another-bucket"}, "the inventory of bucket another-bucket, not of images"),
        ({"schema": "Bucket, Size"}, "fileSchema has no Key column"),
    ],
)
def test_an_inventory_the_audit_cannot_use_is_one_error(
    world: World, options: dict[str, str], message: str
) -> None:
    manifest = _inventory(world, [[]], **options)
    with pytest.raises(AuditError, match=message):
        audit(world.target, inventory_manifest=manifest)


def test_a_missing_manifest_is_one_error(world: World) -> None:
    aws.client("s3").create_bucket(Bucket=INVENTORY_BUCKET)
    with pytest.raises(AuditError, match=r"cannot read the inventory manifest .*: NoSuchKey"):
        audit(world.target, inventory_manifest=f"s3://{INVENTORY_BUCKET}/nope/manifest.json")


# -- the command -----------------------------------------------------------------------------------
def _stack_file(world: World, tmp_path: Path, **overrides: str) -> str:
    path = tmp_path / "stack.json"
    facts = {
        "region": "us-east-1",
        "bucket": BUCKET,
        "queue_url": world.queue_url,
        "dlq_url": world.dlq_url,
        "table": TABLE,
        "ledger_table": LEDGER,
        **overrides,
    }
    path.write_text(json.dumps(facts))
    return str(path)


def test_the_command_prints_a_summary_and_exits_1_when_something_is_missing(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given an indexed object, a failure and a missing object whose key is long
    world.put("orthanc/a.dcm")
    world.record("orthanc/a.dcm")
    world.put("orthanc/bad.dcm")
    world.ledger("orthanc/bad.dcm", "NOT_DICOM")
    long_key = "orthanc/study/" + "x" * 150 + ".dcm"
    world.put(long_key)

    # When the command runs with stdout a pipe
    status = main(["audit", "--stack", _stack_file(world, tmp_path)])

    # Then it prints the classes, the failures by code and what disagrees, one value per line
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert status == 1
    assert lines[0].startswith("dicom-pipeline audit: local, bucket images, ")
    classes = lines[: lines.index("what disagrees")]
    count = {ln.split("│")[1].strip(): ln.split("│")[3].strip() for ln in classes if "│" in ln}
    assert (count["indexed"], count["failed"], count["missing"]) == ("1", "1", "1")
    assert any("NOT_DICOM" in line for line in lines)
    assert any(long_key in line and "no record" in line for line in lines)
    # and the sources name what was listed: Orthanc's prefix
    assert any("s3://images/orthanc/ listed: 3 .dcm objects;" in line for line in lines)
    assert " ".join(lines[-1].split()) == "result 1 problem: 1 missing (exit 1)"
    # and nothing on stderr (no progress bar when stderr is not a terminal)
    assert captured.err == ""


def test_the_command_prints_json_and_exits_0_when_nothing_is_missing(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given an indexed object and a tombstone
    world.put("orthanc/a.dcm")
    world.record("orthanc/a.dcm")
    world.record("orthanc/b.dcm", status="deleted")

    # When the command runs with --json
    status = main(["audit", "--json", "--stack", _stack_file(world, tmp_path)])

    # Then stdout is one JSON document, and the exit status 0
    doc = json.loads(capsys.readouterr().out)
    assert status == 0
    assert doc["counts"]["indexed"] == 1 and doc["counts"]["tombstone"] == 1
    assert doc["problems"] == 0 and doc["entries"] == []


def test_a_bad_target_is_one_line_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["audit", "--stack", str(tmp_path / "nope.json")])
    captured = capsys.readouterr()
    assert status == 1 and captured.out == ""
    assert captured.err.startswith("dicom-pipeline: error: no ")
    assert len(captured.err.splitlines()) == 1


def test_a_source_that_cannot_be_read_is_one_line_and_exit_1(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["audit", "--stack", _stack_file(world, tmp_path, table="no-such-table")])
    captured = capsys.readouterr()
    assert status == 1 and captured.out == ""
    assert captured.err == (
        "dicom-pipeline: error: cannot read the table no-such-table: ResourceNotFoundException\n"
    )


def test_a_malformed_inventory_uri_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["audit", "--inventory", "inventories/manifest.json"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("dicom-pipeline: error: argument --inventory: ")
    assert len(err.splitlines()) == 1


def test_the_progress_bar_shows_each_phase_on_a_terminal() -> None:
    from pipeline.cli.audit import _progress_bar

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    # Given stderr a terminal / When the audit reports its phases (the DLQ's count approximate)
    err = Terminal()
    with _progress_bar(err) as progress:
        assert progress is not None
        progress("s3", 10, None)
        progress("dlq", 5, 3)
        progress("table", 100, None)

    # Then the bar named each phase, and never showed more read than its total
    shown = err.getvalue()
    assert "S3 objects" in shown and "table items" in shown and "DLQ messages" in shown
    assert "5/5" in shown


def test_no_progress_bar_when_stderr_is_not_a_terminal() -> None:
    from pipeline.cli.audit import _progress_bar

    err = io.StringIO()
    with _progress_bar(err) as progress:
        assert progress is None
    assert err.getvalue() == ""
