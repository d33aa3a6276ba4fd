"""``dicom-pipeline audit``: reconcile S3, the table, the DLQ and Orthanc
(:func:`pipeline.ops.audit.audit`).

``audit [--json] [--inventory S3_URI] [--stack FILE] [--aws-stack NAME]`` prints a summary
(the classes with their counts, failures by code, what disagrees key by key, the sources,
what was not audited, notes, a verdict) or, with ``--json``, the report's JSON document. A
progress bar goes to stderr on a terminal. Exit 1 when any object is missing or any record
orphaned, 0 otherwise; a target or source that cannot be read is one
``dicom-pipeline: error: ...`` line and exit 1.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TextIO

from pipeline.cli.common import add_target_arguments
from pipeline.errors import CommandError
from pipeline.names import ORTHANC_PREFIX

if TYPE_CHECKING:
    from rich.console import Console

    from pipeline.ops.audit import AuditEntry, AuditReport, Progress

__all__ = ["register", "render"]

#: What each class means, for the summary.
MEANINGS = {
    "indexed": "indexed; the record's ETag (and version) is the object's",
    "stale": "indexed, but S3 holds another ETag or version",
    "failed": "in the DLQ or its ledger (by code below)",
    "missing": "in S3, in neither the table nor the DLQ",
    "orphan_record": "an indexed record whose object is not in S3",
    "dangling_sidecar": "an indexed record whose DICOM JSON sidecar is not in S3",
    "tombstone": "a deleted record whose object is gone (fine)",
    "orthanc_not_indexed": "an Orthanc instance that no indexed record names",
}
#: Progress bar labels by the audit's phases.
_LABELS = {
    "s3": "S3 objects",
    "table": "table items",
    "ledger": "DLQ ledger",
    "dlq": "DLQ messages",
    "orthanc": "Orthanc instances",
    "recheck": "keys read again",
}
#: At most this many disagreeing entries are listed one by one (``--json`` lists all).
LISTED = 50
_S3_URI = re.compile(r"s3://[^/]+/.+", re.DOTALL)


def _manifest_uri(text: str) -> str:
    if not _S3_URI.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an s3://bucket/key URI (of an inventory's manifest.json)"
        )
    return text


def register(subparsers: Any) -> None:
    """Add ``audit`` to the CLI's subparsers."""
    p = subparsers.add_parser(
        "audit",
        help="reconcile S3, the table, the DLQ and Orthanc; exit 1 when anything is missing",
        description=(
            f"Put every .dcm object under Orthanc's prefix ({ORTHANC_PREFIX}), record, DLQ "
            "failure and Orthanc instance in one class: "
            "indexed, stale, failed, missing, orphan_record, dangling_sidecar, tombstone, "
            "orthanc_not_indexed. "
            "Prints a summary (or --json); exit 1 when an object is missing or a record "
            "orphaned. Orthanc's credentials: DICOM_PIPELINE_USERNAME and "
            "DICOM_PIPELINE_PASSWORD, else the local stack's stack.json."
        ),
    )
    p.add_argument("--json", action="store_true", help="print the report as one JSON document")
    p.add_argument(
        "--inventory",
        metavar="S3_URI",
        type=_manifest_uri,
        help="read this S3 Inventory manifest.json (CSV) instead of listing the bucket",
    )
    add_target_arguments(p)
    p.set_defaults(func=_cmd_audit)


def _cmd_audit(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from pipeline.ops.audit import AuditError, audit
    from pipeline.ops.target import TargetError, resolve_target

    try:
        target = resolve_target(args.stack, args.aws_stack)
    except TargetError as exc:
        raise CommandError(str(exc)) from None
    target.activate()
    try:
        with _progress_bar(err) as progress:
            report = audit(target, progress=progress, inventory_manifest=args.inventory)
    except AuditError as exc:
        raise CommandError(str(exc)) from None
    if args.json:
        out.write(json.dumps(report.to_json(), ensure_ascii=False, indent=2) + "\n")
    else:
        from pipeline.console import summary_console

        render(report, summary_console(out))
    out.flush()
    return 1 if report.problems() else 0


@contextmanager
def _progress_bar(err: TextIO) -> Iterator[Progress | None]:
    """A rich progress bar on stderr when it is a terminal (one task per phase), else None."""
    isatty = getattr(err, "isatty", None)
    if not (isatty and isatty()):
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    bar = Progress(
        TextColumn("{task.description:<18}"),
        BarColumn(bar_width=30),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(file=err),
        transient=True,
    )
    tasks: dict[str, Any] = {}

    def update(phase: str, done: int, total: int | None) -> None:
        if phase not in tasks:
            tasks[phase] = bar.add_task(_LABELS.get(phase, phase), total=total)
        # SQS's count is approximate: never let the bar claim less than what was read.
        shown = None if total is None else max(total, done)
        bar.update(tasks[phase], completed=done, total=shown)

    with bar:
        yield update


# -- the summary --------------------------------------------------------------------------------
def _n(count: int, noun: str, plural: str | None = None) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {plural or noun + 's'}"


def _detail(entry: AuditEntry) -> str:
    """What explains one disagreeing entry, in a few words."""
    if entry.klass == "stale":
        text = f"S3 ETag {entry.etag}, record ETag {entry.record_etag}"
        if entry.version_id or entry.record_version_id:
            text += f"; S3 version {entry.version_id}, record version {entry.record_version_id}"
        return text
    if entry.klass == "failed":
        when = f" at {entry.failed_at}" if entry.failed_at else ""
        where = {
            "dlq+ledger": "in the DLQ",
            "dlq": "in the DLQ (no ledger entry)",
            "dlq-raw": "in the DLQ: the raw S3 notification",
            "ledger": "in the DLQ ledger only (its DLQ message was not found)",
        }.get(entry.failure_source or "", "")
        return f"{entry.code} {where}{when}"
    if entry.klass == "missing":
        record = "a tombstone" if entry.status == "deleted" else "no record"
        return f"{record}; {entry.size} bytes, modified {entry.last_modified}"
    if entry.klass == "orphan_record":
        when = f", indexed {entry.indexed_at}" if entry.indexed_at else ""
        return f"record ETag {entry.record_etag}{when}"
    if entry.klass == "orthanc_not_indexed":
        return f"instance {entry.orthanc_instance_id}; {entry.note or 'no key'}"
    return entry.note or ""


def _sources_line(report: AuditReport) -> str:
    src = report.sources
    s3 = src.get("s3", {})
    prefix = s3.get("prefix", "")
    if s3.get("from") == "inventory":
        s3_text = (
            f"S3 inventory {s3.get('manifest')} (snapshot {s3.get('snapshot')}): "
            f"{_n(s3.get('objects', 0), '.dcm object')} under {prefix or 'the bucket'}"
        )
    else:
        s3_text = f"s3://{report.bucket}/{prefix} listed: {_n(s3.get('objects', 0), '.dcm object')}"
    parts = [s3_text]
    table = src.get("table", {})
    parts.append(f"table {table.get('name')}: {_n(table.get('items', 0), 'item')}")
    if "ledger" in src:
        parts.append(f"DLQ ledger: {_n(src['ledger'].get('entries', 0), 'entry', 'entries')}")
    dlq = src.get("dlq", {})
    parts.append(
        f"DLQ: {_n(dlq.get('messages', 0), 'message')} ({dlq.get('v1', 0)} v1, "
        f"{dlq.get('raw', 0)} raw S3 notifications), all left on the queue"
    )
    orthanc = src.get("orthanc", {})
    if "skipped" in orthanc:
        parts.append(f"Orthanc: not audited ({orthanc['skipped']})")
    else:
        parts.append(
            f"Orthanc: {_n(orthanc.get('instances', 0), 'instance')}, "
            f"{orthanc.get('indexed', 0)} with an indexed record"
        )
    return "; ".join(parts)


def _lines(report: AuditReport) -> list[tuple[str, str]]:
    """(label, text) lines under the tables; the last one is the verdict."""
    lines = [("sources", _sources_line(report))]
    if report.not_audited:
        total = sum(report.not_audited.values())
        kinds = ", ".join(f"{n} {kind}" for kind, n in report.not_audited.items())
        lines.append(("not audited", f"{_n(total, 'object')} not ending .dcm: {kinds}"))
    if report.rechecked:
        lines.append(("rechecked", f"{_n(report.rechecked, 'key')} that looked wrong, read again"))
    lines.extend(("note", note) for note in report.notes)
    counts = report.counts()
    problems = report.problems()
    if problems:
        problem_classes = ("missing", "orphan_record", "dangling_sidecar")
        what = ", ".join(f"{counts[k]} {k}" for k in problem_classes if counts[k])
        verdict = f"{_n(problems, 'problem')}: {what} (exit 1)"
    else:
        audited = sum(n for k, n in counts.items() if k != "orthanc_not_indexed")
        verdict = f"nothing missing or orphaned: {_n(audited, 'key')} accounted for (exit 0)"
    lines.append(("result", verdict))
    return lines


def render(report: AuditReport, console: Console) -> None:
    """Print the summary: a heading, classes and counts, what disagrees, the lines, a verdict.

    Values come from the data (keys, codes) and are printed as text, never as markup; on a
    pipe the console is wide and nothing wraps (:func:`pipeline.console.summary_console`).
    """
    from rich.table import Table
    from rich.text import Text

    console.print(
        f"dicom-pipeline audit: {report.target}, bucket {report.bucket}, {report.seconds:.1f} s",
        highlight=False,
        markup=False,
    )
    counts = report.counts()
    classes = Table()
    classes.add_column("class", no_wrap=True)
    classes.add_column("meaning", overflow="fold")
    classes.add_column("count", justify="right", no_wrap=True)
    codes = Counter(e.code or "?" for e in report.entries if e.klass == "failed")
    for klass, count in counts.items():
        classes.add_row(Text(klass), MEANINGS[klass], str(count), style="bold")
        if klass == "failed":
            for code, n in sorted(codes.items()):
                classes.add_row("", Text(f"  {code}"), str(n))
    console.print(classes)

    disagree = [e for e in report.entries if e.klass not in ("indexed", "tombstone")]
    if disagree:
        listing = Table(title="what disagrees", title_justify="left")
        listing.add_column("class", no_wrap=True)
        listing.add_column("key", no_wrap=True)
        listing.add_column("detail", overflow="fold")
        for entry in disagree[:LISTED]:
            listing.add_row(Text(entry.klass), Text(entry.key or "-"), Text(_detail(entry)))
        console.print(listing)
        if len(disagree) > LISTED:
            console.print(
                f"… and {len(disagree) - LISTED} more (--json lists them all)",
                highlight=False,
                markup=False,
            )

    from pipeline.console import print_lines

    print_lines(console, _lines(report))
