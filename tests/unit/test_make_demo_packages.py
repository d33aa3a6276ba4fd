"""``make demo``'s Debian packages: installed as root with apt-get, else one line and on.

The Makefile's ``demo-packages`` recipe runs with fake ``dpkg``, ``id`` and ``apt-get`` first on
PATH (they log their calls), so nothing is installed for real.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def _fake(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def _run(
    tmp_path: Path, *, installed: bool, uid: int
) -> tuple[subprocess.CompletedProcess[str], Path]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "apt.log"
    policy = tmp_path / "policy-rc.d"
    _fake(bin_dir, "dpkg", "exit 0" if installed else "exit 1")
    _fake(bin_dir, "id", f"echo {uid}")
    # apt-get logs its arguments, and whether the services were kept from starting then
    _fake(
        bin_dir,
        "apt-get",
        f'echo "$* policy=$(test -x {policy} && echo on || echo off)" >> {log}',
    )
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    done = subprocess.run(
        ["make", "-s", "--no-print-directory", "demo-packages", f"POLICY_RC={policy}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done, log


def test_as_root_the_missing_packages_are_installed_with_services_kept_off(
    tmp_path: Path,
) -> None:
    # Given root with apt-get and none of Orthanc's packages installed
    done, log = _run(tmp_path, installed=False, uid=0)
    # Then apt-get updates and installs every package, the services held by policy-rc.d
    assert done.returncode == 0, done.stderr
    calls = log.read_text().splitlines()
    assert calls[0] == "update -qq policy=on"
    assert calls[1].startswith("install -y -qq orthanc orthanc-dicomweb orthanc-python")
    assert calls[1].endswith("python3-venv policy=on")
    # and the policy file is gone afterwards
    assert not (tmp_path / "policy-rc.d").exists()


def test_not_root_says_in_one_line_that_the_demo_runs_without_orthanc(tmp_path: Path) -> None:
    # Given a user who is not root
    done, log = _run(tmp_path, installed=False, uid=1000)
    # Then nothing is installed, one line says why, and make goes on (exit 0)
    assert done.returncode == 0
    assert not log.exists()
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert len(lines) == 1 and "runs without Orthanc" in lines[0] and "make orthanc" in lines[0]


def test_nothing_happens_when_the_packages_are_there(tmp_path: Path) -> None:
    # Given every package installed
    done, log = _run(tmp_path, installed=True, uid=0)
    # Then apt-get is not called and nothing is printed
    assert done.returncode == 0
    assert not log.exists()
    assert done.stdout.strip() == ""
