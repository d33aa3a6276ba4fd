"""Every notebook runs on a local stack with nothing in it: no data is no error, and every
plot is still drawn (saying there is nothing to show). A module of its own: one local stack
per process at a time, and the seeded one lives as long as its module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from notebook_support import errors, images, reset_moto, run_notebook

from pipeline.local.stack import LocalStack

PLOTS = {"metadata_analysis": 4, "ingestion_audit": 4, "dlq_redrive": 2}


@pytest.fixture(scope="module")
def empty_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with LocalStack(server=True, orthanc=False) as stack:
        state = tmp_path_factory.mktemp("empty") / "stack.json"
        stack.write_info(state)
        stack.drain(timeout=30)
        yield state
        reset_moto(stack)


@pytest.mark.parametrize("name", sorted(PLOTS))
def test_each_notebook_runs_on_an_empty_stack(name: str, empty_stack: Path, tmp_path: Path) -> None:
    extra = {"export_path": str(tmp_path / "r.parquet")} if name == "metadata_analysis" else {}
    nb = run_notebook(name, tmp_path, stack_file=str(empty_stack), **extra)
    assert errors(nb) == []
    assert images(nb) == PLOTS[name]
