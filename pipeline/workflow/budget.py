"""The worst-case duration of a state machine execution, computed from its definition.

An Express execution ends after 300 s whatever its states do (DESIGN.md, "Time, CPU and
concurrency budgets"); ours must end earlier, on its own terms. :func:`worst_case` reads an
Amazon States Language definition and bounds how long one execution can take, conservatively:

* a ``Task`` takes its ``TimeoutSeconds`` on *every* attempt (a Task without it has no bound:
  :class:`UnboundedDefinition`), however fast the error that triggers a retry really is;
* every retrier of a state is exhausted (each counts its own attempts, so errors that alternate
  between retriers can use them all): ``1 + sum(MaxAttempts)`` attempts, plus each backoff at
  its largest, ``IntervalSeconds * BackoffRate ** n`` capped by ``MaxDelaySeconds``
  (``JitterStrategy: FULL`` waits a random time *up to* that, never more);
* the path taken is the longest one: a ``Choice`` may go to any of its targets, a ``Catch``
  continues the path at its target after the retries were spent, and ``Parallel`` branches
  run together (the slowest counts);
* an inline ``Map`` runs its items in waves of ``MaxConcurrency`` (``0``: all at once), each
  wave as long as the slowest iteration: ``ceil(max_items / MaxConcurrency)`` waves;
* ``Wait`` takes its ``Seconds`` (``SecondsPath``/``Timestamp`` have no bound: refused);
* a loop (a state reachable from itself) has no bound either: refused.

:func:`express_parts` names the parts of a definition that run as Express executions: the
whole machine when it is Express, and each Distributed Map's ``ItemProcessor`` whose
``ExecutionType`` is ``EXPRESS`` (its child executions are Express workflows).

Examples
--------
>>> definition = {"StartAt": "T", "States": {"T": {"Type": "Task", "Resource": "x",
...     "TimeoutSeconds": 10, "Retry": [{"ErrorEquals": ["States.ALL"], "MaxAttempts": 2,
...     "IntervalSeconds": 1, "BackoffRate": 2.0}], "End": True}}}
>>> worst_case(definition, max_items=10).seconds   # 3 attempts of 10 s, waits of 1 s and 2 s
33.0
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Budget", "UnboundedDefinition", "express_parts", "retry_cost", "worst_case"]

#: ASL's defaults for a retrier.
_DEFAULT_ATTEMPTS = 3
_DEFAULT_INTERVAL = 1.0
_DEFAULT_RATE = 2.0


class UnboundedDefinition(ValueError):
    """The definition allows an execution without a bound on its duration."""


@dataclass(frozen=True)
class Budget:
    """The worst case of a definition.

    Attributes
    ----------
    seconds:
        The longest an execution can take.
    path:
        The states along the longest path (a Map's or Parallel's inner states as
        ``Outer/Inner``).
    states:
        Each state's own worst case (its attempts and backoffs; a Map: all its waves), by the
        same names.
    """

    seconds: float
    path: list[str] = field(default_factory=list)
    states: dict[str, float] = field(default_factory=dict)


def retry_cost(state: dict[str, Any], attempt_seconds: float) -> float:
    """One state's worst case: every attempt takes ``attempt_seconds``, every backoff its
    largest.

    Examples
    --------
    >>> retry_cost({"Retry": [{"ErrorEquals": ["A"], "MaxAttempts": 3, "IntervalSeconds": 2,
    ...     "BackoffRate": 3, "MaxDelaySeconds": 10}]}, 5.0)
    38.0
    """
    attempts, waits = 1, 0.0
    for retrier in state.get("Retry", []):
        n = int(retrier.get("MaxAttempts", _DEFAULT_ATTEMPTS))
        interval = float(retrier.get("IntervalSeconds", _DEFAULT_INTERVAL))
        rate = float(retrier.get("BackoffRate", _DEFAULT_RATE))
        cap = retrier.get("MaxDelaySeconds")
        attempts += n
        for i in range(n):
            delay = interval * rate**i
            waits += delay if cap is None else min(delay, float(cap))
    return attempts * attempt_seconds + waits


def worst_case(definition: dict[str, Any], *, max_items: int) -> Budget:
    """The longest an execution of ``definition`` can take (see the module docstring).

    Parameters
    ----------
    definition:
        A parsed ASL definition (or a Map's ``ItemProcessor``).
    max_items:
        The most items an inline ``Map`` iterates over (for the ingestion workflow, the pipe's
        batch size: every Map there iterates over the batch's messages or records).

    Raises
    ------
    UnboundedDefinition
        A Task without ``TimeoutSeconds``, a ``Wait`` without ``Seconds``, a loop, a state
        that is not defined, or a Map with no bound on its waves.
    """
    return _Walker(max_items).block(definition, prefix="")


def express_parts(definition: dict[str, Any], *, express: bool) -> Iterator[tuple[str, Any]]:
    """The parts of ``definition`` that run as Express executions, by name.

    ``express`` says whether the machine itself is an Express workflow (the definition file
    does not say: its deployment does). Yields ``("", definition)`` for an Express machine,
    and ``(state name, ItemProcessor)`` for each Distributed Map whose children are Express.
    """
    if express:
        yield "", definition

    def walk(block: dict[str, Any], prefix: str) -> Iterator[tuple[str, Any]]:
        for name, state in block.get("States", {}).items():
            processor = state.get("ItemProcessor") or state.get("Iterator")
            if processor is not None:
                config = processor.get("ProcessorConfig", {})
                if config.get("Mode") == "DISTRIBUTED" and config.get("ExecutionType") == "EXPRESS":
                    yield prefix + name, processor
                yield from walk(processor, f"{prefix}{name}/")
            for i, branch in enumerate(state.get("Branches", [])):
                yield from walk(branch, f"{prefix}{name}[{i}]/")

    yield from walk(definition, "")


class _Walker:
    def __init__(self, max_items: int) -> None:
        if max_items < 1:
            raise ValueError("max_items must be at least 1")
        self.max_items = max_items

    def block(self, block: dict[str, Any], prefix: str) -> Budget:
        states: dict[str, Any] = block.get("States", {})
        own: dict[str, float] = {}
        nested: dict[str, float] = {}
        inner_paths: dict[str, list[str]] = {}
        memo: dict[str, tuple[float, list[str]]] = {}

        def cost(name: str) -> float:
            if name not in own:
                seconds, inner = self.state(states[name], prefix + name, nested)
                own[name] = seconds
                inner_paths[name] = inner
            return own[name]

        def longest(name: str, visiting: tuple[str, ...]) -> tuple[float, list[str]]:
            if name not in states:
                raise UnboundedDefinition(f"{prefix}{name} is not defined")
            if name in visiting:
                loop = " -> ".join(prefix + n for n in (*visiting[visiting.index(name) :], name))
                raise UnboundedDefinition(f"a loop has no bound: {loop}")
            if name in memo:
                return memo[name]
            here = cost(name)
            best: tuple[float, list[str]] = (0.0, [])
            for nxt in _successors(states[name]):
                candidate = longest(nxt, (*visiting, name))
                if candidate[0] > best[0] or not best[1]:
                    best = candidate
            result = (here + best[0], [prefix + name, *inner_paths[name], *best[1]])
            memo[name] = result
            return result

        if "StartAt" not in block:
            raise UnboundedDefinition(f"{prefix or 'the definition'} has no StartAt")
        seconds, path = longest(block["StartAt"], ())
        # States off the longest path are costed too, so the table shows every state.
        for name in states:
            cost(name)
        table = {prefix + n: s for n, s in own.items()}
        table.update(nested)
        return Budget(seconds=seconds, path=path, states=table)

    def state(
        self, state: dict[str, Any], name: str, table: dict[str, float]
    ) -> tuple[float, list[str]]:
        """One state's own worst case (retries included) and the longest path inside it."""
        kind = state.get("Type")
        if kind == "Task":
            if "TimeoutSeconds" not in state:
                raise UnboundedDefinition(f"Task {name} has no TimeoutSeconds")
            return retry_cost(state, float(state["TimeoutSeconds"])), []
        if kind == "Wait":
            if "Seconds" not in state:
                raise UnboundedDefinition(f"Wait {name} has no fixed Seconds")
            return float(state["Seconds"]), []
        if kind in ("Pass", "Choice", "Succeed", "Fail"):
            return 0.0, []
        if kind == "Map":
            processor = state.get("ItemProcessor") or state.get("Iterator")
            if processor is None:
                raise UnboundedDefinition(f"Map {name} has no ItemProcessor")
            mode = processor.get("ProcessorConfig", {}).get("Mode", "INLINE")
            if mode != "INLINE":
                raise UnboundedDefinition(
                    f"Map {name} is distributed: bound its child executions instead"
                )
            inner = self.block(processor, prefix=f"{name}/")
            table.update(inner.states)
            concurrency = int(state.get("MaxConcurrency", 0))
            waves = 1 if concurrency == 0 else math.ceil(self.max_items / concurrency)
            return retry_cost(state, waves * inner.seconds), inner.path
        if kind == "Parallel":
            branches = [
                self.block(b, prefix=f"{name}[{i}]/") for i, b in enumerate(state["Branches"])
            ]
            for b in branches:
                table.update(b.states)
            slowest = max(branches, key=lambda b: b.seconds, default=Budget(0.0))
            return retry_cost(state, slowest.seconds), slowest.path
        raise UnboundedDefinition(f"{name} has an unknown Type {kind!r}")


def _successors(state: dict[str, Any]) -> list[str]:
    """Every state that may run after ``state``: Next, Choice targets and Default, Catch."""
    out: list[str] = []
    if "Next" in state:
        out.append(state["Next"])
    if state.get("Type") == "Choice":
        out.extend(_choice_targets(state.get("Choices", [])))
        if "Default" in state:
            out.append(state["Default"])
    out.extend(c["Next"] for c in state.get("Catch", []))
    return list(dict.fromkeys(out))


def _choice_targets(rules: list[dict[str, Any]]) -> list[str]:
    return [r["Next"] for r in rules if "Next" in r]
