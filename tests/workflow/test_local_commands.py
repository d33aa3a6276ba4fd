"""The two commands that run the local stack for people: ``local up`` and ``demo``.

Both run as real subprocesses of the installed console script, exactly as a newcomer runs
them; moto's server listens on loopback only. Neither ever shows a traceback: a busy port is
one line and exit 1, Ctrl-C one line and exit 130 (SIGTERM: 143), with nothing left running.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO
from urllib.parse import urlparse

import boto3
import pytest

from pipeline.dicom.samples import pydicom_files_dir

CLI = [sys.executable, "-m", "pipeline.cli"]
STACK_KEYS = {
    "endpoint_url",
    "region",
    "bucket",
    "queue_url",
    "dlq_url",
    "table",
    "state_machine_arn",
}


def _wait_for(path: Path, proc: subprocess.Popen[bytes], timeout: float = 90) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"local up exited early with {proc.returncode}")
        if path.exists() and path.stat().st_size:
            return dict(json.loads(path.read_text()))
        time.sleep(0.2)
    pytest.fail("local up never wrote stack.json")


def test_local_up_serves_the_pipeline_on_loopback_and_stops_cleanly(tmp_path: Path) -> None:
    # Given `dicom-pipeline local up` running in the foreground
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    proc = subprocess.Popen(
        [*CLI, "local", "up", "--state-dir", str(tmp_path)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        info = _wait_for(tmp_path / "stack.json", proc)
        # Then stack.json holds what DESIGN.md promises, on a loopback address
        assert set(info) >= STACK_KEYS
        endpoint = urlparse(info["endpoint_url"])
        assert endpoint.hostname == "127.0.0.1"

        # When another program uploads a DICOM object through that endpoint
        clients = {
            "endpoint_url": info["endpoint_url"],
            "region_name": info["region"],
            "aws_access_key_id": "testing",
            "aws_secret_access_key": "testing",
        }
        s3 = boto3.client("s3", **clients)
        ddb = boto3.client("dynamodb", **clients)
        body = (pydicom_files_dir() / "CT_small.dcm").read_bytes()
        s3.put_object(Bucket=info["bucket"], Key="orthanc/0a1b2c3d-local-up.dcm", Body=body)

        # Then the running pipe indexes it without anyone draining by hand
        deadline = time.monotonic() + 60
        item = None
        while time.monotonic() < deadline and item is None:
            item = ddb.get_item(
                TableName=info["table"], Key={"s3_key": {"S": "orthanc/0a1b2c3d-local-up.dcm"}}
            ).get("Item")
            time.sleep(0.2)
        assert item is not None and item["status"]["S"] == "indexed"
        assert item["Modality"]["S"] == "CT"
    finally:
        # When it is sent SIGTERM
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    # Then it exits 143 (128 + SIGTERM) with one line, removes stack.json and leaves
    # nothing listening
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    assert rc == 143, stderr
    assert stderr.splitlines()[-1] == "dicom-pipeline: terminated"
    assert "Traceback" not in stderr
    assert not (tmp_path / "stack.json").exists()
    assert not _listening(endpoint.port or 0)


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


class _Lines:
    """The lines a subprocess writes to a pipe, collected by a thread as they come."""

    def __init__(self, pipe: IO[bytes]) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, args=(pipe,), daemon=True).start()

    def _read(self, pipe: IO[bytes]) -> None:
        for raw in pipe:
            self.lines.put(raw.decode(errors="replace").rstrip("\n"))

    def wait_for(self, text: str, proc: subprocess.Popen[bytes], timeout: float = 90) -> str:
        """The first line containing ``text``; fails if the process exits first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                if proc.poll() is not None:
                    pytest.fail(f"exited with {proc.returncode} before {text!r}: {self.seen}")
                continue
            self.seen.append(line)
            if text in line:
                return line
        pytest.fail(f"no line with {text!r} within {timeout} s: {self.seen}")

    def rest(self, timeout: float = 5) -> list[str]:
        """Every line seen, once the pipe is done (the process has exited)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.seen.append(self.lines.get(timeout=0.2))
            except queue.Empty:
                break
        return self.seen


def _start(args: list[str]) -> tuple[subprocess.Popen[bytes], _Lines]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    proc = subprocess.Popen([*CLI, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return proc, _Lines(proc.stderr)  # type: ignore[arg-type]


def _wait(proc: subprocess.Popen[bytes], timeout: float) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"still running {timeout} s later")


def test_local_up_on_a_busy_port_fails_at_once_with_one_line(tmp_path: Path) -> None:
    # Given a port another program listens on
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        # When `local up --port` asks for it
        started = time.monotonic()
        proc, err = _start(["local", "up", "--port", str(port), "--state-dir", str(tmp_path)])
        rc = _wait(proc, timeout=10)
    # Then it exits 1 within seconds with one line, and writes no stack.json
    assert rc == 1
    assert time.monotonic() - started < 10
    assert err.rest() == [
        f"dicom-pipeline: error: port {port} on 127.0.0.1 is in use: "
        "choose another --port, or 0 for any free one"
    ]
    assert proc.stdout is not None and proc.stdout.read() == b""
    assert not (tmp_path / "stack.json").exists()


def test_ctrl_c_stops_local_up_cleanly_with_130(tmp_path: Path) -> None:
    # Given `local up` serving
    proc, err = _start(["local", "up", "--state-dir", str(tmp_path)])
    err.wait_for("local stack ready", proc)
    info = json.loads((tmp_path / "stack.json").read_text())
    port = urlparse(info["endpoint_url"]).port or 0
    assert _listening(port)
    # When it gets Ctrl-C (SIGINT)
    proc.send_signal(signal.SIGINT)
    rc = _wait(proc, timeout=30)
    # Then it exits 130 with one line, stack.json is gone and the port is closed
    lines = err.rest()
    assert rc == 130, lines
    assert lines[-1] == "dicom-pipeline: interrupted"
    assert lines.count("dicom-pipeline: interrupted") == 1
    assert not any("Traceback" in line for line in lines)
    assert not (tmp_path / "stack.json").exists()
    assert not _listening(port)


def test_ctrl_c_during_the_demo_exits_130_with_one_line(tmp_path: Path) -> None:
    # Given the demo running over 5 files, its stack up and sending them through Orthanc
    proc, err = _start(["demo", "--limit", "5", "--state-dir", str(tmp_path)])
    err.wait_for("sending", proc)
    # When it gets Ctrl-C (SIGINT)
    proc.send_signal(signal.SIGINT)
    rc = _wait(proc, timeout=30)
    # Then it exits 130 with one line and no traceback, and writes no summary
    lines = err.rest()
    assert rc == 130, lines
    assert lines[-1] == "dicom-pipeline: interrupted"
    assert lines.count("dicom-pipeline: interrupted") == 1
    assert not any("Traceback" in line or "Exception" in line for line in lines), lines
    assert not (tmp_path / "demo-summary.json").exists()


def test_demo_accounts_for_every_record_and_exits_zero(tmp_path: Path) -> None:
    # Given a fresh process and no AWS settings at all
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    # When the demo runs over a slice of the sample set
    done = subprocess.run(
        [*CLI, "demo", "--limit", "25", "--state-dir", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    # Then it exits 0 with a summary table, and its JSON summary accounts for every record
    assert done.returncode == 0, done.stdout + done.stderr
    assert "indexed" in done.stdout and "failed" in done.stdout
    summary = json.loads((tmp_path / "demo-summary.json").read_text())
    outcomes = summary["outcomes"]
    # every S3 event record (Orthanc's writes and deletes, the objects put straight into S3,
    # S3's test event) ended in one outcome
    assert sum(outcomes.values()) == sum(summary["events"].values())
    assert summary["events"]["ObjectRemoved"] >= 2  # the re-sent instance, the deleted one
    assert summary["failed_executions"] == 0
    assert summary["failed_by_code"].get("STORAGE_ENCODED") == 1
    assert summary["dlq_messages"] == outcomes.get("failed", 0)
    assert summary["table_items"].get("deleted", 0) >= 2
    # and every instance in Orthanc has its indexed record
    assert summary["orthanc"]["instances"] == summary["orthanc"]["indexed"] > 0
    assert "Traceback" not in done.stderr
    # and the heading's counts are those of its progress lines, without pydicom's warnings
    import re

    sent = re.search(r"^sending (\d+) files through Orthanc", done.stderr, re.M)
    put = re.search(r"^putting (\d+) objects into S3", done.stderr, re.M)
    assert sent and put, done.stderr
    heading = done.stdout.splitlines()[0]
    assert re.match(
        rf"dicom-pipeline demo: {sent[1]} files sent to Orthanc \((\d+) stored\), "
        rf"{put[1]} objects put into S3, ",
        heading,
    ), heading
    assert "Warning" not in done.stderr and "found implicit VR" not in done.stderr
