"""The RDS root CAs kept in the repository: what they are, and how the stack picks one."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import pytest
from cryptography import x509  # installed with moto (the local extra): tests only

from cdk import rds_ca
from cdk.config import ConfigError
from cdk.constants import Database

FOLDER = rds_ca.CERTIFICATES / Database.CA_CERTIFICATE
FILES = sorted(FOLDER.glob("*.pem"))


def test_the_pinned_ca_has_roots_for_the_default_region_and_more() -> None:
    regions = {p.stem for p in FILES}
    assert {"eu-central-1", "us-east-1", "eu-west-1"} <= regions
    assert Database.CA_CERTIFICATE in rds_ca.ROOT_NAMES


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_each_file_is_the_regions_self_signed_root_of_the_pinned_ca(path: Path) -> None:
    # Given one file of the folder
    text = path.read_text(encoding="ascii")
    cert = x509.load_pem_x509_certificate(text.encode("ascii"))
    # Then it is exactly one certificate: that region's root of the CA the database uses
    assert text.count("BEGIN CERTIFICATE") == 1
    (name,) = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    assert name.value == f"Amazon RDS {path.stem} Root CA RSA2048 G1"
    assert cert.issuer == cert.subject
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca is True
    cert.verify_directly_issued_by(cert)  # the self-signature holds
    # And it stays valid for years (RSA2048 G1 roots end in 2061)
    now = dt.datetime.now(dt.UTC)
    assert cert.not_valid_before_utc < now
    assert cert.not_valid_after_utc > now + dt.timedelta(days=5 * 365)
    # And it fits a standard SSM parameter
    assert len(text.encode()) <= 4096
    assert rds_ca.region_root(path.stem) == text


def test_a_region_without_a_root_fails_the_synth_with_the_command_to_run() -> None:
    with pytest.raises(ConfigError, match=r"python -m cdk\.rds_ca update xx-nowhere-1"):
        rds_ca.region_root("xx-nowhere-1")


def test_update_rewrites_and_checks_the_roots_from_a_bundle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a bundle made of two kept roots plus an unrelated certificate of the same CA family
    bundle = tmp_path / "bundle.pem"
    eu, us = FOLDER / "eu-central-1.pem", FOLDER / "us-east-1.pem"
    bundle.write_text(eu.read_text() + us.read_text(), encoding="ascii")
    copy = tmp_path / "certs"
    monkeypatch.setattr(rds_ca, "CERTIFICATES", copy)
    # When update reads it (no network) for one region
    assert rds_ca.main(["update", "--from", str(bundle), "eu-central-1"]) == 0
    # Then that region's file is written exactly as kept in the repository
    written = copy / Database.CA_CERTIFICATE / "eu-central-1.pem"
    assert written.read_text() == eu.read_text()
    assert not (copy / Database.CA_CERTIFICATE / "us-east-1.pem").exists()
    # And --check says "same" (exit 0), and "DIFFERENT" (exit 1) after a change
    assert rds_ca.main(["update", "--check", "--from", str(bundle)]) == 0
    shutil.copy(us, written)
    assert rds_ca.main(["update", "--check", "--from", str(bundle)]) == 1
    assert "eu-central-1: DIFFERENT" in capsys.readouterr().out
    # And a region the bundle lacks is reported, not invented
    assert rds_ca.main(["update", "--from", str(bundle), "xx-nowhere-1"]) == 1
