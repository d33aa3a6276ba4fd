"""Who may do what on the deployed Orthanc, and the health endpoint its load balancer checks.

The deployed image loads this file as its Python plugin's ``PythonScript`` (the container's
entry point writes it from an SSM parameter). Orthanc checks every HTTP request's password
itself (``AuthenticationEnabled``); then :func:`request_filter`, registered with
``orthanc.RegisterIncomingHttpRequestFilter``, decides what the user may do:

* an **administrator** may do everything;
* an **uploader** may only ``POST <DICOMweb root>studies`` (STOW-RS, which answers with the
  UIDs it stored and nothing else): no read, no delete, no other route;
* anyone else (a registered user with no role) may do nothing.

A refusal is ``403 Forbidden``. The roles are Orthanc configuration (``DicomPipeline``
section, ``Administrators`` and ``Uploaders``: lists of user names), set at start from the
two users secrets. Anything unexpected (no or malformed credentials, an exception) refuses.

Orthanc answers ``401`` to a request without valid credentials *before* any filter runs, so
a health check cannot be an anonymous request on Orthanc's own port. :class:`HealthServer`
answers on a port of its own (``DicomPipeline.HealthPort``), once Orthanc has started:

* ``GET /healthz`` (the load balancer's check, readiness): ``200`` when Orthanc answered
  ``/changes?last`` (read from the index database; ``/system`` would not touch it, its
  database version is cached), ``503`` otherwise;
* ``GET /livez`` (the container's check, liveness): ``200`` whenever the server answers at
  all. It asks Orthanc nothing and never touches the index database, so a database failover
  does not make ECS replace every task; it shows that the Orthanc process runs, has
  started, and serves this plugin's thread.

Standard library only, one file: it runs in the image's Python as it is. Imported anywhere
else (the project's tests, the CDK app for its names), it only defines names.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = [
    "HEALTH_PATH",
    "HEALTH_PORT",
    "HEALTH_PROBE",
    "LIVENESS_PATH",
    "SECTION",
    "HealthServer",
    "Policy",
    "register",
    "request_filter",
]

#: The configuration section of this plugin, and its keys.
SECTION = "DicomPipeline"
ADMINISTRATORS = "Administrators"
UPLOADERS = "Uploaders"
HEALTH_PORT_KEY = "HealthPort"

#: The health endpoint: its own port (Orthanc's is 8042), one path, no credentials.
HEALTH_PORT = 8043
HEALTH_PATH = "/healthz"
#: What the health endpoint asks Orthanc (a read of the index database).
HEALTH_PROBE = "/changes?last"
#: The liveness endpoint, on the same port: asks nothing of Orthanc or its database.
LIVENESS_PATH = "/livez"

DEFAULT_DICOMWEB_ROOT = "/dicom-web/"

#: ``orthanc.HttpMethod`` as the filter receives it (an integer).
_METHODS = {1: "GET", 2: "POST", 3: "PUT", 4: "DELETE"}


@dataclass(frozen=True)
class Policy:
    """The registered users, their roles, and what each role may do."""

    users: Mapping[str, str]
    administrators: frozenset[str]
    uploaders: frozenset[str]
    dicomweb_root: str = DEFAULT_DICOMWEB_ROOT

    @property
    def upload_path(self) -> str:
        """The STOW-RS route (``/dicom-web/studies``), the only one an uploader may use."""
        return self.dicomweb_root + "studies"

    @classmethod
    def from_configuration(cls, config: Mapping[str, Any]) -> Policy:
        """The policy Orthanc's configuration describes.

        Raises
        ------
        ValueError
            A role is not a list of names, or a user has both roles.

        Examples
        --------
        >>> policy = Policy.from_configuration({
        ...     "RegisteredUsers": {"admin": "a", "uploader": "u"},
        ...     "DicomPipeline": {"Administrators": ["admin"], "Uploaders": ["uploader"]},
        ... })
        >>> policy.upload_path, sorted(policy.uploaders)
        ('/dicom-web/studies', ['uploader'])
        """
        users = config.get("RegisteredUsers") or {}
        if not isinstance(users, dict):
            raise ValueError("RegisteredUsers must map user names to passwords")
        section = config.get(SECTION) or {}
        administrators = _names(section, ADMINISTRATORS)
        uploaders = _names(section, UPLOADERS)
        both = administrators & uploaders
        if both:
            raise ValueError(f"users with both roles: {', '.join(sorted(both))}")
        root = str((config.get("DicomWeb") or {}).get("Root") or DEFAULT_DICOMWEB_ROOT)
        root = "/" + root.strip("/") + "/"
        return cls(
            users={str(k): str(v) for k, v in users.items()},
            administrators=administrators,
            uploaders=uploaders,
            dicomweb_root=root,
        )

    def user(self, headers: Mapping[str, str]) -> str | None:
        """The user whose Basic credentials ``headers`` carry, if they are valid.

        Orthanc has already checked them; checking again costs little and means the
        decision never rests on a header Orthanc did not check (a second Authorization
        header, say).
        """
        value = next((v for k, v in headers.items() if k.lower() == "authorization"), "")
        scheme, _, token = value.partition(" ")
        if scheme != "Basic" or not token:
            return None
        try:
            name, sep, password = base64.b64decode(token, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        expected = self.users.get(name)
        if not sep or expected is None:
            return None
        if not hmac.compare_digest(password.encode(), expected.encode()):
            return None
        return name

    def allows(self, method: str, uri: str, headers: Mapping[str, str]) -> bool:
        """Whether the request ``method uri`` with ``headers`` may go on.

        Examples
        --------
        >>> policy = Policy({"u": "p"}, frozenset(), frozenset({"u"}))
        >>> basic = {"authorization": "Basic " + base64.b64encode(b"u:p").decode()}
        >>> policy.allows("POST", "/dicom-web/studies", basic)
        True
        >>> policy.allows("GET", "/dicom-web/studies", basic)
        False
        """
        name = self.user(headers)
        if name is None:
            return False
        if name in self.administrators:
            return True
        if name in self.uploaders:
            return method == "POST" and uri == self.upload_path
        return False


def _names(section: Mapping[str, Any], key: str) -> frozenset[str]:
    value = section.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{SECTION}.{key} must be a list of user names")
    return frozenset(value)


def request_filter(policy: Policy, log: Callable[[str], None] | None = None) -> Callable[..., bool]:
    """The callback for ``orthanc.RegisterIncomingHttpRequestFilter``.

    Orthanc calls it as ``filter(uri, method=<int>, ip=..., headers={...}, get={...})``;
    it returns ``False`` (refuse) on anything it cannot decide.
    """

    def allowed(uri: str, **request: Any) -> bool:
        try:
            method = _METHODS.get(request.get("method"), "")  # type: ignore[arg-type]
            return policy.allows(method, uri, request.get("headers") or {})
        except Exception as exc:  # a filter must answer: refuse
            if log is not None:
                log(f"dicom-pipeline: request refused, the filter failed ({type(exc).__name__})")
            return False

    return allowed


class HealthServer:
    """``GET /healthz`` on its own port: ``200`` when ``probe()`` returns, ``503`` when it
    raises or another probe is still running; ``GET /livez``: ``200`` without calling
    ``probe``; ``404`` for any other path.

    One probe at a time, so a hung index database cannot pile up threads.
    """

    def __init__(self, probe: Callable[[], object], port: int, host: str = "") -> None:
        gate = threading.BoundedSemaphore(1)

        class Handler(BaseHTTPRequestHandler):
            timeout = 10

            def do_GET(self) -> None:
                if self.path == LIVENESS_PATH:
                    self._answer(200, "alive")
                elif self.path != HEALTH_PATH:
                    self._answer(404, "not found")
                elif not gate.acquire(blocking=False):
                    self._answer(503, "busy")
                else:
                    try:
                        probe()
                    except Exception:
                        self._answer(503, "unavailable")
                    else:
                        self._answer(200, "ok")
                    finally:
                        gate.release()

            def _answer(self, status: int, text: str) -> None:
                body = json.dumps({"status": text}).encode() + b"\n"
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: the load balancer asks every few seconds."""

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port it listens on (useful when it was given 0)."""
        return int(self.server.server_address[1])

    def start(self) -> None:
        """Serve in a daemon thread."""
        self._thread = threading.Thread(
            target=self.server.serve_forever, name="dicom-pipeline-health", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._thread is not None:
            self.server.shutdown()
            self._thread.join()
            self._thread = None
        self.server.server_close()


def health_port(config: Mapping[str, Any]) -> int:
    """``DicomPipeline.HealthPort`` of Orthanc's configuration, else :data:`HEALTH_PORT`."""
    value = (config.get(SECTION) or {}).get(HEALTH_PORT_KEY)
    return HEALTH_PORT if value is None else int(value)


def register(orthanc: Any) -> Policy:
    """Register the filter, and start the health endpoint once Orthanc has started."""
    config = json.loads(orthanc.GetConfiguration())
    policy = Policy.from_configuration(config)
    orthanc.RegisterIncomingHttpRequestFilter(request_filter(policy, orthanc.LogWarning))
    port = health_port(config)
    servers: list[HealthServer] = []

    def on_change(change_type: int, _level: int, _resource: str) -> None:
        if change_type == orthanc.ChangeType.ORTHANC_STARTED:
            server = HealthServer(lambda: orthanc.RestApiGet(HEALTH_PROBE), port)
            server.start()
            servers.append(server)
        elif change_type == orthanc.ChangeType.ORTHANC_STOPPED:
            for server in servers:
                server.stop()

    orthanc.RegisterOnChangeCallback(on_change)
    orthanc.LogWarning(
        f"dicom-pipeline: authorization for {_count(policy.administrators)} administrator(s) "
        f"and {_count(policy.uploaders)} uploader(s) (STOW-RS to {policy.upload_path} only); "
        f"health check on port {port}, GET {HEALTH_PATH}"
    )
    return policy


def _count(names: Iterable[str]) -> int:
    return len(list(names))


try:  # only Orthanc's Python plugin provides this module
    import orthanc as _orthanc
except ImportError:
    _orthanc = None

if _orthanc is not None and hasattr(_orthanc, "RegisterIncomingHttpRequestFilter"):
    register(_orthanc)
