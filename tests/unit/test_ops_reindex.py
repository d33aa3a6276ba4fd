"""Reindex: the order of its synthetic events (a property) and the library and command on moto."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from pipeline import __version__, aws
from pipeline.cli import main
from pipeline.cli.reindex import reindex_map_input
from pipeline.errors import UnprocessedKeys
from pipeline.names import ORTHANC_PREFIX, REINDEX_WORKFLOW_FILE
from pipeline.ops import reindex as reindex_module
from pipeline.ops.reindex import (
    EVENT_NAME,
    ObjectRef,
    Pacing,
    StoredRecord,
    known_failed,
    needs_reindex,
    plan_reindex,
    reindex,
    reindex_record,
)
from pipeline.ops.target import Target
from pipeline.workflow.dlq import ledger_key
from pipeline.workflow.events import REINDEX_MARKER, order_token, reindex_order, split_batch
from pipeline.workflow.table import local_table_definition

# -- the order property ----------------------------------------------------------------------
#: S3 sequencers: hex strings of varying length (real ones are 16-20 digits).
sequencers = st.text(alphabet="0123456789ABCDEF", min_size=1, max_size=40)
#: Event times as S3 (and moto) write them: UTC with milliseconds.
moments = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31), timezones=st.just(UTC)
)


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


#: A real event's order token: a padded sequencer, or ``T`` + the event time (no sequencer).
real_tokens = st.one_of(
    sequencers.map(lambda s: order_token(s, None)),
    moments.map(lambda m: order_token(None, iso(m))),
)


def two_of_a_kind() -> st.SearchStrategy[tuple[str, str]]:
    """Two distinct real tokens of one kind (one deployment never mixes them for a key),
    older first."""
    pair = st.one_of(
        st.tuples(sequencers, sequencers).map(
            lambda p: (order_token(p[0], None), order_token(p[1], None))
        ),
        st.tuples(moments, moments).map(
            lambda p: (order_token(None, iso(p[0])), order_token(None, iso(p[1])))
        ),
    )
    return pair.filter(lambda p: p[0] != p[1]).map(lambda p: (min(p), max(p)))


@given(two_of_a_kind(), moments)
def test_reindex_sorts_above_its_record_and_below_any_newer_event(
    pair: tuple[str, str], when: datetime
) -> None:
    # Given a stored record's order and a newer real event's
    stored, newer = pair

    # When a reindex event follows the stored record
    ours = reindex_order(stored, iso(when))

    # Then it applies over the record, never over the newer event
    assert stored < ours < newer


@given(two_of_a_kind(), moments)
def test_an_older_or_the_same_event_never_beats_a_reindex(
    pair: tuple[str, str], when: datetime
) -> None:
    older, stored = pair
    ours = reindex_order(stored, iso(when))
    assert older < ours and stored < ours


@given(real_tokens, moments)
def test_without_a_record_any_real_event_wins(real: str, when: datetime) -> None:
    assert reindex_order(None, iso(when)) < real
    assert reindex_order("", iso(when)) < real


@given(
    two_of_a_kind(),
    moments,
    st.timedeltas(min_value=timedelta(milliseconds=1), max_value=timedelta(days=3650)),
)
def test_a_later_reindex_replaces_an_earlier_one_and_the_token_does_not_grow(
    pair: tuple[str, str], when: datetime, later: timedelta
) -> None:
    # Given a record written by a reindex event, and a newer real event
    stored, newer = pair
    assume(when + later <= datetime(2099, 12, 31, tzinfo=UTC))
    first = reindex_order(stored, iso(when))

    # When it is reindexed again, later
    second = reindex_order(first, iso(when + later))

    # Then the second applies over the first, still below the newer event, at the same length
    assert first < second < newer
    assert len(second) == len(first)


def test_the_workflow_reads_a_reindex_record_with_its_order() -> None:
    # Given a synthetic record after a stored order
    stored = order_token("0065E2F0C47A000010", None)
    when = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    record = reindex_record("images", ObjectRef("a b/c.dcm", 10, '"abc"'), after=stored, now=when)

    # When the workflow splits it
    (ev,) = split_batch([{"messageId": "m", "body": json.dumps({"Records": [record]})}])

    # Then it is a create of the decoded key, ordered by the reindex order
    assert (ev.kind, ev.key, ev.bucket, ev.etag, ev.size) == (
        "create",
        "a b/c.dcm",
        "images",
        "abc",
        10,
    )
    assert (
        ev.order
        == reindex_order(stored, "2026-01-02T03:04:05.678Z")
        == stored + "R20260102030405678000"
    )
    assert record["eventName"] == EVENT_NAME and "sequencer" not in record["s3"]["object"]


@pytest.mark.parametrize("marker", [{"after": 3}, "T1", {"after": ["x"]}])
def test_a_malformed_reindex_marker_is_malformed(marker: Any) -> None:
    record = reindex_record("images", ObjectRef("a.dcm"), after=None)
    record[REINDEX_MARKER] = marker
    (ev,) = split_batch([{"messageId": "m", "body": json.dumps({"Records": [record]})}])
    assert ev.kind == "fail" and ev.code == "MALFORMED"


def test_a_null_after_means_no_record() -> None:
    record = reindex_record("images", ObjectRef("a.dcm"), after=None)
    record[REINDEX_MARKER] = {"after": None}
    (ev,) = split_batch([{"messageId": "m", "body": json.dumps({"Records": [record]})}])
    assert ev.kind == "create" and ev.order.startswith("-R")


def test_needs_reindex() -> None:
    current = StoredRecord("T1", "indexed", __version__)
    assert needs_reindex(current, stale_only=False)
    assert not needs_reindex(current, stale_only=True)
    assert needs_reindex(None, stale_only=True)
    assert needs_reindex(StoredRecord("T1", "indexed", "0.0.1"), stale_only=True)
    assert needs_reindex(StoredRecord("T1", "deleted", __version__), stale_only=True)


# -- the library and the command on moto -----------------------------------------------------
ORDER_A = order_token("0065E2F0C47A000010", None)
ORDER_B = order_token("0065E2F0C47A000020", None)


@pytest.fixture
def target(aws_env: None) -> Iterator[Target]:
    """A bucket with three ``.dcm`` objects under Orthanc's prefix, a text file and a header
    copy; records for two of them: ``a`` current, ``b`` of an older parser version; none for
    ``sub/c``."""
    from moto import mock_aws

    with mock_aws():
        s3, sqs, ddb = aws.client("s3"), aws.client("sqs"), aws.client("dynamodb")
        s3.create_bucket(Bucket="images")
        for key in (
            "orthanc/a.dcm",
            "orthanc/b.dcm",
            "orthanc/sub/c.dcm",
            "orthanc/notes.txt",
            "orthanc/a.dcm.head",
        ):
            s3.put_object(Bucket="images", Key=key, Body=b"x" * 10)
        ddb.create_table(**local_table_definition("metadata"))
        for key, order, version in (
            ("orthanc/a.dcm", ORDER_A, __version__),
            ("orthanc/b.dcm", ORDER_B, "0.0.1"),
        ):
            ddb.put_item(
                TableName="metadata",
                Item={
                    "s3_key": {"S": key},
                    "event_order": {"S": order},
                    "status": {"S": "indexed"},
                    "parser_version": {"S": version},
                },
            )
        yield Target(
            bucket="images",
            queue_url=sqs.create_queue(QueueName="ingest")["QueueUrl"],
            dlq_url=sqs.create_queue(QueueName="dlq")["QueueUrl"],
            table="metadata",
            region="us-east-1",
        )


def sent_records(target: Target) -> dict[str, dict[str, Any]]:
    """Every record on the ingest queue, by stored key."""
    sqs = aws.client("sqs")
    out: dict[str, dict[str, Any]] = {}
    while msgs := sqs.receive_message(QueueUrl=target.queue_url, MaxNumberOfMessages=10).get(
        "Messages", []
    ):
        for m in msgs:
            (ev,) = split_batch([{"messageId": m["MessageId"], "body": m["Body"]}])
            assert ev.key is not None
            out[ev.key] = {"order": ev.order, "record": json.loads(m["Body"])["Records"][0]}
            sqs.delete_message(QueueUrl=target.queue_url, ReceiptHandle=m["ReceiptHandle"])
    return out


def test_reindex_sends_one_event_per_dcm_object_after_its_record(target: Target) -> None:
    # When every object is reindexed
    result = reindex(target)

    # Then one synthetic event per .dcm object, each after its stored order (or none)
    sent = sent_records(target)
    assert set(sent) == {"orthanc/a.dcm", "orthanc/b.dcm", "orthanc/sub/c.dcm"}
    assert sent["orthanc/a.dcm"]["record"][REINDEX_MARKER] == {"after": ORDER_A}
    assert ORDER_A < sent["orthanc/a.dcm"]["order"] < order_token("0065E2F0C47A000011", None)
    assert sent["orthanc/b.dcm"]["record"][REINDEX_MARKER] == {"after": ORDER_B}
    assert sent["orthanc/sub/c.dcm"]["record"][REINDEX_MARKER] == {"after": ""}
    assert sent["orthanc/sub/c.dcm"]["record"]["s3"]["object"]["size"] == 10
    assert result.to_json() == {
        "listed": 3,
        "sent": 3,
        "failed": 0,
        "current": 0,
        "known_failed": 0,
        "waited_seconds": 0.0,
    }


def test_stale_only_and_prefix(target: Target) -> None:
    assert reindex(target, stale_only=True).sent == 2
    assert set(sent_records(target)) == {"orthanc/b.dcm", "orthanc/sub/c.dcm"}
    result = reindex(target, prefix="orthanc/sub/")
    assert (result.listed, result.sent) == (1, 1)
    assert set(sent_records(target)) == {"orthanc/sub/c.dcm"}


def test_orthancs_prefix_is_the_default_and_an_empty_prefix_is_the_whole_bucket(
    target: Target,
) -> None:
    # Given .dcm objects outside Orthanc's prefix: one at the bucket's root (stored before
    # Orthanc had a prefix) and one in another folder
    for key in ("legacy.dcm", "elsewhere/d.dcm"):
        aws.client("s3").put_object(Bucket="images", Key=key, Body=b"x" * 10)
    orthancs = {"orthanc/a.dcm", "orthanc/b.dcm", "orthanc/sub/c.dcm"}

    # When reindexed without a prefix / Then only Orthanc's objects are listed and sent
    result = reindex(target)
    assert (result.listed, result.sent) == (3, 3)
    assert set(sent_records(target)) == orthancs

    # When reindexed with an empty prefix / Then every .dcm object of the bucket is
    result = reindex(target, prefix="")
    assert (result.listed, result.sent) == (5, 5)
    assert set(sent_records(target)) == orthancs | {"legacy.dcm", "elsewhere/d.dcm"}


def test_plan_reindex_is_the_per_object_logic(target: Target) -> None:
    # Given a batch of items as a Distributed Map child receives them
    items = [
        ObjectRef("orthanc/a.dcm"),
        ObjectRef("orthanc/b.dcm"),
        ObjectRef("orthanc/zzz.dcm"),
        ObjectRef("x.txt"),
    ]

    # When planned / Then one record per object to reindex, in order, after its stored order
    records = plan_reindex("metadata", "images", items, stale_only=True)
    assert [r["s3"]["object"]["key"] for r in records] == ["orthanc/b.dcm", "orthanc/zzz.dcm"]
    assert [r[REINDEX_MARKER]["after"] for r in records] == [ORDER_B, ""]


def test_failed_sends_are_counted(target: Target) -> None:
    def refuse(queue_url: str, bodies: list[str]) -> list[str | None]:
        return ["AccessDenied"] * len(bodies)

    with mock.patch.object(reindex_module, "send_bodies", side_effect=refuse):
        result = reindex(target)
    assert (result.sent, result.failed, result.ok) == (0, 3, False)


@pytest.fixture
def stack_file(target: Target, tmp_path: Path) -> Path:
    path = tmp_path / "stack.json"
    info = {
        "region": "us-east-1",
        "bucket": target.bucket,
        "queue_url": target.queue_url,
        "dlq_url": target.dlq_url,
        "table": target.table,
    }
    path.write_text(json.dumps(info), encoding="utf-8")
    return path


def test_reindex_command(
    target: Target, stack_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["reindex", "--stale-only", "--stack", str(stack_file)]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out) == {
        "listed": 3,
        "sent": 2,
        "failed": 0,
        "current": 1,
        "known_failed": 0,
        "waited_seconds": 0.0,
    }
    assert captured.err.startswith(
        "dicom-pipeline reindex: 3 .dcm objects under 'orthanc/'; 2 reindex events"
    )

    def refuse(queue_url: str, bodies: list[str]) -> list[str | None]:
        return ["AccessDenied"] * len(bodies)

    with mock.patch.object(reindex_module, "send_bodies", side_effect=refuse):
        assert main(["reindex", "--prefix", "orthanc/sub/", "--stack", str(stack_file)]) == 1
    assert "1 failed" in capsys.readouterr().err


def test_the_command_lists_orthancs_prefix_unless_given_an_empty_one(
    target: Target, stack_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a .dcm object at the bucket's root besides Orthanc's three
    aws.client("s3").put_object(Bucket="images", Key="legacy.dcm", Body=b"x")

    # When the command runs without --prefix, then with --prefix ""
    assert main(["reindex", "--stack", str(stack_file)]) == 0
    default = capsys.readouterr()
    assert main(["reindex", "--prefix", "", "--stack", str(stack_file)]) == 0
    whole = capsys.readouterr()

    # Then the first lists Orthanc's prefix, the second the whole bucket, and each says so
    assert json.loads(default.out)["listed"] == 3
    assert "reindex: 3 .dcm objects under 'orthanc/';" in default.err
    assert json.loads(whole.out)["listed"] == 4
    assert "reindex: 4 .dcm objects (the whole bucket);" in whole.err
    assert "legacy.dcm" in sent_records(target)


def test_reindex_command_bad_target_and_missing_bucket(
    target: Target, stack_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["reindex", "--stack", str(tmp_path / "none.json")]) == 1
    assert capsys.readouterr().err.count("\n") == 1
    info = json.loads(stack_file.read_text())
    info["bucket"] = "no-such-bucket"
    stack_file.write_text(json.dumps(info))
    assert main(["reindex", "--stack", str(stack_file)]) == 1
    err = capsys.readouterr().err
    assert err == "dicom-pipeline: error: cannot reindex s3://no-such-bucket: NoSuchBucket\n"


def test_enqueue_keys_is_what_a_distributed_map_child_calls(target: Target) -> None:
    # Given a child's batch of keys (from a listing or an inventory report, stored form)
    keys = ["orthanc/a.dcm", "orthanc/b.dcm", "orthanc/sub/c.dcm", "orthanc/notes.txt"]

    # When enqueued with stale_only
    result = reindex_module.enqueue_keys(
        keys, bucket="images", table="metadata", queue_url=target.queue_url, stale_only=True
    )

    # Then the same decisions as the command's: b (old parser) and sub/c (no record)
    assert result.counts() == {
        "listed": 3,
        "sent": 2,
        "failed": 0,
        "current": 1,
        "known_failed": 0,
    }
    sent = sent_records(target)
    assert set(sent) == {"orthanc/b.dcm", "orthanc/sub/c.dcm"}
    assert sent["orthanc/b.dcm"]["record"][REINDEX_MARKER] == {"after": ORDER_B}


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (
            ["--prefix", "ab", "--stale-only"],
            {"prefix": "ab", "stale_only": True, "include_failed": False},
        ),
        # no --prefix: no prefix in the input, so the map keeps its default (Orthanc's)
        ([], {"stale_only": False, "include_failed": False}),
        # --prefix "": passed on, so the map lists the whole bucket
        (["--prefix", ""], {"prefix": "", "stale_only": False, "include_failed": False}),
    ],
    ids=["prefix", "no-prefix", "empty-prefix"],
)
def test_on_aws_the_command_starts_the_reindex_map(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    flags: list[str],
    expected: dict[str, Any],
) -> None:
    # Given a deployed stack (CloudFormation in moto) whose outputs name its reindex map
    from moto import mock_aws

    from pipeline import aws
    from pipeline.cli import main

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        aws.reset_clients()
        role = aws.client("iam").create_role(RoleName="r", AssumeRolePolicyDocument="{}")
        definition = {"StartAt": "P", "States": {"P": {"Type": "Pass", "End": True}}}
        arn = aws.client("stepfunctions").create_state_machine(
            name="reindex", definition=json.dumps(definition), roleArn=role["Role"]["Arn"]
        )["stateMachineArn"]
        outputs = {
            "Bucket": "b",
            "QueueUrl": "q",
            "DlqUrl": "d",
            "Table": "t",
            "ReindexStateMachineArn": arn,
        }
        template = {
            "Resources": {"Topic": {"Type": "AWS::SNS::Topic"}},
            "Outputs": {k: {"Value": v} for k, v in outputs.items()},
        }
        aws.client("cloudformation").create_stack(
            StackName="DicomPipeline-prod", TemplateBody=json.dumps(template)
        )
        # When reindex runs against it
        status = main(["reindex", "--aws-stack", "DicomPipeline-prod", *flags])
        # Then it started one execution of the map with the prefix (if any) and the filter
        (execution,) = aws.client("stepfunctions").list_executions(stateMachineArn=arn)[
            "executions"
        ]
        started = aws.client("stepfunctions").describe_execution(
            executionArn=execution["executionArn"]
        )
    aws.reset_clients()
    assert status == 0
    assert json.loads(capsys.readouterr().out) == {"execution_arn": execution["executionArn"]}
    assert json.loads(started["input"]) == expected


@pytest.mark.parametrize(
    ("prefix", "listed"),
    [(None, ORTHANC_PREFIX), ("", ""), ("orthanc/7c", "orthanc/7c")],
    ids=["no-prefix", "empty-prefix", "prefix"],
)
def test_the_maps_settings_keep_its_default_prefix_unless_the_command_names_one(
    aws_env: None, prefix: str | None, listed: str
) -> None:
    # Given the reindex map's first states (its defaults merged with the execution's input),
    # substituted as the CDK app does, run by moto's Step Functions
    from moto import mock_aws

    definition = json.loads(
        REINDEX_WORKFLOW_FILE.read_text(encoding="utf-8").replace(
            "${OrthancPrefix}", ORTHANC_PREFIX
        )
    )
    settings = {k: v for k, v in definition["States"]["Settings"].items() if k != "Next"}
    head = {
        "StartAt": "Defaults",
        "States": {
            "Defaults": definition["States"]["Defaults"],
            "Settings": {**settings, "End": True},
        },
    }
    run = reindex_map_input(prefix=prefix, stale_only=False)
    with mock_aws(config={"stepfunctions": {"execute_state_machine": True}}):  # type: ignore[call-overload]
        aws.reset_clients()
        sfn = aws.client("stepfunctions")
        arn = sfn.create_state_machine(
            name="reindex-head",
            definition=json.dumps(head),
            roleArn="arn:aws:iam::123456789012:role/reindex",
        )["stateMachineArn"]
        execution = sfn.start_execution(stateMachineArn=arn, input=json.dumps(run))
        deadline = time.monotonic() + 30
        while (described := sfn.describe_execution(executionArn=execution["executionArn"]))[
            "status"
        ] == "RUNNING" and time.monotonic() < deadline:
            time.sleep(0.05)
    aws.reset_clients()

    # When the command's input is merged / Then the map lists what the command asked for
    assert described["status"] == "SUCCEEDED"
    assert json.loads(described["output"])["prefix"] == listed


# -- pacing by the ingest queue's depth (issue 12, docs/capacity.md) ---------------------------
MANY = 250


@pytest.fixture
def many(target: Target) -> list[str]:
    """``MANY`` more ``.dcm`` objects (no records) besides the target's three: 253 keys, three
    chunks of 100 and one of 53 in listing order."""
    s3 = aws.client("s3")
    for i in range(MANY):
        s3.put_object(Bucket=target.bucket, Key=f"orthanc/many/{i:04d}.dcm", Body=b"x")
    return sorted(
        [
            "orthanc/a.dcm",
            "orthanc/b.dcm",
            "orthanc/sub/c.dcm",
            *(f"orthanc/many/{i:04d}.dcm" for i in range(MANY)),
        ]
    )


def drain(target: Target) -> list[str]:
    """What the pipe would do: take every message off the ingest queue; their keys, in the
    order received (a key may appear twice: the tests count)."""
    sqs = aws.client("sqs")
    keys = []
    while msgs := sqs.receive_message(QueueUrl=target.queue_url, MaxNumberOfMessages=10).get(
        "Messages", []
    ):
        for m in msgs:
            (ev,) = split_batch([{"messageId": m["MessageId"], "body": m["Body"]}])
            if ev.key is not None:
                keys.append(ev.key)
            sqs.delete_message(QueueUrl=target.queue_url, ReceiptHandle=m["ReceiptHandle"])
    return keys


class FakeTime:
    """A clock that only moves when slept on; ``on_sleep`` runs at each sleep."""

    def __init__(self, on_sleep: Callable[[], None] | None = None) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []
        self.on_sleep = on_sleep

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        if self.on_sleep is not None:
            self.on_sleep()

    def clock(self) -> float:
        return self.now


def backlog(target: Target, count: int) -> None:
    """``count`` unrelated messages already on the ingest queue (real uploads)."""
    sqs = aws.client("sqs")
    for _ in range(count):
        sqs.send_message(QueueUrl=target.queue_url, MessageBody=json.dumps({"Records": []}))


def test_queue_depth_counts_visible_in_flight_and_delayed_messages(target: Target) -> None:
    # Given three waiting messages, one of them received (in flight), and one delayed
    sqs = aws.client("sqs")
    backlog(target, 3)
    sqs.receive_message(QueueUrl=target.queue_url, MaxNumberOfMessages=1)
    sqs.send_message(QueueUrl=target.queue_url, MessageBody="{}", DelaySeconds=60)
    # Then all four are still the pipe's to finish
    assert reindex_module.queue_depth(target.queue_url) == 4


def test_a_paced_reindex_waits_for_the_queue_to_drain_and_sends_each_key_once(
    target: Target, many: list[str]
) -> None:
    # Given a queue already holding a backlog deeper than the threshold, and a pipe that
    # drains the queue whenever the reindex sleeps
    backlog(target, 5)
    drained: list[str] = []
    fake = FakeTime(on_sleep=lambda: drained.extend(drain(target)))
    pacing = Pacing(max_depth=3, poll_seconds=2, sleep=fake.sleep, clock=fake.clock)

    # When every object is reindexed with pacing
    result = reindex(target, pacing=pacing)
    drained.extend(drain(target))

    # Then it waited before each chunk (the backlog, then each chunk of 100 it sent itself)
    # and never sent while the queue was deeper than the threshold
    assert fake.sleeps == [2, 2, 2]
    assert result.waited_seconds == 6
    # And every key was sent exactly once, none lost
    assert sorted(drained) == many
    assert (result.listed, result.sent, result.failed, result.stopped) == (253, 253, 0, False)


def test_without_pacing_nothing_waits(target: Target, many: list[str]) -> None:
    backlog(target, 5)
    result = reindex(target)
    assert result.waited_seconds == 0
    assert reindex_module.queue_depth(target.queue_url) == 5 + 253


def test_a_stopped_reindex_resumes_after_its_last_key_without_losing_or_repeating_any(
    target: Target, many: list[str]
) -> None:
    # Given a threshold the reindex's own events pass after two chunks, and a pipe that does
    # not drain while the reindex waits (ingestion stalled)
    fake = FakeTime()
    pacing = Pacing(
        max_depth=150, poll_seconds=4, max_wait_seconds=10, sleep=fake.sleep, clock=fake.clock
    )

    # When it runs
    first = reindex(target, pacing=pacing)

    # Then it stops after two chunks, having waited 10 s, naming the last key it handled
    assert first.stopped and first.ok
    assert (first.listed, first.sent) == (200, 200)
    assert fake.sleeps == [4, 4, 2]
    assert first.resume_after == many[199]
    assert first.to_json()["resume_after"] == many[199]
    sent_first = drain(target)
    assert sorted(sent_first) == many[:200]

    # When the queue has drained and it resumes after that key
    second = reindex(target, pacing=pacing, start_after=first.resume_after)

    # Then it sends the rest, and together every key exactly once
    assert not second.stopped and (second.listed, second.sent) == (53, 53)
    assert sorted(sent_first + drain(target)) == many


def test_a_reindex_stopped_before_its_first_chunk_resumes_from_the_start(
    target: Target,
) -> None:
    backlog(target, 2)
    fake = FakeTime()
    pacing = Pacing(max_depth=1, max_wait_seconds=0, sleep=fake.sleep, clock=fake.clock)
    result = reindex(target, pacing=pacing)
    assert (result.listed, result.sent, result.resume_after) == (0, 0, "")
    assert fake.sleeps == []


def test_a_busy_queue_fails_a_map_child_before_anything_is_sent(target: Target) -> None:
    # Given a queue deeper than the threshold that does not drain
    backlog(target, 3)
    fake = FakeTime()
    pacing = Pacing(
        max_depth=2, poll_seconds=5, max_wait_seconds=12, sleep=fake.sleep, clock=fake.clock
    )

    # When a child's batch is enqueued / Then it raises after waiting, having sent nothing
    with pytest.raises(reindex_module.QueueBusy, match="3 messages") as caught:
        reindex_module.enqueue_keys(
            ["orthanc/a.dcm", "orthanc/b.dcm"],
            bucket="images",
            table="metadata",
            queue_url=target.queue_url,
            pacing=pacing,
        )
    assert caught.value.waited == 12 and fake.sleeps == [5, 5, 2]
    assert reindex_module.queue_depth(target.queue_url) == 3


def test_a_map_child_with_room_sends_and_reports_its_wait(target: Target) -> None:
    backlog(target, 3)
    fake = FakeTime(on_sleep=lambda: drain(target))
    pacing = Pacing(
        max_depth=2, poll_seconds=5, max_wait_seconds=30, sleep=fake.sleep, clock=fake.clock
    )
    result = reindex_module.enqueue_keys(
        ["orthanc/a.dcm", "orthanc/b.dcm"],
        bucket="images",
        table="metadata",
        queue_url=target.queue_url,
        pacing=pacing,
    )
    assert (result.sent, result.waited_seconds) == (2, 5)


@pytest.mark.parametrize("bad", [{"max_depth": 0}, {"poll_seconds": 0}])
def test_pacing_refuses_settings_that_would_never_send(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Pacing(**bad)


def test_the_command_stops_and_resumes(
    target: Target, stack_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a backlog above the threshold
    backlog(target, 2)
    args = ["reindex", "--stack", str(stack_file), "--max-queue-depth", "1", "--max-wait", "0"]

    # When the command runs with no time to wait / Then it stops, exits 1 and says how to resume
    assert main(args) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out)["resume_after"] == ""
    assert captured.err.splitlines()[-1] == (
        "dicom-pipeline reindex: stopped: the ingest queue stayed above 1 messages for 0 s; "
        'resume with --start-after ""'
    )

    # When the queue drained and it resumes / Then it sends all three
    drain(target)
    assert main([*args, "--start-after", ""]) == 0
    assert json.loads(capsys.readouterr().out)["sent"] == 3


@pytest.mark.parametrize(
    "flags", [["--max-queue-depth", "0"], ["--max-queue-depth", "x"], ["--max-wait", "-1"]]
)
def test_the_command_refuses_bad_pacing(
    stack_file: Path, flags: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["reindex", "--stack", str(stack_file), *flags])
    assert exited.value.code == 2


def test_the_help_names_the_library_default() -> None:
    from pipeline.cli import reindex as reindex_command

    assert reindex_command.DEFAULT_DEPTH_HELP == reindex_module.DEFAULT_MAX_QUEUE_DEPTH


# -- records DynamoDB leaves unread ------------------------------------------------------------
def unprocessed_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Make every BatchGetItem return all its keys unprocessed (backoff waits of 0 s);
    returns the number of keys asked per call."""
    import pipeline.workflow.table as table_module

    monkeypatch.setattr(table_module, "BATCH_GET_BASE_DELAY", 0.0)
    asked: list[int] = []

    def batch_get_item(**kwargs: Any) -> dict[str, Any]:
        asked.extend(len(spec["Keys"]) for spec in kwargs["RequestItems"].values())
        return {"Responses": {}, "UnprocessedKeys": kwargs["RequestItems"]}

    real_client = aws.client

    def client(service: str) -> Any:
        made = real_client(service)
        if service == "dynamodb":  # the commands make their clients anew
            monkeypatch.setattr(made, "batch_get_item", batch_get_item)
        return made

    monkeypatch.setattr(aws, "client", client)
    return asked


def test_a_record_left_unread_stops_the_reindex_instead_of_reading_it_as_absent(
    target: Target,
    stack_file: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given DynamoDB leaving every key of BatchGetItem unprocessed through the backoff
    asked = unprocessed_reads(monkeypatch)

    # When a stale-only reindex runs (a.dcm is current: read as absent it would be sent)
    with pytest.raises(UnprocessedKeys):
        reindex(target, stale_only=True)
    with pytest.raises(UnprocessedKeys):
        reindex_module.enqueue_keys(
            ["orthanc/a.dcm"], bucket="images", table="metadata", queue_url=target.queue_url
        )

    # Then nothing was enqueued, after the keys were asked again with backoff
    assert len(asked) > 2
    assert sent_records(target) == {}

    # ... and the command says so in one line and exits 1
    assert main(["reindex", "--stale-only", "--stack", str(stack_file)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot reindex s3://images: BatchGetItem left" in err


# -- objects whose latest event already failed -------------------------------------------------
@pytest.fixture
def with_failures(target: Target) -> Target:
    """The DLQ ledger beside ``target``: ``sub/c.dcm`` (no record) failed a reindex, ``b.dcm``
    failed an event newer than its record, ``a.dcm`` failed an event older than its record."""
    from pipeline.workflow.table import local_ledger_definition

    ddb = aws.client("dynamodb")
    ddb.create_table(**local_ledger_definition("ledger"))
    for key, order in (
        ("orthanc/sub/c.dcm", reindex_order(None, "2026-01-01T00:00:00.000Z")),
        ("orthanc/b.dcm", order_token("0065E2F0C47A000021", None)),
        ("orthanc/a.dcm", order_token("0065E2F0C47A000009", None)),
    ):
        item = {**ledger_key(key, order, now=0), "code": {"S": "TRUNCATED"}}
        ddb.put_item(TableName="ledger", Item=item)
    return dataclasses.replace(target, ledger_table="ledger")


def test_known_failed() -> None:
    record = StoredRecord(ORDER_B, "indexed", "0.0.1")
    assert known_failed(None, reindex_order(None, "2026-01-01T00:00:00.000Z"))
    assert known_failed(record, order_token("0065E2F0C47A000021", None))
    assert known_failed(record, reindex_order(ORDER_B, "2026-01-01T00:00:00.000Z"))
    assert not known_failed(record, order_token("0065E2F0C47A000019", None))
    assert not known_failed(record, None) and not known_failed(None, None)


def test_objects_whose_latest_event_failed_are_left_alone(with_failures: Target) -> None:
    # Given b.dcm and sub/c.dcm whose latest event is a failure the ledger holds (a.dcm's
    # failure is older than its record)

    # When reindexed, stale only and then all
    stale = reindex(with_failures, stale_only=True)
    sent_stale = set(sent_records(with_failures))
    every = reindex(with_failures)
    sent_every = set(sent_records(with_failures))

    # Then no event is sent for them (it would only add a second DLQ message), and the
    # counts say how many were left alone for that reason
    assert sent_stale == set()
    assert (stale.sent, stale.current, stale.known_failed) == (0, 1, 2)
    assert sent_every == {"orthanc/a.dcm"}
    assert (every.sent, every.current, every.known_failed) == (1, 0, 2)


def test_include_failed_reindexes_them_too(with_failures: Target) -> None:
    # When reindexed with include_failed, locally and as a Map child
    result = reindex(with_failures, include_failed=True)
    local = set(sent_records(with_failures))
    child = reindex_module.enqueue_keys(
        ["orthanc/a.dcm", "orthanc/b.dcm", "orthanc/sub/c.dcm"],
        bucket="images",
        table="metadata",
        queue_url=with_failures.queue_url,
        ledger="ledger",
        include_failed=True,
    )

    # Then every object is sent
    assert local == {"orthanc/a.dcm", "orthanc/b.dcm", "orthanc/sub/c.dcm"}
    assert (result.sent, result.known_failed) == (3, 0)
    assert (child.sent, child.known_failed) == (3, 0)


def test_a_map_child_leaves_known_failures_alone(with_failures: Target) -> None:
    # When a Map child plans the three keys with the ledger
    result = reindex_module.enqueue_keys(
        ["orthanc/a.dcm", "orthanc/b.dcm", "orthanc/sub/c.dcm"],
        bucket="images",
        table="metadata",
        queue_url=with_failures.queue_url,
        stale_only=True,
        ledger="ledger",
    )

    # Then it sends nothing and counts them
    assert result.counts() == {
        "listed": 3,
        "sent": 0,
        "failed": 0,
        "current": 1,
        "known_failed": 2,
    }
    assert sent_records(with_failures) == {}


def test_the_command_counts_known_failures_and_takes_include_failed(
    with_failures: Target, stack_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given the stack file naming the ledger
    info = json.loads(stack_file.read_text(encoding="utf-8"))
    stack_file.write_text(json.dumps({**info, "ledger_table": "ledger"}), encoding="utf-8")

    # When the command runs, then again with --include-failed
    assert main(["reindex", "--stack", str(stack_file)]) == 0
    first = capsys.readouterr()
    assert main(["reindex", "--include-failed", "--stack", str(stack_file)]) == 0
    second = capsys.readouterr()

    # Then the summary line counts the objects left alone, and the flag sends them
    assert json.loads(first.out)["known_failed"] == 2
    assert "; 2 already failed (left alone; --include-failed to retry them);" in first.err
    assert json.loads(second.out)["sent"] == 3
