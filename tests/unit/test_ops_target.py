"""Which deployment a command acts on, and the one line it says when that cannot be had."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.ops.target import TargetError, resolve_target

COMMANDS = (
    ["audit"],
    ["dlq", "list"],
    ["dlq", "redrive", "--dry-run"],
    ["reindex"],
    ["export", "--out", "x.parquet"],
)


def _stack(path: Path, endpoint_url: str | None) -> Path:
    values = {"bucket": "b", "queue_url": "q", "dlq_url": "d", "table": "t"}
    if endpoint_url:
        values["endpoint_url"] = endpoint_url
    path.write_text(json.dumps(values))
    return path


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens once it is closed


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_a_folder_given_as_the_stack_is_named_as_a_folder(
    command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # When a command is given a folder (audit --stack /tmp)
    status = main([*command, "--stack", str(tmp_path)])
    # Then it exits 1 with one line saying it is a folder (not "no /tmp")
    err = capsys.readouterr().err.splitlines()
    assert status == 1 and len(err) == 1
    assert f"{tmp_path} is a folder" in err[0] and f"no {tmp_path}" not in err[0]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_a_stopped_local_stack_is_named_with_the_way_to_start_it(
    command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a stack.json left by a local stack that is no longer running
    url = f"http://127.0.0.1:{_closed_port()}"
    stack = _stack(tmp_path / "stack.json", url)
    # When a command uses it
    status = main([*command, "--stack", str(stack)])
    # Then it exits 1 with one line naming the stack, that it is not running, and local up
    err = capsys.readouterr().err.splitlines()
    assert status == 1 and len(err) == 1, err
    assert url in err[0] and "not running" in err[0] and "local up" in err[0]
    assert "EndpointConnectionError" not in err[0]


def test_a_running_local_stack_and_a_stack_without_an_endpoint_resolve(tmp_path: Path) -> None:
    # Given something listening where stack.json points, and a stack.json without an endpoint
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        url = f"http://127.0.0.1:{server.getsockname()[1]}"
        # Then both resolve
        assert resolve_target(_stack(tmp_path / "a.json", url)).endpoint_url == url
    assert resolve_target(_stack(tmp_path / "b.json", None)).endpoint_url is None


def test_a_stack_json_that_is_not_an_object_is_one_error(tmp_path: Path) -> None:
    path = tmp_path / "stack.json"
    path.write_text("[1, 2]")
    with pytest.raises(TargetError, match=r"not a stack\.json"):
        resolve_target(path)
