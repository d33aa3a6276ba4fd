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

#: Orthanc 1.10's answer to a STOW-RS request holding an instance without a Study Instance UID.
ORTHANC_400 = {
    "Details": "Missing StudyInstanceUID",
    "HttpError": "Bad Request",
    "HttpStatus": 400,
    "Message": "Bad file format",
    "Method": "POST",
    "OrthancError": "Bad file format",
    "OrthancStatus": 15,
    "Uri": "/dicom-web/studies",
}


class _Stow:
    """Answers STOW-RS posts with a scripted list of statuses; records what it received."""

    def __init__(
        self, statuses: list[int], refuse: set[str] | None = None, poison: set[str] | None = None
    ) -> None:
        self.statuses = statuses
        self.refuse = refuse or set()
        #: A request holding one of these is refused whole (400), as Orthanc does.
        self.poison = poison or set()
        self.posts: list[bytes] = []
        self.auth: list[str | None] = []


@pytest.fixture
def stow() -> Iterator[Callable[..., tuple[_Stow, str]]]:
    servers: list[ThreadingHTTPServer] = []

    def start(
        statuses: list[int], refuse: set[str] | None = None, poison: set[str] | None = None
    ) -> tuple[_Stow, str]:
        state = _Stow(statuses, refuse, poison)

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                state.posts.append(body)
                state.auth.append(self.headers.get("Authorization"))
                status = state.statuses.pop(0) if state.statuses else 200
                if set(_uids(body)) & state.poison:
                    data = json.dumps(ORTHANC_400).encode()
                    self.send_response(400)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
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
        "message": "the server refused the instance (FailureReason 0xA700: out of resources)",
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


def _instances(folder: Path, source: Path, count: int) -> list[str]:
    """``count`` copies of ``source`` with their own SOP Instance UIDs; returns the UIDs."""
    uids = []
    for i in range(count):
        ds = pydicom.dcmread(source)
        ds.SOPInstanceUID = f"{ds.SOPInstanceUID}.{i + 1}"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(folder / f"i{i:02d}.dcm")
        uids.append(str(ds.SOPInstanceUID))
    return uids


def test_a_request_refused_whole_is_split_until_only_the_refused_file_fails(
    stow: Callable[..., tuple[_Stow, str]], tmp_path: Path, test_file: Callable[[str], Path]
) -> None:
    # Given seven instances, one of which makes the server refuse any request holding it
    uids = _instances(tmp_path, test_file("CT_small.dcm"), 7)
    state, url = stow([], poison={uids[4]})
    # When the folder is sent (one request of seven)
    results = send([tmp_path], make_client(url, None, None))
    # Then only that file is reported refused, with the server's own reason; six are stored
    by_uid = {r.sop_instance_uid: r for r in results}
    assert len(results) == 7
    assert by_uid[uids[4]].status == "failed"
    assert by_uid[uids[4]].error == {
        "code": "REFUSED",
        "message": "the server answered HTTP 400: Bad file format: Missing StudyInstanceUID",
    }
    assert all(by_uid[u].status == "stored" for u in uids if u != uids[4])
    # and the requests halved around it: 7 -> 3 + 4, 4 -> 2 + 2, 2 -> 1 + 1 (depth first)
    assert [len(_uids(post)) for post in state.posts] == [7, 3, 4, 2, 1, 1, 2]


def test_the_command_says_when_nothing_was_sent(
    stow: Callable[..., tuple[_Stow, str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a file that is not DICOM (a README)
    readme = tmp_path / "README.md"
    readme.write_text("# not DICOM\n")
    state, url = stow([])
    # When it is sent
    status = main(["send", str(readme), "--url", url])
    # Then its line says not_dicom, nothing was posted, and the command exits 1 saying so
    out, err = capsys.readouterr()
    assert json.loads(out)["status"] == "not_dicom"
    assert state.posts == []
    assert status == 1
    lines = err.splitlines()
    assert lines[0].endswith(": 1 file to " + url + ": 1 not_dicom")
    assert "nothing was sent" in lines[-1] and len(lines) == 2


def test_ctrl_c_during_send_reports_what_was_already_stored(
    stow: Callable[..., tuple[_Stow, str]],
    tmp_path: Path,
    test_file: Callable[[str], Path],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pipeline.orthanc import send as send_module

    # Given three instances sent one per request, and Ctrl-C during the third request
    uids = _instances(tmp_path, test_file("CT_small.dcm"), 3)
    _, url = stow([])
    monkeypatch.setattr(send_module, "BATCH_FILES", 1)
    real = send_module._store_files
    calls = {"n": 0}

    def interrupted(client: Any, paths: list[Path]) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(client, paths)

    monkeypatch.setattr(send_module, "_store_files", interrupted)
    # When the folder is sent
    status = main(["send", str(tmp_path), "--url", url])
    # Then the two stored files have their JSON lines, and stderr says what happened
    out, err = capsys.readouterr()
    lines = [json.loads(line) for line in out.splitlines()]
    assert [(line["sop_instance_uid"], line["status"]) for line in lines] == [
        (uids[0], "stored"),
        (uids[1], "stored"),
    ]
    assert status == 130
    assert "interrupted after 2 files" in err and "2 stored" in err
    assert err.splitlines()[-1] == "dicom-pipeline: interrupted"
