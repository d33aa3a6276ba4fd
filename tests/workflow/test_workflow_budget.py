"""The time budget and the sidecar order (issue 12, sections 1 and 4), on the real ASL file.

* The parse step is retried once (throttling, function timeouts and out-of-memory alike); after
  that the workflow hands every message of the batch back, and on a message's last receive it
  sends one coded ``UNAVAILABLE`` message per record itself: the execution never fails and the
  DLQ never receives a raw notification.
* The handler hands back, as ``retry``, the records it cannot read before its deadline.
* A record's old sidecar is deleted only after the new record was written; a writer that lost
  (superseded, or sent to the DLQ) deletes its own sidecar, unless the table points to it.

moto's Step Functions ``Retry`` sleeps are recorded, not slept (``retry_sleeps``).
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock

import pytest
from harness import REPLAY_BUCKET, Harness
from moto.awslambda.exceptions import LambdaClientError
from moto.awslambda.models import LambdaFunction
from pydicom.dataset import Dataset
from test_workflow_failures import KEY as FAILURES_KEY
from test_workflow_failures import assert_dlq_v1, failing_put_item
from test_workflow_limits import instance

import lambdas.parse_batch
import pipeline.workflow.batch
from pipeline import aws
from pipeline.names import SIDECAR_PREFIX

KEY = "budget/ct.dcm"
#: How Lambda reports a function that ran past its timeout to Step Functions.
SandboxTimedout = type("Sandbox.Timedout", (Exception,), {})

pytestmark = pytest.mark.filterwarnings("ignore:No application metrics to publish")


@contextmanager
def throttled_lambda() -> Iterator[list[str]]:
    """Every Invoke of the function is refused with TooManyRequestsException."""
    calls: list[str] = []

    def invoke(self: LambdaFunction, *args: Any, **kwargs: Any) -> bytes:
        calls.append(self.function_name)
        raise LambdaClientError("TooManyRequestsException", "Rate Exceeded.")

    with mock.patch.object(LambdaFunction, "invoke", invoke):
        yield calls


def test_a_throttled_parse_step_hands_the_batch_back_then_reports_every_record_coded(
    make_harness: Callable[..., Harness],
    dicom: Callable[[str], bytes],
    retry_sleeps: list[float],
) -> None:
    # Given a queue that allows two receives, a Lambda that is always throttled, and a batch
    # of a two-record notification, a one-record one and a body that is no notification
    wf = make_harness(visibility_timeout=1, max_receive_count=2)
    two = [
        wf.created(f"budget/{i}.dcm", wf.put(f"budget/{i}.dcm", dicom("CT_small.dcm")))
        for i in (1, 2)
    ]
    one = wf.created(KEY, wf.put(KEY, dicom("MR_small.dcm")))
    retry_sleeps.clear()
    with throttled_lambda():
        # When the batch is delivered and the pipe keeps polling
        wf.send(json.dumps({"Records": two}), one, "not an S3 notification")
        assert wf.stack.pipe is not None
        first = wf.stack.pipe.poll_once()
        assert first is not None
        dlq_after_first = wf.queue_messages(wf.dlq_url)
        runs = [first, *wf.drain(timeout=30)]

    # Then no execution failed; the first receive handed every message back and sent nothing
    # to the DLQ; ParseHeaders was retried once per execution, after a short wait
    assert all(r.status == "SUCCEEDED" for r in runs)
    assert first.returned == 3 and dlq_after_first == 0
    assert sum(r.returned for r in runs) == 3
    assert len(retry_sleeps) == len(runs) and all(s <= 2 for s in retry_sleeps)
    # and on the last receive the workflow sent one coded message per record, none raw
    messages = wf.dlq()
    assert all(m.get("schema") == "dicom-pipeline/dlq/v1" for m in messages)
    assert all(m["error"]["code"] == "UNAVAILABLE" for m in messages)
    assert all(m["state"] == "ParseHeaders" for m in messages)
    assert all("Lambda.TooManyRequestsException" in m["error"]["message"] for m in messages)
    by_key = {m["s3"]["key"]: m for m in messages}
    assert set(by_key) == {"budget/1.dcm", "budget/2.dcm", KEY, None}
    for record in (*two, one):
        key = record["s3"]["object"]["key"]
        assert by_key[key]["record"] == record
    assert by_key[None]["record"] is None
    assert wf.queue_messages(wf.queue_url) == 0
    assert wf.items() == {}


def test_a_throttled_parse_step_reports_a_record_like_the_workflow_does_elsewhere(
    make_harness: Callable[..., Harness], dicom: Callable[[str], bytes]
) -> None:
    # Given a queue that allows one receive (this is the last) and a throttled Lambda
    wf = make_harness(visibility_timeout=1, max_receive_count=1)
    key = FAILURES_KEY  # the key assert_dlq_v1 expects
    record = wf.created(key, wf.put(key, dicom("CT_small.dcm")))
    with throttled_lambda():
        # When the event is delivered
        wf.send(record)
        (run,) = wf.drain(timeout=30)

    # Then its one DLQ message is DESIGN.md's v1 message for the record
    assert run.status == "SUCCEEDED" and run.returned == 0
    (message,) = wf.dlq()
    assert_dlq_v1(
        message,
        code="UNAVAILABLE",
        state="ParseHeaders",
        record=record,
        execution=wf.execution_arn(run),
    )


def test_a_function_timeout_is_retried_once(
    wf: Harness, dicom: Callable[[str], bytes], retry_sleeps: list[float]
) -> None:
    # Given a parse Lambda that runs past its timeout once
    record = wf.created(KEY, wf.put(KEY, dicom("CT_small.dcm")))
    real = lambdas.parse_batch.plan_batch
    calls: list[int] = []

    def once(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise SandboxTimedout()
        return real(*args, **kwargs)

    retry_sleeps.clear()
    with mock.patch.object(lambdas.parse_batch, "plan_batch", once):
        # When the event is delivered
        wf.send(record)
        (run,) = wf.drain()

    # Then ParseHeaders was retried (once) and the record is indexed
    assert len(calls) == 2 and len(retry_sleeps) == 1
    assert wf.outcomes([run]) == [{"key": KEY, "outcome": "indexed"}]


def test_a_function_that_always_times_out_is_retried_only_once(
    wf: Harness, dicom: Callable[[str], bytes]
) -> None:
    # Given a parse Lambda that always runs past its timeout
    record = wf.created(KEY, wf.put(KEY, dicom("CT_small.dcm")))
    with mock.patch.object(lambdas.parse_batch, "plan_batch", side_effect=SandboxTimedout()):
        # When the event is delivered (its first receive of ten)
        wf.send(record)
        assert wf.stack.pipe is not None
        run = wf.stack.pipe.poll_once()

    # Then one retry, no more, and the message went back to the queue; nothing in the DLQ
    assert run is not None and run.status == "SUCCEEDED" and run.returned == 1
    assert (
        wf.stack.invocations == [{"function": wf.stack.function, "error": "Sandbox.Timedout"}] * 2
    )
    assert wf.dlq() == []


class FakeClock:
    """``time.monotonic`` for the parse step: each header read takes ``step`` seconds."""

    def __init__(self, step: float) -> None:
        self.now = 1000.0
        self.step = step

    def monotonic(self) -> float:
        return self.now


def test_records_that_cannot_be_read_before_the_deadline_are_handed_back(
    make_harness: Callable[..., Harness], dicom: Callable[[str], bytes]
) -> None:
    # Given one header read at a time, a 60 s function and reads that take 30 s each
    wf = make_harness(lambda_env={"MAX_WORKERS": "1"})
    keys = [f"budget/slow/{i}.dcm" for i in range(3)]
    records = [wf.created(k, wf.put(k, dicom("CT_small.dcm"))) for k in keys]
    clock = FakeClock(step=30.0)
    real_parse = pipeline.workflow.batch.parse

    def slow_parse(*args: Any, **kwargs: Any) -> Any:
        try:
            return real_parse(*args, **kwargs)
        finally:
            clock.now += clock.step

    fake_time = mock.Mock(wraps=__import__("time"))
    fake_time.monotonic = clock.monotonic
    with (
        mock.patch.object(pipeline.workflow.batch, "parse", slow_parse),
        mock.patch.object(pipeline.workflow.batch, "time", fake_time),
        mock.patch.object(lambdas.parse_batch, "time", fake_time),
        mock.patch.object(aws, "time", fake_time),
    ):
        # When the three events arrive in one batch
        wf.send(json.dumps({"Records": records}))
        assert wf.stack.pipe is not None
        run = wf.stack.pipe.poll_once()
    assert run is not None

    # Then two were read in time (at 0 s and 30 s of 55 s of reading time); the third could
    # not start with a read's worst case left, and only its message goes back
    outcomes = wf.outcomes([run])
    assert [o["outcome"] for o in outcomes] == ["indexed", "indexed", "retry"]
    assert run.returned == 1
    assert set(wf.items()) == set(keys[:2])
    assert wf.dlq() == []


# -- sidecars ------------------------------------------------------------------------------


def _large(seed: int) -> bytes:
    """An instance whose DICOM JSON is too large for its item: it goes to a sidecar."""

    def huge_text(ds: Dataset, rnd: random.Random) -> None:
        ds.TextValue = "".join(rnd.choices(string.ascii_letters + string.digits, k=200_000))

    return instance(seed, huge_text)


def _sidecars(key: str) -> list[str]:
    resp = aws.client("s3").list_objects_v2(Bucket=REPLAY_BUCKET, Prefix=f"{SIDECAR_PREFIX}{key}/")
    return sorted(f"s3://{REPLAY_BUCKET}/{o['Key']}" for o in resp.get("Contents", []))


def _indexed_with_sidecar(wf: Harness, key: str) -> tuple[dict[str, Any], str]:
    first = wf.created(key, wf.put(key, _large(1)))
    wf.send(first)
    wf.drain()
    item = wf.item(key)
    assert item is not None and "dicom_json_s3" in item
    return first, str(item["dicom_json_s3"])


@pytest.mark.parametrize(
    ("error", "outcome"),
    [("ConditionalCheckFailedException", "skipped"), ("ValidationException", "failed")],
    ids=["superseded", "dead-lettered"],
)
def test_a_write_that_does_not_land_keeps_the_old_sidecar_and_drops_its_own(
    wf: Harness, error: str, outcome: str
) -> None:
    # Given a record whose JSON is in a sidecar
    key = "budget/sidecar.dcm"
    _, old = _indexed_with_sidecar(wf, key)

    # When an overwrite's write does not land: a newer event won the race, or DynamoDB
    # rejects it (the record goes to the DLQ)
    newer = wf.created(key, wf.put(key, _large(2)))
    with failing_put_item(error, times=None):
        wf.send(newer)
        runs = wf.drain()

    # Then the stored record still points to its sidecar, which still exists, and the
    # writer's own sidecar is gone
    assert [o["outcome"] for o in wf.outcomes(runs)] == [outcome]
    item = wf.item(key)
    assert item is not None and item["dicom_json_s3"] == old
    assert _sidecars(key) == [old]


def test_a_duplicate_that_loses_to_itself_keeps_the_sidecar_its_record_points_to(
    wf: Harness,
) -> None:
    # Given a record whose JSON is in a sidecar
    key = "budget/duplicate.dcm"
    first, uri = _indexed_with_sidecar(wf, key)

    # When the same event is delivered again and the parse step's pre-check does not see the
    # record (as when both deliveries run at once), so the duplicate's write is refused
    with mock.patch.object(pipeline.workflow.batch, "_stored_items", return_value={}):
        wf.send(first)
        runs = wf.drain()

    # Then the sidecar (same name: same key, same event) is not deleted
    assert [o["outcome"] for o in wf.outcomes(runs)] == ["skipped"]
    item = wf.item(key)
    assert item is not None and item["dicom_json_s3"] == uri
    assert _sidecars(key) == [uri]


def test_the_old_sidecar_is_deleted_only_after_the_new_record_is_written(wf: Harness) -> None:
    # Given a record whose JSON is in a sidecar
    key = "budget/overwrite.dcm"
    _, old = _indexed_with_sidecar(wf, key)
    seen: list[list[str]] = []
    real = pipeline.workflow.batch.plan_batch

    def observed(*args: Any, **kwargs: Any) -> Any:
        plan = real(*args, **kwargs)
        seen.append(_sidecars(key))  # what exists when the parse step is done
        return plan

    # When the object is overwritten
    newer = wf.created(key, wf.put(key, _large(2)))
    with mock.patch.object(lambdas.parse_batch, "plan_batch", observed):
        wf.send(newer)
        wf.drain()

    # Then both sidecars existed after the parse step (nothing deleted before the write), and
    # after the write only the new record's remains
    item = wf.item(key)
    assert item is not None
    new = str(item["dicom_json_s3"])
    assert new != old
    assert seen == [sorted([old, new])]
    assert _sidecars(key) == [new]
