"""``dicom-pipeline dlq list`` and ``dlq redrive`` (:mod:`pipeline.ops.redrive`).

``dlq list [--json]`` groups the DLQ's messages by failure code and key prefix (a table, or
one JSON document with the groups and every entry) and changes nothing; ``dlq redrive [--code
C] [--key-prefix P] [--dry-run]`` re-sends the selected messages' events to the ingest queue
(:func:`pipeline.ops.redrive.redrive`), one JSON line per selected message on stdout, a
summary line on stderr, exit 1 when any send failed.
"""

from __future__ import annotations

import argparse
import json
from typing import Any, TextIO

from pipeline.cli.common import PROG, add_target_arguments
from pipeline.console import plural
from pipeline.errors import CommandError

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add ``dlq list`` and ``dlq redrive`` to the CLI's subparsers."""
    dlq = subparsers.add_parser("dlq", help="the dead-letter queue: list and redrive")
    sub = dlq.add_subparsers(dest="dlq_command", required=True)

    ls = sub.add_parser(
        "list",
        help="group the DLQ's messages by failure code and key prefix",
        description=(
            "Read every DLQ message (and give each one back): counts by failure code "
            "(UNKNOWN for raw S3 notifications) and key prefix (a key's first path segment, or "
            "the first two characters of a flat key; below Orthanc's prefix: orthanc/7c). "
            "Changes nothing."
        ),
    )
    add_target_arguments(ls)
    ls.add_argument("--json", action="store_true", help="one JSON document: groups and entries")
    ls.set_defaults(func=_cmd_list)

    rd = sub.add_parser(
        "redrive",
        help="re-send the DLQ's events to the ingest queue",
        description=(
            'Re-send each selected message\'s S3 event ({"Records": [record]}) to the ingest '
            "queue and delete the message only after the send succeeded; a message whose event "
            "the table already holds (or a newer one) is deleted without a send. One JSON line "
            "per selected message on stdout. Exit 1 when any send failed (those messages stay "
            "in the DLQ: run again)."
        ),
    )
    add_target_arguments(rd)
    rd.add_argument("--code", metavar="C", help="only this failure code (UNKNOWN: raw ones)")
    rd.add_argument("--key-prefix", metavar="P", help="only keys starting with P")
    rd.add_argument("--dry-run", action="store_true", help="change nothing, say what would be sent")
    rd.set_defaults(func=_cmd_redrive)


def _target(args: argparse.Namespace) -> Any:
    from pipeline.ops.target import TargetError, resolve_target

    try:
        target = resolve_target(args.stack, args.aws_stack)
    except TargetError as exc:
        raise CommandError(str(exc)) from None
    target.activate()
    return target


def _aws_failure(exc: Exception, what: str) -> Exception:
    """A one-line CommandError for an AWS error (its code, never a traceback)."""
    from botocore.exceptions import ClientError

    reason = (
        str(exc.response.get("Error", {}).get("Code") or type(exc).__name__)
        if isinstance(exc, ClientError)
        else type(exc).__name__
    )
    return CommandError(f"cannot {what}: {reason}")


def _cmd_list(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from botocore.exceptions import BotoCoreError, ClientError

    from pipeline.ops.redrive import group, list_dlq

    target = _target(args)
    try:
        entries = list_dlq(target)
    except (ClientError, BotoCoreError) as exc:
        raise _aws_failure(exc, f"read the DLQ {target.dlq_url}") from None
    groups = group(entries)
    raw = sum(e.raw for e in entries)
    if args.json:
        document = {
            "total": len(entries),
            "raw": raw,
            "groups": groups,
            "entries": [e.summary() for e in entries],
        }
        out.write(json.dumps(document, ensure_ascii=False) + "\n")
    else:
        out.write(_table(groups))
    err.write(
        f"{PROG} dlq list: {len(entries)} messages ({raw} raw S3 notifications) "
        f"in {len(groups)} groups\n"
    )
    return 0


def _table(groups: list[dict[str, Any]]) -> str:
    header = ("code", "prefix", "messages", "raw")
    rows = [header] + [
        (g["code"], g["prefix"] or "-", str(g["count"]), str(g["raw"])) for g in groups
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = [
        "  ".join(
            cell.rjust(w) if i >= 2 else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(r, widths, strict=True))
        ).rstrip()
        for r in rows
    ]
    return "\n".join(lines) + "\n"


def _cmd_redrive(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from botocore.exceptions import BotoCoreError, ClientError
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from pipeline.errors import UnprocessedKeys
    from pipeline.ops.redrive import RedriveError, redrive

    target = _target(args)
    columns = (TextColumn("redrive"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=Console(file=err), disable=not err.isatty()) as bar:
        task = bar.add_task("redrive", total=None)

        def advance(done: int, total: int | None) -> None:
            bar.update(task, completed=done, total=total)

        try:
            result = redrive(
                target,
                code=args.code,
                key_prefix=args.key_prefix,
                dry_run=args.dry_run,
                progress=advance,
            )
        except RedriveError as exc:
            raise CommandError(str(exc)) from None
        except UnprocessedKeys as exc:
            # A record not read is not an absent record: send nothing rather than re-send.
            raise CommandError(f"cannot redrive the DLQ: {exc.message}") from None
        except (ClientError, BotoCoreError) as exc:
            raise _aws_failure(exc, "redrive the DLQ") from None
    for entry in result.entries:
        out.write(json.dumps(entry, ensure_ascii=False) + "\n")
    verb = "would send" if result.dry_run else "sent"
    err.write(
        f"{PROG} dlq redrive{' (dry run)' if result.dry_run else ''}: {result.selected} of "
        f"{plural(result.read, 'message')} selected; {verb} {plural(result.sent, 'event')}; "
        f"{result.already_indexed} already indexed; {result.deleted} deleted; "
        f"{result.kept} kept (nothing to re-send); {result.failed} failed\n"
    )
    return 0 if result.ok else 1
