"""The reindex definition's children stay inside Express's limits, and the CDK constants agree.

Worst case of a child (Express): every attempt of the one Task runs to its TimeoutSeconds,
plus every backoff at its full length (MaxDelaySeconds caps one; FULL jitter only shortens).
"""

from __future__ import annotations

import json
from typing import Any

from cdk.constants import Inventory, Reindex
from pipeline.names import REINDEX_WORKFLOW_FILE

#: Every Express execution must end within this (DESIGN: 300 s, with 60 s to spare).
EXPRESS_BUDGET_SECONDS = 240


def _children() -> dict[str, dict[str, Any]]:
    definition = json.loads(REINDEX_WORKFLOW_FILE.read_text(encoding="utf-8"))
    out = {}
    for state in definition["States"].values():
        processor = state.get("ItemProcessor")
        if processor is not None:
            assert processor["ProcessorConfig"]["ExecutionType"] == "EXPRESS"
            out.update(processor["States"])
    return out


def task_worst_case(task: dict[str, Any]) -> float:
    """Seconds one Task may take with all its retries: attempts x timeout + backoffs."""
    timeout = task["TimeoutSeconds"]
    total = float(timeout)
    for retrier in task.get("Retry", []):
        interval = retrier.get("IntervalSeconds", 1)
        rate = retrier.get("BackoffRate", 2.0)
        cap = retrier.get("MaxDelaySeconds")
        for n in range(retrier.get("MaxAttempts", 3)):
            delay = interval * rate**n
            total += (min(delay, cap) if cap else delay) + timeout
    return total


def test_every_child_task_has_a_timeout_and_the_worst_case_fits_express() -> None:
    children = _children()
    assert len(children) == 2  # one per Map (listing, inventory)
    for name, task in children.items():
        assert task["Type"] == "Task" and task.get("End") is True, name
        assert task["TimeoutSeconds"] == Reindex.TASK_TIMEOUT_SECONDS, name
        assert task_worst_case(task) == 210 <= EXPRESS_BUDGET_SECONDS, name


def test_the_function_times_out_before_its_task() -> None:
    # A function timeout is then reported as the function's error (and retried), never as a
    # States.Timeout of a still-running invocation that might send after the retry started.
    assert Reindex.FUNCTION_TIMEOUT_SECONDS < Reindex.TASK_TIMEOUT_SECONDS


def test_a_busy_queue_and_throttles_are_retried_but_timeouts_are_not() -> None:
    for task in _children().values():
        (retrier,) = task["Retry"]
        assert {"ReindexQueueBusy", "Lambda.TooManyRequestsException"} <= set(
            retrier["ErrorEquals"]
        )
        assert "States.Timeout" not in retrier["ErrorEquals"]
        assert "States.ALL" not in retrier["ErrorEquals"]


def test_the_worst_case_helper_counts_attempts_and_backoff() -> None:
    task = {
        "TimeoutSeconds": 10,
        "Retry": [{"IntervalSeconds": 2, "MaxAttempts": 3, "BackoffRate": 2, "MaxDelaySeconds": 5}],
    }
    assert task_worst_case(task) == 4 * 10 + 2 + 4 + 5


def test_the_inventory_example_in_the_docs_starts_an_inventory_run() -> None:
    # Given the by-hand example of docs/operations.md that starts a run from an inventory report
    from pathlib import Path

    from pipeline.names import INVENTORY_PREFIX

    doc = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text("utf-8")
    (section,) = [p for p in doc.split("\n## ") if p.startswith("Reindex at scale")]
    inputs = [
        json.loads(line.split("--input '", 1)[1].rsplit("'", 1)[0])
        for line in section.splitlines()
        if "--input '" in line
    ]
    definition = json.loads(REINDEX_WORKFLOW_FILE.read_text(encoding="utf-8"))

    # Then its input names the manifest the definition's Source choice reads (without it the
    # run would list the bucket instead), as a key under the inventory's prefix and folder
    (example,) = inputs
    (choice,) = definition["States"]["Source"]["Choices"]
    assert choice["Variable"] == "$.manifest_key" and choice["Next"] == "FromInventory"
    key = example["manifest_key"]
    assert key.startswith(f"{INVENTORY_PREFIX}<image bucket>/{Inventory.ID}/")
    assert key.endswith("/manifest.json")
    assert set(example) <= {"manifest_key", "stale_only", "include_failed"}
