"""Lazily created, cached boto3 clients.

Nothing here connects at import time. Clients honour the standard settings
(``AWS_ENDPOINT_URL``, ``AWS_REGION``, profiles) because boto3 itself reads them; tests swap
in moto by setting those before the first call, or call :func:`reset_clients`.
"""

from __future__ import annotations

import os
import threading
from functools import cache
from typing import Any

import boto3
from botocore.config import Config

__all__ = ["client", "reset_clients"]

_lock = threading.Lock()

#: Adaptive retries with backoff and jitter for throttling, 5xx and timeouts.
RETRY_CONFIG = Config(
    retries={"max_attempts": 5, "mode": "adaptive"},
    connect_timeout=5,
    read_timeout=30,
    max_pool_connections=32,
)


@cache
def _session() -> boto3.session.Session:
    # boto3 itself reads AWS_DEFAULT_REGION (and profiles) but not AWS_REGION, which the SDKs
    # and the Lambda runtime set: honour both.
    return boto3.session.Session(region_name=os.environ.get("AWS_REGION") or None)


@cache
def _client(service: str) -> Any:
    return _session().client(service, config=RETRY_CONFIG)  # type: ignore[call-overload]


def client(service: str) -> Any:
    """Return the process-wide boto3 client for ``service`` (created on first use).

    Examples
    --------
    >>> s3 = client("s3")  # doctest: +SKIP
    """
    with _lock:  # boto3 session creation is not thread-safe
        return _client(service)


def reset_clients() -> None:
    """Forget cached clients (after the environment changed, e.g. in tests)."""
    with _lock:
        _client.cache_clear()
        _session.cache_clear()
