"""S3 event records are validated by typed models: what is MALFORMED, and what is accepted.

The recorded notifications are ``tests/events/*.json`` (real S3 event shapes); each case below
removes or spoils one field the pipeline relies on.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from pipeline.workflow.events import split_batch

EVENTS = Path(__file__).resolve().parents[1] / "events"
PUT = json.loads((EVENTS / "s3-object-created-put.json").read_text())["Records"][0]
SECRET = "Doe^Jane-1.2.840.99"


def _one(record: Any) -> Any:
    (ev,) = split_batch([{"messageId": "m1", "body": json.dumps({"Records": [record]})}])
    return ev


def _without(path: tuple[str, ...]) -> dict[str, Any]:
    record = copy.deepcopy(PUT)
    parent = record
    for name in path[:-1]:
        parent = parent[name]
    del parent[path[-1]]
    return record


def _with(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    record = copy.deepcopy(PUT)
    parent = record
    for name in path[:-1]:
        parent = parent[name]
    parent[path[-1]] = value
    return record


def test_the_recorded_put_is_a_create() -> None:
    # Given a recorded ObjectCreated:Put record, When it is classified, Then it is a create
    ev = _one(PUT)
    assert ev.kind == "create"
    assert (ev.bucket, ev.size) == (PUT["s3"]["bucket"]["name"], PUT["s3"]["object"]["size"])


@pytest.mark.parametrize(
    "path",
    [("eventName",), ("s3",), ("s3", "bucket"), ("s3", "bucket", "name"), ("s3", "object", "key")],
)
def test_a_record_without_a_required_field_is_malformed_and_names_it(
    path: tuple[str, ...],
) -> None:
    # Given a record lacking one field the pipeline needs
    ev = _one(_without(path))
    # Then it fails MALFORMED, naming the missing field, keeping the original record
    assert (ev.kind, ev.code) == ("fail", "MALFORMED")
    assert ev.message.endswith(": " + ".".join(path)), ev.message
    assert ev.record is not None


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("eventName",), ""),
        (("eventName",), 7),
        (("s3", "object", "key"), ""),
        (("s3", "object", "key"), [SECRET]),
        (("s3", "object", "size"), SECRET),
        (("s3", "bucket"), SECRET),
        (("s3", "object", "sequencer"), {"v": SECRET}),
    ],
)
def test_an_invalid_field_is_malformed_without_quoting_its_value(
    path: tuple[str, ...], value: Any
) -> None:
    # Given a record with one field of the wrong type or empty
    ev = _one(_with(path, value))
    # Then it fails MALFORMED naming the field, and the message never quotes the value
    assert (ev.kind, ev.code) == ("fail", "MALFORMED")
    assert ev.message.endswith(": " + ".".join(path)), ev.message
    assert SECRET not in ev.message


@pytest.mark.parametrize("raw", ["a string", 3, None, ["list"]])
def test_a_record_that_is_not_an_object_is_malformed(raw: Any) -> None:
    ev = _one(raw)
    assert (ev.kind, ev.code) == ("fail", "MALFORMED")
    assert ev.message == "S3 event record is not a JSON object"


def test_numbers_as_strings_and_unknown_fields_are_accepted() -> None:
    # Given a size written as a string, a float with no fraction, and fields we do not model
    record = _with(("s3", "object", "size"), "1024")
    record["glacierEventData"] = {"restoreEventData": {}}
    record["s3"]["object"]["extra"] = True
    float_size = _with(("s3", "object", "size"), 2048.0)
    # Then both are creates with an int size, and the original record is kept whole
    ev, ev2 = _one(record), _one(float_size)
    assert (ev.kind, ev.size, ev2.size) == ("create", 1024, 2048)
    assert ev.record == record
