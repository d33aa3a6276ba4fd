"""Orthanc's index in PostgreSQL over TLS, the certificate verified (``sslmode=verify-full``).

As deployed (RDS, the region's CA), here with a throwaway cluster whose certificate a CA
made by the test signed: the index survives a restart, and a CA that did not sign the
server's certificate is refused.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests
from integration_support import Instance, Postgres

from pipeline.local.stack import LocalStack
from pipeline.orthanc.local import Installation, LocalOrthanc, OrthancError


def _orthanc(stack: LocalStack, uri: str, **options: Any) -> LocalOrthanc:
    return LocalOrthanc(
        bucket=stack.bucket, s3_endpoint=stack.endpoint_url or "", postgresql_uri=uri, **options
    )


def _session(orthanc: LocalOrthanc) -> requests.Session:
    assert orthanc.info is not None
    session = requests.Session()
    session.auth = (orthanc.info.username, orthanc.info.password)
    return session


def _tls_connections(postgres: Postgres) -> list[tuple[str, str]]:
    """(ssl, version) of every other connection of the user orthanc, from pg_stat_ssl."""
    cluster = postgres.cluster
    query = (
        "SELECT s.ssl, coalesce(s.version, '') FROM pg_stat_ssl s "
        "JOIN pg_stat_activity a USING (pid) "
        "WHERE a.usename = 'orthanc' AND a.pid <> pg_backend_pid()"
    )
    out = cluster.run_sql(query)
    return [tuple(line.split("|")) for line in out.splitlines() if line]  # type: ignore[misc]


def test_the_index_in_postgresql_over_verified_tls_survives_a_restart(
    stack: LocalStack, postgres: Postgres, fresh_instance: Callable[[str], Instance]
) -> None:
    uri = postgres.cluster.uri(postgres.ca_pem, sslmode="verify-full")
    instance = fresh_instance("CT_small.dcm")
    # Given Orthanc with its index in PostgreSQL, verifying the server against the test's CA
    first = _orthanc(stack, uri)
    with first:
        # (every connection it holds is TLS)
        connections = _tls_connections(postgres)
        assert connections and all(ssl == "t" for ssl, _ in connections), connections
        # When an instance is stored and Orthanc restarts
        stored = _session(first).post(f"{first.url}/instances", data=instance.data)
        stored.raise_for_status()
        instance_id = stored.json()["ID"]
    second = _orthanc(stack, uri)
    with second:
        # Then the new process finds it in the index and reads its file back from S3
        session = _session(second)
        assert instance_id in session.get(f"{second.url}/instances").json()
        tags = session.get(f"{second.url}/instances/{instance_id}/simplified-tags").json()
        assert tags["SOPInstanceUID"] == instance.sop_instance_uid
        assert session.get(f"{second.url}/instances/{instance_id}/file").content == instance.data


class _FailFast(LocalOrthanc):
    """One connection attempt instead of the PostgreSQL plugin's ten, five seconds apart."""

    def configuration(self, folder: Path, installation: Installation) -> dict[str, Any]:
        config = super().configuration(folder, installation)
        config["PostgreSQL"].update(MaximumConnectionRetries=0, ConnectionRetryInterval=1)
        return config


def test_a_server_certificate_from_another_ca_is_refused(
    stack: LocalStack, postgres: Postgres
) -> None:
    # Given Orthanc told to trust only a CA that did not sign the server's certificate
    uri = postgres.cluster.uri(postgres.other_ca_pem, sslmode="verify-full")
    orthanc = _FailFast(
        bucket=stack.bucket, s3_endpoint=stack.endpoint_url or "", postgresql_uri=uri
    )
    seen = len(postgres.cluster.log())
    # When it starts
    try:
        orthanc.start()
    except OrthancError as exc:
        failure = str(exc)
    else:  # pragma: no cover - the assertion below reports it
        orthanc.stop()
        failure = ""
    # Then it never serves: it exits because the database is unavailable
    assert "exited" in failure and "database" in failure.lower(), failure
    # and the server saw the TLS handshake aborted by the client for an unknown CA
    assert "unknown ca" in postgres.cluster.log()[seen:]
    assert orthanc.pid is None


def test_postgresql_refuses_connections_without_tls(postgres: Postgres) -> None:
    # Given the cluster's pg_hba.conf (hostssl only)
    cluster = postgres.cluster
    # When a client connects over TCP without TLS
    done = subprocess.run(
        [
            str(cluster.bin / "psql"),
            f"postgresql://{cluster.user}:{cluster.password}@127.0.0.1:{cluster.port}"
            f"/{cluster.database}?sslmode=disable",
            "-c",
            "SELECT 1",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    # Then the server refuses it
    assert done.returncode != 0
    assert "no pg_hba.conf entry" in done.stderr, done.stderr
