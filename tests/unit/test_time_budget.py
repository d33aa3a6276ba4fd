"""The time budget (DESIGN.md): every Express execution of our definition files ends within
240 s even when every attempt of every retrier times out, computed by
:mod:`pipeline.workflow.budget`; and the calculator itself, on hand-written definitions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cdk.constants import Ingestion
from pipeline.names import PIPE_BATCH_SIZE, REINDEX_WORKFLOW_FILE, WORKFLOW_FILE
from pipeline.workflow.budget import UnboundedDefinition, express_parts, retry_cost, worst_case

#: DESIGN.md: the worst case stays under 240 s (Express ends executions at 300 s).
BUDGET_SECONDS = 240
#: How each definition file is deployed (the file does not say; the CDK app does).
EXPRESS_MACHINE = {WORKFLOW_FILE.name: True, REINDEX_WORKFLOW_FILE.name: False}
DEFINITIONS = sorted(WORKFLOW_FILE.parent.glob("*.asl.json"))


def test_every_definition_file_is_known() -> None:
    # A new definition file must say how it is deployed, or its budget goes unchecked.
    assert {p.name for p in DEFINITIONS} == set(EXPRESS_MACHINE)


@pytest.mark.parametrize("path", DEFINITIONS, ids=lambda p: p.name)
def test_every_express_execution_ends_within_the_budget(path: Path) -> None:
    # Given a definition file, and the parts of it that run as Express executions
    definition = json.loads(path.read_text(encoding="utf-8"))
    parts = list(express_parts(definition, express=EXPRESS_MACHINE[path.name]))
    assert parts, f"{path.name} has no Express part to check"

    for name, part in parts:
        # When its worst case is computed (every inline Map over at most a batch)
        budget = worst_case(part, max_items=PIPE_BATCH_SIZE)

        # Then it fits the budget, with every Task bounded by TimeoutSeconds
        assert budget.seconds <= BUDGET_SECONDS, (name, budget.seconds, budget.path)


def test_the_ingestion_workflow_figure() -> None:
    # The number docs/workflow.md quotes (update both together).
    definition = json.loads(WORKFLOW_FILE.read_text(encoding="utf-8"))
    budget = worst_case(definition, max_items=PIPE_BATCH_SIZE)
    assert budget.seconds == 235
    assert budget.states["ParseHeaders"] == 131  # 2 attempts x 65 s + 1 s backoff
    # the queue hides a batch for longer than its execution can take
    assert budget.seconds < Ingestion.QUEUE_VISIBILITY_SECONDS


# -- the calculator -------------------------------------------------------------------------


def task(timeout: float | None, *, retry: list[dict[str, Any]] | None = None, **rest: Any) -> Any:
    state: dict[str, Any] = {"Type": "Task", "Resource": "arn:aws:states:::x", **rest}
    if timeout is not None:
        state["TimeoutSeconds"] = timeout
    if retry is not None:
        state["Retry"] = retry
    return state


def machine(start: str, **states: Any) -> dict[str, Any]:
    return {"StartAt": start, "States": states}


def test_backoff_doubles_and_is_capped() -> None:
    # 1 + 4 attempts of 10 s; waits 1, 2, 4, then 8 capped at 5
    state = task(10, retry=[{"ErrorEquals": ["X"], "MaxAttempts": 4, "MaxDelaySeconds": 5}])
    assert retry_cost(state, 10) == 5 * 10 + 1 + 2 + 4 + 5


def test_every_retrier_counts_its_own_attempts() -> None:
    # Errors alternating between two retriers can use both: 1 + 2 + 1 attempts
    state = task(
        7,
        retry=[
            {"ErrorEquals": ["A"], "MaxAttempts": 2, "IntervalSeconds": 3, "BackoffRate": 1},
            {"ErrorEquals": ["B"], "MaxAttempts": 1, "IntervalSeconds": 2},
        ],
    )
    assert worst_case(machine("T", T={**state, "End": True}), max_items=1).seconds == (
        4 * 7 + 3 + 3 + 2
    )


def test_asl_defaults_apply_to_a_bare_retrier() -> None:
    # MaxAttempts 3, IntervalSeconds 1, BackoffRate 2: waits 1, 2, 4
    assert retry_cost(task(1, retry=[{"ErrorEquals": ["States.ALL"]}]), 1) == 4 + 7


def test_the_longest_branch_of_a_choice_and_a_catch_continue_the_path() -> None:
    # Given a Choice between a short and a long branch, the long one caught into a third task
    definition = machine(
        "Pick",
        Pick={
            "Type": "Choice",
            "Choices": [{"Variable": "$.x", "BooleanEquals": True, "Next": "Short"}],
            "Default": "Long",
        },
        Short=task(5, End=True),
        Long=task(20, Catch=[{"ErrorEquals": ["States.ALL"], "Next": "After"}], Next="Done"),
        After=task(30, End=True),
        Done={"Type": "Succeed"},
    )
    budget = worst_case(definition, max_items=1)
    # Then the path is Pick -> Long -> (caught) After
    assert budget.seconds == 50
    assert budget.path == ["Pick", "Long", "After"]


def test_a_map_runs_in_waves_of_its_max_concurrency() -> None:
    inner = {"ProcessorConfig": {"Mode": "INLINE"}, **machine("T", T=task(10, End=True))}
    for concurrency, items, waves in ((10, 10, 1), (4, 10, 3), (0, 25, 1), (1, 3, 3)):
        definition = machine(
            "M",
            M={"Type": "Map", "MaxConcurrency": concurrency, "ItemProcessor": inner, "End": True},
        )
        assert worst_case(definition, max_items=items).seconds == waves * 10, concurrency


def test_parallel_takes_its_slowest_branch_and_wait_its_seconds() -> None:
    definition = machine(
        "P",
        P={
            "Type": "Parallel",
            "Branches": [machine("A", A=task(3, End=True)), machine("B", B=task(8, End=True))],
            "Next": "W",
        },
        W={"Type": "Wait", "Seconds": 4, "End": True},
    )
    assert worst_case(definition, max_items=1).seconds == 12


@pytest.mark.parametrize(
    "definition",
    [
        machine("T", T=task(None, End=True)),
        machine("W", W={"Type": "Wait", "SecondsPath": "$.s", "End": True}),
        machine("A", A=task(1, Next="B"), B=task(1, Next="A")),
        machine("A", A=task(1, Catch=[{"ErrorEquals": ["States.ALL"], "Next": "A"}], End=True)),
        machine("A", A=task(1, Next="Nowhere")),
    ],
    ids=["task-without-timeout", "wait-from-input", "loop", "catch-loop", "undefined-next"],
)
def test_an_unbounded_definition_is_refused(definition: dict[str, Any]) -> None:
    with pytest.raises(UnboundedDefinition):
        worst_case(definition, max_items=1)


def test_a_task_without_timeout_is_refused_off_the_longest_path_too() -> None:
    definition = machine(
        "C",
        C={"Type": "Choice", "Choices": [], "Default": "Long"},
        Long=task(100, End=True),
        Orphan=task(None, End=True),
    )
    with pytest.raises(UnboundedDefinition, match="Orphan"):
        worst_case(definition, max_items=1)


def test_express_parts_are_the_express_machine_and_express_children() -> None:
    child = {"ProcessorConfig": {"Mode": "DISTRIBUTED", "ExecutionType": "EXPRESS"}}
    child.update(machine("T", T=task(1, End=True)))
    standard_child = {"ProcessorConfig": {"Mode": "DISTRIBUTED", "ExecutionType": "STANDARD"}}
    standard_child.update(machine("T", T=task(1, End=True)))
    definition = machine(
        "Fast",
        Fast={"Type": "Map", "ItemProcessor": child, "Next": "Slow"},
        Slow={"Type": "Map", "ItemProcessor": standard_child, "End": True},
    )
    assert [n for n, _ in express_parts(definition, express=False)] == ["Fast"]
    assert [n for n, _ in express_parts(definition, express=True)] == ["", "Fast"]
