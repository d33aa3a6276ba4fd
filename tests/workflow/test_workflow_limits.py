"""AWS's limits that moto forgives, enforced by our own tests.

* Step Functions: every state's input and output at most 256 KiB. The pipe emulator reads each
  execution's history and fails an execution that exceeded it with ``States.DataLimitExceeded``
  (as AWS would); these tests drive worst-case batches through it and also check the figure.
* EventBridge Pipes' partial batch failure: only the messages in ``batchItemFailures`` return.
* DynamoDB: a GSI key attribute is a non-empty string (the local shim rejects anything else
  with AWS's ``ValidationException``).
* One failure, one DLQ message: a redelivered event finds the DLQ ledger entry.

The DICOM objects here are synthetic (pydicom's bundled files are all small): written with
pydicom from public data dictionary keywords, seeded so every run builds the same bytes.
"""

from __future__ import annotations

import gzip
import io
import json
import random
import string
from collections.abc import Callable
from typing import Any
from unittest import mock

import pytest
from botocore.exceptions import ClientError
from harness import REPLAY_BUCKET, Harness
from pydicom.datadict import DicomDictionary
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

import pipeline.workflow.batch
from pipeline import aws
from pipeline.local.pipe import STATE_LIMIT, PipeEmulator
from pipeline.local.stack import LocalStack
from pipeline.names import SIDECAR_PREFIX, STAGING_PREFIX
from pipeline.workflow.dlq import forget_reported

#: A short valid value for each VR the worst case uses.
_SHORT_VALUES = {"CS": "A1B2", "LO": "lo-text", "SH": "sh-text", "DS": "1.5", "IS": "42"}
#: Public keywords of those VRs with one value, outside the groups the test sets itself.
_SHORT_KEYWORDS = sorted(
    (entry[4], entry[0])
    for tag, entry in DicomDictionary.items()
    if entry[0] in _SHORT_VALUES
    and entry[1] == "1"
    and entry[4]
    and tag >> 16 not in (0x0000, 0x0002, 0x0008, 0x0010, 0x0020)
    and tag >> 16 < 0x6000  # no overlay or curve repeating groups
    and tag & 0xFFFF
)


def instance(seed: int, build: Callable[[Dataset, random.Random], None]) -> bytes:
    """A valid Part 10 instance with the four UIDs, extended by ``build``."""
    rnd = random.Random(seed)
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = generate_uid(entropy_srcs=[f"sop-{seed}"])
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[f"study-{seed}"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[f"series-{seed}"])
    ds.Modality = "OT"
    build(ds, rnd)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _text(rnd: random.Random, n: int) -> str:
    return "".join(rnd.choices(string.ascii_letters + string.digits, k=n))


def many_short_attributes(ds: Dataset, rnd: random.Random) -> None:
    """~1,200 short public attributes: each is flattened into the item."""
    assert len(_SHORT_KEYWORDS) >= 1200
    for keyword, vr in _SHORT_KEYWORDS[:1200]:
        if vr in ("DS", "IS"):
            value = _SHORT_VALUES[vr]
        elif vr == "CS":
            value = "".join(rnd.choices(string.ascii_uppercase + string.digits, k=6))
        else:
            value = _text(rnd, 6)
        setattr(ds, keyword, value)


def long_text(ds: Dataset, rnd: random.Random) -> None:
    """Long incompressible text: a large JSON, most of it in ``dicom_json_gz``."""
    ds.TextValue = _text(rnd, 60_000)


def big_private_blocks(ds: Dataset, rnd: random.Random) -> None:
    """Private blocks: text and small binary values kept in the JSON (InlineBinary)."""
    for group in (0x0009, 0x0019, 0x0029):
        block = ds.private_block(group, f"ACME {group:04X}", create=True)
        for offset in range(0x10, 0xF0):
            if offset % 2:
                block.add_new(offset, "LO", _text(rnd, 60))
            else:
                block.add_new(offset, "OB", rnd.randbytes(900))


WORST_CASES = {
    "many-short-attributes": many_short_attributes,
    "long-text": long_text,
    "big-private-blocks": big_private_blocks,
}


@pytest.mark.parametrize("case", sorted(WORST_CASES))
def test_worst_case_batches_stay_within_the_state_limit(wf: Harness, case: str) -> None:
    # Given ten worst-case objects of one kind in one batch
    keys = [f"worst/{case}/{i}.dcm" for i in range(10)]
    bodies = [instance(i, WORST_CASES[case]) for i in range(10)]
    wf.send(*(wf.created(k, wf.put(k, b)) for k, b in zip(keys, bodies, strict=True)))

    # When the pipe runs them through the workflow
    runs = wf.drain()

    # Then no state's input or output exceeded 256 KiB (AWS would have failed the execution),
    # and every object is indexed with its whole header recoverable
    assert [r.status for r in runs] == ["SUCCEEDED"], [r.error for r in runs]
    assert all(r.largest_state <= STATE_LIMIT for r in runs), [
        (r.largest_state, r.largest_state_at) for r in runs
    ]
    assert [o["outcome"] for o in wf.outcomes(runs)] == ["indexed"] * 10
    items = wf.items()
    assert set(items) == set(keys)
    for key, item in items.items():
        blob = item.get("dicom_json_gz")
        if blob is None:
            bucket, _, sidecar = item["dicom_json_s3"].removeprefix("s3://").partition("/")
            blob = aws.client("s3").get_object(Bucket=bucket, Key=sidecar)["Body"].read()
        header = json.loads(gzip.decompress(blob))
        assert header["00080018"]["Value"] == [item["SOPInstanceUID"]], key
    if case == "many-short-attributes":
        # the flattened attributes survive: the batch was fitted by staging, not by dropping
        assert all(len(item) > 1000 for item in items.values())


def test_the_emulator_fails_an_execution_over_the_state_limit(wf: Harness) -> None:
    # Given a parse step that does not fit its result to the state (staging switched off)
    keys = [f"worst/unfitted/{i}.dcm" for i in range(10)]
    bodies = [instance(i, many_short_attributes) for i in range(10)]
    with mock.patch.object(pipeline.workflow.batch._Planner, "fit", lambda *a: None):
        # When a worst-case batch runs
        wf.send(*(wf.created(k, wf.put(k, b)) for k, b in zip(keys, bodies, strict=True)))
        assert wf.stack.pipe is not None
        run = wf.stack.pipe.poll_once()

    # Then the execution fails as on AWS (moto checks a Lambda result's size itself), and its
    # messages stay on the queue
    assert run is not None
    assert (run.status, run.error) == ("FAILED", "States.DataLimitExceeded")
    assert wf.queue_messages(wf.queue_url) == 10


def test_the_emulator_checks_every_state_not_only_lambda_results(wf: Harness) -> None:
    # Given a workflow whose Pass states grow a small input to about 95 KB, and the emulator's
    # limit lowered to 64 KiB (moto checks some states itself at 256 KiB; this test shows the
    # emulator's own check of every state in the history)
    assert wf.stack.info is not None
    copies = {f"c{i}.$": "$" for i in range(8)}  # each state: eight copies of its input
    definition = {
        "StartAt": "Grow0",
        "States": {
            f"Grow{i}": {"Type": "Pass", "Parameters": copies, "Next": f"Grow{i + 1}"}
            for i in range(2)
        }
        | {"Grow2": {"Type": "Pass", "End": True}},
    }
    sfn = aws.client("stepfunctions")
    role = aws.client("iam").list_roles()["Roles"][0]["Arn"]
    arn = sfn.create_state_machine(
        name="grows", type="EXPRESS", definition=json.dumps(definition), roleArn=role
    )["stateMachineArn"]
    pipe = PipeEmulator(
        queue_url=wf.queue_url,
        queue_arn=LocalStack.queue_arn(wf.queue_url),
        state_machine_arn=arn,
    )
    wf.send(wf.created("grow.dcm", wf.put("grow.dcm", b"x")))

    # When the pipe runs it
    with mock.patch("pipeline.local.pipe.STATE_LIMIT", 64 * 1024):
        run = pipe.poll_once()

    # Then the history check fails it as AWS would, naming the state, and the message stays
    assert run is not None
    assert (run.status, run.error) == ("FAILED", "States.DataLimitExceeded")
    assert 64 * 1024 < run.largest_state < STATE_LIMIT
    assert run.largest_state_at.startswith("PassStateExited")
    assert wf.queue_messages(wf.queue_url) == 1


def test_staged_items_are_read_back_and_written(wf: Harness) -> None:
    # Given a batch too large for the state
    keys = [f"worst/staged/{i}.dcm" for i in range(10)]
    bodies = [instance(i, many_short_attributes) for i in range(10)]
    wf.send(*(wf.created(k, wf.put(k, b)) for k, b in zip(keys, bodies, strict=True)))

    # When it runs
    runs = wf.drain()

    # Then some items went through the staging prefix, and the table holds them whole
    staged = aws.client("s3").list_objects_v2(Bucket=REPLAY_BUCKET)
    names = [o["Key"] for o in staged.get("Contents", [])]
    assert any(n.startswith(STAGING_PREFIX) for n in names)
    assert [o["outcome"] for o in wf.outcomes(runs)] == ["indexed"] * 10
    for key in keys:
        item = wf.item(key)
        assert item is not None and item["status"] == "indexed"


def test_multi_valued_patient_id_is_one_string_key(wf: Harness) -> None:
    # Given an instance whose PatientID has two values (A\B)
    def two_ids(ds: Dataset, rnd: random.Random) -> None:
        ds.PatientID = ["ID-A", "ID-B"]

    key = "keys/two-patient-ids.dcm"
    wf.send(wf.created(key, wf.put(key, instance(7, two_ids))))

    # When it is indexed
    runs = wf.drain()

    # Then the write succeeded (AWS rejects a list in a GSI key) with one string
    assert wf.outcomes(runs) == [{"key": key, "outcome": "indexed"}]
    raw = wf.raw_item(key)
    assert raw is not None and raw["PatientID"] == {"S": "ID-A\\ID-B"}


def test_the_local_table_rejects_what_aws_rejects(wf: Harness) -> None:
    # Given the metadata table, whose GSIs declare their keys as strings
    ddb = aws.client("dynamodb")
    bad_items = [
        {"s3_key": {"S": "x.dcm"}, "PatientID": {"L": [{"S": "A"}, {"S": "B"}]}},
        {"s3_key": {"S": "x.dcm"}, "PatientID": {"S": ""}},
        {"s3_key": {"S": "x.dcm"}, "StudyInstanceUID": {"N": "1"}},
        {"s3_key": {"S": "x.dcm"}, "SeriesInstanceUID": {"S": "1" * 1025}},
    ]
    for item in bad_items:
        # When an item with a badly typed or sized index key is written
        # Then DynamoDB's ValidationException is raised, as on AWS
        with pytest.raises(ClientError) as err:
            ddb.put_item(TableName=wf.table, Item=item)
        assert err.value.response["Error"]["Code"] == "ValidationException"


def test_a_redelivered_failure_sends_one_dlq_message(
    wf: Harness, dicom: Callable[[str], bytes]
) -> None:
    # Given an object that cannot be indexed, whose event is delivered twice
    key = "dup/bad.dcm"
    event = wf.created(key, wf.put(key, dicom("rtplan.dump")))
    wf.send(event)
    first = wf.drain()
    wf.send(event)
    second = wf.drain()

    # Then the first delivery reported it, the second found it in the ledger
    assert wf.outcomes(first) == [{"key": key, "outcome": "failed", "code": "NOT_DICOM"}]
    assert wf.outcomes(second) == [{"key": key, "outcome": "skipped", "reason": "already_in_dlq"}]
    (message,) = wf.dlq()
    assert message["s3"]["key"] == key

    # And once redrive forgets the entry, the same event is reported again
    assert wf.stack.info is not None and wf.stack.info.ledger_table
    ledger = aws.client("dynamodb").scan(TableName=wf.stack.info.ledger_table)["Items"]
    ((stored_order,),) = [[i["event_order"]["S"]] for i in ledger]
    forget_reported(wf.stack.info.ledger_table, key, stored_order)
    wf.send(event)
    third = wf.drain()
    assert wf.outcomes(third) == [{"key": key, "outcome": "failed", "code": "NOT_DICOM"}]
    assert len(wf.dlq()) == 1


def test_one_message_two_records_a_failure_and_a_retry(
    make_harness: Callable[..., Harness], dicom: Callable[[str], bytes]
) -> None:
    # Given one message holding two records: one cannot be indexed, the other's read fails
    # transiently once
    wf = make_harness(visibility_timeout=1)
    bad, good = "multi/bad.dcm", "multi/good.dcm"
    body = {
        "Records": [
            wf.created(bad, wf.put(bad, dicom("rtplan.dump"))),
            wf.created(good, wf.put(good, dicom("CT_small.dcm"))),
        ]
    }
    real_parse = pipeline.workflow.batch.parse
    calls: list[str] = []

    def flaky(source: Any, *args: Any, **kwargs: Any) -> Any:
        if good in source.uri:
            calls.append(good)
            if len(calls) == 1:
                from pipeline.errors import TransientError

                raise TransientError("S3 error SlowDown after retries")
        return real_parse(source, *args, **kwargs)

    # When it is delivered, returned (for the retry) and delivered again
    with mock.patch.object(pipeline.workflow.batch, "parse", flaky):
        wf.send(json.dumps(body))
        runs = wf.drain(timeout=30)

    # Then the failure went to the DLQ once, and the retried record is indexed
    assert len(runs) == 2 and runs[0].returned == 1
    outcomes = [(o["key"], o["outcome"]) for o in wf.outcomes(runs)]
    assert outcomes == [
        (bad, "failed"),
        (good, "retry"),
        (bad, "skipped"),
        (good, "indexed"),
    ]
    assert [m["s3"]["key"] for m in wf.dlq()] == [bad]


def test_sidecars_are_named_by_their_event_and_retired_with_their_record(wf: Harness) -> None:
    # Given an object whose JSON is too large to stay in its item
    key = "sidecar/large.dcm"

    def huge_text(ds: Dataset, rnd: random.Random) -> None:
        ds.TextValue = _text(rnd, 200_000)

    body = instance(3, huge_text)
    first = wf.created(key, wf.put(key, body))
    wf.send(first)
    wf.drain()
    item = wf.item(key)
    assert item is not None
    uri1 = item["dicom_json_s3"]
    assert uri1.startswith(f"s3://{REPLAY_BUCKET}/{SIDECAR_PREFIX}{key}/")

    def sidecars() -> list[str]:
        resp = aws.client("s3").list_objects_v2(
            Bucket=REPLAY_BUCKET, Prefix=f"{SIDECAR_PREFIX}{key}/"
        )
        return [f"s3://{REPLAY_BUCKET}/{o['Key']}" for o in resp.get("Contents", [])]

    assert sidecars() == [uri1]

    # When the object is overwritten (a newer event)
    second = wf.created(key, wf.put(key, body))
    wf.send(second)
    wf.drain()
    item = wf.item(key)
    assert item is not None
    uri2 = item["dicom_json_s3"]

    # Then the new record points to its own sidecar and the old one is gone
    assert uri2 != uri1
    assert sidecars() == [uri2]

    # When the older event is delivered again (a stale writer)
    wf.send(first)
    runs = wf.drain()

    # Then it writes nothing: the newer record's sidecar is untouched
    assert wf.outcomes(runs)[0]["outcome"] == "skipped"
    assert sidecars() == [uri2]

    # When the object is deleted
    wf.remove(key)
    wf.send(wf.removed(key))
    wf.drain()

    # Then the tombstone has no sidecar left behind
    item = wf.item(key)
    assert item is not None and item["status"] == "deleted"
    assert sidecars() == []
