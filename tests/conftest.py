"""Fixtures shared by every test layer.

* Strict DICOM reading by default: pydicom raises on invalid values in the tests' own reads
  (``lenient_pydicom`` loosens it for one test). The parser must not care: it pins its own
  reading mode, and the unit tests check that.
* Real files no one here wrote: pydicom's bundled ``test_files`` and ``charset_files``,
  found by globbing next to ``pydicom.__file__`` (``get_testdata_files()`` may try the
  network, so it is never used).
* moto for S3, with the standard AWS settings pointed at nothing real.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
from hypothesis import HealthCheck, settings
from pydicom import config as pydicom_config

from pipeline import aws

PYDICOM_DATA = Path(pydicom.__file__).parent / "data"
TEST_FILES = PYDICOM_DATA / "test_files"
CHARSET_FILES = PYDICOM_DATA / "charset_files"

settings.register_profile(
    "default",
    deadline=2000,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.register_profile("ci", parent=settings.get_profile("default"), derandomize=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(autouse=True, scope="session")
def strict_pydicom() -> Iterator[None]:
    """pydicom raises on invalid values unless a test asks for ``lenient_pydicom``."""
    with pydicom_config.strict_reading():
        yield


@pytest.fixture
def lenient_pydicom() -> Iterator[None]:
    """pydicom's default (warn) reading, for tests that read invalid files with pydicom."""
    saved = pydicom_config.settings._reading_validation_mode
    pydicom_config.settings.reading_validation_mode = pydicom_config.WARN
    try:
        yield
    finally:
        pydicom_config.settings._reading_validation_mode = saved


@pytest.fixture(scope="session")
def test_file() -> Callable[[str], Path]:
    """Return the path of a pydicom bundled test file by name (relative to test_files)."""

    def find(name: str) -> Path:
        path = TEST_FILES / name
        if not path.is_file():
            path = CHARSET_FILES / name
        assert path.is_file(), f"pydicom does not bundle {name}"
        return path

    return find


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fake credentials, a fixed region, no endpoint or profile from the developer's shell."""
    for name in (
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
        "AWS_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    aws.reset_clients()
    yield
    aws.reset_clients()


@pytest.fixture
def s3(aws_env: None) -> Iterator[object]:
    """An in-process moto S3; yields the pipeline's own (lazily created) S3 client."""
    from moto import mock_aws

    with mock_aws():
        yield aws.client("s3")


@pytest.fixture
def s3_object(s3: object) -> Callable[..., str]:
    """Factory: put ``body`` at ``key`` in a moto bucket and return its ``s3://`` URI."""
    created: set[str] = set()

    def put(key: str, body: bytes, bucket: str = "images") -> str:
        if bucket not in created:
            s3.create_bucket(Bucket=bucket)  # type: ignore[attr-defined]
            created.add(bucket)
        s3.put_object(Bucket=bucket, Key=key, Body=body)  # type: ignore[attr-defined]
        return f"s3://{bucket}/{key}"

    return put
