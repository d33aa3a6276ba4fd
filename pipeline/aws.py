"""Lazily created, cached boto3 clients, and the deadline their calls keep.

Nothing here connects at import time. Clients honour the standard settings
(``AWS_ENDPOINT_URL``, ``AWS_REGION``, profiles) because boto3 itself reads them; tests swap
in moto by setting those before the first call, or call :func:`reset_clients`.

Time budget: one HTTP attempt lasts at most :data:`ATTEMPT_SECONDS` (connect plus read
timeout; the read timeout bounds each wait for bytes), a call makes at most
:data:`MAX_ATTEMPTS` attempts. Inside :func:`deadline`, an attempt that could not end before
the deadline is not sent: the call raises :class:`DeadlineExceeded` (a ``BotoCoreError``, so
callers treat it like any other transient failure), and the Lambda hands its record back.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from functools import cache
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError

__all__ = [
    "ATTEMPT_SECONDS",
    "MAX_ATTEMPTS",
    "DeadlineExceeded",
    "client",
    "deadline",
    "on_new_client",
    "remaining",
    "reset_clients",
]

_lock = threading.Lock()
_local = threading.local()
#: Called with (service, client) for every client :func:`client` makes (see on_new_client).
_hooks: list[Callable[[str, Any], None]] = []

CONNECT_TIMEOUT_SECONDS = 2
READ_TIMEOUT_SECONDS = 8
#: The longest one HTTP attempt may take (connect, then a read timeout's wait).
ATTEMPT_SECONDS = CONNECT_TIMEOUT_SECONDS + READ_TIMEOUT_SECONDS
#: Attempts per call, the first included (botocore's ``total_max_attempts``; its
#: ``max_attempts`` counts retries only, one attempt fewer).
MAX_ATTEMPTS = 3

#: botocore's *standard* retries (exponential backoff with full jitter, at most 1 s then 2 s
#: here) for throttling, 5xx and timeouts: at most MAX_ATTEMPTS * ATTEMPT_SECONDS (30 s) plus
#: 3 s of backoff per call, and never past a :func:`deadline`. Not *adaptive*: its client-side
#: rate limiter sleeps before sending for as long as its token bucket says, a wait no
#: deadline bounds, and it slows every later call of the client the whole process shares
#: after a burst of throttles (the Lambda hands a throttled record back instead; SQS retries
#: it later).
RETRY_CONFIG = Config(
    retries={"total_max_attempts": MAX_ATTEMPTS, "mode": "standard"},
    connect_timeout=CONNECT_TIMEOUT_SECONDS,
    read_timeout=READ_TIMEOUT_SECONDS,
    max_pool_connections=32,
)


class DeadlineExceeded(BotoCoreError):
    """An AWS call attempt could not end before the deadline, so it was not sent."""

    fmt = "no time left for an AWS call attempt before the deadline"


@contextlib.contextmanager
def deadline(at: float | None) -> Iterator[None]:
    """Within the block, this thread's AWS calls send no attempt that could end after ``at``
    (a :func:`time.monotonic` value; ``None``: no deadline).

    Examples
    --------
    >>> with deadline(time.monotonic() + 60):
    ...     remaining()  # doctest: +ELLIPSIS
    5...
    """
    previous = getattr(_local, "deadline", None)
    _local.deadline = at
    try:
        yield
    finally:
        _local.deadline = previous


def remaining() -> float | None:
    """Seconds left before this thread's deadline (``None`` without one)."""
    at = getattr(_local, "deadline", None)
    return None if at is None else at - time.monotonic()


def _check_deadline(**_: Any) -> None:
    left = remaining()
    if left is not None and left < ATTEMPT_SECONDS:
        raise DeadlineExceeded()


@cache
def _session() -> boto3.session.Session:
    # boto3 itself reads AWS_DEFAULT_REGION (and profiles) but not AWS_REGION, which the SDKs
    # and the Lambda runtime set: honour both.
    return boto3.session.Session(region_name=os.environ.get("AWS_REGION") or None)


@cache
def _client(service: str) -> Any:
    made = _session().client(service, config=RETRY_CONFIG)  # type: ignore[call-overload]
    # before-send runs for every HTTP attempt, retries included.
    made.meta.events.register("before-send", _check_deadline)
    for hook in _hooks:
        hook(service, made)
    return made


def client(service: str) -> Any:
    """Return the process-wide boto3 client for ``service`` (created on first use).

    Examples
    --------
    >>> s3 = client("s3")  # doctest: +SKIP
    """
    with _lock:  # boto3 session creation is not thread-safe
        return _client(service)


def on_new_client(hook: Callable[[str, Any], None]) -> Callable[[], None]:
    """Call ``hook(service, client)`` on every client :func:`client` makes from now on.

    For the local stack, which serves its own process's requests to moto in process
    (:mod:`pipeline.local.loopback`). Clients made before are not passed to it: call
    :func:`reset_clients` after. Returns the function that removes the hook.
    """
    with _lock:
        _hooks.append(hook)

    def remove() -> None:
        with _lock:
            if hook in _hooks:
                _hooks.remove(hook)

    return remove


def reset_clients() -> None:
    """Forget cached clients (after the environment changed, e.g. in tests)."""
    with _lock:
        _client.cache_clear()
        _session.cache_clear()
