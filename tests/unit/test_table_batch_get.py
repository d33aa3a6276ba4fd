"""``BatchGetItem`` and its unprocessed keys (``pipeline.workflow.table.batch_get``) on moto.

moto processes every key, so a wrapper around the cached client's ``batch_get_item`` plays
DynamoDB under load: for a number of calls it serves only part of the request (the real
answer for the first keys) and returns the rest as ``UnprocessedKeys``, as DynamoDB does when
a call exceeds its capacity or response size.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from pipeline import aws
from pipeline.errors import TransientError, UnprocessedKeys
from pipeline.workflow.table import (
    BATCH_GET_BASE_DELAY,
    BATCH_GET_MAX_DELAY,
    batch_get,
    local_table_definition,
)

TABLE = "metadata"


@pytest.fixture
def table(aws_env: None) -> Iterator[str]:
    """The metadata table on moto, holding ``k0.dcm`` … ``k29.dcm``."""
    from moto import mock_aws

    with mock_aws():
        ddb = aws.client("dynamodb")
        ddb.create_table(**local_table_definition(TABLE))
        for i in range(30):
            ddb.put_item(
                TableName=TABLE,
                Item={"s3_key": {"S": f"k{i}.dcm"}, "event_order": {"S": f"T{i:03d}"}},
            )
        yield TABLE


def keys(n: int) -> list[dict[str, Any]]:
    return [{"s3_key": {"S": f"k{i}.dcm"}} for i in range(n)]


@pytest.fixture
def partial(table: str, monkeypatch: pytest.MonkeyPatch) -> Callable[[int | None], list[int]]:
    """Make the next ``times`` calls (``None``: every call) process only 2 keys each and
    return the rest unprocessed; returns the list of the number of keys asked per call."""

    def install(times: int | None) -> list[int]:
        ddb = aws.client("dynamodb")
        real = ddb.batch_get_item
        asked: list[int] = []

        def batch_get_item(**kwargs: Any) -> dict[str, Any]:
            request = kwargs["RequestItems"]
            spec = request[TABLE]
            asked.append(len(spec["Keys"]))
            if times is not None and len(asked) > times:
                return dict(real(**kwargs))
            served, rest = spec["Keys"][:2], spec["Keys"][2:]
            resp = dict(real(RequestItems={TABLE: {**spec, "Keys": served}}))
            resp["UnprocessedKeys"] = {TABLE: {**spec, "Keys": rest}} if rest else {}
            return resp

        monkeypatch.setattr(ddb, "batch_get_item", batch_get_item)
        return asked

    return install


def test_unprocessed_keys_are_asked_again_after_growing_jittered_waits(
    partial: Callable[[int | None], list[int]],
) -> None:
    # Given DynamoDB leaving all but two keys unprocessed on the first four calls
    asked = partial(4)
    waits: list[float] = []

    # When 10 keys are read
    rows = batch_get(TABLE, keys(10), "s3_key, event_order", sleep=waits.append)

    # Then every key was read, each retry asking only what was left
    assert sorted(r["s3_key"]["S"] for r in rows) == sorted(f"k{i}.dcm" for i in range(10))
    assert asked == [10, 8, 6, 4, 2]
    # ... after a wait before each retry, within an exponentially growing, capped bound
    assert len(waits) == 4
    for n, wait in enumerate(waits):
        assert 0 <= wait <= min(BATCH_GET_MAX_DELAY, BATCH_GET_BASE_DELAY * 2**n)


def test_the_waits_are_full_jitter_drawn_from_the_generator(
    partial: Callable[[int | None], list[int]],
) -> None:
    # Given DynamoDB leaving keys unprocessed on the first four calls, and a seeded generator
    partial(4)
    waits: list[float] = []

    # When 10 keys are read
    batch_get(TABLE, keys(10), "s3_key", sleep=waits.append, rng=random.Random(7))

    # Then each wait is uniform between 0 and the bound (the same draws as the generator's)
    expected = random.Random(7)
    bounds = [BATCH_GET_BASE_DELAY * 2**n for n in range(4)]
    assert waits == [expected.uniform(0, b) for b in bounds]


def test_keys_still_unprocessed_after_the_last_attempt_raise_a_coded_error(
    partial: Callable[[int | None], list[int]],
) -> None:
    # Given DynamoDB that never processes more than two keys a call
    asked = partial(None)
    waits: list[float] = []

    # When 20 keys are read with at most 3 attempts
    with pytest.raises(UnprocessedKeys) as caught:
        batch_get(TABLE, keys(20), "s3_key", attempts=3, sleep=waits.append)

    # Then the error is UNAVAILABLE (a transient failure), names counts and no key, and
    # keeps the six rows that were read: a key not read is never reported as absent
    assert isinstance(caught.value, TransientError)
    assert caught.value.code == "UNAVAILABLE"
    assert asked == [20, 18, 16]
    assert len(waits) == 2
    assert "14 of 20 keys" in caught.value.message
    assert ".dcm" not in caught.value.message
    assert len(caught.value.rows) == 6


def test_no_wait_runs_past_the_deadline(
    partial: Callable[[int | None], list[int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given DynamoDB that never processes everything, and a deadline that leaves time for
    # exactly one call attempt, not for a wait and a second one
    asked = partial(None)
    waits: list[float] = []
    monkeypatch.setattr(aws, "remaining", lambda: aws.ATTEMPT_SECONDS)

    # When keys are read
    with pytest.raises(UnprocessedKeys):
        batch_get(TABLE, keys(10), "s3_key", sleep=waits.append)

    # Then it gives up after the first call instead of sleeping past the deadline
    assert asked == [10]
    assert waits == []


def test_without_unprocessed_keys_nothing_waits(table: str) -> None:
    # Given a table that answers everything at once
    waits: list[float] = []

    # When 30 keys (and 5 absent ones) are read in chunks of 100
    rows = batch_get(
        TABLE,
        keys(30) + [{"s3_key": {"S": f"absent{i}.dcm"}} for i in range(5)],
        "s3_key",
        sleep=waits.append,
    )

    # Then the 30 items come back, absent keys are simply absent, and nothing waited
    assert len(rows) == 30
    assert waits == []
