"""``dicom-pipeline demo``: the local stack end to end over a sample set, then a summary."""

from __future__ import annotations

import json
import statistics
import struct
import time
import uuid
import zlib
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from pipeline import aws
from pipeline.dicom.samples import sample_files
from pipeline.local.stack import LocalStack

__all__ = ["Summary", "orthanc_like_key", "run_demo", "sample_objects", "summarize"]

_NAMESPACE = uuid.UUID("6f1c1d0e-3c0b-4a57-9d2a-6b4d8f3b1a20")


def orthanc_like_key(name: str) -> str:
    """A stable ``<uuid>.dcm`` key for a sample, like the S3 plugin's flat layout."""
    return f"{uuid.uuid5(_NAMESPACE, name)}.dcm"


def sample_objects(limit: int | None = None) -> list[tuple[str, str, bytes]]:
    """(label, key, body) of the demo's uploads: pydicom's files, good and bad, and a few
    objects that only a storage layer makes (an Orthanc-compressed attachment, an empty one).
    """
    files = sample_files(include_charsets=True)
    if limit is not None:
        files = files[:limit]
    objects = [(f.name, orthanc_like_key(str(f)), f.read_bytes()) for f in files]
    ct = next((f for f in files if f.name == "CT_small.dcm"), files[0])
    raw = ct.read_bytes()
    compressed = struct.pack("<Q", len(raw)) + zlib.compress(raw)
    objects.append(("orthanc-compressed CT_small", orthanc_like_key("compressed"), compressed))
    objects.append(("empty object", orthanc_like_key("empty"), b""))
    return objects


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
    """What happened to every record the pipe delivered."""

    outcomes: Counter[str] = field(default_factory=Counter)
    failed_by_code: Counter[str] = field(default_factory=Counter)
    skipped_by_reason: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    executions: int = 0
    failed_executions: int = 0
    dlq_messages: int = 0
    table_items: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-able view."""
        lat = sorted(self.latencies_ms)
        return {
            "outcomes": dict(self.outcomes),
            "failed_by_code": dict(self.failed_by_code),
            "skipped_by_reason": dict(self.skipped_by_reason),
            "executions": self.executions,
            "failed_executions": self.failed_executions,
            "dlq_messages": self.dlq_messages,
            "table_items": dict(self.table_items),
            "latency_ms": {
                "p50": round(statistics.median(lat), 1) if lat else None,
                "p95": round(lat[int(0.95 * (len(lat) - 1))], 1) if lat else None,
                "max": round(lat[-1], 1) if lat else None,
            },
        }


def summarize(stack: LocalStack) -> Summary:
    """Summarize workflow outputs, the table and the DLQ of a drained stack."""
    assert stack.pipe is not None and stack.info is not None
    summary = Summary()
    for execution in stack.pipe.results:
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


def render(summary: Summary, uploaded: int, seconds: float) -> None:
    """Print the summary as tables (rich)."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    data = summary.as_dict()
    table = Table(title=f"dicom-pipeline demo: {uploaded} objects in {seconds:.1f} s")
    table.add_column("outcome")
    table.add_column("detail")
    table.add_column("records", justify="right")
    for outcome in ("indexed", "deleted", "skipped", "failed"):
        n = summary.outcomes.get(outcome, 0)
        if outcome == "failed":
            table.add_row(outcome, "", str(n), style="bold")
            for code, k in sorted(summary.failed_by_code.items()):
                table.add_row("", code, str(k))
        elif outcome == "skipped":
            table.add_row(outcome, "", str(n), style="bold")
            for reason, k in sorted(summary.skipped_by_reason.items()):
                table.add_row("", reason, str(k))
        else:
            table.add_row(outcome, "", str(n), style="bold")
    console.print(table)
    lat = data["latency_ms"]
    console.print(
        f"latency per record (S3 event → table): p50 {lat['p50']} ms, p95 {lat['p95']} ms, "
        f"max {lat['max']} ms · {summary.executions} workflow executions "
        f"({summary.failed_executions} failed) · DLQ holds {summary.dlq_messages} messages · "
        f"table: {dict(summary.table_items)}"
    )


def run_demo(*, limit: int | None = None, json_out: Path | None = None) -> int:
    """Start the stack, ingest the samples, overwrite and delete one, drain, summarize.

    Returns
    -------
    int
        0 when every uploaded object ended indexed, skipped or in the DLQ with a code.
    """
    started = time.monotonic()
    objects = sample_objects(limit)
    quiet = {"POWERTOOLS_LOG_LEVEL": "WARNING", "POWERTOOLS_METRICS_DISABLED": "true"}
    with LocalStack(server=True, lambda_env=quiet) as stack:
        for _, key, body in objects:
            stack.upload(key, body)
        # An overwrite and a delete, as Orthanc does when an instance is replaced or removed.
        first_key, first_body = objects[0][1], objects[0][2]
        stack.upload(first_key, first_body)
        stack.delete(objects[1][1])
        stack.drain(timeout=300)
        summary = summarize(stack)
    elapsed = time.monotonic() - started
    render(summary, len(objects), elapsed)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(summary.as_dict(), indent=2) + "\n", encoding="utf-8")
    accounted = sum(summary.outcomes.values())
    delivered = len(objects) + 2 + 1  # uploads, overwrite, delete, S3's test event
    return 0 if accounted == delivered and summary.failed_executions == 0 else 1
