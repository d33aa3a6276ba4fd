"""The audit: reconcile S3, the metadata table, the DLQ (and its ledger) and Orthanc.

Every ``.dcm`` object of the bucket, every record of the table, every failure in the DLQ or
the DLQ ledger and every Orthanc instance ends in exactly one class (:data:`CLASSES`):

``indexed``
    the object has an indexed record whose ETag (and version, when both are known) is the
    object's;
``stale``
    the object has an indexed record of another ETag or version (a newer write not indexed);
``failed``
    the object's latest event is in the DLQ or the DLQ ledger, with its code; a raw S3
    notification on the DLQ (the ingest queue's own redrive puts those there, not the
    workflow) is a failure whose code is unknown, :data:`UNKNOWN_CODE`;
``missing``
    the object is in S3, and in neither the table (no record, or only a tombstone) nor the DLQ;
``orphan_record``
    an indexed record whose object is not in S3;
``tombstone``
    a deleted record whose object is gone (as it should be);
``orthanc_not_indexed``
    an Orthanc instance that no indexed record names (``orthanc_instance_id``).

Records, failures and objects of one key make one :class:`AuditEntry`; an Orthanc instance
with an indexed record is part of that record's entry, one without gets an entry of its own
(with the key of its DICOM attachment, so the object's own entry, say ``missing``, and the
instance's can be read together). A failure only decides the class when it is newer than the
key's record (by the S3 event order, else by time): a failure an indexed record has since
replaced is noted on the entry, not counted.

Objects that are not ``.dcm`` (Orthanc's ``.dcm.head`` copies, the ``dicom-json/`` sidecars,
``workflow-staging/``, anything else) are not audited; the report counts them
(:attr:`AuditReport.not_audited`).

Sources, read concurrently: the bucket (``ListObjectsV2``, or at scale an S3 Inventory
report: ``inventory_manifest``), the table (a parallel scan in :data:`TABLE_SEGMENTS`
segments, only the attributes the audit needs), the DLQ ledger (a scan: no message is
received) and a peek at the DLQ (each message received with a short visibility timeout and
made visible again at once: nothing is lost, nothing deleted), and Orthanc's ``/instances``
(when the target names Orthanc and there are credentials). Afterwards every key that looks
wrong (``stale``, ``missing``, ``orphan_record``) is read again with point reads (S3
``HeadObject``, a consistent ``GetItem``, the ledger's entries of the key), so a write that
happened while the sources were read, or after the inventory's snapshot, is not reported as
a problem.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_plus

from botocore.exceptions import BotoCoreError, ClientError

from pipeline import aws
from pipeline.names import DICOM_SUFFIX, SIDECAR_PREFIX, STAGING_PREFIX, TABLE_KEY
from pipeline.workflow.dlq import DLQ_SCHEMA
from pipeline.workflow.events import order_token, split_batch
from pipeline.workflow.table import scan_pages

if TYPE_CHECKING:
    from pipeline.ops.target import Target

__all__ = [
    "CLASSES",
    "PROBLEM_CLASSES",
    "TABLE_SEGMENTS",
    "UNKNOWN_CODE",
    "AuditEntry",
    "AuditError",
    "AuditReport",
    "Progress",
    "audit",
]

#: The classes, in the order reports show them.
CLASSES: tuple[str, ...] = (
    "indexed",
    "stale",
    "failed",
    "missing",
    "orphan_record",
    "dangling_sidecar",
    "tombstone",
    "orthanc_not_indexed",
)
#: The classes that make the audit fail (``AuditReport.problems``; the command exits 1).
PROBLEM_CLASSES: tuple[str, ...] = ("missing", "orphan_record", "dangling_sidecar")
#: The code of a failure whose DLQ message is the raw S3 notification, not a v1 message.
UNKNOWN_CODE = "UNKNOWN"
#: Segments of the table's parallel scan (one thread each).
TABLE_SEGMENTS = 4
#: At most this many keys are read again with point reads; beyond it, a note says so.
RECHECK_LIMIT = 10_000
#: Long polling of the DLQ peek: an empty answer after this wait means no visible message.
DLQ_WAIT_SECONDS = 1
#: Instances per page of Orthanc's ``/instances``.
ORTHANC_PAGE = 1000
#: Classes whose keys are read again before they are reported.
_SUSPECT_CLASSES = ("stale", "missing", "orphan_record")
#: Point reads (recheck, Orthanc attachments) at once.
_POINT_READERS = 16
#: The report's JSON document.
REPORT_SCHEMA = "dicom-pipeline/audit/v1"

#: ``progress(phase, done, total)``: ``total`` is None when it is not known in advance.
Progress = Callable[[str, int, int | None], None]

_S3_URI = re.compile(r"s3://([^/]+)/(.+)", re.DOTALL)


class AuditError(Exception):
    """A source cannot be read (its message is one line for the user)."""


# -- the report ------------------------------------------------------------------------------
@dataclass(slots=True)
class AuditEntry:
    """One key (or one Orthanc instance without a record) and what explains its class.

    S3's side: ``etag`` (without quotes), ``size``, ``last_modified``, ``version_id`` (None
    when the object is absent, or the listing does not say). The table's: ``status``,
    ``record_etag``, ``record_version_id``, ``indexed_at``, ``event_time``. The failure's (DLQ
    or ledger): ``code``, ``failed_at``, ``failure_source``: ``dlq+ledger`` (a v1 message
    and its ledger entry, the usual case), ``dlq`` (a v1 message, no ledger entry),
    ``dlq-raw`` (a raw S3 notification, code ``UNKNOWN``) or ``ledger`` (a ledger entry whose
    DLQ message was not found: deleted, or expired). ``note`` says anything else worth
    knowing (a failure a newer record replaced, a record without an ETag).
    """

    key: str | None
    klass: str
    etag: str | None = None
    size: int | None = None
    last_modified: str | None = None
    version_id: str | None = None
    status: str | None = None
    record_etag: str | None = None
    record_version_id: str | None = None
    indexed_at: str | None = None
    event_time: str | None = None
    code: str | None = None
    failed_at: str | None = None
    failure_source: str | None = None
    orthanc_instance_id: str | None = None
    note: str | None = None


@dataclass
class AuditReport:
    """The audit's result: one entry per key (and per Orthanc instance without a record).

    Besides the entries: the target's name and bucket, when the audit started and how long it
    took, what each source was (``sources``), the objects left out by kind (``not_audited``),
    the messages on the ingest queue when it ran (``in_flight``: events not yet processed can
    make keys look ``missing`` or ``stale``), how many keys were read again (``rechecked``)
    and ``notes`` for the reader.

    Examples
    --------
    >>> report = AuditReport([AuditEntry("a.dcm", "indexed"), AuditEntry("b.dcm", "missing")])
    >>> report.counts()["missing"], report.problems()
    (1, 1)
    """

    entries: list[AuditEntry]
    target: str = "local"
    bucket: str = ""
    started_at: str = ""
    seconds: float = 0.0
    sources: dict[str, Any] = field(default_factory=dict)
    not_audited: dict[str, int] = field(default_factory=dict)
    in_flight: int | None = None
    rechecked: int = 0
    notes: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """Entries by class, every class present (zero or not), in :data:`CLASSES` order."""
        found = Counter(e.klass for e in self.entries)
        return {k: found.get(k, 0) for k in CLASSES}

    def problems(self) -> int:
        """Missing objects plus orphan records: what nothing accounts for."""
        counts = self.counts()
        return sum(counts[k] for k in PROBLEM_CLASSES)

    def to_records(self) -> list[dict[str, Any]]:
        """One flat dict per entry (every :class:`AuditEntry` field), e.g. for pandas."""
        return [asdict(e) for e in self.entries]

    def to_json(self, *, all_entries: bool = False) -> dict[str, Any]:
        """The report as a JSON document (``dicom-pipeline audit --json``).

        ``entries`` holds what disagrees: every entry but the ``indexed`` and ``tombstone``
        ones, unless ``all_entries``.
        """
        fine = () if all_entries else ("indexed", "tombstone")
        return {
            "schema": REPORT_SCHEMA,
            "target": self.target,
            "bucket": self.bucket,
            "started_at": self.started_at,
            "seconds": round(self.seconds, 3),
            "counts": self.counts(),
            "problems": self.problems(),
            "sources": self.sources,
            "not_audited": self.not_audited,
            "in_flight": self.in_flight,
            "rechecked": self.rechecked,
            "notes": list(self.notes),
            "entries": [asdict(e) for e in self.entries if e.klass not in fine],
        }


# -- what the sources hold ---------------------------------------------------------------------
@dataclass(slots=True)
class _Object:
    etag: str | None
    size: int | None
    last_modified: str | None
    version_id: str | None = None


@dataclass(slots=True)
class _Record:
    status: str | None
    etag: str | None = None
    version_id: str | None = None
    indexed_at: str | None = None
    event_time: str | None = None
    event_order: str | None = None
    orthanc_instance_id: str | None = None
    sidecar: str | None = None


@dataclass(slots=True)
class _Failure:
    code: str
    source: str
    failed_at: str | None = None
    order: str | None = None


@dataclass
class _Phase:
    """Progress of one source, counted by worker threads and reported by the caller's."""

    name: str
    total: int | None = None
    done: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, n: int) -> None:
        with self._lock:
            self.done += n

    def reset(self, total: int | None) -> None:
        with self._lock:
            self.total = total


class _Phases:
    """The phases of one audit and the callback that hears of them (in the caller's thread)."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress
        self.phases: dict[str, _Phase] = {}
        self._told: dict[str, tuple[int, int | None]] = {}

    def phase(self, name: str, total: int | None = None) -> _Phase:
        self.phases[name] = _Phase(name, total)
        return self.phases[name]

    def report(self) -> None:
        if self.progress is None:
            return
        for name, phase in list(self.phases.items()):
            now = (phase.done, phase.total)
            if self._told.get(name) != now:
                self._told[name] = now
                self.progress(name, *now)

    def run(self, jobs: dict[str, Callable[[], Any]], workers: int) -> dict[str, Any]:
        """Run ``jobs`` in threads; report progress here until all end; their results by name.

        The first job to fail stops the wait and its exception is raised (the others finish in
        the background: each one is a bounded read).
        """
        if not jobs:
            return {}
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="audit")
        try:
            futures: dict[str, Future[Any]] = {n: pool.submit(job) for n, job in jobs.items()}
            pending: set[Future[Any]] = set(futures.values())
            while pending:
                done, pending = wait(pending, timeout=0.1, return_when=FIRST_EXCEPTION)
                self.report()
                for f in done:
                    f.result()  # raises the job's exception here
            self.report()
            return {n: f.result() for n, f in futures.items()}
        finally:
            pool.shutdown(wait=False, cancel_futures=True)


# -- small helpers -----------------------------------------------------------------------------
def _iso(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return str(value)


def _when(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _etag(value: Any) -> str | None:
    return str(value).strip('"') if value else None


def _version(value: Any) -> str | None:
    return str(value) if value not in (None, "", "null") else None


def _error_code(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code") or type(exc).__name__)
    return type(exc).__name__


def _guarded(what: str, job: Callable[[], Any]) -> Callable[[], Any]:
    """``job``, with an AWS error turned into one AuditError line naming ``what``."""

    def run() -> Any:
        try:
            return job()
        except (ClientError, BotoCoreError) as exc:
            raise AuditError(f"cannot read {what}: {_error_code(exc)}") from None

    return run


def _not_audited_kind(key: str) -> str:
    """The report's name for a key that is not audited."""
    if key.endswith(DICOM_SUFFIX + ".head"):
        return "Orthanc header copies (.dcm.head)"
    if key.startswith(SIDECAR_PREFIX):
        return f"DICOM JSON sidecars ({SIDECAR_PREFIX})"
    if key.startswith(STAGING_PREFIX):
        return f"workflow staging ({STAGING_PREFIX})"
    return "other objects (not .dcm)"


# -- S3 --------------------------------------------------------------------------------------
def _list_bucket(bucket: str, phase: _Phase) -> tuple[dict[str, _Object], Counter[str]]:
    objects: dict[str, _Object] = {}
    skipped: Counter[str] = Counter()
    pages = aws.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket)
    for page in pages:
        contents = page.get("Contents", [])
        for o in contents:
            key = o["Key"]
            if key.endswith(DICOM_SUFFIX):
                objects[key] = _Object(
                    _etag(o.get("ETag")), o.get("Size"), _iso(o.get("LastModified"))
                )
            else:
                skipped[_not_audited_kind(key)] += 1
        phase.add(len(contents))
    return objects, skipped


@dataclass
class _Inventory:
    bucket: str
    files: list[str]
    columns: dict[str, int]
    snapshot: str | None


def _parse_manifest(text: bytes, uri: str, bucket: str) -> _Inventory:
    """The parts of an S3 Inventory ``manifest.json`` the audit reads (CSV reports only)."""
    try:
        manifest = json.loads(text)
    except ValueError:
        raise AuditError(f"{uri} is not JSON") from None
    if not isinstance(manifest, dict):
        raise AuditError(f"{uri} is not an S3 Inventory manifest")
    fmt = str(manifest.get("fileFormat", "")).upper()
    if fmt != "CSV":
        raise AuditError(f"{uri}: only CSV inventories are read, this one is {fmt or 'unknown'}")
    source = manifest.get("sourceBucket")
    if source != bucket:
        raise AuditError(f"{uri} is the inventory of bucket {source}, not of {bucket}")
    columns = {c.strip(): i for i, c in enumerate(str(manifest.get("fileSchema", "")).split(","))}
    if "Key" not in columns:
        raise AuditError(f"{uri}: the inventory's fileSchema has no Key column")
    destination = str(manifest.get("destinationBucket", "")).removeprefix("arn:aws:s3:::")
    files = [str(f["key"]) for f in manifest.get("files", []) if isinstance(f, dict) and "key" in f]
    if not destination:
        raise AuditError(f"{uri}: the manifest names no destinationBucket")
    snapshot = None
    created = manifest.get("creationTimestamp")
    if created is not None:
        try:
            snapshot = _iso(datetime.fromtimestamp(int(created) / 1000, UTC))
        except (TypeError, ValueError, OverflowError):
            snapshot = None
    return _Inventory(destination, files, columns, snapshot)


def _inventory_rows(inventory: _Inventory, key: str) -> Iterator[list[str]]:
    body = aws.client("s3").get_object(Bucket=inventory.bucket, Key=key)["Body"]
    raw: Any = gzip.GzipFile(fileobj=body) if key.endswith(".gz") else body
    with io.TextIOWrapper(raw, encoding="utf-8", newline="") as text:
        yield from csv.reader(text)


def _read_inventory_file(
    inventory: _Inventory, key: str, bucket: str, phase: _Phase
) -> tuple[dict[str, _Object], Counter[str]]:
    cols = inventory.columns

    def col(row: list[str], name: str) -> str | None:
        i = cols.get(name)
        return row[i] if i is not None and i < len(row) and row[i] != "" else None

    objects: dict[str, _Object] = {}
    skipped: Counter[str] = Counter()
    n = 0
    for row in _inventory_rows(inventory, key):
        n += 1
        if n % 1000 == 0:
            phase.add(1000)
        if col(row, "Bucket") not in (None, bucket):
            continue
        if col(row, "IsDeleteMarker") == "true" or col(row, "IsLatest") == "false":
            continue  # a versioned inventory: only the current version of a live object counts
        name = col(row, "Key")
        if name is None:
            continue
        # CSV inventories URL-encode the key, a space as "+" (cloud-custodian issue 1997).
        name = unquote_plus(name)
        if not name.endswith(DICOM_SUFFIX):
            skipped[_not_audited_kind(name)] += 1
            continue
        size = col(row, "Size")
        objects[name] = _Object(
            _etag(col(row, "ETag")),
            int(size) if size is not None and size.isdigit() else None,
            col(row, "LastModifiedDate"),
            _version(col(row, "VersionId")),
        )
    phase.add(n % 1000)
    return objects, skipped


def _read_inventory(
    uri: str, bucket: str, phase: _Phase
) -> tuple[dict[str, _Object], Counter[str], dict[str, Any]]:
    match = _S3_URI.fullmatch(uri)
    if not match:
        raise AuditError(f"{uri!r} is not the s3://bucket/key URI of an inventory manifest.json")
    try:
        text = aws.client("s3").get_object(Bucket=match[1], Key=match[2])["Body"].read()
    except ClientError as exc:
        raise AuditError(f"cannot read the inventory manifest {uri}: {_error_code(exc)}") from None
    inventory = _parse_manifest(text, uri, bucket)
    objects: dict[str, _Object] = {}
    skipped: Counter[str] = Counter()
    with ThreadPoolExecutor(max_workers=4, thread_name_prefix="audit-inventory") as pool:
        parts = pool.map(
            lambda f: _read_inventory_file(inventory, f, bucket, phase), inventory.files
        )
        for part_objects, part_skipped in parts:
            objects.update(part_objects)
            skipped.update(part_skipped)
    info = {
        "from": "inventory",
        "manifest": uri,
        "snapshot": inventory.snapshot,
        "files": len(inventory.files),
    }
    return objects, skipped, info


# -- the table and the ledger -------------------------------------------------------------------
_RECORD_ATTRIBUTES = (
    TABLE_KEY,
    "status",
    "etag",
    "version_id",
    "indexed_at",
    "event_time",
    "event_order",
    "orthanc_instance_id",
    "dicom_json_s3",
)
_LEDGER_ATTRIBUTES = (TABLE_KEY, "event_order", "code", "failed_at")


def _projection(names: Iterable[str]) -> dict[str, Any]:
    """ProjectionExpression with every name a placeholder (``status``, ``size`` are reserved)."""
    aliases = {f"#a{i}": name for i, name in enumerate(names)}
    return {"ProjectionExpression": ", ".join(aliases), "ExpressionAttributeNames": aliases}


def _s(item: dict[str, Any], name: str) -> str | None:
    value = item.get(name)
    if not value:
        return None
    if "S" in value:
        return str(value["S"])
    if "N" in value:
        return str(value["N"])
    return None


def _record(item: dict[str, Any]) -> _Record:
    return _Record(
        status=_s(item, "status"),
        etag=_etag(_s(item, "etag")),
        version_id=_version(_s(item, "version_id")),
        indexed_at=_s(item, "indexed_at"),
        event_time=_s(item, "event_time"),
        event_order=_s(item, "event_order"),
        orthanc_instance_id=_s(item, "orthanc_instance_id"),
        sidecar=_s(item, "dicom_json_s3"),
    )


def _scan_segment(
    table: str, names: tuple[str, ...], segment: int, total: int, phase: _Phase
) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for page in scan_pages(table, segment=segment, segments=total, attributes=names):
        items.extend(page)
        phase.add(len(page))
    return items


def _scan(table: str, names: tuple[str, ...], phase: _Phase, segments: int) -> list[dict[str, Any]]:
    """Every item of ``table`` (only ``names``), in a parallel scan of ``segments`` threads."""
    if segments == 1:
        return _scan_segment(table, names, 0, 1, phase)
    with ThreadPoolExecutor(max_workers=segments, thread_name_prefix="audit-scan") as pool:
        parts = pool.map(lambda s: _scan_segment(table, names, s, segments, phase), range(segments))
        return [item for part in parts for item in part]


def _scan_table(table: str, phase: _Phase) -> dict[str, _Record]:
    items = _scan(table, _RECORD_ATTRIBUTES, phase, TABLE_SEGMENTS)
    return {item[TABLE_KEY]["S"]: _record(item) for item in items}


def _ledger_failure(item: dict[str, Any]) -> _Failure:
    return _Failure(
        code=_s(item, "code") or UNKNOWN_CODE,
        source="ledger",
        failed_at=_s(item, "failed_at"),
        order=_s(item, "event_order"),
    )


def _read_ledger(table: str, phase: _Phase) -> dict[str, list[_Failure]]:
    failures: dict[str, list[_Failure]] = {}
    for item in _scan(table, _LEDGER_ATTRIBUTES, phase, 1):
        failures.setdefault(item[TABLE_KEY]["S"], []).append(_ledger_failure(item))
    return failures


# -- the DLQ -----------------------------------------------------------------------------------
@dataclass
class _DlqPeek:
    failures: dict[str, list[_Failure]] = field(default_factory=dict)
    messages: int = 0
    v1: int = 0
    raw: int = 0
    unreadable: int = 0
    other_bucket: int = 0

    def add(self, key: str, failure: _Failure) -> None:
        self.failures.setdefault(key, []).append(failure)


def _read_message(body: str, message_id: str, bucket: str, peek: _DlqPeek) -> None:
    """Add one DLQ message's failures to ``peek``.

    A v1 message is one failure with its code. Any other JSON body with ``Records`` is a raw
    S3 notification (the ingest queue's redrive moved it after its last receive): each of its
    create or delete records of a ``.dcm`` key is a failure with code ``UNKNOWN``; test events
    and other keys the workflow would have skipped are not failures. Anything else is
    unreadable (counted, noted).
    """
    try:
        doc = json.loads(body)
    except ValueError:
        peek.unreadable += 1
        return
    if isinstance(doc, dict) and doc.get("schema") == DLQ_SCHEMA:
        s3 = doc.get("s3") or {}
        key = s3.get("key")
        if not key:
            peek.unreadable += 1
            return
        if s3.get("bucket") not in (None, bucket):
            peek.other_bucket += 1
            return
        original = doc.get("record")
        record: dict[str, Any] = original if isinstance(original, dict) else {}
        obj = (record.get("s3") or {}).get("object") or {}
        order = order_token(obj.get("sequencer") or s3.get("sequencer"), record.get("eventTime"))
        code = str((doc.get("error") or {}).get("code") or UNKNOWN_CODE)
        peek.v1 += 1
        peek.add(key, _Failure(code, "dlq", doc.get("failed_at"), order))
        return
    events = split_batch([{"messageId": message_id, "body": body}])
    usable = [e for e in events if e.kind in ("create", "delete") and e.key]
    if not usable and any(e.kind == "fail" for e in events):
        peek.unreadable += 1
        return
    if usable:
        peek.raw += 1
    for e in usable:
        if e.bucket != bucket:
            peek.other_bucket += 1
            continue
        assert e.key is not None
        peek.add(e.key, _Failure(UNKNOWN_CODE, "dlq-raw", None, e.order))


def _peek_dlq(queue_url: str, bucket: str, phase: _Phase) -> _DlqPeek:
    """Read every DLQ message without losing one.

    Messages are received with a visibility timeout long enough for the whole peek (so each
    is seen once), then made visible again (``ChangeMessageVisibility`` 0), also when the peek
    is interrupted. A message whose timeout ran out during a very long peek is received
    again: messages are counted once, by ID. The DLQ has no redrive policy, so receiving
    changes nothing but the messages' receive counts.
    """
    sqs = aws.client("sqs")
    attrs = sqs.get_queue_attributes(
        QueueUrl=queue_url, AttributeNames=["ApproximateNumberOfMessages"]
    )["Attributes"]
    approximate = int(attrs.get("ApproximateNumberOfMessages", 0))
    phase.reset(approximate)
    # About 50 receives of 10 messages a second; a generous margin, within SQS's 12 hours.
    hide = min(43_200, 30 + approximate // 50)
    handles: dict[str, str] = {}
    peek = _DlqPeek()
    try:
        while True:
            messages = sqs.receive_message(
                QueueUrl=queue_url,
                MaxNumberOfMessages=10,
                VisibilityTimeout=hide,
                WaitTimeSeconds=DLQ_WAIT_SECONDS,
            ).get("Messages", [])
            if not messages:
                break
            for m in messages:
                first = m["MessageId"] not in handles
                handles[m["MessageId"]] = m["ReceiptHandle"]
                if first:
                    peek.messages += 1
                    phase.add(1)
                    _read_message(m.get("Body", ""), m["MessageId"], bucket, peek)
    finally:
        _make_visible(queue_url, list(handles.values()))
    return peek


def _make_visible(queue_url: str, handles: list[str]) -> None:
    sqs = aws.client("sqs")
    for start in range(0, len(handles), 10):
        entries = [
            {"Id": str(i), "ReceiptHandle": h, "VisibilityTimeout": 0}
            for i, h in enumerate(handles[start : start + 10])
        ]
        # A handle whose timeout already ran out fails here: that message is visible anyway.
        sqs.change_message_visibility_batch(QueueUrl=queue_url, Entries=entries)


# -- Orthanc -------------------------------------------------------------------------------------
def _orthanc_credentials(target: Target) -> tuple[str, str] | None:
    """``DICOM_PIPELINE_USERNAME``/``_PASSWORD`` (as ``send``), else the target's (stack.json)."""
    username = os.environ.get("DICOM_PIPELINE_USERNAME") or target.orthanc_username
    password = os.environ.get("DICOM_PIPELINE_PASSWORD") or target.orthanc_password
    if not username or not password:
        return None
    return username, password


def _orthanc_session(auth: tuple[str, str]) -> Any:
    import requests

    session = requests.Session()
    session.auth = auth
    return session


def _orthanc_instances(url: str, auth: tuple[str, str], phase: _Phase) -> list[str]:
    """Every instance ID of Orthanc, ``/instances`` page by page (``since``, ``limit``)."""
    session = _orthanc_session(auth)
    ids: list[str] = []
    while True:
        resp = session.get(
            f"{url}/instances", params={"since": len(ids), "limit": ORTHANC_PAGE}, timeout=60
        )
        resp.raise_for_status()
        page = [str(i) for i in resp.json()]
        ids.extend(page)
        phase.add(len(page))
        if len(page) < ORTHANC_PAGE:
            return ids


def _orthanc_keys(url: str, auth: tuple[str, str], ids: list[str]) -> dict[str, str]:
    """The S3 key of each instance's DICOM attachment (the S3 plugin's flat layout)."""
    import requests

    from pipeline.orthanc.storage import DICOM, object_key

    session = _orthanc_session(auth)

    def key_of(instance_id: str) -> tuple[str, str | None]:
        try:
            resp = session.get(f"{url}/instances/{instance_id}/attachments/dicom/info", timeout=30)
            if resp.ok:
                return instance_id, object_key(str(resp.json()["Uuid"]), DICOM)
        except (requests.RequestException, ValueError, KeyError, TypeError):
            pass  # best effort: the instance's entry then names no key
        return instance_id, None

    with ThreadPoolExecutor(max_workers=_POINT_READERS, thread_name_prefix="audit-orthanc") as pool:
        return {i: k for i, k in pool.map(key_of, ids) if k}


# -- classification ------------------------------------------------------------------------------
def _latest(failures: list[_Failure]) -> _Failure:
    return max(failures, key=lambda f: (f.order or "", f.failed_at or ""))


def _newer(failure: _Failure, record: _Record) -> bool:
    """Whether ``failure`` came after the event that wrote ``record`` (unknown: it did)."""
    if failure.order and record.event_order:
        return failure.order > record.event_order
    failed, written = _when(failure.failed_at), _when(record.indexed_at)
    if failed and written:
        return failed > written
    return True


def _current(record: _Record, obj: _Object) -> bool:
    """Whether the indexed record describes the object as it is now."""
    if record.version_id and obj.version_id and record.version_id != obj.version_id:
        return False
    return record.etag is not None and record.etag == obj.etag


def _classify(
    key: str, obj: _Object | None, record: _Record | None, failures: list[_Failure]
) -> AuditEntry:
    entry = AuditEntry(key=key, klass="missing")
    if obj is not None:
        entry.etag, entry.size = obj.etag, obj.size
        entry.last_modified, entry.version_id = obj.last_modified, obj.version_id
    if record is not None:
        entry.status, entry.record_etag = record.status, record.etag
        entry.record_version_id = record.version_id
        entry.indexed_at, entry.event_time = record.indexed_at, record.event_time
        entry.orthanc_instance_id = record.orthanc_instance_id
    failure = _latest(failures) if failures else None
    fresh = failure is not None and (record is None or _newer(failure, record))
    indexed = record is not None and record.status == "indexed"
    if obj is not None and indexed and record is not None and _current(record, obj):
        entry.klass = "indexed"
    elif fresh:
        entry.klass = "failed"
    elif indexed:
        entry.klass = "stale" if obj is not None else "orphan_record"
    elif obj is not None:
        entry.klass = "missing"
    elif record is not None:
        entry.klass = "tombstone" if record.status == "deleted" else "orphan_record"
    if failure is not None and entry.klass == "failed":
        entry.code, entry.failed_at = failure.code, failure.failed_at
        entry.failure_source = failure.source
    elif failure is not None:
        # Not counted: the record's event came after it (a redrive would change nothing).
        entry.note = f"a failure ({failure.code}, {failure.source}) older than the record"
    if indexed and record is not None and record.etag is None:
        entry.note = "the record has no etag"
    return entry


# -- the audit -----------------------------------------------------------------------------------
@dataclass
class _State:
    """What the sources hold, by key: objects, records, ledger entries, DLQ failures."""

    objects: dict[str, _Object]
    records: dict[str, _Record]
    ledger: dict[str, list[_Failure]]
    dlq: dict[str, list[_Failure]]

    def all_keys(self) -> set[str]:
        return set(self.objects) | set(self.records) | set(self.ledger) | set(self.dlq)

    def holds(self, key: str) -> bool:
        return any(key in part for part in (self.objects, self.records, self.ledger, self.dlq))

    def failures(self, key: str) -> list[_Failure]:
        """One failure per event: a DLQ message and its ledger entry are one (``dlq+ledger``)."""
        out = list(self.ledger.get(key, []))
        for failure in self.dlq.get(key, []):
            twin = next(
                (i for i, f in enumerate(out) if f.source == "ledger" and f.order == failure.order),
                None,
            )
            if twin is None or failure.source != "dlq":
                out.append(failure)
            else:
                out[twin] = _Failure(failure.code, "dlq+ledger", failure.failed_at, failure.order)
        return out

    def classify(self, key: str) -> AuditEntry:
        return _classify(key, self.objects.get(key), self.records.get(key), self.failures(key))


def _recheck(target: Target, keys: list[str], state: _State, phase: _Phase) -> None:
    """Read ``keys`` again, one at a time (S3 HEAD, consistent GetItem, the ledger's entries)."""
    s3, ddb = aws.client("s3"), aws.client("dynamodb")

    def read(key: str) -> tuple[str, _Object | None, _Record | None, list[_Failure] | None]:
        try:
            head = s3.head_object(Bucket=target.bucket, Key=key)
            obj: _Object | None = _Object(
                _etag(head.get("ETag")),
                head.get("ContentLength"),
                _iso(head.get("LastModified")),
                _version(head.get("VersionId")),
            )
        except ClientError as exc:
            if _error_code(exc) not in ("404", "NoSuchKey", "NotFound"):
                raise
            obj = None
        got = ddb.get_item(
            TableName=target.table,
            Key={TABLE_KEY: {"S": key}},
            ConsistentRead=True,
            **_projection(_RECORD_ATTRIBUTES),
        )
        record = _record(got["Item"]) if "Item" in got else None
        ledger: list[_Failure] | None = None
        if target.ledger_table:
            rows = ddb.query(
                TableName=target.ledger_table,
                KeyConditionExpression="#a0 = :k",
                ExpressionAttributeValues={":k": {"S": key}},
                ConsistentRead=True,
                **_projection(_LEDGER_ATTRIBUTES),
            ).get("Items", [])
            ledger = [_ledger_failure(r) for r in rows]
        phase.add(1)
        return key, obj, record, ledger

    with ThreadPoolExecutor(max_workers=_POINT_READERS, thread_name_prefix="audit-recheck") as pool:
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


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def audit(
    target: Target,
    *,
    progress: Progress | None = None,
    inventory_manifest: str | None = None,
) -> AuditReport:
    """Reconcile the target's bucket, table, DLQ (and ledger) and Orthanc; see the module.

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
    started_at = _iso(datetime.now(UTC)) or ""
    phases = _Phases(progress)
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
            orthanc = _orthanc_target(target)
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
            f"{_n(report.in_flight, 'message')} on the ingest queue: keys they name may show as "
            "missing or stale until processed"
        )
    order = ("s3", "table", "ledger", "dlq", "orthanc")
    report.sources = {k: report.sources[k] for k in order if k in report.sources}
    report.entries = sorted(entries.values(), key=lambda e: (CLASSES.index(e.klass), e.key or ""))
    report.seconds = time.monotonic() - started
    return report


def _check_sidecars(state: _State, entries: dict[str, AuditEntry]) -> None:
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
        match = _S3_URI.fullmatch(state.records[key].sidecar or "")
        if match is None:
            return True
        try:
            s3.head_object(Bucket=match.group(1), Key=match.group(2))
        except ClientError as exc:
            if _error_code(exc) in ("404", "NoSuchKey", "NotFound"):
                return True
            raise AuditError(f"cannot read sidecar of {key}: {_error_code(exc)}") from exc
        return False

    with ThreadPoolExecutor(max_workers=_POINT_READERS, thread_name_prefix="audit-sidecar") as pool:
        for key, missing in zip(keys, pool.map(gone, keys), strict=True):
            if missing:
                entries[key].klass = "dangling_sidecar"
                entries[key].note = f"its DICOM JSON sidecar {state.records[key].sidecar} is gone"


def _orthanc_target(target: Target) -> tuple[str, tuple[str, str]] | None:
    """Orthanc's REST root and credentials, or None (no Orthanc, or no credentials)."""
    url = (target.orthanc_url or "").rstrip("/")
    auth = _orthanc_credentials(target) if url else None
    return (url, auth) if url and auth else None


def _source_jobs(
    target: Target, phases: _Phases, report: AuditReport, inventory_manifest: str | None
) -> dict[str, Callable[[], Any]]:
    """One job per source, each reading into its own phase."""
    jobs: dict[str, Callable[[], Any]] = {}
    s3 = phases.phase("s3")
    if inventory_manifest:
        manifest = inventory_manifest
        jobs["s3"] = _guarded(
            "the S3 inventory", lambda: _read_inventory(manifest, target.bucket, s3)
        )
    else:
        jobs["s3"] = _guarded(
            f"s3://{target.bucket}", lambda: (*_list_bucket(target.bucket, s3), {"from": "list"})
        )
    table = phases.phase("table")
    jobs["table"] = _guarded(f"the table {target.table}", lambda: _scan_table(target.table, table))
    ledger_table = target.ledger_table
    if ledger_table:
        ledger = phases.phase("ledger")
        jobs["ledger"] = _guarded(
            f"the DLQ ledger {ledger_table}", lambda: _read_ledger(ledger_table, ledger)
        )
    else:
        report.notes.append("the target has no DLQ ledger: failures are read from the DLQ only")
    dlq = phases.phase("dlq")
    jobs["dlq"] = _guarded("the DLQ", lambda: _peek_dlq(target.dlq_url, target.bucket, dlq))

    orthanc = _orthanc_target(target)
    if orthanc is not None:
        url, auth = orthanc
        instances = phases.phase("orthanc")
        jobs["orthanc"] = lambda: _orthanc_or_reason(url, auth, instances)
    elif not target.orthanc_url:
        report.sources["orthanc"] = {"skipped": "the target names no Orthanc"}
    else:
        report.sources["orthanc"] = {"skipped": "no credentials"}
        report.notes.append(
            "Orthanc not audited: no credentials (set DICOM_PIPELINE_USERNAME and "
            "DICOM_PIPELINE_PASSWORD)"
        )
    return jobs


def _merge(target: Target, results: dict[str, Any], report: AuditReport) -> _State:
    """The sources' results as one state; what each source was goes into the report."""
    objects, not_audited, s3_info = results["s3"]
    records: dict[str, _Record] = results["table"]
    ledger: dict[str, list[_Failure]] = results.get("ledger", {})
    peek: _DlqPeek = results["dlq"]

    report.not_audited = dict(sorted(not_audited.items()))
    report.sources["s3"] = {**s3_info, "bucket": target.bucket, "objects": len(objects)}
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
            f"{_n(peek.unreadable, 'DLQ message')} name no object (not JSON, or malformed)"
        )
    if peek.other_bucket:
        report.notes.append(f"{_n(peek.other_bucket, 'DLQ failure')} of another bucket left out")
    return _State(objects, records, ledger, peek.failures)


def _recheck_suspects(
    target: Target,
    phases: _Phases,
    state: _State,
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


def _orthanc_or_reason(url: str, auth: tuple[str, str], phase: _Phase) -> list[str] | str:
    """Orthanc's instance IDs, or why they could not be read (one line: Orthanc is skipped)."""
    import requests

    try:
        return _orthanc_instances(url, auth, phase)
    except requests.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "?"
        return f"{url}/instances answered HTTP {status}"
    except (requests.RequestException, ValueError) as exc:
        return f"{url} cannot be read ({type(exc).__name__})"


def _add_orthanc(
    entries: dict[str, AuditEntry],
    *,
    state: _State,
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
    keys = _orthanc_keys(url, auth, unindexed) if unindexed else {}
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
