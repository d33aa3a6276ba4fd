"""Fixtures of the integration layer: real processes on loopback, private folders.

* ``stack``: the local stack with moto's server and a real Orthanc (Debian's packages) whose
  attachments go to the image bucket (``LocalStack(server=True, orthanc=True)``), one per
  session, always stopped.
* ``postgres``: a throwaway PostgreSQL cluster that speaks only TLS, its server certificate
  signed by a CA made here; a second, unrelated CA for the refusal test.
* ``fresh_instance``: one of pydicom's bundled files (no one here wrote them) with new
  Study, Series and SOP Instance UIDs, so every test owns its instances in the shared stack.

Nothing is skipped for want of packages: without them the fixtures fail with one line saying to
run ``make orthanc`` (CI installs them in ``.ci/run``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from integration_support import (
    CertificateAuthority,
    Instance,
    Postgres,
    PostgresCluster,
    fresh_copy,
)

from pipeline.local.stack import LocalStack


@pytest.fixture(scope="session")
def stack() -> Iterator[LocalStack]:
    """moto's server, the pipe, the real handler, and Orthanc; one per session."""
    with LocalStack(
        server=True, orthanc=True, lambda_env={"POWERTOOLS_LOG_LEVEL": "WARNING"}
    ) as running:
        yield running


@pytest.fixture
def orthanc(stack: LocalStack) -> requests.Session:
    """An HTTP session on Orthanc's REST API with the run's credentials."""
    assert stack.info is not None and stack.info.orthanc_username
    session = requests.Session()
    session.auth = (stack.info.orthanc_username, stack.info.orthanc_password or "")
    return session


@pytest.fixture
def dicomweb(stack: LocalStack, orthanc: requests.Session) -> DICOMwebClient:
    """A DICOMweb client on Orthanc's ``/dicom-web`` with the run's credentials."""
    assert stack.info is not None and stack.info.dicomweb_url
    return DICOMwebClient(url=stack.info.dicomweb_url, session=orthanc)


@pytest.fixture
def fresh_instance() -> Callable[[str], Instance]:
    """``make(name)``: pydicom's bundled ``name`` with new Study/Series/SOP Instance UIDs."""
    return fresh_copy


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Postgres]:
    """A PostgreSQL cluster on a free loopback port that accepts TLS connections only."""
    certs = tmp_path_factory.mktemp("certs")
    ca = CertificateAuthority.create("dicom-pipeline test CA")
    other = CertificateAuthority.create("some other CA")
    cluster = PostgresCluster(ca)
    try:
        cluster.start()
        yield Postgres(
            cluster=cluster,
            ca_pem=ca.write(certs / "ca.pem"),
            other_ca_pem=other.write(certs / "other-ca.pem"),
        )
    finally:
        cluster.stop()
