"""The audit's DLQ source: a peek at every message, none lost, none deleted.

Each message is received with a visibility timeout long enough for the whole peek and made
visible again at once (:func:`peek_dlq`); a v1 message is one failure with its code, a raw S3
notification (the ingest queue's own redrive) one failure per ``.dcm`` record with code
:data:`~pipeline.ops.audit.report.UNKNOWN_CODE`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from pipeline import aws
from pipeline.ops.audit.progress import Phase
from pipeline.ops.audit.report import UNKNOWN_CODE
from pipeline.ops.audit.sources import Failure
from pipeline.workflow.dlq import DLQ_SCHEMA, failure_order, record_events
from pipeline.workflow.events import order_token, split_batch

__all__ = ["DLQ_WAIT_SECONDS", "DlqPeek", "peek_dlq"]

#: Long polling of the DLQ peek: an empty answer after this wait means no visible message.
DLQ_WAIT_SECONDS = 1


@dataclass
class DlqPeek:
    """What the peek found: failures by key, and the messages counted by kind.

    ``messages`` (all, once each), ``v1`` (v1 messages), ``raw`` (raw S3 notifications with a
    usable record), ``unreadable`` (naming no object), ``other_bucket`` (failures of another
    bucket, left out).
    """

    failures: dict[str, list[Failure]] = field(default_factory=dict)
    messages: int = 0
    v1: int = 0
    raw: int = 0
    unreadable: int = 0
    other_bucket: int = 0

    def add(self, key: str, failure: Failure) -> None:
        """Add ``failure`` to the key's failures."""
        self.failures.setdefault(key, []).append(failure)


def _read_message(body: str, message_id: str, bucket: str, peek: DlqPeek) -> None:
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
        # The order redrive and the ledger use (a reindex record's marker included); a
        # message without a usable record falls back to its s3 reference's sequencer.
        order = failure_order(record_events(message_id, original))
        if order is None:
            record: dict[str, Any] = original if isinstance(original, dict) else {}
            order = order_token(s3.get("sequencer"), record.get("eventTime"))
        code = str((doc.get("error") or {}).get("code") or UNKNOWN_CODE)
        peek.v1 += 1
        peek.add(key, Failure(code, "dlq", doc.get("failed_at"), order))
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
        peek.add(e.key, Failure(UNKNOWN_CODE, "dlq-raw", None, e.order))


def peek_dlq(queue_url: str, bucket: str, phase: Phase) -> DlqPeek:
    """Read every DLQ message without losing one.

    Messages are received with a visibility timeout long enough for the whole peek (so each
    is seen once), then made visible again (``ChangeMessageVisibility`` 0), also when the peek
    is interrupted. A message whose timeout ran out during a very long peek is received
    again: messages are counted once, by ID. The DLQ has no redrive policy, so receiving
    changes nothing but the messages' receive counts.

    Parameters
    ----------
    queue_url:
        The DLQ.
    bucket:
        The audited bucket: failures of another one are counted, left out.
    phase:
        Its total is SQS's approximate count; counts the messages read.
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
    peek = DlqPeek()
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
