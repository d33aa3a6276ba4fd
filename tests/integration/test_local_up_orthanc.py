"""``local up`` with its Orthanc, killed with SIGKILL: Orthanc dies with it, and the next start
removes what the killed run left (its stack.json, its Orthanc folder with the password)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.orthanc.local import FOLDER_PREFIX

CLI = [sys.executable, "-m", "pipeline.cli"]


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def _running(pid: int) -> bool:
    try:
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


def _ready(state: Path, proc: subprocess.Popen[bytes], stale: str = "") -> dict[str, str]:
    deadline = time.monotonic() + 120
    path = state / "stack.json"
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        text = path.read_text() if path.exists() else ""
        if text.strip() and text != stale:
            return dict(json.loads(text))
        time.sleep(0.1)
    pytest.fail("local up never wrote stack.json")


def test_sigkill_takes_orthanc_along_and_the_next_start_cleans_up(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    args = [*CLI, "local", "up", "--state-dir", str(tmp_path)]
    # Given local up running with its Orthanc
    first = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    info = _ready(tmp_path, first)
    assert info.get("orthanc_url")
    (orthanc,) = [
        pid
        for pid in _children(first.pid)
        if b"Orthanc" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]
    config = Path(Path(f"/proc/{orthanc}/cmdline").read_bytes().split(b"\0")[-2].decode())
    folder = config.parent
    assert folder.name.startswith(FOLDER_PREFIX) and folder.is_dir()
    # When it is killed with SIGKILL
    first.send_signal(signal.SIGKILL)
    first.wait()
    # Then its Orthanc dies too, within seconds
    deadline = time.monotonic() + 10
    while _running(orthanc) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _running(orthanc)
    assert folder.is_dir()  # what the killed run could not remove
    # When local up starts again for the same state directory
    stale = (tmp_path / "stack.json").read_text()
    second = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        again = _ready(tmp_path, second, stale=stale)
        # Then the killed run's Orthanc folder (and password) is gone, and a new stack runs
        assert not folder.exists()
        assert again["orthanc_password"] != info["orthanc_password"]
    finally:
        second.send_signal(signal.SIGINT)
        assert second.wait(timeout=10) == 130
    assert not (tmp_path / "stack.json").exists()
