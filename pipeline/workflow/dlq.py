"""DLQ messages, schema ``dicom-pipeline/dlq/v1`` (DESIGN.md), and the DLQ ledger.

The ledger is a small table with one item per (object key, event order) the workflow has sent
to the DLQ. The parse step reads it, so an event that is delivered again (a redelivered batch,
SQS's at-least-once delivery) sends no second message; redrive removes the entry before it
re-sends the event, so a redriven event that fails again is reported again.

Before it sends a parse failure, the workflow claims the entry (a conditional put naming its
SQS message in :data:`~pipeline.names.CLAIM_ATTRIBUTE`) and after the send it writes the final
entry, without the claim. Of two deliveries of one event running at once, one claims and
sends; the other finds the claim and sends nothing. Only the claiming message may claim again
(it returns to the queue when its send fails), so a claim never strands a failure. A claim
carries the code and time as a final entry does: readers that count failures (the audit,
reindex) read both alike.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from pipeline import aws
from pipeline.errors import UnprocessedKeys
from pipeline.names import (
    CLAIM_ATTRIBUTE,
    DLQ_RETENTION_DAYS,
    ORDER_ATTRIBUTE,
    TABLE_KEY,
    TTL_ATTRIBUTE,
)
from pipeline.workflow.events import EventRecord, split_batch
from pipeline.workflow.table import batch_get

__all__ = [
    "DLQ_SCHEMA",
    "dlq_message",
    "failure_order",
    "forget_reported",
    "latest_reported",
    "ledger_key",
    "record_events",
    "Reported",
    "reported_events",
    "s3_ref",
]

log = logging.getLogger(__name__)
DLQ_SCHEMA = "dicom-pipeline/dlq/v1"


def record_events(message_id: str, record: object) -> list[EventRecord]:
    """What the workflow makes of a v1 DLQ message's original S3 event ``record``: its
    classified events (none when the message holds no record).

    Redrive re-sends these; with :func:`failure_order` they give the order the failure was
    noted under in the ledger.
    """
    if not isinstance(record, dict):
        return []
    body = json.dumps({"Records": [record]})
    return split_batch([{"messageId": message_id, "body": body}])


def failure_order(events: Sequence[EventRecord]) -> str | None:
    """The event order a DLQ message's failure was noted under in the ledger: the first
    create or delete event's :attr:`~pipeline.workflow.events.EventRecord.order` (for a
    reindex record, ``after`` + ``R`` + its time, not its plain event time); ``None`` when
    no event applies.

    The one rule redrive and the audit both use, so a v1 message pairs with its ledger
    entry whichever reads it.

    Examples
    --------
    >>> record = {"eventName": "ObjectCreated:Reindex", "eventTime": "2026-01-01T00:00:00.000Z",
    ...           "s3": {"bucket": {"name": "b"}, "object": {"key": "a.dcm"}},
    ...           "dicomPipelineReindex": {"after": "T1"}}
    >>> failure_order(record_events("m", record))
    'T1R20260101000000000000'
    """
    applicable = [ev for ev in events if ev.kind in ("create", "delete")]
    return applicable[0].order if applicable else None


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


def ledger_key(key: str, order: str, *, now: float) -> dict[str, Any]:
    """The ledger item's key and expiry in DynamoDB JSON; the workflow adds code and time.

    Entries expire with the DLQ's messages (:data:`pipeline.names.DLQ_RETENTION_DAYS`).

    Examples
    --------
    >>> ledger_key("a.dcm", "T1", now=0)["expires_at"]
    {'N': '1209600'}
    """
    expires = Decimal(int(now) + DLQ_RETENTION_DAYS * 86400)
    return {
        TABLE_KEY: {"S": key},
        ORDER_ATTRIBUTE: {"S": order},
        TTL_ATTRIBUTE: {"N": str(expires)},
    }


@dataclass
class Reported:
    """What the ledger says of a batch's events, as (key, order) pairs.

    Attributes
    ----------
    sent:
        Events whose DLQ message was sent (final entries).
    claims:
        Events a delivery has claimed (it is sending, or sent and could not write the final
        entry), with the SQS message ID of that delivery.
    """

    sent: set[tuple[str, str]] = field(default_factory=set)
    claims: dict[tuple[str, str], str] = field(default_factory=dict)

    def by_another(self, event: tuple[str, str], message_id: str | None) -> bool:
        """Whether ``event`` is in the DLQ, or being sent by a delivery other than
        ``message_id``: either way this delivery must not send it.

        Examples
        --------
        >>> r = Reported(sent={("a.dcm", "1")}, claims={("b.dcm", "1"): "m1"})
        >>> r.by_another(("a.dcm", "1"), "m1"), r.by_another(("b.dcm", "1"), "m1")
        (True, False)
        >>> r.by_another(("b.dcm", "1"), "m2"), r.by_another(("c.dcm", "1"), "m2")
        (True, False)
        """
        if event in self.sent:
            return True
        owner = self.claims.get(event)
        return owner is not None and owner != message_id


def reported_events(table: str, events: Iterable[tuple[str, str]]) -> Reported:
    """What the ledger holds of (key, order) pairs: sent to the DLQ, or claimed.

    Best effort: when the ledger cannot be read, nothing is reported; the workflow's
    conditional claim still keeps a second delivery from sending a second message.
    """
    keys = [{TABLE_KEY: {"S": k}, ORDER_ATTRIBUTE: {"S": o}} for k, o in sorted(set(events))]
    found = Reported()
    try:
        rows = batch_get(table, keys, f"{TABLE_KEY}, {ORDER_ATTRIBUTE}, {CLAIM_ATTRIBUTE}")
    except UnprocessedKeys as exc:
        log.warning("DLQ ledger check partial: %s", exc.message)
        rows = exc.rows
    except (ClientError, BotoCoreError) as exc:
        log.warning("DLQ ledger check skipped: %s", type(exc).__name__)
        return found
    for row in rows:
        event = (row[TABLE_KEY]["S"], row[ORDER_ATTRIBUTE]["S"])
        if CLAIM_ATTRIBUTE in row:
            found.claims[event] = row[CLAIM_ATTRIBUTE]["S"]
        else:
            found.sent.add(event)
    return found


def latest_reported(table: str, keys: Iterable[str]) -> dict[str, str]:
    """The newest event order the ledger holds for each of ``keys``: the latest failure of
    each key still reported in the DLQ (redrive removes an entry; entries expire with the
    DLQ's retention). Keys without an entry are absent.

    One ``Query`` per key (the ledger's sort key is the event order: newest first, one
    item). Errors are the caller's: a reindex that cannot tell must not guess.
    """
    ddb = aws.client("dynamodb")
    out: dict[str, str] = {}
    for key in sorted(set(keys)):
        page = ddb.query(
            TableName=table,
            KeyConditionExpression="#k = :k",
            ExpressionAttributeNames={"#k": TABLE_KEY, "#o": ORDER_ATTRIBUTE},
            ExpressionAttributeValues={":k": {"S": key}},
            ProjectionExpression="#o",
            ScanIndexForward=False,
            Limit=1,
        )
        items = page.get("Items") or []
        if items:
            out[key] = items[0][ORDER_ATTRIBUTE]["S"]
    return out


def forget_reported(table: str, key: str, order: str) -> None:
    """Remove one ledger entry (redrive calls this before it re-sends the event)."""
    aws.client("dynamodb").delete_item(
        TableName=table, Key={TABLE_KEY: {"S": key}, ORDER_ATTRIBUTE: {"S": order}}
    )
