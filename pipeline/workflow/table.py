"""The metadata table's shape, shared by the CDK app and the local stack."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from pipeline.errors import UnprocessedKeys
from pipeline.names import ORDER_ATTRIBUTE, TABLE_KEY, TTL_ATTRIBUTE

__all__ = [
    "GSIS",
    "INDEX_KEY_ATTRIBUTES",
    "LEDGER_KEY",
    "TABLE_KEY",
    "TTL_ATTRIBUTE",
    "BATCH_GET_ATTEMPTS",
    "BATCH_GET_BASE_DELAY",
    "BATCH_GET_KEYS",
    "BATCH_GET_MAX_DELAY",
    "Gsi",
    "batch_get",
    "conform_index_keys",
    "local_ledger_definition",
    "local_table_definition",
    "scan_pages",
]


@dataclass(frozen=True)
class Gsi:
    """A global secondary index: keys and the attributes it projects besides them."""

    name: str
    partition_key: str
    sort_key: str | None
    include: tuple[str, ...]


_SUMMARY = ("status", "Modality", "StudyDate", "SeriesInstanceUID", "SOPInstanceUID")

#: Items without the index's key attributes (tombstones) are simply not in the index.
GSIS: tuple[Gsi, ...] = (
    Gsi(
        "by-study",
        "StudyInstanceUID",
        "SeriesInstanceUID",
        ("status", "Modality", "SOPInstanceUID", "StudyDate"),
    ),
    Gsi(
        "by-sop-instance",
        "SOPInstanceUID",
        None,
        ("status", "StudyInstanceUID", "SeriesInstanceUID"),
    ),
    Gsi("by-patient", "PatientID", "StudyInstanceUID", _SUMMARY),
)


#: Every attribute that is a key of a GSI: DynamoDB requires it to be a non-empty string (the
#: type every key attribute is declared with) of at most 1,024 bytes when present.
INDEX_KEY_ATTRIBUTES: frozenset[str] = frozenset(
    name for g in GSIS for name in (g.partition_key, g.sort_key) if name
)

#: DynamoDB's limits on an index key value, in UTF-8 bytes (partition key / sort key).
INDEX_PARTITION_KEY_MAX_BYTES = 2048
INDEX_SORT_KEY_MAX_BYTES = 1024


def conform_index_keys(item: dict[str, Any]) -> list[str]:
    r"""Make every GSI key attribute of ``item`` what DynamoDB accepts, in place.

    A key attribute must be a non-empty string (the tables declare them ``S``) of at most
    1,024 bytes (the smaller of DynamoDB's partition and sort key limits): a multi-valued
    value (a list: ``PatientID`` ``A\B``) is joined with DICOM's separator ``\``; any
    other value that cannot be such a string is removed from the item (it stays in the DICOM
    JSON). Returns the names of the attributes removed.

    Examples
    --------
    >>> item = {"PatientID": ["A", "B"], "StudyInstanceUID": "1.2"}
    >>> conform_index_keys(item), item["PatientID"]
    ([], 'A\\B')
    """
    removed: list[str] = []
    for name in INDEX_KEY_ATTRIBUTES & item.keys():
        value = item[name]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            value = "\\".join(value)
        if (
            not isinstance(value, str)
            or not value
            or len(value.encode("utf-8")) > INDEX_SORT_KEY_MAX_BYTES
        ):
            del item[name]
            removed.append(name)
        else:
            item[name] = value
    return sorted(removed)


#: BatchGetItem takes at most this many keys a call.
BATCH_GET_KEYS = 100
#: Calls per chunk while DynamoDB leaves keys unprocessed (the first and the retries).
BATCH_GET_ATTEMPTS = 6
#: The backoff before retry ``n`` (from 0) is uniform in ``[0, min(MAX, BASE * 2**n)]``
#: (AWS's "full jitter"): at most 0.05 + 0.1 + 0.2 + 0.4 + 0.8 = 1.55 s over all retries.
BATCH_GET_BASE_DELAY = 0.05
BATCH_GET_MAX_DELAY = 1.0


def batch_get(
    table: str,
    keys: list[dict[str, Any]],
    projection: str,
    *,
    names: dict[str, str] | None = None,
    consistent: bool = False,
    attempts: int = BATCH_GET_ATTEMPTS,
    sleep: Callable[[float], None] = time.sleep,
    rng: random.Random | None = None,
) -> list[dict[str, Any]]:
    """Every item of ``keys`` (DynamoDB JSON) the table holds, projected, in any order.

    ``BatchGetItem`` in chunks of :data:`BATCH_GET_KEYS` (the client retries throttling
    itself). Keys DynamoDB leaves in ``UnprocessedKeys`` are asked again after an
    exponential backoff with full jitter (:data:`BATCH_GET_BASE_DELAY` doubling, capped at
    :data:`BATCH_GET_MAX_DELAY`), up to ``attempts`` calls per chunk, never sleeping past
    the thread's :func:`pipeline.aws.deadline` (no wait after which no attempt could
    be sent). ``sleep`` and ``rng`` are for tests.

    Raises
    ------
    UnprocessedKeys
        Keys were still unprocessed after the last attempt (code ``UNAVAILABLE``): an item
        not read is not an absent item. The exception's ``rows`` holds what was read.
        Other errors (``ClientError``, ``BotoCoreError``) are the caller's too.
    """
    from pipeline import aws

    if attempts < 1:
        raise ValueError("attempts must be at least 1")
    draw = (rng or random).uniform
    ddb = aws.client("dynamodb")
    rows: list[dict[str, Any]] = []
    for start in range(0, len(keys), BATCH_GET_KEYS):
        spec: dict[str, Any] = {
            "Keys": keys[start : start + BATCH_GET_KEYS],
            "ProjectionExpression": projection,
            "ConsistentRead": consistent,
        }
        if names:
            spec["ExpressionAttributeNames"] = names
        request: dict[str, Any] = {table: spec}
        made = 0
        for attempt in range(attempts):
            if attempt:
                delay = draw(0, min(BATCH_GET_MAX_DELAY, BATCH_GET_BASE_DELAY * 2 ** (attempt - 1)))
                left = aws.remaining()
                if left is not None and delay + aws.ATTEMPT_SECONDS >= left:
                    break  # the next attempt could not be sent after the wait
                sleep(delay)
            resp = ddb.batch_get_item(RequestItems=request)
            made += 1
            rows.extend(resp.get("Responses", {}).get(table, []))
            request = resp.get("UnprocessedKeys") or {}
            if not request:
                break
        if request:
            left_keys = sum(len(spec.get("Keys", [])) for spec in request.values())
            raise UnprocessedKeys(
                f"BatchGetItem left {left_keys} of {len(keys)} keys of {table} unprocessed "
                f"after {made} attempts",
                rows=rows,
            )
    return rows


def scan_pages(
    table: str,
    *,
    segment: int = 0,
    segments: int = 1,
    attributes: tuple[str, ...] | None = None,
) -> Iterator[list[dict[str, Any]]]:
    """The items of one segment of a (parallel) scan of ``table``, a page at a time, in
    DynamoDB JSON; only ``attributes`` when given (each a placeholder: ``status`` and ``size``
    are reserved words)."""
    from pipeline import aws

    request: dict[str, Any] = {"TableName": table, "Segment": segment, "TotalSegments": segments}
    if attributes:
        aliases = {f"#a{i}": name for i, name in enumerate(attributes)}
        request["ProjectionExpression"] = ", ".join(aliases)
        request["ExpressionAttributeNames"] = aliases
    ddb = aws.client("dynamodb")
    while True:
        page = ddb.scan(**request)
        yield page.get("Items", [])
        if "LastEvaluatedKey" not in page:
            return
        request["ExclusiveStartKey"] = page["LastEvaluatedKey"]


#: The DLQ ledger's key: (object key, event order); see :data:`pipeline.names.ORDER_ATTRIBUTE`.
LEDGER_KEY = (TABLE_KEY, ORDER_ATTRIBUTE)


def local_ledger_definition(table_name: str) -> dict[str, object]:
    """``CreateTable`` arguments for the DLQ ledger (the local stack uses this)."""
    return {
        "TableName": table_name,
        "BillingMode": "PAY_PER_REQUEST",
        "KeySchema": [
            {"AttributeName": LEDGER_KEY[0], "KeyType": "HASH"},
            {"AttributeName": LEDGER_KEY[1], "KeyType": "RANGE"},
        ],
        "AttributeDefinitions": [{"AttributeName": a, "AttributeType": "S"} for a in LEDGER_KEY],
        "SSESpecification": {"Enabled": True},
    }


def local_table_definition(table_name: str) -> dict[str, object]:
    """``CreateTable`` arguments for the table (the local stack uses this)."""
    attrs = {TABLE_KEY}
    for g in GSIS:
        attrs.add(g.partition_key)
        if g.sort_key:
            attrs.add(g.sort_key)
    indexes = []
    for g in GSIS:
        schema = [{"AttributeName": g.partition_key, "KeyType": "HASH"}]
        if g.sort_key:
            schema.append({"AttributeName": g.sort_key, "KeyType": "RANGE"})
        indexes.append(
            {
                "IndexName": g.name,
                "KeySchema": schema,
                "Projection": {"ProjectionType": "INCLUDE", "NonKeyAttributes": list(g.include)},
            }
        )
    return {
        "TableName": table_name,
        "BillingMode": "PAY_PER_REQUEST",
        "KeySchema": [{"AttributeName": TABLE_KEY, "KeyType": "HASH"}],
        "AttributeDefinitions": [{"AttributeName": a, "AttributeType": "S"} for a in sorted(attrs)],
        "GlobalSecondaryIndexes": indexes,
        "SSESpecification": {"Enabled": True},
    }
