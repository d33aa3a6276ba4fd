"""Effectively once, in order per key: duplicates, late deletes, late creates.

Events here carry S3 sequencers (built from the files under ``tests/events/``) and are sent
to the ingest queue by the test, in the order each scenario needs, for objects in the replay
bucket (which sends no notifications of its own).

Two guards keep the table in order: the parse step's pre-check (one strongly consistent read
of the stored ``event_order``) and the conditional ``PutItem`` of ``WriteRecord``. Where a test
is parametrized over ``guard``, ``"write"`` disables the pre-check to prove the conditional
write alone holds the line (as it must when two batches race).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any
from unittest import mock

import pytest
from harness import Harness, md5_etag, recorded, retarget

import pipeline.workflow.batch

KEY = "4b1f6a53-6e8c-4f02-9d47-1c2a9f0e8b31.dcm"


@pytest.fixture(params=["pre-check", "write"])
def guard(request: pytest.FixtureRequest) -> Iterator[str]:
    """Which guard must stop a stale event: the pre-check, or the conditional write alone."""
    if request.param == "write":
        with mock.patch.object(pipeline.workflow.batch, "_stored_items", return_value={}):
            yield request.param
    else:
        yield request.param


def test_same_event_three_times_changes_nothing(wf: Harness, dicom: Callable[[str], bytes]) -> None:
    # Given an object and its create event, delivered and indexed once
    event = wf.created(KEY, wf.put(KEY, dicom("CT_small.dcm")))
    wf.send(event)
    wf.drain()
    first = wf.item(KEY)
    assert first is not None

    # When the same event is delivered twice more, in separate batches
    wf.send(event)
    wf.drain()
    wf.send(event)
    runs = wf.drain()

    # Then there is exactly one record, untouched (same indexed_at), and both were skipped
    assert wf.outcomes() == [
        {"key": KEY, "outcome": "indexed"},
        {"key": KEY, "outcome": "skipped", "reason": "stale_or_duplicate"},
        {"key": KEY, "outcome": "skipped", "reason": "stale_or_duplicate"},
    ]
    assert len(runs) == 1
    assert wf.items() == {KEY: first}
    assert wf.dlq() == []


def test_same_event_three_times_in_one_batch(wf: Harness, dicom: Callable[[str], bytes]) -> None:
    # Given the same create event three times on the queue
    event = wf.created(KEY, wf.put(KEY, dicom("CT_small.dcm")))
    wf.send(event, event, event)

    # When one batch carries all three
    runs = wf.drain()

    # Then one is indexed and the other two are skipped within the batch
    assert len(runs) == 1
    outcomes = wf.outcomes(runs)
    assert sorted(o["outcome"] for o in outcomes) == ["indexed", "skipped", "skipped"]
    assert {o.get("reason") for o in outcomes} == {None, "superseded_in_batch"}
    assert list(wf.items()) == [KEY]
    assert len(wf.stack.invocations) == 1


def test_duplicate_rejected_by_the_conditional_write_alone(
    wf: Harness, dicom: Callable[[str], bytes]
) -> None:
    # Given an indexed object
    event = wf.created(KEY, wf.put(KEY, dicom("CT_small.dcm")))
    wf.send(event)
    wf.drain()
    first = wf.item(KEY)

    # When its event is redelivered and the pre-check misses it (a racing batch)
    with mock.patch.object(pipeline.workflow.batch, "_stored_items", return_value={}):
        wf.send(event)
        runs = wf.drain()

    # Then WriteRecord's condition rejects it: skipped, the record untouched
    assert wf.outcomes(runs) == [{"key": KEY, "outcome": "skipped", "reason": "stale_or_duplicate"}]
    assert wf.item(KEY) == first


def test_delete_older_than_the_newest_create_is_skipped(
    wf: Harness, dicom: Callable[[str], bytes], guard: str
) -> None:
    # Given: created (seq 1), deleted (seq 2), created again (seq 3) and indexed;
    # since then deleted again (seq 4), whose event is still on its way
    s1, s2, s3, s4 = (wf.sequencer() for _ in range(4))
    body = dicom("CT_small.dcm")
    obj = wf.put(KEY, body)
    wf.send(wf.created(KEY, obj, sequencer=s3))
    wf.drain()
    wf.remove(KEY)

    # When the late delete (seq 2) arrives
    wf.send(wf.removed(KEY, sequencer=s2))
    runs = wf.drain()

    # Then it is skipped and the newer record stays
    assert wf.outcomes(runs) == [{"key": KEY, "outcome": "skipped", "reason": "stale_or_duplicate"}]
    item = wf.item(KEY)
    assert item is not None
    assert item["status"] == "indexed"
    assert item["sequencer"] == s3
    assert item["etag"] == md5_etag(body)

    # And the newest delete (seq 4) still applies, while the oldest create (seq 1) does not
    wf.send(wf.removed(KEY, sequencer=s4), wf.created(KEY, obj, sequencer=s1))
    runs = wf.drain()
    assert [o["outcome"] for o in wf.outcomes(runs)] == ["deleted", "skipped"]
    item = wf.item(KEY)
    assert item is not None
    assert item["status"] == "deleted"
    assert item["sequencer"] == s4
    assert wf.dlq() == []


def test_create_older_than_a_delete_does_not_resurrect(
    wf: Harness, dicom: Callable[[str], bytes], guard: str
) -> None:
    # Given a versioned bucket where an object was created (seq 1) and then deleted (seq 2),
    # so its old version can still be read, and the delete already applied
    bucket = wf.versioned_bucket()
    obj = wf.put(KEY, dicom("CT_small.dcm"), bucket=bucket)
    marker = wf.remove(KEY, bucket=bucket)
    s1, s2 = wf.sequencer(), wf.sequencer()
    wf.send(
        wf.removed(
            KEY,
            bucket=bucket,
            sequencer=s2,
            template="s3-object-removed-delete-marker-created",
            version_id=marker,
        )
    )
    wf.drain()

    # When the create (seq 1) arrives late, naming the old version
    wf.send(wf.created(KEY, obj, bucket=bucket, sequencer=s1, with_version=True))
    runs = wf.drain()

    # Then it is skipped and the tombstone stays
    assert wf.outcomes(runs) == [{"key": KEY, "outcome": "skipped", "reason": "stale_or_duplicate"}]
    item = wf.item(KEY)
    assert item is not None
    assert item["status"] == "deleted"
    assert item["sequencer"] == s2
    assert item["version_id"] == marker
    assert "SOPInstanceUID" not in item
    assert wf.dlq() == []


def test_create_older_than_a_delete_on_an_unversioned_bucket(
    wf: Harness, dicom: Callable[[str], bytes]
) -> None:
    # Given an unversioned object created (seq 1) and deleted (seq 2); the delete's event
    # has not arrived yet and the pre-check has nothing to compare with
    obj = wf.put(KEY, dicom("CT_small.dcm"))
    wf.remove(KEY)
    s1, s2 = wf.sequencer(), wf.sequencer()

    # When the create arrives first, then the delete
    wf.send(wf.created(KEY, obj, sequencer=s1))
    wf.drain()
    wf.send(wf.removed(KEY, sequencer=s2))
    wf.drain()

    # Then S3 decides: the object is gone, so nothing was indexed; the delete leaves a tombstone
    assert [(o["outcome"], o.get("reason")) for o in wf.outcomes()] == [
        ("skipped", "object_gone"),
        ("deleted", None),
    ]
    item = wf.item(KEY)
    assert item is not None
    assert item["status"] == "deleted"


def _moto_record(name: str, key: str, event_time: str, obj: dict[str, Any] | None) -> Any:
    """A record shaped like moto's: no sequencer, no versionId."""
    template = "s3-object-created-put" if obj else "s3-object-removed-delete"
    record = recorded(template)["Records"][0]
    record["eventName"] = name
    return retarget(
        record,
        bucket="dicom-pipeline-replay",
        key=key,
        etag=obj["etag"] if obj else None,
        size=obj["size"] if obj else None,
        sequencer=None,
        event_time=event_time,
    )


def test_events_without_sequencer_in_the_same_millisecond(
    wf: Harness, dicom: Callable[[str], bytes]
) -> None:
    # Given an indexed object (moto-like events: no sequencer, ordered by event time)
    obj = wf.put(KEY, dicom("CT_small.dcm"))
    wf.send(_moto_record("ObjectCreated:Put", KEY, "2026-03-02T09:00:00.000Z", obj))
    wf.drain()

    # When it is overwritten and then deleted within one millisecond, both events in one body
    wf.remove(KEY)
    same_ms = "2026-03-02T09:00:01.000Z"
    wf.send(
        {
            "Records": [
                _moto_record("ObjectCreated:Put", KEY, same_ms, obj),
                _moto_record("ObjectRemoved:Delete", KEY, same_ms, None),
            ]
        }
    )
    runs = wf.drain()

    # Then the later record of the body wins: the object is gone, the item a tombstone
    assert [o["outcome"] for o in wf.outcomes(runs)] == ["skipped", "deleted"]
    item = wf.item(KEY)
    assert item is not None
    assert item["status"] == "deleted"


def test_create_read_after_an_overwrite_describes_what_it_read(
    wf: Harness, dicom: Callable[[str], bytes]
) -> None:
    # Given an unversioned object created (seq 1) and overwritten (seq 2) before any event
    # arrived; S3 now holds the second body
    first_body, second_body = dicom("CT_small.dcm"), dicom("MR_small.dcm")
    first = wf.created(KEY, wf.put(KEY, first_body))
    second = wf.created(KEY, wf.put(KEY, second_body))

    # When only the first event has arrived
    wf.send(first)
    wf.drain()

    # Then the record is consistent with the bytes it was built from (ETag, size, identity)
    item = wf.item(KEY)
    assert item is not None
    assert item["etag"] == md5_etag(second_body)
    assert item["size"] == len(second_body)
    assert item["Modality"] == "MR"

    # And the second event still applies (it is newer) and changes nothing visible
    wf.send(second)
    runs = wf.drain()
    assert wf.outcomes(runs) == [{"key": KEY, "outcome": "indexed"}]
    final = wf.item(KEY)
    assert final is not None
    assert final["etag"] == md5_etag(second_body)
    assert final["sequencer"] == second["s3"]["object"]["sequencer"]
