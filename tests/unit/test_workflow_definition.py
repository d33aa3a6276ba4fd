"""The workflow file's promises that no emulator run can show: backoff long enough for a burst
of Lambda throttling to drain, and within an Express execution's five minutes."""

from __future__ import annotations

import json
from typing import Any

from pipeline.names import WORKFLOW_FILE

EXPRESS_LIMIT_S = 300


def _states() -> dict[str, Any]:
    states: dict[str, Any] = {}

    def walk(block: dict[str, Any]) -> None:
        for name, state in block["States"].items():
            states[name] = state
            if "ItemProcessor" in state:
                walk(state["ItemProcessor"])

    walk(json.loads(WORKFLOW_FILE.read_text(encoding="utf-8")))
    return states


def _longest_wait(retrier: dict[str, Any]) -> float:
    """The longest total wait a retrier allows (JitterStrategy FULL waits at most this)."""
    wait, total = float(retrier["IntervalSeconds"]), 0.0
    for _ in range(retrier["MaxAttempts"]):
        total += min(wait, retrier.get("MaxDelaySeconds", wait))
        wait *= retrier["BackoffRate"]
    return total


def test_lambda_throttling_is_retried_for_minutes_within_the_express_limit() -> None:
    (retrier,) = [
        r
        for r in _states()["ParseHeaders"]["Retry"]
        if "Lambda.TooManyRequestsException" in r["ErrorEquals"]
    ]
    assert retrier["JitterStrategy"] == "FULL"
    assert 120 <= _longest_wait(retrier) < EXPRESS_LIMIT_S - 60


def test_no_iteration_state_can_fail_the_execution() -> None:
    # Every Task inside the Map catches States.ALL: an iteration ends as an outcome, never as
    # a failed execution that would send the whole batch back.
    states = _states()
    processor = json.loads(WORKFLOW_FILE.read_text(encoding="utf-8"))["States"]["ApplyRecords"]
    for name in processor["ItemProcessor"]["States"]:
        state = states[name]
        assert state["Type"] != "Fail", name
        if state["Type"] == "Task":
            caught = {e for c in state.get("Catch", []) for e in c["ErrorEquals"]}
            assert "States.ALL" in caught, name


def test_the_output_is_a_partial_batch_response() -> None:
    states = _states()
    for name in ("Done", "PartialFailure"):
        assert "batchItemFailures" in str(states[name]["Parameters"]), name
    assert states["RetryLater"]["Parameters"]["failure"] == {"itemIdentifier.$": "$.message_id"}
