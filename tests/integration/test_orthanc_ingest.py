"""Orthanc in the data path: STOW-RS → S3 in the S3 plugin's layout (under Orthanc's prefix,
``orthanc/<uuid>.dcm``, as on AWS) → the table.

A real Orthanc (Debian's 1.10 with its DICOMweb and Python plugins) stores attachments in
moto's S3 through :mod:`pipeline.orthanc.storage`; the bucket's events go through the ingest
queue, the pipe emulator and the workflow, as on AWS.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pydicom
import pytest
import requests
from boto3.dynamodb.types import TypeDeserializer
from dicomweb_client.api import DICOMwebClient
from integration_support import Instance

from pipeline import aws
from pipeline.cli import main
from pipeline.local.stack import LocalStack
from pipeline.orthanc.identifiers import orthanc_instance_id

#: A DICOM attachment's key: the S3 plugin's flat layout under Orthanc's prefix (RootPath).
ORTHANC_DCM = re.compile(
    r"orthanc/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\.dcm"
)
REQUIRED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")


def _keys(stack: LocalStack) -> dict[str, int]:
    pages = aws.client("s3").get_paginator("list_objects_v2").paginate(Bucket=stack.bucket)
    return {o["Key"]: o["Size"] for page in pages for o in page.get("Contents", [])}


def _item(stack: LocalStack, key: str) -> dict[str, Any] | None:
    got = aws.client("dynamodb").get_item(
        TableName=stack.table, Key={"s3_key": {"S": key}}, ConsistentRead=True
    )
    if "Item" not in got:
        return None
    deserialize = TypeDeserializer().deserialize
    return {name: deserialize(value) for name, value in got["Item"].items()}


def _instance_id(orthanc: requests.Session, stack: LocalStack, sop_instance_uid: str) -> str:
    assert stack.info is not None
    found = orthanc.post(f"{stack.info.orthanc_url}/tools/lookup", data=sop_instance_uid)
    found.raise_for_status()
    ids = [hit["ID"] for hit in found.json() if hit["Type"] == "Instance"]
    assert len(ids) == 1, found.json()
    return str(ids[0])


def _attachment_key(orthanc: requests.Session, stack: LocalStack, instance_id: str) -> str:
    """The S3 key of the instance's DICOM attachment: ``orthanc/<Uuid>.dcm``."""
    assert stack.info is not None
    info = orthanc.get(f"{stack.info.orthanc_url}/instances/{instance_id}/attachments/dicom/info")
    info.raise_for_status()
    return f"orthanc/{info.json()['Uuid']}.dcm"


def _stow(dicomweb: DICOMwebClient, instance: Instance) -> None:
    answer = dicomweb.store_instances([instance.dataset])
    referenced = answer.get("ReferencedSOPSequence", [])
    stored = [str(item.ReferencedSOPInstanceUID) for item in referenced]
    assert stored == [instance.sop_instance_uid], answer
    assert not answer.get("FailedSOPSequence"), answer


@pytest.fixture
def s3_reads() -> Iterator[dict[str, int]]:
    """Bytes the pipeline's S3 client received from GetObject, by key, during the test."""
    received: dict[str, int] = {}
    events = aws.client("s3").meta.events

    def remember(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        context["dicom_pipeline_key"] = params.get("Key")

    def count(parsed: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        key = context.get("dicom_pipeline_key")
        if key:
            received[key] = received.get(key, 0) + int(parsed.get("ContentLength") or 0)

    events.register("provide-client-params.s3.GetObject", remember, unique_id="it-remember")
    events.register("after-call.s3.GetObject", count, unique_id="it-count")
    try:
        yield received
    finally:
        events.unregister("provide-client-params.s3.GetObject", unique_id="it-remember")
        events.unregister("after-call.s3.GetObject", unique_id="it-count")


def test_stow_rs_through_orthanc_indexes_the_header_in_the_plugins_layout(
    stack: LocalStack,
    orthanc: requests.Session,
    dicomweb: DICOMwebClient,
    fresh_instance: Callable[[str], Instance],
    s3_reads: dict[str, int],
) -> None:
    # Given an MR image with 250 KB of pixel data after its header, new to Orthanc
    instance = fresh_instance("examples_overlay.dcm")
    before = _keys(stack)

    # When it is stored with STOW-RS through Orthanc's DICOMweb API
    _stow(dicomweb, instance)

    # Then Orthanc's DICOM attachment is the object orthanc/<uuid>.dcm, as on AWS
    instance_id = _instance_id(orthanc, stack, instance.sop_instance_uid)
    key = _attachment_key(orthanc, stack, instance_id)
    new = {k: v for k, v in _keys(stack).items() if k not in before}
    assert key in new and ORTHANC_DCM.fullmatch(key), new
    assert all(k.startswith("orthanc/") and k.count("/") == 1 for k in new)
    # and the one other object is Orthanc's "DICOM until pixel data" attachment (<uuid>.dcm.head:
    # the Python plugin's storage area cannot read ranges), which the .dcm filter leaves out
    assert len(new) == 2, new
    (head_key,) = (k for k in new if k != key)
    assert head_key.endswith(".dcm.head") and ORTHANC_DCM.fullmatch(head_key[: -len(".head")])
    # (read with a client of the test's own: s3_reads counts the pipeline's client)
    body = boto3.client("s3").get_object(Bucket=stack.bucket, Key=key)["Body"].read()
    assert body == orthanc.get(f"{stack.info.orthanc_url}/instances/{instance_id}/file").content  # type: ignore[union-attr]

    # When the pipe has drained
    stack.drain(timeout=60)

    # Then the key has one indexed record whose UIDs are the file's
    item = _item(stack, key)
    assert item is not None and item["status"] == "indexed", item
    stored = pydicom.dcmread(io.BytesIO(body))
    for keyword in REQUIRED_UIDS:
        assert item[keyword] == str(stored[keyword].value), keyword
        assert item[keyword] == str(instance.dataset[keyword].value), keyword
    # and its orthanc_instance_id is the ID Orthanc reports for the instance
    assert item["orthanc_instance_id"] == instance_id
    assert instance_id == orthanc_instance_id(
        str(stored.get("PatientID", "")),
        instance.dataset.StudyInstanceUID,
        instance.dataset.SeriesInstanceUID,
        instance.sop_instance_uid,
    )
    # and the header was read, not the pixels: the header ends where Orthanc's own
    # "until pixel data" attachment ends, and S3 sent the pipeline less than the object
    size = new[key]
    assert item["size"] == size
    assert item["header_bytes"] == new[head_key] < size
    assert 0 < s3_reads.get(key, 0) < size, s3_reads


def test_delete_through_orthanc_leaves_a_tombstone(
    stack: LocalStack,
    orthanc: requests.Session,
    dicomweb: DICOMwebClient,
    fresh_instance: Callable[[str], Instance],
) -> None:
    # Given an instance stored through Orthanc and indexed
    instance = fresh_instance("CT_small.dcm")
    _stow(dicomweb, instance)
    instance_id = _instance_id(orthanc, stack, instance.sop_instance_uid)
    key = _attachment_key(orthanc, stack, instance_id)
    stack.drain(timeout=60)
    indexed = _item(stack, key)
    assert indexed is not None and indexed["status"] == "indexed"

    # When it is deleted with Orthanc's REST API
    assert stack.info is not None
    orthanc.delete(f"{stack.info.orthanc_url}/instances/{instance_id}").raise_for_status()

    # Then its objects are gone from the bucket, and once drained its record is a tombstone
    assert not [k for k in _keys(stack) if k.startswith(key.removesuffix(".dcm"))]
    stack.drain(timeout=60)
    item = _item(stack, key)
    assert item is not None and item["status"] == "deleted", item
    assert "expires_at" in item


def _changed(instance: Instance, **elements: str) -> bytes:
    """The instance's file with the same UIDs and other values (a "correction")."""
    ds = pydicom.dcmread(io.BytesIO(instance.data))
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _indexed_keys(stack: LocalStack, sop_instance_uid: str) -> list[str]:
    pages = (
        aws.client("dynamodb")
        .get_paginator("scan")
        .paginate(
            TableName=stack.table,
            FilterExpression="SOPInstanceUID = :uid AND #s = :indexed",
            ExpressionAttributeNames={"#s": "status"},
            ExpressionAttributeValues={
                ":uid": {"S": sop_instance_uid},
                ":indexed": {"S": "indexed"},
            },
            ConsistentRead=True,
        )
    )
    return [item["s3_key"]["S"] for page in pages for item in page["Items"]]


def test_a_resent_instance_never_replaces_the_stored_one(
    *,
    stack: LocalStack,
    orthanc: requests.Session,
    dicomweb: DICOMwebClient,
    fresh_instance: Callable[[str], Instance],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given an instance stored through Orthanc and indexed
    instance = fresh_instance("MR_small.dcm")
    _stow(dicomweb, instance)
    instance_id = _instance_id(orthanc, stack, instance.sop_instance_uid)
    key = _attachment_key(orthanc, stack, instance_id)
    stack.drain(timeout=60)
    original = boto3.client("s3").get_object(Bucket=stack.bucket, Key=key)["Body"].read()
    keys_before = set(_keys(stack))

    # When a different file with the same UIDs is sent with `dicom-pipeline send` (what an
    # uploader, whose only right is STOW-RS, could do to any instance whose UIDs it knows)
    forged = tmp_path / "forged.dcm"
    forged.write_bytes(_changed(instance, InstitutionName="FORGED", PatientName="Forged^Name"))
    stack.write_info(tmp_path / "stack.json")
    status = main(["send", str(forged), "--stack", str(tmp_path / "stack.json")])
    lines = [json.loads(t) for t in capsys.readouterr().out.splitlines() if '"path"' in t]

    # Then Orthanc answers it as stored (it holds that SOP Instance UID: a client that
    # retries is not told it failed), and send reports it so
    assert status == 0 and [line["status"] for line in lines] == ["stored"], lines
    # but Orthanc keeps the first file: same instance, same attachment, same bytes
    assert _instance_id(orthanc, stack, instance.sop_instance_uid) == instance_id
    assert _attachment_key(orthanc, stack, instance_id) == key
    assert stack.info is not None
    kept = orthanc.get(f"{stack.info.orthanc_url}/instances/{instance_id}/file").content
    assert kept == original and b"FORGED" not in kept
    # and once drained, the bucket holds the same objects, the original unchanged
    stack.drain(timeout=60)
    assert set(_keys(stack)) == keys_before
    assert boto3.client("s3").get_object(Bucket=stack.bucket, Key=key)["Body"].read() == original
    # and the table holds one indexed record of the instance, the original's
    assert _indexed_keys(stack, instance.sop_instance_uid) == [key]
    item = _item(stack, key)
    assert item is not None and item.get("InstitutionName") != "FORGED", item


def test_a_correction_is_a_delete_then_a_send(
    stack: LocalStack,
    orthanc: requests.Session,
    dicomweb: DICOMwebClient,
    fresh_instance: Callable[[str], Instance],
) -> None:
    # Given an instance stored through Orthanc and indexed
    instance = fresh_instance("CT_small.dcm")
    _stow(dicomweb, instance)
    instance_id = _instance_id(orthanc, stack, instance.sop_instance_uid)
    first_key = _attachment_key(orthanc, stack, instance_id)
    stack.drain(timeout=60)

    # When an administrator deletes it and sends the corrected file
    assert stack.info is not None
    orthanc.delete(f"{stack.info.orthanc_url}/instances/{instance_id}").raise_for_status()
    corrected = _changed(instance, InstitutionName="CORRECTED")
    answer = dicomweb.store_instances([pydicom.dcmread(io.BytesIO(corrected))])
    assert [str(i.ReferencedSOPInstanceUID) for i in answer.ReferencedSOPSequence] == [
        instance.sop_instance_uid
    ]

    # Then Orthanc holds the corrected file under a new key, and once drained the table
    # holds one indexed record of it (the corrected one) and a tombstone at the old key
    key = _attachment_key(orthanc, stack, instance_id)
    assert key != first_key
    stack.drain(timeout=60)
    assert _indexed_keys(stack, instance.sop_instance_uid) == [key]
    item = _item(stack, key)
    assert item is not None and item["InstitutionName"] == "CORRECTED", item
    old = _item(stack, first_key)
    assert old is not None and old["status"] == "deleted", old
