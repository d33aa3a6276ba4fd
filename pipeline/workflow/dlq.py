"""DLQ messages, schema ``dicom-pipeline/dlq/v1`` (DESIGN.md)."""

from __future__ import annotations

from typing import Any

__all__ = ["DLQ_SCHEMA", "dlq_message", "s3_ref"]

DLQ_SCHEMA = "dicom-pipeline/dlq/v1"


def s3_ref(
    bucket: str | None, key: str | None, etag: str | None, sequencer: str | None
) -> dict[str, Any]:
    """The ``s3`` member of a DLQ message."""
    return {"bucket": bucket, "key": key, "etag": etag, "sequencer": sequencer}


def dlq_message(
    *,
    code: str,
    message: str,
    s3: dict[str, Any],
    record: dict[str, Any] | None,
    failed_at: str,
    execution: str | None,
    state: str,
) -> dict[str, Any]:
    """Build one DLQ message body (a JSON object).

    ``message`` says what and where and never holds a DICOM element value. Redrive re-sends
    ``{"Records": [record]}`` to the ingest queue.

    Examples
    --------
    >>> m = dlq_message(
    ...     code="TRUNCATED", message="ends at 12", s3=s3_ref("b", "k.dcm", None, None),
    ...     record={}, failed_at="2026-01-01T00:00:00Z", execution="x", state="ParseHeaders",
    ... )
    >>> m["schema"], m["error"]["code"]
    ('dicom-pipeline/dlq/v1', 'TRUNCATED')
    """
    return {
        "schema": DLQ_SCHEMA,
        "error": {"code": code, "message": message},
        "s3": s3,
        "record": record,
        "failed_at": failed_at,
        "execution": execution,
        "state": state,
    }
