"""The reindex Lambda: settings from the environment, one call into pipeline.ops.reindex."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from msgspec import ValidationError

from lambdas import reindex_batch
from pipeline.names import REINDEX_WORKFLOW_FILE
from pipeline.ops import reindex

ENV = {
    "BUCKET_NAME": "images-bucket",
    "TABLE_NAME": "dicom-metadata",
    "LEDGER_TABLE_NAME": "dicom-ledger",
    "QUEUE_URL": "https://sqs.eu-central-1.amazonaws.com/123456789012/ingest",
    "POWERTOOLS_METRICS_NAMESPACE": "DicomPipelineTest",
}


@dataclass
class FakeResult:
    """What enqueue_keys returns (the shape of ReindexResult)."""

    sent: int
    failed: int = 0
    waited_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.failed == 0

    def counts(self) -> dict[str, int]:
        return {"sent": self.sent, "failed": self.failed}

    def to_json(self) -> dict[str, Any]:
        return {**self.counts(), "waited_seconds": self.waited_seconds}


@dataclass
class Context:
    function_name: str = "reindex"
    memory_limit_in_mb: int = 512
    invoked_function_arn: str = "arn:aws:lambda:eu-central-1:123456789012:function:reindex"
    aws_request_id: str = "req-1"
    remaining_ms: int = 50_000

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, Any]]]:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    reindex_batch.get_settings.cache_clear()
    seen: list[dict[str, Any]] = []

    def enqueue_keys(keys: list[str], **kwargs: Any) -> FakeResult:
        pacing = kwargs.pop("pacing")
        seen.append({"keys": keys, **kwargs})
        seen.append({"pacing": pacing})
        return FakeResult(sent=len(keys))

    # raising=False: the fake stands in whether or not the library has the function yet
    monkeypatch.setattr(reindex, "enqueue_keys", enqueue_keys, raising=False)
    yield seen
    reindex_batch.get_settings.cache_clear()


def test_a_listing_batch_is_enqueued_with_the_deployment_settings(
    calls: list[dict[str, Any]],
) -> None:
    # Given a batch as the Map's listing child sends it
    event = {"keys": ["a.dcm", "b c.dcm"], "stale_only": True, "url_encoded": False}
    # When the handler runs
    out = reindex_batch.handler(event, Context())  # type: ignore[arg-type]
    # Then one call with the keys as given and the bucket, table and queue of the environment
    assert calls[0] == {
        "keys": ["a.dcm", "b c.dcm"],
        "bucket": ENV["BUCKET_NAME"],
        "table": ENV["TABLE_NAME"],
        "queue_url": ENV["QUEUE_URL"],
        "stale_only": True,
        "ledger": ENV["LEDGER_TABLE_NAME"],
        "include_failed": False,
    }
    assert out == {"sent": 2, "failed": 0, "waited_seconds": 0.0}


def test_the_batch_is_paced_by_the_queue_within_the_time_left(
    calls: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a threshold from the environment and 50 s left in the invocation
    monkeypatch.setenv("MAX_QUEUE_DEPTH", "1234")
    reindex_batch.get_settings.cache_clear()
    # When the handler runs
    reindex_batch.handler({"keys": ["a.dcm"]}, Context(remaining_ms=50_000))  # type: ignore[arg-type]
    # Then it waits above that depth for at most the time left minus the send margin
    pacing = calls[1]["pacing"]
    assert (pacing.max_depth, pacing.max_wait_seconds) == (1234, 40.0)


def test_a_busy_queue_fails_the_attempt_with_the_error_the_map_retries(
    calls: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a queue that stays deeper than the threshold
    def busy(keys: list[str], **_: Any) -> FakeResult:
        raise reindex.QueueBusy(5000, 2000, 40.0)

    monkeypatch.setattr(reindex, "enqueue_keys", busy)
    # When the handler runs / Then it raises the error the Map child's retrier names
    with pytest.raises(reindex_batch.ReindexQueueBusy):
        reindex_batch.handler({"keys": ["a.dcm"]}, Context())  # type: ignore[arg-type]
    definition = json.loads(REINDEX_WORKFLOW_FILE.read_text(encoding="utf-8"))
    for state in definition["States"].values():
        for task in state.get("ItemProcessor", {}).get("States", {}).values():
            (retrier,) = task["Retry"]
            assert reindex_batch.ReindexQueueBusy.__name__ in retrier["ErrorEquals"]


def test_the_run_can_include_keys_whose_latest_event_failed(
    calls: list[dict[str, Any]],
) -> None:
    # Given a batch of a run started with include_failed
    event = {"keys": ["a.dcm"], "stale_only": True, "include_failed": True}
    # When the handler runs / Then the planning is told to keep known failures
    reindex_batch.handler(event, Context())  # type: ignore[arg-type]
    assert calls[0]["include_failed"] is True
    assert calls[0]["ledger"] == ENV["LEDGER_TABLE_NAME"]
    # ... and the definition hands the run's flag to every child
    definition = json.loads(REINDEX_WORKFLOW_FILE.read_text(encoding="utf-8"))
    assert definition["States"]["Defaults"]["Parameters"]["include_failed"] is False
    for state in definition["States"].values():
        if state["Type"] != "Map":
            continue
        assert state["ItemBatcher"]["BatchInput"]["include_failed.$"] == "$.include_failed"
        for task in state["ItemProcessor"]["States"].values():
            payload = task["Parameters"]["Payload"]
            assert payload["include_failed.$"] == "$.BatchInput.include_failed"


def test_inventory_keys_are_url_decoded(calls: list[dict[str, Any]]) -> None:
    event = {"keys": ["dir/a+b%2B.dcm"], "url_encoded": True}
    reindex_batch.handler(event, Context())  # type: ignore[arg-type]
    assert calls[0]["keys"] == ["dir/a b+.dcm"]
    assert calls[0]["stale_only"] is False


def test_a_failed_send_fails_the_child(
    calls: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        reindex,
        "enqueue_keys",
        lambda keys, **_: FakeResult(sent=len(keys) - 1, failed=1),
        raising=False,
    )
    with pytest.raises(reindex_batch.ReindexBatchError, match="1 of 3 sends failed"):
        reindex_batch.handler({"keys": ["a", "b", "c"]}, Context())  # type: ignore[arg-type]


def test_settings_are_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BUCKET_NAME", "images-bucket")
    monkeypatch.setenv("TABLE_NAME", "dicom-metadata")
    monkeypatch.setenv("QUEUE_URL", "http://not-https")
    with pytest.raises(ValidationError):
        reindex_batch.ReindexSettings.from_environment()
