"""``dicom-pipeline demo``: the local stack end to end over a sample set, then a summary.

Progress goes to stderr (a live bar on a terminal, a few plain lines otherwise); the summary
goes to stdout and never wraps a value when stdout is not a terminal. The summary ends with
one line that says whether every record is accounted for, and the exit status agrees with it.
"""

from __future__ import annotations

import json
import statistics
import struct
import sys
import time
import uuid
import warnings
import zlib
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from pipeline import aws
from pipeline.console import is_tty, plural, print_lines, summary_console
from pipeline.dicom.samples import sample_files
from pipeline.local.stack import LocalStack
from pipeline.names import ORTHANC_ROOT_PATH
from pipeline.orthanc.storage import DICOM, object_key

if TYPE_CHECKING:
    from rich.console import Console

__all__ = [
    "FINAL_OUTCOMES",
    "QUIET_HANDLER",
    "Progress",
    "Seeded",
    "Summary",
    "orthanc_like_key",
    "render",
    "run_demo",
    "seed",
    "start_stack",
    "summarize",
    "summary_console",
    "wait_for_drain",
]

_NAMESPACE = uuid.UUID("6f1c1d0e-3c0b-4a57-9d2a-6b4d8f3b1a20")

#: The outcomes a record ends in (DESIGN.md), in the order the summary shows them. Any other
#: outcome the workflow reports (a record handed back to the queue, say) is an attempt: the
#: record comes back and ends in one of these later.
FINAL_OUTCOMES = ("indexed", "deleted", "skipped", "failed")
#: Outcomes that write the record's table item.
_WRITES = ("indexed", "deleted")


def orthanc_like_key(name: str) -> str:
    """A stable ``orthanc/<uuid>.dcm`` key for a sample, as the S3 plugin's flat layout
    names a DICOM file under Orthanc's prefix (the only keys the bucket notifies of).

    Examples
    --------
    >>> orthanc_like_key("CT_small.dcm").startswith("orthanc/")
    True
    """
    return object_key(str(uuid.uuid5(_NAMESPACE, name)), DICOM, ORTHANC_ROOT_PATH)


def _ms_between(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    try:
        a = datetime.fromisoformat(start.replace("Z", "+00:00"))
        b = datetime.fromisoformat(end.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (b - a).total_seconds() * 1000


@dataclass
class Summary:
    """What happened to every record the pipe delivered, and where it shows.

    ``events`` is what the demo caused (S3 event records by kind, e.g. ``{"upload": 196,
    "overwrite": 1, "delete": 1, "S3 test event": 1}``); the rest is read back from the
    workflow's outputs, the table and the DLQ.
    """

    outcomes: Counter[str] = field(default_factory=Counter)
    failed_by_code: Counter[str] = field(default_factory=Counter)
    skipped_by_reason: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    executions: int = 0
    failed_executions: int = 0
    dlq_messages: int = 0
    table_items: Counter[str] = field(default_factory=Counter)
    events: dict[str, int] = field(default_factory=dict)
    #: Per key the workflow wrote, the outcomes of its writes in order.
    writes_by_key: dict[str, list[str]] = field(default_factory=dict)
    #: Instances Orthanc holds, and those of them an indexed record names (None: no Orthanc).
    orthanc_instances: int | None = None
    orthanc_indexed: int | None = None

    # -- derived counts ----------------------------------------------------------------------
    @property
    def expected(self) -> int:
        """Records the demo's events should deliver."""
        return sum(self.events.values())

    @property
    def final(self) -> int:
        """Records that ended in one of DESIGN.md's four outcomes."""
        return sum(self.outcomes.get(o, 0) for o in FINAL_OUTCOMES)

    @property
    def attempts(self) -> Counter[str]:
        """Outcomes that are not final (the record came back), by name."""
        return Counter({o: n for o, n in self.outcomes.items() if o not in FINAL_OUTCOMES and n})

    @property
    def writes(self) -> int:
        """Table writes the workflow reported (indexed and deleted records)."""
        return sum(len(w) for w in self.writes_by_key.values())

    @property
    def table_expected(self) -> Counter[str]:
        """The table the writes leave: one item per key, with its last write's status."""
        return Counter(w[-1] for w in self.writes_by_key.values() if w)

    @property
    def rewritten(self) -> Counter[str]:
        """Keys written more than once, by their sequence of writes (``indexed → deleted``)."""
        return Counter(" → ".join(w) for w in self.writes_by_key.values() if len(w) > 1)

    def problems(self) -> list[str]:
        """Why not every record is accounted for; empty when every one is."""
        out = []
        if self.events and self.final != self.expected:
            out.append(f"{self.final} records ended, {self.expected} expected")
        if self.failed_executions:
            out.append(f"{plural(self.failed_executions, 'workflow execution')} failed")
        if +self.table_items != +self.table_expected:
            out.append(
                f"the table holds {_statuses(self.table_items)}, "
                f"the writes leave {_statuses(self.table_expected)}"
            )
        failed = self.outcomes.get("failed", 0)
        if self.dlq_messages != failed:
            out.append(f"the DLQ holds {self.dlq_messages} messages for {failed} failed records")
        if self.orthanc_instances is not None and self.orthanc_indexed != self.orthanc_instances:
            out.append(
                f"Orthanc holds {plural(self.orthanc_instances, 'instance')}, "
                f"{self.orthanc_indexed} of them indexed"
            )
        if self.failed_by_code.get("INTERNAL"):
            # accounted for, but "a bug in us": no sample may produce it
            out.append(f"{plural(self.failed_by_code['INTERNAL'], 'record')} failed with INTERNAL")
        return out

    def as_dict(self) -> dict[str, Any]:
        """A JSON-able view (``.local/demo-summary.json``)."""
        lat = sorted(self.latencies_ms)
        return {
            "outcomes": dict(self.outcomes),
            "failed_by_code": dict(self.failed_by_code),
            "skipped_by_reason": dict(self.skipped_by_reason),
            "executions": self.executions,
            "failed_executions": self.failed_executions,
            "dlq_messages": self.dlq_messages,
            "table_items": dict(self.table_items),
            "orthanc": (
                None
                if self.orthanc_instances is None
                else {"instances": self.orthanc_instances, "indexed": self.orthanc_indexed}
            ),
            "events": dict(self.events),
            "expected_records": self.expected,
            "final_records": self.final,
            "table_writes": self.writes,
            "table_expected": dict(self.table_expected),
            "rewritten_keys": dict(self.rewritten),
            "accounted_for": not self.problems(),
            "problems": self.problems(),
            "latency_ms": {
                "p50": round(statistics.median(lat), 1) if lat else None,
                "p95": round(lat[int(0.95 * (len(lat) - 1))], 1) if lat else None,
                "max": round(lat[-1], 1) if lat else None,
            },
        }


def _order(name: str) -> tuple[int, str]:
    """DESIGN.md's outcomes first, in their order; anything else after, by name."""
    return (
        (FINAL_OUTCOMES.index(name), "") if name in FINAL_OUTCOMES else (len(FINAL_OUTCOMES), name)
    )


def _statuses(counts: Counter[str]) -> str:
    """``162 items (161 indexed, 1 deleted)``."""
    total = sum(counts.values())
    parts = ", ".join(f"{counts[s]} {s}" for s in sorted(counts, key=_order) if counts[s])
    return f"{plural(total, 'item')} ({parts})" if parts else plural(total, "item")


def summarize(stack: LocalStack, events: dict[str, int] | None = None) -> Summary:
    """Summarize workflow outputs, the table and the DLQ of a drained stack.

    Parameters
    ----------
    stack:
        A started, drained stack.
    events:
        The S3 event records the caller caused, by kind (what ``Summary.expected`` counts).
    """
    assert stack.pipe is not None and stack.info is not None
    summary = Summary(events=dict(events or {}))
    # The pipe runs one execution at a time, so results are in the order they were written.
    for execution in list(stack.pipe.results):
        summary.executions += 1
        if execution.status != "SUCCEEDED":
            summary.failed_executions += 1
            continue
        for result in (execution.output or {}).get("results", []):
            outcome = result.get("outcome", "?")
            summary.outcomes[outcome] += 1
            if outcome == "failed":
                summary.failed_by_code[result.get("code", "?")] += 1
            elif outcome == "skipped":
                summary.skipped_by_reason[result.get("reason", "?")] += 1
            if outcome in _WRITES and result.get("key"):
                summary.writes_by_key.setdefault(result["key"], []).append(outcome)
    ddb = aws.client("dynamodb")
    pages = ddb.get_paginator("scan").paginate(
        TableName=stack.info.table,
        ProjectionExpression="#s, event_time, indexed_at",
        ExpressionAttributeNames={"#s": "status"},
    )
    for page in pages:
        for item in page["Items"]:
            summary.table_items[item["status"]["S"]] += 1
            ms = _ms_between(
                item.get("event_time", {}).get("S"), item.get("indexed_at", {}).get("S")
            )
            if ms is not None:
                summary.latencies_ms.append(ms)
    attrs = aws.client("sqs").get_queue_attributes(
        QueueUrl=stack.info.dlq_url, AttributeNames=["ApproximateNumberOfMessages"]
    )["Attributes"]
    summary.dlq_messages = int(attrs["ApproximateNumberOfMessages"])
    return summary


# -- output ------------------------------------------------------------------------------------
def _detail_rows(summary: Summary, outcome: str) -> list[tuple[str, int]]:
    details = {"failed": summary.failed_by_code, "skipped": summary.skipped_by_reason}
    return sorted(details.get(outcome, Counter()).items())


def _summary_lines(summary: Summary) -> list[tuple[str, str]]:
    """(label, text) lines under the table; the last one is the verdict."""
    lines: list[tuple[str, str]] = []
    if summary.events:
        caused = " + ".join(plural(n, kind) for kind, n in summary.events.items() if n)
        lines.append(("events", f"{summary.expected} S3 event records expected: {caused}"))
    attempts = summary.attempts
    if attempts:
        again = ", ".join(f"{n} {o}" for o, n in sorted(attempts.items()))
        lines.append(("attempts", f"{again}: handed back to the queue, delivered again later"))
    runs = f"{summary.executions} workflow executions, {summary.failed_executions} failed"
    if summary.failed_executions:
        runs += " (their batches went back to the queue)"
    lines.append(("executions", runs))

    table = _statuses(summary.table_items)
    if +summary.table_items == +summary.table_expected:
        keys = len(summary.writes_by_key)
        writes = plural(summary.writes, "write")
        table += f": one per key written; {writes} to {plural(keys, 'key')}"
        rewritten = summary.rewritten
        if rewritten:
            seqs = ", ".join(f"{plural(n, 'key')} {seq}" for seq, n in sorted(rewritten.items()))
            table += f" ({seqs})"
    else:
        table += f", but the writes leave {_statuses(summary.table_expected)}"
    lines.append(("table", table))

    failed = summary.outcomes.get("failed", 0)
    dlq = plural(summary.dlq_messages, "message")
    if summary.dlq_messages == failed:
        dlq += ": one per failed record"
    else:
        dlq += f" for {plural(failed, 'failed record')}"
    lines.append(("DLQ", dlq))
    if summary.orthanc_instances is not None:
        same = "=" if summary.orthanc_indexed == summary.orthanc_instances else "≠"
        lines.append(
            (
                "Orthanc",
                f"{plural(summary.orthanc_instances, 'instance')} in Orthanc {same} "
                f"{summary.orthanc_indexed} indexed records of Orthanc's keys",
            )
        )

    lat = summary.as_dict()["latency_ms"]
    if lat["p50"] is not None:
        lines.append(
            (
                "latency",
                f"S3 event → table item: p50 {lat['p50']:.0f} ms, p95 {lat['p95']:.0f} ms, "
                f"max {lat['max']:.0f} ms",
            )
        )
    ended = " + ".join(f"{summary.outcomes.get(o, 0)} {o}" for o in FINAL_OUTCOMES)
    problems = summary.problems()
    if problems:
        verdict = f"NOT every record is accounted for: {'; '.join(problems)} (exit 1)"
    else:
        verdict = f"all {summary.final} records accounted for: {ended} (exit 0)"
    lines.append(("result", verdict))
    return lines


def render(
    summary: Summary, uploaded: int | str, seconds: float, console: Console | None = None
) -> None:
    """Print the summary: a heading, the outcome table, the reconciliation, the verdict.

    ``uploaded`` is what went in: a count of objects, or the words that say it (the demo's:
    ``194 files sent to Orthanc (160 stored), 36 objects put into S3``). On a terminal the
    lines wrap under their text; anywhere else each is one line.
    """
    from rich.table import Table
    from rich.text import Text

    console = console or summary_console()
    went_in = uploaded if isinstance(uploaded, str) else f"{plural(uploaded, 'object')} uploaded"
    heading = f"dicom-pipeline demo: {went_in}, {seconds:.1f} s"
    console.print(heading, highlight=False)
    table = Table()
    outcomes = [*FINAL_OUTCOMES, *sorted(summary.attempts)]
    # Only a detail too long for the terminal folds; a pipe is wide enough for any.
    table.add_column("outcome", no_wrap=True, min_width=max(map(len, outcomes)))
    table.add_column("detail", overflow="fold")
    table.add_column("records", justify="right", no_wrap=True, min_width=len("records"))
    for outcome in outcomes:
        # Text, not markup: outcomes, codes and reasons come from the workflow's data.
        table.add_row(Text(outcome), "", str(summary.outcomes.get(outcome, 0)), style="bold")
        for detail, k in _detail_rows(summary, outcome):
            table.add_row("", Text(detail), str(k))
    console.print(table)
    lines = _summary_lines(summary)
    print_lines(console, lines)


# -- progress ----------------------------------------------------------------------------------
class Progress:
    """Progress on stderr: a live bar on a terminal, a plain line every few seconds otherwise."""

    def __init__(self, file: IO[str] | None = None, every: float = 5.0) -> None:
        self.file = file or sys.stderr
        self.live = is_tty(self.file)
        self.every = every
        self._bar: Any = None
        self._task: Any = None
        self._last = 0.0
        self._total: int | None = None

    @contextmanager
    def phase(self, text: str, total: int | None) -> Iterator[None]:
        started = time.monotonic()
        self._total = total
        if self.live:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(bar_width=30),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[note]}"),
                console=Console(file=self.file),
                transient=True,
            )
            self._task = self._bar.add_task(text, total=total, note="")
            self._bar.start()
        else:
            self.say(f"{text} …")
            self._last = started
        try:
            yield
        finally:
            if self._bar is not None:
                self._bar.stop()
                self._bar = None
            self.say(f"{text}: done in {time.monotonic() - started:.1f} s")

    def update(self, completed: int, note: str = "") -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=completed, note=note)
        elif time.monotonic() - self._last >= self.every:
            self._last = time.monotonic()
            of = f" of {self._total}" if self._total is not None else ""
            self.say(f"  … {completed}{of} done" + (f", {note}" if note else ""))

    def say(self, text: str) -> None:
        self.file.write(text + "\n")
        self.file.flush()


def _records_done(stack: LocalStack) -> tuple[int, int]:
    """(records in the workflow outputs so far, executions so far)."""
    assert stack.pipe is not None
    runs = list(stack.pipe.results)
    done = sum(len((r.output or {}).get("results", [])) for r in runs)
    return done, len(runs)


def wait_for_drain(stack: LocalStack, progress: Progress, expected: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        depth = stack.queue_depth()
        done, runs = _records_done(stack)
        progress.update(done, f"{depth} messages queued, {plural(runs, 'execution')}")
        if depth == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    # The last batch may still be running: drain waits until the queue stays empty and idle.
    stack.drain(timeout=max(1.0, deadline - time.monotonic()))
    done, runs = _records_done(stack)
    progress.update(done, f"0 messages queued, {plural(runs, 'execution')}")


def _orthanc_reconcile(stack: LocalStack, summary: Summary, direct_keys: set[str]) -> None:
    """Orthanc's instances against the indexed records of the keys Orthanc wrote."""
    import requests

    info = stack.info
    assert info is not None and info.orthanc_url is not None
    auth = (info.orthanc_username or "", info.orthanc_password or "")
    resp = requests.get(f"{info.orthanc_url}/instances", auth=auth, timeout=30)
    resp.raise_for_status()
    instances = set(resp.json())
    indexed: set[str] = set()
    pages = (
        aws.client("dynamodb")
        .get_paginator("scan")
        .paginate(
            TableName=info.table,
            ProjectionExpression="s3_key, #s, orthanc_instance_id",
            ExpressionAttributeNames={"#s": "status"},
        )
    )
    for page in pages:
        for item in page["Items"]:
            if item["status"]["S"] != "indexed" or item["s3_key"]["S"] in direct_keys:
                continue
            indexed.add(item.get("orthanc_instance_id", {}).get("S", ""))
    summary.orthanc_instances = len(instances)
    summary.orthanc_indexed = len(instances & indexed)


def _delete_in_orthanc(stack: LocalStack, instance_id: str) -> None:
    import requests

    info = stack.info
    assert info is not None and info.orthanc_url is not None
    auth = (info.orthanc_username or "", info.orthanc_password or "")
    requests.delete(
        f"{info.orthanc_url}/instances/{instance_id}", auth=auth, timeout=30
    ).raise_for_status()


def _instance_id(path: Path) -> str:
    import pydicom

    from pipeline.orthanc.identifiers import orthanc_instance_id

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's notes on odd files: not the user's business
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    return orthanc_instance_id(
        str(ds.get("PatientID", "")).strip(),
        str(ds.StudyInstanceUID).strip(),
        str(ds.SeriesInstanceUID).strip(),
        str(ds.SOPInstanceUID).strip(),
    )


def _direct_objects(files: list[Path], stored: set[Path]) -> list[tuple[str, str, bytes]]:
    """What Orthanc did not take, and objects only a storage layer makes (an
    Orthanc-compressed attachment, an empty object): put straight into S3 under Orthanc-like
    keys, they show the DLQ and the skips."""
    direct = [(f.name, orthanc_like_key(str(f)), f.read_bytes()) for f in files if f not in stored]
    ct = next((f for f in files if f.name == "CT_small.dcm"), files[0])
    raw = ct.read_bytes()
    compressed = struct.pack("<Q", len(raw)) + zlib.compress(raw)
    direct.append(("orthanc-compressed CT_small", orthanc_like_key("compressed"), compressed))
    direct.append(("empty object", orthanc_like_key("empty"), b""))
    return direct


def _correct_and_delete(stack: LocalStack, client: Any, sent: list[Path]) -> None:
    """Correct one instance as an administrator does (Orthanc never replaces a stored
    instance: delete it through the REST API, then send it again: a tombstone and a new
    record) and delete another (a tombstone)."""
    from pipeline.orthanc.send import send

    if not sent:
        return
    again = next((f for f in sent if f.name == "CT_small.dcm"), sent[0])
    _delete_in_orthanc(stack, _instance_id(again))
    send([again], client)
    others = [f for f in sent if f != again]
    gone = next((f for f in others if f.name == "MR_small.dcm"), others[0] if others else None)
    if gone is not None:
        _delete_in_orthanc(stack, _instance_id(gone))


def start_stack(progress: Progress, orthanc: bool, lambda_env: dict[str, str]) -> LocalStack:
    """The local stack, with Orthanc when asked for and installed; without it otherwise.

    Orthanc's Debian packages (or ``python3-venv`` for its plugin's environment) missing is
    not an error: the demo says so in one line and sends the sample set straight into S3.
    """
    from pipeline.orthanc.local import OrthancNotInstalled

    if orthanc:
        progress.say(
            "starting the local stack (moto on 127.0.0.1, the workflow, the parse handler, Orthanc)"
        )
        stack = LocalStack(server=True, lambda_env=lambda_env, orthanc=True)
        try:
            stack.start()
            return stack
        except OrthancNotInstalled as exc:
            progress.say(f"running without Orthanc: {exc}; the sample set goes straight into S3")
    else:
        progress.say("starting the local stack without Orthanc (--no-orthanc)")
    stack = LocalStack(server=True, lambda_env=lambda_env, orthanc=False)
    stack.start()
    return stack


def _overwrite_and_delete(stack: LocalStack, direct: list[tuple[str, str, bytes]]) -> None:
    """Without Orthanc: overwrite one object and delete another in S3 (what a re-sent and a
    deleted instance do to Orthanc's files)."""
    good = [(name, key, body) for name, key, body in direct if name.endswith(".dcm") and body]
    if not good:
        return
    again = next((d for d in good if d[0] == "CT_small.dcm"), good[0])
    stack.upload(again[1], again[2])
    gone = next((d for d in good if d[0] == "MR_small.dcm" and d is not again), None)
    gone = gone or next((d for d in good if d is not again), None)
    if gone is not None:
        stack.delete(gone[1])


def _send_through_orthanc(files: list[Path], client: Any, progress: Progress) -> dict[Path, str]:
    """STOW-RS every file to Orthanc; returns the stored ones with their SOP Instance UIDs."""
    from pipeline.orthanc.send import send

    stored: dict[Path, str] = {}
    with progress.phase(
        f"sending {plural(len(files), 'file')} through Orthanc (STOW-RS)", total=len(files)
    ):
        done = 0

        def sent(result: Any) -> None:
            nonlocal done
            done += 1
            if result.status == "stored":
                stored[Path(result.path)] = result.sop_instance_uid
            progress.update(done)

        send(files, client, on_result=sent)
    return stored


#: The parse handler's environment for people watching a terminal: warnings only, no metrics.
QUIET_HANDLER = {"POWERTOOLS_LOG_LEVEL": "WARNING", "POWERTOOLS_METRICS_DISABLED": "true"}


@dataclass
class Seeded:
    """What :func:`seed` put into the stack."""

    files: list[Path]
    #: Files Orthanc stored (with their SOP Instance UIDs); empty without Orthanc.
    stored: dict[Path, str]
    #: (name, key, body) of the objects put straight into S3.
    direct: list[tuple[str, str, bytes]]
    through_orthanc: bool

    def describe(self) -> str:
        """What went in, as the demo's heading says it."""
        went_in = f"{plural(len(self.direct), 'object')} put into S3"
        if self.through_orthanc:
            sent = plural(len(self.files), "file")
            return f"{sent} sent to Orthanc ({len(self.stored)} stored), {went_in}"
        return went_in


def seed(stack: LocalStack, files: list[Path], progress: Progress) -> Seeded:
    """Put the sample set into a running local stack as the demo does: through its Orthanc
    (STOW-RS) when it has one, what Orthanc refuses and a few storage-layer objects (an
    Orthanc-compressed attachment, an empty object) straight into S3, then one overwrite and
    one delete (through Orthanc's REST API, or in S3 without Orthanc). Does not wait."""
    from pipeline.orthanc.send import make_client

    info = stack.info
    assert info is not None
    client = None
    stored: dict[Path, str] = {}
    if info.dicomweb_url is not None:
        client = make_client(info.dicomweb_url, info.orthanc_username, info.orthanc_password)
        stored = _send_through_orthanc(files, client, progress)
    direct = _direct_objects(files, set(stored))
    with progress.phase(f"putting {plural(len(direct), 'object')} into S3", total=len(direct)):
        for done_direct, (_, key, body) in enumerate(direct, 1):
            stack.upload(key, body)
            progress.update(done_direct)
    if client is not None:
        _correct_and_delete(stack, client, sorted(stored))
    else:
        _overwrite_and_delete(stack, direct)
    return Seeded(files, stored, direct, client is not None)


def run_demo(
    *, limit: int | None = None, json_out: Path | None = None, orthanc: bool = True
) -> int:
    """Start the stack with Orthanc, send the samples through it (STOW-RS), put what it
    refuses and a few storage-layer objects straight into S3, correct one instance (a delete
    and a send) and delete one through Orthanc's REST API, drain, summarize.

    Without Orthanc (``orthanc=False``, or its packages are not installed) every sample goes
    straight into S3 under an Orthanc-like key, and one object is overwritten and another
    deleted in S3 instead.

    Returns
    -------
    int
        0 when every record is accounted for: each S3 event record the demo caused ended
        indexed, deleted, skipped or failed, no workflow execution failed, the table holds what
        the writes leave, the DLQ one message per failed record, and every instance in Orthanc
        has its indexed record; 1 otherwise.
    """
    started = time.monotonic()
    files = sample_files(include_charsets=True)
    if limit is not None:
        files = files[:limit]
    progress = Progress()
    stack = start_stack(progress, orthanc, QUIET_HANDLER)
    try:
        seeded = seed(stack, files, progress)
        events = Counter(
            "S3 test event" if name == "s3:TestEvent" else name.split(":")[0]
            for name in list(stack.notifications)
        )
        expected = sum(events.values())
        try:
            with progress.phase(f"indexing {expected} records", total=expected):
                wait_for_drain(stack, progress, expected, timeout=300)
        except TimeoutError as exc:
            progress.say(f"{exc}; summarizing what is there")
        summary = summarize(stack, dict(sorted(events.items())))
        if seeded.through_orthanc:
            _orthanc_reconcile(stack, summary, {key for _, key, _ in seeded.direct})
    finally:
        stack.stop()
    elapsed = time.monotonic() - started
    render(summary, seeded.describe(), elapsed)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(summary.as_dict(), indent=2) + "\n", encoding="utf-8")
    return 0 if not summary.problems() else 1
