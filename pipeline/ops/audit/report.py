"""The audit's report: its classes, its entries, the report itself and its JSON document.

What the audit returns and what its readers (the command, the notebooks) use: the classes
(:data:`CLASSES`, :data:`PROBLEM_CLASSES`), one :class:`AuditEntry` per key, the
:class:`AuditReport`, the :class:`AuditError` a source that cannot be read raises and the
:data:`Progress` callback's type.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "CLASSES",
    "PROBLEM_CLASSES",
    "REPORT_SCHEMA",
    "UNKNOWN_CODE",
    "AuditEntry",
    "AuditError",
    "AuditReport",
    "Progress",
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
#: The report's JSON document.
REPORT_SCHEMA = "dicom-pipeline/audit/v1"

#: ``progress(phase, done, total)``: ``total`` is None when it is not known in advance.
Progress = Callable[[str, int, int | None], None]


class AuditError(Exception):
    """A source cannot be read (its message is one line for the user)."""


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
