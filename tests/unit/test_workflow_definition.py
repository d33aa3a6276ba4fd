"""The workflow file's promises that no emulator run can show: a parse step retried once, then
caught, and a Task timeout longer than the function's own."""

from __future__ import annotations

import json
from typing import Any

from cdk.constants import Ingestion
from pipeline.names import CLAIM_ATTRIBUTE, TABLE_KEY, WORKFLOW_FILE


def _states() -> dict[str, Any]:
    states: dict[str, Any] = {}

    def walk(block: dict[str, Any]) -> None:
        for name, state in block["States"].items():
            states[name] = state
            if "ItemProcessor" in state:
                walk(state["ItemProcessor"])

    walk(json.loads(WORKFLOW_FILE.read_text(encoding="utf-8")))
    return states


def test_the_parse_step_is_retried_once_then_caught() -> None:
    # Throttles, function timeouts and out-of-memory are retried once, briefly; then the
    # Catch hands the batch back instead of failing the execution.
    parse = _states()["ParseHeaders"]
    (retrier,) = parse["Retry"]
    assert {"Lambda.TooManyRequestsException", "Lambda.Unknown", "Sandbox.Timedout"} <= set(
        retrier["ErrorEquals"]
    )
    assert "States.Timeout" in retrier["ErrorEquals"]
    assert retrier["MaxAttempts"] == 1 and retrier["MaxDelaySeconds"] <= 2
    (catch,) = parse["Catch"]
    assert set(catch["ErrorEquals"]) == {"States.TaskFailed", "States.Timeout"}
    assert catch["Next"] == "HandBack"


def test_the_parse_task_outlasts_the_function() -> None:
    # States.Timeout must not cut a function short that is still within its own timeout.
    assert _states()["ParseHeaders"]["TimeoutSeconds"] > Ingestion.FUNCTION_TIMEOUT_SECONDS


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


def test_the_claim_and_the_final_entry_use_the_ledgers_names() -> None:
    # The claim is a conditional put naming this delivery's message in CLAIM_ATTRIBUTE (what
    # the parse step reads back); the final entry after the send carries no claim.
    states = _states()
    claim = states["ClaimInLedger"]["Parameters"]
    assert claim["Item"][CLAIM_ATTRIBUTE] == {"S.$": "$.message_id"}
    assert claim["ExpressionAttributeNames"] == {"#key": TABLE_KEY, "#claim": CLAIM_ATTRIBUTE}
    assert claim["ConditionExpression"] == "attribute_not_exists(#key) OR #claim = :me"
    assert claim["ExpressionAttributeValues"] == {":me": {"S.$": "$.message_id"}}
    final = states["NoteInLedger"]["Parameters"]["Item"]
    assert CLAIM_ATTRIBUTE not in final
    assert set(claim["Item"]) == set(final) | {CLAIM_ATTRIBUTE}
    # only a lost claim (the condition) ends the record without a send
    catches = {c["Next"]: c["ErrorEquals"] for c in states["ClaimInLedger"]["Catch"]}
    assert catches["ClaimedElsewhere"] == ["DynamoDB.ConditionalCheckFailedException"]
    assert states["ClaimedElsewhere"]["Parameters"]["reason"] == "already_in_dlq"
