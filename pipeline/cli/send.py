"""``dicom-pipeline send PATH... [--url URL] [--username U] [--stack FILE] [--aws-stack NAME]``.

STOW-RS every DICOM file under PATH to Orthanc (:mod:`pipeline.orthanc.send`): one JSON line
per file on stdout, a summary line on stderr; exit 1 when any file failed or nothing was a
DICOM instance. Ctrl-C reports what was stored before it, then exits 130.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any, TextIO

from pipeline.cli.common import PROG
from pipeline.errors import CommandError

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add ``send`` to the CLI's subparsers."""
    send = subparsers.add_parser(
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
