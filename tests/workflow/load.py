"""A load scenario under injected faults, shared by the workflow test and ``make bench``.

:func:`run_load` starts a local stack in process (moto, the real ASL file, the real handler;
the pipe driven from the calling thread, as in :mod:`harness`) with a
:class:`~pipeline.local.faults.FaultInjector`, uploads ``count`` objects to the image bucket
(which notifies the ingest queue, as on AWS), drains the queue, then, with injection paused,
reads back everything the tests assert on: the table, the DLQ, every execution, and the
audit's report.

The objects are pydicom's bundled files under fresh keys: one in :data:`BROKEN_EVERY` is
broken (a truncated header, a text dump, a file without its UIDs, an Orthanc-compressed
attachment), each broken kind with the code the DLQ message must carry.
"""

from __future__ import annotations

import random
import struct
import time
import uuid
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from harness import start_harness

from pipeline import aws
from pipeline.dicom.samples import pydicom_files_dir
from pipeline.local.faults import FAULT_NAMES, FaultInjector, FaultPlan
from pipeline.local.pipe import ExecutionResult
from pipeline.ops import audit as audit_module

try:  # where the audit reads DLQ_WAIT_SECONDS once it is a package (main, issue 13)
    from pipeline.ops.audit import dlq as audit_dlq  # type: ignore[attr-defined]
except ImportError:
    audit_dlq = audit_module
from pipeline.ops.audit import AuditReport, audit
from pipeline.ops.target import Target
from pipeline.workflow.dlq import DLQ_SCHEMA

__all__ = [
    "BROKEN_EVERY",
    "DEFAULT_RATES",
    "LoadObject",
    "LoadResult",
    "corpus",
    "run_load",
    "scenario_plan",
]

#: Good objects: pydicom's files that index (different modalities and sizes).
GOOD_FILES = ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "rtdose.dcm")
#: One object in this many is broken.
BROKEN_EVERY = 10
#: The rate of each fault in the load scenarios (``all`` injects every one of them at once).
DEFAULT_RATES: dict[str, float] = {
    "lambda-throttle": 0.2,
    "lambda-timeout": 0.05,
    "dynamodb-throttle": 0.1,
    "s3-slowdown": 0.1,
    "duplicate-delivery": 0.1,
}


def _orthanc_compressed(body: bytes) -> bytes:
    """An attachment as Orthanc stores it with StorageCompression on (size, then zlib)."""
    return struct.pack("<Q", len(body)) + zlib.compress(body)


def _broken_kinds() -> list[tuple[bytes, str]]:
    files = pydicom_files_dir()
    return [
        ((files / "rtplan_truncated.dcm").read_bytes(), "TRUNCATED"),
        ((files / "rtplan.dump").read_bytes(), "NOT_DICOM"),
        ((files / "no_meta_group_length.dcm").read_bytes(), "MISSING_REQUIRED_UID"),
        (_orthanc_compressed((files / "CT_small.dcm").read_bytes()), "STORAGE_ENCODED"),
    ]


@dataclass(frozen=True)
class LoadObject:
    """One object of the scenario: its key, its bytes, and its code if it is broken."""

    key: str
    body: bytes
    code: str | None = None


def corpus(count: int, *, seed: int = 0) -> list[LoadObject]:
    """``count`` objects under random (seeded) Orthanc-like keys (``orthanc/<uuid>.dcm``: the
    image bucket notifies the ingest queue of nothing else), one in BROKEN_EVERY broken."""
    rng = random.Random(seed)
    good = [(pydicom_files_dir() / name).read_bytes() for name in GOOD_FILES]
    broken = _broken_kinds()
    objects: list[LoadObject] = []
    for i in range(count):
        key = f"orthanc/{uuid.UUID(int=rng.getrandbits(128), version=4)}.dcm"
        if i % BROKEN_EVERY == BROKEN_EVERY - 1:
            body, code = broken[(i // BROKEN_EVERY) % len(broken)]
            objects.append(LoadObject(key, body, code))
        else:
            objects.append(LoadObject(key, good[i % len(good)]))
    return objects


def scenario_plan(name: str, rates: dict[str, float] | None = None) -> FaultPlan:
    """The plan of a scenario: ``none``, one fault's name, or ``all``."""
    rates = DEFAULT_RATES if rates is None else rates
    if name == "none":
        return FaultPlan({})
    if name == "all":
        return FaultPlan({fault: rates[fault] for fault in FAULT_NAMES})
    return FaultPlan({name: rates[name]})


@dataclass
class LoadResult:
    """What a load scenario left behind, read with injection paused."""

    plan: FaultPlan
    objects: list[LoadObject]
    #: Seconds from the first upload until the queue drained.
    seconds: float
    executions: list[ExecutionResult]
    #: s3_key → status of every item in the table.
    statuses: dict[str, str]
    #: Every DLQ message body (taken off the queue).
    dlq: list[dict[str, Any]]
    report: AuditReport
    injected: Counter[str]
    #: Execution name → its emulated duration (real time plus charged time), seconds.
    emulated: dict[str, float] = field(default_factory=dict)

    @property
    def good(self) -> set[str]:
        return {o.key for o in self.objects if o.code is None}

    @property
    def broken(self) -> dict[str, str]:
        return {o.key: o.code for o in self.objects if o.code is not None}

    @property
    def failed_executions(self) -> list[ExecutionResult]:
        return [e for e in self.executions if e.status != "SUCCEEDED"]

    @property
    def raw_notifications(self) -> list[dict[str, Any]]:
        """DLQ messages that are not v1 messages (raw S3 notifications of the queue's redrive)."""
        return [m for m in self.dlq if m.get("schema") != DLQ_SCHEMA]

    @property
    def coded_failures(self) -> Counter[tuple[str, str]]:
        """(key, code) of every v1 DLQ message, counted."""
        return Counter(
            (m["s3"]["key"], m["error"]["code"]) for m in self.dlq if m.get("schema") == DLQ_SCHEMA
        )

    @property
    def not_indexed(self) -> set[str]:
        """Good objects the table does not hold as indexed."""
        return {k for k in self.good if self.statuses.get(k) != "indexed"}

    @property
    def lost(self) -> int:
        """Objects with no outcome: good ones not indexed, broken ones with no v1 DLQ message."""
        reported = {key for key, _ in self.coded_failures}
        return len(self.not_indexed) + len(set(self.broken) - reported)

    @property
    def duplicated(self) -> int:
        """DLQ messages beyond the one each failure should have."""
        return sum(n - 1 for n in self.coded_failures.values() if n > 1)

    @property
    def objects_per_second(self) -> float:
        return len(self.objects) / self.seconds if self.seconds else 0.0


def _target(stack: Any) -> Target:
    info = stack.info
    return Target(
        bucket=info.bucket,
        queue_url=info.queue_url,
        dlq_url=info.dlq_url,
        table=info.table,
        ledger_table=info.ledger_table,
        region=info.region,
    )


def run_load(
    plan: FaultPlan,
    count: int,
    *,
    seed: int = 0,
    timeout: float | None = None,
) -> LoadResult:
    """Run ``count`` objects through a fresh local stack under ``plan``; see the module doc.

    The drain's timeout defaults to a generous 2 s per object (at least 5 minutes): a slow
    machine makes the run slow, not wrong.
    """
    injector = FaultInjector(plan, seed=seed)
    objects = corpus(count, seed=seed)
    # The handler's per-batch log lines and metrics are not what this measures.
    quiet = {"POWERTOOLS_LOG_LEVEL": "WARNING", "POWERTOOLS_METRICS_DISABLED": "true"}
    stack, harness = start_harness(faults=injector, lambda_env=quiet)
    saved_wait = audit_dlq.DLQ_WAIT_SECONDS
    # moto in process really waits out the audit's last long poll of the DLQ: make it 0 s.
    audit_dlq.DLQ_WAIT_SECONDS = 0
    try:
        started = time.monotonic()
        s3 = aws.client("s3")
        for obj in objects:
            s3.put_object(Bucket=harness.bucket, Key=obj.key, Body=obj.body)
        harness.drain(timeout=timeout if timeout is not None else max(300.0, 2.0 * count))
        seconds = time.monotonic() - started
        with injector.paused():
            report = audit(_target(stack))
            statuses = {k: str(item.get("status")) for k, item in harness.items().items()}
            dlq = harness.dlq()
        return LoadResult(
            plan=plan,
            objects=objects,
            seconds=seconds,
            executions=list(harness.executions),
            statuses=statuses,
            dlq=dlq,
            report=report,
            injected=Counter(injector.injected),
            emulated=dict(injector.durations),
        )
    finally:
        audit_dlq.DLQ_WAIT_SECONDS = saved_wait
        stack.stop()
