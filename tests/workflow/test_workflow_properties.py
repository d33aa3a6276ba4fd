"""Property: whatever the delivery order and duplication, the table ends up matching S3.

Hypothesis draws a history of creates, overwrites and deletes over a few keys (each event with
an increasing S3 sequencer), then delivers the events shuffled, duplicated, packed several to a
body and spread over a few waves of batches. S3 holds each key's final state throughout (the
replay bucket sends no notifications, so every delivery is the test's). At the end:

* keys whose final operation created a valid object are indexed with that object's ETag,
  identity and sequencer;
* keys whose final operation was a delete hold a tombstone with that delete's sequencer;
* keys whose final object cannot be indexed have a DLQ message for that object, and no record
  claiming it;
* every delivered record had exactly one outcome, every ``failed`` outcome has its DLQ
  message, and no execution failed.
"""

from __future__ import annotations

import functools
import io
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
from harness import Harness, md5_etag, start_harness
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

#: (pydicom file, indexable?) — three instances and a text file named ".dcm".
CONTENTS = [
    ("CT_small.dcm", True),
    ("MR_small.dcm", True),
    ("rtplan.dcm", True),
    ("rtplan.dump", False),
]
KEYS = ["a.dcm", "b b.dcm", "c/d.dcm"]


@dataclass(frozen=True)
class Op:
    key: int
    kind: str  # "create" or "delete"
    content: int


ops_strategy = st.lists(
    st.builds(
        Op,
        key=st.integers(0, len(KEYS) - 1),
        kind=st.sampled_from(["create", "create", "delete"]),
        content=st.integers(0, len(CONTENTS) - 1),
    ),
    min_size=1,
    max_size=7,
)


@pytest.fixture(scope="module")
def shared() -> Iterator[Harness]:
    """One stack for every example (examples use their own key prefix)."""
    stack, harness = start_harness()
    try:
        yield harness
    finally:
        stack.stop()


class Content:
    """One object a create may write: a pydicom file, with its SOPInstanceUID if indexable."""

    def __init__(self, name: str, indexable: bool) -> None:
        self.name = name
        self.data = (Path(pydicom.__file__).parent / "data" / "test_files" / name).read_bytes()
        ds = pydicom.dcmread(io.BytesIO(self.data)) if indexable else None
        self.uid: str | None = str(ds.SOPInstanceUID) if ds is not None else None

    def __repr__(self) -> str:  # hypothesis prints falsifying examples
        return f"Content({self.name!r})"


@functools.cache
def contents() -> list[Content]:
    return [Content(name, indexable) for name, indexable in CONTENTS]


@pytest.mark.slow
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],  # explain: too slow
)
@given(ops=ops_strategy, data=st.data())
def test_table_matches_s3_after_any_delivery_order(
    shared: Harness,
    ops: list[Op],
    data: st.DataObject,
) -> None:
    wf = shared
    objects = contents()
    wf.purge()
    wf.dlq()
    prefix = f"prop-{uuid.uuid4().hex[:8]}/"

    # Given a history: one event per operation, with increasing sequencers
    events: list[dict[str, Any]] = []
    final: dict[str, tuple[Op, str]] = {}
    for op in ops:
        key = prefix + KEYS[op.key]
        sequencer = wf.sequencer()
        if op.kind == "create":
            body = objects[op.content].data
            obj = {"etag": md5_etag(body), "size": len(body), "version_id": None}
            events.append(wf.created(key, obj, sequencer=sequencer))
        else:
            events.append(wf.removed(key, sequencer=sequencer))
        final[key] = (op, sequencer)

    # ... and S3 holding each key's final state
    for key, (op, _) in final.items():
        if op.kind == "create":
            wf.put(key, objects[op.content].data)

    # When the events are delivered shuffled, some several times, several to a body, in waves
    copies = [data.draw(st.integers(1, 3), label="copies") for _ in events]
    sent = [i for i, n in enumerate(copies) for _ in range(n)]
    order = data.draw(st.permutations(sent), label="order (event indexes)")
    deliveries = [events[i] for i in order]
    waves = data.draw(st.integers(1, 3), label="waves")
    runs = []
    position = 0
    for wave in range(waves):
        end = len(deliveries) if wave == waves - 1 else position + len(deliveries) // waves
        messages = []
        while position < end:
            size = data.draw(st.integers(1, 3), label="records per body")
            messages.append({"Records": deliveries[position : min(end, position + size)]})
            position = min(end, position + size)
        wf.send(*messages)
        runs.extend(wf.drain())

    # Then no execution failed and every delivered record had exactly one outcome
    assert all(r.status == "SUCCEEDED" for r in runs), [r.error for r in runs]
    outcomes = wf.outcomes(runs)
    assert len(outcomes) == len(deliveries)

    # ... every failure is in the DLQ, once per failed outcome
    dead = wf.dlq()
    failed = Counter(o["key"] for o in outcomes if o["outcome"] == "failed")
    assert Counter(m["s3"]["key"] for m in dead) == failed
    assert all(m["schema"] == "dicom-pipeline/dlq/v1" for m in dead)

    # ... and the table matches S3, key by key
    for key, (op, sequencer) in final.items():
        item = wf.item(key)
        if op.kind == "delete":
            assert item is not None, key
            assert (item["status"], item["sequencer"]) == ("deleted", sequencer)
            continue
        body, uid = objects[op.content].data, objects[op.content].uid
        if uid is None:  # not indexable: failed, in the DLQ, never claimed by a record
            assert any(m["s3"]["key"] == key and m["s3"]["etag"] == md5_etag(body) for m in dead), (
                key
            )
            assert item is None or item["status"] == "deleted", key
            continue
        assert item is not None, key
        assert item["status"] == "indexed"
        assert item["etag"] == md5_etag(body)
        assert item["SOPInstanceUID"] == uid
        assert item["sequencer"] == sequencer
