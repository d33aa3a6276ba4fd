"""The audit's phases: progress counted by the threads that read, told in the caller's.

Each source (and the recheck) is one :class:`Phase`, which worker threads count into;
:class:`Phases` runs the jobs in threads and calls the audit's :data:`Progress` callback from
the caller's thread with what changed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from pipeline.ops.audit.report import Progress

__all__ = ["Phase", "Phases"]


@dataclass
class Phase:
    """Progress of one source, counted by worker threads and reported by the caller's."""

    name: str
    total: int | None = None
    done: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, n: int) -> None:
        """Count ``n`` more items done (from any thread)."""
        with self._lock:
            self.done += n

    def reset(self, total: int | None) -> None:
        """Set the total once it is known (from any thread)."""
        with self._lock:
            self.total = total


class Phases:
    """The phases of one audit and the callback that hears of them (in the caller's thread)."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress
        self.phases: dict[str, Phase] = {}
        self._told: dict[str, tuple[int, int | None]] = {}

    def phase(self, name: str, total: int | None = None) -> Phase:
        """A new phase ``name`` (reported from now on), its ``total`` if known."""
        self.phases[name] = Phase(name, total)
        return self.phases[name]

    def report(self) -> None:
        """Call the callback for each phase whose count or total changed since last told."""
        if self.progress is None:
            return
        for name, phase in list(self.phases.items()):
            now = (phase.done, phase.total)
            if self._told.get(name) != now:
                self._told[name] = now
                self.progress(name, *now)

    def run(self, jobs: dict[str, Callable[[], Any]], workers: int) -> dict[str, Any]:
        """Run ``jobs`` in threads; report progress here until all end; their results by name.

        The first job to fail stops the wait and its exception is raised (the others finish in
        the background: each one is a bounded read).
        """
        if not jobs:
            return {}
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="audit")
        try:
            futures: dict[str, Future[Any]] = {n: pool.submit(job) for n, job in jobs.items()}
            pending: set[Future[Any]] = set(futures.values())
            while pending:
                done, pending = wait(pending, timeout=0.1, return_when=FIRST_EXCEPTION)
                self.report()
                for f in done:
                    f.result()  # raises the job's exception here
            self.report()
            return {n: f.result() for n, f in futures.items()}
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
