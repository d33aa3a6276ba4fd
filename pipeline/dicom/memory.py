"""A memory budget for the header reads of one batch.

A header read costs memory in proportion to what it reads: about twice its bytes on the direct
reader, and up to about 720 bytes per data element on pydicom's reader (a ``Dataset`` or a
``RawDataElement`` per element, a dict in the DICOM JSON), which the element budget bounds
(``ReadLimits.max_elements``). Almost every header is a few kilobytes; a crafted or unusual
one may be tens of megabytes. The parse step reads up to ``max_workers`` headers at once, so
without a budget a batch of ten worst-case objects could use ten worst cases at once.

:class:`MemoryGate` lets any number of reads proceed while they stay *small* (at most
:data:`SMALL_HEADER_BYTES` fetched), and lets only one read at a time grow beyond that: a read
that would fetch more, or whose header passes :data:`SMALL_HEADER_ELEMENTS` elements (a
deflated header inflates to far more than it fetched), waits until no other read is large.
The worst case of a batch is then ``workers x small + 1 x large``; :func:`workers_within`
picks how many workers a memory budget allows.
"""

from __future__ import annotations

import threading
from types import TracebackType

from pipeline.dicom.header import ReadLimits
from pipeline.dicom.sources import ByteSource

__all__ = [
    "BYTES_FACTOR",
    "ELEMENT_COST",
    "SMALL_HEADER_BYTES",
    "SMALL_HEADER_ELEMENTS",
    "GatedSource",
    "MemoryGate",
    "worst_case_bytes",
    "workers_within",
]

#: Bytes fetched up to which a read counts as small.
SMALL_HEADER_BYTES = 512 * 1024
#: Elements up to which a read counts as small (an inflated, deflate-encoded header can hold
#: far more elements than the bytes fetched suggest).
SMALL_HEADER_ELEMENTS = SMALL_HEADER_BYTES // 8
#: Memory per data element on pydicom's reader, in bytes (measured: ``make bench``).
ELEMENT_COST = 720
#: Memory per header byte besides the elements (the fetched ranges, the JSON text).
BYTES_FACTOR = 2
#: The smallest element (tag, VR or length, no value): the most elements a byte count holds.
_MIN_ELEMENT_BYTES = 8


def worst_case_bytes(header_bytes: int, limits: ReadLimits) -> int:
    """The most memory a read of up to ``header_bytes`` may take under ``limits``.

    Examples
    --------
    >>> worst_case_bytes(512 * 1024, ReadLimits()) // 2**20
    46
    """
    elements = min(limits.max_elements, header_bytes // _MIN_ELEMENT_BYTES)
    return elements * ELEMENT_COST + header_bytes * BYTES_FACTOR


def workers_within(budget: int, limits: ReadLimits, max_workers: int) -> int:
    """How many reads may run at once within ``budget`` bytes (at least one).

    One large read (up to ``limits.max_header_bytes``) plus the others small.

    Examples
    --------
    >>> workers_within(300 * 2**20, ReadLimits(), 8)
    5
    """
    large = worst_case_bytes(limits.max_header_bytes, limits)
    small = worst_case_bytes(SMALL_HEADER_BYTES, limits)
    return max(1, min(max_workers, 1 + (budget - large) // small))


class MemoryGate:
    """Admits one large header read at a time (see the module docstring).

    Parameters
    ----------
    small_bytes:
        Bytes a read may fetch before it counts as large.
    """

    def __init__(self, small_bytes: int = SMALL_HEADER_BYTES) -> None:
        self.small_bytes = small_bytes
        self._large = threading.Lock()
        #: How many reads had to wait for the large-read slot (for metrics and tests).
        self.waits = 0
        #: How many reads became large.
        self.large_reads = 0

    def source(self, source: ByteSource) -> GatedSource:
        """``source`` wrapped so its reads pass this gate; use it as a context manager."""
        return GatedSource(source, self)

    def _enter_large(self) -> None:
        if not self._large.acquire(blocking=False):
            self.waits += 1
            self._large.acquire()
        self.large_reads += 1

    def _leave_large(self) -> None:
        self._large.release()


class GatedSource:
    """A :class:`~pipeline.dicom.sources.ByteSource` whose reads pass a :class:`MemoryGate`."""

    def __init__(self, source: ByteSource, gate: MemoryGate) -> None:
        self.source = source
        self.gate = gate
        self.uri = source.uri
        self.fetched = 0
        self._large = False
        #: The header reader calls this when the header passes SMALL_HEADER_ELEMENTS.
        self.element_watch = (SMALL_HEADER_ELEMENTS, self._grow)

    @property
    def size(self) -> int:
        return self.source.size

    def _grow(self) -> None:
        if not self._large:
            self.gate._enter_large()
            self._large = True

    def read_range(self, offset: int, length: int) -> bytes:
        """Fetch a range; a read about to grow beyond small waits for the large-read slot."""
        if self.fetched + length > self.gate.small_bytes:
            self._grow()
        data = self.source.read_range(offset, length)
        self.fetched += len(data)
        return data

    def close(self) -> None:
        """Give the large-read slot back (idempotent)."""
        if self._large:
            self._large = False
            self.gate._leave_large()

    def __enter__(self) -> GatedSource:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
