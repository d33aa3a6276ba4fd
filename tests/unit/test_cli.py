"""``dicom-pipeline parse`` as DESIGN.md specifies it, run in process with ``main([...])``."""

from __future__ import annotations

import base64
import gzip
import json
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline.cli import main


def _lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def test_one_line_per_source_in_order_with_errors_inline(
    test_file: Callable[[str], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given two DICOM files, a text file and a path that does not exist
    ct, mr = str(test_file("CT_small.dcm")), str(test_file("MR_small.dcm"))
    text = tmp_path / "notes.txt"
    text.write_text("not dicom\n" * 20)
    missing = str(tmp_path / "missing.dcm")

    # When they are parsed in one command
    status = main(["parse", ct, str(text), mr, missing])

    # Then stdout has one JSON document per source, in order, errors as coded lines
    out = _lines(capsys.readouterr().out)
    assert len(out) == 4
    assert out[0]["s3_key"] == ct and out[0]["SOPInstanceUID"]
    assert out[1] == {
        "source": str(text),
        "error": {"code": "NOT_DICOM", "message": out[1]["error"]["message"]},
    }
    assert out[2]["s3_key"] == mr
    assert out[3]["source"] == missing and out[3]["error"]["code"] == "OBJECT_NOT_FOUND"
    # and the command failed because some source failed
    assert status == 1


def test_exit_status_is_zero_when_every_source_parses(
    test_file: Callable[[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    # Given good files / When parsed / Then exit 0 and nothing on stderr without --stats
    status = main(["parse", str(test_file("CT_small.dcm")), str(test_file("rtplan.dcm"))])
    captured = capsys.readouterr()
    assert status == 0
    assert len(captured.out.splitlines()) == 2
    assert captured.err == ""


def test_a_record_line_is_plain_json_with_base64_binary(
    test_file: Callable[[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a DICOM file / When its record is printed
    main(["parse", str(test_file("CT_small.dcm"))])
    record = _lines(capsys.readouterr().out)[0]
    # Then binary attributes are base64 text and numbers are JSON numbers
    dicom_json = json.loads(gzip.decompress(base64.b64decode(record["dicom_json_gz"])))
    assert dicom_json["00080060"] == {"vr": "CS", "Value": ["CT"]}
    assert isinstance(record["size"], int) and isinstance(record["header_bytes"], int)
    assert record["status"] == "indexed"


def test_stats_go_to_stderr_one_line_per_parsed_source(
    test_file: Callable[[str], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a DICOM file, a text file and another DICOM file
    ct, mr = str(test_file("CT_small.dcm")), str(test_file("MR_small.dcm"))
    text = tmp_path / "notes.txt"
    text.write_text("not dicom\n" * 20)

    # When parsed with --stats
    main(["parse", "--stats", ct, str(text), mr])
    captured = capsys.readouterr()

    # Then stdout is unchanged and stderr has the read statistics of each parsed source
    assert len(captured.out.splitlines()) == 3
    stats = _lines(captured.err)
    assert [s["source"] for s in stats] == [ct, mr]
    ct_stats = stats[0]
    assert set(ct_stats) == {"source", "bytes_read", "object_size", "header_bytes"}
    assert ct_stats["object_size"] == Path(ct).stat().st_size
    assert 0 < ct_stats["header_bytes"] < ct_stats["object_size"]


def test_dicom_json_format_prints_the_header_json(
    test_file: Callable[[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a file with Japanese names / When printed as DICOM JSON
    status = main(["parse", "--format", "dicom-json", str(test_file("chrH31.dcm"))])
    out = capsys.readouterr().out

    # Then the line is the DICOM JSON object itself, UTF-8, not a record
    assert status == 0
    doc = json.loads(out)
    assert "s3_key" not in doc
    assert doc["00100010"]["Value"][0]["Ideographic"] == "山田^太郎"
    assert "山田" in out  # not \\u-escaped


def test_s3_sources_through_moto(
    s3_object: Callable[..., str],
    test_file: Callable[[str], Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given an object in S3 and a key that is not there
    uri = s3_object("cli/CT_small.dcm", test_file("CT_small.dcm").read_bytes())

    # When both are parsed
    status = main(["parse", "--stats", uri, "s3://images/cli/absent.dcm"])
    captured = capsys.readouterr()

    # Then the record carries the S3 key and bucket, the missing one is OBJECT_NOT_FOUND
    out = _lines(captured.out)
    assert out[0]["s3_key"] == "cli/CT_small.dcm" and out[0]["bucket"] == "images"
    assert out[1]["error"]["code"] == "OBJECT_NOT_FOUND"
    assert _lines(captured.err)[0]["bytes_read"] <= 64 * 1024
    assert status == 1


def _usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``main(argv)``; assert exit 2, nothing on stdout, one stderr line; return it."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    captured = capsys.readouterr()
    assert exit_info.value.code == 2
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("dicom-pipeline: error: ")
    assert "Traceback" not in captured.err
    return lines[0]


def test_parse_needs_a_source(capsys: pytest.CaptureFixture[str]) -> None:
    # Given no source / When run / Then a usage error (exit 2), one line, nothing on stdout
    line = _usage_error(["parse"], capsys)
    assert "SOURCE" in line


@pytest.mark.parametrize(
    "uri",
    ["s3://", "s3://bucket", "s3://bucket/", "s3:///key.dcm", "s3:/x", "s3:x", "S3:/bucket/k"],
)
def test_a_malformed_s3_uri_is_a_usage_error(
    uri: str, test_file: Callable[[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a good file and a malformed s3:// URI after it
    # When both are given to parse
    line = _usage_error(["parse", str(test_file("CT_small.dcm")), uri], capsys)
    # Then exit 2 before anything is parsed (stdout stays empty), naming the bad argument
    assert line == f"dicom-pipeline: error: argument SOURCE: {uri!r} is not an s3://bucket/key URI"


@pytest.mark.parametrize("as_uri", [False, True], ids=["path", "file-uri"])
def test_a_directory_source_is_a_usage_error(
    as_uri: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a directory (as a path or a file:// URI)
    source = tmp_path.as_uri() if as_uri else str(tmp_path)
    # When given to parse / Then exit 2 with one line, nothing on stdout
    line = _usage_error(["parse", source], capsys)
    assert line == (
        f"dicom-pipeline: error: argument SOURCE: {source!r} is a directory: give the files in it"
    )


@pytest.mark.parametrize(
    ("argv", "phrase"),
    [
        (["local", "up", "--port", "70000"], "must be 0 (any free port) to 65535, not 70000"),
        (["local", "up", "--port", "-1"], "must be 0 (any free port) to 65535, not -1"),
        (["local", "up", "--port", "http"], "not a port number: 'http'"),
        (["demo", "--limit", "0"], "must be 1 or more, not 0"),
        (["demo", "--limit", "-5"], "must be 1 or more, not -5"),
        (["demo", "--limit", "many"], "not a whole number: 'many'"),
        (["demo", "--no-such-option"], "unrecognized arguments: --no-such-option"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(
    argv: list[str], phrase: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a bad argument / When run / Then exit 2, one line naming it, nothing started
    line = _usage_error(argv, capsys)
    assert phrase in line


def test_a_busy_port_is_one_line_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a port another program listens on, and a stack.json of another run
    (tmp_path / "stack.json").write_text("{}")
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        # When `local up` is asked for that port
        started = time.monotonic()
        status = main(["local", "up", "--port", str(port), "--state-dir", str(tmp_path)])
    captured = capsys.readouterr()
    # Then it fails at once with one line, and leaves the other run's file alone
    assert status == 1
    assert time.monotonic() - started < 5
    assert captured.err.splitlines() == [
        f"dicom-pipeline: error: port {port} on 127.0.0.1 is in use: "
        "choose another --port, or 0 for any free one"
    ]
    assert captured.out == ""
    assert (tmp_path / "stack.json").read_text() == "{}"


def _fake_command(effect: Callable[[], object]) -> Callable[..., int]:
    def command(args: object, out: object, err: object) -> int:
        effect()
        return 0

    return command


def test_ctrl_c_is_one_line_and_exit_130(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a command that Ctrl-C interrupts
    def interrupted() -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("pipeline.cli.parse._cmd_parse", _fake_command(interrupted))
    # When it runs / Then exit 130 with one line, no traceback
    status = main(["parse", str(tmp_path / "a.dcm")])
    captured = capsys.readouterr()
    assert status == 130
    assert captured.err == "dicom-pipeline: interrupted\n"


def test_sigterm_is_one_line_and_exit_143_and_handlers_are_restored(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a command that receives SIGTERM while it works
    def terminated() -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the signal's handler interrupts this
        raise AssertionError("SIGTERM did not stop the command")

    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    monkeypatch.setattr("pipeline.cli.parse._cmd_parse", _fake_command(terminated))
    # When it runs
    status = main(["parse", str(tmp_path / "a.dcm")])
    # Then exit 143 with one line, and the caller's handlers are back
    assert status == 143
    assert capsys.readouterr().err == "dicom-pipeline: terminated\n"
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_an_unexpected_exception_in_a_command_is_one_line_with_its_type(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a bug in a command (an exception whose text holds a value)
    def bug() -> None:
        raise LookupError("Secret^Patient")

    monkeypatch.setattr("pipeline.cli.parse._cmd_parse", _fake_command(bug))
    # When it runs / Then exit 1 with one line naming the type, not the text
    status = main(["parse", str(tmp_path / "a.dcm")])
    captured = capsys.readouterr()
    assert status == 1
    assert (
        captured.err == "dicom-pipeline: error: unexpected LookupError (a bug in dicom-pipeline)\n"
    )


def test_an_unexpected_error_is_one_internal_line_not_a_traceback(
    test_file: Callable[[str], Path],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a bug in record building (a fake that raises what no coded path raises)
    def broken(*args: object, **kwargs: object) -> str:
        raise RuntimeError("a bug with a value: Secret^Patient")

    monkeypatch.setattr("pipeline.dicom.record.record_to_json", broken)

    # When a file is parsed
    status = main(["parse", str(test_file("CT_small.dcm"))])

    # Then one INTERNAL line, naming the exception type but not its text
    line = _lines(capsys.readouterr().out)[0]
    assert line["error"]["code"] == "INTERNAL"
    assert "RuntimeError" in line["error"]["message"]
    assert "Secret" not in line["error"]["message"]
    assert status == 1
