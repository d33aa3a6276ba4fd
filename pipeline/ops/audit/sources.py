"""What the audit's sources hold, and the small helpers their readers share.

The readers (:mod:`~pipeline.ops.audit.bucket`, :mod:`~pipeline.ops.audit.table`,
:mod:`~pipeline.ops.audit.dlq`, :mod:`~pipeline.ops.audit.orthanc`) turn what they read into
these records: a :class:`BucketObject` per ``.dcm`` object, a :class:`TableRecord` per item of
the metadata table, a :class:`Failure` per DLQ message or ledger entry.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import ClientError

__all__ = [
    "POINT_READERS",
    "S3_URI",
    "BucketObject",
    "Failure",
    "TableRecord",
    "error_code",
    "iso_time",
    "plain_etag",
    "version_or_none",
]

#: Point reads (recheck, sidecars, Orthanc attachments) at once.
POINT_READERS = 16
#: An ``s3://bucket/key`` URI: the bucket and the key.
S3_URI = re.compile(r"s3://([^/]+)/(.+)", re.DOTALL)


@dataclass(slots=True)
class BucketObject:
    """A ``.dcm`` object of the bucket: its ETag (no quotes), size, time, version."""

    etag: str | None
    size: int | None
    last_modified: str | None
    version_id: str | None = None


@dataclass(slots=True)
class TableRecord:
    """An item of the metadata table: the attributes the audit reads."""

    status: str | None
    etag: str | None = None
    version_id: str | None = None
    indexed_at: str | None = None
    event_time: str | None = None
    event_order: str | None = None
    orthanc_instance_id: str | None = None
    sidecar: str | None = None


@dataclass(slots=True)
class Failure:
    """A failed event of a key: its code, where it was found and when (order, time)."""

    code: str
    source: str
    failed_at: str | None = None
    order: str | None = None


def iso_time(value: Any) -> str | None:
    """``value`` as ISO-8601 text (a datetime in UTC with ``Z``); None stays None.

    Examples
    --------
    >>> iso_time(datetime(2026, 1, 1, tzinfo=UTC))
    '2026-01-01T00:00:00Z'
    """
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return str(value)


def plain_etag(value: Any) -> str | None:
    """An ETag without its quotes; None when there is none.

    Examples
    --------
    >>> plain_etag('"abc"')
    'abc'
    """
    return str(value).strip('"') if value else None


def version_or_none(value: Any) -> str | None:
    """A version ID, or None for none (an unversioned object's ``"null"`` included)."""
    return str(value) if value not in (None, "", "null") else None


def error_code(exc: Exception) -> str:
    """An AWS error's code (``NoSuchKey``, ``AccessDenied``), else the exception's type name."""
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code") or type(exc).__name__)
    return type(exc).__name__
