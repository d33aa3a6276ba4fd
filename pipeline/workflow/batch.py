"""The parse step of the ingestion workflow: one call per Pipes batch.

:func:`plan_batch` validates every S3 record of the batch, drops stale and duplicate events,
reads the headers of the objects to index concurrently (ranged reads), and returns one
*action* per record for the state machine's ``ApplyRecords`` map:

``put``
    write ``item`` (a record or a tombstone, DynamoDB JSON) if ``order`` is newer than what
    the table holds for the key;
``skip``
    nothing to do, with a ``reason``;
``fail``
    send ``dlq`` (a complete DLQ v1 message) to the dead-letter queue;
``retry``
    a transient error survived the retries: the workflow fails the execution so Pipes
    redelivers the batch.

Ordering is per key: the S3 ``sequencer`` (see :func:`pipeline.workflow.events.order_token`)
decides, and S3 itself is the tie-breaker where events carry none: a create whose object is
gone, or a delete whose object exists again, is skipped, because a later event describes it.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import TypeSerializer
from botocore.exceptions import BotoCoreError, ClientError

from pipeline import __version__, aws
from pipeline.dicom.header import ReadLimits
from pipeline.dicom.parse import parse
from pipeline.dicom.record import DEFAULT_ITEM_BUDGET, now_iso
from pipeline.dicom.sources import S3Source, is_missing_object
from pipeline.errors import (
    DicomPipelineError,
    InternalError,
    NotDicom,
    ObjectNotFound,
    TransientError,
)
from pipeline.workflow.dlq import dlq_message, s3_ref
from pipeline.workflow.events import EventRecord, split_batch

__all__ = ["BatchPlan", "IngestConfig", "plan_batch", "to_dynamodb_json"]

log = logging.getLogger(__name__)
PARSE_STATE = "ParseHeaders"
_OUTCOME_OF_ACTION = {"skip": "skipped", "fail": "failed", "retry": "retry"}
_serializer = TypeSerializer()


@dataclass(frozen=True)
class IngestConfig:
    """What the parse step needs to know (built from the Lambda's settings).

    Attributes
    ----------
    table_name:
        The metadata table (read for stale-event checks).
    tombstone_ttl_days:
        Tombstones expire (DynamoDB TTL on ``expires_at``) after this many days.
    payload_budget:
        Bytes the records of one batch may take together in the workflow's state (Step
        Functions limits a state's payload to 256 KiB); each item gets an equal share, and
        a record over its share moves its JSON to the S3 sidecar.
    max_workers:
        Headers read concurrently.
    limits:
        Header read limits.
    """

    table_name: str
    tombstone_ttl_days: int = 30
    payload_budget: int = 200 * 1024
    max_workers: int = 8
    limits: ReadLimits = field(default_factory=ReadLimits)


@dataclass
class BatchPlan:
    """The actions for one batch, plus counts for logs and metrics (no element values)."""

    records: list[dict[str, Any]]
    counts: dict[str, int] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)
    skips: dict[str, int] = field(default_factory=dict)
    header_bytes_read: int = 0
    parse_ms: list[float] = field(default_factory=list)

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


def _stored_orders(table: str, keys: Iterable[str]) -> dict[str, str]:
    """``event_order`` of each key the table holds (best effort: the write re-checks)."""
    out: dict[str, str] = {}
    pending = sorted(set(keys))
    try:
        ddb = aws.client("dynamodb")
        for start in range(0, len(pending), 100):
            request = {
                table: {
                    "Keys": [{"s3_key": {"S": k}} for k in pending[start : start + 100]],
                    "ProjectionExpression": "s3_key, event_order",
                    "ConsistentRead": True,
                }
            }
            for _ in range(5):
                resp = ddb.batch_get_item(RequestItems=request)
                for row in resp.get("Responses", {}).get(table, []):
                    if "event_order" in row:
                        out[row["s3_key"]["S"]] = row["event_order"]["S"]
                request = resp.get("UnprocessedKeys") or {}
                if not request:
                    break
    except (ClientError, BotoCoreError) as exc:
        log.warning("stale-event pre-check skipped: %s", type(exc).__name__)
    return out


def _object_exists(bucket: str, key: str) -> bool | None:
    try:
        aws.client("s3").head_object(Bucket=bucket, Key=key)
        return True
    except ClientError as exc:
        return False if is_missing_object(exc) else None
    except BotoCoreError:
        return None


def _is_gone(exc: DicomPipelineError) -> bool:
    return isinstance(exc, ObjectNotFound) and exc.gone


def _provenance(ev: EventRecord) -> dict[str, Any]:
    return {
        "bucket": ev.bucket,
        "etag": ev.etag,
        "sequencer": ev.sequencer,
        "event_time": ev.event_time,
        "version_id": ev.version_id,
    }


class _Planner:
    def __init__(self, config: IngestConfig, execution: str | None, now: Callable[[], float]):
        self.config = config
        self.execution = execution
        self.now = now
        self.plan = BatchPlan(records=[])
        self._lock = threading.Lock()

    def count(self, bucket: dict[str, int], name: str) -> None:
        with self._lock:  # the header reads run in threads
            bucket[name] = bucket.get(name, 0) + 1

    def skip(self, ev: EventRecord, reason: str) -> dict[str, Any]:
        self.count(self.plan.skips, reason)
        return {"action": "skip", "key": ev.key, "reason": reason}

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
        return {"action": "fail", "key": ev.key, "dlq": body}

    def put(self, ev: EventRecord, item: dict[str, Any], outcome: str) -> dict[str, Any]:
        item["event_order"] = ev.order
        return {
            "action": "put",
            "key": ev.key,
            "outcome": outcome,
            "order": ev.order,
            "item": to_dynamodb_json(item),
            "dlq": {"s3": s3_ref(ev.bucket, ev.key, ev.etag, ev.sequencer), "record": ev.record},
        }

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

    def index(self, ev: EventRecord, budget: int) -> dict[str, Any]:
        assert ev.bucket is not None and ev.key is not None
        if ev.size == 0:
            return self.fail(ev, NotDicom.code, f"s3://{ev.bucket}/{ev.key} is empty")
        started = time.perf_counter()
        source = S3Source(ev.bucket, ev.key, version_id=ev.version_id)
        try:
            parsed = parse(source, self.config.limits)
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
            )
            if built.sidecar_uri and built.sidecar_body is not None:
                _, _, rest = built.sidecar_uri.partition("s3://")
                bucket, _, key = rest.partition("/")
                aws.client("s3").put_object(
                    Bucket=bucket,
                    Key=key,
                    Body=built.sidecar_body,
                    ContentType="application/dicom+json",
                    ContentEncoding="gzip",
                )
        except TransientError:
            self.count(self.plan.failures, "TRANSIENT")
            return {"action": "retry", "key": ev.key}
        except DicomPipelineError as exc:
            if _is_gone(exc):
                return self.skip(ev, "object_gone")  # deleted since: its delete event applies
            return self.fail(ev, exc.code, exc.message)
        except (ClientError, BotoCoreError) as exc:  # the sidecar write
            self.count(self.plan.failures, "TRANSIENT")
            log.warning("sidecar write failed: %s", type(exc).__name__)
            return {"action": "retry", "key": ev.key}
        except Exception as exc:  # a bug in us: coded, never a bare traceback
            log.exception("unexpected error while parsing a header")
            bug = InternalError(f"{type(exc).__name__} while indexing s3://{ev.bucket}/{ev.key}")
            return self.fail(ev, bug.code, bug.message)
        with self._lock:
            self.plan.header_bytes_read += parsed.header.bytes_read
            self.plan.parse_ms.append((time.perf_counter() - started) * 1000)
        return self.put(ev, built.item, "indexed")


def plan_batch(
    messages: list[dict[str, Any]],
    config: IngestConfig,
    *,
    execution: str | None = None,
    now: Callable[[], float] = time.time,
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

    Returns
    -------
    BatchPlan
        One action per S3 record (or per message that held none), in batch order.
    """
    planner = _Planner(config, execution, now)
    events = split_batch(messages)
    latest = _latest_per_key(events)
    stored = _stored_orders(config.table_name, (k for _, k in latest))
    todo = [
        ev
        for ev in latest.values()
        if ev.kind == "create" and stored.get(ev.key or "", "") < ev.order
    ]
    # Binary attributes travel base64-encoded in the state (4/3 of their size): an item's
    # budget, in stored bytes, is 3/4 of its share of the payload.
    share = config.payload_budget // max(1, len(todo))
    budget = min(DEFAULT_ITEM_BUDGET, max(8 * 1024, share * 3 // 4))

    results: dict[int, dict[str, Any]] = {}
    with ThreadPoolExecutor(max_workers=max(1, config.max_workers)) as pool:
        futures = {id(ev): pool.submit(planner.index, ev, budget) for ev in todo}
        for position, ev in enumerate(events):
            if ev.kind == "skip":
                results[position] = planner.skip(ev, ev.reason or "skipped")
            elif ev.kind == "fail":
                results[position] = planner.fail(
                    ev, ev.code or "MALFORMED", ev.message or "invalid event"
                )
            elif latest.get((ev.bucket or "", ev.key or "")) is not ev:
                results[position] = planner.skip(ev, "superseded_in_batch")
            elif stored.get(ev.key or "", "") >= ev.order:
                results[position] = planner.skip(ev, "stale_or_duplicate")
            elif ev.kind == "delete":
                results[position] = planner.tombstone(ev)
        for position, ev in enumerate(events):
            if id(ev) in futures and position not in results:
                results[position] = futures[id(ev)].result()
    planner.plan.records = [results[i] for i in range(len(events))]
    for rec in planner.plan.records:
        # Named as the workflow's outcomes (DESIGN.md), so metrics read Records_skipped etc.
        outcome = rec.get("outcome") or _OUTCOME_OF_ACTION[rec["action"]]
        planner.count(planner.plan.counts, outcome)
    return planner.plan
