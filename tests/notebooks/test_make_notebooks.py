"""``make notebooks`` on its own: with no stack running it starts one, seeds it with the sample
set, runs the three notebooks into HTML and stops it, writing nothing outside the checkout;
with a running local stack it uses that one."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from notebook_support import ROOT, Seeded

from pipeline.local.notebooks import NOTEBOOKS, main


def test_make_notebooks_without_a_stack_starts_seeds_runs_and_stops_one(tmp_path: Path) -> None:
    # Given no running stack, and a HOME that must stay empty
    home = tmp_path / "home"
    home.mkdir()
    out = tmp_path / "out"
    # When `make notebooks` runs
    done = subprocess.run(
        [
            "make",
            "-s",
            "--no-print-directory",
            "notebooks",
            f"NOTEBOOK_OUT={out}",
            f"STACK_FILE={tmp_path / 'none.json'}",
        ],
        cwd=ROOT,
        env={**os.environ, "HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    # Then it exits 0 having started and seeded a stack, with an HTML page per notebook
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "starting one for the notebooks" in done.stdout
    assert "seeded: " in done.stdout
    for name in NOTEBOOKS:
        html = out / f"{name}.html"
        assert html.is_file() and html.stat().st_size > 10_000, name
        assert html.stat().st_mode & 0o777 == 0o600
    # and the stack it started is gone (its stack.json removed), nothing written to HOME
    assert not (out / "stack.json").exists()
    assert list(home.iterdir()) == []


def test_notebooks_use_a_running_local_stack(
    seeded: Seeded, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given the seeded local stack running (with its broken objects in the DLQ)
    # When the notebooks run against its stack.json
    status = main(["--out", str(tmp_path), "--stack", str(seeded.stack_file)])
    # Then they used it, not a new one: the redrive notebook shows its broken prefix
    out = capsys.readouterr().out
    assert status == 0, out
    assert "using the running local stack" in out and "starting one" not in out
    assert "broken" in (tmp_path / "dlq_redrive.html").read_text(encoding="utf-8")
