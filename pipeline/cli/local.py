"""``dicom-pipeline local up [--port N] [--state-dir DIR] [--no-orthanc] [--faults ...]``.

Runs the local stack (moto, the workflow, the handler, and Orthanc where it is installed) in
the foreground until Ctrl-C (exit 130) or SIGTERM (exit 143); one per state directory
(:mod:`pipeline.local.up`). Its logs go to ``DIR/logs/``, short status lines to stderr.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, TextIO

from pipeline.cli.common import Terminated, port
from pipeline.errors import CommandError

__all__ = ["register"]


def _faults(text: str) -> Any:
    """``--faults NAME=RATE,...`` as a :class:`pipeline.local.faults.FaultPlan` (light import)."""
    from pipeline.local.faults import FaultPlan

    try:
        return FaultPlan.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register(subparsers: Any) -> None:
    """Add ``local up`` to the CLI's subparsers."""
    local = subparsers.add_parser("local", help="the local stack (moto, the workflow, the handler)")
    local_sub = local.add_subparsers(dest="local_command", required=True)
    up = local_sub.add_parser("up", help="run the local stack in the foreground")
    up.add_argument(
        "--port", type=port, default=0, help="moto's port on 127.0.0.1 (0: any free one)"
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
