"""The DICOM JSON Model (PS3.18 Annex F) of a header read by :mod:`pipeline.dicom.header`.

Differences from ``pydicom.Dataset.to_json_dict`` that the standard (and DESIGN.md) asks for:
no group length ``(gggg,0000)`` elements, no ``(FFFC,FFFC)`` padding, no Pixel Data, binary
values above the threshold as ``BulkDataURI`` (object, offset, length) without reading them,
IS/DS as JSON numbers with invalid strings kept as strings rather than crashing, and text
decoded from the Specific Character Set (ISO 2022 escapes included) into UTF-8.

Two ways to the same JSON: :func:`header_to_json` converts the dataset pydicom read
(:func:`pipeline.dicom.header.read_header`), and :func:`pipeline.dicom.direct.read_direct` reads the
header and writes its JSON in one pass, without pydicom datasets, for the headers it knows
pydicom would read the usual way (it leaves the others to pydicom). Both convert values the
same way: directly when the JSON is a function of the value's bytes (the fast path), else with
pydicom's converters.
"""

from __future__ import annotations

import base64
import codecs
import functools
import io
import math
import re
import struct
from collections.abc import Callable, MutableSequence
from typing import Any

from pydicom import config as pydicom_config
from pydicom import hooks as pydicom_hooks
from pydicom.charset import (
    convert_encodings,
    custom_encoders,
    default_encoding,
    need_tail_escape_sequence_encodings,
    python_encoding,
)
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import (
    DataElement,
    RawDataElement,
    convert_raw_data_element,
)
from pydicom.dataset import Dataset
from pydicom.errors import BytesLengthException
from pydicom.filereader import read_sequence
from pydicom.filewriter import correct_ambiguous_vr_element
from pydicom.hooks import hooks
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import _LUT_DESCRIPTOR_TAGS, BaseTag
from pydicom.valuerep import AMBIGUOUS_VR, PersonName
from pydicom.values import convert_numbers

from pipeline.dicom.header import (
    PIXEL_DATA_TAGS,
    DicomHeader,
    is_parse_error,
    pinned_reading,
    raised_by_pydicom,
)
from pipeline.dicom.sources import ELEMENT_HEADER_READ, ElementBudget
from pipeline.errors import Malformed

__all__ = [
    "BINARY_VRS",
    "CHARSET_MULTI_VRS",
    "CHARSET_SINGLE_VRS",
    "NUMBER_VRS",
    "TEXT_VRS",
    "Bail",
    "Converter",
    "fast_customised",
    "fast_json",
    "file_meta_to_json",
    "first_encoding",
    "header_to_json",
    "public_vr",
]

BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN", "OB or OW", "US or OW"})
NUMBER_VRS = frozenset({"FL", "FD", "SL", "SS", "SV", "UL", "US", "UV", "IS", "DS"})
SINGLE_VALUE_TEXT = frozenset({"LT", "ST", "UT", "UR"})
TEXT_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DT", "LO", "LT", "SH", "ST", "TM", "UC", "UI", "UR", "UT"}
)
_AMBIGUOUS = {"US or SS": "US", "US or SS or OW": "US", "OB or OW": "OW", "US or OW": "US"}
#: What a value that cannot be decoded as its VR raises; it is then kept as raw bytes (UN).
#: pydicom's converters fail on odd values with any of these; the same types raised by our
#: own code are bugs and are not caught (see :func:`_undecodable`).
_VALUE_ERRORS = (
    ValueError,
    TypeError,
    OverflowError,
    UnicodeError,
    BytesLengthException,
    struct.error,
    KeyError,
    AttributeError,
    IndexError,
    NotImplementedError,
)
#: The Item tag in either byte order: a value starting with it is a sequence's items.
_ITEM = (b"\xfe\xff\x00\xe0", b"\xff\xfe\xe0\x00")


def _undecodable(exc: BaseException) -> bool:
    """Whether ``exc`` says a value does not decode (not that our code has a bug)."""
    return is_parse_error(exc) or raised_by_pydicom(exc)


# PS3.5 Table 6.2-1: IS and DS value grammars (after stripping spaces).
_IS = re.compile(r"[+-]?[0-9]+")
_DS = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")


def _numeric_string(vr: str, text: str) -> int | float | str | None:
    """One IS/DS value as a JSON number; kept as written when it is not a valid number."""
    text = text.strip(" \x00")
    if not text:
        return None
    if _IS.fullmatch(text):
        return int(text)
    if _DS.fullmatch(text):
        number = float(text)
        if math.isfinite(number) and (vr == "DS" or number.is_integer()):
            return int(number) if vr == "IS" else number
    return text


def _numeric_strings(vr: str, raw: bytes) -> list[int | float | str | None]:
    """Decode an IS or DS value (ASCII, backslash-separated) value by value."""
    text = raw.decode("latin-1").rstrip(" \x00")
    if not text.strip():
        return []
    return [_numeric_string(vr, part) for part in text.split("\\")]


# -- fast path ---------------------------------------------------------------------------------
# pydicom's convert_raw_data_element (hooks, a DataElement, UID/PersonName/MultiValue objects)
# is most of the cost of a header's JSON, and the JSON then turns those objects back into
# strings and numbers. For the VRs below the JSON is a pure function of the value's bytes, so
# it is computed directly, with exactly the result of the long way:
# - numbers (US, SS, UL, SL, FL, FD, UV, SV): struct, as pydicom's convert_numbers;
# - IS and DS: value by value (as the long way does too, see _numeric_strings);
# - AE, AS, CS, DA, DT, TM, UI, UR: pydicom decodes them as ISO 8859-1 whatever the
#   character set, and splits / strips them as mirrored at the end of fast_json;
# - SH, LO, UC, ST, LT, UT, PN: decoded with the character set, so only ASCII values without
#   an ISO 2022 escape, under a character set that decodes ASCII as ASCII.
# Everything else (non-ASCII text, AT, UN, SQ, ambiguous VRs, private tags in implicit VR, LUT
# descriptors, values of a wrong length) still goes the long way, as does every element when
# pydicom's conversion is customised (hooks, callbacks, datetime conversion).
_STRUCT_FORMATS = {
    "US": "H",
    "SS": "h",
    "UL": "L",
    "SL": "l",
    "FL": "f",
    "FD": "d",
    "UV": "Q",
    "SV": "q",
}
_STRUCT_SIZES = {vr: struct.calcsize("=" + f) for vr, f in _STRUCT_FORMATS.items()}
#: Bytes per value of the fixed-size VRs (ambiguous ones included), for the element budget.
_VALUE_SIZES = {**_STRUCT_SIZES, "AT": 4, "US or SS": 2, "US or SS or OW": 2}
_FLOAT_VRS = frozenset({"FL", "FD"})
# pydicom's multi_string (convert_string): rstrip " \0", then split.
_SPLIT_VRS = frozenset({"AS", "CS", "DA", "DT", "TM"})
# Text decoded with the Specific Character Set.
CHARSET_MULTI_VRS = frozenset({"SH", "LO", "UC"})  # convert_text
CHARSET_SINGLE_VRS = frozenset({"ST", "LT", "UT"})  # convert_single_string


def values_beyond_first(tag: int, vr: str | None, value: bytes) -> int:
    """How many values after the first a raw value may hold, from its bytes, before converting.

    What the element budget charges for a value (``ElementBudget.spend_values``): values of
    fixed size by their count; text by its backslashes (single-valued text: none) plus its
    escape characters (pydicom decodes ISO 2022 text fragment by fragment); plain binary
    nothing. A public element without a VR (implicit VR) or with UN counts as its dictionary
    VR (pydicom converts it as that); a private one without a VR counts as text.

    Examples
    --------
    >>> values_beyond_first(0x00180050, "DS", b"1\\\\2\\\\3 ")
    2
    >>> values_beyond_first(0x00280010, None, bytes(8))  # Rows, implicit VR: US
    3
    """
    if (vr is None or vr == "UN") and not tag >> 16 & 1:
        vr = public_vr(tag)
    elif vr == "UN":
        return 0
    if vr == "SQ":
        return 0  # its items' elements are counted as they are converted
    if vr is not None:
        size = _VALUE_SIZES.get(vr)
        if size is not None:
            return max(len(value) // size - 1, 0)
        if vr in BINARY_VRS:
            return 0
    escapes = value.count(0x1B)
    if vr in CHARSET_SINGLE_VRS or vr == "UR":
        return escapes
    return value.count(0x5C) + escapes


# How the fast path converts each VR; the kinds from _CHARSET_TEXT on depend on the charset.
_INTEGER, _FLOAT, _NUMBER_STRING, _SPLIT, _UID, _URI, _AE = range(7)
_CHARSET_TEXT, _CHARSET_SINGLE, _PERSON_NAME = range(7, 10)
_FAST_KINDS: dict[str, int] = {
    **{vr: _INTEGER for vr in ("US", "SS", "UL", "SL", "UV", "SV")},
    **{vr: _FLOAT for vr in _FLOAT_VRS},
    **{vr: _NUMBER_STRING for vr in ("IS", "DS")},
    **{vr: _SPLIT for vr in _SPLIT_VRS},
    "UI": _UID,
    "UR": _URI,
    "AE": _AE,
    **{vr: _CHARSET_TEXT for vr in CHARSET_MULTI_VRS},
    **{vr: _CHARSET_SINGLE for vr in CHARSET_SINGLE_VRS},
    "PN": _PERSON_NAME,
}
_LUT_DESCRIPTORS = frozenset(_LUT_DESCRIPTOR_TAGS)
_ASCII = bytes(i for i in range(128) if i != 0x1B)
#: Python encodings (of pydicom's character sets) that decode ASCII without ESC as ASCII.
_ASCII_SAFE = frozenset(
    enc
    for enc in {default_encoding, *python_encoding.values()}
    if _ASCII.decode(codecs.lookup(enc).name) == _ASCII.decode("latin-1")
)
#: Of those, the ones pydicom's PersonName re-encodes ASCII with as a plain codec (it does,
#: and the JIS encoders it uses for the Japanese sets fail on some ASCII).
_PN_SAFE = _ASCII_SAFE - set(custom_encoders) - set(need_tail_escape_sequence_encodings)


@functools.lru_cache(maxsize=8192)
def public_vr(tag: int) -> str | None:
    """The dictionary VR of a public tag (as pydicom looks it up), None when unknown."""
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return None


@functools.lru_cache(maxsize=256)
def _unpacker(little: bool, fmt: str, count: int) -> Callable[[bytes], tuple[Any, ...]]:
    return struct.Struct(f"{'<' if little else '>'}{count}{fmt}").unpack


def first_encoding(encoding: str | MutableSequence[str] | None) -> str:
    """The encoding pydicom decodes text without escape sequences with."""
    if not encoding:
        return str(default_encoding)
    return encoding if isinstance(encoding, str) else encoding[0]


def fast_customised() -> bool:
    """Whether pydicom's value conversion is customised, which rules the fast path out."""
    return bool(
        pydicom_config.datetime_conversion
        or pydicom_config.data_element_callback
        or pydicom_hooks.hooks.raw_element_kwargs
        or pydicom_hooks.hooks.raw_element_vr is not pydicom_hooks.raw_element_vr
        or pydicom_hooks.hooks.raw_element_value is not pydicom_hooks.raw_element_value
    )


def _fast_element(raw: RawDataElement, first_encoding: str) -> dict[str, Any] | None:
    """The JSON of ``raw`` computed directly, or None when pydicom must convert it.

    ``first_encoding``: the Python encoding of the character set's first value.
    """
    if raw.value is None and raw.length:
        return None  # deferred, or an undefined-length value pydicom did not keep
    return fast_json(raw.tag, raw.VR, raw.value, raw.is_little_endian, first_encoding)


def fast_json(
    tag: int, vr: str | None, value: Any, little: bool, first_encoding: str
) -> dict[str, Any] | None:
    """:func:`_fast_element` on the fields of a raw element (``vr`` None: implicit VR).

    A ``value`` of None is an empty value (pydicom keeps some empty values as None).
    """
    if vr is None:
        if tag >> 16 & 1:
            return None  # private tag in implicit VR: its VR depends on its creator
        vr = public_vr(tag)
    kind = _FAST_KINDS.get(vr)  # type: ignore[arg-type]
    if kind is None or tag in _LUT_DESCRIPTORS:
        return None
    if value is None:  # an empty value pydicom left as None (implicit VR, numbers)
        return {"vr": vr}
    if not isinstance(value, bytes):
        return None
    if kind <= _FLOAT:  # convert_numbers
        size = _STRUCT_SIZES[vr]  # type: ignore[index]
        count, rest = divmod(len(value), size)
        if rest:
            return None  # pydicom raises; the long way keeps it as UN
        if not count:
            return {"vr": vr}
        numbers = _unpacker(little, _STRUCT_FORMATS[vr], count)(value)  # type: ignore[index]
        if kind == _FLOAT:
            return {"vr": vr, "Value": [_json_number(v) for v in numbers]}
        return {"vr": vr, "Value": list(numbers)}
    if kind == _NUMBER_STRING:
        parsed = _numeric_strings(vr, value)  # type: ignore[arg-type]
        return {"vr": vr, "Value": [_json_number(v) for v in parsed]} if parsed else {"vr": vr}
    text = value.decode("latin-1")
    if kind >= _CHARSET_TEXT:
        if first_encoding not in _ASCII_SAFE or not text.isascii() or "\x1b" in text:
            return None
        if kind == _PERSON_NAME:
            if first_encoding not in _PN_SAFE:
                return None
            names = text.rstrip("\x00 ").split("\\")
            if any(name.count("=") > 2 for name in names):
                return None  # more than three component groups: let pydicom decide
            persons = [_person_name(name) for name in names]
            return {"vr": vr} if persons == [None] else {"vr": vr, "Value": persons}
    # pydicom's convert_string, convert_UI, convert_text, convert_single_string,
    # convert_UR_string and convert_AE_string on the decoded value
    if kind == _SPLIT:
        strings = text.rstrip(" \x00").split("\\")
    elif kind == _UID:  # convert_UI strips "\0 ", multi_string " \0", UID() each value
        strings = [v.strip() for v in text.rstrip("\x00 ").split("\\")]
    elif kind == _CHARSET_TEXT:
        strings = [v.rstrip("\x00 ") for v in text.split("\\")]
    elif kind == _CHARSET_SINGLE:
        strings = [text.rstrip("\x00 ")]
    elif kind == _URI:
        strings = [text.rstrip()]
    else:  # AE
        strings = [v.strip() for v in text.split("\\")]
    if len(strings) == 1:
        return {"vr": vr, "Value": strings} if strings[0] else {"vr": vr}
    return {"vr": vr, "Value": [s or None for s in strings]}


def _json_number(value: Any) -> Any:
    """A JSON-safe number, or the value as a string when it is not a valid number."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if math.isfinite(value):
            return float(value)
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _as_list(value: Any) -> list[Any]:
    if value is None or value in ("", b""):
        return []
    if isinstance(value, (MultiValue, list, tuple)):
        return list(value)
    return [value]


def _person_name(value: Any) -> dict[str, str] | None:
    if value is None or value == "":
        return None
    parts = value.components if isinstance(value, PersonName) else tuple(str(value).split("="))
    out = {}
    for name, part in zip(("Alphabetic", "Ideographic", "Phonetic"), parts, strict=False):
        if part:
            out[name] = part
    return out or None


class _CountedBytesIO(io.BytesIO):
    """A value parsed as a sequence: its element and item headers spend the budget."""

    def __init__(self, data: bytes, budget: ElementBudget, base: int) -> None:
        super().__init__(data)
        self.budget = budget
        self.base = base

    def read(self, size: int | None = -1) -> bytes:
        if size == ELEMENT_HEADER_READ:
            self.budget.spend(self.base + self.tell())
        return super().read(size)


class Converter:
    """Walks datasets, converting raw elements lazily with pydicom's value converters."""

    def __init__(self, header: DicomHeader, bulk_threshold: int) -> None:
        self.header = header
        self.bulk_threshold = bulk_threshold
        self.uri = header.source_uri
        self.deflated = header.deflated
        # The datasets being converted, nearest first (ambiguous VRs look up the tree).
        self.ancestors: list[Dataset] = []
        self.fast = not fast_customised()
        reader = getattr(header, "reader", None)
        #: The header's element budget, also spent on sequences parsed from memory.
        self.budget: ElementBudget = reader.elements if reader is not None else ElementBudget()
        #: Whether the direct reader (:class:`_DirectReader`) is the one converting.
        self.direct = False

    def bulk_uri(self, offset: int, length: int) -> str:
        uri = f"{self.uri}?offset={offset}&length={length}"
        return uri + "&encoding=deflate" if self.deflated else uri

    def dataset(self, ds: Dataset, encoding: str | MutableSequence[str] | None) -> dict[str, Any]:
        charset = ds._dict.get(BaseTag(0x00080005))
        if charset is not None:
            elem = (
                convert_raw_data_element(charset)
                if isinstance(charset, RawDataElement)
                else charset
            )
            encoding = convert_encodings(elem.value)
        out: dict[str, Any] = {}
        self.ancestors.insert(0, ds)
        try:
            for tag in sorted(ds._dict):
                if tag & 0xFFFF == 0 or tag in PIXEL_DATA_TAGS or tag >> 16 == 0xFFFC:
                    continue
                if tag >> 16 == 0x0002:  # file meta does not belong in the dataset's JSON
                    continue
                item = self.element(ds._dict[tag], ds, encoding)
                if item is not None:
                    out[f"{tag:08X}"] = item
        finally:
            del self.ancestors[0]
        return out

    def _vr_of(self, raw: RawDataElement, ds: Dataset) -> str:
        vr = raw.VR
        if vr is None or (vr == "UN" and not raw.tag.is_private):
            try:
                vr = dictionary_VR(raw.tag)
            except KeyError:
                vr = vr or "UN"
        return _AMBIGUOUS.get(vr, vr)

    def element(
        self,
        elem: RawDataElement | DataElement,
        ds: Dataset,
        encoding: str | MutableSequence[str] | None,
        *,
        counted: bool = False,
    ) -> dict[str, Any] | None:
        """The JSON of one element; ``counted``: its values were spent from the budget."""
        if isinstance(elem, RawDataElement):
            if elem.value is None and elem.length not in (0, 0xFFFFFFFF):
                return self.deferred(elem, ds, encoding)
            raw_vr = elem.VR
            if raw_vr in BINARY_VRS and raw_vr != "UN":
                # Plain binary: no conversion needed (and none wanted, it is slow).
                return self.binary(raw_vr, elem.value, elem.value_tell)
            if not counted and isinstance(elem.value, bytes):
                self.budget.spend_values(
                    values_beyond_first(elem.tag, raw_vr, elem.value), elem.value_tell
                )
            if self.fast:
                fast = _fast_element(elem, first_encoding(encoding))
                if fast is not None:
                    return fast
            raw = elem
            found: dict[str, Any] = {}
            hooks.raw_element_vr(raw, found, encoding=encoding, ds=ds)
            if found["VR"] in ("IS", "DS") and isinstance(raw.value, bytes):
                # Value by value, so one invalid string neither fails nor hides the others.
                return self.value(found["VR"], _numeric_strings(found["VR"], raw.value))
            if found["VR"] == "UN" and isinstance(raw.value, bytes) and raw.value[:4] in _ITEM:
                nested = self.un_sequence(raw, ds, encoding)
                if nested is not None:
                    return nested
            try:
                value = raw.value
                if found["VR"] == "SQ" and self.fast and isinstance(value, bytes) and raw.length:
                    elem = self.sequence_element(raw, value, found["VR"], ds, encoding)
                else:
                    elem = convert_raw_data_element(raw, encoding=encoding, ds=ds)
                if elem.VR in AMBIGUOUS_VR:
                    elem = self.resolve_ambiguous(elem, ds)
            except _VALUE_ERRORS as exc:
                if found["VR"] == "SQ" or not _undecodable(exc):
                    raise  # a broken sequence is a broken header, not an odd value; or a bug
                # Bytes that do not decode as their VR: kept as they are, as UN.
                return self.binary("UN", raw.value, raw.value_tell)
        vr = _AMBIGUOUS.get(elem.VR, elem.VR)
        value = elem.value
        if vr == "SQ":
            items = []
            for item in value or ():
                items.append(self.dataset(item, encoding) if item is not None else {})
            return {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}
        if vr in BINARY_VRS:
            return self.binary(vr, value, elem.file_tell)
        return self.value(vr, value)

    def resolve_ambiguous(self, elem: DataElement, ds: Dataset) -> DataElement:
        """Settle an implicit VR's "US or SS"-style ambiguity as pydicom's writer does."""
        if self.direct:
            # The direct reader keeps no datasets to look the deciding element up in.
            raise Bail("an ambiguous VR")
        ancestors = self.ancestors if self.ancestors and self.ancestors[0] is ds else [ds]
        # When the deciding element is missing or odd, fall back to the default below.
        try:
            elem = _as_element(
                correct_ambiguous_vr_element(
                    elem, ds, self.header.is_little_endian, ancestors=ancestors
                )
            )
        except _VALUE_ERRORS as exc:
            if not _undecodable(exc):
                raise
        vr = _AMBIGUOUS.get(elem.VR, elem.VR)
        if vr in ("US", "SS") and isinstance(elem.value, bytes):
            fmt = "H" if vr == "US" else "h"
            value = convert_numbers(elem.value, self.header.is_little_endian, fmt)
            elem = DataElement(elem.tag, vr, value, elem.file_tell, already_converted=True)
        return elem

    def sequence_element(
        self,
        raw: RawDataElement,
        value: bytes,
        vr: str,
        ds: Dataset,
        encoding: str | MutableSequence[str] | None,
    ) -> DataElement:
        """convert_raw_data_element for a defined-length sequence, within the element budget.

        pydicom's convert_value/convert_SQ, with the value parsed from a stream that counts
        its element headers (:class:`~pipeline.dicom.sources.ElementBudget`).
        """
        encodings = encoding or [default_encoding]
        if isinstance(encodings, str):
            encodings = [encodings]
        try:
            seq = read_sequence(
                _CountedBytesIO(value, self.budget, raw.value_tell),
                raw.is_implicit_VR,
                raw.is_little_endian,
                len(value),
                encodings,
                raw.value_tell,
            )
        except ValueError:
            # convert_value then retries the value as other VRs: leave that to pydicom.
            return convert_raw_data_element(raw, encoding=encoding, ds=ds)
        return DataElement(
            raw.tag, vr, seq, raw.value_tell, raw.length == 0xFFFFFFFF, already_converted=True
        )

    def un_sequence(
        self,
        raw: RawDataElement,
        ds: Dataset,
        encoding: str | MutableSequence[str] | None,
    ) -> dict[str, Any] | None:
        """A UN value made of items (a private sequence): nested as SQ, or None if it is not.

        PS3.5 6.2.2: a sequence whose VR is unknown is encoded in implicit VR. A binary
        value that merely starts like an item fails to parse and stays binary.
        """
        assert isinstance(raw.value, bytes)
        try:
            seq = read_sequence(
                _CountedBytesIO(raw.value, self.budget, raw.value_tell),
                True,
                raw.is_little_endian,
                len(raw.value),
                encoding or ["iso8859"],
                raw.value_tell,
            )
            elem = DataElement(raw.tag, "SQ", Sequence(seq), raw.value_tell)
            return self.element(elem, ds, encoding)
        except (*_VALUE_ERRORS, OSError, EOFError) as exc:
            if not _undecodable(exc):
                raise
            return None

    def deferred(
        self,
        raw: RawDataElement,
        ds: Dataset,
        encoding: str | MutableSequence[str] | None,
    ) -> dict[str, Any] | None:
        vr = self._vr_of(raw, ds)
        if vr == "SQ" or (vr == "UN" and self._starts_with_item(raw)):
            # A defined-length sequence longer than the threshold: its items are header,
            # so the value is fetched and converted like a short one.
            value = self.header.read_value(raw.value_tell, raw.length)
            return self.element(raw._replace(value=value), ds, encoding)
        if vr in BINARY_VRS:
            return {"vr": vr, "BulkDataURI": self.bulk_uri(raw.value_tell, raw.length)}
        # A long text or numeric value: fetch it, it belongs to the header.
        value = self.header.read_value(raw.value_tell, raw.length)
        loaded = raw._replace(value=value)
        return self.element(loaded, ds, encoding)

    def _starts_with_item(self, raw: RawDataElement) -> bool:
        if raw.length < 8:
            return False
        return self.header.read_value(raw.value_tell, 4) in _ITEM

    def binary(self, vr: str, value: Any, offset: int | None) -> dict[str, Any]:
        if value is None or len(value) == 0:
            return {"vr": vr}
        if isinstance(value, (list, MultiValue)):  # a retried conversion; keep it honest
            value = b"".join(v if isinstance(v, bytes) else b"" for v in value)
        data = bytes(value)
        if len(data) > self.bulk_threshold and offset is not None:
            return {"vr": vr, "BulkDataURI": self.bulk_uri(offset, len(data))}
        return {"vr": vr, "InlineBinary": base64.b64encode(data).decode("ascii")}

    def value(self, vr: str, value: Any) -> dict[str, Any]:
        values = _as_list(value)
        if not values:
            return {"vr": vr}
        if any(isinstance(v, bytes) for v in values):
            # pydicom could only give bytes (a retried conversion): binary, so UN.
            return self.binary("UN", b"".join(v for v in values if isinstance(v, bytes)), None)
        if vr == "PN":
            return {"vr": vr, "Value": [_person_name(v) for v in values]}
        if vr in NUMBER_VRS:
            return {"vr": vr, "Value": [_json_number(v) for v in values]}
        if vr == "AT":
            return {
                "vr": vr,
                "Value": [f"{int(v):08X}" if isinstance(v, int) else str(v) for v in values],
            }
        if vr in SINGLE_VALUE_TEXT:
            return {
                "vr": vr,
                "Value": [str(values[0]) if len(values) == 1 else "\\".join(map(str, values))],
            }
        multi = len(values) > 1
        return {
            "vr": vr,
            "Value": [None if (multi and (v is None or v == "")) else str(v) for v in values],
        }


def header_to_json(header: DicomHeader, *, bulk_threshold: int = 1024) -> dict[str, Any]:
    """Return the DICOM JSON Model object of ``header``'s dataset.

    Parameters
    ----------
    header:
        A header from :func:`pipeline.dicom.header.read_header`.
    bulk_threshold:
        Binary values longer than this become ``BulkDataURI``; shorter ones ``InlineBinary``.

    Returns
    -------
    dict
        ``{"GGGGEEEE": {"vr": ..., "Value" | "InlineBinary" | "BulkDataURI": ...}}``.

    Examples
    --------
    >>> header_to_json(header)["00080060"]  # doctest: +SKIP
    {'vr': 'CS', 'Value': ['CT']}
    """
    with pinned_reading():
        return Converter(header, bulk_threshold).dataset(header.dataset, None)


def file_meta_to_json(header: DicomHeader, *, bulk_threshold: int = 1024) -> dict[str, Any]:
    """The File Meta Information group of ``header`` as DICOM JSON (group lengths left out)."""
    meta = header.file_meta  # as it is: copying it into a Dataset costs more than this
    converter = Converter(header, bulk_threshold)
    out = {}
    with pinned_reading():
        for tag in sorted(meta.keys()):
            if tag & 0xFFFF == 0:
                continue
            try:  # get_item converts a file meta element: an unknown VR fails there
                element = converter.element(meta.get_item(tag), meta, None)
            except _VALUE_ERRORS as exc:
                if not _undecodable(exc):
                    raise
                raise Malformed(
                    f"file meta element ({tag >> 16:04X},{tag & 0xFFFF:04X}) cannot be read "
                    f"({type(exc).__name__})"
                ) from None
            if element is not None:
                out[f"{tag:08X}"] = element
    return out


def _as_element(elem: DataElement | RawDataElement) -> DataElement:
    """``correct_ambiguous_vr_element`` returns what it was given: a DataElement here."""
    assert isinstance(elem, DataElement)
    return elem


class Bail(Exception):
    """The direct reader leaves this header to pydicom."""
