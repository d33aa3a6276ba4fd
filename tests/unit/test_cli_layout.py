"""Where the command line lives (issue 13, section 8): ``pipeline/cli/``, one module per
command, ``CommandError`` in ``pipeline.errors``; ``pipeline/ops`` a library that never
imports the command line."""

from __future__ import annotations

import argparse
import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import pipeline
from pipeline import errors
from pipeline.cli import COMMANDS, build_parser, main

PACKAGE = Path(pipeline.__file__).parent


def _imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at its top or inside a function."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_ops_never_imports_the_command_line() -> None:
    # Given every module of pipeline/ops
    modules = sorted((PACKAGE / "ops").rglob("*.py"))
    assert modules
    # When their imports are read / Then none reaches back up into pipeline.cli
    upward = {
        str(path.relative_to(PACKAGE)): sorted(
            name for name in _imported_modules(path) if name.split(".")[:2] == ["pipeline", "cli"]
        )
        for path in modules
    }
    assert {path: names for path, names in upward.items() if names} == {}
    # and no command module is left in the library
    assert not list((PACKAGE / "ops").glob("*_command.py"))


def test_one_module_per_command_each_registering_its_subcommands() -> None:
    # Given the command modules the parser is built from
    sub = argparse.ArgumentParser().add_subparsers()
    for name in COMMANDS:
        # When each one is imported and registers into a parser of its own
        module = importlib.import_module(name)
        before = set(sub.choices)
        module.register(sub)
        # Then it lives in pipeline/cli and adds the command it is named for
        assert Path(module.__file__ or "").parent == PACKAGE / "cli"
        assert set(sub.choices) - before == {name.rsplit(".", 1)[1]}
    assert set(sub.choices) == {
        "parse",
        "local",
        "send",
        "audit",
        "dlq",
        "reindex",
        "export",
        "demo",
    }
    build_parser()  # and together they build the one parser


def test_command_error_lives_in_errors_and_main_maps_it_to_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a command that raises pipeline.errors.CommandError
    def fails(args: object, out: object, err: object) -> int:
        raise errors.CommandError("the reason, in one line")

    monkeypatch.setattr("pipeline.cli.parse._cmd_parse", fails)
    # When it runs
    status = main(["parse", str(tmp_path / "a.dcm")])
    # Then exit 1 with its one line; the old import path still names the same class
    assert status == 1
    assert capsys.readouterr().err == "dicom-pipeline: error: the reason, in one line\n"
    from pipeline.cli import CommandError

    assert CommandError is errors.CommandError


def test_building_the_parser_imports_no_heavy_library() -> None:
    # Given a fresh interpreter
    code = (
        "import sys\n"
        "from pipeline.cli import build_parser\n"
        "build_parser()\n"
        "heavy = {'boto3', 'botocore', 'pydicom', 'numpy', 'rich', 'pyarrow', 'duckdb'}\n"
        "print(sorted(heavy & {m.partition('.')[0] for m in sys.modules}))\n"
    )
    # When it builds the parser (what `dicom-pipeline --help` does)
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    # Then none of the libraries the handlers use is imported yet
    assert done.stdout.strip() == "[]"


def test_python_dash_m_pipeline_cli_runs_the_command() -> None:
    # Given the package's __main__ / When run as `python -m pipeline.cli --version`
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "--version"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    # Then it prints the version and exits 0
    assert done.returncode == 0
    assert done.stdout == f"dicom-pipeline {pipeline.__version__}\n"


def test_reindex_uses_the_shared_whole_number_type(capsys: pytest.CaptureFixture[str]) -> None:
    # Given --max-queue-depth 0 / When parsed / Then the one usage line every count gives
    with pytest.raises(SystemExit) as exited:
        main(["reindex", "--max-queue-depth", "0"])
    assert exited.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        "dicom-pipeline: error: argument --max-queue-depth: must be 1 or more, not 0"
    ]
