"""The two commands that run the local stack for people: ``local up`` and ``demo``.

Both run as real subprocesses of the installed console script, exactly as a newcomer runs
them; moto's server listens on loopback only.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
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
        s3.put_object(Bucket=info["bucket"], Key="0a1b2c3d-local-up.dcm", Body=body)

        # Then the running pipe indexes it without anyone draining by hand
        deadline = time.monotonic() + 60
        item = None
        while time.monotonic() < deadline and item is None:
            item = ddb.get_item(
                TableName=info["table"], Key={"s3_key": {"S": "0a1b2c3d-local-up.dcm"}}
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
    # Then it exits 0, removes stack.json and leaves nothing listening
    assert rc == 0, proc.stderr.read().decode() if proc.stderr else ""
    assert not (tmp_path / "stack.json").exists()
    with socket.socket() as sock:
        assert sock.connect_ex((endpoint.hostname or "", endpoint.port or 0)) != 0


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
    uploads = 25 + 2  # the files, an Orthanc-compressed attachment, an empty object
    assert sum(outcomes.values()) == uploads + 3  # + an overwrite, a delete, S3's test event
    assert summary["failed_executions"] == 0
    assert summary["failed_by_code"].get("STORAGE_ENCODED") == 1
    assert summary["dlq_messages"] == outcomes.get("failed", 0)
    assert summary["table_items"].get("deleted") == 1
    assert "Traceback" not in done.stderr
