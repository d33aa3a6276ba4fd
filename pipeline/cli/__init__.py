"""The ``dicom-pipeline`` command line: one module per command under this package.

Each command module (:mod:`~pipeline.cli.parse`, ``local``, ``send``, ``audit``, ``dlq``,
``reindex``, ``export``, ``demo``) has a ``register(subparsers)`` that adds its subcommands;
a handler returns the exit status and may raise :class:`pipeline.errors.CommandError`. This
module builds the parser, turns signals into exceptions and maps every outcome to one exit
status. ``python -m pipeline.cli`` runs it.

No traceback ever reaches the user. Exit statuses:

* 0: done; 1: a source failed, or the command could not do its job (one
  ``dicom-pipeline: error: ...`` line on stderr: a busy port, an unexpected exception named
  by its type);
* 2: bad arguments, one ``dicom-pipeline: error: ...`` line on stderr and nothing on stdout
  (a SOURCE that is a directory or a malformed ``s3://`` URI, a port out of range, a
  ``--limit`` below 1);
* 130: interrupted with Ctrl-C (SIGINT); 143: stopped with SIGTERM. Either prints one line,
  ``dicom-pipeline: interrupted`` or ``dicom-pipeline: terminated``, after stopping what the
  command started (the local stack's server, its threads, ``stack.json``).
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import FrameType
from typing import NoReturn, TextIO

from pipeline import __version__
from pipeline.cli.common import PROG, Terminated
from pipeline.errors import CommandError, DicomPipelineError

# The commands import what they need when they run (pydicom and boto3 take most of a second
# to import): until then Ctrl-C is already one line, not a traceback from an import.

__all__ = ["PROG", "CommandError", "Terminated", "build_parser", "main"]

#: The command modules, in the order ``--help`` lists their commands; each has a
#: ``register(subparsers)`` (imported when the parser is built; their handlers import on use).
COMMANDS: tuple[str, ...] = (
    "pipeline.cli.parse",
    "pipeline.cli.local",
    "pipeline.cli.send",
    "pipeline.cli.audit",
    "pipeline.cli.dlq",
    "pipeline.cli.reindex",
    "pipeline.cli.export",
    "pipeline.cli.demo",
)


class _Parser(argparse.ArgumentParser):
    """argparse, with every usage error as one line: ``dicom-pipeline: error: ...``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{PROG}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``dicom-pipeline``."""
    parser = _Parser(
        prog=PROG,
        description="Index the headers of DICOM objects stored in S3.",
        epilog="Exit status: 0 done, 1 failed, 2 bad arguments, 130 Ctrl-C, 143 SIGTERM.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMANDS:
        importlib.import_module(module).register(sub)
    return parser


@contextmanager
def _signals_raise() -> Iterator[None]:
    """SIGINT raises KeyboardInterrupt and SIGTERM Terminated in the main thread, once.

    A second signal while the first one's cleanup runs (stopping the local stack) is
    ignored, so a impatient second Ctrl-C cannot leave the server running. The previous
    handlers are restored on the way out.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        if received:
            return
        received.append(signum)
        if signum == signal.SIGTERM:
            raise Terminated
        raise KeyboardInterrupt

    saved = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, previous in saved.items():
            signal.signal(sig, previous)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (argparse exits 2 on bad arguments)."""
    err = sys.stderr
    try:
        with _signals_raise():
            parser = build_parser()
            args = parser.parse_args(argv)
            if args.command == "parse":  # every SOURCE is checked before any is parsed
                from pipeline.cli.parse import source_problem

                for source in args.sources:
                    problem = source_problem(source)
                    if problem:
                        parser.error(f"argument SOURCE: {problem}")
            return int(args.func(args, sys.stdout, err))
    except KeyboardInterrupt:
        return _say(err, "interrupted", 130)
    except Terminated:
        return _say(err, "terminated", 143)
    except CommandError as exc:
        return _say(err, f"error: {exc}", 1)
    except DicomPipelineError as exc:  # coded: its message names what and where, no values
        return _say(err, f"error: {exc.code}: {exc.message}", 1)
    except BrokenPipeError:  # stdout's reader went away (``| head``): nothing more to say
        _silence_stdout()
        return 1
    except Exception as exc:
        return _say(err, f"error: unexpected {type(exc).__name__} (a bug in {PROG})", 1)


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's last flush does not complain."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # not a real file (under a test runner)
        pass


def _say(err: TextIO, text: str, status: int) -> int:
    try:
        err.write(f"{PROG}: {text}\n")
        err.flush()
    except (OSError, ValueError):  # stderr closed (a pipe that went away): the status says it
        pass
    return status
