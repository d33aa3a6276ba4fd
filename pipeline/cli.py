"""The ``dicom-pipeline`` command line.

``parse SOURCE... [--format record|dicom-json] [--stats]`` prints one JSON document per
source on stdout, in order; a source that fails prints ``{"source", "error": {"code",
"message"}}`` and the command exits 1. ``--stats`` prints ``{"source", "bytes_read",
"object_size", "header_bytes"}`` lines on stderr. ``parse`` never writes anything: a record
whose JSON would be offloaded shows the ``dicom_json_s3`` URI the pipeline would use.

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
import json
import os
import re
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn, TextIO
from urllib.parse import unquote, urlparse

from pipeline import __version__
from pipeline.errors import DicomPipelineError, InternalError

# The commands import what they need when they run (pydicom and boto3 take most of a second
# to import): until then Ctrl-C is already one line, not a traceback from an import.

__all__ = ["PROG", "build_parser", "main"]

PROG = "dicom-pipeline"
#: Modules with a ``register(subparsers)`` that adds operations commands (audit, dlq, reindex,
#: export); a handler returns the exit status and may raise :class:`CommandError`.
_OPS_COMMANDS: tuple[str, ...] = (
    "pipeline.ops.audit_command",
    "pipeline.ops.dlq_command",
    "pipeline.ops.reindex_command",
    "pipeline.ops.export_command",
)
#: ``s3://bucket/key``: a bucket and a non-empty key.
_S3_URI = re.compile(r"s3://([^/]+)/(.+)", re.DOTALL)


class _Parser(argparse.ArgumentParser):
    """argparse, with every usage error as one line: ``dicom-pipeline: error: ...``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{PROG}: error: {message}\n")


class CommandError(Exception):
    """A command cannot do its job, for a reason its message says in one line (exit 1)."""


class Terminated(BaseException):
    """SIGTERM arrived (raised in the main thread, like KeyboardInterrupt for SIGINT)."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be 0 (any free port) to 65535, not {value}")
    return value


def _faults(text: str) -> Any:
    """``--faults NAME=RATE,...`` as a :class:`pipeline.local.faults.FaultPlan` (light import)."""
    from pipeline.local.faults import FaultPlan

    try:
        return FaultPlan.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def source_problem(source: str) -> str | None:
    """Why ``source`` cannot be a SOURCE of ``parse`` (a usage error), or None.

    A malformed ``s3://`` URI and a directory are usage errors; a path that does not exist is
    not (it is that source's ``OBJECT_NOT_FOUND`` line).

    Examples
    --------
    >>> source_problem("s3:/x")
    "'s3:/x' is not an s3://bucket/key URI"
    >>> source_problem("s3://bucket/key.dcm") is None
    True
    """
    if source.lower().startswith("s3:"):
        match = _S3_URI.fullmatch(source)
        if not match or not unquote(match[2]).strip("/"):
            return f"{source!r} is not an s3://bucket/key URI"
        return None
    path = unquote(urlparse(source).path) if source.startswith("file://") else source
    if os.path.isdir(path):
        return f"{source!r} is a directory: give the files in it"
    return None


def _cmd_parse(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from pipeline.dicom.parse import parse
    from pipeline.dicom.record import record_to_json

    failed = False
    for source in args.sources:
        stats: dict[str, int] | None = None
        try:
            parsed = parse(source)
            stats = parsed.stats
            if args.format == "dicom-json":
                text = json.dumps(parsed.dicom_json, ensure_ascii=False, separators=(",", ":"))
            else:
                text = record_to_json(parsed.record().item)
        except DicomPipelineError as exc:
            failed = True
            text = json.dumps({"source": source, "error": exc.to_dict()}, ensure_ascii=False)
        except Exception as exc:  # a bug: still one coded line, never a traceback
            failed = True
            bug = InternalError(f"{type(exc).__name__} while parsing {source}")
            text = json.dumps({"source": source, "error": bug.to_dict()}, ensure_ascii=False)
        out.write(text + "\n")
        out.flush()
        if args.stats and stats is not None:
            err.write(json.dumps({"source": source, **stats}) + "\n")
    return 1 if failed else 0


def _cmd_local_up(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    import time

    from pipeline.local.stack import LocalStack, PortUnavailable
    from pipeline.local.up import (
        LOG_FILE,
        AlreadyRunning,
        claim,
        logs_to_file,
        status_line,
        stop_within,
    )
    from pipeline.orthanc.local import OrthancError

    state_dir = Path(args.state_dir)
    try:
        with claim(state_dir) as state:
            log_path = state_dir / LOG_FILE
            with logs_to_file(log_path):
                stack = LocalStack(
                    server=True, port=args.port, orthanc=args.orthanc, faults=args.faults
                )
                stack.start()
                try:
                    if state.stale_stack:
                        was = f" (PID {state.previous_pid})" if state.previous_pid else ""
                        err.write(
                            f"replaced the stack.json of a run that did not stop cleanly{was}\n"
                        )
                    stack.write_info(state.stack_file)
                    assert stack.info is not None
                    orthanc = (
                        f", Orthanc at {stack.info.orthanc_url}" if stack.info.orthanc_url else ""
                    )
                    faults = f", injecting faults {args.faults}" if args.faults else ""
                    err.write(
                        f"local stack ready at {stack.endpoint_url}{orthanc}{faults}; wrote "
                        f"{state.stack_file}; logs in {log_path}; Ctrl-C stops it\n"
                    )
                    err.flush()
                    last = ""
                    while True:  # until SIGINT or SIGTERM interrupts the sleep
                        time.sleep(1.0)
                        line = status_line(stack)
                        if line.split(" ", 1)[1] != last.split(" ", 1)[-1]:
                            err.write(line + "\n")
                            err.flush()
                            last = line
                finally:
                    # stack.json first (never a stale file), then everything, within seconds
                    state.stack_file.unlink(missing_ok=True)
                    stopping = sys.exc_info()[1]
                    stop_within(
                        stack,
                        on_timeout=lambda: state.stack_file.unlink(missing_ok=True),
                        exit_status=143 if isinstance(stopping, Terminated) else 130,
                    )
    except AlreadyRunning as exc:
        raise CommandError(str(exc)) from None
    except PortUnavailable as exc:  # raised before anything started or was written
        raise CommandError(f"{exc}: choose another --port, or 0 for any free one") from None
    except OrthancError as exc:  # packages missing, or Orthanc did not start: one line
        raise CommandError(f"{exc}; or run without Orthanc: local up --no-orthanc") from None
    return 0  # pragma: no cover - only a signal ends the wait


def _send_target(args: argparse.Namespace) -> tuple[str, str | None, str | None]:
    """The DICOMweb URL and credentials of ``send``: ``--url``, else the deployed stack's
    ``OrthancUrl`` (``--aws-stack``), else the local stack's stack.json (with its credentials);
    the user from ``--username`` or the environment, the password from the environment."""
    stack: dict[str, str] = {}
    if args.url:
        url = args.url
    elif args.aws_stack:
        from pipeline.ops.target import TargetError, resolve_target

        try:
            url = resolve_target(aws_stack=args.aws_stack).dicomweb_url or ""
        except TargetError as exc:
            raise CommandError(str(exc)) from None
    else:
        stack_file = Path(args.stack)
        if stack_file.is_file():
            try:
                stack = json.loads(stack_file.read_text(encoding="utf-8"))
            except ValueError:
                raise CommandError(f"{stack_file} is not JSON") from None
        url = stack.get("dicomweb_url", "")
    if not url:
        raise CommandError(
            f"no DICOMweb URL: give --url or --aws-stack, or start the local stack "
            f"(`{PROG} local up`) so {args.stack} names its Orthanc"
        )
    username = (
        args.username or os.environ.get("DICOM_PIPELINE_USERNAME") or stack.get("orthanc_username")
    )
    password = os.environ.get("DICOM_PIPELINE_PASSWORD") or stack.get("orthanc_password")
    return url, username, password


def _cmd_send(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TransferSpeedColumn,
    )

    from pipeline.console import plural
    from pipeline.orthanc.send import discover, make_client, send

    url, username, password = _send_target(args)
    try:
        files = discover(args.paths)
    except FileNotFoundError as exc:
        raise CommandError(str(exc)) from None
    total = sum(f.stat().st_size for f in files)
    columns = (
        TextColumn("send"),
        BarColumn(),
        MofNCompleteColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
    )
    with Progress(*columns, console=_stderr_console(err), disable=not err.isatty()) as bar:
        task = bar.add_task("send", total=total)
        done = {"files": 0}

        def line(result: Any) -> None:
            out.write(json.dumps(result.to_json(), ensure_ascii=False) + "\n")
            out.flush()
            done["files"] += 1
            bar.update(task, advance=result.size)

        reported: list[Any] = []

        def reported_line(result: Any) -> None:
            reported.append(result)
            line(result)

        try:
            send(files, make_client(url, username, password), on_result=reported_line)
        except KeyboardInterrupt:
            # What was stored before Ctrl-C already has its JSON line; say what is unknown.
            err.write(
                f"{PROG} send: interrupted after {plural(len(reported), 'file')} to {url} "
                f"({_send_counts(reported)}); the files of the request in flight are not "
                "reported (send them again: Orthanc keeps one copy)\n"
            )
            raise
    results = reported
    err.write(f"{PROG} send: {plural(len(results), 'file')} to {url}: {_send_counts(results)}\n")
    if not any(r.status != "not_dicom" for r in results):
        raise CommandError(f"no DICOM instance under {' '.join(args.paths)}: nothing was sent")
    return 1 if any(r.status == "failed" for r in results) else 0


def _send_counts(results: list[Any]) -> str:
    counts: dict[str, int] = {}
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
    return ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "nothing"


def _stderr_console(err: TextIO) -> Any:
    from rich.console import Console

    return Console(file=err)


def _cmd_demo(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from pipeline.local.demo import run_demo
    from pipeline.local.stack import PortUnavailable
    from pipeline.orthanc.local import OrthancError

    try:
        return run_demo(
            limit=args.limit,
            json_out=Path(args.state_dir) / "demo-summary.json",
            orthanc=args.orthanc,
        )
    except PortUnavailable as exc:
        raise CommandError(str(exc)) from None
    except OrthancError as exc:  # installed, but it did not start: one line, never a bug
        raise CommandError(f"{exc}; or run without Orthanc: demo --no-orthanc") from None


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``dicom-pipeline``."""
    parser = _Parser(
        prog=PROG,
        description="Index the headers of DICOM objects stored in S3.",
        epilog="Exit status: 0 done, 1 failed, 2 bad arguments, 130 Ctrl-C, 143 SIGTERM.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("parse", help="parse DICOM headers into records or DICOM JSON")
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="a file path or s3://bucket/key")
    p.add_argument("--format", choices=("record", "dicom-json"), default="record")
    p.add_argument("--stats", action="store_true", help="print read statistics on stderr")
    p.set_defaults(func=_cmd_parse)

    local = sub.add_parser("local", help="the local stack (moto, the workflow, the handler)")
    local_sub = local.add_subparsers(dest="local_command", required=True)
    up = local_sub.add_parser("up", help="run the local stack in the foreground")
    up.add_argument(
        "--port", type=_port, default=0, help="moto's port on 127.0.0.1 (0: any free one)"
    )
    up.add_argument("--state-dir", default=".local", help="where stack.json is written")
    up.add_argument(
        "--no-orthanc",
        dest="orthanc",
        action="store_false",
        help="without the local Orthanc (Debian's packages; `make orthanc` installs them)",
    )
    up.add_argument(
        "--faults",
        type=_faults,
        default=None,
        metavar="NAME=RATE,...",
        help=(
            "inject faults, each at its RATE (0-1): lambda-throttle, lambda-timeout, "
            "dynamodb-throttle, s3-slowdown, duplicate-delivery"
        ),
    )
    up.set_defaults(func=_cmd_local_up)

    send = sub.add_parser(
        "send",
        help="STOW-RS DICOM files to Orthanc (default: the local stack's)",
        description=(
            "Send every DICOM file under PATH with STOW-RS; one JSON line per file on stdout "
            "(path, sop_instance_uid, status: stored|failed|not_dicom, error). Files that are "
            "not DICOM instances are reported, not sent. Credentials: --username or "
            "DICOM_PIPELINE_USERNAME, and DICOM_PIPELINE_PASSWORD; without --url, the local "
            "stack's URL and credentials from stack.json. Exit 1 when any file failed."
        ),
    )
    send.add_argument("paths", nargs="+", metavar="PATH", help="DICOM files or folders")
    send.add_argument("--url", help="the DICOMweb root, e.g. https://pacs.example.org/dicom-web")
    send.add_argument("--username", help="the user to send as (password from the environment)")
    send.add_argument("--stack", default=".local/stack.json", help="the local stack's facts")
    send.add_argument("--aws-stack", metavar="NAME", help="a deployed stack: its OrthancUrl")
    send.set_defaults(func=_cmd_send)

    for module in _OPS_COMMANDS:
        # Each operations module adds its subcommands (their handlers import on use).
        import importlib

        importlib.import_module(module).register(sub)

    demo = sub.add_parser("demo", help="ingest a sample set through the local stack, summarize")
    demo.add_argument(
        "--limit", type=_positive_int, default=None, help="only the first N sample files"
    )
    demo.add_argument("--state-dir", default=".local", help="where the summary JSON is written")
    demo.add_argument(
        "--no-orthanc",
        dest="orthanc",
        action="store_false",
        help="send the sample set straight into S3 (without Orthanc, the default when its "
        "packages are not installed)",
    )
    demo.set_defaults(func=_cmd_demo)
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
