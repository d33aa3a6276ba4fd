"""The memory gate of the batch's header reads: small reads run together, one large at a time."""

from __future__ import annotations

import threading
import time

from pipeline.dicom.header import ReadLimits
from pipeline.dicom.memory import (
    SMALL_HEADER_BYTES,
    MemoryGate,
    workers_within,
    worst_case_bytes,
)


class _Bytes:
    """A ByteSource over bytes in memory."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.uri = "mem://x"

    @property
    def size(self) -> int:
        return len(self.data)

    def read_range(self, offset: int, length: int) -> bytes:
        return self.data[offset : offset + length]


def test_small_reads_never_wait_and_a_large_read_takes_the_slot() -> None:
    # Given a gate and two sources
    gate = MemoryGate(small_bytes=1000)
    small, large = gate.source(_Bytes(b"a" * 5000)), gate.source(_Bytes(b"b" * 5000))

    # When one reads within its allowance and the other beyond it
    assert small.read_range(0, 1000) == b"a" * 1000
    assert large.read_range(0, 1000) == b"b" * 1000
    large.read_range(1000, 1)

    # Then only the second became large
    assert (gate.large_reads, gate.waits) == (1, 0)
    large.close()
    large.close()  # idempotent
    small.close()


def test_only_one_large_read_at_a_time() -> None:
    # Given a gate whose large-read slot is held by one read
    gate = MemoryGate(small_bytes=10)
    first = gate.source(_Bytes(b"x" * 100))
    first.read_range(0, 50)
    entered = threading.Event()

    def second_read() -> None:
        with gate.source(_Bytes(b"y" * 100)) as second:
            second.read_range(0, 50)
            entered.set()

    # When a second read grows large
    thread = threading.Thread(target=second_read)
    thread.start()
    time.sleep(0.2)

    # Then it waits until the first gives the slot back
    assert not entered.is_set()
    first.close()
    thread.join(timeout=5)
    assert entered.is_set()
    assert (gate.large_reads, gate.waits) == (2, 1)


def test_workers_fit_one_large_and_the_rest_small_reads_in_the_budget() -> None:
    limits = ReadLimits()
    large = worst_case_bytes(limits.max_header_bytes, limits)
    small = worst_case_bytes(SMALL_HEADER_BYTES, limits)
    for budget_mib in (128, 400, 600, 770, 1500, 3000):
        budget = budget_mib * 2**20
        workers = workers_within(budget, limits, 8)
        # Then the worst case of that many reads fits, or only one read runs
        assert 1 <= workers <= 8
        assert workers == 1 or large + (workers - 1) * small <= budget
        assert workers == 8 or large + workers * small > budget


def test_the_element_budget_calls_its_watch_once_and_still_enforces_its_limit() -> None:
    import pytest

    from pipeline.dicom.sources import ElementBudget
    from pipeline.errors import Malformed

    calls: list[int] = []
    budget = ElementBudget(10, "mem://x", watch=(3, lambda: calls.append(budget.count)))
    for offset in range(10):
        budget.spend(offset)
    assert calls == [4]  # once, when the header passed 3 elements
    with pytest.raises(Malformed, match="more than 10 data elements"):
        budget.spend(10)


def test_a_gated_source_turns_large_when_its_header_passes_the_element_watch() -> None:
    gate = MemoryGate()
    source = gate.source(_Bytes(b"z" * 10))
    count, grow = source.element_watch
    assert count == SMALL_HEADER_BYTES // 8
    grow()
    grow()
    assert gate.large_reads == 1
    source.close()
