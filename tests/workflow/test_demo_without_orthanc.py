"""``make demo`` on a machine without Orthanc: the demo runs without it and says so in one line.

A missing dependency is never called a bug: when Debian's Orthanc packages (or the Python
plugin's ``python3-venv``) are not installed, the demo sends its samples straight into S3, one
object is overwritten and another deleted in S3, and every record is still accounted for.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.orthanc import local as orthanc_local


def _not_installed(*args: object, **kwargs: object) -> orthanc_local.Installation:
    raise orthanc_local.OrthancNotInstalled(
        "Orthanc is not installed (missing the Orthanc program): run `make orthanc` to install "
        "Debian's packages"
    )


@pytest.mark.parametrize("how", ["not installed", "--no-orthanc"])
def test_demo_without_orthanc_accounts_for_every_record(
    how: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a machine where Orthanc's packages are missing (or the user asks for no Orthanc)
    argv = ["demo", "--limit", "12", "--state-dir", str(tmp_path)]
    if how == "not installed":
        monkeypatch.setattr(orthanc_local, "find_installation", _not_installed)
    else:
        argv.append("--no-orthanc")
    # When the demo runs
    status = main(argv)
    out, err = capsys.readouterr()
    # Then it exits 0, having said in one line that it runs without Orthanc, never "a bug"
    assert status == 0, out + err
    notes = [line for line in err.splitlines() if "without Orthanc" in line]
    assert len(notes) == 1, err
    if how == "not installed":
        assert "make orthanc" in notes[0] and "not installed" in notes[0]
    assert "a bug" not in err and "Traceback" not in err
    # and every record the samples, the overwrite and the delete caused is accounted for
    summary = json.loads((tmp_path / "demo-summary.json").read_text())
    assert summary["orthanc"] is None
    assert summary["events"]["ObjectRemoved"] == 1
    assert sum(summary["outcomes"].values()) == sum(summary["events"].values())
    assert summary["failed_executions"] == 0
    assert summary["table_items"]["deleted"] == 1
    assert summary["failed_by_code"].get("STORAGE_ENCODED") == 1
    assert summary["dlq_messages"] == summary["outcomes"].get("failed", 0)
