"""The parse Lambda's configuration: one validated model, read once per cold start.

The model is a :class:`lambdas.environment.EnvironmentSettings` (msgspec): see there why not
Pydantic.
"""

from __future__ import annotations

from functools import cache
from typing import Annotated

from msgspec import Meta

from lambdas.environment import EnvironmentSettings
from pipeline.dicom.header import MAX_HEADER_BYTES, ReadLimits
from pipeline.dicom.sources import MAX_ELEMENTS
from pipeline.names import MAX_RECEIVE_COUNT
from pipeline.workflow.batch import IngestConfig

__all__ = ["ParseSettings", "get_settings"]


class ParseSettings(EnvironmentSettings, frozen=True, kw_only=True):
    """Environment variables of the parse Lambda (names upper-case, e.g. ``TABLE_NAME``).

    Read with ``ParseSettings.from_environment()`` (the constructor does not validate).
    """

    table_name: Annotated[str, Meta(min_length=3, max_length=255)]
    ledger_table_name: Annotated[str, Meta(min_length=3, max_length=255)] | None = None
    tombstone_ttl_days: Annotated[int, Meta(ge=1, le=3650)] = 30
    payload_budget_bytes: Annotated[int, Meta(ge=16 * 1024, le=200 * 1024)] = 200 * 1024
    max_workers: Annotated[int, Meta(ge=1, le=64)] = 8
    max_receive_count: Annotated[int, Meta(ge=1, le=1000)] = MAX_RECEIVE_COUNT
    #: Seconds kept before the function's timeout for staging and returning the result.
    deadline_reserve_seconds: Annotated[float, Meta(ge=1.0, le=30.0)] = 5.0
    first_range_bytes: Annotated[int, Meta(ge=4 * 1024, le=8 * 1024 * 1024)] = 64 * 1024
    bulk_threshold_bytes: Annotated[int, Meta(ge=64, le=1024 * 1024)] = 1024
    #: The header limits bound a record's CPU as well as its memory: raising them past the
    #: defaults breaks the CPU budget of docs/performance.md ("CPU of a batch").
    max_header_bytes: Annotated[int, Meta(ge=1024 * 1024, le=64 * 1024 * 1024)] = MAX_HEADER_BYTES
    max_elements: Annotated[int, Meta(ge=10_000, le=1_000_000)] = MAX_ELEMENTS
    #: Set by the Lambda runtime: the function's memory, which bounds the batch's header reads.
    aws_lambda_function_memory_size: Annotated[int, Meta(ge=128, le=10_240)] | None = None

    def memory_budget_bytes(self) -> int | None:
        """What the batch's header reads may use: 85% of the function's memory less the
        baseline (``None`` outside Lambda, when the runtime sets no memory size)."""
        return _budget(self.aws_lambda_function_memory_size)

    def ingest_config(self) -> IngestConfig:
        """The :class:`~pipeline.workflow.batch.IngestConfig` these settings describe."""
        return IngestConfig(
            table_name=self.table_name,
            ledger_table_name=self.ledger_table_name,
            tombstone_ttl_days=self.tombstone_ttl_days,
            payload_budget=self.payload_budget_bytes,
            max_workers=self.max_workers,
            max_receive_count=self.max_receive_count,
            reserve=self.deadline_reserve_seconds,
            memory_budget=self.memory_budget_bytes(),
            limits=ReadLimits(
                first_range=self.first_range_bytes,
                bulk_threshold=self.bulk_threshold_bytes,
                max_header_bytes=self.max_header_bytes,
                max_elements=self.max_elements,
            ),
        )


MIB = 1024 * 1024
#: The interpreter, boto3, pydicom and Powertools before any read (measured: ``make bench``).
BASELINE_MIB = 100


def _budget(memory_mb: int | None) -> int | None:
    if memory_mb is None:
        return None
    return max(64 * MIB, int(memory_mb * 0.85) * MIB - BASELINE_MIB * MIB)


@cache
def get_settings() -> ParseSettings:
    """Settings from the environment, validated once (at the first invocation)."""
    return ParseSettings.from_environment()
