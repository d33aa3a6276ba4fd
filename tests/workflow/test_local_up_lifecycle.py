"""``local up`` stops when asked, every time, and owns its state directory.

Ctrl-C and SIGTERM stop everything within 10 s, 50 tries in a row while the machine is busy; a
second ``local up`` for the same state directory stops at once naming the first; the
handler's JSON logs go to ``.local/logs/`` while the terminal shows short status lines.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import boto3
import pytest

from pipeline.dicom.samples import pydicom_files_dir

CLI = [sys.executable, "-m", "pipeline.cli"]
TRIES = 50
STOP_WITHIN = 10.0


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}


def _up(state: Path, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*CLI, "local", "up", "--no-orthanc", "--state-dir", str(state), *extra],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _ready(
    state: Path, proc: subprocess.Popen[bytes], timeout: float = 120, stale: str | None = None
) -> dict[str, str]:
    """stack.json once ``proc`` wrote it (a file with the ``stale`` text is not its)."""
    path = state / "stack.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            pytest.fail(f"local up exited early with {proc.returncode}: {err}")
        text = path.read_text() if path.exists() else ""
        if text.strip() and text != stale:
            return dict(json.loads(text))
        time.sleep(0.05)
    proc.kill()
    pytest.fail("local up never wrote stack.json")


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _burn(stop: threading.Event) -> subprocess.Popen[bytes]:
    """A process keeping one core busy (bounded: it ends by itself after 10 minutes)."""
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time\nend = time.time() + 600\nwhile time.time() < end: pass",
        ]
    )


def test_ctrl_c_and_sigterm_stop_everything_within_10_s_50_times_under_load(
    tmp_path: Path,
) -> None:
    # Given a busy machine (a process burning a core) and two lanes of tries side by side
    burner = _burn(threading.Event())
    failures: list[str] = []
    slowest: list[float] = []

    def lane(lane_id: int, tries: int) -> None:
        for attempt in range(tries):
            state = tmp_path / f"lane{lane_id}-{attempt}"
            sig = signal.SIGINT if attempt % 2 == 0 else signal.SIGTERM
            proc = _up(state)
            try:
                info = _ready(state, proc)
                port = urlparse(info["endpoint_url"]).port or 0
                # When it is sent Ctrl-C (SIGINT) or SIGTERM
                sent = time.monotonic()
                proc.send_signal(sig)
                try:
                    rc = proc.wait(timeout=STOP_WITHIN)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                    failures.append(f"lane {lane_id} try {attempt}: still running {STOP_WITHIN} s")
                    continue
                slowest.append(time.monotonic() - sent)
                err = proc.stderr.read().decode() if proc.stderr else ""
                # Then it exited 130 or 143 with one last line, stack.json gone, the port free
                want = (130, "interrupted") if sig == signal.SIGINT else (143, "terminated")
                if rc != want[0] or err.splitlines()[-1] != f"dicom-pipeline: {want[1]}":
                    failures.append(f"lane {lane_id} try {attempt}: exit {rc}: {err[-300:]}")
                if (state / "stack.json").exists() or _listening(port):
                    failures.append(f"lane {lane_id} try {attempt}: left stack.json or the port")
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()

    lanes = [threading.Thread(target=lane, args=(i, TRIES // 2)) for i in range(2)]
    try:
        for t in lanes:
            t.start()
        for t in lanes:
            t.join()
    finally:
        burner.kill()
        burner.wait()
    assert failures == []
    assert len(slowest) == TRIES and max(slowest) < STOP_WITHIN


def test_a_second_local_up_for_the_same_state_directory_exits_1_naming_the_first(
    tmp_path: Path,
) -> None:
    # Given a local stack running for a state directory
    first = _up(tmp_path)
    try:
        info = _ready(tmp_path, first)
        before = (tmp_path / "stack.json").read_text()
        # When a second one starts for the same directory
        second = _up(tmp_path)
        rc = second.wait(timeout=60)
        err = second.stderr.read().decode() if second.stderr else ""
        # Then it exits 1 at once with one line naming the running one's PID
        assert rc == 1, err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and f"PID {first.pid}" in lines[0], err
        # and the first one's stack.json is untouched, its stack still serving
        assert (tmp_path / "stack.json").read_text() == before
        assert _listening(urlparse(info["endpoint_url"]).port or 0)
    finally:
        first.send_signal(signal.SIGINT)
        first.wait(timeout=STOP_WITHIN)


def test_a_killed_run_leaves_nothing_the_next_start_does_not_clean(tmp_path: Path) -> None:
    # Given a local stack killed with SIGKILL (nothing of it could clean up)
    first = _up(tmp_path)
    info = _ready(tmp_path, first)
    first.send_signal(signal.SIGKILL)
    first.wait()
    stale = (tmp_path / "stack.json").read_text()  # its run is dead
    # When the next one starts for the same directory
    second = _up(tmp_path)
    try:
        again = _ready(tmp_path, second, stale=stale)
        # Then it took over: a new stack.json of its own, and it said so in a line
        assert again["endpoint_url"] != info["endpoint_url"]
        second.send_signal(signal.SIGINT)
        second.wait(timeout=STOP_WITHIN)
        err = second.stderr.read().decode() if second.stderr else ""
        assert (
            f"replaced the stack.json of a run that did not stop cleanly (PID {first.pid})" in err
        )
    finally:
        if second.poll() is None:
            second.kill()


def test_the_handlers_logs_go_to_the_log_file_and_the_terminal_shows_a_status(
    tmp_path: Path,
) -> None:
    # Given a running local stack
    proc = _up(tmp_path)
    try:
        info = _ready(tmp_path, proc)
        clients = {
            "endpoint_url": info["endpoint_url"],
            "region_name": info["region"],
            "aws_access_key_id": "testing",
            "aws_secret_access_key": "testing",
        }
        # When an object is indexed
        body = (pydicom_files_dir() / "CT_small.dcm").read_bytes()
        boto3.client("s3", **clients).put_object(
            Bucket=info["bucket"], Key="orthanc/a.dcm", Body=body
        )
        ddb = boto3.client("dynamodb", **clients)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            item = ddb.get_item(TableName=info["table"], Key={"s3_key": {"S": "orthanc/a.dcm"}})
            if "Item" in item:
                break
            time.sleep(0.2)
        time.sleep(2.5)  # a status line comes within a second or two
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=STOP_WITHIN)
    out = proc.stdout.read().decode() if proc.stdout else ""
    err = proc.stderr.read().decode() if proc.stderr else ""
    # Then nothing reached stdout, the handler's JSON lines are in the log file (mode 0600)
    assert out == ""
    log = tmp_path / "logs" / "local-up.log"
    assert '"message":"batch planned"' in log.read_text()
    assert log.stat().st_mode & 0o777 == 0o600
    # and the terminal got short status lines naming the indexed record
    assert "logs in " in err
    status = [line for line in err.splitlines() if "executions (" in line]
    assert status and "1 indexed" in status[-1], err
    assert '"message"' not in err
