"""The DICOM JSON Model (PS3.18 Annex F) the parser emits, checked element by element.

Synthetic headers built with pydicom exercise each rule in every transfer syntax; real files
from pydicom's corpus are compared with pydicom's own ``Dataset.to_json_dict()``, modulo the
differences DESIGN.md and ``docs/record.md`` ask for (listed in ``normalised_reference``).
"""

from __future__ import annotations

import base64
import io
import json
import math
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from pipeline.dicom.parse import parse

TRANSFER_SYNTAXES = {
    "explicit-le": ExplicitVRLittleEndian,
    "implicit-le": ImplicitVRLittleEndian,
    "explicit-be": ExplicitVRBigEndian,
    "deflated": DeflatedExplicitVRLittleEndian,
}
SMALL_BLOB = bytes(range(16))
LARGE_BLOB = bytes(range(256)) * 16  # 4 KiB: above the 1 KiB bulk threshold


def rich_dataset(dataset_factory: Callable[[], Dataset]) -> Dataset:
    """A header with every shape Annex F cares about (and a few it forbids)."""
    ds = dataset_factory()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = "Yamada^Tarou=山田^太郎=やまだ^たろう"
    ds.ImageType = ["ORIGINAL", "", "AXIAL"]  # an empty value inside a multi-valued element
    ds.InstanceNumber = "7"
    ds.SliceThickness = "2.5"
    ds.PixelSpacing = ["0.5", "0.25"]
    ds.Rows = 4
    ds.FrameIncrementPointer = 0x00181063  # AT
    ds.add_new(0x00080000, "UL", 0)  # a group length: dropped from the JSON
    ref = Dataset()
    ref.SeriesInstanceUID = "1.2.3.4"
    ref.add_new(0x00200000, "UL", 0)  # a group length inside an item
    ds.ReferencedSeriesSequence = Sequence([ref, Dataset()])  # a second, empty item
    icon = Dataset()
    icon.Rows = 1
    icon.Columns = 1
    icon.BitsAllocated = 8
    icon.add_new(0x7FE00010, "OB", b"\x00\x01")  # Pixel Data inside an item: dropped
    ds.IconImageSequence = Sequence([icon])
    block = ds.private_block(0x0009, "ACME 1.0", create=True)
    block.add_new(0x01, "LO", "private text")
    block.add_new(0x02, "OB", SMALL_BLOB)
    block.add_new(0x03, "OB", LARGE_BLOB)
    ds.add_new(0xFFFCFFFC, "OB", b"\x00" * 8)  # trailing padding: dropped
    return ds


@pytest.fixture(params=list(TRANSFER_SYNTAXES), ids=list(TRANSFER_SYNTAXES))
def rich_file(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    dataset_factory: Callable[[], Dataset],
    encode: Callable[..., bytes],
) -> tuple[str, Path]:
    path = tmp_path / "rich.dcm"
    path.write_bytes(encode(rich_dataset(dataset_factory), TRANSFER_SYNTAXES[request.param]))
    return request.param, path


def test_the_json_follows_annex_f_in_every_transfer_syntax(
    rich_file: tuple[str, Path], check_conformance: Callable
) -> None:
    # Given a header with text, numbers, names, tags, sequences, private and binary elements
    syntax, path = rich_file

    # When it is parsed
    j = parse(str(path)).dicom_json

    # Then the JSON conforms and holds each element in its Annex F shape
    assert check_conformance(j) == []
    json.dumps(j, allow_nan=False)
    assert "00080000" not in j and "FFFCFFFC" not in j and "7FE00010" not in j
    assert not any(key.startswith("0002") for key in j)
    assert j["00100010"] == {
        "vr": "PN",
        "Value": [
            {"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎", "Phonetic": "やまだ^たろう"}
        ],
    }
    assert j["00080008"] == {"vr": "CS", "Value": ["ORIGINAL", None, "AXIAL"]}
    assert j["00200013"] == {"vr": "IS", "Value": [7]}
    assert j["00180050"] == {"vr": "DS", "Value": [2.5]}
    assert j["00280030"] == {"vr": "DS", "Value": [0.5, 0.25]}
    assert j["00280010"] == {"vr": "US", "Value": [4]}
    assert j["00280009"] == {"vr": "AT", "Value": ["00181063"]}
    # sequences nested, group lengths and Pixel Data dropped inside items too, {} for empty
    assert j["00081115"] == {
        "vr": "SQ",
        "Value": [{"0020000E": {"vr": "UI", "Value": ["1.2.3.4"]}}, {}],
    }
    icon = j["00880200"]["Value"][0]
    assert "7FE00010" not in icon and icon["00280010"] == {"vr": "US", "Value": [1]}
    # private elements kept with their creator (in implicit VR an unknown private VR is UN)
    private_vr = "UN" if syntax == "implicit-le" else None
    assert j["00090010"] == {"vr": "LO", "Value": ["ACME 1.0"]}
    if private_vr:
        assert j["00091001"] == {"vr": "UN", "InlineBinary": "cHJpdmF0ZSB0ZXh0"}
    else:
        assert j["00091001"] == {"vr": "LO", "Value": ["private text"]}
    assert j["00091002"] == {
        "vr": private_vr or "OB",
        "InlineBinary": base64.b64encode(SMALL_BLOB).decode(),
    }
    # a binary value above the threshold is a reference to its bytes, not the bytes
    assert j["00091003"]["vr"] == (private_vr or "OB")
    uri = j["00091003"]["BulkDataURI"]
    assert uri.startswith(path.resolve().as_uri() + "?")
    query = parse_qs(urlparse(uri).query)
    offset, length = int(query["offset"][0]), int(query["length"][0])
    assert length == len(LARGE_BLOB)
    raw = path.read_bytes()
    if syntax == "deflated":
        # offsets of a deflated dataset are in the inflated stream, and the URI says so
        assert query["encoding"] == ["deflate"]
        (meta_length,) = struct.unpack_from("<I", raw, 132 + 8)  # (0002,0000) UL
        stream = zlib.decompressobj(-zlib.MAX_WBITS).decompress(raw[132 + 12 + meta_length :])
        assert stream[offset : offset + length] == LARGE_BLOB
    else:
        assert "encoding" not in query
        assert raw[offset : offset + length] == LARGE_BLOB


def test_the_file_meta_is_not_in_the_dataset_json_but_is_flattened(
    rich_file: tuple[str, Path],
) -> None:
    # Given a Part 10 file
    _, path = rich_file
    # When it is parsed and its record built
    parsed = parse(str(path))
    item = parsed.record().item
    # Then group 0002 is absent from the JSON and its keywords are attributes of the record
    assert not [k for k in parsed.dicom_json if k.startswith("0002")]
    assert item["TransferSyntaxUID"] == str(
        pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
    )


# -- comparison with pydicom -----------------------------------------------------------

COMPARED = [
    "CT_small.dcm",
    "MR_small.dcm",
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
    "ExplVR_BigEnd.dcm",
    "image_dfl.dcm",
    "rtplan.dcm",
    "rtstruct.dcm",
    "test-SR.dcm",
    "liver_1frame.dcm",
    "examples_overlay.dcm",
    "waveform_ecg.dcm",
    "chrH31.dcm",
    "chrX1.dcm",
    "chrSQEncoding.dcm",
]


def _skip_tag(tag: int) -> bool:
    return (
        tag & 0xFFFF == 0
        or tag >> 16 in (0x0002, 0xFFFC)
        or tag
        in (
            0x7FE00010,
            0x7FE00008,
            0x7FE00009,
        )
    )


def assert_same_as_pydicom(ours: dict[str, Any], ref: dict[str, Any], where: str = "") -> None:
    """Equal modulo the documented differences.

    * group lengths, file meta, padding and Pixel Data are not in ours;
    * an empty value inside a multi-valued element is ``null`` in ours (PS3.18 F.2.5),
      ``""`` in pydicom's;
    * ours decides InlineBinary vs BulkDataURI on the raw length, pydicom on base64's;
    * numbers compare as numbers (float formatting may differ in the last bit).
    """
    expected = {k: v for k, v in ref.items() if not _skip_tag(int(k, 16))}
    assert sorted(ours) == sorted(expected), where
    for key, mine in ours.items():
        theirs = expected[key]
        at = f"{where}/{key}"
        assert mine["vr"] == theirs["vr"], at
        if mine["vr"] == "SQ":
            items, ref_items = mine.get("Value", []), theirs.get("Value", [])
            assert len(items) == len(ref_items), at
            for i, (a, b) in enumerate(zip(items, ref_items, strict=True)):
                assert_same_as_pydicom(a, b, f"{at}[{i}]")
        elif "BulkDataURI" in mine or "BulkDataURI" in theirs:
            continue
        elif "InlineBinary" in mine:
            assert base64.b64decode(mine["InlineBinary"]) == base64.b64decode(
                theirs["InlineBinary"]
            ), at
        else:
            values = mine.get("Value", [])
            ref_values = [None if v == "" else v for v in theirs.get("Value", [])]
            if len(ref_values) == 1 and ref_values[0] is None:
                ref_values = []
            assert len(values) == len(ref_values), at
            for a, b in zip(values, ref_values, strict=True):
                if isinstance(a, float) or isinstance(b, float):
                    assert math.isclose(a, b, rel_tol=1e-12), at
                else:
                    assert a == b, at


@pytest.mark.parametrize("name", COMPARED)
def test_the_json_matches_pydicoms_modulo_the_documented_differences(
    name: str, test_file: Callable[[str], Path], lenient_pydicom: None
) -> None:
    # Given a real file and pydicom's own DICOM JSON of it (read leniently, as pydicom does)
    path = test_file(name)
    ref = pydicom.dcmread(path, stop_before_pixels=True, force=True).to_json_dict(
        bulk_data_threshold=1024, bulk_data_element_handler=lambda elem: "bulk"
    )

    # When the pipeline parses it
    ours = parse(str(path)).dicom_json

    # Then both agree element by element
    assert_same_as_pydicom(ours, ref)


def test_ambiguous_implicit_vr_values_are_resolved_like_pydicom(
    test_file: Callable[[str], Path], lenient_pydicom: None
) -> None:
    # Given an implicit VR file with "US or SS" elements and Pixel Representation 1
    path = test_file("MR_small_implicit.dcm")
    ds = pydicom.dcmread(path, stop_before_pixels=True)

    # When it is parsed
    j = parse(str(path)).dicom_json

    # Then they are signed numbers, not the raw bytes
    assert j["00280106"] == {"vr": "SS", "Value": [ds.SmallestImagePixelValue]}
    assert j["00280107"] == {"vr": "SS", "Value": [ds.LargestImagePixelValue]}


# -- invalid values ----------------------------------------------------------------------


def patch(data: bytes, old: bytes, new: bytes) -> bytes:
    """Replace the one occurrence of ``old`` by ``new`` of the same length."""
    assert len(old) == len(new) and data.count(old) == 1
    return data.replace(old, new)


@pytest.mark.parametrize(
    ("written", "expected_json"),
    [
        (b"1.5\\abc ", [1.5, "abc"]),  # one bad value does not hide the good one
        (b"1,5\\2.5 ", ["1,5", 2.5]),  # a comma is not a decimal point in DICOM
        (b"1e999   ", ["1e999"]),  # beyond a double: kept as written, not "Infinity"
        (b"NaN     ", ["NaN"]),
        (b"1A      ", ["1A"]),
    ],
)
def test_an_invalid_ds_is_kept_as_a_string_and_not_flattened(
    written: bytes,
    expected_json: list[Any],
    make_dicom: Callable[..., bytes],
    mem_source: type,
    check_conformance: Callable,
) -> None:
    # Given a header whose Pixel Spacing (DS) holds an invalid string (written as raw bytes)
    data = patch(make_dicom(PixelSpacing=["0.123", "0.5"]), b"0.123\\0.5 ", written + b"  ")

    # When it is parsed and its record built
    parsed = parse(mem_source(data))
    item = parsed.record().item

    # Then the record builds, the JSON keeps the invalid value as written,
    # and the attribute is not flattened (it is not a number)
    assert parsed.dicom_json["00280030"] == {"vr": "DS", "Value": expected_json}
    assert "PixelSpacing" not in item
    assert check_conformance(parsed.dicom_json) == []


@pytest.mark.parametrize(
    ("written", "expected_json", "flat"),
    [
        (b"12A ", ["12A"], None),
        (b"2.0 ", [2], 2),  # an integral decimal is the integer
        (b"2.5 ", ["2.5"], None),  # not an integer: kept as written
        (b"+42 ", [42], 42),
    ],
)
def test_invalid_is_values_are_kept_as_strings(
    written: bytes,
    expected_json: list[Any],
    flat: int | None,
    make_dicom: Callable[..., bytes],
    mem_source: type,
) -> None:
    # Given a header whose Instance Number (IS) holds the written bytes ("+" is in no UID, so
    # the placeholder occurs once whatever UIDs the header got)
    data = patch(make_dicom(InstanceNumber="+987"), b"+987", written)
    # When it is parsed
    parsed = parse(mem_source(data))
    item = parsed.record().item
    # Then the JSON has the number when there is one, else the string, and so does the record
    assert parsed.dicom_json["00200013"] == {"vr": "IS", "Value": expected_json}
    assert item.get("InstanceNumber") == flat


def test_a_value_of_the_wrong_length_for_its_vr_is_kept_as_bytes(
    make_dicom: Callable[..., bytes], mem_source: type, check_conformance: Callable
) -> None:
    # Given a header where a UL element has 6 bytes (not a multiple of 4), made by patching
    # a 6-byte LO element (tag, VR and length included) of a valid file
    ds_bytes = make_dicom(StationName="ABCDEF")
    old = struct.pack("<HH", 0x0008, 0x1010) + b"SH" + struct.pack("<H", 6) + b"ABCDEF"
    new = struct.pack("<HH", 0x0008, 0x1010) + b"UL" + struct.pack("<H", 6) + b"\x01" * 6
    data = patch(ds_bytes, old, new)

    # When it is parsed
    parsed = parse(mem_source(data))
    item = parsed.record().item

    # Then the record builds and the undecodable value is kept, as UN bytes
    assert parsed.dicom_json["00081010"] == {
        "vr": "UN",
        "InlineBinary": base64.b64encode(b"\x01" * 6).decode(),
    }
    assert "StationName" not in item
    assert check_conformance(parsed.dicom_json) == []


# -- private sequences of VR UN ------------------------------------------------------------


def test_un_sequence_file_nests_its_private_sequence(test_file: Callable[[str], Path]) -> None:
    # Given pydicom's UN_sequence.dcm (a private sequence written with VR UN, undefined length)
    # When it is parsed
    j = parse(str(test_file("UN_sequence.dcm"))).dicom_json
    # Then the sequence and its nested sequences are JSON sequences, values decoded
    outer = j["4453100C"]
    assert outer["vr"] == "SQ"
    item = outer["Value"][0]
    assert item["0020000D"]["vr"] == "UI"
    series = item["00081115"]["Value"][0]
    assert series["00081199"]["Value"][0]["00081150"] == {
        "vr": "UI",
        "Value": ["1.2.840.10008.5.1.4.1.1.2"],
    }


def test_private_implicit_sequences_are_nested(test_file: Callable[[str], Path]) -> None:
    # Given priv_SQ.dcm (implicit VR; a private sequence of unknown VR with a defined length)
    # and nested_priv_SQ.dcm (private sequences nested in private sequences)
    j = parse(str(test_file("priv_SQ.dcm"))).dicom_json
    nested = parse(str(test_file("nested_priv_SQ.dcm"))).dicom_json

    # Then the private creator is kept and the unknown private value is a nested sequence
    assert j["3F030010"] == {"vr": "LO", "Value": ["aaabbbccc MEDICAL SYSTEMS"]}
    assert j["3F031001"]["vr"] == "SQ"
    assert j["3F031001"]["Value"][0]["00080090"] == {
        "vr": "PN",
        "Value": [{"Alphabetic": "111111111111111"}],
    }
    inner = nested["00010001"]["Value"][0]["00010001"]
    assert inner["vr"] == "SQ"
    assert base64.b64decode(inner["Value"][0]["00010001"]["InlineBinary"]) == b"Double Nested SQ"


def _implicit_item(*elements: tuple[int, bytes]) -> bytes:
    body = b"".join(struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(v)) + v for tag, v in elements)
    return struct.pack("<HHI", 0xFFFE, 0xE000, len(body)) + body


@pytest.mark.parametrize("text_length", [8, 4000], ids=["inline", "deferred"])
def test_a_private_un_sequence_nests_whatever_its_size(
    text_length: int,
    dataset_factory: Callable[[], Dataset],
    encode: Callable[..., bytes],
    mem_source: type,
) -> None:
    # Given a private element of VR UN whose defined-length value is a sequence's items
    # (implicit VR, PS3.5 6.2.2), once small and once above the 1 KiB threshold
    text = b"x" * text_length
    value = _implicit_item((0x0020000D, b"1.2.3\x00"), (0x00081030, text))
    ds = dataset_factory()
    ds.private_block(0x0011, "ACME SQ", create=True).add_new(0x10, "UN", value)
    data = encode(ds, ExplicitVRLittleEndian)

    # When it is parsed
    j = parse(mem_source(data)).dicom_json

    # Then the value is the same nested sequence both times
    assert j["00111010"]["vr"] == "SQ"
    item = j["00111010"]["Value"][0]
    assert item["0020000D"] == {"vr": "UI", "Value": ["1.2.3"]}
    assert item["00081030"] == {"vr": "LO", "Value": [text.decode()]}


def test_a_un_blob_that_only_looks_like_items_stays_binary(
    dataset_factory: Callable[[], Dataset],
    encode: Callable[..., bytes],
    mem_source: type,
) -> None:
    # Given a private UN value that starts with an Item tag but is not a sequence
    blob = b"\xfe\xff\x00\xe0" + b"\xff" * 12
    ds = dataset_factory()
    ds.private_block(0x0011, "ACME BLOB", create=True).add_new(0x10, "UN", blob)

    # When it is parsed
    parsed = parse(mem_source(encode(ds, ExplicitVRLittleEndian)))

    # Then it is kept as it is, and the record builds
    assert parsed.dicom_json["00111010"] == {
        "vr": "UN",
        "InlineBinary": base64.b64encode(blob).decode(),
    }
    assert parsed.record().item["SOPInstanceUID"]


# -- the reading mode is the parser's own -----------------------------------------------------


@pytest.mark.parametrize("name", ["rtdose.dcm", "badVR.dcm", "SC_rgb_jpeg.dcm", "CT_small.dcm"])
def test_the_outcome_does_not_depend_on_pydicoms_global_reading_mode(
    name: str, test_file: Callable[[str], Path]
) -> None:
    # Given files with values pydicom's strict mode rejects (a UID over 64 characters, an IS
    # "1A", an explicit/implicit VR switch) and a clean one
    path = str(test_file(name))

    # When they are parsed with pydicom strict (this layer's default) and lenient
    strict = parse(path).dicom_json
    with pydicom.config.disable_value_validation():
        ignore = parse(path).dicom_json
    saved = pydicom.config.settings._reading_validation_mode
    pydicom.config.settings.reading_validation_mode = pydicom.config.WARN
    try:
        warn = parse(path).dicom_json
    finally:
        pydicom.config.settings._reading_validation_mode = saved

    # Then the JSON is the same, and the caller's mode is left as it was
    assert strict == warn == ignore
    assert pydicom.config.settings.reading_validation_mode == pydicom.config.RAISE


def test_no_pydicom_warning_escapes_a_parse(test_file: Callable[[str], Path]) -> None:
    # Given a file pydicom warns about (its warnings can quote element values), parsed once
    # inside code that restores the warning filters afterwards (as catch_warnings does)
    import warnings

    path = str(test_file("badVR.dcm"))
    with warnings.catch_warnings():
        parse(path)

    # When it is parsed again with every warning recorded
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        parse(path)

    # Then no warning came out of pydicom
    assert [str(w.message)[:80] for w in caught] == []


def test_json_is_utf8_text(rich_file: tuple[str, Path]) -> None:
    # Given a header with non-ASCII names
    _, path = rich_file
    # When its JSON is serialised as the CLI does
    text = json.dumps(parse(str(path)).dicom_json, ensure_ascii=False)
    # Then it is valid UTF-8 that holds the decoded characters
    assert "山田^太郎" in text.encode("utf-8").decode("utf-8")
    assert json.loads(io.StringIO(text).read())["00100010"]["Value"][0]["Phonetic"] == (
        "やまだ^たろう"
    )


def test_parallel_parses_restore_the_callers_reading_mode(
    test_file: Callable[[str], Path],
) -> None:
    # Given files parsed from several threads at once (the parser pins pydicom's global mode)
    from concurrent.futures import ThreadPoolExecutor

    paths = [str(test_file(n)) for n in ("rtdose.dcm", "CT_small.dcm", "badVR.dcm")] * 8

    # When they all run
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(lambda p: parse(p).dicom_json, paths))

    # Then each got the same JSON as alone, and the caller's strict mode is back afterwards
    assert all(r == parse(p).dicom_json for r, p in zip(results, paths, strict=True))
    assert pydicom.config.settings.reading_validation_mode == pydicom.config.RAISE


def test_non_finite_floats_are_strings_and_not_flattened(
    make_dicom: Callable[..., bytes], mem_source: type, check_conformance: Callable
) -> None:
    # Given FD values that JSON numbers cannot hold (written as raw IEEE bytes)
    data = make_dicom(DiffusionBValue=1.5, FrameTime=2.5)
    data = patch(data, struct.pack("<d", 1.5), struct.pack("<d", float("nan")))

    # When parsed
    parsed = parse(mem_source(data))
    item = parsed.record().item

    # Then the JSON stays valid JSON (no bare NaN), and the value is not indexed
    assert parsed.dicom_json["00189087"] == {"vr": "FD", "Value": ["NaN"]}
    json.dumps(parsed.dicom_json, allow_nan=False)
    assert check_conformance(parsed.dicom_json) == []
    assert "DiffusionBValue" not in item and item["FrameTime"] == 2.5
