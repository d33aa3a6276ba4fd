"""Byte-range sources and a lazy, block-cached file object over them.

A :class:`ByteSource` answers ``read_range(offset, length)``; :class:`RangedReader` turns it
into the seekable binary file object pydicom reads from. The reader fetches a first range,
then further blocks *only when the parser reads past what it holds*: a ``seek`` over a large
value (Pixel Data, an overlay, a private blob) fetches nothing, so the bytes read stay the
header's whatever the object's size.
"""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlparse

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    CredentialRetrievalError,
    EndpointConnectionError,
    NoCredentialsError,
    ParamValidationError,
    PartialCredentialsError,
    ReadTimeoutError,
)

from pipeline import aws
from pipeline.errors import (
    AccessDenied,
    DicomPipelineError,
    InternalError,
    Malformed,
    ObjectChanged,
    ObjectNotFound,
    TransientError,
    Truncated,
)

__all__ = [
    "ByteSource",
    "ElementBudget",
    "LocalFileSource",
    "RangedReader",
    "RecordingSource",
    "S3Source",
    "open_source",
]


class ByteSource(Protocol):
    """Something that holds the bytes of one object and serves ranges of them."""

    uri: str

    @property
    def size(self) -> int:
        """The object's size in bytes."""
        ...

    def read_range(self, offset: int, length: int) -> bytes:
        """Return up to ``length`` bytes from ``offset`` (fewer only at the end)."""
        ...


class LocalFileSource:
    """A file on the local disk.

    Parameters
    ----------
    path:
        The file's path.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            st = self.path.stat()
        except FileNotFoundError as exc:
            raise ObjectNotFound(f"no such file: {self.path}") from exc
        except PermissionError as exc:
            raise AccessDenied(f"cannot read file: {self.path}") from exc
        except OSError as exc:  # a path that cannot name a file: not a directory, too long...
            raise ObjectNotFound(f"no such file: {self.path} ({type(exc).__name__})") from exc
        if not stat.S_ISREG(st.st_mode):
            raise ObjectNotFound(f"not a regular file: {self.path}")
        self.size = st.st_size
        # Path.resolve() is os.path.realpath() plus a stat (to report symlink loops): the
        # stat above has just succeeded.
        self.uri = Path(os.path.realpath(self.path)).as_uri()
        self.etag: str | None = None
        self.version_id: str | None = None

    def read_range(self, offset: int, length: int) -> bytes:
        try:
            with self.path.open("rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                if size != self.size:
                    raise ObjectChanged(
                        f"{self.path} changed while its header was read "
                        f"(its size went from {self.size} to {size} bytes)"
                    )
                fh.seek(offset)
                return fh.read(length)
        except FileNotFoundError as exc:
            raise ObjectNotFound(f"file vanished while reading: {self.path}") from exc
        except PermissionError as exc:
            raise AccessDenied(f"cannot read file: {self.path}") from exc
        except OSError as exc:  # an I/O error of the disk or the network file system
            raise TransientError(f"cannot read file {self.path}: {type(exc).__name__}") from exc


#: S3 error codes that mean "no such object (or version)": the one definition.
MISSING_OBJECT_CODES = frozenset({"NoSuchKey", "NoSuchVersion", "404", "NotFound"})


def is_missing_object(exc: ClientError) -> bool:
    """Whether S3 answered that the object (or the version) does not exist.

    A missing *bucket* (``NoSuchBucket``) is not a missing object: it is a deployment error.
    """
    code = str(exc.response.get("Error", {}).get("Code", ""))
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return code in MISSING_OBJECT_CODES or (status == 404 and code != "NoSuchBucket")


def _s3_error(exc: ClientError, bucket: str, key: str) -> DicomPipelineError:
    err = exc.response.get("Error", {})
    code = str(err.get("Code", ""))
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    where = f"s3://{bucket}/{key}"
    if is_missing_object(exc):
        return ObjectNotFound(f"object not found: {where}", gone=True)
    if code == "NoSuchBucket":
        return ObjectNotFound(f"bucket not found: {where}")
    if code in {"AccessDenied", "403", "Forbidden", "AllAccessDisabled"} or status == 403:
        return AccessDenied(f"access denied to {where}")
    if code == "InvalidObjectState":
        return AccessDenied(f"object is archived and cannot be read: {where}")
    if code in _CREDENTIAL_CODES:
        return TransientError(f"S3 refused the credentials reading {where}: {code}")
    if status >= 500 or status == 429 or code in _UNAVAILABLE_CODES:
        return TransientError(f"S3 error {code or status} reading {where} after retries")
    # Not a property of the object's bytes (that would be MALFORMED): a request S3 does not
    # take from us is ours to fix.
    return InternalError(f"S3 refused the read of {where}: {code or '?'} (HTTP {status})")


#: S3 answers that mean "throttled", "try again later" or "the service failed" (botocore
#: retried them already).
_UNAVAILABLE_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestThrottled",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "RequestTimeout",
        "RequestTimeoutException",
        "PriorRequestNotComplete",
        "InternalError",
        "ServiceUnavailable",
    }
)
#: S3 answers that the caller's (temporary) credentials expired or are not valid (yet).
_CREDENTIAL_CODES = frozenset(
    {"ExpiredToken", "ExpiredTokenException", "InvalidToken", "TokenRefreshRequired"}
)


def _botocore_error(exc: BotoCoreError, uri: str) -> DicomPipelineError:
    """A botocore failure reading ``uri`` (after its retries), coded, naming what and where."""
    name = type(exc).__name__
    kwargs = getattr(exc, "kwargs", {}) or {}
    endpoint = kwargs.get("endpoint_url") or "S3"
    if isinstance(exc, NoCredentialsError):
        return TransientError(f"no AWS credentials found to read {uri}")
    if isinstance(exc, PartialCredentialsError):
        return TransientError(
            f"incomplete AWS credentials (from {kwargs.get('provider', '?')}, missing "
            f"{kwargs.get('cred_var', '?')}) to read {uri}"
        )
    if isinstance(exc, CredentialRetrievalError):
        return TransientError(
            f"AWS credentials could not be retrieved from {kwargs.get('provider', '?')} "
            f"to read {uri}"
        )
    if isinstance(exc, (EndpointConnectionError, ConnectTimeoutError)):
        return TransientError(f"cannot connect to {endpoint} to read {uri} ({name}) after retries")
    if isinstance(exc, ReadTimeoutError):
        return TransientError(f"{endpoint} did not answer in time reading {uri} after retries")
    if isinstance(exc, ConnectionClosedError):
        return TransientError(f"{endpoint} closed the connection reading {uri} after retries")
    if isinstance(exc, ParamValidationError):
        return ObjectNotFound(f"not a valid S3 bucket name or key: {uri}")
    return TransientError(f"cannot read {uri} from S3: {name}")


class S3Source:
    """An S3 object read with ranged ``GetObject`` calls.

    The first ranged GET also answers the object's size (from ``Content-Range``), its ETag and
    version, so no ``HeadObject`` is needed. Later ranges are pinned to the same ETag with
    ``IfMatch``, so an object overwritten mid-read is not stitched from two versions: S3
    answers ``412 PreconditionFailed`` and the read fails with
    :class:`~pipeline.errors.ObjectChanged` (``UNAVAILABLE``: retried; a newer event
    describes the new object). Credentials missing, an endpoint out of reach, throttling and
    5xx that outlast botocore's retries are :class:`~pipeline.errors.TransientError`.

    Parameters
    ----------
    bucket, key:
        The object. ``key`` is the stored (URL-decoded) key.
    version_id:
        Read this version (as in the S3 event) rather than the latest.
    """

    def __init__(self, bucket: str, key: str, *, version_id: str | None = None) -> None:
        self.bucket = bucket
        self.key = key
        self.version_id = version_id
        self.uri = f"s3://{bucket}/{key}"
        self.etag: str | None = None
        self._size: int | None = None
        self._first: tuple[int, bytes] | None = None

    def _get(self, offset: int, length: int) -> tuple[bytes, int]:
        kwargs: dict[str, object] = {
            "Bucket": self.bucket,
            "Key": self.key,
            "Range": f"bytes={offset}-{offset + length - 1}",
        }
        if self.version_id:
            kwargs["VersionId"] = self.version_id
        elif self.etag:
            kwargs["IfMatch"] = self.etag
        try:
            resp = aws.client("s3").get_object(**kwargs)
            body = resp["Body"].read()
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code == "InvalidRange":  # empty object, or offset past its end
                return b"", offset
            if code in {"PreconditionFailed", "412"}:
                raise ObjectChanged(
                    f"{self.uri} changed while its header was read (its ETag no longer matches "
                    f"at offset {offset})"
                ) from exc
            raise _s3_error(exc, self.bucket, self.key) from exc
        except BotoCoreError as exc:
            raise _botocore_error(exc, self.uri) from exc
        self.etag = self.etag or resp.get("ETag")
        self.version_id = self.version_id or resp.get("VersionId")
        total = offset + len(body)
        content_range = resp.get("ContentRange")  # "bytes 0-65535/1234567"
        if content_range and "/" in content_range:
            tail = content_range.rsplit("/", 1)[1]
            if tail.isdigit():
                total = int(tail)
        elif "ContentLength" in resp and offset == 0:
            total = int(resp["ContentLength"])
        return body, total

    @property
    def size(self) -> int:
        if self._size is None:
            self.prefetch(0)
        assert self._size is not None
        return self._size

    def prefetch(self, length: int) -> bytes:
        """Fetch the first ``length`` bytes and learn the object's size (one request)."""
        body, total = self._get(0, max(length, 1))
        self._size = total
        self._first = (0, body)
        return body

    def read_range(self, offset: int, length: int) -> bytes:
        if self._first is not None and self._first[0] == offset and len(self._first[1]) >= length:
            data = self._first[1][:length]
            self._first = None
            return data
        body, total = self._get(offset, length)
        if self._size is None:
            self._size = total
        return body


class RecordingSource:
    """A :class:`ByteSource` wrapper that keeps the first ranges it serves, to serve them again.

    The parser reads a header with its direct reader first and, when that reader leaves the
    header to pydicom, reads it again from the start: the second pass gets the ranges the
    first one fetched from here instead of from S3. At most ``keep`` ranges are kept.

    Parameters
    ----------
    source:
        The wrapped source.
    keep:
        How many fetched ranges to keep.
    """

    def __init__(self, source: ByteSource, keep: int = 8) -> None:
        self.source = source
        self.uri = source.uri
        self.keep = keep
        self.ranges: dict[int, bytes] = {}
        #: The error the wrapped source raised, if any (it is not the parser's to hide).
        self.error: BaseException | None = None
        #: The wrapped source's element watch, if any (see :class:`ElementBudget`).
        self.element_watch = getattr(source, "element_watch", None)

    @property
    def size(self) -> int:
        try:
            return self.source.size
        except BaseException as exc:
            self.error = exc
            raise

    def _kept(self, offset: int, length: int) -> bytes | None:
        data = self.ranges.get(offset)
        if data is not None and (len(data) >= length or offset + len(data) >= self.size):
            return data[:length]
        return None

    def _keep(self, offset: int, data: bytes) -> bytes:
        if len(self.ranges) < self.keep:
            self.ranges.setdefault(offset, data)
        return data

    def prefetch(self, length: int) -> bytes:
        """Like ``S3Source.prefetch`` (one request answers the first range and the size)."""
        kept = self._kept(0, length)
        if kept is not None:
            return kept
        prefetch = getattr(self.source, "prefetch", None)
        try:
            data = prefetch(length) if prefetch else self.source.read_range(0, length)
        except BaseException as exc:
            self.error = exc
            raise
        return self._keep(0, data)

    def read_range(self, offset: int, length: int) -> bytes:
        kept = self._kept(offset, length)
        if kept is not None:
            return kept
        try:
            data = self.source.read_range(offset, length)
        except BaseException as exc:
            self.error = exc
            raise
        return self._keep(offset, data)


def open_source(spec: str) -> LocalFileSource | S3Source:
    """Return the source for ``spec``: a local path or ``s3://bucket/key``.

    Examples
    --------
    >>> open_source("s3://images/1.2.3.dcm").key
    '1.2.3.dcm'
    """
    if spec.startswith("s3://"):
        parsed = urlparse(spec)
        key = unquote(parsed.path.lstrip("/"))
        if not parsed.netloc or not key:
            raise ObjectNotFound(f"not an s3://bucket/key URI: {spec}")
        return S3Source(parsed.netloc, key)
    if spec.startswith("file://"):
        spec = unquote(urlparse(spec).path)
    return LocalFileSource(spec)


#: Consecutive all-zero header-sized reads tolerated (a little trailing zero padding) before
#: a run of zeros where data elements are expected is malformed (see :class:`ZeroRunGuard`).
MAX_ZERO_READS = 3072
_HEADER_READ = 16  # tags, VRs, lengths and item headers are read at most this many at a time
#: All-zero reads of each header-sized length (what the zero-run guard looks for).
ZEROS = [bytes(n) for n in range(_HEADER_READ + 1)]


class ZeroRunGuard:
    """Stops pydicom from parsing a long run of zero bytes as data.

    pydicom reads a run of zeros as ``(0000,0000)`` elements of length 0 (inside a sequence,
    as empty items), a few bytes at a time: 32 MiB of zeros would cost minutes and, as items,
    gigabytes of memory. In a valid header an all-zero small read (a zero value or length)
    is always followed by a tag, which is not zero; so beyond :data:`MAX_ZERO_READS`
    all-zero small reads in a row the object is ``MALFORMED``.
    """

    def __init__(self, limit: int = MAX_ZERO_READS) -> None:
        self.limit = limit
        self.run = 0

    def check(self, data: bytes, offset: int) -> None:
        """Account for ``data`` read at ``offset``; raise Malformed on a long zero run."""
        if not data or len(data) > _HEADER_READ or any(data):
            self.run = 0
            return
        self.run += 1
        if self.run > self.limit:
            raise Malformed(
                f"a run of zero bytes where data elements are expected, at offset {offset}"
            )


#: Units one header may spend (see :class:`ElementBudget`): data element, item and delimiter
#: headers, and values at :data:`VALUES_PER_UNIT` a unit. Sized so that a batch of ten headers
#: at the limit fits in half the parse function's timeout at one vCPU (``docs/performance.md``,
#: "CPU of a batch"; ``make bench``): the costliest unit (an empty item read by pydicom's
#: reader, after the direct reader read it and bailed) costs about 20 µs on one core.
MAX_ELEMENTS = 100_000
#: Values of multi-valued elements (after an element's first) and ISO 2022 escape sequences in
#: text pydicom decodes that cost one unit of the budget: converting a DS value costs about
#: 2 µs, an eighth of the costliest element.
VALUES_PER_UNIT = 8
#: The size of the read that fetches a data element's or an item's header.
ELEMENT_HEADER_READ = 8


class ElementBudget:
    """Bounds the work of reading one header: its data elements, items and values.

    pydicom builds objects for every element and item it reads (a ``Dataset`` of about
    650 bytes per item, a ``RawDataElement`` per element), and the DICOM JSON adds a dict for
    each: a header made of a short pattern repeated (empty items in an undefined-length
    sequence: 8 bytes each) would cost about 80 times its size in memory. The header size cap
    alone would then let 32 MiB become gigabytes.

    The budget counts 8-byte reads: pydicom reads each element header, item header and
    delimiter with exactly one, wherever it reads from (the object, the inflated dataset, or
    the value of a sequence it parses from memory). A value of exactly 8 bytes counts too, so
    a header of N elements spends between N and 2N. The values of multi-valued elements count
    too (:meth:`spend_values`, :data:`VALUES_PER_UNIT` a unit), and so do the escape sequences
    of ISO 2022 text pydicom decodes: 32 MiB of ``0\\0\\...`` in one DS element are 16 million
    values, seconds of CPU and gigabytes of objects in a few elements. Beyond ``limit`` units
    the header is ``MALFORMED``.

    Parameters
    ----------
    limit:
        Units allowed for the header.
    uri:
        The object's URI, for the error message.
    """

    def __init__(
        self,
        limit: int = MAX_ELEMENTS,
        uri: str = "the object",
        watch: tuple[int, Callable[[], None]] | None = None,
    ) -> None:
        self.max = limit
        self.uri = uri
        self.count = 0
        #: Values spent that do not yet make a whole unit.
        self.values = 0
        #: ``(count, callback)``: called once when the header passes ``count`` elements (the
        #: memory gate's cue that this read is large); checked only when ``limit`` is passed.
        self.watch = watch if watch is not None and watch[0] < limit else None
        self.limit = self.watch[0] if self.watch is not None else limit

    def spend(self, offset: int) -> None:
        """Account for one element or item header read at ``offset``."""
        self.count += 1
        if self.count > self.limit:
            self._passed(offset)

    def spend_values(self, count: int, offset: int | None) -> None:
        """Account for ``count`` values (beyond an element's first) or escape sequences.

        Examples
        --------
        >>> budget = ElementBudget(limit=2)
        >>> budget.spend_values(2 * VALUES_PER_UNIT, 0)
        >>> budget.count
        2
        """
        if count <= 0:
            return
        units, self.values = divmod(self.values + count, VALUES_PER_UNIT)
        if not units:
            return
        self.count += units
        where = offset if offset is not None else -1
        while self.count > self.limit:  # the watch point first, then the limit
            self._passed(where)

    def _passed(self, offset: int) -> None:
        if self.watch is not None:  # the watch point, not the limit: one call, then on
            callback, self.watch, self.limit = self.watch[1], None, self.max
            callback()
            return
        where = f"near offset {offset}" if offset >= 0 else "at an unknown offset"
        raise Malformed(
            f"{self.uri} has more than {self.max} data elements in its header "
            f"(data element and item headers, and values at {VALUES_PER_UNIT} an element, "
            f"{where})"
        )


@dataclass
class ReadStats:
    """What a :class:`RangedReader` fetched."""

    bytes_read: int = 0
    requests: int = 0


class RangedReader(io.RawIOBase):
    """A seekable, read-only binary file over a :class:`ByteSource`.

    Reads go through a small cache of fetched blocks. Reading past the end of the object
    returns ``b""`` exactly at the end (so a parser can tell a clean end) and raises
    :class:`~pipeline.errors.Truncated` when a read starts past the end or runs past it, so
    a header cut short is a coded error rather than silently shorter values.

    Parameters
    ----------
    source:
        Where the bytes come from.
    first_range:
        Size of the first fetch (the whole header of most objects).
    block_size:
        Size of later fetches.
    max_bytes:
        Total bytes the reader may fetch; beyond it the header is declared too large
        (:class:`~pipeline.errors.Malformed`), so memory stays bounded.
    max_elements:
        Data element and item headers the header may have (see :class:`ElementBudget`,
        shared with whatever parses the header's sequence values from memory).
    """

    def __init__(
        self,
        source: ByteSource,
        *,
        first_range: int = 64 * 1024,
        block_size: int = 64 * 1024,
        max_bytes: int = 64 * 1024 * 1024,
        max_elements: int = MAX_ELEMENTS,
        strict_end: bool = True,
    ) -> None:
        super().__init__()
        self.source = source
        self.block_size = block_size
        self.max_bytes = max_bytes
        self.strict_end = strict_end
        self.stats = ReadStats()
        #: Reads that asked for bytes exactly at the end of the object and got ``b""``: a
        #: clean end for pydicom's next-tag read, a truncation anywhere else.
        self.reads_at_end = 0
        self.zeros = ZeroRunGuard()
        self.elements = ElementBudget(
            max_elements, source.uri, watch=getattr(source, "element_watch", None)
        )
        self._pos = 0
        prefetch = getattr(source, "prefetch", None)
        first = prefetch(first_range) if prefetch else source.read_range(0, first_range)
        self.stats.bytes_read += len(first)
        self.stats.requests += 1
        self.size = source.size
        # (start, data) of the blocks we hold, most recent last; at most a few are kept.
        self._blocks: list[tuple[int, bytes]] = [(0, first)] if first else []
        #: (start, data) of the block fetched last. A read that lies inside it fetches nothing
        #: and is served by ``read`` as a slice of it; a caller may serve such reads itself if
        #: it keeps the same accounts (``zeros``, ``elements``) and the position (``seek``).
        self.last_block: tuple[int, bytes] = (0, first)
        self.name = source.uri

    # -- io.RawIOBase -----------------------------------------------------------------
    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self.size + offset
        else:  # pragma: no cover - io contract
            raise ValueError(f"invalid whence {whence}")
        if pos < 0:
            raise Malformed(f"a length field points before the start of the object ({pos})")
        self._pos = pos
        return pos

    def _fetch(self, start: int, length: int) -> bytes:
        if self.stats.bytes_read + length > self.max_bytes:
            raise Malformed(
                f"header exceeds the {self.max_bytes}-byte limit at offset {start} "
                f"of {self.source.uri}"
            )
        data = self.source.read_range(start, length)
        self.stats.bytes_read += len(data)
        self.stats.requests += 1
        self._blocks.append((start, data))
        self.last_block = (start, data)
        if len(self._blocks) > 4:
            del self._blocks[0]
        return data

    def read(self, size: int | None = -1) -> bytes:
        pos = self._pos
        if size is None or size < 0:
            size = self.size - pos
        if size == 0:
            return b""
        if size == ELEMENT_HEADER_READ:
            self.elements.spend(pos)
        if pos >= self.size:
            if pos == self.size or not self.strict_end:
                self.reads_at_end += 1
                return b""
            raise Truncated(
                f"a length field points to offset {pos}, past the end of the "
                f"{self.size}-byte object"
            )
        # Most reads (a tag, a length, a short value) lie inside the block fetched last.
        start, data = self.last_block
        end = pos + size
        if start <= pos and end <= start + len(data):
            data = data[pos - start : end - start]
            if size > _HEADER_READ or data != ZEROS[size]:
                self.zeros.run = 0
            else:
                self.zeros.check(data, pos)
            self._pos = end
            return data
        end = min(pos + size, self.size)
        if end < pos + size and self.strict_end:
            raise Truncated(
                f"object ends at offset {self.size} inside a {size}-byte read at offset {pos}"
            )
        out = bytearray()
        while pos < end:
            for start, data in reversed(self._blocks):
                if start <= pos < start + len(data):
                    take = data[pos - start : end - start]
                    break
            else:
                want = max(self.block_size, end - pos)
                want = min(want, self.size - pos)
                data = self._fetch(pos, want)
                if not data:
                    raise Truncated(f"object ended early at offset {pos}")
                take = data[: end - pos]
            out += take
            pos += len(take)
        data = bytes(out)
        self.zeros.check(data, self._pos)
        self._pos = pos
        return data

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        return n
