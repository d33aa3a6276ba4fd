"""The reindex Distributed Map's child task: one invocation per batch of keys.

The event is the task's payload (``pipeline/workflow/reindex.asl.json``):
``{"keys": [...], "stale_only": bool, "url_encoded": bool}``; keys from an S3 Inventory report
are URL-encoded (``url_encoded``), keys from a listing are not.
"""

from __future__ import annotations

from functools import cache
from typing import Any
from urllib.parse import unquote_plus

from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from lambdas.observability import MetricUnit, logger, metrics, tracer
from pipeline.ops import reindex

__all__ = ["ReindexBatchError", "ReindexSettings", "get_settings", "handler"]


class ReindexBatchError(Exception):
    """Some events of the batch could not be sent to the ingest queue."""


class ReindexSettings(BaseSettings):
    """Environment variables of the reindex Lambda (set by the CDK app)."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore")

    bucket_name: str = Field(min_length=3, max_length=63)
    table_name: str = Field(min_length=3, max_length=255)
    queue_url: str = Field(pattern=r"^https://")


@cache
def get_settings() -> ReindexSettings:
    """Settings from the environment, validated once (at the first invocation)."""
    return ReindexSettings()  # type: ignore[call-arg]


@logger.inject_lambda_context(log_event=False)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, int]:
    """Enqueue a synthetic reindex event for each key of the batch (see
    ``pipeline.ops.reindex.enqueue_keys``); a failure fails the child execution, which the
    Map counts against its tolerated failures and lists in its results."""
    settings = get_settings()
    keys = [str(k) for k in event.get("keys") or []]
    if event.get("url_encoded"):
        keys = [unquote_plus(k) for k in keys]
    result = reindex.enqueue_keys(
        keys,
        bucket=settings.bucket_name,
        table=settings.table_name,
        queue_url=settings.queue_url,
        stale_only=bool(event.get("stale_only")),
    )
    counts: dict[str, int] = result.to_json()
    for name, value in counts.items():
        metrics.add_metric(name=f"Reindex_{name}", unit=MetricUnit.Count, value=value)
    logger.info("batch enqueued", extra={"keys": len(keys), "counts": counts})
    if not result.ok:
        # The child fails: the Map counts it against ToleratedFailurePercentage and lists the
        # batch in its results; a rerun re-sends it (a duplicate event is skipped).
        raise ReindexBatchError(f"{counts.get('failed')} of {len(keys)} sends failed")
    return counts
