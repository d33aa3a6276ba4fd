"""The tuned local stack (issue 12 §5): concurrent batches and moto's patched costs change
nothing the pipeline can observe.

* The background pipe runs several batches at once, like Pipes: every message is still run
  in exactly one batch, good objects are indexed and broken ones dead-lettered once each.
* What the pipe now reads from moto in place (an execution's history, for the 256 KiB state
  check) is what ``GetExecutionHistory`` answers.
* DynamoDB's item size limit still holds under the patched item construction.

The DICOM object is pydicom's bundled ``CT_small.dcm`` (``tests/conftest.py``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from botocore.exceptions import ClientError
from harness import Harness  # tests/workflow is on sys.path (prepend mode)

from pipeline import aws
from pipeline.local.pipe import PipeEmulator, largest_state


def test_concurrent_batches_run_each_message_once_and_lose_nothing(
    make_harness: Callable[..., Harness],
    dicom: Callable[[str], bytes],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given: a background pipe with four pollers whose first batch holds its execution until
    # a second batch has started (so they overlap, or the test sees that they never did)
    lock = threading.Lock()
    batches: list[list[str]] = []
    state = {"in_flight": 0, "most": 0}
    overlapped = threading.Event()
    run_batch = PipeEmulator.run_batch

    def observed(self: PipeEmulator, batch: list[dict[str, Any]]) -> Any:
        with lock:
            state["in_flight"] += 1
            state["most"] = max(state["most"], state["in_flight"])
            batches.append([m["MessageId"] for m in batch])
            first = len(batches) == 1
            if state["in_flight"] >= 2:
                overlapped.set()
        try:
            if first:
                overlapped.wait(timeout=30)
            return run_batch(self, batch)
        finally:
            with lock:
                state["in_flight"] -= 1

    monkeypatch.setattr(PipeEmulator, "run_batch", observed)
    wf = make_harness(
        run_pipe=True, pipe_concurrency=4, batch_size=4, visibility_timeout=60, keep_test_event=True
    )
    good = {f"orthanc/c/{i:03d}.dcm": dicom("CT_small.dcm") for i in range(24)}
    broken = {f"orthanc/c/broken-{i}.dcm": b"not a DICOM object" for i in range(4)}

    # When: they are uploaded to the image bucket and the pipe drains the queue
    for key, body in {**good, **broken}.items():
        wf.stack.upload(key, body)
    wf.drain(timeout=120)

    # Then: batches overlapped, no message ran in two batches, every execution succeeded
    assert state["most"] >= 2
    ids = [i for batch in batches for i in batch]
    assert len(ids) == len(set(ids))
    assert wf.executions and all(r.status == "SUCCEEDED" for r in wf.executions)
    # every good object is indexed, every broken one dead-lettered once with its code
    items = wf.items()
    assert {k: items[k]["status"] for k in good} == dict.fromkeys(good, "indexed")
    assert not set(broken) & set(items)
    dead = wf.dlq()
    assert sorted(m["s3"]["key"] for m in dead) == sorted(broken)
    assert {m["error"]["code"] for m in dead} == {"NOT_DICOM"}
    assert wf.queue_messages(wf.queue_url) == 0


def test_the_history_read_in_place_is_what_the_api_answers(
    make_harness: Callable[..., Harness], dicom: Callable[[str], bytes]
) -> None:
    # Given: one batch of three objects run through the workflow
    wf = make_harness()
    for i in range(3):
        wf.stack.upload(f"orthanc/h/{i}.dcm", dicom("CT_small.dcm"))
    (execution,) = wf.drain()
    arn = wf.execution_arn(execution)
    assert wf.stack.executions is not None

    # When: the largest state is computed from moto's history in place and through the API
    in_place = largest_state(arn, wf.stack.executions.history(arn))
    through_api = largest_state(arn)

    # Then: both agree, and the pipe recorded the same
    assert in_place == through_api
    assert (execution.largest_state, execution.largest_state_at) == in_place
    assert in_place[0] > 0


def test_an_item_over_dynamodbs_size_limit_is_still_rejected(wf: Harness) -> None:
    # Given: an item of two attributes that together pass 400 KB (each alone would not)
    item = {"s3_key": {"S": "big.dcm"}, "a": {"S": "x" * 210_000}, "b": {"S": "y" * 210_000}}

    # When / Then: the tuned stack's DynamoDB refuses it as AWS does
    with pytest.raises(ClientError) as caught:
        aws.client("dynamodb").put_item(TableName=wf.table, Item=item)
    assert caught.value.response["Error"]["Code"] == "ValidationException"
    assert "Item size has exceeded" in caught.value.response["Error"]["Message"]
