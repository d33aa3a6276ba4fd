"""The audit over what the workflow really wrote: records, tombstones, DLQ messages, the ledger.

Objects go into the stack's image bucket (which notifies the ingest queue, as on AWS), the
real workflow runs (:meth:`Harness.drain`), and then the audit reads the bucket, the table,
the DLQ ledger and the DLQ. Lost events are made by purging the ingest queue before a drain:
an object deleted that way leaves its record behind (an orphan), one overwritten leaves a
stale record; a record deleted by hand leaves its object missing.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import pytest
from harness import Harness

from pipeline import aws
from pipeline.ops.audit import AuditReport, audit
from pipeline.ops.audit import dlq as audit_dlq
from pipeline.ops.target import Target

#: Orthanc's keys: the only ones that notify the ingest queue, and the only ones audited.
CT = "orthanc/3d1f6a0e-1b2c-4d5e-8f90-a1b2c3d4e5f6.dcm"
MR = "orthanc/5e2a7b1f-2c3d-4e5f-9a01-b2c3d4e5f6a7.dcm"
RTPLAN = "orthanc/7f3b8c2a-3d4e-4f50-8b12-c3d4e5f6a7b8.dcm"
RTDOSE = "orthanc/9a4c9d3b-4e5f-4061-9c23-d4e5f6a7b8c9.dcm"
NOT_DICOM = "orthanc/b15dae4c-5f60-4172-8d34-e5f6a7b8c9d0.dcm"
GONE = "orthanc/c26ebf5d-6071-4283-9e45-f6a7b8c9d0e1.dcm"


@pytest.fixture(autouse=True)
def short_long_poll() -> Iterator[None]:
    """moto in process really waits out the DLQ peek's last long poll: make it 0 s."""
    saved = audit_dlq.DLQ_WAIT_SECONDS
    audit_dlq.DLQ_WAIT_SECONDS = 0
    yield
    audit_dlq.DLQ_WAIT_SECONDS = saved


def _target(wf: Harness) -> Target:
    assert wf.stack.info is not None
    return Target(
        bucket=wf.bucket,
        queue_url=wf.queue_url,
        dlq_url=wf.dlq_url,
        table=wf.table,
        ledger_table=wf.stack.info.ledger_table,
        region="us-east-1",
    )


def _classes(report: AuditReport) -> dict[str | None, str]:
    return {e.key: e.klass for e in report.entries}


def test_the_audit_explains_every_outcome_of_the_workflow(
    wf: Harness, dicom: Callable[[str], bytes]
) -> None:
    # Given DICOM objects and one that is not DICOM, uploaded and run through the workflow,
    # one object deleted through the pipeline (a tombstone), and Orthanc's header copy
    for key, name in ((CT, "CT_small.dcm"), (MR, "MR_small.dcm"), (RTPLAN, "rtplan.dcm")):
        wf.put(key, dicom(name), bucket=wf.bucket)
    wf.put(RTDOSE, dicom("rtdose.dcm"), bucket=wf.bucket)
    wf.put(GONE, dicom("CT_small.dcm"), bucket=wf.bucket)
    wf.put(NOT_DICOM, b"this is not DICOM at all" * 10, bucket=wf.bucket)
    wf.put(CT + ".head", dicom("CT_small.dcm")[:2048], bucket=wf.bucket)
    wf.drain()
    wf.remove(GONE, bucket=wf.bucket)
    wf.drain()
    assert wf.item(GONE)["status"] == "deleted"  # type: ignore[index]

    # When everything is in order, the audit agrees
    clean = audit(_target(wf))
    assert _classes(clean) == {
        CT: "indexed",
        MR: "indexed",
        RTPLAN: "indexed",
        RTDOSE: "indexed",
        NOT_DICOM: "failed",
        GONE: "tombstone",
    }
    assert clean.problems() == 0
    assert {e.key: e.code for e in clean.entries if e.klass == "failed"} == {NOT_DICOM: "NOT_DICOM"}
    assert clean.not_audited == {"Orthanc header copies (.dcm.head)": 1}

    # When a record is lost, an object is deleted and another overwritten without their events
    aws.client("dynamodb").delete_item(TableName=wf.table, Key={"s3_key": {"S": MR}})
    wf.remove(RTPLAN, bucket=wf.bucket)
    overwritten = wf.put(RTDOSE, dicom("MR_small.dcm"), bucket=wf.bucket)
    wf.purge()

    # Then the audit names each, with what explains it
    report = audit(_target(wf))
    assert _classes(report) == {
        CT: "indexed",
        MR: "missing",
        RTPLAN: "orphan_record",
        RTDOSE: "stale",
        NOT_DICOM: "failed",
        GONE: "tombstone",
    }
    assert report.problems() == 2
    entries = {e.key: e for e in report.entries}
    assert entries[RTDOSE].etag == overwritten["etag"] != entries[RTDOSE].record_etag
    assert entries[RTPLAN].status == "indexed" and entries[RTPLAN].etag is None
    assert entries[MR].status is None and entries[MR].size == len(dicom("MR_small.dcm"))
    assert entries[NOT_DICOM].failed_at
    # and it reads the DLQ without taking anything off it
    assert report.sources["dlq"]["messages"] == 1
    (message,) = wf.dlq()
    assert message["error"]["code"] == "NOT_DICOM" and message["s3"]["key"] == NOT_DICOM
    assert json.loads(json.dumps(report.to_json()))["problems"] == 2
