"""Reindex through the whole ingestion path: stale records are re-written, and a reindex event
never overwrites a record written by a newer real event, whichever arrives first.

Most objects live in the harness's *replay* bucket (no notifications; events with S3-like
sequencers, as on AWS); the last test uses the image bucket, whose moto events carry no
sequencer (``T`` + event time tokens), through the ``reindex`` command.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from harness import REPLAY_BUCKET, Harness

import pipeline.workflow.batch
from pipeline import __version__, aws
from pipeline.cli import main
from pipeline.ops.reindex import ObjectRef, plan_reindex, reindex
from pipeline.ops.target import Target
from pipeline.workflow.events import order_token

#: Under Orthanc's prefix, which reindex lists by default.
KEY = "orthanc/9a0b1c2d-3e4f-4a5b-8c6d-7e8f9a0b1c2d.dcm"
OTHER = "orthanc/studies/0e1f2a3b.dcm"


def target_of(wf: Harness, bucket: str = REPLAY_BUCKET) -> Target:
    """The harness's stack as an operations target (moto in process: no endpoint)."""
    return Target(
        bucket=bucket,
        queue_url=wf.queue_url,
        dlq_url=wf.dlq_url,
        table=wf.table,
        ledger_table=wf.stack.ledger,
        region="us-east-1",
    )


def index(wf: Harness, key: str, body: bytes) -> dict[str, Any]:
    """Put ``body`` at ``key`` in the replay bucket and index it with a real event."""
    record = wf.created(key, wf.put(key, body))
    wf.send(record)
    assert wf.outcomes(wf.drain()) == [{"key": key, "outcome": "indexed"}]
    item = wf.item(key)
    assert item is not None
    return item


def age(wf: Harness, key: str, parser_version: str) -> None:
    """Make a record look written by another parser version, long ago."""
    aws.client("dynamodb").update_item(
        TableName=wf.table,
        Key={"s3_key": {"S": key}},
        UpdateExpression="SET parser_version = :v, indexed_at = :t",
        ExpressionAttributeValues={
            ":v": {"S": parser_version},
            ":t": {"S": "2000-01-01T00:00:00.000Z"},
        },
    )


def test_stale_only_rewrites_records_of_another_parser_version(
    wf: Harness, dicom: Callable[[str], bytes]
) -> None:
    # Given two indexed objects, one written by an older parser
    stale = index(wf, KEY, dicom("CT_small.dcm"))
    current = index(wf, OTHER, dicom("MR_small.dcm"))
    age(wf, KEY, "0.0.1")

    # When the stale records are reindexed and the queue drains
    result = reindex(target_of(wf), stale_only=True)
    runs = wf.drain()

    # Then only the stale one was re-written: this parser's version, a new indexed_at, an order
    # just after its old one
    assert (result.listed, result.sent, result.current) == (2, 1, 1)
    assert wf.outcomes(runs) == [{"key": KEY, "outcome": "indexed"}]
    item = wf.item(KEY)
    assert item is not None and item["parser_version"] == __version__
    assert item["indexed_at"] > "2000-01-01T00:00:00.000Z"
    assert item["event_order"].startswith(stale["event_order"] + "R")
    assert item["SOPInstanceUID"] == stale["SOPInstanceUID"]
    assert wf.item(OTHER) == current


def test_a_newer_event_after_the_reindex_replaces_the_reindexed_record(
    wf: Harness, dicom: Callable[[str], bytes]
) -> None:
    # Given an indexed object that was reindexed
    index(wf, KEY, dicom("CT_small.dcm"))
    reindex(target_of(wf))
    wf.drain()
    reindexed = wf.item(KEY)
    assert reindexed is not None and "R" in reindexed["event_order"]

    # When the object is overwritten and its (newer) event arrives
    newer = wf.created(KEY, wf.put(KEY, dicom("MR_small.dcm")))
    wf.send(newer)
    runs = wf.drain()

    # Then the newer event's record replaces the reindexed one
    assert wf.outcomes(runs) == [{"key": KEY, "outcome": "indexed"}]
    item = wf.item(KEY)
    assert item is not None
    assert item["event_order"] == order_token(newer["s3"]["object"]["sequencer"], None)
    assert item["SOPInstanceUID"] != reindexed["SOPInstanceUID"]


def test_a_reindex_arriving_after_a_newer_event_changes_nothing(
    wf: Harness, dicom: Callable[[str], bytes]
) -> None:
    # Given reindex events made from the stored record (the listing ran first) ...
    index(wf, KEY, dicom("CT_small.dcm"))
    records = plan_reindex(wf.table, REPLAY_BUCKET, [ObjectRef(KEY)])
    # ... and a newer real event that indexed the key before they arrived
    newer = wf.created(KEY, wf.put(KEY, dicom("MR_small.dcm")))
    wf.send(newer)
    wf.drain()
    before = wf.item(KEY)

    # When the reindex events arrive
    wf.send(*records)
    runs = wf.drain()

    # Then they are stale: the newer event's record is untouched (not even indexed_at)
    assert wf.outcomes(runs) == [{"key": KEY, "outcome": "skipped", "reason": "stale_or_duplicate"}]
    assert wf.item(KEY) == before


def test_the_conditional_write_stops_a_late_reindex_even_past_the_pre_check(
    wf: Harness, dicom: Callable[[str], bytes]
) -> None:
    # Given reindex events made before a newer event indexed the key
    index(wf, KEY, dicom("CT_small.dcm"))
    records = plan_reindex(wf.table, REPLAY_BUCKET, [ObjectRef(KEY)])
    wf.send(wf.created(KEY, wf.put(KEY, dicom("MR_small.dcm"))))
    wf.drain()
    before = wf.item(KEY)

    # When they arrive and the parse step's pre-check misses the newer record (a race)
    with mock.patch.object(pipeline.workflow.batch, "_stored_items", return_value={}):
        wf.send(*records)
        runs = wf.drain()

    # Then WriteRecord's condition refuses it: the newer record stays
    assert wf.outcomes(runs) == [{"key": KEY, "outcome": "skipped", "reason": "stale_or_duplicate"}]
    assert wf.item(KEY) == before


def test_a_reindex_and_a_newer_event_in_one_batch(
    wf: Harness, dicom: Callable[[str], bytes]
) -> None:
    # Given an indexed object, a reindex, then a newer event, all pending at once
    index(wf, KEY, dicom("CT_small.dcm"))
    reindex(target_of(wf))
    newer = wf.created(KEY, wf.put(KEY, dicom("MR_small.dcm")))
    wf.send(newer)

    # When they drain together / Then the newer event wins, the reindex is superseded
    outcomes = wf.outcomes(wf.drain())
    assert sorted(o["outcome"] for o in outcomes) == ["indexed", "skipped"]
    item = wf.item(KEY)
    assert item is not None
    assert item["event_order"] == order_token(newer["s3"]["object"]["sequencer"], None)


def test_an_object_without_a_record_is_indexed_and_any_real_event_wins(
    wf: Harness, dicom: Callable[[str], bytes]
) -> None:
    # Given an object whose event never arrived (no record)
    created = wf.created(KEY, wf.put(KEY, dicom("CT_small.dcm")))

    # When it is reindexed (stale_only: a missing record is stale)
    assert reindex(target_of(wf), stale_only=True).sent == 1
    assert wf.outcomes(wf.drain()) == [{"key": KEY, "outcome": "indexed"}]
    item = wf.item(KEY)
    assert item is not None and item["event_order"].startswith("-R")

    # Then its real event, arriving late, still applies (a reindex never outranks one)
    wf.send(created)
    assert wf.outcomes(wf.drain()) == [{"key": KEY, "outcome": "indexed"}]
    item = wf.item(KEY)
    assert item is not None
    assert item["event_order"] == order_token(created["s3"]["object"]["sequencer"], None)


def uploaded(wf: Harness, objects: dict[str, bytes], tmp_path: Path) -> Path:
    """Put ``objects`` into the image bucket (its notifications reach the ingest queue), drain,
    and write the stack's stack.json for the command; returns its path."""
    for key, body in objects.items():
        wf.stack.upload(key, body)
    wf.drain()
    stack_file = tmp_path / "stack.json"
    wf.stack.write_info(stack_file)
    return stack_file


def test_the_reindex_command_on_the_image_bucket(
    wf: Harness, dicom: Callable[[str], bytes], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given objects indexed through moto's own notifications (T + event time orders)
    stack_file = uploaded(
        wf,
        {"orthanc/a.dcm": dicom("CT_small.dcm"), "orthanc/sub/b.dcm": dicom("MR_small.dcm")},
        tmp_path,
    )
    first = wf.item("orthanc/sub/b.dcm")
    assert first is not None and first["event_order"].startswith("T")
    capsys.readouterr()

    # When a prefix is reindexed with the command
    assert main(["reindex", "--prefix", "orthanc/sub/", "--stack", str(stack_file)]) == 0
    assert json.loads(capsys.readouterr().out)["sent"] == 1
    wf.drain()

    # Then that record was re-written after its old order
    again = wf.item("orthanc/sub/b.dcm")
    assert again is not None and again["event_order"].startswith(first["event_order"] + "R")
    assert again["indexed_at"] >= first["indexed_at"]

    # and an overwrite's own (newer) event replaces it
    wf.stack.upload("orthanc/sub/b.dcm", dicom("CT_small.dcm"))
    wf.drain()
    last = wf.item("orthanc/sub/b.dcm")
    assert (
        last is not None and last["event_order"].startswith("T") and "R" not in last["event_order"]
    )
    assert last["event_order"] > again["event_order"]


def test_a_whole_bucket_reindex_indexes_keys_outside_orthancs_prefix(
    wf: Harness, dicom: Callable[[str], bytes], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given an object at the image bucket's root (stored before Orthanc had a prefix: the
    # bucket notified nothing) and one of Orthanc's, indexed
    stack_file = uploaded(
        wf, {"legacy.dcm": dicom("CT_small.dcm"), "orthanc/a.dcm": dicom("MR_small.dcm")}, tmp_path
    )
    assert list(wf.items()) == ["orthanc/a.dcm"]
    capsys.readouterr()

    # When the command reindexes without a prefix / Then only Orthanc's prefix is listed
    assert main(["reindex", "--stale-only", "--stack", str(stack_file)]) == 0
    assert json.loads(capsys.readouterr().out)["listed"] == 1
    wf.drain()
    assert wf.item("legacy.dcm") is None

    # When it reindexes the whole bucket (--prefix "")
    assert main(["reindex", "--stale-only", "--prefix", "", "--stack", str(stack_file)]) == 0
    assert json.loads(capsys.readouterr().out)["sent"] == 1
    wf.drain()

    # Then the root-level object is indexed too
    legacy = wf.item("legacy.dcm")
    assert legacy is not None and legacy["status"] == "indexed"
