"""The schema-v1 record: types DynamoDB accepts, flattening, the size budget and offloading."""

from __future__ import annotations

import base64
import gzip
import json
import os
import re
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pydicom
import pytest
from boto3.dynamodb.types import TypeSerializer
from pydicom.dataset import Dataset

from pipeline import __version__
from pipeline.dicom.parse import parse
from pipeline.dicom.record import (
    DYNAMODB_ITEM_LIMIT,
    REQUIRED_UIDS,
    build_record,
    flatten,
    gzip_json,
    item_size,
    record_to_json,
)

RECORD_FILES = [
    "CT_small.dcm",
    "MR_small_bigendian.dcm",
    "rtplan.dcm",
    "test-SR.dcm",
    "waveform_ecg.dcm",
    "examples_overlay.dcm",
    "chrH32.dcm",
    "badVR.dcm",
    "reportsi_with_empty_number_tags.dcm",
]
UIDS = {keyword: "1.2.3." + str(i) for i, keyword in enumerate(REQUIRED_UIDS)}


def _walk(value: Any) -> Iterator[Any]:
    yield value
    if isinstance(value, dict):
        for v in value.values():
            yield from _walk(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _walk(v)


def _uid_json() -> dict[str, Any]:
    return {tag: {"vr": "UI", "Value": [UIDS[kw]]} for kw, tag in REQUIRED_UIDS.items()}


# -- types --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", RECORD_FILES)
def test_records_hold_only_types_dynamodb_accepts(
    name: str, test_file: Callable[[str], Path]
) -> None:
    # Given the record of a real file
    item = parse(str(test_file(name))).record().item

    # When every value is inspected and serialised as boto3 does for PutItem
    values = [v for value in item.values() for v in _walk(value)]
    serialised = {key: TypeSerializer().serialize(value) for key, value in item.items()}

    # Then there are only str, Decimal, bytes, lists and None-in-lists: never a float
    assert not [v for v in values if isinstance(v, float)]
    assert {type(v) for v in values} <= {str, Decimal, bytes, list, type(None)}
    assert serialised["s3_key"] == {"S": item["s3_key"]}
    assert "B" in serialised["dicom_json_gz"]


def test_provenance_attributes(test_file: Callable[[str], Path]) -> None:
    # Given a parsed file
    path = test_file("CT_small.dcm")
    parsed = parse(str(path))
    # When its record is built with event provenance
    item = parsed.record(
        s3_key="study/CT_small.dcm",
        bucket="images",
        etag='"abc123"',
        sequencer="0055AED6DCD90281E5",
        event_time="2026-01-01T00:00:00.000Z",
    ).item
    # Then the pipeline's attributes are there with their types
    assert item["s3_key"] == "study/CT_small.dcm" and item["bucket"] == "images"
    assert item["status"] == "indexed" and item["parser_version"] == __version__
    assert item["etag"] == "abc123"  # without the quotes S3 puts around it
    assert item["sequencer"] == "0055AED6DCD90281E5"
    assert item["size"] == Decimal(path.stat().st_size)
    assert item["header_bytes"] == Decimal(parsed.stats["header_bytes"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", item["indexed_at"])
    assert "expires_at" not in item  # tombstones only


# -- flattening ----------------------------------------------------------------------------------


def test_flattening_keeps_top_level_public_short_scalars() -> None:
    # Given a DICOM JSON object with every kind of element
    j = {
        **_uid_json(),
        "00080060": {"vr": "CS", "Value": ["CT"]},
        "00080008": {"vr": "CS", "Value": ["ORIGINAL", None, "AXIAL"]},
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane", "Ideographic": "X"}]},
        "00200013": {"vr": "IS", "Value": [7]},
        "00180050": {"vr": "DS", "Value": [2.5]},
        "00280030": {"vr": "DS", "Value": [0.1, "abc"]},  # invalid: JSON only
        "00181063": {"vr": "DS", "Value": [1e200]},  # beyond DynamoDB's range
        "00280010": {"vr": "US", "Value": [512]},
        "00204000": {"vr": "LT", "Value": ["x" * 2000]},  # too long
        "00080000": {"vr": "UL", "Value": [10]},  # group length
        "00091001": {"vr": "LO", "Value": ["private"]},
        "00081115": {"vr": "SQ", "Value": [{"0020000E": {"vr": "UI", "Value": ["9"]}}]},
        "00291010": {"vr": "OB", "InlineBinary": "AAAA"},
        "00100020": {"vr": "LO"},  # empty
    }

    # When it is flattened
    flat = flatten(j)

    # Then only public, non-sequence, non-binary, non-empty, short values are kept, typed
    assert flat == {
        **UIDS,
        "Modality": "CT",
        "ImageType": ["ORIGINAL", None, "AXIAL"],
        "PatientName": "Doe^Jane",
        "InstanceNumber": Decimal(7),
        "SliceThickness": Decimal("2.5"),
        "Rows": Decimal(512),
    }


@pytest.mark.parametrize(
    ("number", "expected"),
    [
        (0.1, Decimal("0.1")),  # the decimal the float was written from, not 0.1000000000000000055
        (-3, Decimal(-3)),
        (2**70, Decimal(2**70)),
        (1e125, Decimal("1E+125")),
        (1.5e-130, Decimal("1.5E-130")),
        (1e126, None),
        (1e-131, None),
        ("12A", None),
    ],
)
def test_numbers_become_decimals_dynamodb_can_store(number: Any, expected: Any) -> None:
    # Given a DS value / When flattened / Then a Decimal within DynamoDB's range, or nothing
    flat = flatten({"00181063": {"vr": "DS", "Value": [number]}})
    assert flat.get("FrameTime") == expected
    if expected is not None:
        TypeSerializer().serialize(flat["FrameTime"])  # boto3 accepts it


# -- the budget ---------------------------------------------------------------------------------


def reference_size(item: dict[str, Any]) -> int:
    """DynamoDB's item size, from boto3's serialisation of the item (AWS's documented rules).

    Names and strings in UTF-8 bytes, binary in raw bytes, numbers about one byte per two
    significant digits plus one, NULL/BOOL one byte, lists and maps 3 bytes plus 1 per element.
    """

    def size(value: dict[str, Any]) -> int:
        ((kind, inner),) = value.items()
        if kind == "S":
            return len(inner.encode())
        if kind == "B":
            return len(inner)
        if kind == "N":
            digits = inner.lstrip("-").split("E")[0].replace(".", "").strip("0") or "0"
            return (len(digits) + 1) // 2 + 1
        if kind in ("NULL", "BOOL"):
            return 1
        if kind == "L":
            return 3 + sum(1 + size(v) for v in inner)
        if kind == "M":
            return 3 + sum(1 + len(k.encode()) + size(v) for k, v in inner.items())
        raise AssertionError(kind)

    serializer = TypeSerializer()
    return sum(len(k.encode()) + size(serializer.serialize(v)) for k, v in item.items())


@pytest.mark.parametrize("name", RECORD_FILES)
def test_item_size_never_underestimates_dynamodb(
    name: str, test_file: Callable[[str], Path]
) -> None:
    # Given the record of a real file
    item = parse(str(test_file(name))).record().item
    # When its size is estimated / Then it is at least DynamoDB's count, and close to it
    reference = reference_size(item)
    assert reference <= item_size(item) <= reference + 64 + len(item) // 2


def test_the_gzip_json_is_reproducible_and_complete(test_file: Callable[[str], Path]) -> None:
    # Given a parsed file
    parsed = parse(str(test_file("rtplan.dcm")))
    # When its record is built twice
    first = parsed.record(indexed_at="t").item
    second = parsed.record(indexed_at="t").item
    # Then the gzip bytes are identical (no timestamp) and hold the whole JSON
    assert first["dicom_json_gz"] == second["dicom_json_gz"] == gzip_json(parsed.dicom_json)
    assert json.loads(gzip.decompress(first["dicom_json_gz"])) == parsed.dicom_json


def test_a_header_over_400_kb_offloads_its_json(
    s3_object: Callable[..., str],
    dataset_factory: Callable[[], Dataset],
    encode: Callable[..., bytes],
) -> None:
    # Given an S3 object whose header holds 600 KB of incompressible text
    ds = dataset_factory()
    block = ds.private_block(0x0029, "ACME NOTES", create=True)
    for i in range(6):
        text = base64.b64encode(os.urandom(75_000)).decode()  # 100 KB, ~75 KB gzipped
        block.add_new(0x10 + i, "UT", text)
    uri = s3_object("big/header.dcm", encode(ds))

    # When it is parsed and its record built
    parsed = parse(uri)
    built = parsed.record()
    item = built.item

    # Then the JSON went to the sidecar location beside the object, the item points at it
    assert parsed.stats["header_bytes"] > 400 * 1024
    assert "dicom_json_gz" not in item
    assert item["dicom_json_s3"] == "s3://images/dicom-json/big/header.dcm.json.gz"
    assert built.sidecar_uri == item["dicom_json_s3"]
    assert json.loads(gzip.decompress(built.sidecar_body)) == parsed.dicom_json
    # and the item keeps its UIDs and flattened attributes and fits DynamoDB's limit
    assert item["SOPInstanceUID"] == ds.SOPInstanceUID and item["PatientID"] == "P-001"
    assert reference_size(item) <= item_size(item) <= DYNAMODB_ITEM_LIMIT


def test_an_offloaded_item_is_accepted_by_dynamodb(
    s3: Any, dataset_factory: Callable[[], Dataset], encode: Callable[..., bytes], mem_source: type
) -> None:
    # Given the record of a header whose JSON is over budget
    ds = dataset_factory()
    ds.private_block(0x0029, "ACME NOTES", create=True).add_new(
        0x10, "UT", base64.b64encode(os.urandom(450_000)).decode()
    )
    item = parse(mem_source(encode(ds))).record().item
    assert "dicom_json_s3" in item

    # When it is written to a (moto) DynamoDB table
    import boto3

    table = boto3.resource("dynamodb").create_table(
        TableName="metadata",
        KeySchema=[{"AttributeName": "s3_key", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "s3_key", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    table.put_item(Item=item)

    # Then it is stored as built
    stored = table.get_item(Key={"s3_key": item["s3_key"]})["Item"]
    assert stored["dicom_json_s3"] == item["dicom_json_s3"]
    assert stored["SOPClassUID"] == item["SOPClassUID"]


def test_thousands_of_flattened_attributes_are_dropped_to_fit(
    lenient_pydicom: None,
) -> None:
    # Given a JSON object with ~1000 public text attributes of 1000 characters each
    text_tags = [
        tag
        for tag, entry in sorted(pydicom.datadict.DicomDictionary.items())
        if entry[0] == "LO" and entry[4] and tag >> 16 not in (0x0002,) and tag & 0xFFFF
    ][:1000]
    j = {f"{tag:08X}": {"vr": "LO", "Value": ["v" * 1000]} for tag in text_tags}
    j.update(_uid_json())

    # When its record is built with a 300 KB budget
    built = build_record(
        j, s3_key="k.dcm", sidecar_uri="s3://b/dicom-json/k.dcm.json.gz", budget=300 * 1024
    )

    # Then the item fits, the UIDs stay, and the dropped attributes are listed (still in JSON)
    assert item_size(built.item) <= 300 * 1024
    assert all(built.item[k] == v for k, v in UIDS.items())
    assert built.dropped and not set(built.dropped) & set(built.item)
    assert "dicom_json_s3" in built.item


def test_the_budget_can_never_exceed_the_dynamodb_limit() -> None:
    # Given ~420 KB of incompressible text (gzip cannot shrink it) and a budget above the limit
    j = {
        **_uid_json(),
        "00091001": {"vr": "UT", "Value": [base64.b64encode(os.urandom(420_000)).decode()]},
    }
    # When the record is built / Then it is still offloaded below 400 KB
    item = build_record(j, s3_key="k", sidecar_uri="s3://b/k.json.gz", budget=10**9).item
    assert "dicom_json_s3" in item and item_size(item) <= DYNAMODB_ITEM_LIMIT


def test_a_missing_uid_fails_the_record() -> None:
    # Given a JSON object without SOP Class UID / When its record is built / Then it raises
    from pipeline.errors import MissingRequiredUid

    j = _uid_json()
    del j["00080016"]
    with pytest.raises(MissingRequiredUid, match=r"SOPClassUID \(0008,0016\)"):
        build_record(j, s3_key="k")


# -- plain JSON -----------------------------------------------------------------------------------


def test_record_to_json_shows_binary_as_base64_and_numbers_as_numbers(
    test_file: Callable[[str], Path],
) -> None:
    # Given a record with binary, Decimal and list attributes
    parsed = parse(str(test_file("CT_small.dcm")))
    item = parsed.record().item

    # When it is printed as plain JSON
    text = record_to_json(item)
    back = json.loads(text)

    # Then binary is base64 (of the gzip of the JSON), numbers are JSON numbers
    assert json.loads(gzip.decompress(base64.b64decode(back["dicom_json_gz"]))) == (
        parsed.dicom_json
    )
    assert back["size"] == int(item["size"]) and isinstance(back["size"], int)
    assert back["SliceThickness"] == float(item["SliceThickness"])
    assert back["ImageType"] == item["ImageType"]
    assert "\n" not in text
