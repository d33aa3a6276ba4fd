"""An object's life through the whole path: S3 → queue → pipe → workflow → table.

These tests use the image bucket's own (moto) notifications, which carry no ``sequencer``:
the pipeline must order such events by their time and S3's state.
"""

from __future__ import annotations

import gzip
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from io import BytesIO

import pydicom
from harness import REPLAY_BUCKET, Harness, md5_etag, recorded

from pipeline import __version__, aws
from pipeline.dicom.parse import parse

#: Under Orthanc's prefix: the only keys whose objects notify the ingest queue.
KEY = "orthanc/0b7c1f0e-2d4a-4f6b-9c3e-8a1d5e7f9b20.dcm"
UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
#: What a tombstone may hold (DESIGN.md: pipeline attributes only).
TOMBSTONE_ATTRIBUTES = {
    "s3_key",
    "bucket",
    "status",
    "etag",
    "size",
    "version_id",
    "sequencer",
    "event_time",
    "event_order",
    "indexed_at",
    "parser_version",
    "expires_at",
}


def header(body: bytes) -> pydicom.Dataset:
    return pydicom.dcmread(BytesIO(body), stop_before_pixels=True)


def test_create_indexes_the_object(wf: Harness, dicom: Callable[[str], bytes]) -> None:
    # Given a DICOM object uploaded under an Orthanc-like key (moto notifies the queue)
    body = dicom("CT_small.dcm")
    wf.stack.upload(KEY, body)

    # When the pipe runs the workflow
    runs = wf.drain()

    # Then one execution indexed it, with provenance and the header's identity
    assert [r.status for r in runs] == ["SUCCEEDED"]
    assert wf.outcomes(runs) == [{"key": KEY, "outcome": "indexed"}]
    item = wf.item(KEY)
    assert item is not None
    ds = header(body)
    assert item["status"] == "indexed"
    assert item["bucket"] == wf.bucket
    assert item["etag"] == md5_etag(body)
    assert item["size"] == len(body)
    assert item["parser_version"] == __version__
    assert 0 < item["header_bytes"] < len(body)
    for uid in UIDS:
        assert item[uid] == str(ds[uid].value)
    assert item["Modality"] == ds.Modality
    assert item["PatientID"] == ds.PatientID
    assert "expires_at" not in item
    assert datetime.fromisoformat(item["indexed_at"].replace("Z", "+00:00")) <= datetime.now(UTC)
    assert wf.dlq() == []


def test_overwrite_replaces_the_record(wf: Harness, dicom: Callable[[str], bytes]) -> None:
    # Given an indexed object
    first_body, second_body = dicom("CT_small.dcm"), dicom("MR_small.dcm")
    wf.stack.upload(KEY, first_body)
    wf.drain()
    first = wf.item(KEY)
    assert first is not None
    time.sleep(0.01)  # moto's events are ordered by their millisecond timestamps

    # When the object is overwritten with another instance
    wf.stack.upload(KEY, second_body)
    runs = wf.drain()

    # Then the record describes the new object: new ETag, new identity, re-indexed
    assert wf.outcomes(runs) == [{"key": KEY, "outcome": "indexed"}]
    item = wf.item(KEY)
    assert item is not None
    assert item["etag"] == md5_etag(second_body) != first["etag"]
    assert item["SOPInstanceUID"] == header(second_body).SOPInstanceUID != first["SOPInstanceUID"]
    assert item["Modality"] == "MR"
    assert item["indexed_at"] > first["indexed_at"]
    assert item["event_order"] > first["event_order"]
    assert list(wf.items()) == [KEY]


def test_delete_leaves_a_tombstone(wf: Harness, dicom: Callable[[str], bytes]) -> None:
    # Given an indexed object
    wf.stack.upload(KEY, dicom("CT_small.dcm"))
    wf.drain()
    time.sleep(0.01)

    # When it is deleted
    wf.stack.delete(KEY)
    runs = wf.drain()

    # Then the item is a tombstone: status deleted, a TTL ~30 days out, no metadata left
    assert wf.outcomes(runs) == [{"key": KEY, "outcome": "deleted"}]
    item = wf.item(KEY)
    assert item is not None
    assert item["status"] == "deleted"
    assert set(item) <= TOMBSTONE_ATTRIBUTES
    for gone in (*UIDS, "Modality", "PatientID", "PatientName", "dicom_json_gz", "header_bytes"):
        assert gone not in item
    expires = datetime.fromtimestamp(int(item["expires_at"]), UTC)
    expected = datetime.now(UTC) + timedelta(days=30)
    assert abs(expires - expected) < timedelta(minutes=5)
    assert wf.dlq() == []


def test_dicom_json_round_trips_through_the_table_as_gzip_bytes(
    wf: Harness, dicom: Callable[[str], bytes]
) -> None:
    # Given an object indexed through Step Functions' DynamoDB integration
    body = dicom("CT_small.dcm")
    wf.stack.upload(KEY, body)
    wf.drain()

    # When the binary attribute is read back
    raw = wf.raw_item(KEY)
    item = wf.item(KEY)

    # Then the table holds raw gzip bytes (not base64 text) that decode to the header's JSON
    assert raw is not None and item is not None
    stored = raw["dicom_json_gz"]["B"]
    assert isinstance(stored, bytes)
    assert stored[:2] == b"\x1f\x8b"
    assert "dicom_json_s3" not in item
    dicom_json = json.loads(gzip.decompress(item["dicom_json_gz"]))
    assert dicom_json == parse(f"s3://{wf.bucket}/{KEY}").dicom_json
    assert dicom_json["00080018"]["Value"] == [header(body).SOPInstanceUID]


def test_one_lambda_invocation_per_batch(wf: Harness, dicom: Callable[[str], bytes]) -> None:
    # Given twelve create events waiting on the queue (the pipe batches at most ten)
    bodies = [dicom(n) for n in ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm")]
    events = []
    for i in range(12):
        key = f"batch/{i:02d}.dcm"
        events.append(wf.created(key, wf.put(key, bodies[i % 3])))
    wf.send(*events)

    # When the pipe drains the queue
    runs = wf.drain()

    # Then two executions ran, each with exactly one invocation of the parse Lambda
    assert [r.messages for r in runs] == [10, 2]
    assert wf.stack.invocations == [{"function": wf.stack.function, "error": None}] * 2
    assert [o["outcome"] for o in wf.outcomes(runs)] == ["indexed"] * 12
    assert len(wf.items()) == 12


def test_s3_test_event_is_skipped(make_harness: Callable[..., Harness]) -> None:
    # Given a stack whose bucket notification just sent S3's test event to the queue
    wf = make_harness(keep_test_event=True)

    # When the pipe runs it
    runs = wf.drain()

    # Then it is skipped: nothing in the table, nothing in the DLQ
    assert wf.outcomes(runs) == [{"key": None, "outcome": "skipped", "reason": "test_event"}]
    assert wf.items() == {}
    assert wf.dlq() == []


def test_pipe_emulator_delivers_the_pipes_batch_shape(
    wf: Harness, dicom: Callable[[str], bytes]
) -> None:
    # Given one object and Pipes' documented batch shape (tests/events/pipes-sqs-batch.json)
    expected = recorded("pipes-sqs-batch")
    wf.send(wf.created("shape.dcm", wf.put("shape.dcm", dicom("rtplan.dcm"))))

    # When the pipe runs the batch
    (run,) = wf.drain()

    # Then the execution's input is a JSON array of SQS records with Pipes' members
    assert wf.stack.info is not None
    arn = wf.stack.info.state_machine_arn.replace(":stateMachine:", ":execution:")
    desc = aws.client("stepfunctions").describe_execution(executionArn=f"{arn}:{run.name}")
    (record,) = json.loads(desc["input"])
    assert set(record) == set(expected[0])
    assert record["eventSource"] == "aws:sqs"
    assert json.loads(record["body"])["Records"][0]["s3"]["bucket"]["name"] == REPLAY_BUCKET
    assert set(record["attributes"]) >= set(expected[0]["attributes"])
