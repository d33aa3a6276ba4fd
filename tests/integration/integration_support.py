"""Helpers of the integration layer: a test CA and a throwaway PostgreSQL cluster over TLS.

The cluster is Debian's PostgreSQL (``/usr/lib/postgresql/<version>/bin``) in a private
temporary folder, on a free loopback port, accepting only TLS connections with a password
(``hostssl`` + scram-sha-256; no plain ``host`` line). ``initdb`` refuses to run as root, so
as root every PostgreSQL program runs as the ``postgres`` user.
"""

from __future__ import annotations

import datetime
import io
import ipaddress
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydicom.uid import generate_uid

from pipeline.dicom.samples import pydicom_files_dir

__all__ = [
    "CertificateAuthority",
    "Instance",
    "Postgres",
    "PostgresCluster",
    "free_port",
    "fresh_copy",
    "postgres_bin",
]


@dataclass
class Instance:
    """A DICOM instance of one test: its dataset and encoded bytes."""

    dataset: pydicom.Dataset
    data: bytes

    @property
    def sop_instance_uid(self) -> str:
        return str(self.dataset.SOPInstanceUID)


def fresh_copy(name: str) -> Instance:
    """pydicom's bundled file ``name`` with new Study, Series and SOP Instance UIDs, so each
    test owns its instances in a shared Orthanc (the files themselves are not ours)."""
    ds = pydicom.dcmread(pydicom_files_dir() / name)
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return Instance(dataset=ds, data=buffer.getvalue())


def free_port() -> int:
    """A TCP port free on every interface right now."""
    with socket.socket() as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


@dataclass
class CertificateAuthority:
    """A self-signed CA that issues server certificates (ECDSA P-256, one day)."""

    name: str
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def create(cls, name: str) -> CertificateAuthority:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .sign(key, hashes.SHA256())
        )
        return cls(name=name, key=key, cert=cert)

    def write(self, path: Path) -> Path:
        """The CA certificate as PEM (what a client trusts)."""
        path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        return path

    def issue_server(self, common_name: str = "127.0.0.1") -> tuple[bytes, bytes]:
        """A server certificate for 127.0.0.1 and localhost: (certificate PEM, key PEM)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                        x509.DNSName("localhost"),
                    ]
                ),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return cert.public_bytes(serialization.Encoding.PEM), key_pem


def postgres_bin() -> Path | None:
    """Debian's PostgreSQL programs (the newest installed version), or None."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    return found[-1].parent if found else None


class PostgresCluster:
    """A throwaway cluster with one database ``orthanc`` owned by the user ``orthanc``."""

    user = "orthanc"
    database = "orthanc"

    def __init__(self, ca: CertificateAuthority) -> None:
        bin_dir = postgres_bin()
        if bin_dir is None:
            raise RuntimeError("PostgreSQL is not installed: run `make orthanc`")
        self.bin = bin_dir
        self.ca = ca
        self.port = free_port()
        self.password = secrets.token_urlsafe(18)
        self.base = Path(tempfile.mkdtemp(prefix="dicom-pipeline-pg-"))
        self.data = self.base / "data"
        self._as_postgres = os.geteuid() == 0
        self._server: subprocess.Popen[bytes] | None = None

    def _run(self, *argv: str | Path, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        extra: dict[str, Any] = (
            {"user": "postgres", "group": "postgres"} if self._as_postgres else {}
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        return subprocess.run(
            [str(a) for a in argv],
            capture_output=True,
            text=True,
            check=True,
            env=env,
            cwd=self.base,
            timeout=60,
            **extra,
            **kwargs,
        )

    def _own(self, path: Path, mode: int) -> None:
        os.chmod(path, mode)
        if self._as_postgres:
            shutil.chown(path, "postgres", "postgres")

    def start(self) -> None:
        """initdb, TLS files, pg_hba (TLS only), start, create the database."""
        self._own(self.base, 0o700)
        pwfile = self.base / "pw"
        pwfile.write_text(self.password + "\n")
        self._own(pwfile, 0o600)
        self._run(
            self.bin / "initdb",
            "-D", self.data,
            "-U", self.user,
            f"--pwfile={pwfile}",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        )  # fmt: skip
        cert, key = self.ca.issue_server()
        for name, data in (("server.crt", cert), ("server.key", key)):
            (self.base / name).write_bytes(data)
            self._own(self.base / name, 0o600)
        hba = self.data / "pg_hba.conf"
        hba.write_text(
            "local   all  all                 trust\n"
            "hostssl all  all  127.0.0.1/32    scram-sha-256\n"
        )
        self._own(hba, 0o600)
        options = " ".join(
            [
                f"-p {self.port}",
                f"-k {self.base}",
                "-c listen_addresses=127.0.0.1",
                "-c ssl=on",
                f"-c ssl_cert_file={self.base / 'server.crt'}",
                f"-c ssl_key_file={self.base / 'server.key'}",
                "-c fsync=off",
                "-c synchronous_commit=off",
                "-c full_page_writes=off",
            ]
        )
        # The server runs in the foreground as this process's child, dying with it even on
        # SIGKILL (setpriv --pdeathsig, set after the switch to the postgres user, which
        # would clear it); pg_ctl would daemonize it out of reach.
        user = (
            ["--reuid", "postgres", "--regid", "postgres", "--init-groups"]
            if self._as_postgres
            else []
        )
        log = open(self.base / "server.log", "wb")  # noqa: SIM115 - the server's, until stop()
        self._server = subprocess.Popen(
            ["setpriv", *user, "--pdeathsig", "KILL", "--", str(self.bin / "postgres"),
             "-D", str(self.data), *options.split()],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.base,
            env={k: v for k, v in os.environ.items() if not k.startswith("PG")},
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + 30
        while True:
            ready = subprocess.run(
                [str(self.bin / "pg_isready"), "-h", str(self.base), "-p", str(self.port)],
                capture_output=True,
                check=False,
            )
            if ready.returncode == 0:
                break
            if self._server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL did not start: {self.log()[-2000:]}")
            time.sleep(0.1)
        self._run(
            self.bin / "createdb", "-h", self.base, "-p", str(self.port), "-U", self.user,
            self.database,
        )  # fmt: skip

    def uri(self, root_cert: Path, *, sslmode: str = "verify-full") -> str:
        """The libpq URI Orthanc connects with (TLS verified against ``root_cert``)."""
        return (
            f"postgresql://{self.user}:{self.password}@127.0.0.1:{self.port}/{self.database}"
            f"?sslmode={sslmode}&sslrootcert={root_cert}"
        )

    def run_sql(self, query: str) -> str:
        """Run ``query`` as the user orthanc over the Unix socket; unaligned output."""
        done = self._run(
            self.bin / "psql", "-h", self.base, "-p", str(self.port), "-U", self.user,
            "-d", self.database, "-At", "-c", query,
        )  # fmt: skip
        return done.stdout

    def log(self) -> str:
        """The server's log."""
        path = self.base / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        """Stop the server at once and remove its folder (idempotent)."""
        server, self._server = self._server, None
        if server is not None and server.poll() is None:
            server.send_signal(signal.SIGQUIT)  # PostgreSQL's immediate shutdown
            try:
                server.wait(20)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        shutil.rmtree(self.base, ignore_errors=True)


@dataclass
class Postgres:
    """A running cluster, the CA that signed its certificate, and an unrelated CA."""

    cluster: PostgresCluster
    ca_pem: Path
    other_ca_pem: Path
