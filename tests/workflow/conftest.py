"""Fixtures of the workflow layer: the whole ingestion path on moto, in process.

S3 → ingest queue → pipe emulator → the real ASL file (``pipeline/workflow/ingest.asl.json``, same
substitutions as CDK) → the real Lambda handler (in process) → DynamoDB / DLQ. The pipe runs
in the test thread (``run_pipe=False`` + :meth:`Harness.drain`), so every test is
deterministic. No network: moto intercepts every AWS call.

DICOM objects are pydicom's bundled test files (``test_file`` from ``tests/conftest.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest import mock

import pytest
from harness import Harness, start_harness  # tests/workflow is on sys.path (prepend mode)

from pipeline.local.stack import LocalStack


@pytest.fixture(scope="session", autouse=True)
def retry_sleeps() -> Iterator[list[float]]:
    """moto's Step Functions ``Retry`` really sleeps (≥ 1 s a try): record the waits instead.

    Session-scoped (hypothesis tests may not use function-scoped fixtures); tests that count
    retries clear the list first.
    """
    from moto.stepfunctions.parser.asl.component.common.retry import retrier_decl

    sleeps: list[float] = []
    with mock.patch.object(retrier_decl, "time", SimpleNamespace(sleep=sleeps.append)):
        yield sleeps


@pytest.fixture
def make_harness() -> Iterator[Callable[..., Harness]]:
    """Factory: ``make_harness(**LocalStack options, keep_test_event=False)``; stops them all."""
    stacks: list[LocalStack] = []

    def make(**options: Any) -> Harness:
        stack, harness = start_harness(**options)
        stacks.append(stack)
        return harness

    yield make
    for stack in reversed(stacks):
        stack.stop()


@pytest.fixture
def wf(make_harness: Callable[..., Harness]) -> Harness:
    """A fresh local stack with an empty queue, table and DLQ."""
    return make_harness()


@pytest.fixture(scope="session")
def dicom(test_file: Callable[[str], Path]) -> Callable[[str], bytes]:
    """The bytes of one of pydicom's bundled test files, by name."""

    def read(name: str) -> bytes:
        return test_file(name).read_bytes()

    return read
