"""The audit's DynamoDB sources: the metadata table and the DLQ ledger.

Both are scanned reading only the attributes the audit needs: the table in a parallel scan of
:data:`TABLE_SEGMENTS` segments (:func:`scan_table`), the ledger in one (:func:`read_ledger`).
A key is read again with a consistent ``GetItem`` (:func:`get_record`) and a consistent query
of the ledger (:func:`query_ledger`).
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pipeline.names import TABLE_KEY
from pipeline.ops.audit.progress import Phase
from pipeline.ops.audit.report import UNKNOWN_CODE
from pipeline.ops.audit.sources import Failure, TableRecord, plain_etag, version_or_none
from pipeline.workflow.table import scan_pages

__all__ = ["TABLE_SEGMENTS", "get_record", "query_ledger", "read_ledger", "scan_table"]

#: Segments of the table's parallel scan (one thread each).
TABLE_SEGMENTS = 4

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


def _record(item: dict[str, Any]) -> TableRecord:
    return TableRecord(
        status=_s(item, "status"),
        etag=plain_etag(_s(item, "etag")),
        version_id=version_or_none(_s(item, "version_id")),
        indexed_at=_s(item, "indexed_at"),
        event_time=_s(item, "event_time"),
        event_order=_s(item, "event_order"),
        orthanc_instance_id=_s(item, "orthanc_instance_id"),
        sidecar=_s(item, "dicom_json_s3"),
    )


def _scan_segment(
    table: str, names: tuple[str, ...], segment: int, total: int, phase: Phase
) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for page in scan_pages(table, segment=segment, segments=total, attributes=names):
        items.extend(page)
        phase.add(len(page))
    return items


def _scan(table: str, names: tuple[str, ...], phase: Phase, segments: int) -> list[dict[str, Any]]:
    """Every item of ``table`` (only ``names``), in a parallel scan of ``segments`` threads."""
    if segments == 1:
        return _scan_segment(table, names, 0, 1, phase)
    with ThreadPoolExecutor(max_workers=segments, thread_name_prefix="audit-scan") as pool:
        parts = pool.map(lambda s: _scan_segment(table, names, s, segments, phase), range(segments))
        return [item for part in parts for item in part]


def scan_table(table: str, phase: Phase) -> dict[str, TableRecord]:
    """Every record of the metadata table ``table`` by key (a parallel scan).

    Parameters
    ----------
    table:
        The metadata table's name.
    phase:
        Counts the items read.
    """
    items = _scan(table, _RECORD_ATTRIBUTES, phase, TABLE_SEGMENTS)
    return {item[TABLE_KEY]["S"]: _record(item) for item in items}


def _ledger_failure(item: dict[str, Any]) -> Failure:
    return Failure(
        code=_s(item, "code") or UNKNOWN_CODE,
        source="ledger",
        failed_at=_s(item, "failed_at"),
        order=_s(item, "event_order"),
    )


def read_ledger(table: str, phase: Phase) -> dict[str, list[Failure]]:
    """Every failure of the DLQ ledger ``table``, by key (source ``ledger``; one scan).

    Parameters
    ----------
    table:
        The DLQ ledger's name.
    phase:
        Counts the entries read.
    """
    failures: dict[str, list[Failure]] = {}
    for item in _scan(table, _LEDGER_ATTRIBUTES, phase, 1):
        failures.setdefault(item[TABLE_KEY]["S"], []).append(_ledger_failure(item))
    return failures


def get_record(ddb: Any, table: str, key: str) -> TableRecord | None:
    """The record of ``key`` in the metadata table ``table``, or None.

    A consistent ``GetItem`` with ``ddb``, a DynamoDB client (:func:`pipeline.aws.client`).
    """
    got = ddb.get_item(
        TableName=table,
        Key={TABLE_KEY: {"S": key}},
        ConsistentRead=True,
        **_projection(_RECORD_ATTRIBUTES),
    )
    return _record(got["Item"]) if "Item" in got else None


def query_ledger(ddb: Any, table: str, key: str) -> list[Failure]:
    """The failures of ``key`` in the DLQ ledger ``table`` (a consistent query with ``ddb``)."""
    rows = ddb.query(
        TableName=table,
        KeyConditionExpression="#a0 = :k",
        ExpressionAttributeValues={":k": {"S": key}},
        ConsistentRead=True,
        **_projection(_LEDGER_ATTRIBUTES),
    ).get("Items", [])
    return [_ledger_failure(r) for r in rows]
