"""``dicom-pipeline export --out PATH``: the metadata table as Parquet (pipeline.ops.export).

A progress bar on a terminal (items scanned, against the table's approximate item count), then
one summary line on stderr; exit 0, or 1 with one line when the target cannot be read.

To ``s3://`` each export is a new run folder under ``--out``; ``--glue-table DATABASE.TABLE``
switches that table to it (by default, the deployed stack's ``records`` table when ``--out``
is under its ``ExportPrefix``), ``--keep N`` then deletes all but the N newest runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, TextIO

from pipeline.cli.common import PROG, add_target_arguments, positive_int
from pipeline.errors import CommandError

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add ``export`` to the CLI's subparsers."""
    p = subparsers.add_parser(
        "export",
        help="the metadata table as Parquet, one flat column per indexed attribute",
        description=(
            "Scan the metadata table in parallel and write it as Parquet: one row per item, "
            "one column per indexed attribute plus the pipeline's (the gzip header left out). "
            "PATH ending in .parquet is one file; any other PATH a folder of part files "
            "(for a large table); s3://bucket/prefix/ a new folder run=<time>-<id>/ under "
            "that prefix for each export (the stack's ExportPrefix: then the Glue table "
            "records, which Athena queries, is switched to the new run). Locally DuckDB "
            "queries it (pipeline.ops.export.query)."
        ),
    )
    p.add_argument(
        "--out",
        required=True,
        type=_out,
        metavar="PATH",
        help="a .parquet file, a folder (not the current one), or s3://bucket/prefix/",
    )
    p.add_argument("--segments", type=_segments, default=8, help="parallel scan segments (threads)")
    p.add_argument(
        "--glue-table",
        type=_glue_table,
        metavar="DATABASE.TABLE",
        help=(
            "with an s3:// PATH: point this Glue table at the new run once it is uploaded "
            "(default: the deployed stack's records table when PATH is under its ExportPrefix)"
        ),
    )
    p.add_argument(
        "--keep",
        type=positive_int,
        metavar="N",
        help="with an s3:// PATH: then delete all but the N newest runs under it (N >= 1)",
    )
    add_target_arguments(p)
    p.set_defaults(func=_cmd_export)


def _out(text: str) -> str:
    """``--out``: an ``s3://`` URL as it is; a path that is neither empty nor the current
    folder (a folder export replaces the part files in it, and the files hold PHI)."""
    if text.startswith("s3://"):
        if not text[len("s3://") :].split("/", 1)[0]:
            raise argparse.ArgumentTypeError(f"no bucket in {text!r}: s3://bucket/prefix/")
        return text
    if not text.strip():
        raise argparse.ArgumentTypeError("empty: give a .parquet file or a folder")
    if Path(text).resolve() == Path.cwd().resolve():
        raise argparse.ArgumentTypeError(
            f"{text!r} is the current folder: give a .parquet file or a folder of its own"
        )
    return text


def _glue_table(text: str) -> str:
    database, dot, name = text.partition(".")
    if not (database and dot and name) or "." in name:
        raise argparse.ArgumentTypeError(f"not DATABASE.TABLE: {text!r}")
    return text


def _default_table(target: Any, out: str) -> str | None:
    """The stack's Glue table when ``out`` is under its export prefix, else None."""
    from pipeline.names import EXPORT_TABLE

    prefix = target.export_prefix
    if not (target.glue_database and prefix and out.startswith("s3://")):
        return None
    under = out.rstrip("/") + "/"
    return f"{target.glue_database}.{EXPORT_TABLE}" if under.startswith(prefix) else None


def _segments(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 1 <= value <= 1_000_000:
        raise argparse.ArgumentTypeError(f"must be 1 to 1000000, not {value}")
    return value


def _item_count(table: str) -> int | None:
    """The table's approximate item count (DynamoDB updates it every few hours), or None."""
    from botocore.exceptions import BotoCoreError, ClientError

    from pipeline import aws

    try:
        count = aws.client("dynamodb").describe_table(TableName=table)["Table"]["ItemCount"]
    except (ClientError, BotoCoreError, KeyError):
        return None
    return int(count) or None


def _cmd_export(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from pipeline.ops.export import export
    from pipeline.ops.target import TargetError, resolve_target

    try:
        target = resolve_target(args.stack, args.aws_stack)
        target.activate()
    except TargetError as exc:
        raise CommandError(str(exc)) from None
    s3_out = args.out.startswith("s3://")
    if not s3_out and (args.glue_table or args.keep):
        raise CommandError("--glue-table and --keep apply to an s3:// --out only")
    glue_table = args.glue_table or _default_table(target, args.out)
    total = _item_count(target.table) if err.isatty() else None
    columns = (TextColumn("export"), BarColumn(), MofNCompleteColumn(), TextColumn("items"))
    with Progress(*columns, console=Console(file=err), disable=not err.isatty()) as bar:
        task = bar.add_task("export", total=total)
        try:
            result = export(
                target,
                args.out,  # a path, or an s3:// URL (never through Path: it would drop a /)
                progress=lambda n: bar.advance(task, n),
                segments=args.segments,
                glue_table=glue_table,
                keep=args.keep,
            )
        except (ClientError, BotoCoreError, Boto3Error) as exc:
            raise CommandError(f"cannot export {target.table} to {args.out}: {exc}") from None
        except OSError as exc:
            raise CommandError(f"cannot write {args.out}: {exc.strerror or exc}") from None
    err.write(f"{PROG} export: {result.summary()}\n")
    return 0
