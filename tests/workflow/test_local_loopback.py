"""moto's server reached in process by its own process's clients (pipeline.local.loopback).

With ``LocalStack(server=True)`` the pipe, the workflow's integrations and the handler run in
the server's process: their calls are served in process, not over loopback HTTP, while other
programs (an uploader of their own, as Orthanc is) still use HTTP and see the same state.

The DICOM object is pydicom's bundled ``CT_small.dcm`` (``tests/conftest.py``).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
from moto.moto_server import werkzeug_app

from pipeline import aws
from pipeline.local.stack import LocalStack


@pytest.fixture
def http_requests(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Requests moto's server answers over HTTP, by ``User-Agent`` family and path start."""
    seen: Counter[str] = Counter()
    original = werkzeug_app.DomainDispatcherApplication.__call__

    def counted(self: Any, environ: dict[str, Any], start_response: Any) -> Any:
        seen[environ.get("HTTP_X_AMZ_TARGET") or environ.get("REQUEST_METHOD", "")] += 1
        return original(self, environ, start_response)

    monkeypatch.setattr(werkzeug_app.DomainDispatcherApplication, "__call__", counted)
    return seen


@pytest.fixture
def server_stack() -> Iterator[LocalStack]:
    with LocalStack(server=True, visibility_timeout=30) as stack:
        yield stack


def _external(stack: LocalStack, service: str) -> Any:
    """A client of its own over HTTP, as another program (Orthanc, the CLI) has."""
    return boto3.session.Session().client(service, endpoint_url=stack.endpoint_url)


def test_the_stack_s_own_calls_skip_http_and_others_see_the_same_state(
    server_stack: LocalStack,
    http_requests: Counter[str],
    dicom: Callable[[str], bytes],
) -> None:
    # Given: a running server stack; an uploader of its own puts an object over HTTP
    stack = server_stack
    assert stack.loopback is not None and stack.info is not None
    served_before = stack.loopback.served
    s3 = _external(stack, "s3")
    s3.put_object(Bucket=stack.bucket, Key="orthanc/lb/a.dcm", Body=dicom("CT_small.dcm"))
    uploaded = sum(http_requests.values())

    # When: the pipe drains the queue (receives, the execution, the handler's reads and writes)
    stack.drain(timeout=60)

    # Then: the object is indexed, as another program reading over HTTP sees it
    item = _external(stack, "dynamodb").get_item(
        TableName=stack.table, Key={"s3_key": {"S": "orthanc/lb/a.dcm"}}
    )["Item"]
    assert item["status"]["S"] == "indexed"
    # and none of the stack's own calls went over HTTP: only the uploader's (and the reads
    # of this test) reached the server
    assert uploaded == 1
    assert sum(http_requests.values()) == 2
    assert stack.loopback.served > served_before
    assert stack.pipe is not None
    # (the bucket's s3:TestEvent may have run in a batch of its own)
    assert stack.pipe.results and {r.status for r in stack.pipe.results} == {"SUCCEEDED"}


def test_the_queue_urls_name_the_server(server_stack: LocalStack) -> None:
    # Given: a running server stack (resources made before anything is routed)
    info = server_stack.info
    assert info is not None and server_stack.endpoint_url is not None

    # Then: stack.json's queue URLs are the server's, usable by another program
    assert info.queue_url.startswith(server_stack.endpoint_url + "/")
    assert info.dlq_url.startswith(server_stack.endpoint_url + "/")
    attrs = _external(server_stack, "sqs").get_queue_attributes(
        QueueUrl=info.queue_url, AttributeNames=["QueueArn"]
    )
    assert attrs["Attributes"]["QueueArn"].endswith(":dicom-pipeline-ingest")


def test_the_call_deadline_still_holds_for_routed_calls(server_stack: LocalStack) -> None:
    # Given: a deadline closer than one attempt's time budget
    # When: the stack's own client calls the server
    # Then: the attempt is not sent, as over HTTP
    with aws.deadline(time.monotonic() + 1), pytest.raises(aws.DeadlineExceeded):
        aws.client("s3").list_objects_v2(Bucket=server_stack.bucket)


def test_without_the_loopback_every_call_goes_over_http(
    http_requests: Counter[str], dicom: Callable[[str], bytes]
) -> None:
    # Given: a server stack with the loopback off
    with LocalStack(server=True, visibility_timeout=30, loopback=False) as stack:
        assert stack.loopback is None
        # When: an object is uploaded and drained
        stack.upload("orthanc/lb/b.dcm", dicom("CT_small.dcm"))
        stack.drain(timeout=60)
    # Then: the pipe's receives and the workflow's calls reached the server over HTTP
    assert http_requests["AmazonSQS.ReceiveMessage"] > 0
    assert http_requests["AWSStepFunctions.StartExecution"] == 1


def test_on_new_client_sees_clients_made_after_it_until_removed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given: a hook
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    seen: list[str] = []
    remove = aws.on_new_client(lambda service, _: seen.append(service))
    try:
        # When: clients are made after it
        aws.reset_clients()
        aws.client("sqs")
        aws.client("sqs")  # cached: not made again
    finally:
        remove()
    aws.reset_clients()
    aws.client("s3")
    # Then: it saw each new client once, and none after it was removed
    assert seen == ["sqs"]
    aws.reset_clients()
