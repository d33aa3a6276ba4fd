"""The direct reader: a header read and written as DICOM JSON in one pass.

pydicom's read_dataset builds a RawDataElement per element and a Dataset per item, and the
JSON is then made from those: most of a header's cost. The direct reader walks the header
once and writes the JSON as it goes, for the headers it knows how pydicom would read: it
makes exactly the read calls pydicom makes, in the same order and of the same sizes (so the
ranges fetched, the bytes read and the reader's guards are the same), and converts each
value as Converter does (the fast path, else Converter itself on a RawDataElement built
for the occasion). Anything it does not know how pydicom would take (an element out of
order, a VR switch, an item of the wrong length, an undefined-length value that is not a
sequence, an ambiguous VR, a value cut short, a deflated dataset, a customised pydicom...)
makes it bail out (Bail): the header is then read by pydicom as before, from the start.

It converts values with :mod:`pipeline.dicom.dicomjson`'s converter, so both ways give the same JSON
(``tests/unit/test_direct_reader.py`` and ``tests/bench/parser_differential.py`` check it).
"""

from __future__ import annotations

import functools
import struct
from contextvars import ContextVar
from typing import Any

from pydicom import config as pydicom_config
from pydicom.charset import (
    convert_encodings,
    default_encoding,
)
from pydicom.dataelem import (
    RawDataElement,
    convert_raw_data_element,
    empty_value_for_VR,
)
from pydicom.dataset import Dataset
from pydicom.filereader import ENCODED_VR
from pydicom.tag import BaseTag
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
    PrivateTransferSyntaxes,
)
from pydicom.valuerep import AMBIGUOUS_VR, EXPLICIT_VR_LENGTH_32
from pydicom.values import convert_string, converters

from pipeline.dicom.dicomjson import (
    CHARSET_MULTI_VRS,
    CHARSET_SINGLE_VRS,
    Bail,
    Converter,
    fast_customised,
    fast_json,
    first_encoding,
    public_vr,
    values_beyond_first,
)
from pipeline.dicom.header import (
    PIXEL_DATA_TAGS,
    DicomHeader,
    ReadLimits,
    classify_exception,
    is_parse_error,
    open_reader,
    pinned_reading,
    read_header,
)
from pipeline.dicom.sources import ELEMENT_HEADER_READ, ZEROS, RecordingSource
from pipeline.errors import DicomPipelineError

__all__ = ["fallback_reason", "read_direct"]

_ITEM_TAG = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQUENCE_END = 0xFFFEE0DD
_CHARSET_TAG = 0x00080005
_ITEM_END_BYTES = {True: b"\xfe\xff\x0d\xe0", False: b"\xff\xfe\xe0\x0d"}
_ZERO_HEADER = bytes(ELEMENT_HEADER_READ)
#: Reads up to this size are the zero-run guard's (RangedReader: tags, lengths, short values).
_SHORT_READ = len(ZEROS) - 1
#: The explicit VRs pydicom knows, by their two bytes.
_VR_CODES = {bytes(code): str(code.decode("latin-1")) for code in ENCODED_VR if len(code) == 2}
_LONG_LENGTH_VRS = frozenset(str(vr) for vr in EXPLICIT_VR_LENGTH_32)
_PLAIN_BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW"})
_CHARSET_TEXT_VRS = CHARSET_MULTI_VRS | CHARSET_SINGLE_VRS | {"PN"}
_SKIPPED_GROUPS = frozenset({0x0002, 0xFFFC})
_STRUCTS = {
    (order, fmt): struct.Struct(order + fmt)
    for order in "<>"
    for fmt in ("HHL", "HH2sH", "L", "HH", "HH2s")
}


def _direct_customised() -> bool:
    """Whether pydicom is configured to read or convert otherwise than the direct reader does."""
    return (
        fast_customised()
        or pydicom_config.debugging
        or not pydicom_config.settings.infer_sq_for_un_vr
        or not pydicom_config.replace_un_with_known_vr
        or not pydicom_config.assume_implicit_vr_switch
        or pydicom_config.use_none_as_empty_text_VR_value
    )


def _uppercase_vr(code: bytes) -> bool:
    """pydicom's test for explicit VR (``_is_implicit_vr``): two letters A-Z."""
    return 0x40 < code[0] < 0x5B and 0x40 < code[1] < 0x5B


class _Level:
    """What the direct reader knows of the dataset it is in.

    ``conv_enc`` is the encoding Converter.dataset converts the dataset's text with;
    ``parent_enc``, ``read_enc`` and ``gen_enc`` are pydicom's (the dataset's
    ``parent_encoding``, its original character set, and the encoding its element generator
    hands to the sequences it reads), used only for private creators (see ``mini``).
    """

    __slots__ = (
        "conv_enc",
        "first",
        "gen_enc",
        "implicit",
        "mini",
        "parent_enc",
        "raws",
        "read_enc",
        "sensitive",
    )

    def __init__(self, conv_enc: Any, parent_enc: Any, implicit: bool) -> None:
        self.conv_enc = conv_enc
        self.first = first_encoding(conv_enc)
        self.parent_enc = parent_enc
        self.read_enc = parent_enc
        self.gen_enc = parent_enc
        self.implicit = implicit
        #: The Specific Character Set and the private creators, as pydicom would hold them.
        self.raws: dict[BaseTag, RawDataElement] = {}
        self.mini: Dataset | None = None
        #: An element before (0008,0005) was converted in a way the character set changes.
        self.sensitive = False


class _DirectReader:
    """Reads a header from a RangedReader straight into DICOM JSON (see above)."""

    def __init__(self, converter: Converter, reader: Any, little: bool, defer: int) -> None:
        self.conv = converter
        self.reader = reader
        self.zeros = reader.zeros
        self.read = reader.read
        self.tell = reader.tell
        self.seek = reader.seek
        self.little = little
        self.defer = defer
        order = "<" if little else ">"
        self.unpack_implicit = _STRUCTS[order, "HHL"].unpack
        self.unpack_implicit_from = _STRUCTS[order, "HHL"].unpack_from
        self.unpack_explicit = _STRUCTS[order, "HH2sH"].unpack
        self.unpack_explicit_from = _STRUCTS[order, "HH2sH"].unpack_from
        self.unpack_long = _STRUCTS[order, "L"].unpack
        self.unpack_long_from = _STRUCTS[order, "L"].unpack_from
        self.unpack_tag = _STRUCTS[order, "HH"].unpack
        self.item_end = _ITEM_END_BYTES[little]
        #: Top-level values above the deferral size: (key, tag, VR, length, offset).
        self.deferred: list[tuple[str, int, str | None, int, int]] = []
        self.top_elements = 0
        #: What pydicom's parse of a sequence value from memory would spend of the budget.
        self.spend = reader.elements.spend
        self.spend_values = reader.elements.spend_values

    # -- converting ---------------------------------------------------------------------------
    def mini(self, lv: _Level) -> Dataset:
        """A Dataset holding what Converter's hooks may look up: the creators, the charset."""
        if lv.mini is None:
            ds = Dataset(dict(lv.raws), parent_encoding=lv.parent_enc)
            ds.set_original_encoding(lv.implicit, self.little, lv.read_enc)
            lv.mini = ds
        return lv.mini

    def keep_raw(self, lv: _Level, tag: int, vr: str | None, value: Any, *, at: int) -> None:
        """Note the charset or a private creator (the datasets pydicom builds hold them)."""
        length = len(value) if value is not None else 0
        raw = RawDataElement(BaseTag(tag), vr, length, value, at, lv.implicit, self.little)
        lv.raws[BaseTag(tag)] = raw
        lv.mini = None
        if tag != _CHARSET_TAG:
            return
        if lv.sensitive:
            raise Bail("the character set comes after text it applies to")
        try:
            # As Converter.dataset and read_dataset do.
            lv.conv_enc = lv.read_enc = convert_encodings(convert_raw_data_element(raw).value)
            # As data_element_generator does, for the sequences it reads next.
            lv.gen_enc = convert_encodings(convert_string(value or b"", self.little))
        except Exception as exc:
            # Not text (another VR), or not character set names: pydicom fails on it its way.
            raise Bail("a Specific Character Set pydicom cannot convert") from exc
        lv.first = first_encoding(lv.conv_enc)

    def emit(
        self, lv: _Level, out: dict[str, Any], tag: int, vr: str | None, value: Any, *, at: int
    ) -> None:
        """Add the JSON of one raw value to ``out`` as Converter.dataset/element would."""
        if not tag & 0xFFFF or tag in PIXEL_DATA_TAGS or tag >> 16 in _SKIPPED_GROUPS:
            return
        if vr is None and not tag >> 16 & 1:
            public = public_vr(tag)
            if public in _PLAIN_BINARY_VRS or public == "SQ":
                vr = public  # what hooks.raw_element_vr finds; the value stays as read
        early = tag < _CHARSET_TAG
        if vr in _PLAIN_BINARY_VRS:
            js = self.conv.binary(str(vr), value, at)
        elif vr == "SQ":
            if early:
                lv.sensitive = True
            items = self.value_sequence(value, lv) if value else []
            js = {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}
        else:
            if value:
                self.spend_values(values_beyond_first(tag, vr, value), at)
            fast = fast_json(tag, vr, value, self.little, lv.first)
            if fast is None:
                if early:
                    lv.sensitive = True
                length = len(value) if value is not None else 0
                raw = RawDataElement(BaseTag(tag), vr, length, value, at, lv.implicit, self.little)
                slow = self.conv.element(raw, self.mini(lv), lv.conv_enc, counted=True)
                if slow is None:
                    return
                js = slow
            else:
                if early and fast["vr"] in _CHARSET_TEXT_VRS:
                    lv.sensitive = True
                js = fast
        out[f"{tag:08X}"] = js

    def sequence_json(self, out: dict[str, Any], tag: int, items: list[dict[str, Any]]) -> None:
        if not tag & 0xFFFF or tag in PIXEL_DATA_TAGS or tag >> 16 in _SKIPPED_GROUPS:
            return
        out[f"{tag:08X}"] = {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}

    # -- what the element loops meet rarely ----------------------------------------------------
    def unknown_vr(self, head: bytes, code: bytes) -> tuple[int, int, int]:
        """An explicit VR pydicom does not know: only an item delimiter (no VR) is read on."""
        if head[:4] != self.item_end or b"AA" <= code <= b"ZZ":
            raise Bail("an unknown VR, or a switch to implicit VR")
        group, elem, length = self.unpack_implicit(head[:8])
        return group, elem, length

    def sequence_vr(self, lv: _Level, tag: int, vr: str | None, ahead: bytes | None = None) -> None:
        """Check that an undefined-length value is a sequence, as data_element_generator does.

        ``ahead``: the next 4 bytes of a value parsed from memory (None: the stream's).
        """
        if vr == "UN":
            vr = "SQ"  # config.settings.infer_sq_for_un_vr
        elif vr is None:
            vr = public_vr(tag)
            if vr is None:  # not in the dictionary: pydicom looks ahead for an item
                group, elem = self.unpack_tag(self.stream_ahead() if ahead is None else ahead)
                if group << 16 | elem == _ITEM_TAG:
                    vr = "SQ"
        if vr != "SQ":
            raise Bail("an undefined-length value that is not a sequence")
        if tag >> 16 & 1 and 0x10 <= tag & 0xFFFF <= 0xFF:
            raise Bail("a private creator that is a sequence")
        if tag < _CHARSET_TAG:
            lv.sensitive = True

    def stream_ahead(self) -> bytes:
        ahead = self.read(4)
        self.seek(self.tell() - 4)
        return bytes(ahead)

    def defer_value(
        self, out: dict[str, Any], tag: int, vr: str | None, length: int, *, at: int
    ) -> None:
        """Note a top-level value above the deferral size: it is converted at the end."""
        if not tag & 0xFFFF or tag in PIXEL_DATA_TAGS or tag >> 16 in _SKIPPED_GROUPS:
            return
        if tag >> 16 & 1 and 0x10 <= tag & 0xFFFF <= 0xFF:
            raise Bail("a private creator above the deferral size")
        key = f"{tag:08X}"
        out[key] = None
        self.deferred.append((key, tag, vr, length, at))

    # -- the stream (data_element_generator, read_sequence, read_sequence_item) ---------------
    def item_implicit(self, implicit: bool) -> bool:
        """``_is_implicit_vr`` for an item: its first VR may switch it to implicit VR."""
        if implicit:
            return True
        here = self.tell()
        self.read(4)
        code = self.read(2)
        self.seek(here)
        return len(code) == 2 and not _uppercase_vr(code)

    def take(self, pos: int, size: int) -> tuple[bytes, int]:
        """``read(size)`` at ``pos``; returns the bytes and the position after them.

        A read inside the block the reader fetched last is sliced from it here, with the
        reader's accounts kept as its ``read`` keeps them (the element budget, the zero-run
        guard); any other read is the reader's own.
        """
        block_start, block = self.reader.last_block
        off = pos - block_start
        if off >= 0 and off + size <= len(block):
            if size == ELEMENT_HEADER_READ:
                self.spend(pos)
            data = block[off : off + size]
            if size > _SHORT_READ or data != ZEROS[size]:
                self.zeros.run = 0
            else:
                self.zeros.check(data, pos)
            return data, pos + size
        self.seek(pos)
        data = self.read(size)
        return data, self.tell()

    def stream_dataset(  # noqa: PLR0915 - one loop on purpose: a call per read costs ~15%
        self, lv: _Level, out: dict[str, Any], bytelength: int | None, top: bool
    ) -> bool:
        """Read elements until the dataset ends; True when stopped at Pixel Data.

        Element headers and short values are read as :meth:`take` reads them, inline.
        """
        reader, take, spend, zeros = self.reader, self.take, self.spend, self.zeros
        implicit = lv.implicit
        unpack = self.unpack_implicit if implicit else self.unpack_explicit
        defer = self.defer if top else None
        pos = start = self.tell()
        last = -1
        while True:
            if bytelength is not None and pos - start >= bytelength:
                return self.dataset_end(_ITEM_END, None, pos - start != bytelength, at=pos)
            block_start, block = reader.last_block
            off = pos - block_start
            if off >= 0 and off + 8 <= len(block):  # take(pos, 8), inline
                spend(pos)
                head = block[off : off + 8]
                if head == _ZERO_HEADER:
                    zeros.check(head, pos)
                else:
                    zeros.run = 0
                pos += 8
            else:
                head, pos = take(pos, 8)
                if len(head) < 8:
                    return self.dataset_end(0, None, bool(head) or not top, at=pos)
            vr: str | None = None
            if implicit:
                group, elem, length = unpack(head)
            else:
                group, elem, code, length = unpack(head)
                vr = _VR_CODES.get(code)
                if vr is None:
                    group, elem, length = self.unknown_vr(head, code)
                elif vr in _LONG_LENGTH_VRS:
                    extra, pos = take(pos, 4)
                    if len(extra) < 4:
                        raise Bail("the object ends inside a length")
                    (length,) = self.unpack_long(extra)
            tag = group << 16 | elem
            at = pos
            if tag == _ITEM_END or (top and tag in PIXEL_DATA_TAGS):
                return self.dataset_end(tag, vr, top or bytelength is not None, at=at)
            self.top_elements += top
            if tag <= last:
                raise Bail("elements out of order or repeated")
            last = tag
            if length == 0xFFFFFFFF:
                pos = self.stream_undefined(lv, out, tag, vr, at=at)
                continue
            if defer is not None and length > defer and tag != _CHARSET_TAG:
                self.defer_value(out, tag, vr, length, at=at)
                pos = at + length  # skipped: nothing read
                continue
            value: Any
            if not length:
                value = empty_value_for_VR(vr, raw=True)
            else:
                block_start, block = reader.last_block
                off = pos - block_start
                if off >= 0 and off + length <= len(block) and length != 8:  # take(), inline
                    value = block[off : off + length]
                    if length > _SHORT_READ or value != ZEROS[length]:
                        zeros.run = 0
                    else:
                        zeros.check(value, pos)
                    pos += length
                else:
                    value, pos = take(pos, length)
                    if len(value) < length:
                        raise Bail("the object ends inside a value")
            if tag == _CHARSET_TAG or (group & 1 and 0x10 <= elem <= 0xFF):
                self.keep_raw(lv, tag, vr, value, at=at)
            self.emit(lv, out, tag, vr, value, at=at)

    def stream_undefined(
        self, lv: _Level, out: dict[str, Any], tag: int, vr: str | None, *, at: int
    ) -> int:
        """An undefined-length value read from the stream: a sequence, or a bail-out."""
        self.seek(at)
        self.sequence_vr(lv, tag, vr)
        self.sequence_json(out, tag, self.stream_sequence(lv))
        return int(self.tell())

    def dataset_end(self, tag: int, vr: str | None, odd: bool, *, at: int) -> bool:
        """Where a dataset ends: an item's end, the object's end, or (True) Pixel Data.

        ``odd``: the end is not where this dataset may end (the reader bails out).
        """
        if tag in PIXEL_DATA_TAGS:
            self.seek(at - (12 if vr in _LONG_LENGTH_VRS else 8))  # where Pixel Data starts
            return True
        self.seek(at)
        if odd:
            raise Bail("a dataset that ends where it may not (an item's length, the object)")
        return False

    def stream_sequence(self, lv: _Level) -> list[dict[str, Any]]:
        """The items of an undefined-length sequence read from the stream."""
        items: list[dict[str, Any]] = []
        while True:
            head = self.read(8)
            if len(head) < 8:
                raise Bail("the object ends inside a sequence")
            group, elem, length = self.unpack_implicit(head)
            tag = group << 16 | elem
            if tag == _SEQUENCE_END:
                return items
            if tag != _ITEM_TAG:
                raise Bail("a sequence element that is not an item")
            child = _Level(lv.conv_enc, lv.gen_enc, self.item_implicit(lv.implicit))
            out: dict[str, Any] = {}
            self.stream_dataset(child, out, None if length == 0xFFFFFFFF else length, False)
            items.append(out)

    # -- a defined-length sequence's value (convert_SQ: read_sequence on a BytesIO) -----------
    def value_sequence(self, value: bytes, lv: _Level) -> list[dict[str, Any]]:
        """The items of a defined-length sequence value, as convert_SQ reads them."""
        enc = lv.conv_enc or [default_encoding]
        parent = [enc] if isinstance(enc, str) else enc
        return self.buffer_items(value, 0, lv, parent, defined=True)[0]

    def buffer_items(
        self, buf: bytes, pos: int, lv: _Level, parent_enc: Any, *, defined: bool
    ) -> tuple[list[dict[str, Any]], int]:
        size = len(buf)
        items: list[dict[str, Any]] = []
        while not defined or pos < size:
            self.spend(pos)  # read_sequence_item's 8-byte read
            if pos + 8 > size:
                raise Bail("a sequence value ends inside an item header")
            group, elem, length = self.unpack_implicit_from(buf, pos)
            pos += 8
            tag = group << 16 | elem
            if tag == _SEQUENCE_END:
                if defined:
                    raise Bail("a sequence delimiter in a defined-length sequence")
                return items, pos
            if tag != _ITEM_TAG:
                raise Bail("a sequence element that is not an item")
            code = buf[pos + 4 : pos + 6]
            implicit = lv.implicit or (len(code) == 2 and not _uppercase_vr(code))
            child = _Level(lv.conv_enc, parent_enc, implicit)
            out: dict[str, Any] = {}
            bytelength = None if length == 0xFFFFFFFF else length
            pos = self.buffer_dataset(buf, pos, child, out, bytelength)
            items.append(out)
        return items, pos

    def buffer_dataset(
        self, buf: bytes, pos: int, lv: _Level, out: dict[str, Any], bytelength: int | None
    ) -> int:
        """Read an item's elements from ``buf`` at ``pos``; returns the position after it."""
        size = len(buf)
        implicit = lv.implicit
        unpack = self.unpack_implicit_from if implicit else self.unpack_explicit_from
        start = pos
        last = -1
        while True:
            if bytelength is not None and pos - start >= bytelength:
                if pos - start != bytelength:
                    raise Bail("an element runs past the end of its item")
                return pos
            self.spend(pos)  # data_element_generator's 8-byte read
            if pos + 8 > size:
                raise Bail("a sequence value ends inside an element header")
            vr: str | None = None
            if implicit:
                group, elem, length = unpack(buf, pos)
            else:
                group, elem, code, length = unpack(buf, pos)
                vr = _VR_CODES.get(code)
                if vr is None:
                    group, elem, length = self.unknown_vr(buf[pos : pos + 8], code)
                elif vr in _LONG_LENGTH_VRS:
                    if pos + 12 > size:
                        raise Bail("a sequence value ends inside a length")
                    (length,) = self.unpack_long_from(buf, pos + 8)
                    pos += 4
            pos += 8
            tag = group << 16 | elem
            if tag == _ITEM_END:
                if bytelength is not None:
                    raise Bail("an item delimiter in a defined-length item")
                return pos
            if tag <= last:
                raise Bail("elements out of order or repeated")
            last = tag
            if length == 0xFFFFFFFF:
                self.sequence_vr(lv, tag, vr, buf[pos : pos + 4])
                items, pos = self.buffer_items(buf, pos, lv, lv.gen_enc, defined=False)
                self.sequence_json(out, tag, items)
                continue
            at = pos  # relative to this value, as pydicom's BytesIO gives it
            if length == ELEMENT_HEADER_READ:
                self.spend(pos)
            value: Any = buf[pos : pos + length] if length else empty_value_for_VR(vr, raw=True)
            if length and len(value) < length:
                raise Bail("a sequence value ends inside a value")
            pos += length
            if tag == _CHARSET_TAG or (group & 1 and 0x10 <= elem <= 0xFF):
                self.keep_raw(lv, tag, vr, value, at=at)
            self.emit(lv, out, tag, vr, value, at=at)

    # -- the file meta and command set, as _read_file_meta_info / _read_command_set_elements ---
    def file_meta(self) -> dict[int, RawDataElement]:
        """Read the File Meta Information (explicit VR little endian) as pydicom does."""
        read, tell, seek = self.read, self.tell, self.seek
        unpack = _STRUCTS["<", "HH2sH"].unpack
        start = tell()
        peek_tag, code = read(4), read(2)
        if len(code) == 2 and not _uppercase_vr(code):
            # pydicom reads in implicit VR from here: it stops at once outside group 2.
            (group, _elem) = _STRUCTS["<", "HH"].unpack(peek_tag)
            if group == 2:
                raise Bail("File Meta Information in implicit VR")
            seek(start)
            header = read(8)
            if len(header) == 8 and _STRUCTS["<", "HHL"].unpack(header)[:2] == (0xFFFE, 0xE00D):
                raise Bail("an item delimiter at the start of the dataset")
            seek(start)
            return {}
        seek(start)
        raws: dict[int, RawDataElement] = {}
        last = -1
        while True:
            element_start = tell()
            header = read(8)
            if len(header) < 8:
                raise Bail("the object ends in its File Meta Information")
            group, elem, code, length = unpack(header)
            tag = group << 16 | elem
            vr = _VR_CODES.get(code)
            if vr is None:
                if tag == _ITEM_END or group == 2:
                    raise Bail("an odd VR in the File Meta Information")
                seek(element_start)  # pydicom's stop_when rewinds 8 bytes either way
                return raws
            if vr in _LONG_LENGTH_VRS:
                extra = read(4)
                if len(extra) < 4:
                    raise Bail("the object ends inside a File Meta Information length")
                (length,) = _STRUCTS["<", "L"].unpack(extra)
            at = tell()
            if tag == _ITEM_END:
                raise Bail("an item delimiter in the File Meta Information")
            if group != 2:
                seek(element_start)
                return raws
            if length == 0xFFFFFFFF or tag <= last:
                raise Bail("an odd File Meta Information element")
            last = tag
            if length:
                value = read(length)
                if len(value) < length:
                    raise Bail("the object ends inside a File Meta Information value")
            else:
                value = empty_value_for_VR(vr, raw=True)
            raws[tag] = RawDataElement(BaseTag(tag), vr, length, value, at, False, True)

    def command_set(self) -> None:
        """_read_command_set_elements' reads: a look at the first dataset element."""
        read, tell, seek = self.read, self.tell, self.seek
        start = tell()
        peek_tag, code = read(4), read(2)
        implicit = True
        if len(code) == 2 and _uppercase_vr(code):
            (group, _elem) = _STRUCTS["<", "HH"].unpack(peek_tag)
            if group == 0:
                raise Bail("a command set")
            implicit = False
        seek(start)
        header = read(8)
        if len(header) < 8:
            raise Bail("the object ends after its File Meta Information")
        vr: str | None = None
        if implicit:
            group, elem, _length = _STRUCTS["<", "HHL"].unpack(header)
        else:
            group, elem, code, _length = _STRUCTS["<", "HH2sH"].unpack(header)
            vr = _VR_CODES.get(code)
            if vr is None and not (b"AA" <= code <= b"ZZ"):
                group, elem, _length = _STRUCTS["<", "HHL"].unpack(header)
            elif vr in _LONG_LENGTH_VRS and len(read(4)) < 4:
                raise Bail("the object ends inside the first element's length")
        if group << 16 | elem == _ITEM_END or group == 0:
            raise Bail("a command set, or an item delimiter at the start of the dataset")
        seek(start)


def _file_meta_json(converter: Converter, raws: dict[int, RawDataElement]) -> dict[str, Any]:
    """header_file_meta_json's JSON from the raw File Meta Information elements.

    pydicom converts the first element while reading (``_read_file_meta_info`` checks that it
    converts), so that one is converted the way a DataElement is.
    """
    out: dict[str, Any] = {}
    first = True
    empty = Dataset()
    for tag, raw in raws.items():
        if first:
            first = False
            elem = convert_raw_data_element(raw, encoding=default_encoding, ds=None)
            if elem.VR == "SQ" or elem.VR in AMBIGUOUS_VR:
                raise Bail("an odd first File Meta Information element")
            if not tag & 0xFFFF:
                continue
            js = converter.element(elem, empty, None)
        elif not tag & 0xFFFF:
            continue
        else:
            js = converter.element(raw, empty, None)
        if js is not None:
            out[f"{tag:08X}"] = js
    return out


def _transfer_syntax(raws: dict[int, RawDataElement], reader: Any) -> tuple[bool, bool, str | None]:
    """header._encoding_for on the raw File Meta Information (same reads)."""
    raw = raws.get(0x00020010)
    if raw is None:
        here = reader.tell()
        peek = reader.read(6)
        reader.seek(here)
        if len(peek) < 6:
            return True, True, None
        group, _, code = _STRUCTS["<", "HH2s"].unpack(peek)
        if code.decode("latin-1") in converters:
            return False, group < 1024, None
        return True, True, None
    if raw.VR != "UI":
        raise Bail("a Transfer Syntax UID that is not a UI")
    text = (raw.value or b"").decode("latin-1").rstrip("\x00 ").rstrip(" \x00")
    if "\\" in text:
        raise Bail("a multi-valued Transfer Syntax UID")
    ts = text.strip()
    if ts == ImplicitVRLittleEndian:
        return True, True, ts
    if ts == ExplicitVRBigEndian:
        return False, False, ts
    if ts == DeflatedExplicitVRLittleEndian:
        raise Bail("a deflated dataset")
    if ts in PrivateTransferSyntaxes:
        raise Bail("a private transfer syntax")
    return False, True, ts  # explicit VR little endian, and every encapsulated syntax


def read_direct(
    source: RecordingSource, limits: ReadLimits
) -> tuple[DicomHeader, dict[str, Any]] | None:
    """Read the header of ``source`` straight into DICOM JSON, without pydicom datasets.

    Parameters
    ----------
    source:
        The object, wrapped so that a second read by pydicom gets the ranges again.
    limits:
        As for :func:`pipeline.dicom.header.read_header`.

    Returns
    -------
    (DicomHeader, dict) or None
        The header (its ``dataset`` read again by pydicom on demand) and its DICOM JSON,
        exactly what :func:`~pipeline.dicom.header.read_header` and :func:`header_to_json` give;
        or None when the header is one to leave to them (:func:`fallback_reason` says why).
        Bad bytes the direct reader fails on are left to them too: pydicom's reader gives
        them their code (``TRUNCATED``, ``MALFORMED``...).

    Raises
    ------
    DicomPipelineError
        What :func:`~pipeline.dicom.header.read_header` raises before the dataset (an empty
        object, no DICOM prefix...), the source's own errors (not found, denied...), and
        ``INTERNAL`` for an exception bad bytes do not raise (a bug: it is not hidden by
        reading the header again with pydicom).
    """
    _reason.set("")
    if _direct_customised():
        _reason.set("pydicom's reading or conversion is customised")
        return None
    with pinned_reading():
        reader, part10 = open_reader(source, limits)
        try:
            return _read_direct(source, reader, part10, limits)
        except Exception as exc:
            if source.error is not None:
                raise source.error from None
            if isinstance(exc, Bail):
                _reason.set(str(exc))
            elif is_parse_error(exc):  # bad bytes: pydicom's reader gives them their code
                what = exc.code if isinstance(exc, DicomPipelineError) else type(exc).__name__
                _reason.set(f"{what} near offset {_offset(reader)}")
            else:
                raise classify_exception(exc, source.uri, reader) from exc
            return None


_reason: ContextVar[str] = ContextVar("direct_fallback_reason", default="")


def fallback_reason() -> str:
    """Why the last :func:`read_direct` call of this thread (context) returned None.

    A fixed phrase or an exception type and an offset: never an element value. Empty when
    it did not return None.
    """
    return _reason.get()


def _offset(reader: Any) -> str:
    try:
        return str(reader.tell())
    except Exception:
        return "unknown"


def _read_direct(
    source: RecordingSource, reader: Any, part10: bool, limits: ReadLimits
) -> tuple[DicomHeader, dict[str, Any]]:
    uri = source.uri
    probe = _DirectReader(None, reader, True, limits.bulk_threshold)  # type: ignore[arg-type]
    meta_raws = probe.file_meta()
    probe.command_set()
    implicit, little, ts = _transfer_syntax(meta_raws, reader)
    header = DicomHeader(
        _dataset=None,
        _file_meta=None,
        stream=reader,
        source_uri=uri,
        header_bytes=0,
        object_size=reader.size,
        is_implicit_vr=implicit,
        is_little_endian=little,
        transfer_syntax=ts,
        reader=reader,
        reparse=functools.partial(read_header, source.source, limits),
    )
    converter = Converter(header, limits.bulk_threshold)
    converter.direct = True
    walker = _DirectReader(converter, reader, little, limits.bulk_threshold)
    # read_dataset's _is_implicit_vr at the top: it looks at the first VR whatever is assumed.
    start = reader.tell()
    reader.read(4)
    code = reader.read(2)
    if len(code) == 2 and (not _uppercase_vr(code)) != implicit:
        raise Bail("the dataset's VR encoding is not its transfer syntax's")
    reader.seek(start)
    top = _Level(None, default_encoding, implicit)
    out: dict[str, Any] = {}
    stopped = walker.stream_dataset(top, out, None, True)
    if not stopped and (reader.tell() < reader.size or (part10 and not walker.top_elements)):
        raise Bail("an empty dataset, or one that ends early")
    header.header_bytes = min(reader.tell(), reader.size)
    for key, tag, vr, length, at in walker.deferred:
        raw = RawDataElement(BaseTag(tag), vr, length, None, at, implicit, little)
        if vr == "SQ" or (vr is None and not tag >> 16 & 1 and public_vr(tag) == "SQ"):
            value = header.read_value(at, length)  # as Converter.deferred reads it
            items = walker.value_sequence(value, top)
            js: dict[str, Any] | None = {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}
        else:
            js = converter.deferred(raw, walker.mini(top), top.conv_enc)
        if js is None:
            del out[key]
        else:
            out[key] = js
    header.file_meta_json = _file_meta_json(converter, meta_raws)
    header.dicom_json = out
    source.ranges.clear()  # the header is read: nothing to serve a second time
    return header, out
