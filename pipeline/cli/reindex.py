"""``dicom-pipeline reindex [--prefix P] [--stale-only] [--include-failed]``
(:mod:`pipeline.ops.reindex`).

Sends a synthetic reindex event for each ``.dcm`` object under ``--prefix`` (by default
Orthanc's prefix, :data:`pipeline.names.ORTHANC_PREFIX`; ``--prefix ""``: the whole bucket)
(:func:`pipeline.ops.reindex.reindex`); the workflow parses them as the ingest queue drains and
never lets one overwrite a record of a newer event. Objects whose latest event already failed
and is in the DLQ (the DLQ ledger holds a failure newer than the stored record) are left alone
unless ``--include-failed``: a reindex would re-read the same bytes and add a second DLQ message
for the same failure. One JSON line with the counts on stdout, a summary line on stderr, exit 1
when any send failed.

The run is paced by the ingest queue's depth (:class:`pipeline.ops.reindex.Pacing`): before
each chunk of 100 events it waits while the queue holds more than ``--max-queue-depth``
messages; with ``--max-wait S`` it stops after waiting S seconds for one chunk, prints
``resume_after`` and exits 1, and ``--start-after KEY`` resumes where it stopped.

Against a deployed stack that has the reindex state machine (output
``ReindexStateMachineArn``), the command starts it instead (a Step Functions Distributed Map
lists the bucket and enqueues the same events in parallel, docs/operations.md) and prints the
execution's ARN; ``--here`` enqueues from this machine anyway. Without ``--prefix`` the Map
lists its own default (Orthanc's prefix); ``--prefix ""`` is passed on and lists the whole
bucket (:func:`reindex_map_input`).
"""

from __future__ import annotations

import argparse
import json
from typing import Any, TextIO

from pipeline.cli.common import PROG, add_target_arguments, positive_int
from pipeline.errors import CommandError
from pipeline.names import ORTHANC_PREFIX

__all__ = ["register"]

#: ``pipeline.ops.reindex.DEFAULT_MAX_QUEUE_DEPTH``, written out so that building the parser
#: imports no AWS client code (a unit test keeps the two equal).
DEFAULT_DEPTH_HELP = 2_000


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value >= 0:  # also refuses NaN
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def register(subparsers: Any) -> None:
    """Add ``reindex`` to the CLI's subparsers."""
    p = subparsers.add_parser(
        "reindex",
        help="re-parse objects already in S3, never overwriting a newer record",
        description=(
            "Send a synthetic S3 event for each .dcm object under --prefix (by default "
            "Orthanc's prefix) to the ingest "
            "queue, ordered just after the object's stored record and before any newer event "
            "of its key. With --stale-only, only objects whose record is missing, a tombstone, "
            "or of another parser version. Objects whose latest event already failed (its DLQ "
            "message is waiting) are left alone unless --include-failed. Exit 1 when any "
            "send failed."
        ),
    )
    add_target_arguments(p)
    p.add_argument(
        "--prefix",
        metavar="P",
        help=f"only keys starting with P (default: Orthanc's prefix, {ORTHANC_PREFIX}; "
        '"" for the whole bucket)',
    )
    p.add_argument(
        "--stale-only",
        action="store_true",
        help="only objects without a current record (missing, or another parser_version)",
    )
    p.add_argument(
        "--include-failed",
        action="store_true",
        help="also objects whose latest event already failed and is in the DLQ (by default "
        "they are left alone: a reindex would only add a second DLQ message)",
    )
    p.add_argument(
        "--max-queue-depth",
        type=positive_int,
        default=None,
        metavar="N",
        help="wait while the ingest queue holds more than N messages "
        f"(default: {DEFAULT_DEPTH_HELP}, docs/capacity.md)",
    )
    p.add_argument(
        "--max-wait",
        type=_seconds,
        default=None,
        metavar="S",
        help="stop after waiting S seconds for room in the queue; print where to resume "
        "(default: wait as long as it takes)",
    )
    p.add_argument(
        "--start-after",
        metavar="KEY",
        help="only keys after KEY (a stopped run's resume_after)",
    )
    p.add_argument(
        "--here",
        action="store_true",
        help="on AWS, list and enqueue from this machine instead of starting the reindex map",
    )
    p.set_defaults(func=_cmd_reindex)


def reindex_map_input(
    *, prefix: str | None, stale_only: bool, include_failed: bool = False
) -> dict[str, Any]:
    """The reindex Distributed Map's execution input.

    ``prefix`` None (no ``--prefix``) leaves ``prefix`` out, so the Map lists its own default,
    Orthanc's prefix; any string, ``""`` (the whole bucket) included, is passed as given: the
    Map merges the input over its defaults, so a ``""`` sent for "no prefix" would override
    that default and list the whole bucket.

    Examples
    --------
    >>> reindex_map_input(prefix=None, stale_only=False)
    {'stale_only': False, 'include_failed': False}
    >>> reindex_map_input(prefix="", stale_only=True)["prefix"]
    ''
    """
    run: dict[str, Any] = {"stale_only": stale_only, "include_failed": include_failed}
    if prefix is not None:
        run["prefix"] = prefix
    return run


def start_reindex_map(
    arn: str, *, prefix: str | None, stale_only: bool, include_failed: bool = False
) -> str:
    """Start the deployed reindex Distributed Map (input: :func:`reindex_map_input`); returns
    the execution ARN."""
    import uuid

    from pipeline import aws

    run = reindex_map_input(prefix=prefix, stale_only=stale_only, include_failed=include_failed)
    response = aws.client("stepfunctions").start_execution(
        stateMachineArn=arn, name=f"reindex-{uuid.uuid4().hex}", input=json.dumps(run)
    )
    return str(response["executionArn"])


def _cmd_reindex(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from botocore.exceptions import BotoCoreError, ClientError
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn

    from pipeline.errors import UnprocessedKeys
    from pipeline.ops.reindex import DEFAULT_MAX_QUEUE_DEPTH, Pacing, reindex
    from pipeline.ops.target import TargetError, resolve_target

    try:
        target = resolve_target(args.stack, args.aws_stack)
    except TargetError as exc:
        raise CommandError(str(exc)) from None
    target.activate()
    if not target.local and target.reindex_state_machine_arn and not args.here:
        try:
            execution = start_reindex_map(
                target.reindex_state_machine_arn,
                prefix=args.prefix,
                stale_only=args.stale_only,
                include_failed=args.include_failed,
            )
        except (ClientError, BotoCoreError) as exc:
            raise CommandError(f"cannot start the reindex map: {type(exc).__name__}") from None
        out.write(json.dumps({"execution_arn": execution}) + "\n")
        err.write(
            f"{PROG} reindex: started the reindex map {execution}; follow it in the Step "
            "Functions console (its children enqueue the reindex events)\n"
        )
        return 0
    prefix = ORTHANC_PREFIX if args.prefix is None else args.prefix
    columns = (SpinnerColumn(), TextColumn("reindex: {task.completed} objects listed"))
    with Progress(*columns, console=Console(file=err), disable=not err.isatty()) as bar:
        task = bar.add_task("reindex", total=None)

        def advance(done: int, total: int | None) -> None:
            bar.update(task, completed=done)

        pacing = Pacing(
            max_depth=args.max_queue_depth or DEFAULT_MAX_QUEUE_DEPTH,
            max_wait_seconds=args.max_wait,
        )
        try:
            result = reindex(
                target,
                prefix=prefix,
                stale_only=args.stale_only,
                include_failed=args.include_failed,
                progress=advance,
                pacing=pacing,
                start_after=args.start_after,
            )
        except UnprocessedKeys as exc:
            # A record not read is not an absent one: stop rather than reindex it blindly.
            raise CommandError(f"cannot reindex s3://{target.bucket}: {exc.message}") from None
        except (ClientError, BotoCoreError) as exc:
            reason = (
                str(exc.response.get("Error", {}).get("Code") or type(exc).__name__)
                if isinstance(exc, ClientError)
                else type(exc).__name__
            )
            raise CommandError(f"cannot reindex s3://{target.bucket}: {reason}") from None
    out.write(json.dumps(result.to_json()) + "\n")
    scope = f" under {prefix!r}" if prefix else " (the whole bucket)"
    err.write(
        f"{PROG} reindex: {result.listed} .dcm objects{scope}; {result.sent} reindex events "
        f"sent to the ingest queue; {result.current} current (left alone); "
        f"{result.known_failed} already failed (left alone; --include-failed to retry them); "
        f"{result.failed} failed; waited {result.waited_seconds:.0f} s for the queue\n"
    )
    if result.resume_after is not None:
        err.write(
            f"{PROG} reindex: stopped: the ingest queue stayed above {pacing.max_depth} "
            f"messages for {args.max_wait:g} s; resume with --start-after "
            f"{json.dumps(result.resume_after)}\n"
        )
    return 0 if result.ok and not result.stopped else 1
