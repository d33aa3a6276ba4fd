"""The workflow layer's harness: the local stack driven from the test thread, plus event builders.

A :class:`Harness` wraps a started :class:`~pipeline.local.stack.LocalStack` (moto in process,
``run_pipe=False``): tests put objects, send S3 event bodies to the ingest queue, call
:meth:`Harness.drain` (the pipe emulator runs each batch through the real ASL file, in this
thread) and then read the table, the DLQ and the executions' outputs.

Two buckets:

* the stack's image bucket notifies the ingest queue, as in AWS; moto's notifications carry no
  ``sequencer`` (the pipeline must cope);
* the *replay* bucket notifies nothing: tests that need sequencers, duplicates or a chosen
  delivery order put objects there and send the event bodies themselves, built from the files
  under ``tests/events/`` (:func:`recorded`, :func:`retarget`).
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

from boto3.dynamodb.types import Binary, TypeDeserializer

from pipeline import aws
from pipeline.local.pipe import ExecutionResult
from pipeline.local.stack import LocalStack

__all__ = [
    "EVENTS",
    "start_harness",
    "REPLAY_BUCKET",
    "Harness",
    "Sequencer",
    "aws_key",
    "md5_etag",
    "recorded",
    "retarget",
]

EVENTS = Path(__file__).resolve().parents[1] / "events"
REPLAY_BUCKET = "dicom-pipeline-replay"
VERSIONED_BUCKET = "dicom-pipeline-replay-versioned"
_deserializer = TypeDeserializer()
_UNSET: Any = object()


def recorded(name: str) -> Any:
    """A fresh copy of an event file under ``tests/events/`` (``.json`` optional)."""
    path = EVENTS / (name if name.endswith(".json") else f"{name}.json")
    return json.loads(path.read_text(encoding="utf-8"))


def aws_key(key: str) -> str:
    """A key as S3 writes it into a notification: form-encoded, ``+`` for a space, ``/`` kept."""
    return quote_plus(key, safe="/")


def md5_etag(body: bytes) -> str:
    """The ETag S3 gives a single-part upload of ``body`` (without quotes)."""
    return hashlib.md5(body).hexdigest()


def retarget(
    record: dict[str, Any],
    *,
    bucket: str,
    key: str | None = None,
    etag: str | None = _UNSET,
    size: int | None = _UNSET,
    sequencer: str | None = _UNSET,
    version_id: str | None = _UNSET,
    event_time: str | None = None,
) -> dict[str, Any]:
    """Point a recorded S3 event record at a moto object; returns the record (changed in place).

    ``key`` is the stored key (encoded here as S3 does); left out, the recorded (already
    encoded) key stays. ``None`` for ``etag``, ``size``, ``sequencer`` or ``version_id``
    removes the member, as S3 omits it (a delete has no size or ETag); left out, the recorded
    value stays.
    """
    s3 = record["s3"]
    s3["bucket"]["name"] = bucket
    s3["bucket"]["arn"] = f"arn:aws:s3:::{bucket}"
    obj = s3["object"]
    if key is not None:
        obj["key"] = aws_key(key)
    for member, value in (
        ("eTag", etag),
        ("size", size),
        ("sequencer", sequencer),
        ("versionId", version_id),
    ):
        if value is _UNSET:
            continue
        if value is None:
            obj.pop(member, None)
        else:
            obj[member] = value
    if event_time is not None:
        record["eventTime"] = event_time
    return record


class Sequencer:
    """S3-like sequencers (18 upper-case hex digits), increasing with each call."""

    def __init__(self, start: int = 0x0065E2F0C47A000000) -> None:
        self._counter = itertools.count(start, 0x10)

    def __call__(self) -> str:
        return f"{next(self._counter):018X}"


def _plain(value: Any) -> Any:
    if isinstance(value, Binary):
        return bytes(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


@dataclass
class Harness:
    """The local stack plus what tests need to drive and observe it."""

    stack: LocalStack
    sequencer: Sequencer = field(default_factory=Sequencer)

    def __post_init__(self) -> None:
        aws.client("s3").create_bucket(Bucket=REPLAY_BUCKET)
        self._versioned = False

    # -- names -----------------------------------------------------------------------------
    @property
    def bucket(self) -> str:
        """The image bucket (it notifies the ingest queue)."""
        return self.stack.bucket

    @property
    def queue_url(self) -> str:
        assert self.stack.info is not None
        return self.stack.info.queue_url

    @property
    def dlq_url(self) -> str:
        assert self.stack.info is not None
        return self.stack.info.dlq_url

    @property
    def table(self) -> str:
        return self.stack.table

    def versioned_bucket(self) -> str:
        """A versioned bucket without notifications (created on first use)."""
        if not self._versioned:
            s3 = aws.client("s3")
            s3.create_bucket(Bucket=VERSIONED_BUCKET)
            s3.put_bucket_versioning(
                Bucket=VERSIONED_BUCKET, VersioningConfiguration={"Status": "Enabled"}
            )
            self._versioned = True
        return VERSIONED_BUCKET

    # -- S3 --------------------------------------------------------------------------------
    def put(self, key: str, body: bytes, bucket: str = REPLAY_BUCKET) -> dict[str, Any]:
        """Put an object; returns ``{"etag", "size", "version_id"}`` as S3 answered."""
        resp = aws.client("s3").put_object(Bucket=bucket, Key=key, Body=body)
        return {
            "etag": resp["ETag"].strip('"'),
            "size": len(body),
            "version_id": resp.get("VersionId"),
        }

    def remove(self, key: str, bucket: str = REPLAY_BUCKET) -> str | None:
        """Delete an object; returns the delete marker's version id on a versioned bucket."""
        resp = aws.client("s3").delete_object(Bucket=bucket, Key=key)
        marker: str | None = resp.get("VersionId")
        return marker

    def exists(self, key: str, bucket: str = REPLAY_BUCKET) -> bool:
        resp = aws.client("s3").list_objects_v2(Bucket=bucket, Prefix=key)
        return any(o["Key"] == key for o in resp.get("Contents", []))

    # -- events ----------------------------------------------------------------------------
    def created(
        self,
        key: str,
        obj: dict[str, Any],
        *,
        bucket: str = REPLAY_BUCKET,
        sequencer: str | None = None,
        template: str = "s3-object-created-put",
        with_version: bool = False,
    ) -> dict[str, Any]:
        """An ``ObjectCreated`` record for ``obj`` (what :meth:`put` returned)."""
        record = recorded(template)["Records"][0]
        return retarget(
            record,
            bucket=bucket,
            key=key,
            etag=obj["etag"],
            size=obj["size"],
            sequencer=sequencer or self.sequencer(),
            version_id=obj["version_id"] if with_version else None,
        )

    def removed(
        self,
        key: str,
        *,
        bucket: str = REPLAY_BUCKET,
        sequencer: str | None = None,
        template: str = "s3-object-removed-delete",
        version_id: str | None = None,
    ) -> dict[str, Any]:
        """An ``ObjectRemoved`` record (no size, no ETag, as S3 sends it)."""
        record = recorded(template)["Records"][0]
        return retarget(
            record,
            bucket=bucket,
            key=key,
            sequencer=sequencer or self.sequencer(),
            version_id=version_id,
        )

    # -- queue -----------------------------------------------------------------------------
    def send(self, *bodies: dict[str, Any] | str) -> None:
        """Send each body to the ingest queue as its own message (a record is wrapped)."""
        sqs = aws.client("sqs")
        for body in bodies:
            message = {"Records": [body]} if isinstance(body, dict) and "s3" in body else body
            text = message if isinstance(message, str) else json.dumps(message)
            sqs.send_message(QueueUrl=self.queue_url, MessageBody=text)

    def purge(self) -> None:
        """Empty the ingest queue of visible messages (e.g. the test event S3 sent at setup).

        Receive-and-delete rather than ``PurgeQueue``, which SQS allows once a minute.
        """
        sqs = aws.client("sqs")
        while messages := sqs.receive_message(
            QueueUrl=self.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0
        ).get("Messages", []):
            for m in messages:
                sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=m["ReceiptHandle"])

    def drain(self, timeout: float = 60.0) -> list[ExecutionResult]:
        """Run every pending batch through the workflow; returns the executions it ran."""
        assert self.stack.pipe is not None
        before = len(self.stack.pipe.results)
        self.stack.drain(timeout=timeout)
        return self.stack.pipe.results[before:]

    # -- observations ----------------------------------------------------------------------
    @property
    def executions(self) -> list[ExecutionResult]:
        assert self.stack.pipe is not None
        return self.stack.pipe.results

    def execution_arn(self, execution: ExecutionResult) -> str:
        """The ARN of an execution the pipe ran (what ``$$.Execution.Id`` held)."""
        assert self.stack.info is not None
        arn = self.stack.info.state_machine_arn.replace(":stateMachine:", ":execution:")
        return f"{arn}:{execution.name}"

    def outcomes(self, executions: list[ExecutionResult] | None = None) -> list[dict[str, Any]]:
        """The per-record results of the (successful) executions, in order."""
        out: list[dict[str, Any]] = []
        for execution in self.executions if executions is None else executions:
            assert execution.status == "SUCCEEDED", (execution.name, execution.error)
            out.extend((execution.output or {}).get("results", []))
        return out

    def item(self, key: str, **kwargs: Any) -> dict[str, Any] | None:
        """The table's item for ``key`` as Python values (binary as bytes), or None."""
        resp = aws.client("dynamodb").get_item(
            TableName=self.table, Key={"s3_key": {"S": key}}, ConsistentRead=True, **kwargs
        )
        if "Item" not in resp:
            return None
        return {k: _plain(_deserializer.deserialize(v)) for k, v in resp["Item"].items()}

    def raw_item(self, key: str) -> dict[str, Any] | None:
        """The item for ``key`` in DynamoDB JSON, as the table holds it."""
        resp = aws.client("dynamodb").get_item(
            TableName=self.table, Key={"s3_key": {"S": key}}, ConsistentRead=True
        )
        item: dict[str, Any] | None = resp.get("Item")
        return item

    def items(self) -> dict[str, dict[str, Any]]:
        """Every item of the table by key."""
        out: dict[str, dict[str, Any]] = {}
        pages = aws.client("dynamodb").get_paginator("scan").paginate(TableName=self.table)
        for page in pages:
            for raw in page["Items"]:
                item = {k: _plain(_deserializer.deserialize(v)) for k, v in raw.items()}
                out[item["s3_key"]] = item
        return out

    def dlq(self) -> list[dict[str, Any]]:
        """Take every message off the DLQ; returns their bodies (parsed JSON)."""
        sqs = aws.client("sqs")
        bodies: list[dict[str, Any]] = []
        while True:
            resp = sqs.receive_message(
                QueueUrl=self.dlq_url, MaxNumberOfMessages=10, WaitTimeSeconds=0
            )
            messages = resp.get("Messages", [])
            if not messages:
                return bodies
            for m in messages:
                bodies.append(json.loads(m["Body"]))
                sqs.delete_message(QueueUrl=self.dlq_url, ReceiptHandle=m["ReceiptHandle"])

    def queue_messages(self, queue_url: str) -> int:
        attrs = aws.client("sqs").get_queue_attributes(
            QueueUrl=queue_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return int(attrs["ApproximateNumberOfMessages"]) + int(
            attrs["ApproximateNumberOfMessagesNotVisible"]
        )


def start_harness(**options: Any) -> tuple[LocalStack, Harness]:
    """Start a stack in process with the pipe driven by the caller; the setup test event is
    purged unless ``keep_test_event=True``."""
    keep = options.pop("keep_test_event", False)
    options = {"server": False, "run_pipe": False, "batch_window": 0.05, **options}
    stack = LocalStack(**options)
    stack.start()
    try:
        harness = Harness(stack)
        if not keep:
            harness.purge()
    except BaseException:
        stack.stop()
        raise
    return stack, harness
