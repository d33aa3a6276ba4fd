"""The element budget: a header of many tiny elements or items is MALFORMED, in bounded memory.

A short pattern repeated (empty items in an undefined-length sequence: 8 bytes each) makes
pydicom build a ``Dataset`` of about 650 bytes per 8 bytes read, and the header size cap alone
would let 32 MiB of it become gigabytes. ``ReadLimits.max_elements`` bounds the element, item
and delimiter headers one header may have (``pipeline.dicom.sources.ElementBudget``), wherever they
are parsed from: the object, an inflated dataset, or a sequence value parsed from memory.
"""

from __future__ import annotations

import io
import struct
import tracemalloc
import zlib
from collections.abc import Callable
from typing import Any

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

import pipeline.dicom.direct
import pipeline.dicom.parse
from pipeline.dicom.header import ReadLimits
from pipeline.dicom.parse import header_file_meta_json, parse
from pipeline.dicom.sources import MAX_ELEMENTS, VALUES_PER_UNIT, ElementBudget
from pipeline.errors import Malformed

EMPTY_ITEM = b"\xfe\xff\x00\xe0\x00\x00\x00\x00"
SEQUENCE_END = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
#: Bytes of memory one element or item may cost at most, everything included (measured:
#: about 750 with pydicom's datasets, the JSON and the record; docs/performance.md).
PER_ELEMENT = 1024


def _prefix(transfer_syntax: str) -> bytes:
    """A Part 10 header (file meta and the four UIDs) to append crafted elements to."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = "1.2.3.4"
    ds.StudyInstanceUID = "1.2.3.5"
    ds.SeriesInstanceUID = "1.2.3.6"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def empty_items(count: int) -> bytes:
    """(0040,0275) an undefined-length sequence of ``count`` empty items (explicit VR)."""
    head = b"\x40\x00\x75\x02SQ\x00\x00\xff\xff\xff\xff"
    return _prefix(ExplicitVRLittleEndian) + head + EMPTY_ITEM * count + SEQUENCE_END


def empty_items_in_a_value(count: int) -> bytes:
    """The same items in a defined-length sequence value, parsed from memory (implicit VR)."""
    value = EMPTY_ITEM * count
    head = struct.pack("<HHL", 0x0040, 0x0275, len(value))
    return _prefix(ImplicitVRLittleEndian) + head + value


def empty_items_deflated(count: int) -> bytes:
    """The same items in a deflated dataset (pydicom reads it from the inflating stream)."""
    prefix = _prefix(DeflatedExplicitVRLittleEndian)
    # the file meta ends where the (deflated) dataset starts: find its group length
    (meta_length,) = struct.unpack_from("<L", prefix, 132 + 8)
    meta_end = 132 + 12 + meta_length
    dataset = zlib.decompress(prefix[meta_end:], -zlib.MAX_WBITS)
    dataset += b"\x40\x00\x75\x02SQ\x00\x00\xff\xff\xff\xff" + EMPTY_ITEM * count + SEQUENCE_END
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return prefix[:meta_end] + packer.compress(dataset) + packer.flush()


CRAFTED = {
    "stream": empty_items,
    "sequence value": empty_items_in_a_value,
    "deflated": empty_items_deflated,
}


class _Source:
    def __init__(self, data: bytes) -> None:
        self.data, self.size, self.uri = data, len(data), "mem://crafted.dcm"

    def read_range(self, offset: int, length: int) -> bytes:
        return self.data[offset : offset + length]


def _peak(data: bytes, limits: ReadLimits) -> tuple[Any, int]:
    tracemalloc.start()
    try:
        try:
            parsed = parse(_Source(data), limits)
            result: Any = parsed.record().item
        except Exception as exc:  # the outcome is checked by the caller
            result = exc
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.fixture(params=[True, False], ids=["direct", "pydicom"])
def reader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Run a test with the direct reader, then with every header left to pydicom."""
    if not request.param:
        monkeypatch.setattr(pipeline.dicom.parse, "read_direct", lambda source, limits: None)
    return bool(request.param)


@pytest.mark.parametrize("shape", sorted(CRAFTED))
def test_a_header_of_repeated_empty_items_is_malformed_in_bounded_memory(
    shape: str, reader: bool
) -> None:
    # Given 160,000 empty items (1.25 MiB, about 100 MiB of pydicom objects if parsed),
    # and a budget of 8,000 elements
    data = CRAFTED[shape](160_000)
    limits = ReadLimits(max_elements=8_000)
    # When parsed
    error, peak = _peak(data, limits)
    # Then MALFORMED, saying why, and the memory stayed within what 8,000 elements may cost
    assert getattr(error, "code", None) == "MALFORMED", error
    assert "more than 8000 data elements" in error.message
    assert peak < 8_000 * PER_ELEMENT + len(data) * 4 + 4 * 1024 * 1024


def test_memory_grows_with_the_budget_not_with_the_header() -> None:
    # Given the same crafted header, twice as long, under budgets of 5,000 and 10,000
    peaks = {}
    for budget, count in ((5_000, 100_000), (10_000, 200_000)):
        error, peaks[budget] = _peak(empty_items(count), ReadLimits(max_elements=budget))
        assert getattr(error, "code", None) == "MALFORMED"
    # Then the peak follows the budget (about 2x), well below the header's own cost (~10x)
    assert peaks[10_000] < 3 * peaks[5_000]


def test_a_header_within_its_budget_is_read(reader: bool) -> None:
    # Given 3,000 empty items (3,000 item headers, plus the other elements and delimiters)
    data = empty_items(3_000)
    # When parsed with a budget that holds them / Then a record
    item = parse(_Source(data), ReadLimits(max_elements=3_100)).record().item
    assert item["SOPInstanceUID"] == "1.2.3.4"
    # and with a budget that does not / Then MALFORMED
    with pytest.raises(Exception, match="more than 2900 data elements"):
        parse(_Source(data), ReadLimits(max_elements=2_900)).record()


@pytest.mark.parametrize("name", ["CT_small.dcm", "rtplan.dcm", "test-SR.dcm", "chrSQEncoding.dcm"])
def test_a_real_header_spends_the_same_budget_whichever_reader_reads_it(
    name: str, test_file: Callable, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a real file, read by the direct reader and then by pydicom
    data = test_file(name).read_bytes()
    spent = []
    for direct in (True, False):
        if not direct:
            monkeypatch.setattr(pipeline.dicom.parse, "read_direct", lambda source, limits: None)
        parsed = parse(_Source(data))
        header_file_meta_json(parsed)  # all the header's conversions done
        spent.append(parsed.header.reader.elements.count)
    # Then both spent the same budget, and a budget one short of it is MALFORMED either way
    assert spent[0] == spent[1] > 0
    for direct in (True, False):
        monkeypatch.setattr(
            pipeline.dicom.parse,
            "read_direct",
            pipeline.dicom.direct.read_direct if direct else (lambda source, limits: None),
        )
        with pytest.raises(Exception, match="data elements"):
            header_file_meta_json(parse(_Source(data), ReadLimits(max_elements=spent[0] - 1)))
        header_file_meta_json(parse(_Source(data), ReadLimits(max_elements=spent[0])))


def test_the_default_budget_fits_real_headers_and_a_lambda() -> None:
    # Given the default: a 2,000-frame enhanced CT header spends about 80,000 (40 per frame),
    # so the default holds about 2,500 frames; it is sized by CPU (ten headers at the limit in
    # half the function's timeout, make bench), no longer by memory
    assert ReadLimits().max_elements == MAX_ELEMENTS == 100_000
    assert VALUES_PER_UNIT == 8
    # and its worst case (every element an empty item read by pydicom) fits in 1024 MB
    assert MAX_ELEMENTS * PER_ELEMENT < 600 * 1024 * 1024


def ds_values(count: int, transfer_syntax: str = ImplicitVRLittleEndian) -> bytes:
    """(0018,0050) with ``count`` values "0\\0\\..." (one element: its length is 32-bit)."""
    value = b"\\".join([b"0"] * count)
    value += b" " * (len(value) % 2)
    if transfer_syntax == ImplicitVRLittleEndian:
        head = struct.pack("<HHL", 0x0018, 0x0050, len(value))
    else:  # explicit VR: a DS length holds 16 bits, so UN (the dictionary VR is DS)
        head = struct.pack("<HH", 0x0018, 0x0050) + b"UN\x00\x00" + struct.pack("<L", len(value))
    return _prefix(transfer_syntax) + head + value


def us_values(count: int) -> bytes:
    """(0028,0010) Rows (US) with ``count`` values in implicit VR."""
    value = struct.pack("<H", 7) * count
    return _prefix(ImplicitVRLittleEndian) + struct.pack("<HHL", 0x0028, 0x0010, len(value)) + value


def escaped_text(escapes: int) -> bytes:
    """A UT under ISO 2022 IR 87 switching ``escapes`` times (pydicom decodes it)."""
    text = b"\x1b$B!!\x1b(Ba" * (escapes // 2)
    charset = b"\x08\x00\x05\x00CS\x10\x00\\ISO 2022 IR 87 "
    prefix = _prefix(ExplicitVRLittleEndian)
    # the character set goes before the first dataset element: after the file meta
    (meta_length,) = struct.unpack_from("<L", prefix, 132 + 8)
    meta_end = 132 + 12 + meta_length
    body = b"\x20\x00\x00\x40UT\x00\x00" + struct.pack("<L", len(text)) + text
    return prefix[:meta_end] + charset + prefix[meta_end:] + body


VALUES = {
    "DS implicit": ds_values,
    "DS as UN": lambda n: ds_values(n, ExplicitVRLittleEndian),
    "US implicit": us_values,
    "ISO 2022 escapes": escaped_text,
}


@pytest.mark.parametrize("shape", sorted(VALUES))
def test_values_spend_the_element_budget_before_they_are_converted(
    shape: str, reader: bool
) -> None:
    # Given one element of 200,000 values (or escape sequences), a few kilobytes of header
    # that would cost about half a second of CPU (32 MiB of them: 16 million values, 37 s)
    data = VALUES[shape](200_000)
    limits = ReadLimits(max_elements=20_000)
    # When it is parsed with a budget of 20,000 (160,000 values at 8 a unit)
    with pytest.raises(Malformed, match="more than 20000 data elements") as caught:
        parse(_Source(data), limits).record()
    # Then it is MALFORMED (counted from the value's bytes, before converting them)
    assert caught.value.code == "MALFORMED"
    # And the same header with fewer values fits the same budget, whichever reader reads it
    item = parse(_Source(VALUES[shape](100_000)), limits).record().item
    assert item["SOPInstanceUID"] == "1.2.3.4"


def test_a_value_counts_in_eighths_of_an_element() -> None:
    # Given a budget of 10 units
    budget = ElementBudget(limit=10, uri="mem://x")
    # When 80 values are spent, in pieces that do not each make a whole unit
    for _ in range(16):
        budget.spend_values(5, 0)
    # Then they cost exactly 10 units, and one more value is one too many
    assert budget.count == 10
    with pytest.raises(Malformed, match="more than 10 data elements"):
        budget.spend_values(VALUES_PER_UNIT, 0)
