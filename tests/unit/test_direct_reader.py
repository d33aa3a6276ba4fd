"""The direct reader (``direct.read_direct``) gives exactly what pydicom's reading gives.

``parse`` reads most headers with the direct reader, which writes the DICOM JSON while it walks
the header, and leaves the others to pydicom's ``read_dataset`` (the way every header was read
before). Whichever reads a header, every output must be the same: the DICOM JSON (key order
included), the File Meta JSON, the record, the read statistics, or the coded error and its
message. These tests compare the two on pydicom's bundled files, on mutated copies of them and
on generated headers; ``tests/bench/parser_differential.py`` runs the same comparison at scale.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

import pipeline.dicom.parse
from pipeline.dicom.header import ReadLimits
from pipeline.dicom.parse import header_file_meta_json, parse
from pipeline.errors import DicomPipelineError, ObjectNotFound

DATA = Path(pydicom.__file__).parent / "data"
BUNDLED = sorted(
    p
    for folder in ("test_files", "charset_files")
    for p in (DATA / folder).rglob("*")
    if p.is_file()
)
SMALL = ReadLimits(first_range=256, block_size=128, bulk_threshold=64)
#: ``FUZZ_SCALE=20 pytest tests/unit/test_direct_reader.py`` runs longer campaigns.
SCALE = int(os.environ.get("FUZZ_SCALE", "1"))


class _Source:
    """An in-memory ByteSource that records the ranges it serves."""

    def __init__(self, data: bytes, uri: str = "mem://object.dcm") -> None:
        self.data = data
        self.size = len(data)
        self.uri = uri
        self.ranges: list[tuple[int, int]] = []

    def read_range(self, offset: int, length: int) -> bytes:
        self.ranges.append((offset, length))
        return self.data[offset : offset + length]


def outcome(
    data: bytes, limits: ReadLimits | None = None, *, direct: bool = True
) -> dict[str, Any]:
    """Everything a parse of ``data`` gives, as comparable values."""
    saved = pipeline.dicom.parse.read_direct
    if not direct:
        pipeline.dicom.parse.read_direct = lambda source, limits: None  # type: ignore[assignment]
    try:
        parsed = parse(_Source(data), limits)
        out: dict[str, Any] = {
            "json": json.dumps(parsed.dicom_json, ensure_ascii=False),
            "meta": json.dumps(header_file_meta_json(parsed), ensure_ascii=False),
            "stats": parsed.stats,
            "direct": parsed.header.dicom_json is not None,
        }
        try:
            item = parsed.record(indexed_at="2000-01-01T00:00:00.000Z").item
            out["record"] = repr(sorted(item.items()))
        except DicomPipelineError as exc:
            out["record_error"] = exc.to_dict()
        return out
    except DicomPipelineError as exc:
        return {"error": exc.to_dict()}
    finally:
        pipeline.dicom.parse.read_direct = saved


def assert_same(data: bytes, limits: ReadLimits | None = None) -> dict[str, Any]:
    direct = outcome(data, limits)
    reference = outcome(data, limits, direct=False)
    used_direct = direct.pop("direct", False)
    reference.pop("direct", None)
    assert direct == reference
    direct["direct"] = used_direct
    return direct


@pytest.mark.parametrize("path", BUNDLED, ids=[str(p.relative_to(DATA)) for p in BUNDLED])
def test_the_direct_reader_gives_what_pydicom_gives_on_every_bundled_file(path: Path) -> None:
    # Given a file bundled with pydicom / When parsed both ways (default and small ranges)
    # Then every output is the same
    data = path.read_bytes()
    assert_same(data)
    assert_same(data, SMALL)


def test_the_direct_reader_reads_most_bundled_files() -> None:
    # Given pydicom's bundled files that become records
    # When parsed / Then the direct reader (not the pydicom fallback) read nearly all of them
    outcomes = [outcome(p.read_bytes()) for p in BUNDLED]
    records = [o for o in outcomes if "record" in o]
    assert len(records) > 140
    assert sum(o["direct"] for o in records) >= 0.9 * len(records)


# -- mutated real files -----------------------------------------------------------------------

FUZZED = {
    name: (DATA / name).read_bytes()
    for name in [
        "test_files/CT_small.dcm",
        "test_files/MR_small_implicit.dcm",
        "test_files/ExplVR_BigEndNoMeta.dcm",
        "test_files/rtplan.dcm",
        "test_files/test-SR.dcm",
        "test_files/UN_sequence.dcm",
        "test_files/nested_priv_SQ.dcm",
        "test_files/waveform_ecg.dcm",
        "charset_files/chrH31.dcm",
        "charset_files/chrSQEncoding.dcm",
    ]
}
FUZZ_LIMITS = ReadLimits(max_header_bytes=1024 * 1024, max_elements=5000)


@settings(max_examples=400 * SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(sorted(FUZZED)), data=st.data())
def test_the_direct_reader_gives_what_pydicom_gives_on_mutated_files(
    name: str, data: st.DataObject
) -> None:
    # Given a real file cut, with bits flipped, bytes or a length field rewritten
    raw = bytearray(FUZZED[name])
    end = min(len(raw), 4096)
    kind = data.draw(st.sampled_from(["cut", "flip", "byte", "field"]), label="kind")
    if kind == "cut":
        raw = raw[: data.draw(st.integers(0, len(raw)), label="cut")]
    elif kind == "flip":
        for pos, bit in data.draw(
            st.lists(st.tuples(st.integers(0, end - 1), st.integers(0, 7)), min_size=1, max_size=4)
        ):
            raw[pos] ^= 1 << bit
    elif kind == "byte":
        for pos, value in data.draw(
            st.lists(
                st.tuples(st.integers(0, end - 1), st.integers(0, 255)), min_size=1, max_size=4
            )
        ):
            raw[pos] = value
    else:
        pos = data.draw(st.integers(0, end - 4), label="pos")
        value = data.draw(st.sampled_from([0, 0xFFFFFFFF, 0xFFFF, 7, 8, 100_000]), label="value")
        raw[pos : pos + 4] = struct.pack("<L", value)
    # When parsed both ways / Then every output is the same
    assert_same(bytes(raw), FUZZ_LIMITS)


# -- generated headers ------------------------------------------------------------------------

TEXT = st.text(alphabet="AZaz09 ^=.-\\é", max_size=12)
CHARSETS = st.sampled_from([None, "ISO_IR 100", "ISO_IR 192", "ISO 2022 IR 87", "", "utf_16"])


@st.composite
def datasets(draw: st.DrawFn, depth: int = 0) -> Dataset:
    """A header with text, numbers, binary, private and nested sequence elements."""
    with pydicom.config.disable_value_validation():
        return _dataset(draw, depth)


def _dataset(draw: st.DrawFn, depth: int) -> Dataset:
    ds = Dataset()
    charset = draw(CHARSETS)
    if charset is not None:
        ds.SpecificCharacterSet = charset
    if draw(st.booleans()):
        ds.PatientName = draw(TEXT)
    if draw(st.booleans()):
        ds.StudyDescription = draw(TEXT)
    if draw(st.booleans()):
        ds.ImageType = draw(st.lists(st.sampled_from(["ORIGINAL", "", "AXIAL"]), max_size=3))
    if draw(st.booleans()):
        ds.InstanceNumber = draw(st.sampled_from(["7", "", " 12 "]))
    if draw(st.booleans()):
        ds.PixelSpacing = draw(st.sampled_from([["0.5", "0.5"], ["1e3", "-2"]]))
    if draw(st.booleans()):
        ds.Rows = draw(st.integers(0, 65535))
    if draw(st.booleans()):
        ds.SmallestImagePixelValue = draw(st.integers(0, 100))  # US or SS
        ds.PixelRepresentation = draw(st.integers(0, 1))
    if draw(st.booleans()):
        ds.add_new(0x00420011, "OB", draw(st.binary(max_size=2100)))  # around the thresholds
    if draw(st.booleans()):
        ds.add_new(0x00204000, "LT", draw(st.text(max_size=1500)))
    if draw(st.booleans()):
        block = ds.private_block(0x0009, draw(st.sampled_from(["ACME 1.0", "GEMS_IDEN_01"])), True)
        block.add_new(0x01, "LO", draw(TEXT))
        block.add_new(0x02, "UN", draw(st.binary(max_size=12)))
    if depth < 2 and draw(st.booleans()):
        items = [_dataset(draw, depth + 1) for _ in range(draw(st.integers(0, 3)))]
        for item in items:
            item.is_undefined_length_sequence_item = draw(st.booleans())
        ds.ReferencedSeriesSequence = Sequence(items)
        ds["ReferencedSeriesSequence"].is_undefined_length = draw(st.booleans())
    return ds


@settings(max_examples=150 * SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ds=datasets(),
    syntax=st.sampled_from([ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian]),
)
def test_the_direct_reader_gives_what_pydicom_gives_on_generated_headers(
    ds: Dataset,
    syntax: str,
    dataset_factory: Callable[[], Dataset],
    encode: Callable[..., bytes],
) -> None:
    # Given a generated header with the four UIDs, in one of the transfer syntaxes (written
    # without validation: some of its values are invalid on purpose)
    with pydicom.config.disable_value_validation():
        header = dataset_factory()
        header.update(ds)
        try:
            data = encode(header, syntax)
        except (ValueError, LookupError, IndexError):
            assume(False)  # pydicom cannot write this text in that character set
            return
    # When parsed both ways / Then every output is the same (default and small ranges)
    assert_same(data)
    assert_same(data, SMALL)


# -- what the direct reader does beyond the JSON ---------------------------------------------


def test_a_directly_read_header_reads_its_dataset_again_on_demand(test_file: Callable) -> None:
    # Given a header the direct reader read
    path = test_file("CT_small.dcm")
    parsed = parse(str(path))
    assert parsed.header.dicom_json is not None
    # When its pydicom dataset is asked for / Then pydicom reads it, as read_header would
    reference = pydicom.dcmread(path, stop_before_pixels=True)
    assert set(parsed.header.dataset.keys()) == set(reference.keys())
    assert parsed.header.file_meta.TransferSyntaxUID == reference.file_meta.TransferSyntaxUID


def test_a_header_left_to_pydicom_does_not_fetch_its_first_range_twice(
    test_file: Callable,
) -> None:
    # Given a deflated file (the direct reader leaves those to pydicom)
    source = _Source(test_file("image_dfl.dcm").read_bytes())
    # When parsed
    parsed = parse(source)
    # Then pydicom read it, and the first range came from the source once
    assert parsed.header.dicom_json is None and parsed.header.deflated
    assert source.ranges.count((0, 64 * 1024)) == 1


class _FailingSource(_Source):
    """Fails every range after the first, as an object deleted mid-read does."""

    def read_range(self, offset: int, length: int) -> bytes:
        if self.ranges:
            self.ranges.append((offset, length))
            raise ObjectNotFound(f"object not found: {self.uri}")
        return super().read_range(offset, length)


def test_a_source_error_is_raised_once_not_retried_by_the_fallback(test_file: Callable) -> None:
    # Given an object whose second range cannot be read
    source = _FailingSource(test_file("CT_small.dcm").read_bytes())
    # When parsed with small ranges
    with pytest.raises(ObjectNotFound):
        parse(source, SMALL)
    # Then the failing range was asked for once: the error is the source's, not the parser's
    assert len(source.ranges) == 2
