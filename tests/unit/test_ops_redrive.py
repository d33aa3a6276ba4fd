"""The DLQ library and commands (``pipeline.ops.redrive``, ``dlq list`` / ``dlq redrive``) on moto.

Both message shapes are built as the pipeline writes them: v1 messages with
:func:`pipeline.workflow.dlq.dlq_message` (and their ledger entries with ``ledger_key``), raw
notifications from the recorded S3 events under ``tests/events/`` (what the ingest queue's own
redrive moves to the DLQ).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from botocore.exceptions import ClientError

from pipeline import aws
from pipeline.cli import main
from pipeline.errors import UnprocessedKeys
from pipeline.ops import redrive as redrive_module
from pipeline.ops.redrive import (
    UNKNOWN,
    RedriveError,
    group,
    key_prefix,
    list_dlq,
    read_dlq,
    redrive,
    release,
)
from pipeline.ops.target import Target
from pipeline.workflow.dlq import dlq_message, ledger_key, s3_ref
from pipeline.workflow.events import order_token
from pipeline.workflow.table import local_ledger_definition, local_table_definition

EVENTS = Path(__file__).resolve().parents[1] / "events"
BUCKET = "images"


def recorded(name: str) -> Any:
    return json.loads((EVENTS / f"{name}.json").read_text(encoding="utf-8"))


def s3_record(key: str, sequencer: str, *, name: str = "s3-object-created-put") -> dict[str, Any]:
    """A recorded S3 record pointed at ``key`` (stored form, no characters to encode)."""
    record: dict[str, Any] = recorded(name)["Records"][0]
    record["s3"]["bucket"]["name"] = BUCKET
    record["s3"]["object"]["key"] = key
    record["s3"]["object"]["sequencer"] = sequencer
    return record


@pytest.fixture
def target(aws_env: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[Target]:
    """A DLQ, an ingest queue, the metadata table and the ledger on moto (in process)."""
    from moto import mock_aws

    # moto answers exactly: no long poll for the receive that finds the queue empty.
    monkeypatch.setattr(redrive_module, "AWS_EMPTY_WAIT_SECONDS", 0)
    with mock_aws():
        sqs, ddb = aws.client("sqs"), aws.client("dynamodb")
        ddb.create_table(**local_table_definition("metadata"))
        ddb.create_table(**local_ledger_definition("ledger"))
        yield Target(
            bucket=BUCKET,
            queue_url=sqs.create_queue(QueueName="ingest")["QueueUrl"],
            dlq_url=sqs.create_queue(QueueName="dlq")["QueueUrl"],
            table="metadata",
            ledger_table="ledger",
            region="us-east-1",
        )


def put_v1(target: Target, record: dict[str, Any] | None, code: str = "NOT_DICOM") -> str:
    """A v1 message as the workflow sends it, plus its ledger entry; returns its order."""
    key = record["s3"]["object"]["key"] if record else None
    sequencer = record["s3"]["object"].get("sequencer") if record else None
    body = dlq_message(
        code=code,
        message="what and where",
        s3=s3_ref(BUCKET, key, None, sequencer),
        record=record,
        failed_at="2026-01-01T00:00:00.000Z",
        execution="arn:aws:states:us-east-1:123456789012:express:x",
        state="ParseHeaders",
    )
    aws.client("sqs").send_message(QueueUrl=target.dlq_url, MessageBody=json.dumps(body))
    order = order_token(sequencer, record.get("eventTime") if record else None)
    if key:
        item = {**ledger_key(key, order, now=0), "code": {"S": code}}
        aws.client("dynamodb").put_item(TableName="ledger", Item=item)
    return order


def put_raw(target: Target, body: dict[str, Any] | str) -> None:
    text = body if isinstance(body, str) else json.dumps(body)
    aws.client("sqs").send_message(QueueUrl=target.dlq_url, MessageBody=text)


def drain(queue_url: str) -> list[dict[str, Any]]:
    """Take every visible message off a queue; returns the parsed bodies."""
    sqs = aws.client("sqs")
    out: list[dict[str, Any]] = []
    while msgs := sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10).get(
        "Messages", []
    ):
        for m in msgs:
            out.append(json.loads(m["Body"]))
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=m["ReceiptHandle"])
    return out


def visible(queue_url: str) -> int:
    attrs = aws.client("sqs").get_queue_attributes(
        QueueUrl=queue_url, AttributeNames=["ApproximateNumberOfMessages"]
    )["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"])


def ledger() -> set[tuple[str, str]]:
    items = aws.client("dynamodb").scan(TableName="ledger")["Items"]
    return {(i["s3_key"]["S"], i["event_order"]["S"]) for i in items}


def index(key: str, order: str) -> None:
    """A record in the metadata table written by the event of ``order``."""
    aws.client("dynamodb").put_item(
        TableName="metadata",
        Item={"s3_key": {"S": key}, "event_order": {"S": order}, "status": {"S": "indexed"}},
    )


# -- reading ---------------------------------------------------------------------------------
def test_read_dlq_decodes_both_shapes_and_keeps_every_message(target: Target) -> None:
    # Given a v1 message, a raw notification with two records, a test event and junk
    v1_record = s3_record("studies/a.dcm", "0065E2F0C47A000010")
    v1_order = put_v1(target, v1_record, code="TRUNCATED")
    raw = recorded("s3-several-records")
    put_raw(target, raw)
    put_raw(target, recorded("s3-test-event"))
    put_raw(target, "not json")

    # When the DLQ is read
    entries = read_dlq(target)

    # Then every message is one entry, in flight (nothing visible) until released
    assert len(entries) == 4
    assert visible(target.dlq_url) == 0
    by_code = {e.code for e in entries}
    assert by_code == {"TRUNCATED", UNKNOWN}
    (v1,) = [e for e in entries if not e.raw]
    assert (v1.key, v1.event_order, v1.failed_at) == (
        "studies/a.dcm",
        v1_order,
        "2026-01-01T00:00:00.000Z",
    )
    assert v1.records == [v1_record] and v1.record == v1_record
    assert v1.sequencer == "0065E2F0C47A000010" and v1.prefix == "studies/"
    several = next(e for e in entries if e.raw and len(e.records) > 1)
    assert several.records == raw["Records"]
    assert several.failed_at is None and several.sent_at is not None
    assert several.event_order is not None and several.key is not None
    assert release(entries) == 4
    assert visible(target.dlq_url) == 4


def test_list_dlq_changes_nothing_and_groups_by_code_and_prefix(target: Target) -> None:
    # Given failures under two prefixes and one raw notification of a flat Orthanc key
    for i in range(3):
        put_v1(target, s3_record(f"studies/{i}.dcm", f"0065E2F0C47A00002{i}"))
    put_v1(target, s3_record("other/x.dcm", "0065E2F0C47A000030"), code="TRUNCATED")
    put_raw(target, {"Records": [s3_record("orthanc/7c2e9a41-0d3b.dcm", "0065E2F0C47A000040")]})

    # When listed
    entries = list_dlq(target)

    # Then the messages are back at once, and grouped
    assert visible(target.dlq_url) == 5
    assert group(entries) == [
        {"code": "NOT_DICOM", "prefix": "studies/", "count": 3, "raw": 0},
        {"code": "TRUNCATED", "prefix": "other/", "count": 1, "raw": 0},
        {"code": UNKNOWN, "prefix": "orthanc/7c", "count": 1, "raw": 1},
    ]


def test_key_prefix() -> None:
    assert key_prefix("a/b/c.dcm") == "a/"
    assert key_prefix("7c2e9a41-0d3b-4e58-b6f1-2a9c8d7e5f30.dcm") == "7c"
    assert key_prefix("") == key_prefix(None) == ""


def test_orthancs_flat_keys_group_below_its_prefix() -> None:
    # Given Orthanc's keys (flat, under its prefix), and a folder below the prefix
    keys = [
        "orthanc/7c2e9a41-0d3b-4e58-b6f1-2a9c8d7e5f30.dcm",
        "orthanc/7c00aa00-0000-4000-8000-000000000000.dcm",
        "orthanc/e1b3c5d7-0000-4000-8000-000000000000.dcm",
        "orthanc/sub/x.dcm",
    ]

    # When grouped / Then by the UUID's first two digits below the prefix (one group for
    # all, "orthanc/", would say nothing), and a folder below it by its name
    assert [key_prefix(k) for k in keys] == [
        "orthanc/7c",
        "orthanc/7c",
        "orthanc/e1",
        "orthanc/sub/",
    ]
    # and a group's prefix selects its keys for ``dlq redrive --key-prefix``
    assert [k for k in keys if k.startswith(key_prefix(keys[0]))] == keys[:2]


# -- redrive ---------------------------------------------------------------------------------
def test_redrive_resends_both_shapes_and_forgets_the_ledger(target: Target) -> None:
    # Given a v1 failure (noted in the ledger) and a raw notification in the DLQ
    v1_record = s3_record("a.dcm", "0065E2F0C47A000010")
    put_v1(target, v1_record)
    raw_record = s3_record("b.dcm", "0065E2F0C47A000020")
    put_raw(target, {"Records": [raw_record]})
    assert len(ledger()) == 1

    # When redriven
    result = redrive(target)

    # Then each event went to the ingest queue as {"Records": [record]}, the DLQ is empty and
    # the ledger entry is gone (a new failure of the event is reported again)
    sent = drain(target.queue_url)
    assert sorted(sent, key=json.dumps) == sorted(
        [{"Records": [v1_record]}, {"Records": [raw_record]}], key=json.dumps
    )
    assert visible(target.dlq_url) == 0 and read_dlq(target) == []
    assert ledger() == set()
    assert (result.read, result.selected, result.sent, result.deleted) == (2, 2, 2, 2)
    assert result.ok and result.failed == 0 and result.released == 0


def test_redrive_sends_each_record_of_a_raw_message(target: Target) -> None:
    # Given a raw notification with three records (S3 may send several)
    records = [s3_record(f"k{i}.dcm", f"0065E2F0C47A00001{i}") for i in range(3)]
    put_raw(target, {"Records": records})

    # When redriven / Then one message per record, and the DLQ message is gone
    result = redrive(target)
    assert sorted(json.dumps(b) for b in drain(target.queue_url)) == sorted(
        json.dumps({"Records": [r]}) for r in records
    )
    assert result.sent == 3 and result.deleted == 1 and visible(target.dlq_url) == 0


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"code": "TRUNCATED"}, {"b.dcm"}),
        ({"code": "truncated"}, {"b.dcm"}),
        ({"code": UNKNOWN}, {"studies/c.dcm"}),
        ({"key_prefix": "studies/"}, {"studies/c.dcm"}),
        ({"key_prefix": "a"}, {"a.dcm"}),
        ({"code": "NOT_DICOM", "key_prefix": "b"}, set()),
    ],
)
def test_redrive_filters_by_code_and_key_prefix(
    target: Target, options: dict[str, str], expected: set[str]
) -> None:
    # Given three failures of different codes and prefixes
    put_v1(target, s3_record("a.dcm", "0065E2F0C47A000010"), code="NOT_DICOM")
    put_v1(target, s3_record("b.dcm", "0065E2F0C47A000020"), code="TRUNCATED")
    put_raw(target, {"Records": [s3_record("studies/c.dcm", "0065E2F0C47A000030")]})

    # When redriven with a filter
    result = redrive(target, **options)  # type: ignore[arg-type]

    # Then only the selected were sent; the others are back in the DLQ at once
    sent = {b["Records"][0]["s3"]["object"]["key"] for b in drain(target.queue_url)}
    assert sent == expected
    assert result.selected == len(expected) and result.released == 3 - len(expected)
    assert visible(target.dlq_url) == 3 - len(expected)


def test_dry_run_changes_nothing_and_says_what_would_be_sent(target: Target) -> None:
    # Given a v1 failure, an already indexed one, and a raw notification
    put_v1(target, s3_record("a.dcm", "0065E2F0C47A000010"))
    indexed_order = put_v1(target, s3_record("b.dcm", "0065E2F0C47A000020"))
    index("b.dcm", indexed_order)
    put_raw(target, {"Records": [s3_record("c.dcm", "0065E2F0C47A000030")]})
    before = ledger()

    # When redriven as a dry run
    result = redrive(target, dry_run=True)

    # Then nothing was sent or deleted, the ledger is intact, and the result says what a real
    # run would do
    assert drain(target.queue_url) == []
    assert visible(target.dlq_url) == 3
    assert ledger() == before
    assert result.dry_run and (result.sent, result.already_indexed, result.deleted) == (2, 1, 0)
    decisions = {e["key"]: (e["decision"], e["done"]) for e in result.entries}
    assert decisions == {
        "a.dcm": ("send", False),
        "b.dcm": ("already_indexed", False),
        "c.dcm": ("send", False),
    }


def test_an_entry_the_table_holds_is_deleted_without_a_send(target: Target) -> None:
    # Given failures whose keys the table holds: by a newer event, by this event, by an older
    newer = put_v1(target, s3_record("newer.dcm", "0065E2F0C47A000010"))
    same = put_v1(target, s3_record("same.dcm", "0065E2F0C47A000020"))
    older = put_v1(target, s3_record("older.dcm", "0065E2F0C47A000030"))
    index("newer.dcm", order_token("0065E2F0C47A000011", None))
    index("same.dcm", same)
    index("older.dcm", order_token("0065E2F0C47A000029", None))
    assert newer < order_token("0065E2F0C47A000011", None)

    # When redriven
    result = redrive(target)

    # Then only the event newer than its record is sent; every message is deleted
    sent = [b["Records"][0]["s3"]["object"]["key"] for b in drain(target.queue_url)]
    assert sent == ["older.dcm"]
    assert older > order_token("0065E2F0C47A000029", None)
    assert result.already_indexed == 2 and result.deleted == 3
    assert visible(target.dlq_url) == 0


def test_duplicate_messages_of_one_event_send_it_once(target: Target) -> None:
    # Given the same failure twice (a crash between the DLQ send and the ledger write)
    record = s3_record("a.dcm", "0065E2F0C47A000010")
    put_v1(target, record)
    put_v1(target, record)

    # When redriven / Then one send; both messages are deleted
    result = redrive(target)
    assert drain(target.queue_url) == [{"Records": [record]}]
    assert sorted(e["decision"] for e in result.entries) == ["duplicate", "send"]
    assert visible(target.dlq_url) == 0


def test_what_cannot_be_resent_stays_and_test_events_go(target: Target) -> None:
    # Given a v1 message without a record, junk, a malformed record and a test event
    put_v1(target, None, code="MALFORMED")
    put_raw(target, "not json")
    put_raw(target, {"Records": [{"eventName": "ObjectCreated:Put"}]})
    put_raw(target, recorded("s3-test-event"))

    # When redriven
    result = redrive(target)

    # Then nothing is sent; the test event is deleted, the rest kept for a person
    assert drain(target.queue_url) == []
    assert result.kept == 3 and result.deleted == 1 and result.ok
    assert visible(target.dlq_url) == 3


def test_a_failed_send_leaves_the_message_and_a_rerun_finishes(target: Target) -> None:
    # Given two failures
    first, second = (
        s3_record("a.dcm", "0065E2F0C47A000010"),
        s3_record("b.dcm", "0065E2F0C47A000020"),
    )
    put_v1(target, first)
    put_v1(target, second)
    sqs = aws.client("sqs")
    real_send = sqs.send_message_batch

    def refuse_b(**kwargs: Any) -> Any:
        keep = [e for e in kwargs["Entries"] if "b.dcm" not in e["MessageBody"]]
        refused = [e for e in kwargs["Entries"] if "b.dcm" in e["MessageBody"]]
        resp = real_send(**{**kwargs, "Entries": keep}) if keep else {"Successful": []}
        resp["Failed"] = [
            {"Id": e["Id"], "Code": "ServiceUnavailable", "SenderFault": False} for e in refused
        ]
        return resp

    # When the send of one of them fails
    with mock.patch.object(sqs, "send_message_batch", side_effect=refuse_b):
        result = redrive(target)

    # Then that message is still in the DLQ (visible again), the other is done; not ok
    assert not result.ok and result.failed == 1 and result.deleted == 1
    assert [e["decision"] for e in result.entries if e["key"] == "b.dcm"] == ["failed"]
    assert drain(target.queue_url) == [{"Records": [first]}]
    (left,) = read_dlq(target)
    assert left.key == "b.dcm"
    release([left])

    # When run again / Then it finishes: the DLQ is empty, the ledger too
    again = redrive(target)
    assert again.ok and again.sent == 1
    assert drain(target.queue_url) == [{"Records": [second]}]
    assert visible(target.dlq_url) == 0 and ledger() == set()


def test_a_crash_mid_way_loses_nothing_and_a_rerun_sends_nothing_indexed(target: Target) -> None:
    # Given two failures
    first, second = (
        s3_record("a.dcm", "0065E2F0C47A000010"),
        s3_record("b.dcm", "0065E2F0C47A000020"),
    )
    orders = [put_v1(target, first), put_v1(target, second)]
    sqs = aws.client("sqs")

    # When the process dies after the sends, before the DLQ messages were deleted
    with (
        mock.patch.object(sqs, "delete_message_batch", side_effect=RuntimeError("killed")),
        pytest.raises(RuntimeError),
    ):
        redrive(target)

    # Then both messages are still in the DLQ (given back at once)
    assert visible(target.dlq_url) == 2
    assert len(drain(target.queue_url)) == 2
    # and once the workflow indexed one of the re-sent events, a rerun does not send it again
    index("a.dcm", orders[0])
    result = redrive(target)
    assert drain(target.queue_url) == [{"Records": [second]}]
    assert result.already_indexed == 1 and result.sent == 1
    assert visible(target.dlq_url) == 0


def test_a_send_that_raises_keeps_the_chunk_and_reports_failure(target: Target) -> None:
    # Given a failure, and an ingest queue that refuses every send
    put_v1(target, s3_record("a.dcm", "0065E2F0C47A000010"))
    sqs = aws.client("sqs")
    denied = ClientError({"Error": {"Code": "AccessDenied", "Message": "no"}}, "SendMessageBatch")

    # When redriven / Then the message stays, the run is not ok
    with mock.patch.object(sqs, "send_message_batch", side_effect=denied):
        result = redrive(target)
    assert result.failed == 1 and not result.ok
    assert visible(target.dlq_url) == 1


def test_without_a_ledger_table_nothing_is_sent(target: Target) -> None:
    # Given a target that names no ledger (the workflow would skip the re-sent event)
    put_v1(target, s3_record("a.dcm", "0065E2F0C47A000010"))
    bare = Target(
        bucket=target.bucket, queue_url=target.queue_url, dlq_url=target.dlq_url, table="metadata"
    )

    # When redriven / Then it refuses, and the message is back in the DLQ
    with pytest.raises(RedriveError, match="ledger"):
        redrive(bare)
    assert visible(target.dlq_url) == 1 and drain(target.queue_url) == []
    # a dry run still says what would be sent
    assert redrive(bare, dry_run=True).sent == 1


def test_progress_is_reported_per_selected_entry(target: Target) -> None:
    for i in range(12):
        put_v1(target, s3_record(f"k{i}.dcm", f"0065E2F0C47A0000{i:02X}"))
    seen: list[tuple[int, int | None]] = []
    redrive(target, progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (12, 12) and len(seen) == 12


# -- commands --------------------------------------------------------------------------------
@pytest.fixture
def stack_file(target: Target, tmp_path: Path) -> Path:
    """A stack.json naming the moto resources (no endpoint: moto intercepts in process)."""
    path = tmp_path / "stack.json"
    info = {
        "region": "us-east-1",
        "bucket": target.bucket,
        "queue_url": target.queue_url,
        "dlq_url": target.dlq_url,
        "table": target.table,
        "ledger_table": target.ledger_table,
    }
    path.write_text(json.dumps(info), encoding="utf-8")
    return path


def test_dlq_list_command_prints_groups(
    target: Target, stack_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    put_v1(target, s3_record("studies/a.dcm", "0065E2F0C47A000010"))
    put_raw(target, {"Records": [s3_record("orthanc/7c.dcm", "0065E2F0C47A000020")]})

    assert main(["dlq", "list", "--stack", str(stack_file)]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0].split() == ["code", "prefix", "messages", "raw"]
    assert sorted(line.split() for line in lines[1:]) == [
        ["NOT_DICOM", "studies/", "1", "0"],
        ["UNKNOWN", "orthanc/7c", "1", "1"],
    ]
    assert "2 messages (1 raw S3 notifications)" in captured.err

    assert main(["dlq", "list", "--json", "--stack", str(stack_file)]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["total"] == 2 and document["raw"] == 1
    assert {e["key"] for e in document["entries"]} == {"studies/a.dcm", "orthanc/7c.dcm"}
    assert visible(target.dlq_url) == 2


def test_dlq_redrive_command(
    target: Target, stack_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    put_v1(target, s3_record("a.dcm", "0065E2F0C47A000010"))
    put_v1(target, s3_record("b.dcm", "0065E2F0C47A000020"), code="TRUNCATED")

    # A dry run: one line per selected message, a summary, nothing changed
    assert (
        main(["dlq", "redrive", "--dry-run", "--code", "TRUNCATED", "--stack", str(stack_file)])
        == 0
    )
    captured = capsys.readouterr()
    (line,) = [json.loads(x) for x in captured.out.splitlines()]
    assert line["key"] == "b.dcm" and line["decision"] == "send" and not line["done"]
    assert "(dry run)" in captured.err and "would send 1 event;" in captured.err
    assert visible(target.dlq_url) == 2

    # The real run
    assert main(["dlq", "redrive", "--stack", str(stack_file)]) == 0
    assert "sent 2 events" in capsys.readouterr().err
    assert visible(target.dlq_url) == 0 and len(drain(target.queue_url)) == 2


def test_dlq_redrive_command_exits_1_when_a_send_failed(
    target: Target, stack_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    put_v1(target, s3_record("a.dcm", "0065E2F0C47A000010"))

    # (the command activates its target, which makes new clients: refuse in the library)
    def refuse(queue_url: str, bodies: list[str]) -> list[str | None]:
        return ["AccessDenied"] * len(bodies)

    with mock.patch.object(redrive_module, "send_bodies", side_effect=refuse):
        assert main(["dlq", "redrive", "--stack", str(stack_file)]) == 1
    assert "1 failed" in capsys.readouterr().err


def test_bad_target_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dlq", "list", "--stack", str(tmp_path / "none.json")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("dicom-pipeline: error: no ")
    assert main(["dlq", "redrive"]) in (1,)  # .local/stack.json absent in the test's cwd


def test_an_aws_error_is_one_line(
    target: Target, stack_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    info = json.loads(stack_file.read_text())
    info["dlq_url"] = info["dlq_url"] + "-missing"
    stack_file.write_text(json.dumps(info))
    assert main(["dlq", "list", "--stack", str(stack_file)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot read the DLQ" in err


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


def test_a_record_left_unread_is_an_error_never_absent(
    target: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a failure whose event the table already holds, and DynamoDB leaving every key of
    # BatchGetItem unprocessed through the backoff
    order = put_v1(target, s3_record("indexed.dcm", "0065E2F0C47A000010"))
    index("indexed.dcm", order)
    asked = unprocessed_reads(monkeypatch)

    # When redriven
    with pytest.raises(UnprocessedKeys) as caught:
        redrive(target)

    # Then the redrive stops with the coded error (the key was asked again, with backoff):
    # nothing is re-sent as if the record were absent, the ledger entry stays, and the
    # message is back on the DLQ
    assert caught.value.code == "UNAVAILABLE"
    assert len(asked) > 1
    assert visible(target.queue_url) == 0
    assert ledger() == {("indexed.dcm", order)}
    assert visible(target.dlq_url) == 1


def test_the_redrive_command_reports_unread_records_in_one_line(
    target: Target,
    stack_file: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given a failure in the DLQ and DynamoDB leaving every key unprocessed
    put_v1(target, s3_record("a.dcm", "0065E2F0C47A000010"))
    unprocessed_reads(monkeypatch)

    # When the command redrives / Then exit 1 with one line naming counts, sending nothing
    assert main(["dlq", "redrive", "--stack", str(stack_file)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "cannot redrive the DLQ: BatchGetItem left 1 of 1 keys" in err
    assert visible(target.queue_url) == 0
