"""Failures: coded DLQ messages, retries that absorb transient errors, and redelivery.

DESIGN.md fixes the DLQ message (schema ``dicom-pipeline/dlq/v1``); every test here checks
its exact shape. Step Functions' ``Retry`` waits are recorded instead of slept
(``retry_sleeps`` in ``conftest.py``), so the number of retries is observable.
"""

from __future__ import annotations

import gzip
import inspect
import io
import json
import random
import string
import struct
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any
from unittest import mock

import pytest
from harness import REPLAY_BUCKET, Harness
from moto.dynamodb.exceptions import ERROR_TYPE_PREFIX, DynamodbException
from moto.dynamodb.models import DynamoDBBackend
from moto.sqs.exceptions import SQSException
from moto.sqs.models import SQSBackend
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

import lambdas.parse_batch
import pipeline.workflow.batch
from pipeline import aws
from pipeline.dicom.parse import parse
from pipeline.errors import ObjectChanged, TransientError
from pipeline.names import CLAIM_ATTRIBUTE
from pipeline.workflow.dlq import Reported, failure_order, ledger_key, record_events

KEY = "7c2e9a41-0d3b-4e58-b6f1-2a9c8d7e5f30.dcm"
#: Step Functions limits a state's input and output to 256 KiB.
STATE_PAYLOAD_LIMIT = 256 * 1024


def assert_dlq_v1(
    message: dict[str, Any],
    *,
    code: str,
    state: str,
    record: dict[str, Any],
    execution: str,
) -> None:
    """``message`` is exactly DESIGN.md's v1 DLQ message for ``record``."""
    assert set(message) == {
        "schema",
        "error",
        "s3",
        "record",
        "failed_at",
        "execution",
        "state",
    }
    assert message["schema"] == "dicom-pipeline/dlq/v1"
    assert set(message["error"]) == {"code", "message"}
    assert message["error"]["code"] == code
    assert isinstance(message["error"]["message"], str) and message["error"]["message"]
    obj = record["s3"]["object"]
    assert message["s3"] == {
        "bucket": record["s3"]["bucket"]["name"],
        "key": KEY,
        "etag": obj.get("eTag"),
        "sequencer": obj.get("sequencer"),
    }
    assert message["record"] == record
    failed_at = datetime.fromisoformat(message["failed_at"].replace("Z", "+00:00"))
    assert failed_at.tzinfo is not None
    assert abs(datetime.now(UTC) - failed_at) < timedelta(minutes=5)
    assert message["execution"] == execution
    assert message["state"] == state


def orthanc_compressed(body: bytes) -> bytes:
    """An attachment as Orthanc stores it with StorageCompression on (size, then zlib)."""
    return struct.pack("<Q", len(body)) + zlib.compress(body)


CORRUPT = [
    pytest.param(lambda d: d("rtplan_truncated.dcm"), "TRUNCATED", id="truncated"),
    pytest.param(lambda d: d("no_meta_group_length.dcm"), "MISSING_REQUIRED_UID", id="no-uid"),
    pytest.param(lambda d: d("rtplan.dump"), "NOT_DICOM", id="text-dump"),
    pytest.param(lambda d: b"", "NOT_DICOM", id="empty"),
    pytest.param(
        lambda d: orthanc_compressed(d("CT_small.dcm")), "STORAGE_ENCODED", id="orthanc-zlib"
    ),
]


@pytest.mark.parametrize(("make_body", "code"), CORRUPT)
def test_corrupt_dcm_goes_to_the_dlq(
    wf: Harness,
    dicom: Callable[[str], bytes],
    make_body: Callable[[Callable[[str], bytes]], bytes],
    code: str,
) -> None:
    # Given a ".dcm" object that cannot be indexed, and its create event
    record = wf.created(KEY, wf.put(KEY, make_body(dicom)))

    # When it is delivered
    wf.send(record)
    (run,) = wf.drain()

    # Then the record failed with its code, and the DLQ holds exactly one v1 message
    assert run.status == "SUCCEEDED"
    assert wf.outcomes([run]) == [{"key": KEY, "outcome": "failed", "code": code}]
    (message,) = wf.dlq()
    assert_dlq_v1(
        message,
        code=code,
        state="ParseHeaders",
        record=record,
        execution=wf.execution_arn(run),
    )
    assert wf.items() == {}


def test_object_gone_before_it_is_read(wf: Harness, dicom: Callable[[str], bytes]) -> None:
    # Given a create event for an object deleted before the event arrived
    record = wf.created(KEY, wf.put(KEY, dicom("CT_small.dcm")))
    wf.remove(KEY)

    # When the event is delivered
    wf.send(record)
    runs = wf.drain()

    # Then it is skipped (its delete event will leave the tombstone), with nothing in the DLQ
    assert wf.outcomes(runs) == [{"key": KEY, "outcome": "skipped", "reason": "object_gone"}]
    assert wf.dlq() == []
    assert wf.items() == {}


def test_object_changed_while_read_is_skipped_for_its_newer_event(
    wf: Harness, dicom: Callable[[str], bytes]
) -> None:
    # Given an object that is overwritten while its header is read (S3 answers 412 to a
    # later range pinned to the first one's ETag)
    record = wf.created(KEY, wf.put(KEY, dicom("CT_small.dcm")))

    def changed(*args: Any, **kwargs: Any) -> Any:
        raise ObjectChanged(f"s3://{REPLAY_BUCKET}/{KEY} changed while it was read")

    # When its event is delivered
    with mock.patch.object(pipeline.workflow.batch, "parse", changed):
        wf.send(record)
        runs = wf.drain()

    # Then it is skipped, not TRUNCATED: the overwrite's own event indexes the new object
    assert wf.outcomes(runs) == [{"key": KEY, "outcome": "skipped", "reason": "object_changed"}]
    assert wf.dlq() == []
    assert wf.items() == {}


@contextmanager
def failing_put_item(
    code: str, times: int | None, table: str = "dicom-pipeline-metadata"
) -> Iterator[list[str]]:
    """moto's DynamoDB ``PutItem`` on ``table`` raises ``code`` the first ``times`` calls
    (None: always); writes to other tables (the DLQ ledger) are left alone."""
    original = DynamoDBBackend.put_item
    calls: list[str] = []

    def put_item(self: DynamoDBBackend, table_name: str, *args: Any, **kwargs: Any) -> Any:
        if table_name != table:
            return original(self, table_name, *args, **kwargs)
        failing = times is None or len(calls) < times
        calls.append("error" if failing else "ok")
        if failing:
            raise DynamodbException(ERROR_TYPE_PREFIX + code, f"injected {code}")
        return original(self, table_name, *args, **kwargs)

    with mock.patch.object(DynamoDBBackend, "put_item", put_item):
        yield calls


def test_throttled_write_succeeds_on_retry(
    wf: Harness, dicom: Callable[[str], bytes], retry_sleeps: list[float]
) -> None:
    # Given a table that throttles the first two writes
    record = wf.created(KEY, wf.put(KEY, dicom("CT_small.dcm")))
    retry_sleeps.clear()
    with failing_put_item("ProvisionedThroughputExceededException", times=2) as calls:
        # When the event is delivered
        wf.send(record)
        runs = wf.drain()

    # Then WriteRecord's Retry absorbed both (two backoff waits, jittered, capped), and
    # the record is indexed
    assert calls == ["error", "error", "ok"]
    assert len(retry_sleeps) == 2
    assert all(0 <= s <= 20 for s in retry_sleeps)
    assert wf.outcomes(runs) == [{"key": KEY, "outcome": "indexed"}]
    item = wf.item(KEY)
    assert item is not None and item["status"] == "indexed"
    assert wf.dlq() == []


@pytest.mark.parametrize(
    "case",
    [
        ("ValidationException", "INTERNAL", 0),
        ("AccessDeniedException", "ACCESS_DENIED", 0),
    ],
    ids=["not-retryable", "access-denied"],
)
def test_permanent_write_failure_goes_to_the_dlq(
    wf: Harness,
    dicom: Callable[[str], bytes],
    retry_sleeps: list[float],
    case: tuple[str, str, int],
) -> None:
    error, code, retries = case
    # Given a table that refuses every write with ``error``
    record = wf.created(KEY, wf.put(KEY, dicom("CT_small.dcm")))
    retry_sleeps.clear()
    with failing_put_item(error, times=None) as calls:
        # When the event is delivered
        wf.send(record)
        (run,) = wf.drain()

    # Then, without retries (they would not help), the record failed at WriteRecord and the
    # DLQ holds its v1 message naming the DynamoDB error
    assert len(calls) == retries + 1
    assert len(retry_sleeps) == retries
    assert wf.outcomes([run]) == [{"key": KEY, "outcome": "failed", "code": code}]
    (message,) = wf.dlq()
    assert_dlq_v1(
        message,
        code=code,
        state="WriteRecord",
        record=record,
        execution=wf.execution_arn(run),
    )
    assert f"DynamoDB.{error}" in message["error"]["message"]
    assert wf.items() == {}


@pytest.mark.filterwarnings("ignore:No application metrics to publish")
def test_a_crashing_parse_step_hands_the_batch_back_then_reports_it_coded(
    make_harness: Callable[..., Harness], dicom: Callable[[str], bytes]
) -> None:
    # Given a queue that redrives after two receives, and a parse Lambda that crashes
    wf = make_harness(visibility_timeout=1, max_receive_count=2)
    record = wf.created(KEY, wf.put(KEY, dicom("CT_small.dcm")))
    body = {"Records": [record]}
    with mock.patch.object(lambdas.parse_batch, "plan_batch", side_effect=RuntimeError("boom")):
        # When the event is delivered and the pipe keeps polling
        wf.send(json.dumps(body))
        runs = wf.drain(timeout=30)

    # Then no execution failed: the first handed the message back (an error is not retried:
    # it would crash again), the second, on the last receive, sent one coded UNAVAILABLE
    # message naming the error, and SQS's redrive moved nothing raw to the DLQ
    assert [r.status for r in runs] == ["SUCCEEDED", "SUCCEEDED"]
    assert wf.stack.invocations == [{"function": wf.stack.function, "error": "RuntimeError"}] * 2
    assert runs[0].returned == 1 and runs[1].returned == 0
    (message,) = wf.dlq()
    assert_dlq_v1(
        message,
        code="UNAVAILABLE",
        state="ParseHeaders",
        record=record,
        execution=wf.execution_arn(runs[1]),
    )
    assert "RuntimeError" in message["error"]["message"]
    assert wf.queue_messages(wf.queue_url) == 0
    assert wf.items() == {}


def test_throttled_for_good_returns_the_message_then_reports_unavailable(
    make_harness: Callable[..., Harness],
    dicom: Callable[[str], bytes],
    retry_sleeps: list[float],
) -> None:
    # Given a table that throttles every write, and a queue that allows two receives
    wf = make_harness(visibility_timeout=1, max_receive_count=2)
    record = wf.created(KEY, wf.put(KEY, dicom("CT_small.dcm")))
    retry_sleeps.clear()
    with failing_put_item("ProvisionedThroughputExceededException", times=None) as calls:
        # When the event is delivered and the pipe keeps polling
        wf.send(record)
        runs = wf.drain(timeout=30)

    # Then each delivery retried the write twice (WriteRecord's Retry, within the time
    # budget); the first returned the message to the queue (batchItemFailures), the last
    # reported it: one coded v1 message, no raw copy
    assert [r.status for r in runs] == ["SUCCEEDED", "SUCCEEDED"]
    assert len(calls) == 2 * 3
    assert runs[0].output is not None and runs[0].returned == 1
    (returned,) = runs[0].output["batchItemFailures"]
    failure = {"itemIdentifier": returned["itemIdentifier"]}
    assert returned == failure
    assert wf.outcomes(runs[:1]) == [{"key": KEY, "outcome": "retry", "failure": failure}]
    assert wf.outcomes(runs[1:]) == [{"key": KEY, "outcome": "failed", "code": "UNAVAILABLE"}]
    (message,) = wf.dlq()
    assert_dlq_v1(
        message,
        code="UNAVAILABLE",
        state="WriteRecord",
        record=record,
        execution=wf.execution_arn(runs[1]),
    )
    assert wf.queue_messages(wf.queue_url) == 0
    assert wf.items() == {}


def test_transient_read_error_returns_only_its_message_and_redelivery_indexes(
    make_harness: Callable[..., Harness], dicom: Callable[[str], bytes]
) -> None:
    # Given an S3 read that fails transiently once (after the client's own retries), in a
    # batch with two other objects
    wf = make_harness(visibility_timeout=1)
    others = [f"other-{i}.dcm" for i in range(2)]
    events = [wf.created(KEY, wf.put(KEY, dicom("CT_small.dcm")))]
    events += [wf.created(k, wf.put(k, dicom("MR_small.dcm"))) for k in others]
    calls: list[str] = []

    def parse_once_failing(*args: Any, **kwargs: Any) -> Any:
        if KEY in str(getattr(args[0], "uri", args[0])):
            calls.append(KEY)
            if len(calls) == 1:
                raise TransientError("S3 error SlowDown reading the object after retries")
        return parse(*args, **kwargs)

    # When the events are delivered in one batch
    with mock.patch.object(pipeline.workflow.batch, "parse", parse_once_failing):
        wf.send(*events)
        runs = wf.drain(timeout=30)

    # Then the first execution succeeded, returning only that record's message to the queue;
    # the redelivery indexed it; nothing went to the DLQ
    assert [(r.status, r.returned) for r in runs] == [("SUCCEEDED", 1), ("SUCCEEDED", 0)]
    assert sorted(o["outcome"] for o in wf.outcomes(runs[:1])) == ["indexed", "indexed", "retry"]
    assert wf.outcomes(runs[1:]) == [{"key": KEY, "outcome": "indexed"}]
    assert set(wf.items()) == {KEY, *others}
    assert wf.dlq() == []


def large_header(seed: int, text_length: int) -> bytes:
    """A valid instance whose header holds ``text_length`` characters of incompressible text
    (synthetic: pydicom's bundled files are all small)."""
    rnd = random.Random(seed)
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "OT"
    ds.TextValue = "".join(rnd.choices(string.ascii_letters + string.digits, k=text_length))
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.mark.parametrize("text_length", [19_000, 24_000])
def test_a_full_batch_of_large_headers_fits_the_state_payload(
    wf: Harness, monkeypatch: pytest.MonkeyPatch, text_length: int
) -> None:
    # Given ten objects whose compressed headers are each close to a tenth of the budget
    payloads: list[int] = []
    handler = lambdas.parse_batch.handler

    def measured(event: dict[str, Any], context: Any) -> Any:
        result = handler(event, context)
        payloads.append(len(json.dumps(result).encode()))
        return result

    monkeypatch.setattr(lambdas.parse_batch, "handler", measured)
    keys = [f"large/{i}.dcm" for i in range(10)]
    wf.send(*(wf.created(k, wf.put(k, large_header(i, text_length))) for i, k in enumerate(keys)))

    # When one batch carries them all
    runs = wf.drain()

    # Then the parse step's result stays under Step Functions' 256 KiB and all are indexed,
    # each JSON inline or in its S3 sidecar
    assert [r.status for r in runs] == ["SUCCEEDED"], runs[0].error
    assert payloads and max(payloads) < STATE_PAYLOAD_LIMIT
    assert [o["outcome"] for o in wf.outcomes(runs)] == ["indexed"] * 10
    for key, item in wf.items().items():
        if "dicom_json_gz" in item:
            blob = item["dicom_json_gz"]
        else:
            bucket, _, sidecar = item["dicom_json_s3"].removeprefix("s3://").partition("/")
            blob = aws.client("s3").get_object(Bucket=bucket, Key=sidecar)["Body"].read()
        assert json.loads(gzip.decompress(blob))["00080018"]["Value"] == [item["SOPInstanceUID"]]
        assert key in keys


@contextmanager
def refusing_dlq(dlq_url: str, times: int | None) -> Iterator[list[str]]:
    """moto's SQS ``SendMessage`` to the DLQ fails with ``InternalError`` the first ``times``
    calls (None: always); other queues, and SQS's own redrive into the DLQ, are left alone."""
    original = SQSBackend.send_message
    name = dlq_url.rsplit("/", 1)[-1]
    calls: list[str] = []

    def send_message(
        self: SQSBackend, queue_name: str, message_body: str, *a: Any, **k: Any
    ) -> Any:
        if queue_name != name:
            return original(self, queue_name, message_body, *a, **k)
        failing = times is None or len(calls) < times
        calls.append("error" if failing else "ok")
        if failing:
            raise SQSException("InternalError", "injected InternalError")
        return original(self, queue_name, message_body, *a, **k)

    with mock.patch.object(SQSBackend, "send_message", send_message):
        yield calls


@pytest.mark.filterwarnings("ignore:No application metrics to publish")
def test_a_dlq_refusing_the_last_receive_gets_one_more_coded_message(
    make_harness: Callable[..., Harness],
    dicom: Callable[[str], bytes],
    retry_sleeps: list[float],
) -> None:
    # Given a queue that allows two receives, a truncated object, and a DLQ that refuses the
    # first six sends (SendToDlq's three attempts on each of the two deliveries)
    wf = make_harness(visibility_timeout=1, max_receive_count=2)
    record = wf.created(KEY, wf.put(KEY, dicom("rtplan_truncated.dcm")))
    with refusing_dlq(wf.dlq_url, times=6) as calls:
        # When the event is delivered and the pipe keeps polling
        wf.send(record)
        runs = wf.drain(timeout=30)

    # Then the first delivery handed the message back; the last one, after SendToDlq gave up,
    # sent one coded UNAVAILABLE message naming the code it was to carry (SendUnavailable),
    # and SQS's redrive moved nothing raw to the DLQ
    assert [r.status for r in runs] == ["SUCCEEDED", "SUCCEEDED"]
    assert calls == ["error"] * 6 + ["ok"]
    assert runs[0].returned == 1 and runs[1].returned == 0
    assert wf.outcomes(runs[1:]) == [{"key": KEY, "outcome": "failed", "code": "UNAVAILABLE"}]
    (message,) = wf.dlq()
    assert_dlq_v1(
        message,
        code="UNAVAILABLE",
        state="SendToDlq",
        record=record,
        execution=wf.execution_arn(runs[1]),
    )
    assert "TRUNCATED" in message["error"]["message"]
    assert "SQS." in message["error"]["message"]  # the send error (moto: SdkClientException)
    assert wf.queue_messages(wf.queue_url) == 0


@pytest.mark.filterwarnings("ignore:No application metrics to publish")
def test_a_dlq_refusing_every_send_leaves_the_raw_notification_to_the_queues_redrive(
    make_harness: Callable[..., Harness],
    dicom: Callable[[str], bytes],
    retry_sleeps: list[float],
) -> None:
    # Given a queue that allows two receives, a truncated object, and a DLQ that refuses
    # every send from the workflow (SQS's own redrive into it still works)
    wf = make_harness(visibility_timeout=1, max_receive_count=2)
    record = wf.created(KEY, wf.put(KEY, dicom("rtplan_truncated.dcm")))
    with refusing_dlq(wf.dlq_url, times=None) as calls:
        # When the event is delivered and the pipe keeps polling
        wf.send(record)
        runs = wf.drain(timeout=30)
        raw = wf.dlq()

    # Then no execution failed, each delivery handed the message back (the last after
    # SendUnavailable's two attempts too), and the queue's redrive moved the notification,
    # raw, to the DLQ: the documented limit (docs/workflow.md, Guarantees)
    assert all(r.status == "SUCCEEDED" for r in runs)
    assert len(calls) == 3 + 3 + 2
    assert raw == [{"Records": [record]}]
    assert wf.queue_messages(wf.queue_url) == 0


# -- one DLQ message per failure, whatever runs at once -------------------------------------


def ledger_entries(wf: Harness) -> list[dict[str, Any]]:
    """Every item of the DLQ ledger, in DynamoDB JSON."""
    resp = aws.client("dynamodb").scan(TableName=wf.stack.ledger, ConsistentRead=True)
    items: list[dict[str, Any]] = resp["Items"]
    return items


def claim(wf: Harness, record: dict[str, Any], message_id: str) -> None:
    """Write the ledger entry another delivery (``message_id``) makes while it sends."""
    (event,) = record_events(message_id, record)
    aws.client("dynamodb").put_item(
        TableName=wf.stack.ledger,
        Item={
            **ledger_key(KEY, failure_order([event]) or "", now=0),
            "code": {"S": "TRUNCATED"},
            "failed_at": {"S": "2026-12-05T00:00:00Z"},
            CLAIM_ATTRIBUTE: {"S": message_id},
        },
    )


def test_a_failure_leaves_a_final_ledger_entry(wf: Harness, dicom: Callable[[str], bytes]) -> None:
    # Given a truncated object, and its create event
    record = wf.created(KEY, wf.put(KEY, dicom("rtplan_truncated.dcm")))

    # When it is delivered
    wf.send(record)
    wf.drain()

    # Then one message, and the ledger's entry is final: the claim made before the send is gone
    assert [m["error"]["code"] for m in wf.dlq()] == ["TRUNCATED"]
    (entry,) = ledger_entries(wf)
    assert entry["code"] == {"S": "TRUNCATED"} and CLAIM_ATTRIBUTE not in entry


def test_a_delivery_finding_another_deliverys_claim_sends_nothing(
    wf: Harness, dicom: Callable[[str], bytes]
) -> None:
    # Given a truncated object whose event another delivery has claimed (it is sending now)
    record = wf.created(KEY, wf.put(KEY, dicom("rtplan_truncated.dcm")))
    claim(wf, record, "another-delivery")

    # When the event is delivered again (SQS's at-least-once delivery)
    wf.send(record)
    runs = wf.drain()

    # Then this delivery sends nothing and its message is done: the claimer's message stays in
    # the queue until it has sent, so the failure is reported once
    assert wf.outcomes(runs) == [{"key": KEY, "outcome": "skipped", "reason": "already_in_dlq"}]
    assert wf.dlq() == []
    (entry,) = ledger_entries(wf)
    assert entry[CLAIM_ATTRIBUTE] == {"S": "another-delivery"}


def test_a_claim_made_after_the_parse_steps_read_stops_the_second_send(
    wf: Harness, dicom: Callable[[str], bytes]
) -> None:
    # Given a truncated object, and a parse step that read the ledger before another delivery
    # claimed the event (the window between the read and the workflow's claim)
    record = wf.created(KEY, wf.put(KEY, dicom("rtplan_truncated.dcm")))
    claim(wf, record, "another-delivery")
    blind = mock.patch.object(
        pipeline.workflow.batch, "reported_events", lambda *a, **k: Reported()
    )

    # When the event is delivered
    with blind:
        wf.send(record)
        runs = wf.drain()

    # Then the parse step planned the failure, but the conditional claim failed
    # (ClaimInLedger) and nothing was sent
    assert wf.outcomes(runs) == [{"key": KEY, "outcome": "skipped", "reason": "already_in_dlq"}]
    assert wf.dlq() == []


def test_a_lost_final_entry_still_stops_a_later_duplicate(
    wf: Harness, dicom: Callable[[str], bytes], retry_sleeps: list[float]
) -> None:
    # Given a truncated object, and a ledger that takes the claim but refuses the final entry
    # (NoteInLedger's two attempts) after the DLQ message was sent
    record = wf.created(KEY, wf.put(KEY, dicom("rtplan_truncated.dcm")))
    original = DynamoDBBackend.put_item

    signature = inspect.signature(original)

    def put_item(self: DynamoDBBackend, table_name: str, *args: Any, **kwargs: Any) -> Any:
        call = signature.bind(self, table_name, *args, **kwargs).arguments
        if table_name == wf.stack.ledger and not call.get("condition_expression"):
            raise DynamodbException(
                ERROR_TYPE_PREFIX + "ProvisionedThroughputExceededException", "injected"
            )
        return original(self, table_name, *args, **kwargs)

    with mock.patch.object(DynamoDBBackend, "put_item", put_item):
        wf.send(record)
        first = wf.drain()
    assert wf.outcomes(first) == [{"key": KEY, "outcome": "failed", "code": "TRUNCATED"}]

    # When a second copy of the event arrives later, as its own SQS message
    wf.send(record)
    second = wf.drain()

    # Then the claim, still naming the first message, stops a second DLQ message
    assert wf.outcomes(second) == [{"key": KEY, "outcome": "skipped", "reason": "already_in_dlq"}]
    assert [m["error"]["code"] for m in wf.dlq()] == ["TRUNCATED"]
    (entry,) = ledger_entries(wf)
    assert CLAIM_ATTRIBUTE in entry


@pytest.mark.filterwarnings("ignore:No application metrics to publish")
def test_a_message_whose_send_failed_takes_its_own_claim_again(
    make_harness: Callable[..., Harness],
    dicom: Callable[[str], bytes],
    retry_sleeps: list[float],
) -> None:
    # Given a truncated object and a DLQ that refuses the first delivery's three sends
    wf = make_harness(visibility_timeout=1, max_receive_count=3)
    record = wf.created(KEY, wf.put(KEY, dicom("rtplan_truncated.dcm")))
    with refusing_dlq(wf.dlq_url, times=3) as calls:
        # When the event is delivered, handed back with its claim in the ledger, and delivered
        # again
        wf.send(record)
        runs = wf.drain(timeout=30)

    # Then the same message claimed again and sent its one message; the entry is final
    assert calls == ["error"] * 3 + ["ok"]
    assert [r.returned for r in runs] == [1, 0]
    assert wf.outcomes(runs[1:]) == [{"key": KEY, "outcome": "failed", "code": "TRUNCATED"}]
    assert [m["error"]["code"] for m in wf.dlq()] == ["TRUNCATED"]
    (entry,) = ledger_entries(wf)
    assert CLAIM_ATTRIBUTE not in entry
