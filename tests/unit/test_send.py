"""The STOW-RS sender against a small DICOMweb stand-in on loopback (the integration layer
sends to a real Orthanc): retries, per-file results from the server's answer, non-DICOM files
reported and not sent, and the command's JSON lines and exit status."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pydicom
import pytest

from pipeline.cli import main
from pipeline.orthanc.send import make_client, send


class _Stow:
    """Answers STOW-RS posts with a scripted list of statuses; records what it received."""

    def __init__(self, statuses: list[int], refuse: set[str] | None = None) -> None:
        self.statuses = statuses
        self.refuse = refuse or set()
        self.posts: list[bytes] = []
        self.auth: list[str | None] = []


@pytest.fixture
def stow() -> Iterator[Callable[..., tuple[_Stow, str]]]:
    servers: list[ThreadingHTTPServer] = []

    def start(statuses: list[int], refuse: set[str] | None = None) -> tuple[_Stow, str]:
        state = _Stow(statuses, refuse)

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                state.posts.append(body)
                state.auth.append(self.headers.get("Authorization"))
                status = state.statuses.pop(0) if state.statuses else 200
                if status != 200:
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                answer: dict[str, Any] = {"00081199": {"vr": "SQ", "Value": []}}
                failed: list[Any] = []
                for uid in _uids(body):
                    item = {"00081155": {"vr": "UI", "Value": [uid]}}
                    if uid in state.refuse:
                        failed.append({**item, "00081197": {"vr": "US", "Value": [0xA700]}})
                    else:
                        answer["00081199"]["Value"].append(item)
                if failed:
                    answer["00081198"] = {"vr": "SQ", "Value": failed}
                data = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/dicom+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        servers.append(server)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return state, f"http://127.0.0.1:{server.server_address[1]}/dicom-web"

    yield start
    for server in servers:
        server.shutdown()


def _uids(body: bytes) -> list[str]:
    out = []
    for part in body.split(b"\r\n\r\n")[1:]:
        try:
            ds = pydicom.dcmread(io.BytesIO(part), stop_before_pixels=True)
        except Exception:
            continue
        out.append(str(ds.SOPInstanceUID))
    return out


@pytest.fixture
def folder(tmp_path: Path, test_file: Callable[[str], Path]) -> Path:
    for name in ("CT_small.dcm", "MR_small.dcm", "rtplan.dump"):
        (tmp_path / name).write_bytes(test_file(name).read_bytes())
    (tmp_path / "notes.txt").write_text("not DICOM")
    return tmp_path


def test_every_file_gets_the_servers_answer_and_non_dicom_is_not_sent(
    stow: Callable[..., tuple[_Stow, str]], folder: Path
) -> None:
    # Given a server that refuses one of the two instances
    mr = str(pydicom.dcmread(folder / "MR_small.dcm").SOPInstanceUID)
    state, url = stow([200], refuse={mr})
    # When the folder is sent
    results = send([folder], make_client(url, "u", "p"))
    # Then one post carried both instances with basic auth, and each file has its result
    assert len(state.posts) == 1 and state.auth[0] is not None
    by_name = {Path(r.path).name: r for r in results}
    assert by_name["CT_small.dcm"].status == "stored"
    assert by_name["MR_small.dcm"].status == "failed"
    assert by_name["MR_small.dcm"].error == {
        "code": "REFUSED",
        "message": "the server refused the instance (FailureReason 0xA700)",
    }
    assert {by_name[n].status for n in ("rtplan.dump", "notes.txt")} == {"not_dicom"}


def test_transient_errors_are_retried(stow: Callable[..., tuple[_Stow, str]], folder: Path) -> None:
    # Given a server that answers 503 twice, then stores
    state, url = stow([503, 503, 200])
    # When a file is sent
    (result,) = send([folder / "CT_small.dcm"], make_client(url, None, None))
    # Then the third attempt stored it
    assert len(state.posts) == 3
    assert result.status == "stored"


def test_the_command_prints_one_json_line_per_file_and_exits_1_on_failure(
    stow: Callable[..., tuple[_Stow, str]],
    folder: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a server that always answers 401
    _, url = stow([401] * 10)
    monkeypatch.setenv("DICOM_PIPELINE_PASSWORD", "wrong")
    # When the folder is sent
    status = main(["send", str(folder), "--url", url, "--username", "u"])
    # Then each file has one JSON line with the DESIGN.md fields, and the exit status is 1
    out, err = capsys.readouterr()
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == 4
    assert all(set(line) == {"path", "sop_instance_uid", "status", "error"} for line in lines)
    assert {line["status"] for line in lines} == {"failed", "not_dicom"}
    assert {line["error"]["code"] for line in lines if line["status"] == "failed"} == {
        "UNAUTHORIZED"
    }
    assert status == 1
    assert "wrong" not in out + err


def test_no_url_and_no_local_stack_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["send", str(tmp_path), "--stack", str(tmp_path / "none.json")])
    out, err = capsys.readouterr()
    assert status == 1 and out == ""
    assert err.startswith("dicom-pipeline: error: no DICOMweb URL")
    assert len(err.splitlines()) == 1


def test_aws_stack_sends_to_the_deployed_orthanc_url(
    stow: Callable[..., tuple[_Stow, str]],
    folder: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a deployed stack whose OrthancUrl output names the server (CloudFormation in moto)
    from moto import mock_aws

    from pipeline import aws

    state, url = stow([200])
    template = {
        "Resources": {"Topic": {"Type": "AWS::SNS::Topic"}},
        "Outputs": {
            name: {"Value": value}
            for name, value in {
                "OrthancUrl": url.removesuffix("/dicom-web"),
                "Bucket": "b",
                "QueueUrl": "q",
                "DlqUrl": "d",
                "Table": "t",
            }.items()
        },
    }
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("DICOM_PIPELINE_USERNAME", "uploader")
    monkeypatch.setenv("DICOM_PIPELINE_PASSWORD", "secret")
    with mock_aws():
        aws.reset_clients()
        aws.client("cloudformation").create_stack(
            StackName="DicomPipeline-prod", TemplateBody=json.dumps(template)
        )
        # When a file is sent to that stack
        status = main(["send", str(folder / "CT_small.dcm"), "--aws-stack", "DicomPipeline-prod"])
    aws.reset_clients()
    # Then it went to <OrthancUrl>/dicom-web with the environment's credentials
    out, _ = capsys.readouterr()
    assert status == 0 and json.loads(out)["status"] == "stored"
    assert len(state.posts) == 1 and state.auth[0] is not None
