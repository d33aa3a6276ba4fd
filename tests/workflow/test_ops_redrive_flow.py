"""Redrive through the whole ingestion path: a failure reaches the DLQ, its cause is fixed, the
redrive re-sends the event and the workflow indexes it.

The objects live in the harness's *replay* bucket, which notifies nothing: fixing an object
there (putting good bytes under the same key) sends no event of its own, so it is the redrive
that indexes it. The other cause is transient: a table that refuses writes (AccessDenied) for a
while.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from harness import REPLAY_BUCKET, Harness
from moto.dynamodb.exceptions import ERROR_TYPE_PREFIX, DynamodbException
from moto.dynamodb.models import DynamoDBBackend

from pipeline import aws
from pipeline.cli import main
from pipeline.ops import redrive as redrive_module
from pipeline.ops.redrive import UNKNOWN, list_dlq, redrive
from pipeline.ops.target import Target
from pipeline.workflow.events import order_token

#: An Orthanc key (flat, under its prefix).
KEY = "orthanc/3f1d7c2a-5b8e-4a90-9c1e-6d2f8a7b0e41.dcm"


@pytest.fixture(autouse=True)
def no_long_poll(monkeypatch: pytest.MonkeyPatch) -> None:
    """moto in process answers exactly: no long poll for the receive that finds the DLQ empty."""
    monkeypatch.setattr(redrive_module, "AWS_EMPTY_WAIT_SECONDS", 0)


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


def ledger(wf: Harness) -> set[tuple[str, str]]:
    items = aws.client("dynamodb").scan(TableName=wf.stack.ledger)["Items"]
    return {(i["s3_key"]["S"], i["event_order"]["S"]) for i in items}


@contextmanager
def denied_writes(table: str) -> Iterator[list[str]]:
    """moto's DynamoDB ``PutItem`` on ``table`` raises AccessDeniedException (a policy that
    lacks the grant for a while); the ledger's writes go through."""
    original = DynamoDBBackend.put_item
    calls: list[str] = []

    def put_item(self: DynamoDBBackend, table_name: str, *args: Any, **kwargs: Any) -> Any:
        if table_name != table:
            return original(self, table_name, *args, **kwargs)
        calls.append(table_name)
        raise DynamodbException(ERROR_TYPE_PREFIX + "AccessDeniedException", "injected")

    with mock.patch.object(DynamoDBBackend, "put_item", put_item):
        yield calls


def test_a_fixed_object_is_indexed_by_the_redrive(
    wf: Harness, dicom: Callable[[str], bytes]
) -> None:
    # Given an object that is not DICOM, whose event failed: one v1 message, one ledger entry
    record = wf.created(KEY, wf.put(KEY, dicom("rtplan.dump")))
    order = order_token(record["s3"]["object"]["sequencer"], None)
    wf.send(record)
    wf.drain()
    target = target_of(wf)
    (entry,) = list_dlq(target)
    assert (entry.code, entry.key, entry.event_order, entry.raw) == ("NOT_DICOM", KEY, order, False)
    assert ledger(wf) == {(KEY, order)}

    # When the cause is fixed (good bytes under the same key; the replay bucket sends no event)
    # and the DLQ is redriven
    wf.put(KEY, dicom("CT_small.dcm"))
    result = redrive(target)
    runs = wf.drain()

    # Then the re-sent event was indexed (not skipped as already in the DLQ: the redrive
    # removed its ledger entry), and the DLQ and the ledger are empty
    assert result.ok and result.sent == 1 and result.deleted == 1
    assert wf.outcomes(runs) == [{"key": KEY, "outcome": "indexed"}]
    item = wf.item(KEY)
    assert item is not None and item["status"] == "indexed" and item["event_order"] == order
    assert wf.queue_messages(wf.dlq_url) == 0
    assert ledger(wf) == set()


def test_a_transient_write_denial_is_indexed_by_the_redrive(
    wf: Harness, dicom: Callable[[str], bytes]
) -> None:
    # Given a good object whose write was denied (a policy missing for a while)
    record = wf.created(KEY, wf.put(KEY, dicom("CT_small.dcm")))
    with denied_writes(wf.table) as calls:
        wf.send(record)
        wf.drain()
    assert calls and wf.item(KEY) is None
    target = target_of(wf)
    assert [e.code for e in list_dlq(target)] == ["ACCESS_DENIED"]

    # When the grant is back and the DLQ is redriven with its code
    result = redrive(target, code="ACCESS_DENIED")
    runs = wf.drain()

    # Then the record is indexed, and the DLQ is empty
    assert result.sent == 1
    assert wf.outcomes(runs) == [{"key": KEY, "outcome": "indexed"}]
    assert wf.queue_messages(wf.dlq_url) == 0 and ledger(wf) == set()


def test_a_redriven_event_that_fails_again_is_reported_again(
    wf: Harness, dicom: Callable[[str], bytes]
) -> None:
    # Given a failure whose cause is not fixed
    record = wf.created(KEY, wf.put(KEY, dicom("rtplan.dump")))
    wf.send(record)
    wf.drain()

    # When it is redriven
    redrive(target_of(wf))
    runs = wf.drain()

    # Then it failed again and is reported again: exactly one v1 message, noted in the ledger
    assert wf.outcomes(runs) == [{"key": KEY, "outcome": "failed", "code": "NOT_DICOM"}]
    (message,) = wf.dlq()
    assert message["error"]["code"] == "NOT_DICOM" and message["record"] == record
    assert len(ledger(wf)) == 1


def test_the_dry_run_changes_nothing(wf: Harness, dicom: Callable[[str], bytes]) -> None:
    record = wf.created(KEY, wf.put(KEY, dicom("rtplan.dump")))
    wf.send(record)
    wf.drain()
    wf.put(KEY, dicom("CT_small.dcm"))

    result = redrive(target_of(wf), dry_run=True)

    assert result.sent == 1 and result.deleted == 0
    assert wf.queue_messages(wf.queue_url) == 0 and wf.drain() == []
    assert wf.queue_messages(wf.dlq_url) == 1 and len(ledger(wf)) == 1
    assert wf.item(KEY) is None


@pytest.mark.filterwarnings("ignore:No application metrics to publish")
def test_a_raw_notification_from_the_queues_redrive_is_indexed(
    make_harness: Callable[..., Harness], dicom: Callable[[str], bytes]
) -> None:
    # Given a raw notification on the DLQ (no code, no ledger entry), as SQS's redrive moves
    # it there when an execution fails on every receive (the workflow itself never sends one)
    wf = make_harness(visibility_timeout=1, max_receive_count=2)
    record = wf.created(KEY, wf.put(KEY, dicom("CT_small.dcm")))
    aws.client("sqs").send_message(
        QueueUrl=wf.dlq_url, MessageBody=json.dumps({"Records": [record]})
    )
    target = target_of(wf)
    (entry,) = list_dlq(target)
    assert (entry.raw, entry.code, entry.key, entry.records) == (True, UNKNOWN, KEY, [record])

    # When the Lambda is fixed and the raw notifications are redriven
    result = redrive(target, code=UNKNOWN)
    runs = wf.drain()

    # Then the record is indexed, and the DLQ is empty
    assert result.sent == 1
    assert wf.outcomes(runs) == [{"key": KEY, "outcome": "indexed"}]
    assert wf.queue_messages(wf.dlq_url) == 0


def test_a_failure_a_newer_event_indexed_since_is_deleted_without_a_send(
    wf: Harness, dicom: Callable[[str], bytes]
) -> None:
    # Given a failed event, and then a newer event that indexed the key
    wf.send(wf.created(KEY, wf.put(KEY, dicom("rtplan.dump"))))
    wf.drain()
    newer = wf.created(KEY, wf.put(KEY, dicom("MR_small.dcm")))
    wf.send(newer)
    wf.drain()
    before = wf.item(KEY)
    assert before is not None

    # When the DLQ is redriven
    result = redrive(target_of(wf))

    # Then nothing was sent (the table holds a newer event), the message is gone, and the
    # record is the newer event's, untouched
    assert result.sent == 0 and result.already_indexed == 1 and result.deleted == 1
    assert wf.queue_messages(wf.queue_url) == 0
    assert wf.queue_messages(wf.dlq_url) == 0
    assert wf.item(KEY) == before


def test_the_commands_against_the_local_stack(
    wf: Harness, dicom: Callable[[str], bytes], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a failure in the image bucket (moto's own notification) and the stack's stack.json
    wf.stack.upload(KEY, dicom("rtplan.dump"))
    wf.drain()
    stack_file = tmp_path / "stack.json"
    wf.stack.write_info(stack_file)
    capsys.readouterr()  # the in-process Lambda's log lines

    # When listed / Then one group, below Orthanc's prefix (by the key's first two digits)
    assert main(["dlq", "list", "--json", "--stack", str(stack_file)]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["groups"] == [{"code": "NOT_DICOM", "prefix": "orthanc/3f", "count": 1, "raw": 0}]

    # When the object is fixed without an event and the DLQ redriven / Then it is indexed
    aws.client("s3").put_bucket_notification_configuration(
        Bucket=wf.bucket, NotificationConfiguration={}
    )
    wf.stack.upload(KEY, dicom("CT_small.dcm"))
    assert main(["dlq", "redrive", "--key-prefix", "orthanc/3f", "--stack", str(stack_file)]) == 0
    assert "sent 1 event;" in capsys.readouterr().err
    assert wf.outcomes(wf.drain()) == [{"key": KEY, "outcome": "indexed"}]
    assert wf.queue_messages(wf.dlq_url) == 0
