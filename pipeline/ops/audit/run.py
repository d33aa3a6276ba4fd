"""The audit itself: read the sources concurrently, merge, classify, read suspects again.

:func:`audit` runs one job per source (:mod:`~pipeline.ops.audit.bucket`,
:mod:`~pipeline.ops.audit.table`, :mod:`~pipeline.ops.audit.dlq`,
:mod:`~pipeline.ops.audit.orthanc`), merges what they read into one
:class:`~pipeline.ops.audit.classify.State`, classifies every key, reads the keys that look
wrong again with point reads (at most :data:`RECHECK_LIMIT`), checks the sidecars of indexed
records, adds Orthanc's instances that no record names, and returns the
:class:`~pipeline.ops.audit.report.AuditReport`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from pipeline import aws
from pipeline.console import plural
from pipeline.names import ORTHANC_PREFIX
from pipeline.ops.audit.bucket import head_object, list_bucket, read_inventory
from pipeline.ops.audit.classify import State
from pipeline.ops.audit.dlq import DlqPeek, peek_dlq
from pipeline.ops.audit.orthanc import instance_keys, instances_or_reason, orthanc_target
from pipeline.ops.audit.progress import Phase, Phases
from pipeline.ops.audit.report import CLASSES, AuditEntry, AuditError, AuditReport, Progress
from pipeline.ops.audit.sources import (
    POINT_READERS,
    S3_URI,
    BucketObject,
    Failure,
    TableRecord,
    error_code,
    iso_time,
)
from pipeline.ops.audit.table import (
    TABLE_SEGMENTS,
    get_record,
    query_ledger,
    read_ledger,
    scan_table,
)

if TYPE_CHECKING:
    from pipeline.ops.target import Target

__all__ = ["RECHECK_LIMIT", "audit"]

#: At most this many keys are read again with point reads; beyond it, a note says so.
RECHECK_LIMIT = 10_000
#: Classes whose keys are read again before they are reported.
_SUSPECT_CLASSES = ("stale", "missing", "orphan_record")


def _guarded(what: str, job: Callable[[], Any]) -> Callable[[], Any]:
    """``job``, with an AWS error turned into one AuditError line naming ``what``."""

    def run() -> Any:
        try:
            return job()
        except (ClientError, BotoCoreError) as exc:
            raise AuditError(f"cannot read {what}: {error_code(exc)}") from None

    return run


def _recheck(target: Target, keys: list[str], state: State, phase: Phase) -> None:
    """Read ``keys`` again, one at a time (S3 HEAD, consistent GetItem, the ledger's entries)."""
    s3, ddb = aws.client("s3"), aws.client("dynamodb")

    def read(
        key: str,
    ) -> tuple[str, BucketObject | None, TableRecord | None, list[Failure] | None]:
        obj = head_object(s3, target.bucket, key)
        record = get_record(ddb, target.table, key)
        ledger: list[Failure] | None = None
        if target.ledger_table:
            ledger = query_ledger(ddb, target.ledger_table, key)
        phase.add(1)
        return key, obj, record, ledger

    with ThreadPoolExecutor(max_workers=POINT_READERS, thread_name_prefix="audit-recheck") as pool:
        for key, obj, record, ledger in pool.map(read, keys):
            if obj is None:
                state.objects.pop(key, None)
            else:
                state.objects[key] = obj
            if record is None:
                state.records.pop(key, None)
            else:
                state.records[key] = record
            if ledger is not None:
                state.ledger[key] = ledger


def _in_flight(queue_url: str) -> int | None:
    try:
        attrs = aws.client("sqs").get_queue_attributes(
            QueueUrl=queue_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
    except (ClientError, BotoCoreError):
        return None
    return int(attrs.get("ApproximateNumberOfMessages", 0)) + int(
        attrs.get("ApproximateNumberOfMessagesNotVisible", 0)
    )


def audit(
    target: Target,
    *,
    progress: Progress | None = None,
    inventory_manifest: str | None = None,
) -> AuditReport:
    """Reconcile the target's bucket, table, DLQ (and ledger) and Orthanc (see the package).

    Parameters
    ----------
    target:
        What to audit (:func:`pipeline.ops.target.resolve_target`); its AWS clients must
        already point at it (:meth:`~pipeline.ops.target.Target.activate`).
    progress:
        Called in the caller's thread as ``progress(phase, done, total)`` while the sources
        are read; phases ``s3``, ``table``, ``ledger``, ``dlq``, ``orthanc`` (each only when
        read) and ``recheck`` (only when some key is read again); ``total`` is None when not
        known in advance (the DLQ's is SQS's approximate count).
    inventory_manifest:
        ``s3://bucket/.../manifest.json`` of a CSV S3 Inventory report of the target's bucket:
        read instead of listing the bucket (at scale). Its keys whose state looks wrong are
        read again, so changes since the inventory's snapshot are not reported as problems.

    Raises
    ------
    AuditError
        A source could not be read (its message is one line).

    Examples
    --------
    >>> target = resolve_target()  # doctest: +SKIP
    >>> target.activate()  # doctest: +SKIP
    >>> report = audit(target)  # doctest: +SKIP
    >>> report.counts()["missing"], report.problems()  # doctest: +SKIP
    (0, 0)
    """
    started = time.monotonic()
    started_at = iso_time(datetime.now(UTC)) or ""
    phases = Phases(progress)
    report = AuditReport(entries=[], target=target.name, bucket=target.bucket)
    report.started_at = started_at

    jobs = _source_jobs(target, phases, report, inventory_manifest)
    results = phases.run(jobs, workers=len(jobs))
    state = _merge(target, results, report)

    entries = {k: state.classify(k) for k in state.all_keys()}
    _recheck_suspects(target, phases, state, entries, report)
    _check_sidecars(state, entries)
    if "orthanc" in results:
        instances = results["orthanc"]
        if isinstance(instances, str):
            report.sources["orthanc"] = {"skipped": instances}
            report.notes.append(f"Orthanc not audited: {instances}")
        else:
            orthanc = orthanc_target(target)
            assert orthanc is not None
            url, auth = orthanc
            _add_orthanc(
                entries,
                state=state,
                instances=instances,
                url=url,
                auth=auth,
                sources=report.sources,
            )

    report.in_flight = _in_flight(target.queue_url)
    if report.in_flight:
        report.notes.append(
            f"{plural(report.in_flight, 'message')} on the ingest queue: keys they name may show "
            "as missing or stale until processed"
        )
    order = ("s3", "table", "ledger", "dlq", "orthanc")
    report.sources = {k: report.sources[k] for k in order if k in report.sources}
    report.entries = sorted(entries.values(), key=lambda e: (CLASSES.index(e.klass), e.key or ""))
    report.seconds = time.monotonic() - started
    return report


def _check_sidecars(state: State, entries: dict[str, AuditEntry]) -> None:
    """An indexed record whose DICOM JSON sidecar (``dicom_json_s3``) is gone is
    ``dangling_sidecar``: its header can no longer be read from the table (one HEAD each;
    only records too large to hold their JSON have a sidecar)."""
    keys = [
        k
        for k, e in entries.items()
        if e.klass == "indexed" and k in state.records and state.records[k].sidecar
    ]
    s3 = aws.client("s3")

    def gone(key: str) -> bool:
        match = S3_URI.fullmatch(state.records[key].sidecar or "")
        if match is None:
            return True
        try:
            s3.head_object(Bucket=match.group(1), Key=match.group(2))
        except ClientError as exc:
            if error_code(exc) in ("404", "NoSuchKey", "NotFound"):
                return True
            raise AuditError(f"cannot read sidecar of {key}: {error_code(exc)}") from exc
        return False

    with ThreadPoolExecutor(max_workers=POINT_READERS, thread_name_prefix="audit-sidecar") as pool:
        for key, missing in zip(keys, pool.map(gone, keys), strict=True):
            if missing:
                entries[key].klass = "dangling_sidecar"
                entries[key].note = f"its DICOM JSON sidecar {state.records[key].sidecar} is gone"


def _source_jobs(
    target: Target, phases: Phases, report: AuditReport, inventory_manifest: str | None
) -> dict[str, Callable[[], Any]]:
    """One job per source, each reading into its own phase."""
    jobs: dict[str, Callable[[], Any]] = {}
    s3 = phases.phase("s3")
    if inventory_manifest:
        manifest = inventory_manifest
        jobs["s3"] = _guarded(
            "the S3 inventory", lambda: read_inventory(manifest, target.bucket, s3)
        )
    else:
        jobs["s3"] = _guarded(
            f"s3://{target.bucket}", lambda: (*list_bucket(target.bucket, s3), {"from": "list"})
        )
    table = phases.phase("table")
    jobs["table"] = _guarded(f"the table {target.table}", lambda: scan_table(target.table, table))
    ledger_table = target.ledger_table
    if ledger_table:
        ledger = phases.phase("ledger")
        jobs["ledger"] = _guarded(
            f"the DLQ ledger {ledger_table}", lambda: read_ledger(ledger_table, ledger)
        )
    else:
        report.notes.append("the target has no DLQ ledger: failures are read from the DLQ only")
    dlq = phases.phase("dlq")
    jobs["dlq"] = _guarded("the DLQ", lambda: peek_dlq(target.dlq_url, target.bucket, dlq))

    orthanc = orthanc_target(target)
    if orthanc is not None:
        url, auth = orthanc
        instances = phases.phase("orthanc")
        jobs["orthanc"] = lambda: instances_or_reason(url, auth, instances)
    elif not target.orthanc_url:
        report.sources["orthanc"] = {"skipped": "the target names no Orthanc"}
    else:
        report.sources["orthanc"] = {"skipped": "no credentials"}
        report.notes.append(
            "Orthanc not audited: no credentials (set DICOM_PIPELINE_USERNAME and "
            "DICOM_PIPELINE_PASSWORD)"
        )
    return jobs


def _merge(target: Target, results: dict[str, Any], report: AuditReport) -> State:
    """The sources' results as one state; what each source was goes into the report."""
    objects, not_audited, s3_info = results["s3"]
    records: dict[str, TableRecord] = results["table"]
    ledger: dict[str, list[Failure]] = results.get("ledger", {})
    peek: DlqPeek = results["dlq"]

    report.not_audited = dict(sorted(not_audited.items()))
    report.sources["s3"] = {
        **s3_info,
        "bucket": target.bucket,
        "prefix": ORTHANC_PREFIX,
        "objects": len(objects),
    }
    report.sources["table"] = {
        "name": target.table,
        "items": len(records),
        "segments": TABLE_SEGMENTS,
    }
    if "ledger" in results:
        report.sources["ledger"] = {
            "name": target.ledger_table,
            "entries": sum(len(v) for v in ledger.values()),
        }
    report.sources["dlq"] = {
        "messages": peek.messages,
        "v1": peek.v1,
        "raw": peek.raw,
        "unreadable": peek.unreadable,
    }
    if peek.unreadable:
        report.notes.append(
            f"{plural(peek.unreadable, 'DLQ message')} name no object (not JSON, or malformed)"
        )
    if peek.other_bucket:
        others = plural(peek.other_bucket, "DLQ failure")
        report.notes.append(f"{others} of another bucket left out")
    return State(objects, records, ledger, peek.failures)


def _recheck_suspects(
    target: Target,
    phases: Phases,
    state: State,
    entries: dict[str, AuditEntry],
    report: AuditReport,
) -> None:
    """Read the keys that look wrong again and classify them anew."""
    suspects = sorted(k for k, e in entries.items() if e.klass in _SUSPECT_CLASSES)
    keys = suspects[:RECHECK_LIMIT]
    if not keys:
        return
    phase = phases.phase("recheck", len(keys))
    phases.run(
        {"recheck": _guarded("the keys again", lambda: _recheck(target, keys, state, phase))},
        workers=1,
    )
    for key in keys:
        entries.pop(key, None)
        if state.holds(key):
            entries[key] = state.classify(key)
    report.rechecked = len(keys)
    if len(suspects) > len(keys):
        report.notes.append(
            f"{len(suspects) - len(keys)} of {len(suspects)} suspect keys were not read again "
            f"(at most {RECHECK_LIMIT}): some may have changed while the audit ran"
        )


def _add_orthanc(
    entries: dict[str, AuditEntry],
    *,
    state: State,
    instances: list[str],
    url: str,
    auth: tuple[str, str],
    sources: dict[str, Any],
) -> None:
    """One ``orthanc_not_indexed`` entry per instance that no indexed record names."""
    named = {
        r.orthanc_instance_id
        for r in state.records.values()
        if r.status == "indexed" and r.orthanc_instance_id
    }
    unindexed = [i for i in instances if i not in named]
    keys = instance_keys(url, auth, unindexed) if unindexed else {}
    for instance_id in unindexed:
        key = keys.get(instance_id)
        entry = AuditEntry(key=key, klass="orthanc_not_indexed", orthanc_instance_id=instance_id)
        if key is not None:
            obj, record = state.objects.get(key), state.records.get(key)
            if obj is not None:
                entry.etag, entry.size = obj.etag, obj.size
                entry.last_modified, entry.version_id = obj.last_modified, obj.version_id
            if record is not None:
                entry.status, entry.record_etag = record.status, record.etag
                entry.indexed_at, entry.event_time = record.indexed_at, record.event_time
            own = entries.get(key)
            if own is not None:
                entry.code, entry.failed_at = own.code, own.failed_at
                entry.note = f"its object is {own.klass}"
            else:
                entry.note = "its object is not in the bucket"
        entries[f"orthanc:{instance_id}"] = entry
    sources["orthanc"] = {
        "url": url,
        "instances": len(instances),
        "indexed": len(instances) - len(unindexed),
    }
