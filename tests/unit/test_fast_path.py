"""The DICOM JSON fast path gives exactly what pydicom's conversion (the long way) gives.

``pipeline.dicom.dicomjson`` converts most raw values directly (numbers with ``struct``, ASCII text
without pydicom's value objects) and leaves the rest to pydicom. These tests generate raw
elements of every VR the fast path handles, and of a few it must leave alone, with values
drawn from an alphabet of the characters that matter (separators, padding, escapes, non-ASCII
bytes, whitespace), under several character sets, both byte orders, explicit and implicit VR,
and compare the fast path's JSON with the long way's.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from pipeline.dicom import dicomjson
from pipeline.dicom.header import pinned_reading

#: A public tag of each VR (and LUT descriptors, whose first value pydicom fixes up).
TAGS = {
    "AE": [0x00020016],
    "AS": [0x00101010],
    "CS": [0x00080060, 0x00080005],
    "DA": [0x00080020],
    "DT": [0x0008002A],
    "TM": [0x00080030],
    "UI": [0x00080018],
    "SH": [0x00080050],
    "LO": [0x00081030],
    "UC": [0x00080119],
    "ST": [0x00080081],
    "LT": [0x00204000],
    "UT": [0x0040A160],
    "UR": [0x00080120],
    "PN": [0x00100010],
    "IS": [0x00200013],
    "DS": [0x00280030],
    "US": [0x00280010, 0x00281101],
    "SS": [0x00189219, 0x00281102],
    "UL": [0x00020000],
    "SL": [0x00186020],
    "FL": [0x00180013],
    "FD": [0x00189089],
    "UV": [0x0008040C],
    "SV": [0x00720082],
    "AT": [0x00209165],
    "UN": [0x00100010, 0x00091010],
    "SQ": [0x00400100],  # a text VR's bytes under a sequence's tag
}
BINARY = {"US", "SS", "UL", "SL", "FL", "FD", "UV", "SV", "AT", "UN", "SQ"}
ALPHABET = [
    *b"12.-+eEni09aZ_^= \\\x00\t\r\x1c",
    b"\x1b",
    b"$B",
    b"(B",
    b"\xe9",
    b"\x85",
    b"\xa0",
]
#: Python encodings as pydicom's convert_encodings returns them (and a few it passes through).
ENCODINGS: list[Any] = [
    None,
    [],
    "iso8859",
    ["iso8859"],
    ["latin_1"],
    ["UTF8"],
    ["GB18030"],
    ["shift_jis"],
    ["iso2022_jp"],
    ["iso2022_jp_2"],
    ["iso_ir_58"],
    ["latin_1", "iso2022_jp"],
    ["shift_jis", "iso2022_jp"],
    ["euc_kr", "iso2022_jp"],
    ["cp500"],  # EBCDIC: a Python codec name pydicom accepts as a character set
    ["utf_16"],
]


class _Header:
    source_uri = "mem://x.dcm"
    deflated = False
    is_little_endian = True


def _chunks(chunk: Any) -> bytes:
    return bytes([chunk]) if isinstance(chunk, int) else bytes(chunk)


@st.composite
def raw_elements(draw: st.DrawFn) -> tuple[RawDataElement, Any]:
    vr = draw(st.sampled_from(sorted(TAGS)))
    tag = draw(st.sampled_from(TAGS[vr]))
    if vr in BINARY:
        value = draw(st.binary(max_size=40))
    else:
        value = b"".join(_chunks(c) for c in draw(st.lists(st.sampled_from(ALPHABET), max_size=24)))
    explicit = draw(st.booleans())
    little = draw(st.booleans())
    stored: bytes | None = value
    if not value and draw(st.booleans()):
        stored = None  # how pydicom stores some empty values
    raw = RawDataElement(
        Tag(tag), vr if explicit else None, len(value), stored, 0, not explicit, little
    )
    return raw, draw(st.sampled_from(ENCODINGS))


@settings(max_examples=3000, deadline=None)
@given(case=raw_elements())
def test_the_fast_path_gives_what_pydicoms_conversion_gives(
    case: tuple[RawDataElement, Any],
) -> None:
    # Given a raw element and the character set it is read under
    raw, encoding = case
    converter = dicomjson.Converter(_Header(), 1024)  # type: ignore[arg-type]
    ds = Dataset()

    def convert(fast: bool) -> Any:
        converter.fast = fast
        try:
            return converter.element(raw, ds, encoding)
        except Exception as exc:  # an exception is an outcome to compare too
            return type(exc)

    # When converted with the fast path, and the long way
    with pinned_reading():
        fast, slow = convert(True), convert(False)
    # Then both give the same JSON
    assert fast == slow


def test_the_fast_path_is_taken_for_plain_values() -> None:
    # Given plain values of the common VRs
    cases = [
        ("UI", 0x00080018, b"1.2.840.10008.5.1.4.1.1.2\x00"),
        ("PN", 0x00100010, b"Doe^John=^="),
        ("US", 0x00280010, b"\x00\x02"),
        ("DS", 0x00280030, b"0.5\\0.5 "),
        ("LO", 0x00081030, b"Head \\ Neck "),
    ]
    for vr, tag, value in cases:
        raw = RawDataElement(Tag(tag), vr, len(value), value, 0, False, True)
        # When looked at by the fast path / Then it converts them itself
        assert dicomjson._fast_element(raw, "iso8859") is not None, vr


def test_the_fast_path_stands_aside_when_pydicom_is_customised(monkeypatch: Any) -> None:
    # Given pydicom set to convert dates to objects
    monkeypatch.setattr("pydicom.config.datetime_conversion", True)
    # When a converter is made / Then it leaves every value to pydicom
    assert dicomjson.Converter(_Header(), 1024).fast is False  # type: ignore[arg-type]
