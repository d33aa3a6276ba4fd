"""Property-based fuzzing of the header reader with hypothesis.

Truncations, bit flips and length-field mutations of a few small real files (pydicom's
bundled ones): every input gives a record or a coded error (never INTERNAL, never an
exception of another type), within a deadline, with memory bounded by the header cap.
"""

from __future__ import annotations

import json
import os
import struct
import tracemalloc
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.dataelem import RawDataElement

from pipeline.dicom.header import ReadLimits
from pipeline.dicom.parse import parse
from pipeline.dicom.record import DYNAMODB_ITEM_LIMIT, item_size

DATA = Path(pydicom.__file__).parent / "data"
FILES = {
    name: (DATA / folder / name).read_bytes()
    for folder, name in [
        ("test_files", "MR_small_implicit.dcm"),  # implicit VR little endian
        ("test_files", "rtplan.dcm"),  # nested sequences
        ("test_files", "ExplVR_BigEndNoMeta.dcm"),  # big endian, no file meta
        ("test_files", "image_dfl.dcm"),  # deflated
        ("test_files", "UN_sequence.dcm"),  # private UN sequences
        ("charset_files", "chrH31.dcm"),  # ISO 2022 escapes
        ("test_files", "CT_small.dcm"),  # explicit VR, private groups, 6 KB header
        ("test_files", "test-SR.dcm"),  # deeply nested undefined-length sequences
        ("test_files", "waveform_ecg.dcm"),  # values above the bulk threshold (deferred)
    ]
}
#: Fuzzed headers may not make the reader fetch (or inflate) more than this.
LIMITS = ReadLimits(max_header_bytes=1024 * 1024)
DEADLINE = timedelta(milliseconds=1500)
#: ``FUZZ_SCALE=50 pytest tests/unit/test_fuzz.py`` runs a longer campaign than ``make test``.
SCALE = int(os.environ.get("FUZZ_SCALE", "1"))


class _Source:
    """An in-memory ByteSource (the fake of conftest, repeated: hypothesis needs no fixture)."""

    def __init__(self, data: bytes, size: int | None = None) -> None:
        self.data = data
        self.size = len(data) if size is None else size
        self.uri = "mem://fuzzed.dcm"

    def read_range(self, offset: int, length: int) -> bytes:
        end = min(offset + length, self.size)
        chunk = self.data[offset:end]
        return chunk + bytes(max(0, end - offset - len(chunk)))


def check_outcome(data: bytes, conformance: Callable[[dict[str, Any]], list[str]]) -> str:
    """Parse ``data``; assert the outcome is a sound record or a coded error; return its code."""
    from pipeline.errors import CODES, DicomPipelineError

    try:
        parsed = parse(_Source(data), LIMITS)
        item = parsed.record().item
    except DicomPipelineError as exc:
        assert exc.code in CODES and exc.code != "INTERNAL", exc.message
        return exc.code
    json.dumps(parsed.dicom_json, allow_nan=False)
    assert conformance(parsed.dicom_json) == []
    assert item_size(item) <= DYNAMODB_ITEM_LIMIT
    return "RECORD"


def _header_end(data: bytes) -> int:
    return parse(_Source(data)).header.header_bytes


HEADER_ENDS = {name: _header_end(data) for name, data in FILES.items()}


def _length_fields(data: bytes) -> list[tuple[int, int, str]]:
    """(offset, size, byte order) of the length field of every top-level element."""
    header = parse(_Source(data)).header
    if header.deflated:
        return []  # its offsets are in the inflated stream
    order = "<" if header.is_little_endian else ">"
    fields = []
    for ds, explicit, fmt in (
        (header.file_meta, True, "<"),
        (header.dataset, not header.is_implicit_vr, order),
    ):
        for elem in ds._dict.values():
            if not isinstance(elem, RawDataElement):
                continue
            long_length = not explicit or elem.VR in (
                "OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV",
            )  # fmt: skip
            size = 4 if long_length else 2
            fields.append((elem.value_tell - size, size, fmt))
    return fields


LENGTH_FIELDS = {name: _length_fields(data) for name, data in FILES.items()}
names = st.sampled_from(sorted(FILES))


@settings(deadline=DEADLINE, max_examples=300 * SCALE)
@given(name=names, data=st.data())
def test_any_truncation_is_a_record_or_a_coded_error(
    name: str, data: st.DataObject, check_conformance: Callable
) -> None:
    # Given a real file cut anywhere (mostly inside its header)
    raw = FILES[name]
    cut = data.draw(
        st.one_of(st.integers(0, HEADER_ENDS[name]), st.integers(0, len(raw))), label="cut"
    )
    # When parsed / Then a sound record or a coded error
    check_outcome(raw[:cut], check_conformance)


@pytest.mark.slow
@settings(deadline=DEADLINE, max_examples=800 * SCALE)
@given(name=names, data=st.data())
def test_bit_flips_give_a_record_or_a_coded_error(
    name: str, data: st.DataObject, check_conformance: Callable
) -> None:
    # Given a real file with one to four bits flipped in its header
    raw = bytearray(FILES[name])
    flips = data.draw(
        st.lists(
            st.tuples(st.integers(0, HEADER_ENDS[name] - 1), st.integers(0, 7)),
            min_size=1,
            max_size=4,
        ),
        label="flips",
    )
    for position, bit in flips:
        raw[position] ^= 1 << bit
    # When parsed / Then a sound record or a coded error
    check_outcome(bytes(raw), check_conformance)


@pytest.mark.slow
@settings(deadline=DEADLINE, max_examples=800 * SCALE)
@given(name=names, data=st.data())
def test_byte_rewrites_give_a_record_or_a_coded_error(
    name: str, data: st.DataObject, check_conformance: Callable
) -> None:
    # Given a real file with a run of its header bytes replaced by arbitrary bytes
    raw = bytearray(FILES[name])
    start = data.draw(st.integers(0, HEADER_ENDS[name] - 1), label="start")
    patch = data.draw(st.binary(min_size=1, max_size=16), label="patch")
    raw[start : start + len(patch)] = patch
    # When parsed / Then a sound record or a coded error
    check_outcome(bytes(raw), check_conformance)


INTERESTING_LENGTHS = [0, 1, 2, 3, 4, 7, 8, 0xFF, 0x7FFF, 0xFFFE, 0xFFFF]
INTERESTING_LENGTHS += [0x7FFFFFFF, 0xFFFFFFF0, 0xFFFFFFFE, 0xFFFFFFFF]


@pytest.mark.slow
@settings(deadline=DEADLINE, max_examples=800 * SCALE)
@given(name=st.sampled_from(sorted(n for n in FILES if LENGTH_FIELDS[n])), data=st.data())
def test_length_field_mutations_give_a_record_or_a_coded_error(
    name: str, data: st.DataObject, check_conformance: Callable
) -> None:
    # Given a real file with the length field of one of its elements rewritten
    raw = bytearray(FILES[name])
    offset, size, order = data.draw(st.sampled_from(LENGTH_FIELDS[name]), label="field")
    length = data.draw(
        st.one_of(
            st.sampled_from(INTERESTING_LENGTHS),
            st.integers(0, 2**32 - 1),
            st.integers(0, len(raw)),
        ),
        label="length",
    )
    length &= (1 << (8 * size)) - 1  # a 2-byte field keeps the low bits
    raw[offset : offset + size] = struct.pack(order + ("I" if size == 4 else "H"), length)
    # When parsed / Then a sound record or a coded error
    check_outcome(bytes(raw), check_conformance)


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", sorted(n for n in FILES if any(size == 4 for _, size, _ in LENGTH_FIELDS[n]))
)
def test_a_huge_declared_length_stays_within_bounded_memory(
    name: str, check_conformance: Callable
) -> None:
    # Given each 4-byte length field of a real file set to nearly 4 GiB, in turn
    raw = FILES[name]
    fields = [(o, s, order) for o, s, order in LENGTH_FIELDS[name] if s == 4]
    assert fields

    peaks = []
    for offset, _, order in fields:
        mutated = raw[:offset] + struct.pack(order + "I", 0xFFFFFFF0) + raw[offset + 4 :]
        # When it is parsed under tracemalloc
        tracemalloc.start()
        try:
            check_outcome(mutated, check_conformance)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        peaks.append(peak)

    # Then no case allocated more than a few MiB (the declared 4 GiB were never read)
    assert max(peaks) < 4 * 1024 * 1024


def _bug(*args: Any, **kwargs: Any) -> None:
    raise AttributeError("'NoneType' object has no attribute 'value'")


@pytest.mark.parametrize(
    ("name", "target"),
    [
        ("CT_small.dcm", "pipeline.dicom.direct._DirectReader.emit"),  # the direct reader
        ("image_dfl.dcm", "pipeline.dicom.header._check_values_complete"),  # pydicom's
    ],
)
def test_the_oracle_fails_on_a_reader_bug(
    name: str, target: str, monkeypatch: pytest.MonkeyPatch, check_conformance: Callable
) -> None:
    # Given a bug in a reader (an exception no bytes should cause): it must surface as
    # INTERNAL, neither as MALFORMED nor hidden by the other reader reading the file again
    monkeypatch.setattr(target, _bug)
    # When the fuzzers' oracle judges an input that reaches the bug / Then it fails
    with pytest.raises(AssertionError, match="AttributeError while reading the header"):
        check_outcome(FILES[name], check_conformance)
