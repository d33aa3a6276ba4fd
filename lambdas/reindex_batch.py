"""The reindex Distributed Map's child task: one invocation per batch of keys.

The event is the task's payload (``pipeline/workflow/reindex.asl.json``):
``{"keys": [...], "stale_only": bool, "include_failed": bool, "url_encoded": bool}``; keys
from an S3 Inventory report are URL-encoded (``url_encoded``), keys from a listing are not.

Before sending, the handler waits while the ingest queue holds more than ``MAX_QUEUE_DEPTH``
messages, for as long as its remaining time allows minus ``SEND_MARGIN_SECONDS``; a queue that
stays deeper fails the invocation with :class:`ReindexQueueBusy` having sent nothing, and the
Map child's retrier (``pipeline/workflow/reindex.asl.json``) tries the batch again later.
"""

from __future__ import annotations

from functools import cache
from typing import Annotated, Any
from urllib.parse import unquote_plus

from aws_lambda_powertools.utilities.typing import LambdaContext
from msgspec import Meta

from lambdas.environment import EnvironmentSettings
from lambdas.observability import MetricUnit, logger, metrics, tracer
from pipeline.ops import reindex

__all__ = [
    "ReindexBatchError",
    "ReindexQueueBusy",
    "ReindexSettings",
    "get_settings",
    "handler",
]


class ReindexBatchError(Exception):
    """Some events of the batch could not be sent to the ingest queue."""


class ReindexQueueBusy(Exception):
    """The ingest queue stayed deeper than the threshold: nothing was sent. Its class name is
    the error name the Map child's retrier matches."""


class ReindexSettings(EnvironmentSettings, frozen=True, kw_only=True):
    """Environment variables of the reindex Lambda (set by the CDK app); read with
    ``ReindexSettings.from_environment()``."""

    bucket_name: Annotated[str, Meta(min_length=3, max_length=63)]
    table_name: Annotated[str, Meta(min_length=3, max_length=255)]
    queue_url: Annotated[str, Meta(pattern=r"^https://")]
    #: The DLQ ledger: keys whose latest event already failed are left alone (unless the
    #: run's ``include_failed``); without it nothing is left out.
    ledger_table_name: Annotated[str, Meta(min_length=3, max_length=255)] | None = None
    #: Wait while the ingest queue holds more messages than this (docs/capacity.md).
    max_queue_depth: Annotated[int, Meta(ge=1)] = reindex.DEFAULT_MAX_QUEUE_DEPTH
    poll_seconds: Annotated[float, Meta(gt=0, le=30)] = reindex.DEFAULT_POLL_SECONDS
    #: Time kept for planning and sending the batch after the wait.
    send_margin_seconds: Annotated[float, Meta(ge=1)] = 10.0


@cache
def get_settings() -> ReindexSettings:
    """Settings from the environment, validated once (at the first invocation)."""
    return ReindexSettings.from_environment()


@logger.inject_lambda_context(log_event=False)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """Enqueue a synthetic reindex event for each key of the batch (see
    ``pipeline.ops.reindex.enqueue_keys``), once the ingest queue has room; a failure fails
    the child execution, which the Map counts against its tolerated failures and lists in its
    results."""
    settings = get_settings()
    keys = [str(k) for k in event.get("keys") or []]
    if event.get("url_encoded"):
        keys = [unquote_plus(k) for k in keys]
    remaining = context.get_remaining_time_in_millis() / 1000
    pacing = reindex.Pacing(
        max_depth=settings.max_queue_depth,
        poll_seconds=settings.poll_seconds,
        max_wait_seconds=max(0.0, remaining - settings.send_margin_seconds),
    )
    try:
        result = reindex.enqueue_keys(
            keys,
            bucket=settings.bucket_name,
            table=settings.table_name,
            queue_url=settings.queue_url,
            stale_only=bool(event.get("stale_only")),
            ledger=settings.ledger_table_name,
            include_failed=bool(event.get("include_failed")),
            pacing=pacing,
        )
    except reindex.QueueBusy as exc:
        metrics.add_metric(name="Reindex_queue_busy", unit=MetricUnit.Count, value=1)
        logger.info(
            "ingest queue too deep, batch handed back",
            extra={"depth": exc.depth, "max_depth": exc.max_depth, "waited": exc.waited},
        )
        raise ReindexQueueBusy(str(exc)) from None
    counts = result.counts()
    for name, value in counts.items():
        metrics.add_metric(name=f"Reindex_{name}", unit=MetricUnit.Count, value=value)
    metrics.add_metric(name="Reindex_waited", unit=MetricUnit.Seconds, value=result.waited_seconds)
    logger.info(
        "batch enqueued",
        extra={"keys": len(keys), "counts": counts, "waited": result.waited_seconds},
    )
    if not result.ok:
        # The child fails: the Map counts it against ToleratedFailurePercentage and lists the
        # batch in its results; a rerun re-sends it (a duplicate event is skipped).
        raise ReindexBatchError(f"{counts.get('failed')} of {len(keys)} sends failed")
    out: dict[str, Any] = result.to_json()
    return out
