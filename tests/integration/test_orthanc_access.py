"""Who and what the local Orthanc lets in: credentials, loopback, DICOM only."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from integration_support import Instance

from pipeline import aws
from pipeline.cli import main
from pipeline.local.stack import LocalStack

BOUNDARY = "dicom-pipeline-test"


def _keys(stack: LocalStack) -> set[str]:
    pages = aws.client("s3").get_paginator("list_objects_v2").paginate(Bucket=stack.bucket)
    return {o["Key"] for page in pages for o in page.get("Contents", [])}


def _routes(stack: LocalStack) -> list[str]:
    assert stack.info is not None and stack.info.orthanc_url and stack.info.dicomweb_url
    return [
        f"{stack.info.orthanc_url}/system",
        f"{stack.info.orthanc_url}/instances",
        f"{stack.info.dicomweb_url}/studies",
    ]


def _multipart(*parts: bytes) -> tuple[bytes, dict[str, str]]:
    body = b"".join(
        f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part + b"\r\n"
        for part in parts
    )
    headers = {
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}',
        "Accept": "application/dicom+json",
    }
    return body + f"--{BOUNDARY}--\r\n".encode(), headers


def test_no_credentials_and_a_wrong_password_get_401(stack: LocalStack) -> None:
    # Given the local Orthanc with authentication on
    assert stack.info is not None
    for url in _routes(stack):
        # When a client asks without credentials, or with a wrong password
        anonymous = requests.get(url, timeout=10)
        wrong = requests.get(url, auth=(stack.info.orthanc_username or "", "wrong"), timeout=10)
        # Then Orthanc answers 401 both times
        assert anonymous.status_code == 401, url
        assert wrong.status_code == 401, url


def test_stow_rs_without_credentials_stores_nothing(
    stack: LocalStack, fresh_instance: Callable[[str], Instance]
) -> None:
    # Given a valid instance and no credentials
    instance = fresh_instance("CT_small.dcm")
    body, headers = _multipart(instance.data)
    before = _keys(stack)
    # When it is sent with STOW-RS
    assert stack.info is not None and stack.info.dicomweb_url
    answer = requests.post(
        f"{stack.info.dicomweb_url}/studies", data=body, headers=headers, timeout=30
    )
    # Then it is refused with 401 and the bucket holds nothing new
    assert answer.status_code == 401
    assert _keys(stack) == before


def _other_address() -> str | None:
    """An IPv4 address of this machine that is not loopback, if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks a route
        except OSError:
            return None
        address = str(s.getsockname()[0])
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def test_orthanc_answers_loopback_only(stack: LocalStack, orthanc: requests.Session) -> None:
    # Given Orthanc 1.10, which binds every interface, with RemoteAccessAllowed false
    address = _other_address()
    if address is None:
        pytest.skip("this machine has no address but loopback")
    assert stack.info is not None and stack.info.orthanc_url
    port = stack.info.orthanc_url.rsplit(":", 1)[1]
    # When a client with the right credentials comes through another interface
    answer = orthanc.get(f"http://{address}:{port}/system", timeout=10)
    # Then Orthanc refuses it, right credentials or not (1.10 answers a remote call 401:
    # HttpServer.cpp, "Check remote calls"), and serves the same request on loopback
    assert answer.status_code == 401
    assert orthanc.get(f"{stack.info.orthanc_url}/system", timeout=10).status_code == 200


def test_a_non_dicom_upload_to_stow_rs_is_refused(
    stack: LocalStack, orthanc: requests.Session
) -> None:
    # Given a part that is not DICOM at all
    body, headers = _multipart(b"this is a text file, not a DICOM instance\n" * 20)
    before = _keys(stack)
    # When it is sent with STOW-RS
    assert stack.info is not None and stack.info.dicomweb_url
    answer = orthanc.post(f"{stack.info.dicomweb_url}/studies", data=body, headers=headers)
    # Then Orthanc refuses the request: 400, no instance referenced as stored
    assert answer.status_code == 400, answer.text
    dataset = answer.json()
    assert not dataset.get("00081199", {}).get("Value"), dataset  # Referenced SOP Sequence
    # and nothing reached the bucket
    assert _keys(stack) == before


def test_send_stores_dicom_and_reports_the_rest(
    stack: LocalStack,
    orthanc: requests.Session,
    fresh_instance: Callable[[str], Instance],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given a folder with a DICOM instance and a text file, and the stack's stack.json
    instance = fresh_instance("CT_small.dcm")
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "ct.dcm").write_bytes(instance.data)
    (tmp_path / "files" / "notes.dcm").write_text("not DICOM\n")
    stack.write_info(tmp_path / "stack.json")
    # When `dicom-pipeline send` sends the folder to the local Orthanc
    main(["send", str(tmp_path / "files"), "--stack", str(tmp_path / "stack.json")])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    # Then the instance is stored in Orthanc and the text file reported, not sent
    by_name = {Path(line["path"]).name: line for line in lines}
    assert by_name["ct.dcm"]["status"] == "stored", lines
    assert by_name["ct.dcm"]["sop_instance_uid"] == instance.sop_instance_uid
    assert by_name["notes.dcm"]["status"] == "not_dicom", lines
    assert stack.info is not None
    found = orthanc.post(f"{stack.info.orthanc_url}/tools/lookup", data=instance.sop_instance_uid)
    assert [hit["Type"] for hit in found.json()] == ["Instance"]


def test_send_reports_an_instance_orthanc_refuses(
    stack: LocalStack,
    orthanc: requests.Session,
    fresh_instance: Callable[[str], Instance],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given a DICOM instance without a Study Instance UID (Orthanc cannot identify it)
    import io

    import pydicom

    instance = fresh_instance("CT_small.dcm")
    ds = pydicom.dcmread(io.BytesIO(instance.data))
    del ds.StudyInstanceUID
    bad = tmp_path / "no-study.dcm"
    ds.save_as(bad)
    stack.write_info(tmp_path / "stack.json")
    before = _keys(stack)
    # When `dicom-pipeline send` sends it
    status = main(["send", str(bad), "--stack", str(tmp_path / "stack.json")])
    (line,) = [json.loads(text) for text in capsys.readouterr().out.splitlines()]
    # Then Orthanc refused it, send says so with a code, exits 1, and nothing reached S3
    assert status == 1
    assert line["status"] == "failed" and line["error"]["code"] == "REFUSED", line
    assert line["sop_instance_uid"] == instance.sop_instance_uid
    assert _keys(stack) == before


def test_send_stores_what_orthanc_accepts_when_one_file_spoils_the_request(
    stack: LocalStack,
    orthanc: requests.Session,
    fresh_instance: Callable[[str], Instance],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given five good instances and one without a Study Instance UID, sent in one request
    import io

    import pydicom

    folder = tmp_path / "files"
    folder.mkdir()
    good = [fresh_instance(name) for name in ("CT_small.dcm", "MR_small.dcm")]
    good += [fresh_instance("CT_small.dcm") for _ in range(3)]
    for i, instance in enumerate(good):
        (folder / f"good-{i}.dcm").write_bytes(instance.data)
    bad = fresh_instance("CT_small.dcm")
    ds = pydicom.dcmread(io.BytesIO(bad.data))
    del ds.StudyInstanceUID
    ds.save_as(folder / "good-2b-no-study.dcm")  # in the middle of the request
    stack.write_info(tmp_path / "stack.json")
    # When `dicom-pipeline send` sends the folder
    status = main(["send", str(folder), "--stack", str(tmp_path / "stack.json")])
    rows = [json.loads(text) for text in capsys.readouterr().out.splitlines()]
    # (the in-process stack's handler logs JSON too: send's lines are those with a path)
    lines = {row["sop_instance_uid"]: row for row in rows if "path" in row}
    # Then Orthanc holds the five good ones, and only the bad one is REFUSED, with Orthanc's
    # own reason
    assert status == 1
    assert {uid for uid, line in lines.items() if line["status"] == "stored"} == {
        g.sop_instance_uid for g in good
    }
    refused = lines[bad.sop_instance_uid]
    assert refused["status"] == "failed" and refused["error"]["code"] == "REFUSED"
    assert refused["error"]["message"] == (
        "the server refused the instance (FailureReason 0xC000: cannot understand)"
    ), refused
    assert stack.info is not None
    for g in good:
        found = orthanc.post(f"{stack.info.orthanc_url}/tools/lookup", data=g.sop_instance_uid)
        assert [hit["Type"] for hit in found.json()] == ["Instance"]
