"""The workflow under injected faults (``pipeline.local.faults``): what each fault does, and a
load that loses nothing.

First, each fault on its own, at rate 1 or with a seed chosen for the draws it makes: the error
the workflow sees is AWS's (``Lambda.TooManyRequestsException``, ``Sandbox.Timedout``,
``DynamoDB.ProvisionedThroughputExceededException`` / ``ThrottlingException``, S3's 503
``SlowDown``), Retry waits are charged to the execution's emulated clock and slept at 1/100,
an execution past 300 s of emulated time fails with ``States.Timeout``, and a duplicate
delivery is a second queue entry; ``local up --faults`` injects in moto's server too.

Then the load: :func:`load.run_load` sends objects (one in ten broken) through a fresh stack
under each fault and under all at once, and every good object must be indexed, every broken
one in the DLQ exactly once with its code, no raw S3 notification in the DLQ, no execution
failed, and the audit must find nothing unaccounted for.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest import mock

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from harness import Harness
from load import DEFAULT_RATES, LoadResult, run_load, scenario_plan

from pipeline import aws
from pipeline.local.faults import FaultInjector
from pipeline.local.pipe import ExecutionResult
from pipeline.ops.audit import PROBLEM_CLASSES

#: An Orthanc key: under its prefix, so the image bucket notifies the ingest queue.
CT = "orthanc/0c4e7b52-9a1d-4f3e-8b6a-2d5c7e9f1a3b.dcm"
NO_RETRIES = Config(retries={"total_max_attempts": 1})


def _task_errors(wf: Harness, execution: ExecutionResult) -> list[str]:
    """The error of every failed task of an execution, in order."""
    arn = wf.execution_arn(execution)
    events = aws.client("stepfunctions").get_execution_history(executionArn=arn)["events"]
    return [e["taskFailedEventDetails"]["error"] for e in events if e["type"] == "TaskFailed"]


def _seed_for(rate: float, pattern: list[bool]) -> int:
    """A seed whose first draws at ``rate`` decide ``pattern`` (the injector's generator is
    ``random.Random``, and a fault the plan does not name draws nothing)."""
    for seed in range(10_000):
        rng = random.Random(seed)
        if [rng.random() < rate for _ in pattern] == pattern:
            return seed
    raise AssertionError("no seed found")


@pytest.fixture
def full_jitter_waits_the_whole_interval() -> Iterator[None]:
    """moto draws each ``JitterStrategy: FULL`` wait at random: make it the whole interval."""
    from moto.stepfunctions.parser.asl.component.common.retry import jitter_strategy_decl

    whole = SimpleNamespace(uniform=lambda low, high: high)
    with mock.patch.object(jitter_strategy_decl, "random", whole):
        yield


# -- each fault --------------------------------------------------------------------------------


@pytest.mark.usefixtures("full_jitter_waits_the_whole_interval")
@pytest.mark.parametrize(("time_limit", "status"), [(300.0, "SUCCEEDED"), (0.5, "FAILED")])
def test_throttled_invocations_are_retried_and_their_waits_charged_not_slept(
    make_harness: Callable[..., Harness],
    dicom: Callable[[str], bytes],
    retry_sleeps: list[float],
    time_limit: float,
    status: str,
) -> None:
    # Given a stack whose first Lambda invocation is throttled, the second not
    seed = _seed_for(0.5, [True, False])
    injector = FaultInjector("lambda-throttle=0.5", seed=seed, time_limit=time_limit)
    wf = make_harness(faults=injector)
    wf.put(CT, dicom("CT_small.dcm"), bucket=wf.bucket)
    retry_sleeps.clear()

    # When the batch runs
    execution = wf.stack.pipe.poll_once()  # type: ignore[union-attr]
    assert execution is not None

    # Then the workflow saw Lambda's throttling error once and retried it (ParseHeaders'
    # one retry, docs/workflow.md's time budget)
    assert _task_errors(wf, execution) == ["Lambda.TooManyRequestsException"]
    assert injector.injected == {"lambda-throttle": 1}
    # and waited 1 s on the emulated clock, sleeping only 1/100 of that
    assert retry_sleeps == pytest.approx([0.01])
    assert injector.durations[execution.name] >= 1.0
    # and the execution succeeded, unless 1 s is past the time limit: then, as AWS would
    # stop it, the pipe reports States.Timeout and leaves the batch on the queue
    assert execution.status == status
    if status == "FAILED":
        assert execution.error == "States.Timeout"
        assert wf.queue_messages(wf.queue_url) == 1
    else:
        assert wf.item(CT)["status"] == "indexed"  # type: ignore[index]


def test_a_timed_out_invocation_fails_as_lambda_reports_it_without_waiting(
    make_harness: Callable[..., Harness], dicom: Callable[[str], bytes]
) -> None:
    # Given a stack whose every invocation times out
    injector = FaultInjector("lambda-timeout=1", seed=1)
    wf = make_harness(faults=injector)
    wf.put(CT, dicom("CT_small.dcm"), bucket=wf.bucket)

    # When one batch runs
    started = time.monotonic()
    execution = wf.stack.pipe.poll_once()  # type: ignore[union-attr]
    assert execution is not None

    # Then ParseHeaders failed with Lambda's timeout error (the handler never ran) and the
    # function's 60 s timeout was charged to the execution, not slept
    errors = _task_errors(wf, execution)
    assert errors and set(errors) == {"Sandbox.Timedout"}
    assert wf.stack.invocations == []
    assert injector.durations[execution.name] >= 60.0 * len(errors)
    assert time.monotonic() - started < 30.0


def test_throttled_writes_are_retried_then_return_the_record_to_the_queue(
    make_harness: Callable[..., Harness], dicom: Callable[[str], bytes]
) -> None:
    # Given a stack whose DynamoDB answers the handler's two reads (the table's and the
    # ledger's BatchGetItem) and then throttles every write
    seed = _seed_for(0.5, [False, False] + [True] * 3)
    injector = FaultInjector("dynamodb-throttle=0.5", seed=seed)
    wf = make_harness(faults=injector)
    wf.put(CT, dicom("CT_small.dcm"), bucket=wf.bucket)

    # When a batch runs
    execution = wf.stack.pipe.poll_once()  # type: ignore[union-attr]
    assert execution is not None

    # Then WriteRecord saw DynamoDB's throttling errors through all three attempts, and the
    # record's message went back to the queue (not to the DLQ), nothing written
    errors = _task_errors(wf, execution)
    assert len(errors) == 3
    assert set(errors) <= {
        "DynamoDB.ProvisionedThroughputExceededException",
        "DynamoDB.ThrottlingException",
    }
    assert injector.injected == {"dynamodb-throttle": 3}
    assert execution.status == "SUCCEEDED" and execution.returned == 1
    assert [r["outcome"] for r in (execution.output or {})["results"]] == ["retry"]
    with injector.paused():
        assert wf.item(CT) is None
        assert wf.dlq() == []


def test_the_handlers_boto3_calls_see_dynamodb_throttling_on_reads_and_writes(
    make_harness: Callable[..., Harness],
) -> None:
    # Given a stack whose DynamoDB always throttles
    wf = make_harness(faults=FaultInjector("dynamodb-throttle=1", seed=1))
    # When a boto3 client (as in the handler) reads and writes
    ddb = boto3.client("dynamodb", config=NO_RETRIES)
    with pytest.raises(ClientError) as read:
        ddb.batch_get_item(RequestItems={wf.table: {"Keys": [{"s3_key": {"S": CT}}]}})
    with pytest.raises(ClientError) as write:
        ddb.put_item(TableName=wf.table, Item={"s3_key": {"S": CT}})
    # Then both fail with a throttling error, as DynamoDB answers it (400, a request id)
    for info in (read, write):
        assert info.value.response["Error"]["Code"] in {
            "ProvisionedThroughputExceededException",
            "ThrottlingException",
        }
        assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
        assert info.value.response["ResponseMetadata"]["RequestId"]


def test_slow_down_answers_s3_reads_with_503(make_harness: Callable[..., Harness]) -> None:
    # Given a stack whose S3 always answers reads with SlowDown, and an object in it
    wf = make_harness(faults=FaultInjector("s3-slowdown=1", seed=1))
    s3 = boto3.client("s3", config=NO_RETRIES)
    s3.put_object(Bucket=wf.bucket, Key=CT, Body=b"x" * 2048)

    # When a client reads it (ranged, as the handler does) or asks for its metadata
    with pytest.raises(ClientError) as get:
        s3.get_object(Bucket=wf.bucket, Key=CT, Range="bytes=0-1023")
    with pytest.raises(ClientError) as head:
        s3.head_object(Bucket=wf.bucket, Key=CT)

    # Then both answer 503 SlowDown, while writes and listings still work
    assert get.value.response["Error"]["Code"] == "SlowDown"
    assert get.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    assert head.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=wf.bucket)["Contents"]] == [CT]


def test_a_slowed_down_header_read_is_retried_by_the_handler(
    make_harness: Callable[..., Harness], dicom: Callable[[str], bytes]
) -> None:
    # Given a stack whose first S3 read answers SlowDown, and no later one
    seed = _seed_for(0.5, [True] + [False] * 6)
    injector = FaultInjector("s3-slowdown=0.5", seed=seed)
    wf = make_harness(faults=injector)
    wf.put(CT, dicom("CT_small.dcm"), bucket=wf.bucket)

    # When the queue drains
    (execution,) = wf.drain()

    # Then the handler's client retried the read and the object was indexed in one execution
    assert injector.injected == {"s3-slowdown": 1}
    assert [r["outcome"] for r in (execution.output or {})["results"]] == ["indexed"]
    assert wf.item(CT)["status"] == "indexed"  # type: ignore[index]


def test_a_duplicate_delivery_comes_in_a_later_batch_and_changes_nothing(
    make_harness: Callable[..., Harness], dicom: Callable[[str], bytes]
) -> None:
    # Given a stack that delivers the first message it receives twice, and no other
    seed = _seed_for(0.5, [True, False])
    injector = FaultInjector("duplicate-delivery=0.5", seed=seed)
    wf = make_harness(faults=injector)
    wf.put(CT, dicom("CT_small.dcm"), bucket=wf.bucket)

    # When the queue drains
    first, second = wf.drain()

    # Then the copy came in a second batch, which found the record already written
    assert injector.injected == {"duplicate-delivery": 1}
    assert [r["outcome"] for r in (first.output or {})["results"]] == ["indexed"]
    assert (second.output or {})["results"] == [
        {"key": CT, "outcome": "skipped", "reason": "stale_or_duplicate"}
    ]
    assert wf.item(CT)["status"] == "indexed"  # type: ignore[index]


def test_local_up_injects_faults_into_moto_s_server(tmp_path: Path) -> None:
    # Given `local up --faults` at rate 1 (moto's server, another process)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    faults = "lambda-throttle=1,dynamodb-throttle=1,s3-slowdown=1"
    argv = ["local", "up", "--no-orthanc", "--state-dir", str(tmp_path), "--faults", faults]
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", *argv],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        info = _stack_json(tmp_path / "stack.json", proc)
        clients: dict[str, Any] = {
            "endpoint_url": info["endpoint_url"],
            "region_name": info["region"],
            "aws_access_key_id": "testing",
            "aws_secret_access_key": "testing",
            "config": NO_RETRIES,
        }
        # When a client of that server reads S3 and DynamoDB and invokes the function
        s3 = boto3.client("s3", **clients)
        s3.put_object(Bucket=info["bucket"], Key="faults.txt", Body=b"x")
        with pytest.raises(ClientError) as get:
            s3.get_object(Bucket=info["bucket"], Key="faults.txt")
        with pytest.raises(ClientError) as read:
            boto3.client("dynamodb", **clients).get_item(
                TableName=info["table"], Key={"s3_key": {"S": "x.dcm"}}
            )
        with pytest.raises(ClientError) as invoke:
            boto3.client("lambda", **clients).invoke(
                FunctionName="dicom-pipeline-parse", Payload=b"{}"
            )
        # Then each sees its fault, as AWS would answer it
        assert get.value.response["Error"]["Code"] == "SlowDown"
        assert read.value.response["Error"]["Code"] in {
            "ProvisionedThroughputExceededException",
            "ThrottlingException",
        }
        assert invoke.value.response["Error"]["Code"] == "TooManyRequestsException"
        assert invoke.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    assert f"injecting faults {faults}" in stderr


def _stack_json(path: Path, proc: subprocess.Popen[bytes], timeout: float = 90) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"local up exited early with {proc.returncode}")
        if path.exists() and path.stat().st_size:
            return dict(json.loads(path.read_text()))
        time.sleep(0.2)
    pytest.fail("local up never wrote stack.json")


# -- the load ----------------------------------------------------------------------------------

#: Objects per scenario: 2,000 under each single fault and under all five at once (issue 12).
#: LOAD_OBJECTS=<n> sets every scenario's count.
LOAD_OBJECTS = {"all": 2000, "single": 2000}
SCENARIOS = [*DEFAULT_RATES, "all"]


def _count(scenario: str) -> int:
    override = os.environ.get("LOAD_OBJECTS")
    if override:
        return int(override)
    return LOAD_OBJECTS["all" if scenario == "all" else "single"]


def violations(result: LoadResult) -> list[str]:
    """Every promise of the load scenario that ``result`` breaks, one line each."""
    found: list[str] = []
    if result.failed_executions:
        errors = sorted({str(e.error) for e in result.failed_executions})
        found.append(f"{len(result.failed_executions)} executions failed: {', '.join(errors)}")
    if result.not_indexed:
        found.append(f"{len(result.not_indexed)} good objects not indexed")
    expected = {(key, code): 1 for key, code in result.broken.items()}
    if dict(result.coded_failures) != expected:
        missing = set(expected) - set(result.coded_failures)
        wrong = {k for k in result.coded_failures if k not in expected}
        found.append(
            f"DLQ v1 messages: {len(missing)} broken objects missing or with another code, "
            f"{len(wrong)} unexpected, {result.duplicated} duplicated"
        )
    if result.raw_notifications:
        found.append(f"{len(result.raw_notifications)} raw S3 notifications in the DLQ")
    if result.report.problems():
        classes = Counter(e.klass for e in result.report.entries if e.klass in PROBLEM_CLASSES)
        found.append(f"the audit found {result.report.problems()} problems: {dict(classes)}")
    return found


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_a_load_under_faults_loses_nothing(scenario: str) -> None:
    # Given a fresh stack injecting the scenario's faults (seeded)
    plan = scenario_plan(scenario)
    count = _count(scenario)

    # When `count` objects, one in ten broken, are uploaded and the queue drains
    result = run_load(plan, count, seed=12)

    # Then the faults really happened
    assert set(result.injected) == set(plan.rates), result.injected
    # and every good object is indexed, every broken one is in the DLQ exactly once with its
    # code, no raw notification is there, no execution failed and the audit is clean
    assert len(result.objects) == count and result.broken
    assert violations(result) == [], f"{plan}: {count} objects in {result.seconds:.0f} s"
