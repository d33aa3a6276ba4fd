"""The audit with a real Orthanc: its instances reconciled with the records that name them.

An instance stored through Orthanc (STOW-RS) is indexed by the pipeline; the audit finds its
ID in Orthanc's ``/instances`` and in the record's ``orthanc_instance_id``. Once the record is
deleted by hand, the instance is ``orthanc_not_indexed`` (and its object ``missing``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from integration_support import Instance

from pipeline import aws
from pipeline.cli import main
from pipeline.local.stack import LocalStack
from pipeline.ops.audit import audit
from pipeline.ops.target import Target


@pytest.fixture(autouse=True)
def credentials_from_stack_json_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment's credentials would win over stack.json's: none here."""
    monkeypatch.delenv("DICOM_PIPELINE_USERNAME", raising=False)
    monkeypatch.delenv("DICOM_PIPELINE_PASSWORD", raising=False)


def _stored(stack: LocalStack, orthanc: requests.Session, instance: Instance) -> tuple[str, str]:
    """STOW-RS ``instance``; returns its Orthanc ID and the key of its DICOM attachment."""
    assert stack.info is not None and stack.info.dicomweb_url
    dicomweb = DICOMwebClient(url=stack.info.dicomweb_url, session=orthanc)
    answer = dicomweb.store_instances([instance.dataset])
    assert not answer.get("FailedSOPSequence"), answer
    found = orthanc.post(f"{stack.info.orthanc_url}/tools/lookup", data=instance.sop_instance_uid)
    found.raise_for_status()
    (instance_id,) = (hit["ID"] for hit in found.json() if hit["Type"] == "Instance")
    info = orthanc.get(f"{stack.info.orthanc_url}/instances/{instance_id}/attachments/dicom/info")
    info.raise_for_status()
    return str(instance_id), f"orthanc/{info.json()['Uuid']}.dcm"


def test_an_orthanc_instance_whose_record_is_gone_is_not_indexed(
    stack: LocalStack,
    orthanc: requests.Session,
    fresh_instance: Callable[[str], Instance],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given an instance stored through Orthanc and indexed (credentials from stack.json)
    assert stack.info is not None
    target = Target(**asdict(stack.info))
    instance_id, key = _stored(stack, orthanc, fresh_instance("CT_small.dcm"))
    try:
        stack.drain(timeout=60)

        # When audited, the instance is part of its key's indexed entry
        before = {e.key: e for e in audit(target).entries}
        assert before[key].klass == "indexed"
        assert before[key].orthanc_instance_id == instance_id

        # When its record is deleted by hand
        aws.client("dynamodb").delete_item(TableName=stack.table, Key={"s3_key": {"S": key}})

        # Then the audit reports the instance as not indexed, with its key, and the object
        # itself as missing
        report = audit(target)
        (entry,) = (e for e in report.entries if e.orthanc_instance_id == instance_id)
        assert entry.klass == "orthanc_not_indexed"
        assert entry.key == key and entry.note == "its object is missing"
        assert {e.key: e.klass for e in report.entries if e.orthanc_instance_id is None}[
            key
        ] == "missing"
        orthanc_source = report.sources["orthanc"]
        assert orthanc_source["url"] == stack.info.orthanc_url
        assert orthanc_source["instances"] > orthanc_source["indexed"]
        assert report.problems() >= 1

        # and so does the command, from the stack's stack.json, with exit status 1
        stack_file = tmp_path / "stack.json"
        stack.write_info(stack_file)
        status = main(["audit", "--json", "--stack", str(stack_file)])
        # (the in-process handler of the background pipe prints its metrics on stdout too)
        out = capsys.readouterr().out
        doc, _ = json.JSONDecoder().raw_decode(out, out.index('{\n  "schema"'))
        assert status == 1
        assert {
            "key": key,
            "klass": "orthanc_not_indexed",
            "orthanc_instance_id": instance_id,
        }.items() <= next(
            e for e in doc["entries"] if e["orthanc_instance_id"] == instance_id
        ).items()
    finally:
        # The session's Orthanc is shared: the instance goes (its object becomes a tombstone)
        orthanc.delete(f"{stack.info.orthanc_url}/instances/{instance_id}")
        stack.drain(timeout=60)
