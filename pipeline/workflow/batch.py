"""The parse step of the ingestion workflow: one call per Pipes batch.

:func:`plan_batch` validates every S3 record of the batch, drops stale and duplicate events,
reads the headers of the objects to index concurrently (ranged reads), and returns one
*action* per record for the state machine's ``ApplyRecords`` map:

``put``
    write a record or a tombstone if ``order`` is newer than what the table holds for the
    key; the item travels inline (``item``, DynamoDB JSON) or, when the batch would not fit in
    the workflow's state, staged in S3 (``item_ref``) for the workflow to read back;
``skip``
    nothing to do, with a ``reason``;
``fail``
    send ``dlq`` (a complete DLQ v1 message) to the dead-letter queue and note it in the DLQ
    ledger (``ledger``), so a redelivered event sends no second message;
``retry``
    a dependency stayed unavailable after the retries: only this record's SQS message goes
    back to the queue (EventBridge Pipes' partial batch failure, ``batchItemFailures``).

A ``put`` carries ``old_sidecar`` (the sidecar of the record it replaces, which the workflow
deletes only *after* the write succeeded) and ``new_sidecar`` (its own, which the workflow
deletes when the write loses to a newer event or the record goes to the DLQ), each
``{"bucket", "key", "uri"}`` or ``None``.

Time: with a ``deadline`` (the Lambda's remaining time), a record whose read cannot start
(or whose AWS calls cannot finish, :func:`pipeline.aws.deadline`) with ``IngestConfig.reserve``
seconds to spare is handed back as ``retry`` (``UNAVAILABLE`` on its last receive).

Every action names its SQS ``message_id``; ``final`` is true on the message's last allowed
receive, when a record that still cannot be written goes to the DLQ with ``UNAVAILABLE``
instead of being retried again (so the DLQ never receives a raw, uncoded notification for it).

Step Functions limits every state's input and output to 256 KiB: the actions are measured as
the JSON the state carries (:func:`state_bytes`), each item is kept below
:data:`ITEM_STATE_BUDGET` and the whole result below ``IngestConfig.payload_budget``.

Ordering is per key: the S3 ``sequencer`` (see :func:`pipeline.workflow.events.order_token`)
decides, and S3 itself is the tie-breaker where events carry none: a create whose object is
gone, or a delete whose object exists again, is skipped, because a later event describes it.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import TypeSerializer
from botocore.exceptions import BotoCoreError, ClientError

from pipeline import __version__, aws
from pipeline.dicom.header import ReadLimits
from pipeline.dicom.memory import MemoryGate, workers_within
from pipeline.dicom.parse import parse
from pipeline.dicom.record import DEFAULT_ITEM_BUDGET, REQUIRED_UIDS, BuiltRecord, now_iso
from pipeline.dicom.sources import S3Source, is_missing_object
from pipeline.errors import (
    DicomPipelineError,
    InternalError,
    Malformed,
    NotDicom,
    ObjectChanged,
    ObjectNotFound,
    TransientError,
    UnprocessedKeys,
)
from pipeline.names import MAX_RECEIVE_COUNT
from pipeline.workflow.dlq import Reported, dlq_message, ledger_key, reported_events, s3_ref
from pipeline.workflow.events import EventRecord, split_batch
from pipeline.workflow.storage import sidecar_uri, split_s3_uri, stage_item
from pipeline.workflow.table import batch_get, conform_index_keys

__all__ = [
    "ITEM_STATE_BUDGET",
    "STATE_LIMIT",
    "BatchPlan",
    "IngestConfig",
    "plan_batch",
    "state_bytes",
    "to_dynamodb_json",
]

log = logging.getLogger(__name__)
PARSE_STATE = "ParseHeaders"
#: Step Functions' limit on a state's input or output (and an execution's), in UTF-8 bytes.
STATE_LIMIT = 256 * 1024
#: The most one item may take in the workflow's state, measured as the *escaped* JSON text of
#: its DynamoDB JSON (the form S3's GetObject hands back for a staged item), so that the
#: ``LoadItem`` result and the iteration's state stay below :data:`STATE_LIMIT` with room for
#: the rest of the iteration's input and the response metadata.
ITEM_STATE_BUDGET = 160 * 1024
_OUTCOME_OF_ACTION = {"skip": "skipped", "fail": "failed", "retry": "retry"}
_serializer = TypeSerializer()


def state_bytes(value: Any) -> int:
    """The size of ``value`` as Step Functions counts it: its JSON text in UTF-8 bytes.

    Examples
    --------
    >>> state_bytes({"k": "é"})
    10
    """
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return len(text.encode("utf-8"))


@dataclass(frozen=True)
class IngestConfig:
    """What the parse step needs to know (built from the Lambda's settings).

    Attributes
    ----------
    table_name:
        The metadata table (read for stale-event checks).
    ledger_table_name:
        The DLQ ledger (read so a redelivered event sends no second DLQ message); ``None``
        turns the check off.
    tombstone_ttl_days:
        Tombstones expire (DynamoDB TTL on ``expires_at``) after this many days.
    payload_budget:
        Bytes the Lambda's result may take in the workflow's state (Step Functions limits a
        state to 256 KiB; the rest is room for the invocation's metadata). Above it the
        largest items are staged in S3.
    max_workers:
        Headers read concurrently.
    max_receive_count:
        The ingest queue's receive limit: on this receive a record is not retried again.
    reserve:
        Seconds kept, before the function's deadline, for what follows the reads (staging
        large items, returning the result): no header read starts, and no AWS call attempt is
        sent, that could end later than that.
    memory_budget:
        Bytes the header reads of one batch may use together (``None``: no bound); fewer
        than ``max_workers`` reads run at once when the budget requires it, and only one read
        at a time may grow large (:mod:`pipeline.dicom.memory`).
    limits:
        Header read limits.
    """

    table_name: str
    ledger_table_name: str | None = None
    tombstone_ttl_days: int = 30
    payload_budget: int = 200 * 1024
    max_workers: int = 8
    max_receive_count: int = MAX_RECEIVE_COUNT
    reserve: float = 5.0
    memory_budget: int | None = None
    limits: ReadLimits = field(default_factory=ReadLimits)

    def workers(self) -> int:
        """Header reads that may run at once."""
        if self.memory_budget is None:
            return max(1, self.max_workers)
        return workers_within(self.memory_budget, self.limits, self.max_workers)


@dataclass
class BatchPlan:
    """The actions for one batch, plus counts for logs and metrics (no element values)."""

    records: list[dict[str, Any]]
    counts: dict[str, int] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)
    skips: dict[str, int] = field(default_factory=dict)
    readers: dict[str, int] = field(default_factory=dict)
    header_bytes_read: int = 0
    parse_ms: list[float] = field(default_factory=list)
    staged: int = 0
    payload_bytes: int = 0
    large_reads: int = 0

    def payload(self) -> dict[str, Any]:
        """What the Lambda returns to the workflow."""
        return {"records": self.records}


def to_dynamodb_json(item: dict[str, Any]) -> dict[str, Any]:
    """Serialize a Python item to DynamoDB JSON as Step Functions expects (B as base64).

    Examples
    --------
    >>> to_dynamodb_json({"k": "a", "n": Decimal("1.5"), "b": b"x"})
    {'k': {'S': 'a'}, 'n': {'N': '1.5'}, 'b': {'B': 'eA=='}}
    """

    def fix(value: Any) -> dict[str, Any]:
        if "B" in value:  # bytes or boto3's Binary: both convert with bytes()
            return {"B": base64.b64encode(bytes(value["B"])).decode("ascii")}
        if "L" in value:
            return {"L": [fix(v) for v in value["L"]]}
        if "M" in value:
            return {"M": {k: fix(v) for k, v in value["M"].items()}}
        return dict(value)

    return {k: fix(_serializer.serialize(v)) for k, v in item.items()}


def _item_state_size(item_json: dict[str, Any]) -> int:
    """An item's size in the state as the escaped text S3 hands back (the worst form)."""
    return state_bytes(json.dumps(item_json, ensure_ascii=False, separators=(",", ":")))


def _raised_at(exc: BaseException) -> str:
    """Where ``exc`` was raised, as ``file:line in function`` of its innermost frame: code
    locations only, never the exception's text or a variable's value (safe to log).

    Examples
    --------
    >>> try:
    ...     {}["PatientName"]
    ... except KeyError as exc:
    ...     print(_raised_at(exc).split(" in ")[1])
    <module>
    """
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "unknown"
    last = frames[-1]
    return f"{last.filename.rsplit('/', 1)[-1]}:{last.lineno} in {last.name}"


def _latest_per_key(events: list[EventRecord]) -> dict[tuple[str, str], EventRecord]:
    latest: dict[tuple[str, str], EventRecord] = {}
    for ev in events:
        if ev.kind not in ("create", "delete"):
            continue
        assert ev.bucket is not None and ev.key is not None
        k = (ev.bucket, ev.key)
        # A tie (events without a sequencer in one millisecond) goes to the later one.
        if k not in latest or ev.order >= latest[k].order:
            latest[k] = ev
    return latest


@dataclass(frozen=True)
class _Stored:
    order: str
    sidecar: str | None


def _stored_items(table: str, keys: Iterable[str]) -> dict[str, _Stored]:
    """Event order and sidecar of each key the table holds (best effort: the write re-checks)."""
    out: dict[str, _Stored] = {}
    try:
        rows = batch_get(
            table,
            [{"s3_key": {"S": k}} for k in sorted(set(keys))],
            "s3_key, event_order, dicom_json_s3",
            consistent=True,
        )
    except UnprocessedKeys as exc:
        # What was read still saves work; the keys not read are checked by the write.
        log.warning("stale-event pre-check partial: %s", exc.message)
        rows = exc.rows
    except (ClientError, BotoCoreError) as exc:
        log.warning("stale-event pre-check skipped: %s", type(exc).__name__)
        return out
    for row in rows:
        if "event_order" in row:
            sidecar = row.get("dicom_json_s3", {}).get("S")
            out[row["s3_key"]["S"]] = _Stored(row["event_order"]["S"], sidecar)
    return out


def _object_exists(bucket: str, key: str) -> bool | None:
    try:
        aws.client("s3").head_object(Bucket=bucket, Key=key)
        return True
    except ClientError as exc:
        return False if is_missing_object(exc) else None
    except BotoCoreError:
        return None


def _provenance(ev: EventRecord) -> dict[str, Any]:
    return {
        "bucket": ev.bucket,
        "etag": ev.etag,
        "sequencer": ev.sequencer,
        "event_time": ev.event_time,
        "version_id": ev.version_id,
    }


class _Planner:
    def __init__(
        self,
        config: IngestConfig,
        execution: str | None,
        now: Callable[[], float],
        stored: dict[str, _Stored],
        reads_end: float | None = None,
    ):
        self.reads_end = reads_end
        self.config = config
        self.execution = execution
        self.now = now
        self.stored = stored
        self.plan = BatchPlan(records=[])
        self.gate = MemoryGate()
        self._lock = threading.Lock()

    def count(self, bucket: dict[str, int], name: str) -> None:
        with self._lock:  # the header reads run in threads
            bucket[name] = bucket.get(name, 0) + 1

    def final(self, ev: EventRecord) -> bool:
        return ev.receive_count >= self.config.max_receive_count

    def base(self, ev: EventRecord, action: str) -> dict[str, Any]:
        return {"action": action, "key": ev.key, "message_id": ev.message_id}

    def skip(self, ev: EventRecord, reason: str) -> dict[str, Any]:
        self.count(self.plan.skips, reason)
        return {**self.base(ev, "skip"), "reason": reason}

    def fail(self, ev: EventRecord, code: str, message: str) -> dict[str, Any]:
        self.count(self.plan.failures, code)
        body = dlq_message(
            code=code,
            message=message,
            s3=s3_ref(ev.bucket, ev.key, ev.etag, ev.sequencer),
            record=ev.record,
            failed_at=now_iso(),
            execution=self.execution,
            state=PARSE_STATE,
        )
        action = {**self.base(ev, "fail"), "final": self.final(ev), "dlq": body}
        if ev.key and ev.kind in ("create", "delete"):
            action["ledger"] = ledger_key(ev.key, ev.order, now=self.now())
        return action

    def unavailable(self, ev: EventRecord, exc: TransientError) -> dict[str, Any]:
        """Retry the record's message, or on its last receive report it as UNAVAILABLE."""
        if self.final(ev):
            return self.fail(ev, exc.code, f"{exc.message} (on the last of its deliveries)")
        return self.base(ev, "retry")

    def put(
        self, ev: EventRecord, item: dict[str, Any], outcome: str, new_sidecar: str | None = None
    ) -> dict[str, Any]:
        assert ev.key is not None
        item["event_order"] = ev.order
        stored = self.stored.get(ev.key)
        return {
            **self.base(ev, "put"),
            "outcome": outcome,
            "order": ev.order,
            "final": self.final(ev),
            "item": to_dynamodb_json(item),
            "dlq": {"s3": s3_ref(ev.bucket, ev.key, ev.etag, ev.sequencer), "record": ev.record},
            "ledger": ledger_key(ev.key, ev.order, now=self.now()),
            "old_sidecar": _sidecar_ref(stored.sidecar if stored else None),
            "new_sidecar": _sidecar_ref(new_sidecar),
        }

    def out_of_time(self) -> bool:
        """No header read may start: it could not end before the reads' deadline."""
        left = None if self.reads_end is None else self.reads_end - time.monotonic()
        return left is not None and left < aws.ATTEMPT_SECONDS

    def tombstone(self, ev: EventRecord) -> dict[str, Any]:
        assert ev.bucket is not None and ev.key is not None
        if _object_exists(ev.bucket, ev.key):
            return self.skip(ev, "object_exists")  # re-created since: its create event indexes it
        expires = int(self.now()) + self.config.tombstone_ttl_days * 86400
        item = {
            "s3_key": ev.key,
            "status": "deleted",
            "indexed_at": now_iso(),
            "parser_version": __version__,
            "expires_at": Decimal(expires),
            **{k: v for k, v in _provenance(ev).items() if v is not None},
        }
        return self.put(ev, item, "deleted")

    def build(self, ev: EventRecord, source: S3Source) -> tuple[BuiltRecord, int, str]:
        """Parse and build the record, within the item's share of the workflow's state."""
        assert ev.bucket is not None and ev.key is not None
        with self.gate.source(source) as gated:
            parsed = parse(gated, self.config.limits)
        budget = DEFAULT_ITEM_BUDGET
        for _ in range(6):
            built = parsed.record(
                s3_key=ev.key,
                budget=budget,
                bucket=ev.bucket,
                # What was read: an unversioned object may have been overwritten since the
                # event (its own event re-indexes it), and size comes from the read too.
                etag=source.etag or ev.etag,
                sequencer=ev.sequencer,
                event_time=ev.event_time,
                version_id=ev.version_id or source.version_id,
                sidecar_uri=sidecar_uri(ev.bucket, ev.key, ev.order),
            )
            removed = conform_index_keys(built.item)
            if set(removed) & REQUIRED_UIDS.keys():
                raise Malformed(
                    f"{', '.join(sorted(set(removed) & REQUIRED_UIDS.keys()))} of "
                    f"s3://{ev.bucket}/{ev.key} cannot be a DynamoDB index key (over 1,024 bytes)"
                )
            size = _item_state_size(to_dynamodb_json(built.item))
            if size <= ITEM_STATE_BUDGET:
                return built, parsed.header.bytes_read, parsed.reader
            budget = max(4 * 1024, int(budget * ITEM_STATE_BUDGET / size * 0.9))
        raise InternalError(f"the record of s3://{ev.bucket}/{ev.key} does not fit the state")

    def index(self, ev: EventRecord) -> dict[str, Any]:
        assert ev.bucket is not None and ev.key is not None
        if ev.size == 0:
            return self.fail(ev, NotDicom.code, f"s3://{ev.bucket}/{ev.key} is empty")
        if self.out_of_time():
            return self.unavailable(ev, _no_time(ev))
        with aws.deadline(self.reads_end):
            return self._index(ev)

    def _index(self, ev: EventRecord) -> dict[str, Any]:
        assert ev.bucket is not None and ev.key is not None
        started = time.perf_counter()
        source = S3Source(ev.bucket, ev.key, version_id=ev.version_id)
        try:
            built, bytes_read, reader = self.build(ev, source)
            if built.sidecar_uri and built.sidecar_body is not None:
                bucket, key = split_s3_uri(built.sidecar_uri)
                aws.client("s3").put_object(
                    Bucket=bucket,
                    Key=key,
                    Body=built.sidecar_body,
                    ContentType="application/dicom+json",
                    ContentEncoding="gzip",
                )
        except ObjectChanged:
            return self.skip(ev, "object_changed")  # overwritten since: its own event indexes it
        except TransientError as exc:
            if self.out_of_time():
                return self.unavailable(ev, _no_time(ev))
            return self.unavailable(ev, exc)
        except DicomPipelineError as exc:
            if isinstance(exc, ObjectNotFound) and exc.gone:
                return self.skip(ev, "object_gone")  # deleted since: its delete event applies
            return self.fail(ev, exc.code, exc.message)
        except (ClientError, BotoCoreError) as exc:  # the sidecar write
            if isinstance(exc, aws.DeadlineExceeded):
                return self.unavailable(ev, _no_time(ev))
            log.warning("sidecar write failed: %s", type(exc).__name__)
            return self.unavailable(
                ev, TransientError(f"the sidecar of s3://{ev.bucket}/{ev.key} was not written")
            )
        except Exception as exc:  # a bug in us: coded, never a bare traceback
            # The type, the code and where it was raised; never the exception's text or a
            # traceback, which may quote element values (PHI).
            log.error(
                "unexpected error while parsing a header: %s (%s) at %s",
                type(exc).__name__,
                InternalError.code,
                _raised_at(exc),
            )
            bug = InternalError(f"{type(exc).__name__} while indexing s3://{ev.bucket}/{ev.key}")
            return self.fail(ev, bug.code, bug.message)
        with self._lock:
            self.plan.header_bytes_read += bytes_read
            self.plan.parse_ms.append((time.perf_counter() - started) * 1000)
            self.plan.readers[reader] = self.plan.readers.get(reader, 0) + 1
        written = built.sidecar_uri if built.sidecar_body is not None else None
        return self.put(ev, built.item, "indexed", new_sidecar=written)

    def fit(self, events: list[EventRecord], actions: list[dict[str, Any]]) -> None:
        """Stage the largest items in S3 until the result fits ``payload_budget``."""
        sizes = [state_bytes(a) for a in actions]
        total = state_bytes({"records": []}) + sum(sizes) + len(actions)
        largest = sorted((i for i, a in enumerate(actions) if "item" in a), key=lambda i: -sizes[i])
        for i in largest:
            if total <= self.config.payload_budget:
                break
            ev, action = events[i], actions[i]
            assert ev.bucket is not None
            try:
                ref = stage_item(ev.bucket, action.pop("item"))
            except (ClientError, BotoCoreError) as exc:
                log.warning("item not staged: %s", type(exc).__name__)
                actions[i] = self.unavailable(
                    ev, TransientError(f"the item of s3://{ev.bucket}/{ev.key} was not staged")
                )
            else:
                action["item_ref"] = ref
                self.plan.staged += 1
            new = state_bytes(actions[i])
            total += new - sizes[i]
            sizes[i] = new
        self.plan.payload_bytes = total


def _no_time(ev: EventRecord) -> TransientError:
    return TransientError(
        f"no time left to read s3://{ev.bucket}/{ev.key} before the function's deadline"
    )


def _sidecar_ref(uri: str | None) -> dict[str, str] | None:
    """``{"bucket", "key", "uri"}`` of a sidecar, for the workflow's deleteObject."""
    if not uri:
        return None
    try:
        bucket, key = split_s3_uri(uri)
    except ValueError:
        return None
    return {"bucket": bucket, "key": key, "uri": uri}


def plan_batch(
    messages: list[dict[str, Any]],
    config: IngestConfig,
    *,
    execution: str | None = None,
    now: Callable[[], float] = time.time,
    deadline: float | None = None,
) -> BatchPlan:
    """Plan the actions of one Pipes batch (see the module docstring).

    Parameters
    ----------
    messages:
        SQS messages as EventBridge Pipes delivers them.
    config:
        Table, budgets, concurrency.
    execution:
        The workflow execution id, for DLQ messages.
    deadline:
        When the function must have returned (a :func:`time.monotonic` value; ``None``: no
        limit). Reads and AWS calls end ``config.reserve`` seconds before it; records that
        cannot be read by then are handed back as ``retry``.

    Returns
    -------
    BatchPlan
        One action per S3 record (or per message that held none), in batch order; the
        result (:meth:`BatchPlan.payload`) fits ``config.payload_budget``.
    """
    reads_end = None if deadline is None else deadline - config.reserve
    with aws.deadline(reads_end):
        return _plan(
            messages, config, execution=execution, now=now, reads_end=reads_end, deadline=deadline
        )


def _plan(
    messages: list[dict[str, Any]],
    config: IngestConfig,
    *,
    execution: str | None,
    now: Callable[[], float],
    reads_end: float | None,
    deadline: float | None,
) -> BatchPlan:
    events = split_batch(messages)
    latest = _latest_per_key(events)
    stored = _stored_items(config.table_name, (k for _, k in latest))
    planner = _Planner(config, execution, now, stored, reads_end)
    reported = Reported()
    if config.ledger_table_name:
        reported = reported_events(
            config.ledger_table_name, ((ev.key or "", ev.order) for ev in latest.values())
        )

    def in_dlq(ev: EventRecord) -> bool:
        """Sent to the DLQ already, or being sent by another delivery of the event."""
        return reported.by_another((ev.key or "", ev.order), ev.message_id)

    def stale(ev: EventRecord) -> bool:
        held = stored.get(ev.key or "")
        return held is not None and held.order >= ev.order

    todo = [
        ev for ev in latest.values() if ev.kind == "create" and not stale(ev) and not in_dlq(ev)
    ]
    results: dict[int, dict[str, Any]] = {}
    with ThreadPoolExecutor(max_workers=config.workers()) as pool:
        futures = {id(ev): pool.submit(planner.index, ev) for ev in todo}
        for position, ev in enumerate(events):
            if ev.kind == "skip":
                results[position] = planner.skip(ev, ev.reason or "skipped")
            elif ev.kind == "fail":
                results[position] = planner.fail(
                    ev, ev.code or "MALFORMED", ev.message or "invalid event"
                )
            elif latest.get((ev.bucket or "", ev.key or "")) is not ev:
                results[position] = planner.skip(ev, "superseded_in_batch")
            elif stale(ev):
                results[position] = planner.skip(ev, "stale_or_duplicate")
            elif in_dlq(ev):
                results[position] = planner.skip(ev, "already_in_dlq")
            elif ev.kind == "delete":
                results[position] = planner.tombstone(ev)
        for position, ev in enumerate(events):
            if id(ev) in futures and position not in results:
                results[position] = futures[id(ev)].result()
    actions = [results[i] for i in range(len(events))]
    # Staging may use the reserve, not more: the function must still return in time.
    with aws.deadline(None if deadline is None else deadline - 1.0):
        planner.fit(events, actions)
    planner.plan.large_reads = planner.gate.large_reads
    planner.plan.records = actions
    for rec in actions:
        # Named as the workflow's outcomes (DESIGN.md), so metrics read Records_skipped etc.
        outcome = rec.get("outcome") or _OUTCOME_OF_ACTION[rec["action"]]
        planner.count(planner.plan.counts, outcome)
    return planner.plan
