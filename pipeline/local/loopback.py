"""moto's server, reached in process by the clients of the process that runs it.

With ``LocalStack(server=True)`` (``local up``, the demo, the notebooks) moto's server runs
as a thread of this process, and so do the pipe emulator, moto's Step Functions interpreter
and the real Lambda handler. Without this module every call they make (the pipe's receives,
every Task's service integration, the handler's ranged reads and writes) goes out over
loopback HTTP into the same process: urllib3 on one side, werkzeug and Flask on the other,
a new server thread per request, all under one interpreter lock.

:class:`Loopback` short-cuts those calls: a ``before-send`` handler on each client hands a
request addressed to the server to moto's request dispatcher in process (what ``mock_aws``
does for the workflow tests, :class:`moto.core.botocore_stubber.BotocoreStubber`), against
the same backends the server serves. Other programs (Orthanc, the CLI, notebook kernels) still
reach the server over HTTP and see the same state.

What a call answers does not change, with one exception that nothing here relies on: a URL
moto builds from the request's host (``CreateQueue``'s and ``GetQueueUrl``'s ``QueueUrl``)
names the AWS host instead of the server; the local stack creates its resources before it
routes anything, so ``stack.json`` names the server. The handler is registered last, after
:func:`pipeline.aws.deadline`'s check and botocore's own, so those still run for every
attempt; a request the dispatcher does not know goes out over HTTP as before.

Examples
--------
>>> loopback = Loopback("http://127.0.0.1:5000")  # doctest: +SKIP
>>> loopback.attach(boto3.client("sqs", endpoint_url="http://127.0.0.1:5000"))  # doctest: +SKIP
"""

from __future__ import annotations

import threading
from typing import Any
from urllib.parse import urlsplit

__all__ = ["Loopback"]


class Loopback:
    """Serve requests to moto's server at ``endpoint_url`` in process (see the module).

    ``localhost`` and ``127.0.0.1`` on the server's port are the same server (moto's Step
    Functions integrations call ``http://localhost:$MOTO_PORT``).
    """

    def __init__(self, endpoint_url: str) -> None:
        from moto.core.botocore_stubber import BotocoreStubber

        port = urlsplit(endpoint_url).port
        if port is None:
            raise ValueError(f"{endpoint_url!r} names no port")
        self.prefixes = tuple(f"http://{host}:{port}/" for host in ("127.0.0.1", "localhost"))
        self._dispatch = BotocoreStubber()
        self._dispatch.enabled = True
        self._enabled = threading.Event()
        self._enabled.set()
        self._lock = threading.Lock()
        #: Requests served in process so far.
        self.served = 0

    def enable(self, on: bool = True) -> None:
        """Route (the default) or let every request go out over HTTP."""
        if on:
            self._enabled.set()
        else:
            self._enabled.clear()

    def attach(self, client: Any) -> None:
        """Serve ``client``'s requests to the server in process from now on."""
        meta = client.meta
        aws_root = f"https://{meta.service_model.endpoint_prefix}.{meta.region_name}.amazonaws.com/"

        def send(request: Any, **_: Any) -> Any:
            url: str = request.url
            if not self._enabled.is_set() or not url.startswith(self.prefixes):
                return None
            # The dispatcher finds the service from an AWS host, as for mock_aws.
            request.url = aws_root + url.split("/", 3)[3]
            response = self._dispatch("before-send", request)
            if response is None:  # not a request moto knows: out over HTTP, unchanged
                request.url = url
                return None
            with self._lock:
                self.served += 1
            return response

        meta.events.register_last("before-send", send)
