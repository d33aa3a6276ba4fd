"""The clients of ``pipeline.aws`` under throttling: bounded attempts and backoff, and no
client-side rate limiting that a burst of throttles would turn into waits no deadline bounds.

No network: a ``before-send`` hook answers every HTTP attempt with DynamoDB's throttling
error, as AWS would under a hot partition.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from unittest import mock

import pytest
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ClientError
from botocore.retries import bucket

from pipeline import aws

THROTTLED = {
    "__type": "com.amazonaws.dynamodb.v20120810#ThrottlingException",
    "message": "Rate of requests exceeds the allowed throughput.",
}


class _Raw:
    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._body


@pytest.fixture
def throttled_dynamodb(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, list[int]]]:
    """The process's DynamoDB client, every attempt of which is throttled (attempts counted)."""
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    aws.reset_clients()
    attempts: list[int] = []

    def throttle(request: Any, **_: Any) -> AWSResponse:
        attempts.append(1)
        body = json.dumps(THROTTLED).encode()
        return AWSResponse(
            request.url, 400, {"Content-Type": "application/x-amz-json-1.0"}, _Raw(body)
        )

    made = aws.client("dynamodb")
    made.meta.events.register("before-send", throttle)
    yield made, attempts
    aws.reset_clients()


def test_a_throttled_call_makes_the_bounded_attempts_with_short_backoffs(
    throttled_dynamodb: tuple[Any, list[int]],
) -> None:
    # Given a client whose every attempt is throttled, and botocore's backoff sleeps recorded
    made, attempts = throttled_dynamodb
    # When one call is made
    with mock.patch("botocore.endpoint.time.sleep") as slept, pytest.raises(ClientError) as raised:
        made.get_item(TableName="t", Key={"k": {"S": "a"}})

    # Then it made MAX_ATTEMPTS attempts, and waited at most 1 s, then 2 s, between them
    assert raised.value.response["Error"]["Code"] == "ThrottlingException"
    assert len(attempts) == aws.MAX_ATTEMPTS
    waits = [c.args[0] for c in slept.call_args_list]
    assert len(waits) == aws.MAX_ATTEMPTS - 1
    assert all(0 <= w <= 2**i for i, w in enumerate(waits))


def test_a_burst_of_throttles_never_makes_later_calls_wait_client_side(
    throttled_dynamodb: tuple[Any, list[int]],
) -> None:
    # Given a client whose every attempt is throttled, and botocore's client-side rate
    # limiter (adaptive mode's token bucket) watched
    made, attempts = throttled_dynamodb
    acquire = mock.patch.object(bucket.TokenBucket, "acquire", autospec=True)
    with mock.patch("botocore.endpoint.time.sleep"), acquire as acquired:
        # When a burst of 20 calls is throttled
        for _ in range(20):
            with pytest.raises(ClientError):
                made.get_item(TableName="t", Key={"k": {"S": "a"}})

    # Then every call made its attempts, and none waited for a client-side token: the time a
    # call takes stays within what pipeline.aws.deadline accounts for
    assert len(attempts) == 20 * aws.MAX_ATTEMPTS
    assert acquired.call_count == 0
