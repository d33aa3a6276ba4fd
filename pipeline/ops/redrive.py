"""The dead-letter queue: read every message, group them, and redrive them.

The DLQ holds two shapes of message (docs/workflow.md, Guarantees):

* **v1 messages** (``dicom-pipeline/dlq/v1``, DESIGN.md): one coded failure, its S3 reference
  and the original S3 event record; the workflow noted each in the DLQ ledger;
* **raw S3 notifications** (``{"Records": [...]}``): what the ingest queue's own redrive moves
  after a whole execution failed three times. They carry no code (:data:`UNKNOWN`).

:func:`read_dlq` receives every message with a visibility timeout long enough for the work
that follows and keeps the receipt handles: the caller then deletes an entry (after its event
was re-sent) or gives it back with :func:`release`. :func:`list_dlq` reads and releases at
once (what ``dicom-pipeline dlq list`` and a notebook's overview need).

:func:`redrive` re-sends ``{"Records": [record]}`` to the ingest queue for each selected entry,
in this order per entry: remove its DLQ ledger entry (so the re-sent event is reported again if
it fails again), send, and delete the DLQ message only after the send succeeded. So a crash
mid-way loses nothing (an entry not deleted is still in the DLQ), and a rerun sends nothing
twice that is already indexed: an entry whose key's table record has an ``event_order`` at or
above the entry's was applied (by this event or a newer one) and is deleted without a send.

**No SQS message move task.** ``StartMessageMoveTask`` moves every message of the DLQ back to
the ingest queue unchanged: it cannot filter, cannot skip what is already indexed, does not
remove ledger entries (so the workflow would skip the re-sent events as ``already_in_dlq``),
and a v1 body is not an S3 notification (the workflow would report it as ``MALFORMED``). It
would be right only for a DLQ holding nothing but raw notifications with no ledger entries,
which cannot be known without reading every message first; so :func:`redrive` never starts
one, on AWS or locally (where moto lacks it), and works message by message (in SQS batches of
ten), which is ample for a DLQ that only holds failures.

Limits: SQS allows 120,000 in-flight messages per standard queue; a DLQ larger than that is
read up to the limit (a warning is logged) and the rest is left for the next run.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from pipeline import aws
from pipeline.names import ORDER_ATTRIBUTE, ORTHANC_PREFIX, TABLE_KEY
from pipeline.ops.target import Target
from pipeline.workflow.dlq import DLQ_SCHEMA, failure_order, forget_reported, record_events
from pipeline.workflow.events import EventRecord, split_batch
from pipeline.workflow.table import batch_get

__all__ = [
    "DEFAULT_VISIBILITY_TIMEOUT",
    "UNKNOWN",
    "DlqEntry",
    "RedriveError",
    "RedriveResult",
    "delete",
    "group",
    "key_prefix",
    "list_dlq",
    "read_dlq",
    "redrive",
    "release",
    "send_bodies",
    "stored_orders",
]

log = logging.getLogger(__name__)

#: The code of a message that is not a v1 message (a raw S3 notification, or anything else).
UNKNOWN = "UNKNOWN"
#: How long read messages stay invisible to others: long enough to finish a redrive.
DEFAULT_VISIBILITY_TIMEOUT = 900
#: Long polling on AWS for the receive that finds the queue empty (short polling samples only
#: some of SQS's servers, so an empty answer would not mean an empty queue). The local stack's
#: moto answers exactly: no wait there.
AWS_EMPTY_WAIT_SECONDS = 1
#: SQS's batch size for SendMessageBatch, DeleteMessageBatch and ChangeMessageVisibilityBatch.
_SQS_BATCH = 10
#: DynamoDB's BatchGetItem limit.

Progress = Callable[[int, int | None], None]


class RedriveError(Exception):
    """The redrive cannot be done safely (its message says why, in one line)."""


def key_prefix(key: str | None) -> str:
    """The prefix an entry is grouped by: the key's first path segment, else 2 characters,
    below Orthanc's prefix.

    Orthanc's S3 plugin writes flat keys under Orthanc's prefix
    (:data:`pipeline.names.ORTHANC_PREFIX`), ``orthanc/<uuid>.dcm``, whose only structure is
    the UUID's random hex digits: they group by the prefix and the first two
    (``orthanc/7c2e….dcm`` → ``orthanc/7c``), 256 groups of about equal size that
    ``--key-prefix`` can redrive one at a time, where grouping by the first segment would give
    one group for all. Other keys with a ``/`` group by their first segment (with the slash):
    ``studies/a/b.dcm`` → ``studies/``; keys without one by their first two characters. No key
    (a message that holds no usable record): ``""``.

    Examples
    --------
    >>> key_prefix("orthanc/7c2e9a41-0d3b.dcm"), key_prefix("studies/a/b.dcm")
    ('orthanc/7c', 'studies/')
    >>> key_prefix("7c2e9a41-0d3b.dcm"), key_prefix(None)
    ('7c', '')
    """
    if not key:
        return ""
    below = ORTHANC_PREFIX if key.startswith(ORTHANC_PREFIX) else ""
    rest = key[len(below) :]
    head, slash, _ = rest.partition("/")
    return below + (head + slash if slash else rest[:2])


@dataclass
class DlqEntry:
    """One DLQ message, either shape.

    Attributes
    ----------
    message_id, receipt_handle, queue_url:
        The SQS message, the handle of this read (valid until the visibility timeout), and
        the DLQ it came from.
    code:
        The v1 message's failure code; :data:`UNKNOWN` for a raw notification.
    key, bucket, sequencer, event_order:
        Of the (first) event the message holds: the stored (URL-decoded) key and the event's
        order token (:attr:`pipeline.workflow.events.EventRecord.order`, the DLQ ledger's
        sort key). ``None`` where the message holds no usable event.
    records:
        The S3 event records: a v1 message's ``record``, or every record of a raw
        notification (one entry per message, never split, so that it is deleted as one).
    failed_at:
        The v1 message's ``failed_at``; ``None`` for a raw notification (SQS keeps its
        original ``SentTimestamp``, :attr:`sent_at`, which is not the time it failed).
    raw:
        ``True`` unless the body is a v1 message.
    error_message:
        The v1 message's ``error.message`` (no element values).
    events:
        The records classified as the workflow classifies them (create, delete, skip, fail).
    """

    message_id: str
    receipt_handle: str
    queue_url: str
    code: str
    key: str | None
    bucket: str | None
    sequencer: str | None
    event_order: str | None
    records: list[Any]
    failed_at: str | None
    raw: bool
    error_message: str | None = None
    sent_at: str | None = None
    receive_count: int = 0
    body: str = field(default="", repr=False)
    events: list[EventRecord] = field(default_factory=list, repr=False)

    @property
    def record(self) -> dict[str, Any] | None:
        """The first S3 event record, or ``None``."""
        first = self.records[0] if self.records else None
        return first if isinstance(first, dict) else None

    @property
    def keys(self) -> list[str]:
        """Every key the message's records name (stored, URL-decoded form)."""
        found = [ev.key for ev in self.events if ev.key]
        if self.key and self.key not in found:
            found.insert(0, self.key)
        return found

    @property
    def prefix(self) -> str:
        """:func:`key_prefix` of :attr:`key`."""
        return key_prefix(self.key)

    def summary(self) -> dict[str, Any]:
        """The entry as plain JSON, without its records or receipt handle."""
        return {
            "message_id": self.message_id,
            "code": self.code,
            "raw": self.raw,
            "key": self.key,
            "bucket": self.bucket,
            "event_order": self.event_order,
            "records": len(self.records),
            "failed_at": self.failed_at,
            "sent_at": self.sent_at,
            "error": self.error_message,
        }


def _sent_at(attributes: dict[str, Any]) -> str | None:
    try:
        millis = int(attributes["SentTimestamp"])
    except (KeyError, TypeError, ValueError):
        return None
    return datetime.fromtimestamp(millis / 1000, UTC).isoformat(timespec="milliseconds")


def _member(body: dict[str, Any], name: str) -> dict[str, Any]:
    value = body.get(name)
    return value if isinstance(value, dict) else {}


def _entry(message: dict[str, Any], queue_url: str) -> DlqEntry:
    """Decode one received SQS message into a :class:`DlqEntry`."""
    message_id = str(message["MessageId"])
    text = str(message.get("Body") or "")
    attributes = message.get("Attributes") or {}
    try:
        body: Any = json.loads(text)
    except ValueError:
        body = None
    v1 = isinstance(body, dict) and body.get("schema") == DLQ_SCHEMA
    s3: dict[str, Any] = {}
    if v1:
        error: dict[str, Any] = _member(body, "error")
        s3 = _member(body, "s3")
        record = body.get("record")
        records: list[Any] = [record] if isinstance(record, dict) else []
        events = record_events(message_id, record)
        code = str(error.get("code") or UNKNOWN)
        failed_at = body.get("failed_at")
        error_message = error.get("message")
    else:
        raw_records = body.get("Records") if isinstance(body, dict) else None
        records = list(raw_records) if isinstance(raw_records, list) else []
        events = split_batch([{"messageId": message_id, "body": text}])
        code, failed_at, error_message = UNKNOWN, None, None
    applicable = [ev for ev in events if ev.kind in ("create", "delete")]
    first = applicable[0] if applicable else (events[0] if events else None)
    return DlqEntry(
        message_id=message_id,
        receipt_handle=str(message["ReceiptHandle"]),
        queue_url=queue_url,
        code=code,
        key=s3.get("key") or (first.key if first else None),
        bucket=s3.get("bucket") or (first.bucket if first else None),
        sequencer=s3.get("sequencer") or (first.sequencer if first else None),
        event_order=failure_order(events),
        records=records,
        failed_at=failed_at if isinstance(failed_at, str) else None,
        raw=not v1,
        error_message=error_message if isinstance(error_message, str) else None,
        sent_at=_sent_at(attributes),
        receive_count=int(attributes.get("ApproximateReceiveCount", 0) or 0),
        body=text,
        events=events,
    )


def read_dlq(
    target: Target,
    *,
    visibility_timeout: int = DEFAULT_VISIBILITY_TIMEOUT,
    wait_seconds: int | None = None,
) -> list[DlqEntry]:
    """Receive every message of the target's DLQ, keeping each one's receipt handle.

    The messages stay invisible to other readers for ``visibility_timeout`` seconds: delete
    each one whose event was re-sent (:func:`delete`) and give the others back
    (:func:`release`); what is neither comes back by itself when the timeout ends, so nothing
    is ever lost. A message SQS delivers twice is one entry (the newer handle).

    Parameters
    ----------
    target:
        The deployment (its ``dlq_url``).
    visibility_timeout:
        Seconds (at most 43,200, SQS's limit).
    wait_seconds:
        Long polling of each receive; by default none on the local stack and
        :data:`AWS_EMPTY_WAIT_SECONDS` on AWS, so that an empty answer means an empty queue.

    Returns
    -------
    list of DlqEntry
        In the order received (SQS gives no order).

    Examples
    --------
    >>> entries = read_dlq(target)  # doctest: +SKIP
    >>> print(group(entries))  # doctest: +SKIP
    >>> release(entries)  # doctest: +SKIP
    """
    wait = (
        wait_seconds
        if wait_seconds is not None
        else (0 if target.local else AWS_EMPTY_WAIT_SECONDS)
    )
    sqs = aws.client("sqs")
    entries: dict[str, DlqEntry] = {}
    try:
        while True:
            try:
                resp = sqs.receive_message(
                    QueueUrl=target.dlq_url,
                    MaxNumberOfMessages=_SQS_BATCH,
                    VisibilityTimeout=visibility_timeout,
                    WaitTimeSeconds=wait,
                    AttributeNames=["SentTimestamp", "ApproximateReceiveCount"],
                )
            except ClientError as exc:
                if _error_code(exc) in {"OverLimit", "AWS.SimpleQueueService.OverLimit"}:
                    log.warning("DLQ read stopped at SQS's in-flight limit (%d)", len(entries))
                    break
                raise
            messages = resp.get("Messages", [])
            new = [m for m in messages if m["MessageId"] not in entries]
            for message in messages:
                entry = _entry(message, target.dlq_url)
                entries.pop(entry.message_id, None)
                entries[entry.message_id] = entry
            if not new:
                # Empty, or only messages read already (a visibility timeout shorter than the
                # read, or SQS's rare second delivery): every message has been seen.
                break
    except BaseException:
        release(entries.values())  # give back what was read before the failure
        raise
    return list(entries.values())


def list_dlq(target: Target) -> list[DlqEntry]:
    """Every DLQ message, read and released at once (their receipt handles are spent).

    What ``dicom-pipeline dlq list`` shows; changes nothing but the messages' receive counts.
    The messages are hidden only as long as the read needs (30 s plus a second per 50
    messages), so a list that is killed outright hides them briefly, not for a redrive's
    :data:`DEFAULT_VISIBILITY_TIMEOUT`.
    """
    attrs = aws.client("sqs").get_queue_attributes(
        QueueUrl=target.dlq_url, AttributeNames=["ApproximateNumberOfMessages"]
    )["Attributes"]
    waiting = int(attrs.get("ApproximateNumberOfMessages", 0))
    entries = read_dlq(target, visibility_timeout=min(43_200, 30 + waiting // 50))
    release(entries)
    return entries


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def release(entries: Iterable[DlqEntry]) -> int:
    """Make ``entries`` visible again at once (visibility timeout 0); returns how many.

    Best effort: a handle that expired meanwhile is logged and skipped (that message is
    visible already).
    """
    return _batch_by_queue(entries, "change_message_visibility_batch", {"VisibilityTimeout": 0})


def delete(entries: Iterable[DlqEntry]) -> int:
    """Delete ``entries`` from the DLQ; returns how many were deleted.

    Call it only for entries whose event was re-sent, or that need no resend. A failure is
    logged and leaves the message in the DLQ (a rerun skips it when its event is indexed).
    """
    return _batch_by_queue(entries, "delete_message_batch", {})


def _batch_by_queue(entries: Iterable[DlqEntry], operation: str, extra: dict[str, Any]) -> int:
    by_queue: dict[str, list[DlqEntry]] = {}
    for entry in entries:
        by_queue.setdefault(entry.queue_url, []).append(entry)
    done = 0
    sqs = aws.client("sqs")
    for queue_url, queue_entries in by_queue.items():
        for chunk in _chunks(queue_entries, _SQS_BATCH):
            request = [
                {"Id": str(i), "ReceiptHandle": e.receipt_handle, **extra}
                for i, e in enumerate(chunk)
            ]
            try:
                resp = getattr(sqs, operation)(QueueUrl=queue_url, Entries=request)
            except (ClientError, BotoCoreError) as exc:
                log.warning("%s of %d DLQ messages failed: %s", operation, len(chunk), exc)
                continue
            for failure in resp.get("Failed", []):
                log.warning("%s failed for one DLQ message: %s", operation, failure.get("Code"))
            done += len(resp.get("Successful", []))
    return done


def group(entries: Iterable[DlqEntry]) -> list[dict[str, Any]]:
    """Count entries by code and key prefix (:func:`key_prefix`).

    Returns
    -------
    list of dict
        ``{"code", "prefix", "count", "raw"}`` (``raw``: how many of them are raw
        notifications), the largest groups first.

    Examples
    --------
    >>> e = DlqEntry("m", "h", "q", "NOT_DICOM", "ab12.dcm", "b", None, "T1", [], None, False)
    >>> group([e, e])
    [{'code': 'NOT_DICOM', 'prefix': 'ab', 'count': 2, 'raw': 0}]
    """
    counts: dict[tuple[str, str], list[int]] = {}
    for entry in entries:
        tally = counts.setdefault((entry.code, entry.prefix), [0, 0])
        tally[0] += 1
        tally[1] += int(entry.raw)
    rows = [
        {"code": code, "prefix": prefix, "count": n, "raw": raw}
        for (code, prefix), (n, raw) in counts.items()
    ]
    return sorted(rows, key=lambda r: (-r["count"], r["code"], r["prefix"]))


def stored_orders(table: str, keys: Iterable[str]) -> dict[str, str]:
    """The ``event_order`` the table holds for each of ``keys`` (strongly consistent reads);
    keys without a record are absent.

    Raises :class:`pipeline.errors.UnprocessedKeys` when DynamoDB left keys unread after
    :func:`pipeline.workflow.table.batch_get`'s backoff: read as absent, they would be
    re-sent although indexed."""
    rows = batch_get(
        table,
        [{TABLE_KEY: {"S": k}} for k in sorted(set(keys))],
        f"{TABLE_KEY}, {ORDER_ATTRIBUTE}",
        consistent=True,
    )
    return {r[TABLE_KEY]["S"]: r[ORDER_ATTRIBUTE]["S"] for r in rows if ORDER_ATTRIBUTE in r}


def send_bodies(queue_url: str, bodies: Sequence[str]) -> list[str | None]:
    """Send each body as its own message (SendMessageBatch, ten at a time).

    Returns
    -------
    list of (str or None)
        Per body, in order: ``None`` when SQS accepted it, else the reason it did not.
    """
    sqs = aws.client("sqs")
    errors: list[str | None] = []
    for chunk in _chunks(bodies, _SQS_BATCH):
        outcome: list[str | None] = ["not acknowledged"] * len(chunk)
        try:
            resp = sqs.send_message_batch(
                QueueUrl=queue_url,
                Entries=[{"Id": str(i), "MessageBody": b} for i, b in enumerate(chunk)],
            )
        except (ClientError, BotoCoreError) as exc:
            reason = _error_code(exc) if isinstance(exc, ClientError) else type(exc).__name__
            outcome = [reason or type(exc).__name__] * len(chunk)
        else:
            for ok in resp.get("Successful", []):
                outcome[int(ok["Id"])] = None
            for failed in resp.get("Failed", []):
                outcome[int(failed["Id"])] = str(failed.get("Code") or "failed")
        errors.extend(outcome)
    return errors


@dataclass
class RedriveResult:
    """What :func:`redrive` did (or, with ``dry_run``, would do).

    ``entries`` holds one dict per selected entry: ``message_id``, ``code``, ``key``,
    ``raw``, ``decision`` and ``done``. Decisions: ``send`` (re-send its records),
    ``already_indexed`` (the table holds this event or a newer one: delete without a send),
    ``duplicate`` (another entry of this run re-sends the same event: delete without a send),
    ``nothing_to_send`` (a test event, keys the workflow skips: delete), ``unsendable`` (no
    record, or one the workflow cannot read: kept in the DLQ for a person to look at).
    ``done`` is true once the entry's records were sent (if any) and its message deleted.
    """

    dry_run: bool
    read: int = 0
    selected: int = 0
    sent: int = 0
    already_indexed: int = 0
    deleted: int = 0
    kept: int = 0
    failed: int = 0
    not_deleted: int = 0
    released: int = 0
    entries: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No send failed."""
        return self.failed == 0

    def to_json(self) -> dict[str, Any]:
        """The counts as plain JSON (without the per-entry list)."""
        return {
            "dry_run": self.dry_run,
            "read": self.read,
            "selected": self.selected,
            "sent": self.sent,
            "already_indexed": self.already_indexed,
            "deleted": self.deleted,
            "kept": self.kept,
            "failed": self.failed,
            "not_deleted": self.not_deleted,
            "released": self.released,
        }


def _selected(entry: DlqEntry, code: str | None, prefix: str | None) -> bool:
    if code is not None and entry.code != code.upper():
        return False
    return prefix is None or any(k.startswith(prefix) for k in entry.keys)


@dataclass
class _Plan:
    entry: DlqEntry
    decision: str
    to_send: list[EventRecord]
    done: bool = False


def _decide(
    entry: DlqEntry, stored: dict[str, str], claimed: set[tuple[str, str]]
) -> tuple[str, list[EventRecord]]:
    """Which of the entry's records to re-send, and the entry's decision."""
    if not entry.events or any(ev.kind == "fail" for ev in entry.events):
        return "unsendable", []
    to_send: list[EventRecord] = []
    indexed = duplicate = 0
    for ev in entry.events:
        if ev.kind not in ("create", "delete"):
            continue  # a test event, a key the workflow skips: nothing to redrive
        assert ev.key is not None
        held = stored.get(ev.key)
        if held is not None and held >= ev.order:
            indexed += 1
        elif (ev.key, ev.order) in claimed:
            duplicate += 1
        else:
            claimed.add((ev.key, ev.order))
            to_send.append(ev)
    if to_send:
        return "send", to_send
    if indexed:
        return "already_indexed", []
    return ("duplicate" if duplicate else "nothing_to_send"), []


def redrive(
    target: Target,
    *,
    code: str | None = None,
    key_prefix: str | None = None,
    dry_run: bool = False,
    progress: Progress | None = None,
    visibility_timeout: int = DEFAULT_VISIBILITY_TIMEOUT,
) -> RedriveResult:
    """Re-send the DLQ's events to the ingest queue (see the module docstring).

    Parameters
    ----------
    target:
        The deployment: its DLQ, ingest queue, metadata table and DLQ ledger.
    code:
        Only entries with this failure code (``UNKNOWN``: the raw notifications).
    key_prefix:
        Only entries with a key starting with this (any string, not only a group's prefix).
    dry_run:
        Change nothing; the result says what would be sent.
    progress:
        Called as ``progress(done, total)`` after each selected entry.
    visibility_timeout:
        How long the read messages stay hidden while the redrive runs.

    Returns
    -------
    RedriveResult
        ``ok`` is false when any send failed (those messages stay in the DLQ; run again).

    Raises
    ------
    UnprocessedKeys
        The table's records of the selected keys could not all be read (nothing was sent;
        every message read is released).
    RedriveError
        The target names no DLQ ledger table (the workflow would skip the re-sent events as
        ``already_in_dlq`` and the failures would vanish), and something is to be sent.
    """
    result = RedriveResult(dry_run=dry_run)
    entries = read_dlq(target, visibility_timeout=visibility_timeout)
    deleted: set[str] = set()
    try:
        result.read = len(entries)
        chosen = [e for e in entries if _selected(e, code, key_prefix)]
        result.selected = len(chosen)
        keys = {ev.key for e in chosen for ev in e.events if ev.key and ev.kind != "fail"}
        stored = stored_orders(target.table, keys)
        claimed: set[tuple[str, str]] = set()
        plans = [_Plan(e, *_decide(e, stored, claimed)) for e in chosen]
        if not dry_run and target.ledger_table is None and any(p.to_send for p in plans):
            raise RedriveError(
                "the target names no DLQ ledger table (ledger_table / LedgerTable): the "
                "workflow would skip re-sent events as already in the DLQ"
            )
        done = 0
        for chunk in _chunks(plans, _SQS_BATCH):
            if not dry_run:
                deleted |= _apply(target, chunk)
            for plan in chunk:
                _count(result, plan, dry_run)
                done += 1
                if progress is not None:
                    progress(done, len(plans))
    finally:
        result.released = release(e for e in entries if e.message_id not in deleted)
    return result


def _apply(target: Target, plans: Sequence[_Plan]) -> set[str]:
    """Forget, send and delete for one chunk of plans; returns the message ids deleted."""
    sending: list[tuple[_Plan, EventRecord]] = []
    failed: set[int] = set()
    for plan in plans:
        if plan.decision != "send":
            continue
        for ev in plan.to_send:
            assert ev.key is not None and target.ledger_table is not None
            try:
                forget_reported(target.ledger_table, ev.key, ev.order)
            except (ClientError, BotoCoreError) as exc:
                log.warning("DLQ ledger entry not removed: %s", type(exc).__name__)
                failed.add(id(plan))
                break
            sending.append((plan, ev))
    sending = [(p, ev) for p, ev in sending if id(p) not in failed]
    bodies = [json.dumps({"Records": [ev.record]}) for _, ev in sending]
    for (plan, _), error in zip(sending, send_bodies(target.queue_url, bodies), strict=True):
        if error is not None:
            log.warning("re-send of a DLQ message failed: %s", error)
            failed.add(id(plan))
    removable = [
        p
        for p in plans
        if p.decision in ("send", "already_indexed", "duplicate", "nothing_to_send")
        and id(p) not in failed
    ]
    for plan in plans:
        if plan.decision == "send" and id(plan) in failed:
            plan.decision = "failed"
    _delete_plans(removable)
    return {p.entry.message_id for p in removable if p.done}


def _delete_plans(plans: Sequence[_Plan]) -> None:
    sqs = aws.client("sqs")
    for chunk in _chunks(plans, _SQS_BATCH):
        if not chunk:
            continue
        request = [
            {"Id": str(i), "ReceiptHandle": p.entry.receipt_handle} for i, p in enumerate(chunk)
        ]
        try:
            resp = sqs.delete_message_batch(QueueUrl=chunk[0].entry.queue_url, Entries=request)
        except (ClientError, BotoCoreError) as exc:
            log.warning("DLQ messages not deleted: %s", type(exc).__name__)
            continue
        for ok in resp.get("Successful", []):
            chunk[int(ok["Id"])].done = True


def _count(result: RedriveResult, plan: _Plan, dry_run: bool) -> None:
    entry = plan.entry
    result.entries.append(
        {
            "message_id": entry.message_id,
            "code": entry.code,
            "key": entry.key,
            "raw": entry.raw,
            "decision": plan.decision,
            "records": len(plan.to_send),
            "done": plan.done,
        }
    )
    if plan.decision == "failed":
        result.failed += 1
        return
    if plan.decision == "unsendable":
        result.kept += 1
        return
    if plan.decision == "send":
        result.sent += len(plan.to_send)
    elif plan.decision == "already_indexed":
        result.already_indexed += 1
    if dry_run:
        return
    if plan.done:
        result.deleted += 1
    else:
        result.not_deleted += 1
