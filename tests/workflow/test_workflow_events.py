"""The event shapes AWS sends (``tests/events/``), end to end through the workflow."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from harness import REPLAY_BUCKET, Harness, md5_etag, recorded, retarget

from pipeline import aws

K1 = "4b1f6a53-6e8c-4f02-9d47-1c2a9f0e8b31.dcm"
K2 = "9d0c2e7a-51b4-4c8e-a3f6-2b7d8e1f0c45.dcm"
K3 = "e2a94c1b-7f35-4d60-8b2e-5c9f1a3d7e08.dcm"


def point_at(record: dict[str, Any], obj: dict[str, Any] | None) -> dict[str, Any]:
    """Keep the recorded key and sequencer; bucket, ETag and size from the moto object."""
    if obj is None:
        return retarget(record, bucket=REPLAY_BUCKET)
    return retarget(record, bucket=REPLAY_BUCKET, etag=obj["etag"], size=obj["size"])


def test_recorded_test_event_is_skipped(wf: Harness) -> None:
    # Given the s3:TestEvent S3 sends when a notification is configured
    body = recorded("s3-test-event")

    # When it is delivered
    wf.send(body)
    runs = wf.drain()

    # Then it is skipped and nothing else happens
    assert wf.outcomes(runs) == [{"key": None, "outcome": "skipped", "reason": "test_event"}]
    assert wf.items() == {}
    assert wf.dlq() == []


def test_several_records_in_one_body(wf: Harness, dicom: Callable[[str], bytes]) -> None:
    # Given one body with three records: two creates and a delete of an absent object
    body = recorded("s3-several-records")
    first, second, gone = body["Records"]
    point_at(first, wf.put(K1, dicom("CT_small.dcm")))
    point_at(second, wf.put(K3, dicom("MR_small.dcm")))
    point_at(gone, None)

    # When the body is delivered as one message
    wf.send(body)
    runs = wf.drain()

    # Then each record has its own outcome, all in one execution and one Lambda invocation
    assert len(runs) == 1 and runs[0].messages == 1
    assert wf.outcomes(runs) == [
        {"key": K1, "outcome": "indexed"},
        {"key": K3, "outcome": "indexed"},
        {"key": K2, "outcome": "deleted"},
    ]
    assert len(wf.stack.invocations) == 1
    items = wf.items()
    assert {k: v["status"] for k, v in items.items()} == {
        K1: "indexed",
        K3: "indexed",
        K2: "deleted",
    }
    assert items[K1]["sequencer"] == first["s3"]["object"]["sequencer"]


def test_url_encoded_keys_are_decoded(wf: Harness, dicom: Callable[[str], bytes]) -> None:
    # Given objects whose keys S3 form-encodes in events ("+" for space, %2F, %2B, %26, UTF-8)
    body = recorded("s3-url-encoded-keys")
    keys = ["study 2026-03/series 1/CT small (copy).dcm", "plus+sign & café.dcm"]
    files = ["CT_small.dcm", "MR_small.dcm"]
    for record, key, name in zip(body["Records"], keys, files, strict=True):
        point_at(record, wf.put(key, dicom(name)))

    # When the recorded body is delivered
    wf.send(body)
    runs = wf.drain()

    # Then the items are keyed by the decoded keys, as stored
    assert wf.outcomes(runs) == [{"key": k, "outcome": "indexed"} for k in keys]
    assert sorted(wf.items()) == sorted(keys)


def test_url_encoded_keys_from_the_bucket_notification(
    wf: Harness, dicom: Callable[[str], bytes]
) -> None:
    # Given an upload to the notifying bucket under a key with spaces, "+", "/" and brackets
    key = "orthanc/study 1/a+b (1).dcm"
    wf.stack.upload(key, dicom("CT_small.dcm"))

    # When the pipe runs (moto encodes "/" as %2F, AWS leaves it)
    runs = wf.drain()

    # Then the item's key is the stored key
    assert wf.outcomes(runs) == [{"key": key, "outcome": "indexed"}]
    assert list(wf.items()) == [key]


def test_dcm_head_and_foreign_keys_are_skipped(wf: Harness, dicom: Callable[[str], bytes]) -> None:
    # Given events for Orthanc's ".dcm.head" companion and a foreign ".txt" object
    body = recorded("s3-not-dcm-keys")
    head, text = body["Records"]
    point_at(head, wf.put(f"{K1}.head", dicom("CT_small.dcm")[:512]))
    point_at(text, wf.put("exports/notes.txt", b"not an image\n"))

    # When they are delivered
    wf.send(body)
    runs = wf.drain()

    # Then both are skipped as not_dcm_key, without a record or a DLQ message
    assert wf.outcomes(runs) == [
        {"key": f"{K1}.head", "outcome": "skipped", "reason": "not_dcm_key"},
        {"key": "exports/notes.txt", "outcome": "skipped", "reason": "not_dcm_key"},
    ]
    assert wf.items() == {}
    assert wf.dlq() == []


def test_bucket_notification_filters_on_the_dcm_suffix(
    wf: Harness, dicom: Callable[[str], bytes]
) -> None:
    # Given the image bucket's notification (prefix "orthanc/", suffix ".dcm", created and
    # removed)
    # When Orthanc-like companions and foreign objects are written and removed there
    wf.stack.upload(f"orthanc/{K1}.head", dicom("CT_small.dcm")[:512])
    wf.stack.upload("orthanc/notes.txt", b"x")
    wf.stack.delete("orthanc/notes.txt")

    # Then the ingest queue receives nothing
    assert wf.queue_messages(wf.queue_url) == 0


def test_only_dcm_keys_under_orthancs_prefix_are_ingested(
    wf: Harness, dicom: Callable[[str], bytes]
) -> None:
    # Given the image bucket's notification (prefix "orthanc/", suffix ".dcm"), as on AWS
    # When .dcm objects are written outside Orthanc's prefix (at the bucket's root, in another
    # folder, under a name that only starts like it) and one of them removed
    for key in (K1, f"studies/{K2}", f"orthanc-old/{K3}"):
        wf.stack.upload(key, dicom("CT_small.dcm"))
    wf.stack.delete(K1)

    # Then the ingest queue receives nothing, and nothing is recorded or dead-lettered
    assert wf.queue_messages(wf.queue_url) == 0
    assert wf.drain() == []
    assert wf.items() == {} and wf.dlq() == []

    # When the same object is written under Orthanc's prefix
    wf.stack.upload(f"orthanc/{K1}", dicom("CT_small.dcm"))

    # Then it is ingested
    assert wf.outcomes(wf.drain()) == [{"key": f"orthanc/{K1}", "outcome": "indexed"}]
    assert list(wf.items()) == [f"orthanc/{K1}"] and wf.dlq() == []


def _multipart(key: str, body: bytes) -> dict[str, Any]:
    s3 = aws.client("s3")
    upload = s3.create_multipart_upload(Bucket=REPLAY_BUCKET, Key=key)
    part = s3.upload_part(
        Bucket=REPLAY_BUCKET, Key=key, UploadId=upload["UploadId"], PartNumber=1, Body=body
    )
    done = s3.complete_multipart_upload(
        Bucket=REPLAY_BUCKET,
        Key=key,
        UploadId=upload["UploadId"],
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]},
    )
    return {"etag": done["ETag"].strip('"'), "size": len(body), "version_id": None}


def _copy(key: str, body: bytes) -> dict[str, Any]:
    s3 = aws.client("s3")
    s3.put_object(Bucket=REPLAY_BUCKET, Key="incoming/source.dcm", Body=body)
    resp = s3.copy_object(
        Bucket=REPLAY_BUCKET,
        Key=key,
        CopySource={"Bucket": REPLAY_BUCKET, "Key": "incoming/source.dcm"},
    )
    return {"etag": resp["CopyObjectResult"]["ETag"].strip('"'), "size": len(body)}


@pytest.mark.parametrize(
    ("template", "write"),
    [
        ("s3-object-created-complete-multipart-upload", _multipart),
        ("s3-object-created-copy", _copy),
    ],
)
def test_created_by_multipart_upload_and_copy(
    wf: Harness,
    dicom: Callable[[str], bytes],
    template: str,
    write: Callable[[str, bytes], dict[str, Any]],
) -> None:
    # Given an object written by a multipart upload or a copy, and its recorded event
    body = dicom("CT_small.dcm")
    obj = write(K2, body)
    record = retarget(
        recorded(template)["Records"][0],
        bucket=REPLAY_BUCKET,
        key=K2,
        etag=obj["etag"],
        size=obj["size"],
    )

    # When it is delivered
    wf.send(record)
    runs = wf.drain()

    # Then the object is indexed with the ETag S3 gave it
    assert wf.outcomes(runs) == [{"key": K2, "outcome": "indexed"}]
    item = wf.item(K2)
    assert item is not None
    assert item["etag"] == obj["etag"]
    if template.endswith("multipart-upload"):
        assert item["etag"].endswith("-1")
    else:
        assert item["etag"] == md5_etag(body)


def test_versioned_put_then_delete_marker(wf: Harness, dicom: Callable[[str], bytes]) -> None:
    # Given a versioned bucket: an object put, then overwritten, then deleted (a delete marker)
    bucket = wf.versioned_bucket()
    first_body, second_body = dicom("CT_small.dcm"), dicom("MR_small.dcm")
    first = wf.put(K1, first_body, bucket=bucket)
    wf.put(K1, second_body, bucket=bucket)
    marker = wf.remove(K1, bucket=bucket)
    put = retarget(
        recorded("s3-object-created-put-versioned")["Records"][0],
        bucket=bucket,
        etag=first["etag"],
        size=first["size"],
        version_id=first["version_id"],
    )

    # When the first version's event arrives after both changes
    wf.send(put)
    wf.drain()

    # Then that version is read (pinned by versionId), not the newer one
    item = wf.item(K1)
    assert item is not None
    assert item["version_id"] == first["version_id"]
    assert item["etag"] == md5_etag(first_body)
    assert item["Modality"] == "CT"

    # When the delete marker's event arrives
    removed = retarget(
        recorded("s3-object-removed-delete-marker-created")["Records"][0],
        bucket=bucket,
        version_id=marker,
    )
    wf.send(removed)
    runs = wf.drain()

    # Then the item is a tombstone naming the marker
    assert wf.outcomes(runs) == [{"key": K1, "outcome": "deleted"}]
    item = wf.item(K1)
    assert item is not None
    assert item["status"] == "deleted"
    assert item["version_id"] == marker


def test_recorded_pipes_batch_runs_as_is(wf: Harness, dicom: Callable[[str], bytes]) -> None:
    # Given Pipes' batch (test event, put K1, copy K3, delete K1) pointed at moto objects:
    # K1 was put and deleted, K3 exists
    batch = recorded("pipes-sqs-batch")
    wf.put(K1, dicom("CT_small.dcm"))
    wf.remove(K1)
    copied = wf.put(K3, dicom("MR_small.dcm"))
    for message in batch:
        body = json.loads(message["body"])
        for record in body.get("Records", []):
            point_at(record, copied if record["s3"]["object"]["key"] == K3 else None)
        message["body"] = json.dumps(body)

    # When the workflow is started with the batch exactly as Pipes hands it over
    assert wf.stack.info is not None
    sfn = aws.client("stepfunctions")
    arn = sfn.start_execution(
        stateMachineArn=wf.stack.info.state_machine_arn,
        name="recorded-pipes-batch",
        input=json.dumps(batch),
    )["executionArn"]
    deadline = time.monotonic() + 30
    while (desc := sfn.describe_execution(executionArn=arn))["status"] == "RUNNING":
        assert time.monotonic() < deadline
        time.sleep(0.02)

    # Then every record has one outcome: the put lost to the later delete of the same key
    assert desc["status"] == "SUCCEEDED"
    output = json.loads(desc["output"])
    assert output["count"] == 4
    assert output["results"] == [
        {"key": None, "outcome": "skipped", "reason": "test_event"},
        {"key": K1, "outcome": "skipped", "reason": "superseded_in_batch"},
        {"key": K3, "outcome": "indexed"},
        {"key": K1, "outcome": "deleted"},
    ]
    assert {k: v["status"] for k, v in wf.items().items()} == {K3: "indexed", K1: "deleted"}
