"""The authorization plugin of the deployed Orthanc (pipeline/orthanc/authz.py), with a fake
``orthanc`` module and requests shaped as Orthanc's Python plugin passes them; the health
endpoint on a loopback port."""

from __future__ import annotations

import ast
import base64
import json
import runpy
import socket
import sys
import threading
import types
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline.orthanc import authz
from pipeline.orthanc.authz import HealthServer, Policy, request_filter

USERS = {"admin": "A" * 32, "uploader": "U" * 32, "viewer": "V" * 32}
CONFIG: dict[str, Any] = {
    "RegisteredUsers": USERS,
    "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    "DicomPipeline": {"Administrators": ["admin"], "Uploaders": ["uploader"]},
}
# orthanc.HttpMethod
GET, POST, PUT, DELETE = 1, 2, 3, 4


def basic(user: str, password: str | None = None) -> dict[str, str]:
    token = f"{user}:{USERS[user] if password is None else password}".encode()
    return {"authorization": "Basic " + base64.b64encode(token).decode()}


@pytest.fixture
def allowed() -> Callable[..., bool]:
    """The filter as Orthanc calls it: ``filter(uri, method=..., ip=..., headers=..., get=...)``."""
    return request_filter(Policy.from_configuration(CONFIG))


# ---------------------------------------------------------------- who may do what


@pytest.mark.parametrize(
    ("method", "uri"),
    [
        (GET, "/patients"),
        (GET, "/dicom-web/studies"),
        (GET, "/instances/abc/file"),
        (DELETE, "/studies/abc"),
        (POST, "/tools/find"),
        (PUT, "/modalities/x"),
        (POST, "/dicom-web/studies"),
        (GET, "/ui/app/"),
    ],
)
def test_an_administrator_may_do_everything(
    allowed: Callable[..., bool], method: int, uri: str
) -> None:
    assert allowed(uri, method=method, ip="10.0.0.1", headers=basic("admin"), get={})


def test_an_uploader_may_store_with_stow_rs(allowed: Callable[..., bool]) -> None:
    # Given the uploader's credentials, When it POSTs to the STOW-RS route, Then it may
    assert allowed("/dicom-web/studies", method=POST, ip="10.0.0.1", headers=basic("uploader"))


@pytest.mark.parametrize(
    ("method", "uri"),
    [
        (GET, "/dicom-web/studies"),  # QIDO-RS: search, PHI
        (GET, "/dicom-web/studies/1.2.3/series/4.5/instances/6.7"),  # WADO-RS: PHI
        (GET, "/patients"),
        (GET, "/instances/abc/file"),
        (GET, "/system"),
        (GET, "/changes"),
        (DELETE, "/studies/abc"),
        (DELETE, "/dicom-web/studies"),
        (PUT, "/dicom-web/studies"),
        (POST, "/instances"),  # Orthanc's own upload answers with resource IDs and paths
        (POST, "/tools/find"),
        (POST, "/tools/bulk-delete"),
        (POST, "/dicom-web/studies/1.2.3"),
        (POST, "/dicom-web/studies/"),
        (POST, "/dicom-web//studies"),
        (POST, "/DICOM-WEB/studies"),
        (POST, "/dicom-web/studies/../../tools/find"),
        (POST, "/dicom-web/servers/peer/stow"),
        (GET, "/ui/app/"),
        (GET, authz.HEALTH_PATH),  # the health endpoint lives on its own port
    ],
)
def test_an_uploader_may_do_nothing_else(
    allowed: Callable[..., bool], method: int, uri: str
) -> None:
    assert not allowed(uri, method=method, ip="10.0.0.1", headers=basic("uploader"), get={})


@pytest.mark.parametrize(
    "headers",
    [
        {},  # no credentials (Orthanc answers 401 before; refused all the same)
        basic("viewer"),  # a registered user with no role
        basic("admin", "wrong"),  # a password Orthanc did not check (a second header)
        {"authorization": "Basic !!not-base64!!"},
        {"authorization": "Basic " + base64.b64encode(b"admin").decode()},  # no ':'
        {"authorization": "Basic " + base64.b64encode(b"\xff\xfe:x").decode()},  # not UTF-8
        {"authorization": "Bearer " + "A" * 32},
        {"authorization": "basic " + basic("admin")["authorization"][6:]},  # Orthanc: "Basic "
        {"authorization": "Basic"},
    ],
    ids=[
        "none",
        "no-role",
        "wrong-password",
        "bad-base64",
        "no-colon",
        "not-utf8",
        "bearer",
        "lowercase-scheme",
        "empty",
    ],
)
def test_anything_but_valid_credentials_with_a_role_is_refused(
    allowed: Callable[..., bool], headers: dict[str, str]
) -> None:
    assert not allowed("/patients", method=GET, ip="10.0.0.1", headers=headers, get={})
    assert not allowed("/dicom-web/studies", method=POST, ip="10.0.0.1", headers=headers)


def test_the_header_name_is_matched_whatever_its_case(allowed: Callable[..., bool]) -> None:
    headers = {"Authorization": basic("uploader")["authorization"]}
    assert allowed("/dicom-web/studies", method=POST, ip="10.0.0.1", headers=headers)


def test_a_failing_filter_refuses_and_says_so_without_values() -> None:
    # Given a filter that cannot read the request's headers
    lines: list[str] = []
    broken = request_filter(Policy.from_configuration(CONFIG), lines.append)
    # Then it refuses, and logs the exception's type only
    assert broken("/patients", method=GET, headers=42) is False
    assert lines == ["dicom-pipeline: request refused, the filter failed (AttributeError)"]
    # And a method it does not know is no POST
    assert not request_filter(Policy.from_configuration(CONFIG))(
        "/dicom-web/studies", method=99, headers=basic("uploader")
    )


# ---------------------------------------------------------------- the configuration


def test_the_upload_route_follows_the_dicomweb_root() -> None:
    config = {**CONFIG, "DicomWeb": {"Root": "dicom"}}
    policy = Policy.from_configuration(config)
    assert policy.upload_path == "/dicom/studies"
    assert policy.allows("POST", "/dicom/studies", basic("uploader"))
    assert not policy.allows("POST", "/dicom-web/studies", basic("uploader"))


def test_without_roles_nobody_may_do_anything() -> None:
    policy = Policy.from_configuration({"RegisteredUsers": USERS})
    assert policy.upload_path == "/dicom-web/studies"
    for user in USERS:
        assert not policy.allows("GET", "/patients", basic(user))
        assert not policy.allows("POST", "/dicom-web/studies", basic(user))


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"Administrators": ["admin"], "Uploaders": ["admin"]}, "both roles: admin"),
        ({"Administrators": "admin"}, "list of user names"),
        ({"Uploaders": [1]}, "list of user names"),
    ],
)
def test_a_bad_configuration_stops_orthanc(section: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Policy.from_configuration({**CONFIG, "DicomPipeline": section})


def test_health_port_comes_from_the_configuration() -> None:
    assert authz.health_port(CONFIG) == authz.HEALTH_PORT == 8043
    assert authz.health_port({"DicomPipeline": {"HealthPort": 18043}}) == 18043


# ---------------------------------------------------------------- the health endpoint


def _get(port: int, path: str = authz.HEALTH_PATH) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


@pytest.fixture
def health() -> Iterator[Callable[[Callable[[], object]], HealthServer]]:
    servers: list[HealthServer] = []

    def start(probe: Callable[[], object]) -> HealthServer:
        server = HealthServer(probe, 0, host="127.0.0.1")
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def test_healthy_only_when_orthanc_answered(
    health: Callable[[Callable[[], object]], HealthServer],
) -> None:
    # Given Orthanc answering its index query
    asked: list[str] = []
    server = health(lambda: asked.append("/changes?last"))
    # Then /healthz is 200, and it asked
    assert _get(server.port) == (200, {"status": "ok"})
    assert asked == ["/changes?last"]
    # And anything else is not found
    assert _get(server.port, "/system")[0] == 404
    assert _get(server.port, "/healthz/x")[0] == 404


def test_unhealthy_when_orthanc_fails(
    health: Callable[[Callable[[], object]], HealthServer],
) -> None:
    def failing() -> object:
        raise RuntimeError("index database unreachable")

    server = health(failing)
    assert _get(server.port) == (503, {"status": "unavailable"})


def test_liveness_asks_nothing_of_orthanc_or_its_database(
    health: Callable[[Callable[[], object]], HealthServer],
) -> None:
    # Given an index database that is unreachable (a Multi-AZ failover, say)
    asked: list[str] = []

    def failing() -> object:
        asked.append("/changes?last")
        raise RuntimeError("index database unreachable")

    server = health(failing)
    # When the container's check asks for liveness
    # Then the task is alive, and the database was not asked
    assert _get(server.port, authz.LIVENESS_PATH) == (200, {"status": "alive"})
    assert asked == []
    # While the load balancer's check still reports the database down
    assert _get(server.port) == (503, {"status": "unavailable"})
    assert asked == ["/changes?last"]


def test_one_probe_at_a_time(health: Callable[[Callable[[], object]], HealthServer]) -> None:
    # Given a probe that hangs (an index database that does not answer)
    release, entered = threading.Event(), threading.Event()

    def hanging() -> object:
        entered.set()
        return release.wait(10)

    server = health(hanging)
    first: list[tuple[int, dict[str, Any]]] = []
    thread = threading.Thread(target=lambda: first.append(_get(server.port)))
    thread.start()
    assert entered.wait(5)
    # When another check comes meanwhile, Then it is told so at once
    assert _get(server.port) == (503, {"status": "busy"})
    release.set()
    thread.join(5)
    assert first == [(200, {"status": "ok"})]


# ---------------------------------------------------------------- inside Orthanc


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fake_orthanc(config: dict[str, Any]) -> types.SimpleNamespace:
    """The few names of Orthanc's ``orthanc`` module the plugin uses, recording calls."""
    fake = types.SimpleNamespace(
        filters=[],
        callbacks=[],
        logs=[],
        asked=[],
        ChangeType=types.SimpleNamespace(ORTHANC_STARTED=0, ORTHANC_STOPPED=1),
    )
    fake.GetConfiguration = lambda: json.dumps(config)
    fake.RegisterIncomingHttpRequestFilter = fake.filters.append
    fake.RegisterOnChangeCallback = fake.callbacks.append
    fake.LogWarning = fake.logs.append
    fake.RestApiGet = lambda uri: fake.asked.append(uri) or b'{"Seq": 1}'
    return fake


def test_loading_the_script_in_orthanc_registers_the_filter_and_the_health_endpoint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given Orthanc's configuration with a free health port
    port = _free_port()
    orthanc = fake_orthanc(
        {**CONFIG, "DicomPipeline": {**CONFIG["DicomPipeline"], "HealthPort": port}}
    )
    monkeypatch.setitem(sys.modules, "orthanc", orthanc)
    # When Orthanc's Python plugin runs the file
    runpy.run_path(authz.__file__)
    # Then the filter is registered and decides by role
    (allowed,) = orthanc.filters
    assert allowed("/dicom-web/studies", method=POST, ip="x", headers=basic("uploader"))
    assert not allowed("/patients", method=GET, ip="x", headers=basic("uploader"), get={})
    # And one line says what is enforced, with no name or password
    assert orthanc.logs == [
        "dicom-pipeline: authorization for 1 administrator(s) and 1 uploader(s) (STOW-RS to "
        f"/dicom-web/studies only); health check on port {port}, GET /healthz"
    ]
    # And once Orthanc has started, the health endpoint asks Orthanc's index
    (on_change,) = orthanc.callbacks
    on_change(orthanc.ChangeType.ORTHANC_STARTED, 0, "")
    try:
        assert _get(port) == (200, {"status": "ok"})
        assert orthanc.asked == [authz.HEALTH_PROBE] == ["/changes?last"]
    finally:
        on_change(orthanc.ChangeType.ORTHANC_STOPPED, 0, "")
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}{authz.HEALTH_PATH}", timeout=2)


def test_the_script_is_one_ascii_file_of_the_standard_library() -> None:
    # It is copied into the container as it is, and run by the image's Python
    source = Path(authz.__file__).read_text(encoding="utf-8")
    assert source.isascii()
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert imported - {"orthanc"} <= sys.stdlib_module_names | {"__future__"}
