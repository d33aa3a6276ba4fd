"""``dicom-pipeline local up``: one local stack per state directory, run in the foreground.

* **One per state directory.** ``<state>/local-up.lock`` is held (``flock``) for the run and
  names its PID; a second ``local up`` for the same directory stops at once with
  :class:`AlreadyRunning`, which names the running one. The kernel drops the lock when the
  process dies, however it dies, so a killed run never blocks the next.
* **A killed run's leftovers go at the next start.** Its ``stack.json`` (the lock proves no run
  owns it any more) is replaced once the new stack runs; its Orthanc died with it
  (``setpriv --pdeathsig``) and its Orthanc folder is removed when the next Orthanc starts
  (:func:`pipeline.orthanc.local.remove_leftovers`).
* **Logs to a file.** What the handler and moto print (Powertools' JSON lines on stdout, Python
  logging) goes to ``<state>/logs/local-up.log``; the terminal gets a status line now and then.
* **Stopping is bounded.** After Ctrl-C or SIGTERM everything stops within
  :data:`STOP_SECONDS`: each step waits a short while, and a watchdog kills what is left (the
  local Orthanc) and ends the process if the steps take longer.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.local.stack import LocalStack

__all__ = [
    "LOCK_FILE",
    "LOG_FILE",
    "STOP_SECONDS",
    "AlreadyRunning",
    "StateDirectory",
    "claim",
    "logs_to_file",
    "status_line",
    "stop_within",
]

LOCK_FILE = "local-up.lock"
LOG_FILE = "logs/local-up.log"
#: Ctrl-C or SIGTERM stops everything within this many seconds.
STOP_SECONDS = 9.0


class AlreadyRunning(Exception):
    """Another ``local up`` holds the state directory (its message names its PID)."""


@dataclass
class StateDirectory:
    """A claimed state directory: what the run found there and what it owns."""

    path: Path
    #: The PID the lock file named when it was claimed (a run that ended or was killed).
    previous_pid: int | None
    #: A ``stack.json`` was there: left by a run that did not remove it (killed); the new
    #: run replaces it once its stack runs (a start that fails leaves it as it was).
    stale_stack: bool

    @property
    def stack_file(self) -> Path:
        """Where this run writes ``stack.json``."""
        return self.path / "stack.json"


def _read_pid(fd: int) -> int | None:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 64).decode("ascii", "replace").strip()
    return int(text) if text.isdigit() else None


@contextlib.contextmanager
def claim(state_dir: Path) -> Iterator[StateDirectory]:
    """Hold ``state_dir`` for this run (see the module).

    Raises
    ------
    AlreadyRunning
        Another live process holds it.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(state_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(fd)
            who = f"PID {pid}" if pid else "another process"
            raise AlreadyRunning(
                f"a local stack is already running for {state_dir} ({who}): stop it (Ctrl-C "
                f"in its terminal{f', or kill {pid}' if pid else ''}) or give another "
                "--state-dir"
            ) from None
        previous = _read_pid(fd)
        stale = (state_dir / "stack.json").exists()  # no live run owns it: the lock says so
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, str(os.getpid()).encode("ascii"))
        try:
            yield StateDirectory(state_dir, previous, stale)
        finally:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # closing drops the lock


@contextlib.contextmanager
def logs_to_file(path: Path) -> Iterator[IO[str]]:
    """Send stdout and Python logging to ``path`` (appended, mode 0600) for the block.

    The handler's Powertools logger writes JSON lines to ``sys.stdout`` as it finds it when
    first imported (at the first invocation, inside the block); moto and the pipeline log
    through :mod:`logging`.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    log = os.fdopen(fd, "a", buffering=1, encoding="utf-8")
    handler = logging.StreamHandler(log)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    saved_stdout, saved_level = sys.stdout, root.level
    sys.stdout.flush()
    sys.stdout = log
    root.addHandler(handler)
    root.setLevel(min(root.level or logging.WARNING, logging.INFO))
    try:
        yield log
    finally:
        sys.stdout = saved_stdout
        root.removeHandler(handler)
        root.setLevel(saved_level)
        log.close()


def status_line(stack: LocalStack) -> str:
    """One short line on what the stack has done: executions, queue, outcomes so far."""
    pipe = stack.pipe
    runs = list(pipe.results) if pipe is not None else []
    outcomes: Counter[str] = Counter()
    for run in runs:
        for result in (run.output or {}).get("results", []) or []:
            outcomes[str(result.get("outcome"))] += 1
    failed = sum(1 for run in runs if run.status != "SUCCEEDED")
    try:
        queued = f"{stack.queue_depth()} queued"
    except Exception:  # a status line never stops the stack
        queued = "queue unknown"
    records = ", ".join(f"{n} {name}" for name, n in sorted(outcomes.items())) or "none yet"
    return (
        f"{time.strftime('%H:%M:%S')} {len(runs)} executions ({failed} failed), {queued}; "
        f"records: {records}"
    )


def stop_within(
    stack: LocalStack,
    seconds: float = STOP_SECONDS,
    on_timeout: Callable[[], Any] | None = None,
    exit_status: int = 1,
) -> None:
    """Stop ``stack``; if that takes longer than ``seconds``, kill its Orthanc and end the
    process (``os._exit(exit_status)``) from a watchdog thread, after ``on_timeout``
    (removing files)."""

    def watchdog() -> None:
        orthanc_pid = stack.orthanc_pid
        if orthanc_pid:
            with contextlib.suppress(OSError):
                os.kill(orthanc_pid, 9)
        if on_timeout is not None:
            with contextlib.suppress(Exception):
                on_timeout()
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.write("dicom-pipeline: stopped (it took too long to stop cleanly)\n")
            sys.stderr.flush()
        os._exit(exit_status)

    timer = threading.Timer(seconds, watchdog)
    timer.daemon = True
    timer.start()
    try:
        stack.stop()
    finally:
        timer.cancel()
