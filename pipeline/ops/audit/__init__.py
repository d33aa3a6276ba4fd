"""The audit: reconcile S3, the metadata table, the DLQ (and its ledger) and Orthanc.

Every ``.dcm`` object under Orthanc's prefix of the bucket (``orthanc/``, the only one whose
objects notify the ingest queue), every record of the table, every failure in the DLQ or
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

Objects under the prefix that are not ``.dcm`` (Orthanc's ``.dcm.head`` copies, anything
else) are not audited; the report counts them (:attr:`AuditReport.not_audited`). Objects
outside it (the ``dicom-json/`` sidecars, ``workflow-staging/``, keys stored at the bucket's
root before Orthanc had a prefix) are not read; a record whose key is outside it is audited
like any record (its object read with ``HeadObject`` before it is called an orphan).

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

The package, by concern: :mod:`~pipeline.ops.audit.report` (the classes, the entries, the
report and its JSON document, :class:`AuditError`, the :data:`Progress` type),
:mod:`~pipeline.ops.audit.sources` (what the sources hold, and the helpers their readers
share), one reader per source (:mod:`~pipeline.ops.audit.bucket`: the listing and the S3
Inventory; :mod:`~pipeline.ops.audit.table`: the table and the ledger;
:mod:`~pipeline.ops.audit.dlq`: the peek; :mod:`~pipeline.ops.audit.orthanc`),
:mod:`~pipeline.ops.audit.classify` (the classification), :mod:`~pipeline.ops.audit.progress`
(the phases and their progress) and :mod:`~pipeline.ops.audit.run` (:func:`audit`: the
sources read concurrently, merged, classified, the suspects read again). The names below are
the audit's public API, for the command and the notebooks.
"""

from pipeline.ops.audit.report import (
    CLASSES,
    PROBLEM_CLASSES,
    UNKNOWN_CODE,
    AuditEntry,
    AuditError,
    AuditReport,
    Progress,
)
from pipeline.ops.audit.run import audit
from pipeline.ops.audit.table import TABLE_SEGMENTS

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
