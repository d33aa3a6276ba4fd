"""The ``ParseHeaders`` task of the ingestion workflow: one invocation per Pipes batch."""

from __future__ import annotations

import time
from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from lambdas.observability import MetricUnit, logger, metrics, tracer
from lambdas.settings import get_settings
from pipeline.workflow.batch import BatchPlan, plan_batch

__all__ = ["cold_start", "handler"]


def _observe(plan: BatchPlan) -> None:
    """Metrics and one summary log line: keys, codes, counts and timings only."""
    for outcome, n in plan.counts.items():
        metrics.add_metric(name=f"Records_{outcome}", unit=MetricUnit.Count, value=n)
    for code, n in plan.failures.items():
        metrics.add_metric(name=f"Failed_{code}", unit=MetricUnit.Count, value=n)
    for reason, n in plan.skips.items():
        metrics.add_metric(name=f"Skipped_{reason}", unit=MetricUnit.Count, value=n)
    for reader, n in plan.readers.items():
        # The direct reader hands unusual headers to pydicom's: a rising share is worth a look.
        metrics.add_metric(name=f"Reader_{reader}", unit=MetricUnit.Count, value=n)
    metrics.add_metric(name="HeaderBytesRead", unit=MetricUnit.Bytes, value=plan.header_bytes_read)
    metrics.add_metric(name="ItemsStaged", unit=MetricUnit.Count, value=plan.staged)
    metrics.add_metric(name="LargeHeaderReads", unit=MetricUnit.Count, value=plan.large_reads)
    metrics.add_metric(name="ResultBytes", unit=MetricUnit.Bytes, value=plan.payload_bytes)
    logger.info(
        "batch planned",
        extra={
            "records": len(plan.records),
            "counts": plan.counts,
            "failures": plan.failures,
            "skips": plan.skips,
            "header_bytes_read": plan.header_bytes_read,
            "readers": plan.readers,
            "staged": plan.staged,
            "result_bytes": plan.payload_bytes,
            "parse_ms_max": round(max(plan.parse_ms), 1) if plan.parse_ms else 0,
            "keys": [r.get("key") for r in plan.records][:50],
        },
    )


def cold_start() -> None:
    """Forget the settings read at the first invocation (the local stack calls this when it
    deploys the function again, as Lambda starts new sandboxes)."""
    get_settings.cache_clear()


@logger.inject_lambda_context(log_event=False)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """Plan the batch ``event["messages"]`` (see :func:`pipeline.workflow.batch.plan_batch`),
    handing back what cannot be done before the function's timeout."""
    deadline = time.monotonic() + context.get_remaining_time_in_millis() / 1000
    plan = plan_batch(
        event.get("messages") or [],
        get_settings().ingest_config(),
        execution=event.get("execution"),
        deadline=deadline,
    )
    _observe(plan)
    return plan.payload()
