"""Reindex: re-parse objects already in S3 without ever overwriting a newer record.

For each ``.dcm`` object (listed under a prefix: Orthanc's, :data:`pipeline.names.ORTHANC_PREFIX`,
unless another is given; ``""`` for the whole bucket) :func:`reindex` looks up its
record and sends a *synthetic* S3 ``ObjectCreated`` event for it to the ingest queue. The
event carries the stored record's ``event_order`` in its record's
:data:`~pipeline.workflow.events.REINDEX_MARKER` member, and the workflow then orders it by
:func:`~pipeline.workflow.events.reindex_order`: just above the stored record, below any newer
real event of the key. The workflow's stale-event pre-check and its conditional write
(``event_order < :order``) do the rest:

* a newer real event already applied → the reindex event is stale and skipped;
* a newer real event applied later → it replaces the reindexed record, as any newer event does;
* no record (never indexed, or its failure expired from the DLQ) → the reindex order sorts
  below every real token, so any real event of the key still wins.

The per-object logic is :func:`plan_reindex` (one ``BatchGetItem`` for up to 100 objects,
then one synthetic record per object to reindex): this process calls it for each page of the
listing; a Step Functions Distributed Map child (the CDK app's) calls :func:`enqueue_keys`
with its batch of keys from the S3 listing or the inventory manifest, which plans them the same
way and sends the records to the same ingest queue.

Both are paced by the same rule (:class:`Pacing`): before sending a chunk of events, read the
ingest queue's depth (``ApproximateNumberOfMessages`` + ``…NotVisible`` + ``…Delayed``) and wait
while it is above ``max_depth``, so a reindex of millions never floods the queue the pipe drains
at the parse function's bounded concurrency (docs/capacity.md). Waiting longer than
``max_wait_seconds`` stops: :func:`reindex` returns with ``resume_after`` (the last key it
handled; the listing is in key order, so ``start_after=resume_after`` resumes with nothing lost
or sent twice), :func:`enqueue_keys` raises :class:`QueueBusy` before sending anything.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote_plus

from pipeline import __version__, aws
from pipeline.names import DICOM_SUFFIX, ORDER_ATTRIBUTE, ORTHANC_PREFIX, TABLE_KEY
from pipeline.ops.redrive import send_bodies
from pipeline.ops.target import Target
from pipeline.workflow.dlq import latest_reported
from pipeline.workflow.events import REINDEX_MARKER
from pipeline.workflow.table import BATCH_GET_KEYS, batch_get

__all__ = [
    "DEFAULT_MAX_QUEUE_DEPTH",
    "DEFAULT_POLL_SECONDS",
    "EVENT_NAME",
    "EVENT_SOURCE",
    "ObjectRef",
    "Pacing",
    "QueueBusy",
    "ReindexPlan",
    "ReindexResult",
    "StoredRecord",
    "enqueue_keys",
    "known_failed",
    "needs_reindex",
    "plan_objects",
    "plan_reindex",
    "queue_depth",
    "reindex",
    "reindex_record",
    "stored_records",
    "wait_for_room",
]

#: The synthetic event's name: an ``ObjectCreated`` event, so the workflow indexes it.
EVENT_NAME = "ObjectCreated:Reindex"
#: The synthetic event's source (S3's own events say ``aws:s3``).
EVENT_SOURCE = "dicom-pipeline:reindex"

#: Hold back while the ingest queue holds more messages than this (visible, in flight and
#: delayed): twice what the parse function's default reserved concurrency (100) takes in one
#: round of Pipes batches (10 each), i.e. one round in flight and one waiting
#: (docs/capacity.md). The CDK app's context ``reindex_max_queue_depth`` overrides it.
DEFAULT_MAX_QUEUE_DEPTH = 2_000
#: How often a paced reindex reads the queue's depth again while it waits.
DEFAULT_POLL_SECONDS = 5.0

#: The queue attributes that together are its depth.
_DEPTH_ATTRIBUTES = (
    "ApproximateNumberOfMessages",
    "ApproximateNumberOfMessagesNotVisible",
    "ApproximateNumberOfMessagesDelayed",
)

Progress = Callable[[int, int | None], None]


class QueueBusy(Exception):
    """The ingest queue stayed above the pacing threshold for longer than allowed.

    Its message names only counts (no key, no DICOM value).
    """

    def __init__(self, depth: int, max_depth: int, waited: float) -> None:
        super().__init__(
            f"the ingest queue holds {depth} messages (more than {max_depth}) after waiting "
            f"{waited:.0f} s"
        )
        self.depth = depth
        self.max_depth = max_depth
        self.waited = waited


@dataclass(frozen=True)
class Pacing:
    """When a reindex holds back: while the ingest queue is deeper than ``max_depth``.

    Attributes
    ----------
    max_depth:
        Send only while the queue holds at most this many messages (visible, in flight and
        delayed: everything the pipe has still to finish).
    poll_seconds:
        How long to sleep between two reads of the depth.
    max_wait_seconds:
        Stop (raise :class:`QueueBusy`) after waiting this long for one chunk; ``None``
        waits as long as it takes.
    sleep, clock:
        ``time.sleep`` and ``time.monotonic``; tests pass fakes.
    """

    max_depth: int = DEFAULT_MAX_QUEUE_DEPTH
    poll_seconds: float = DEFAULT_POLL_SECONDS
    max_wait_seconds: float | None = None
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False)
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)

    def __post_init__(self) -> None:
        if self.max_depth < 1:
            raise ValueError("max_depth must be at least 1 (0 would never send)")
        if self.poll_seconds <= 0:
            raise ValueError("poll_seconds must be positive")


def queue_depth(queue_url: str) -> int:
    """The queue's approximate depth: visible, in-flight and delayed messages together."""
    attrs = (
        aws.client("sqs")
        .get_queue_attributes(QueueUrl=queue_url, AttributeNames=list(_DEPTH_ATTRIBUTES))
        .get("Attributes", {})
    )
    return sum(int(attrs.get(name, 0)) for name in _DEPTH_ATTRIBUTES)


def wait_for_room(queue_url: str, pacing: Pacing) -> float:
    """Wait until the queue holds at most ``pacing.max_depth`` messages.

    Returns
    -------
    float
        The seconds waited (0 when there was room at once).

    Raises
    ------
    QueueBusy
        The queue was still too deep after ``pacing.max_wait_seconds``.
    """
    start = pacing.clock()
    while True:
        depth = queue_depth(queue_url)
        waited = pacing.clock() - start
        if depth <= pacing.max_depth:
            return waited
        if pacing.max_wait_seconds is not None:
            left = pacing.max_wait_seconds - waited
            if left <= 0:
                raise QueueBusy(depth, pacing.max_depth, waited)
            pacing.sleep(min(pacing.poll_seconds, left))
        else:
            pacing.sleep(pacing.poll_seconds)


@dataclass(frozen=True)
class ObjectRef:
    """An object as a listing (or an inventory report) names it."""

    key: str
    size: int | None = None
    etag: str | None = None


@dataclass(frozen=True)
class StoredRecord:
    """What :func:`plan_reindex` reads of a record: its order, status and parser version."""

    event_order: str
    status: str | None
    parser_version: str | None


def stored_records(table: str, keys: Iterable[str]) -> dict[str, StoredRecord]:
    """The stored records of ``keys`` (strongly consistent); keys without one are absent.

    Raises :class:`pipeline.errors.UnprocessedKeys` when DynamoDB left keys unread after
    :func:`pipeline.workflow.table.batch_get`'s backoff (never reads them as absent)."""
    rows = batch_get(
        table,
        [{TABLE_KEY: {"S": k}} for k in sorted(set(keys))],
        f"{TABLE_KEY}, {ORDER_ATTRIBUTE}, #s, parser_version",
        names={"#s": "status"},
        consistent=True,
    )
    return {
        row[TABLE_KEY]["S"]: StoredRecord(
            event_order=row.get(ORDER_ATTRIBUTE, {}).get("S", ""),
            status=row.get("status", {}).get("S"),
            parser_version=row.get("parser_version", {}).get("S"),
        )
        for row in rows
    }


def needs_reindex(stored: StoredRecord | None, *, stale_only: bool) -> bool:
    """Whether an object with this stored record is to be reindexed.

    Everything is, unless ``stale_only``: then only an object without a record, with a
    tombstone (the object exists again, yet no create event indexed it), or with a record of
    another ``parser_version`` than this one (:data:`pipeline.__version__`).

    Examples
    --------
    >>> current = StoredRecord("T1", "indexed", __version__)
    >>> needs_reindex(current, stale_only=True), needs_reindex(None, stale_only=True)
    (False, True)
    """
    if not stale_only or stored is None:
        return True
    return stored.status != "indexed" or stored.parser_version != __version__


def known_failed(stored: StoredRecord | None, reported: str | None) -> bool:
    """Whether the key's latest event is a failure already reported: the DLQ ledger's newest
    entry for it (``reported``) is newer than the stored record (or there is no record).

    Reindexing such an object re-reads the same bytes and sends a second DLQ message for the
    same failure; it is left alone unless asked (``include_failed``). A failure older than
    the record (fixed since by a newer event) does not count.

    Examples
    --------
    >>> known_failed(None, "-R20260101"), known_failed(StoredRecord("T2", "indexed", "1"), "T1")
    (True, False)
    """
    if reported is None:
        return False
    return stored is None or reported > stored.event_order


def _event_time(now: datetime) -> str:
    """S3's event time format: UTC, milliseconds, ``Z``."""
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def reindex_record(
    bucket: str,
    obj: ObjectRef,
    *,
    after: str | None,
    now: datetime | None = None,
    region: str | None = None,
) -> dict[str, Any]:
    """A synthetic S3 ``ObjectCreated`` record for ``obj`` that sorts just after ``after``.

    ``after`` is the stored record's ``event_order`` (``None``: no record). The record has no
    ``sequencer``: its order is :func:`pipeline.workflow.events.reindex_order` of ``after`` and
    its ``eventTime`` (``now``). The key is form-encoded as S3 encodes it.

    Examples
    --------
    >>> r = reindex_record("b", ObjectRef("a b.dcm", 3), after="T1", now=datetime(2026, 1, 1))
    >>> r["dicomPipelineReindex"], r["s3"]["object"]["key"], r["eventName"]
    ({'after': 'T1'}, 'a+b.dcm', 'ObjectCreated:Reindex')
    """
    obj_json: dict[str, Any] = {"key": quote_plus(obj.key, safe="/")}
    if obj.size is not None:
        obj_json["size"] = obj.size
    if obj.etag:
        obj_json["eTag"] = obj.etag.strip('"')
    record: dict[str, Any] = {
        "eventVersion": "2.1",
        "eventSource": EVENT_SOURCE,
        "eventTime": _event_time(now or datetime.now(UTC)),
        "eventName": EVENT_NAME,
        "s3": {
            "s3SchemaVersion": "1.0",
            "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
            "object": obj_json,
        },
        REINDEX_MARKER: {"after": after or ""},
    }
    if region:
        record["awsRegion"] = region
    return record


@dataclass
class ReindexPlan:
    """What :func:`plan_objects` decided for a chunk: the records to send, and how many
    objects were left alone as ``current`` (``stale_only``) or ``known_failed``."""

    records: list[dict[str, Any]] = field(default_factory=list)
    current: int = 0
    known_failed: int = 0


def plan_objects(
    table: str,
    bucket: str,
    objects: Sequence[ObjectRef],
    *,
    stale_only: bool = False,
    ledger: str | None = None,
    include_failed: bool = False,
    now: datetime | None = None,
    region: str | None = None,
) -> ReindexPlan:
    """The per-object logic: the synthetic records to send for ``objects``, in order.

    Reads the objects' records (one ``BatchGetItem`` per 100), keeps those
    :func:`needs_reindex` selects, and, with the DLQ ``ledger`` table, leaves out those whose
    latest event is a failure already reported (:func:`known_failed`, one ledger ``Query``
    per selected key) unless ``include_failed``. Each kept object gets its
    :func:`reindex_record` after its stored ``event_order``. Keys not ending in ``.dcm`` are
    ignored. A Distributed Map child calls this for its batch of items; :func:`reindex` for
    each page of the listing.
    """
    wanted = [o for o in objects if o.key.endswith(DICOM_SUFFIX)]
    stored = stored_records(table, (o.key for o in wanted))
    moment = now or datetime.now(UTC)
    plan = ReindexPlan()
    selected = [o for o in wanted if needs_reindex(stored.get(o.key), stale_only=stale_only)]
    plan.current = len(wanted) - len(selected)
    reported: dict[str, str] = {}
    if ledger is not None and not include_failed:
        reported = latest_reported(ledger, (o.key for o in selected))
    for obj in selected:
        held = stored.get(obj.key)
        if known_failed(held, reported.get(obj.key)):
            plan.known_failed += 1
            continue
        after = held.event_order if held is not None else None
        plan.records.append(reindex_record(bucket, obj, after=after, now=moment, region=region))
    return plan


def plan_reindex(
    table: str,
    bucket: str,
    objects: Sequence[ObjectRef],
    *,
    stale_only: bool = False,
    ledger: str | None = None,
    include_failed: bool = False,
    now: datetime | None = None,
    region: str | None = None,
) -> list[dict[str, Any]]:
    """The records :func:`plan_objects` would send for ``objects``, in order."""
    return plan_objects(
        table,
        bucket,
        objects,
        stale_only=stale_only,
        ledger=ledger,
        include_failed=include_failed,
        now=now,
        region=region,
    ).records


@dataclass
class ReindexResult:
    """What :func:`reindex` did: objects listed (``.dcm`` only), events sent, sends failed,
    objects left alone because their record is current (``stale_only``) or because their
    latest event already failed and is in the DLQ (``known_failed``), seconds spent
    waiting for the ingest queue to drain (:class:`Pacing`), and, when the run stopped because
    the queue stayed too deep, the last key it handled (``resume_after``)."""

    listed: int = 0
    sent: int = 0
    failed: int = 0
    current: int = 0
    known_failed: int = 0
    waited_seconds: float = 0.0
    resume_after: str | None = None
    #: The last key handled (planned, and sent unless current), in listing order.
    last_key: str | None = None

    @property
    def ok(self) -> bool:
        """No send failed (a run that stopped to wait for the queue may still be ok)."""
        return self.failed == 0

    @property
    def stopped(self) -> bool:
        """The run stopped before the end of the listing (resume after ``resume_after``)."""
        return self.resume_after is not None

    def counts(self) -> dict[str, int]:
        """The counts (``listed``, ``sent``, ``failed``, ``current``, ``known_failed``)."""
        return {
            "listed": self.listed,
            "sent": self.sent,
            "failed": self.failed,
            "current": self.current,
            "known_failed": self.known_failed,
        }

    def to_json(self) -> dict[str, Any]:
        """The counts and the seconds waited as plain JSON, and ``resume_after`` when the
        run stopped."""
        out: dict[str, Any] = {**self.counts(), "waited_seconds": round(self.waited_seconds, 1)}
        if self.resume_after is not None:
            out["resume_after"] = self.resume_after
        return out


def _listing(bucket: str, prefix: str, start_after: str | None = None) -> Iterable[list[ObjectRef]]:
    """The bucket's ``.dcm`` objects under ``prefix`` in key order, one list per listing page
    (at most 1,000), after ``start_after`` when given."""
    params: dict[str, str] = {"Bucket": bucket, "Prefix": prefix}
    if start_after:
        params["StartAfter"] = start_after
    pages = aws.client("s3").get_paginator("list_objects_v2").paginate(**params)
    for page in pages:
        yield [
            ObjectRef(o["Key"], o.get("Size"), o.get("ETag"))
            for o in page.get("Contents", [])
            if o["Key"].endswith(DICOM_SUFFIX)
        ]


def reindex(
    target: Target,
    *,
    prefix: str = ORTHANC_PREFIX,
    stale_only: bool = False,
    include_failed: bool = False,
    progress: Progress | None = None,
    pacing: Pacing | None = None,
    start_after: str | None = None,
) -> ReindexResult:
    """Send a synthetic reindex event for each ``.dcm`` object of the target's bucket.

    Parameters
    ----------
    target:
        The deployment: its bucket, metadata table and ingest queue.
    prefix:
        Only keys starting with this: by default Orthanc's prefix, where the bucket's
        ``.dcm`` objects notify the ingest queue (and the reindex Distributed Map's default);
        ``""``: the whole bucket (keys stored at its root before Orthanc had a prefix, say;
        the pipeline's own sidecars and staged items hold no ``.dcm`` keys).
    stale_only:
        Only objects without a record, with a tombstone, or with a record of another
        parser version (:func:`needs_reindex`).
    include_failed:
        Also objects whose latest event is a failure the DLQ ledger holds
        (:func:`known_failed`); by default they are left alone and counted as
        ``known_failed`` (a target without a ledger table leaves nothing out).
    progress:
        Called as ``progress(done, None)`` after each listing page (the total is not known
        before the listing ends).
    pacing:
        Before each chunk of up to 100 events, wait while the ingest queue is deeper than
        ``pacing.max_depth`` (:func:`wait_for_room`); when it stays deeper for longer than
        ``pacing.max_wait_seconds`` the run stops and returns with ``resume_after``.
        ``None``: no pacing.
    start_after:
        Only keys after this one (a stopped run's ``resume_after``).

    Returns
    -------
    ReindexResult
        ``ok`` is false when any send failed (run again: a reindex event that arrives twice
        is a duplicate the workflow skips); ``resume_after`` is set when the run stopped.

    The events are only enqueued: the workflow parses and writes them as they drain.
    """
    result = ReindexResult()
    for page in _listing(target.bucket, prefix, start_after):
        try:
            _enqueue(
                page,
                bucket=target.bucket,
                table=target.table,
                queue_url=target.queue_url,
                stale_only=stale_only,
                ledger=target.ledger_table,
                include_failed=include_failed,
                region=target.region,
                result=result,
                pacing=pacing,
            )
        except QueueBusy:
            # Everything up to the last handled key was planned and sent; nothing after it.
            result.resume_after = result.last_key or start_after or ""
            return result
        finally:
            if progress is not None:
                progress(result.listed, None)
    return result


def enqueue_keys(
    keys: Sequence[str],
    *,
    bucket: str,
    table: str,
    queue_url: str,
    stale_only: bool = False,
    ledger: str | None = None,
    include_failed: bool = False,
    region: str | None = None,
    pacing: Pacing | None = None,
) -> ReindexResult:
    """A Distributed Map child's work: reindex events for a batch of keys (stored form).

    The same per-object logic as :func:`reindex` (:func:`plan_reindex`, then SendMessageBatch
    ten at a time) for keys a listing or an inventory report named; keys not ending ``.dcm``
    are ignored. ``lambdas/reindex_batch.py`` calls this.

    With ``pacing``, the queue's depth is checked once, before anything is planned or sent
    (a child's batch is one chunk of at most 100 keys), so a :class:`QueueBusy` leaves nothing
    half sent and the batch can be retried as a whole.

    Returns
    -------
    ReindexResult
        ``listed`` counts the ``.dcm`` keys; ``ok`` is false when any send failed.

    Raises
    ------
    QueueBusy
        The queue stayed deeper than ``pacing.max_depth`` for ``pacing.max_wait_seconds``.
    """
    objects = [ObjectRef(k) for k in keys if k.endswith(DICOM_SUFFIX)]
    result = ReindexResult()
    if pacing is not None and objects:
        result.waited_seconds = wait_for_room(queue_url, pacing)
    _enqueue(
        objects,
        bucket=bucket,
        table=table,
        queue_url=queue_url,
        stale_only=stale_only,
        ledger=ledger,
        include_failed=include_failed,
        region=region,
        result=result,
    )
    return result


def _enqueue(
    objects: Sequence[ObjectRef],
    *,
    bucket: str,
    table: str,
    queue_url: str,
    stale_only: bool,
    region: str | None,
    result: ReindexResult,
    ledger: str | None = None,
    include_failed: bool = False,
    pacing: Pacing | None = None,
) -> None:
    """Plan and send ``objects`` in chunks of 100, adding to ``result``; with ``pacing``,
    wait for room in the queue before each chunk (:class:`QueueBusy` propagates, with
    ``result.last_key`` the last key of the last chunk handled)."""
    for start in range(0, len(objects), BATCH_GET_KEYS):
        chunk = objects[start : start + BATCH_GET_KEYS]
        if pacing is not None:
            result.waited_seconds += wait_for_room(queue_url, pacing)
        result.listed += len(chunk)
        plan = plan_objects(
            table,
            bucket,
            chunk,
            stale_only=stale_only,
            ledger=ledger,
            include_failed=include_failed,
            region=region,
        )
        result.current += plan.current
        result.known_failed += plan.known_failed
        errors = send_bodies(queue_url, [json.dumps({"Records": [r]}) for r in plan.records])
        result.failed += sum(e is not None for e in errors)
        result.sent += sum(e is None for e in errors)
        result.last_key = chunk[-1].key
