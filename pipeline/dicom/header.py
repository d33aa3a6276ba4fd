"""Header-only reading of a DICOM object from a byte-range source.

The header is everything before the Pixel Data element (``(7FE0,0010)``, or Float/Double
Float Pixel Data). It is parsed with pydicom from a :class:`~pipeline.dicom.sources.RangedReader`,
so bytes are fetched only while the header continues. Binary values larger than the bulk
threshold are *deferred*: pydicom seeks over them, nothing is fetched, and they later
become ``BulkDataURI`` references. A deflated dataset is inflated incrementally with a cap.

:func:`pipeline.dicom.parse.parse` reads most headers with the faster direct reader of
:mod:`pipeline.dicom.dicomjson` instead, which makes the same reads and gives the same results;
:func:`read_header` is what it falls back to, and what every header was read with before.
"""

from __future__ import annotations

import io
import logging
import struct
import threading
import warnings
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, BinaryIO, cast

from pydicom import config as pydicom_config
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.filereader import (
    _read_command_set_elements,
    _read_file_meta_info,
    read_dataset,
)
from pydicom.tag import BaseTag
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    PrivateTransferSyntaxes,
)

from pipeline.dicom.sources import (
    ELEMENT_HEADER_READ,
    MAX_ELEMENTS,
    ByteSource,
    RangedReader,
    ZeroRunGuard,
)
from pipeline.errors import (
    DicomPipelineError,
    InternalError,
    Malformed,
    NotDicom,
    StorageEncoded,
    Truncated,
)

__all__ = [
    "MAX_HEADER_BYTES",
    "PIXEL_DATA_TAGS",
    "DicomHeader",
    "ReadLimits",
    "classify_exception",
    "is_parse_error",
    "open_reader",
    "pinned_reading",
    "raised_by_pydicom",
    "read_header",
]

#: Bytes fetched (or inflated) for one header at most. Bulk binary values are skipped, not
#: fetched, so only text, numbers and sequences count; converting 32 MiB of text costs about a
#: second of CPU, which a batch of ten cannot afford (docs/performance.md, "CPU of a batch").
MAX_HEADER_BYTES = 8 * 1024 * 1024

#: Pixel Data, Float Pixel Data, Double Float Pixel Data: the header ends before them.
PIXEL_DATA_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})

# Groups a bare dataset (no preamble, no "DICM") may plausibly start with.
_FIRST_GROUPS = frozenset({0x0000, 0x0002, 0x0004, 0x0008, 0x0010, 0x0018, 0x0020})


@dataclass(frozen=True)
class ReadLimits:
    """Tunable limits of header reading.

    Attributes
    ----------
    first_range:
        Bytes fetched by the first ranged read.
    block_size:
        Bytes fetched by each later read.
    bulk_threshold:
        Binary values longer than this are not read: they become ``BulkDataURI``.
    max_header_bytes:
        The most bytes fetched (or inflated) for one header; beyond it the object is
        ``MALFORMED`` ("header too large"), which bounds memory.
    max_elements:
        The most data elements (element, item and delimiter headers) one header may have;
        beyond it the object is ``MALFORMED`` ("more than N data elements"). Memory grows
        with the number of elements, not with the header's bytes (see
        :class:`~pipeline.dicom.sources.ElementBudget` and ``docs/performance.md``).
    """

    first_range: int = 64 * 1024
    block_size: int = 64 * 1024
    bulk_threshold: int = 1024
    max_header_bytes: int = MAX_HEADER_BYTES
    max_elements: int = MAX_ELEMENTS


@dataclass
class DicomHeader:
    """A parsed header, ready to be turned into DICOM JSON and a record.

    Attributes
    ----------
    dataset:
        The top-level dataset, elements still raw (converted on demand).
    file_meta:
        The File Meta Information group (may be empty for a bare dataset).
    stream:
        The stream values were read from (deferred values are read back from it).
    source_uri:
        The source's URI, used in ``BulkDataURI`` references.
    header_bytes:
        Size of the header in the object: the offset of Pixel Data or the object's end
        (for a deflated dataset, the compressed bytes consumed).
    object_size:
        Size of the object in bytes.
    deflated:
        Whether the dataset was deflate-compressed (bulk offsets are then in the inflated
        stream).
    dicom_json, file_meta_json:
        The DICOM JSON of the dataset and of the File Meta Information when the reader
        built them while reading (the direct reader of :mod:`pipeline.dicom.dicomjson`), else None.
        A header read that way has no pydicom ``dataset`` in memory: asking for ``dataset``
        or ``file_meta`` reads the header again with pydicom (see ``reparse``).
    """

    _dataset: Dataset | None
    _file_meta: FileMetaDataset | None
    stream: BinaryIO
    source_uri: str
    header_bytes: int
    object_size: int
    is_implicit_vr: bool
    is_little_endian: bool
    deflated: bool = False
    transfer_syntax: str | None = None
    reader: RangedReader | None = field(default=None, repr=False)
    dicom_json: dict[str, Any] | None = field(default=None, repr=False)
    file_meta_json: dict[str, Any] | None = field(default=None, repr=False)
    #: Reads the header again with pydicom (for a header read without building a dataset).
    reparse: Callable[[], DicomHeader] | None = field(default=None, repr=False)

    @property
    def dataset(self) -> Dataset:
        """The top-level dataset as pydicom reads it (read again on first use if needed)."""
        if self._dataset is None:
            self._load()
        assert self._dataset is not None
        return self._dataset

    @property
    def file_meta(self) -> FileMetaDataset:
        """The File Meta Information as pydicom reads it (read again on first use if needed)."""
        if self._file_meta is None:
            self._load()
        assert self._file_meta is not None
        return self._file_meta

    def _load(self) -> None:
        if self.reparse is None:
            raise ValueError("this header has no dataset and no way to read it again")
        again = self.reparse()
        self._dataset, self._file_meta = again.dataset, again.file_meta

    @property
    def bytes_read(self) -> int:
        """Bytes fetched from the source so far."""
        return self.reader.stats.bytes_read if self.reader else 0

    def read_value(self, offset: int, length: int) -> bytes:
        """Read a deferred value back from the stream (position preserved)."""
        here = self.stream.tell()
        try:
            self.stream.seek(offset)
            return self.stream.read(length)
        finally:
            self.stream.seek(here)


class InflatingReader(io.RawIOBase):
    """A forward-inflating, seekable view of a raw-deflate stream with an output cap.

    Everything inflated so far is kept (it is header only: reading stops at Pixel Data),
    so short backward seeks by the parser work; inflating beyond ``cap`` bytes raises
    :class:`~pipeline.errors.Malformed`, so a deflate bomb cannot exhaust memory.
    """

    def __init__(self, raw: RangedReader, *, cap: int, chunk: int = 64 * 1024) -> None:
        super().__init__()
        self.raw = raw
        self.cap = cap
        self.chunk = chunk
        self._inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        self._buf = bytearray()
        self._pos = 0
        self._start = raw.tell()
        self.name = raw.name
        #: Reads that found the dataset's end (see ``RangedReader.reads_at_end``).
        self.reads_at_end = 0
        self.zeros = ZeroRunGuard()
        self.elements = raw.elements  # one budget for the header, inflated or not

    @property
    def size(self) -> int:
        """Inflated bytes so far (the dataset's size once the stream is fully inflated)."""
        return len(self._buf)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_CUR:
            offset += self._pos
        elif whence == io.SEEK_END:
            raise Malformed("cannot seek from the end of a deflated dataset")
        if offset < 0:
            raise Malformed(f"a length field points before the start of the dataset ({offset})")
        self._pos = offset
        return offset

    @property
    def compressed_consumed(self) -> int:
        """Compressed bytes consumed so far, from the start of the deflated dataset."""
        return self.raw.tell() - self._start - len(self._inflater.unconsumed_tail)

    def _fill(self, upto: int) -> None:
        while len(self._buf) < upto and not self._inflater.eof:
            if upto > self.cap:
                raise Malformed(f"deflated dataset inflates beyond the {self.cap}-byte limit")
            tail = self._inflater.unconsumed_tail
            if tail:
                data = tail
            else:
                left = self.raw.size - self.raw.tell()
                # With no input left, zlib may still hold output it had no room for (it took
                # all the input but stopped at max_length): empty input drains it.
                data = self.raw.read(min(self.chunk, left)) if left > 0 else b""
            try:
                out = self._inflater.decompress(data, max(upto - len(self._buf), 1))
            except zlib.error as exc:
                raise Malformed(
                    f"invalid deflate stream after {len(self._buf)} inflated bytes"
                ) from exc
            if not data and not out:
                raise Truncated(f"deflated dataset ends after {len(self._buf)} inflated bytes")
            self._buf += out

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            size = self.cap
        if size == ELEMENT_HEADER_READ:
            self.elements.spend(self._pos)
        self._fill(self._pos + size)
        if self._pos > len(self._buf):
            raise Truncated(
                f"a length field points to inflated offset {self._pos}, past the end "
                f"of the {len(self._buf)}-byte dataset"
            )
        end = self._pos + size
        if end > len(self._buf) and self._pos != len(self._buf):
            raise Truncated(
                f"deflated dataset ends at inflated offset {len(self._buf)} inside a "
                f"{size}-byte read at offset {self._pos}"
            )
        data = bytes(self._buf[self._pos : end])
        if not data and size:
            self.reads_at_end += 1
        self.zeros.check(data, self._pos)
        self._pos += len(data)
        return data


def _check_storage_encoding(head: bytes) -> None:
    """Raise StorageEncoded for an attachment Orthanc compressed or encrypted."""
    # Orthanc's zlib compression: uint64 LE uncompressed size, then a zlib stream.
    if len(head) >= 10:
        (declared,) = struct.unpack_from("<Q", head, 0)
        cmf, flg = head[8], head[9]
        if 0 < declared < 1 << 40 and cmf & 0x0F == 8 and (cmf << 8 | flg) % 31 == 0:
            raise StorageEncoded(
                "object looks like an Orthanc zlib-compressed attachment "
                "(StorageCompression must be off for the S3 storage)"
            )
    # The object-storage plugins' client-side encryption header starts with "A1".
    if head[:2] == b"A1":
        raise StorageEncoded(
            "object looks like an Orthanc client-side encrypted attachment "
            "(the storage plugin's encryption must be off)"
        )


def _plausible_bare_dataset(head: bytes) -> bool:
    if len(head) < 8 or head[:8] == bytes(8):
        return False  # zeros: a Part 10 preamble cut short, not a data element
    le_group, le_elem = struct.unpack_from("<HH", head, 0)
    be_group, be_elem = struct.unpack_from(">HH", head, 0)
    return (le_group in _FIRST_GROUPS and le_elem < 0x2000) or (
        be_group in _FIRST_GROUPS and be_elem < 0x2000
    )


def _encoding_for(file_meta: FileMetaDataset, stream: BinaryIO) -> tuple[bool, bool, str | None]:
    """Return (implicit VR, little endian, transfer syntax) as pydicom's read_partial does."""
    ts = file_meta.get("TransferSyntaxUID")
    ts_str = str(ts) if ts is not None else None
    if ts_str is None:
        here = stream.tell()
        peek = stream.read(6)
        stream.seek(here)
        if len(peek) < 6:
            return True, True, None
        group, _, vr = struct.unpack("<HH2s", peek)
        from pydicom.values import converters

        if vr.decode("latin-1") in converters:
            return False, group < 1024, None
        return True, True, None
    if ts == ImplicitVRLittleEndian:
        return True, True, ts_str
    if ts == ExplicitVRBigEndian:
        return False, False, ts_str
    if ts in (ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian):
        return False, True, ts_str
    if ts in PrivateTransferSyntaxes:
        private = PrivateTransferSyntaxes[PrivateTransferSyntaxes.index(ts)]
        return private.is_implicit_VR, private.is_little_endian, ts_str
    return False, True, ts_str  # every encapsulated syntax is explicit VR little endian


_quiet = False
_pin_lock = threading.Lock()
_pin_depth = 0
_pin_saved: int | None = None


@contextmanager
def pinned_reading() -> Iterator[None]:
    """Run pydicom with the parser's own reading mode, whatever the caller configured.

    The parser decides what is invalid (and which code it gets); pydicom's global
    ``reading_validation_mode`` (an application or a test suite may set it to ``RAISE``)
    must not change a header's outcome. Inside, pydicom reads leniently without validating
    values (``IGNORE``): invalid values are handled by :mod:`pipeline.dicom.dicomjson`.
    Reentrant and thread-safe: the caller's mode is restored when the last parse leaves.
    """
    global _pin_depth, _pin_saved
    quiet_pydicom()
    with _pin_lock:
        if _pin_depth == 0:
            _pin_saved = pydicom_config.settings._reading_validation_mode
            pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
        _pin_depth += 1
    try:
        yield
    finally:
        with _pin_lock:
            _pin_depth -= 1
            if _pin_depth == 0:
                pydicom_config.settings._reading_validation_mode = _pin_saved


def quiet_pydicom() -> None:
    """Keep pydicom's logger and warnings out of our logs: they can quote element values.

    The warning filters are (re)applied on every call: anything that restores
    ``warnings.filters`` (``warnings.catch_warnings``, a test runner) would otherwise
    silently drop them for good. Applying an existing filter again does not duplicate it.
    """
    global _quiet
    warnings.filterwarnings("ignore", module=r"pydicom(\..*)?")
    warnings.filterwarnings("ignore", category=UserWarning, message=r".*VR.*")
    if _quiet:
        return
    log = logging.getLogger("pydicom")
    log.setLevel(logging.CRITICAL)
    log.propagate = False
    _quiet = True


def read_header(source: ByteSource, limits: ReadLimits | None = None) -> DicomHeader:
    """Read the header of the DICOM object in ``source``, never its pixel data.

    Parameters
    ----------
    source:
        A local file or an S3 object (see :func:`pipeline.dicom.sources.open_source`).
    limits:
        Range sizes, bulk threshold and the header size cap.

    Returns
    -------
    DicomHeader
        The parsed header; ``bytes_read`` tells what was fetched.

    Raises
    ------
    DicomPipelineError
        A coded failure: ``NOT_DICOM``, ``TRUNCATED``, ``MALFORMED``, ``STORAGE_ENCODED``,
        ``OBJECT_NOT_FOUND``, ``ACCESS_DENIED``.

    Examples
    --------
    >>> from pipeline.dicom.sources import open_source
    >>> header = read_header(open_source("CT_small.dcm"))  # doctest: +SKIP
    >>> header.bytes_read < header.object_size  # doctest: +SKIP
    True
    """
    with pinned_reading():
        return _read_header(source, limits or ReadLimits())


def open_reader(source: ByteSource, limits: ReadLimits) -> tuple[RangedReader, bool]:
    """Open ``source`` and check that it may hold a DICOM header.

    Returns the reader, positioned where the File Meta Information (or a bare dataset)
    starts, and whether the object has the Part 10 preamble and ``DICM`` prefix.
    """
    reader = RangedReader(
        source,
        first_range=limits.first_range,
        block_size=limits.block_size,
        max_bytes=limits.max_header_bytes,
        max_elements=limits.max_elements,
    )
    if reader.size == 0:
        raise NotDicom(f"{source.uri} is empty")
    head = reader.read(min(132, reader.size))
    part10 = len(head) == 132 and head[128:132] == b"DICM"
    if part10:
        if reader.size == 132:
            raise Truncated(f"{source.uri} ends right after its DICM prefix (offset 132)")
        reader.seek(132)
    else:
        _check_storage_encoding(head)
        if not _plausible_bare_dataset(head):
            raise NotDicom(
                f"{source.uri} has no DICM prefix at offset 128 and does not start "
                "with a DICOM data element"
            )
        reader.seek(0)
    return reader, part10


def _read_header(source: ByteSource, limits: ReadLimits) -> DicomHeader:
    reader, part10 = open_reader(source, limits)
    stream: BinaryIO = cast(BinaryIO, reader)
    stopped_at: list[int] = []

    def at_pixel_data(tag: BaseTag, vr: str | None, length: int) -> bool:
        if tag in PIXEL_DATA_TAGS:
            stopped_at.append(tag)
            return True
        return False

    try:
        file_meta = _read_file_meta_info(stream)
        _read_command_set_elements(stream)
        implicit, little, ts = _encoding_for(file_meta, stream)
        deflated = ts == DeflatedExplicitVRLittleEndian
        if deflated:
            stream = cast(BinaryIO, InflatingReader(reader, cap=limits.max_header_bytes))
        dataset = read_dataset(
            stream,
            implicit,
            little,
            stop_when=at_pixel_data,
            defer_size=None if deflated else limits.bulk_threshold,
        )
        end = stream.tell()
        if not stopped_at and end < cast(Any, stream).size:
            # pydicom ended the dataset early: it swallows an EOFError (a value without its
            # delimiter at the end of the object) and stops at a stray item delimiter.
            if cast(Any, stream).reads_at_end:
                raise Truncated(f"{source.uri} ends inside the value that starts at offset {end}")
            raise Malformed(
                f"the dataset of {source.uri} stops at offset {end}, before the end of the "
                "object (e.g. a stray item delimiter)"
            )
        if part10 and not stopped_at and not dataset._dict:
            raise Truncated(f"{source.uri} ends within or right after its File Meta Information")
        _check_values_complete(file_meta, source.uri)
        _check_values_complete(dataset, source.uri)
        if deflated:
            header_end = cast(InflatingReader, stream).compressed_consumed + (
                cast(InflatingReader, stream)._start
            )
        else:
            header_end = end
    except DicomPipelineError:
        raise
    except Exception as exc:
        ended = bool(reader.reads_at_end or getattr(stream, "reads_at_end", 0))
        raise classify_exception(exc, source.uri, stream, ended=ended) from exc
    return DicomHeader(
        _dataset=dataset,
        _file_meta=file_meta,
        stream=stream,
        source_uri=source.uri,
        header_bytes=min(header_end, reader.size),
        object_size=reader.size,
        is_implicit_vr=implicit,
        is_little_endian=little,
        deflated=deflated,
        transfer_syntax=ts,
        reader=reader,
    )


def _check_values_complete(ds: Dataset, uri: str) -> None:
    """Raise Truncated when a value read at the very end of the object came back short.

    pydicom does not check the length of what it reads for a value; the reader returns
    ``b""`` exactly at the end (where pydicom expects a clean end), so an object cut right
    after an element's tag and length would otherwise give an element with an empty value.
    """
    for elem in ds._dict.values():
        if isinstance(elem, RawDataElement):
            value = elem.value
            if isinstance(value, bytes) and elem.length != 0xFFFFFFFF and len(value) < elem.length:
                raise Truncated(
                    f"{uri} ends inside the value of {elem.tag} at offset {elem.value_tell}"
                )
        elif elem.VR == "SQ":
            for item in elem.value or ():
                _check_values_complete(item, uri)


#: What pydicom (and struct, codecs, zlib under it) raise for bytes that are not a valid
#: header: ``MALFORMED``. Any other type (AttributeError, TypeError, KeyError, IndexError...)
#: is a bug, ``INTERNAL``. EOFError (``TRUNCATED``) and RecursionError are handled apart.
_MALFORMED_TYPES = (
    InvalidDicomError,
    BytesLengthException,
    struct.error,
    zlib.error,
    ValueError,  # UnicodeError included
    OSError,  # pydicom's "No tag to read at file position ..."
    NotImplementedError,  # pydicom's "Unknown Value Representation"
    OverflowError,
)


def is_parse_error(exc: BaseException) -> bool:
    """Whether ``exc`` is what bad bytes make a reader raise (not a bug).

    True for a coded failure, for what :func:`classify_exception` turns into ``TRUNCATED`` or
    ``MALFORMED``, and for pydicom failing on a Specific Character Set that is not one.
    """
    return isinstance(
        exc, (DicomPipelineError, EOFError, RecursionError, *_MALFORMED_TYPES)
    ) or _in_charset_conversion(exc)


def _frames(exc: BaseException) -> list[tuple[str, str]]:
    """(module, function) of the frames ``exc`` went through, outermost first."""
    out = []
    tb = exc.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        out.append((str(frame.f_globals.get("__name__", "")), frame.f_code.co_name))
        tb = tb.tb_next
    return out


def _in_charset_conversion(exc: BaseException) -> bool:
    """Whether ``exc`` came out of pydicom's conversion of a Specific Character Set.

    pydicom converts (0008,0005) while it reads a dataset and fails with whatever the value
    makes it fail with when the element is not text (a VR of US gives it a number: TypeError).
    """
    return any(
        module == "pydicom.charset" and func == "convert_encodings" for module, func in _frames(exc)
    )


def raised_by_pydicom(exc: BaseException) -> bool:
    """Whether ``exc`` was raised by pydicom's code rather than ours.

    The innermost frame of pydicom or of ``pipeline`` decides (standard library frames, such
    as ``re`` or ``struct`` called by pydicom, do not): pydicom's converters fail on odd values
    with any type (an IndexError encoding a Japanese name, say), and such a value is kept as
    it is; the same type raised by our own code is a bug.
    """
    for module, _ in reversed(_frames(exc)):
        if module == "pydicom" or module.startswith("pydicom."):
            return True
        if module == "pipeline" or module.startswith("pipeline."):
            return False
    return False


def classify_exception(
    exc: Exception, uri: str, stream: Any, *, ended: bool = False
) -> DicomPipelineError:
    """Turn an exception raised while parsing ``uri`` into a coded failure.

    The message names the exception type and the offset, never the exception's text
    (pydicom's messages can quote element values). Bad bytes give ``TRUNCATED`` or
    ``MALFORMED``; an exception of a type bad bytes do not raise (AttributeError, TypeError,
    KeyError, IndexError...) is a bug in us: ``INTERNAL``.

    Parameters
    ----------
    ended:
        Whether the parser read at the very end of the object before failing: a failure
        after that (pydicom unpacking the empty read) means the object is truncated.
    """
    # pydicom wraps some errors (``OSError("No tag to read ...")`` around our Truncated).
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, DicomPipelineError):
            return cause
        cause = cause.__cause__ or cause.__context__
    try:
        where = f"near offset {stream.tell()}"
    except Exception:
        where = "at an unknown offset"
    if isinstance(exc, EOFError) or (ended and isinstance(exc, (struct.error, OSError))):
        return Truncated(f"{uri} ends inside the header ({where})")
    if isinstance(exc, RecursionError):
        return Malformed(f"sequences nested too deeply in {uri}")
    if _in_charset_conversion(exc):
        return Malformed(
            f"the Specific Character Set (0008,0005) of {uri} is not a list of character "
            f"set names ({type(exc).__name__} {where})"
        )
    if isinstance(exc, _MALFORMED_TYPES):
        return Malformed(f"{type(exc).__name__} while reading the header of {uri} {where}")
    return InternalError(f"{type(exc).__name__} while reading the header of {uri} {where}")
