"""The audit's classification: what the sources hold of one key, as one class.

:class:`State` holds what the sources read, by key; :func:`classify` decides a key's class
(:data:`~pipeline.ops.audit.report.CLASSES`) from its object, its record and its failures. A
failure only decides the class when it is newer than the key's record (by the S3 event order,
else by time): a failure an indexed record has since replaced is noted, not counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from pipeline.ops.audit.report import AuditEntry
from pipeline.ops.audit.sources import BucketObject, Failure, TableRecord

__all__ = ["State", "classify"]


def _when(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _latest(failures: list[Failure]) -> Failure:
    return max(failures, key=lambda f: (f.order or "", f.failed_at or ""))


def _newer(failure: Failure, record: TableRecord) -> bool:
    """Whether ``failure`` came after the event that wrote ``record`` (unknown: it did)."""
    if failure.order and record.event_order:
        return failure.order > record.event_order
    failed, written = _when(failure.failed_at), _when(record.indexed_at)
    if failed and written:
        return failed > written
    return True


def _current(record: TableRecord, obj: BucketObject) -> bool:
    """Whether the indexed record describes the object as it is now."""
    if record.version_id and obj.version_id and record.version_id != obj.version_id:
        return False
    return record.etag is not None and record.etag == obj.etag


def classify(
    key: str, obj: BucketObject | None, record: TableRecord | None, failures: list[Failure]
) -> AuditEntry:
    """The entry of ``key``: its class and what explains it.

    Parameters
    ----------
    key:
        The object's key.
    obj, record:
        The key's object in the bucket and its record in the table, None when absent.
    failures:
        The key's failures (DLQ and ledger); the latest one counts.

    Examples
    --------
    >>> classify("a.dcm", BucketObject("e1", 10, None), TableRecord("indexed", "e1"), []).klass
    'indexed'
    >>> classify("a.dcm", BucketObject("e2", 10, None), TableRecord("indexed", "e1"), []).klass
    'stale'
    """
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


@dataclass
class State:
    """What the sources hold, by key: objects, records, ledger entries, DLQ failures."""

    objects: dict[str, BucketObject]
    records: dict[str, TableRecord]
    ledger: dict[str, list[Failure]]
    dlq: dict[str, list[Failure]]

    def all_keys(self) -> set[str]:
        """Every key any source names."""
        return set(self.objects) | set(self.records) | set(self.ledger) | set(self.dlq)

    def holds(self, key: str) -> bool:
        """Whether any source names ``key``."""
        return any(key in part for part in (self.objects, self.records, self.ledger, self.dlq))

    def failures(self, key: str) -> list[Failure]:
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
                out[twin] = Failure(failure.code, "dlq+ledger", failure.failed_at, failure.order)
        return out

    def classify(self, key: str) -> AuditEntry:
        """The entry of ``key`` from what the sources hold of it (:func:`classify`)."""
        return classify(key, self.objects.get(key), self.records.get(key), self.failures(key))
