"""The RDS root CA Orthanc trusts for ``sslmode=verify-full``, kept in the repository.

``cdk/rds_certificates/<ca>/<region>.pem`` holds the root certificate of the RDS CA the
database uses (:data:`cdk.constants.Database.CA_CERTIFICATE`, ``rds-ca-rsa2048-g1``) in each
region: the one certificate libpq needs to verify the server's chain (the server presents
its own certificate and the intermediate). The stack passes the region's root to the Orthanc
task as an SSM parameter, so a task start downloads nothing and synth reads only this folder.

Where the files come from: the regional bundles AWS publishes at
``https://truststore.pki.rds.amazonaws.com/<region>/<region>-bundle.pem`` (and the
``global-bundle.pem`` next to them). ``python -m cdk.rds_ca update [REGION ...]`` downloads
them again and rewrites the files; ``--check`` only compares (exit 1 on a difference);
``--from FILE`` reads a bundle already on disk instead of downloading.
"""

from __future__ import annotations

import argparse
import re
import sys
import urllib.request
from collections.abc import Iterable, Sequence
from pathlib import Path

from cdk.config import ConfigError
from cdk.constants import REPO_ROOT, Database

__all__ = ["CERTIFICATES", "certificate_path", "region_root", "roots_in", "select_roots"]

CERTIFICATES = REPO_ROOT / "cdk" / "rds_certificates"
BUNDLE_URL = "https://truststore.pki.rds.amazonaws.com/{region}/{region}-bundle.pem"
GLOBAL_BUNDLE_URL = "https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem"
#: The root's common name for each RDS CA identifier (``Amazon RDS <region> Root CA <name>``).
ROOT_NAMES = {
    "rds-ca-rsa2048-g1": "RSA2048 G1",
    "rds-ca-rsa4096-g1": "RSA4096 G1",
    "rds-ca-ecc384-g1": "ECC384 G1",
}
_PEM = re.compile(r"-----BEGIN CERTIFICATE-----\r?\n.*?-----END CERTIFICATE-----", re.S)
_ROOT = re.compile(r"^Amazon RDS ([a-z0-9-]+) Root CA (.+)$")


def _shown(path: Path) -> Path:
    return path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path


def certificate_path(region: str, ca: str = Database.CA_CERTIFICATE) -> Path:
    """Where the root of ``ca`` for ``region`` is kept."""
    return CERTIFICATES / ca / f"{region}.pem"


def region_root(region: str, ca: str = Database.CA_CERTIFICATE) -> str:
    """The PEM text of the root of ``ca`` in ``region``.

    Raises
    ------
    ConfigError
        The repository has no root for that region (a region added after the files were
        written): run ``python -m cdk.rds_ca update <region>`` with network access.
    """
    path = certificate_path(region, ca)
    if not path.is_file():
        raise ConfigError(
            f"no RDS CA certificate for region {region!r} ({_shown(path)}): "
            f"run `.venv/bin/python -m cdk.rds_ca update {region}` once with network access"
        )
    text = path.read_text(encoding="ascii")
    if len(_PEM.findall(text)) != 1:
        raise ConfigError(f"{path} must hold exactly one PEM certificate")
    return text


def roots_in(bundle: str) -> Iterable[tuple[str, str, str]]:
    """``(region, CA name, PEM)`` of every RDS regional root in a PEM ``bundle``."""
    from cryptography import x509  # a tool-only dependency (installed with moto)
    from cryptography.hazmat.primitives.serialization import Encoding

    for block in _PEM.findall(bundle):
        cert = x509.load_pem_x509_certificate(block.encode("ascii"))
        (name,) = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        match = _ROOT.match(str(name.value))
        if match and cert.subject == cert.issuer:
            yield match[1], match[2], cert.public_bytes(Encoding.PEM).decode("ascii")


def select_roots(bundle: str, ca: str = Database.CA_CERTIFICATE) -> dict[str, str]:
    """``{region: PEM}`` of the roots of ``ca`` in ``bundle``."""
    wanted = ROOT_NAMES[ca]
    return {region: pem for region, name, pem in roots_in(bundle) if name == wanted}


def _download(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as response:  # HTTPS, system CAs
        return str(response.read().decode("ascii"))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m cdk.rds_ca update [--check] [--from FILE] [REGION ...]``."""
    parser = argparse.ArgumentParser(prog="python -m cdk.rds_ca")
    sub = parser.add_subparsers(dest="command", required=True)
    update = sub.add_parser("update", help="(re)write the regional roots from AWS's bundles")
    update.add_argument("regions", nargs="*", help="default: every region already kept")
    update.add_argument("--from", dest="source", type=Path, help="a PEM bundle on disk")
    update.add_argument("--check", action="store_true", help="compare only; exit 1 if different")
    update.add_argument("--ca", default=Database.CA_CERTIFICATE, choices=sorted(ROOT_NAMES))
    args = parser.parse_args(argv)

    folder = CERTIFICATES / args.ca
    regions = args.regions or sorted(p.stem for p in folder.glob("*.pem"))
    if args.source:
        found = select_roots(args.source.read_text(encoding="ascii"), args.ca)
    elif args.regions:
        found = {}
        for region in regions:
            found |= select_roots(_download(BUNDLE_URL.format(region=region)), args.ca)
    else:
        found = select_roots(_download(GLOBAL_BUNDLE_URL), args.ca)
    regions = regions or sorted(found)
    status = 0
    for region in regions:
        path = certificate_path(region, args.ca)
        pem = found.get(region)
        if pem is None:
            print(f"{region}: no {ROOT_NAMES[args.ca]} root in the bundle", file=sys.stderr)
            status = 1
        elif args.check:
            same = path.is_file() and path.read_text(encoding="ascii") == pem
            print(f"{region}: {'same' if same else 'DIFFERENT'}")
            status |= 0 if same else 1
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(pem, encoding="ascii")
            print(f"{region}: written {_shown(path)}")
    return status


if __name__ == "__main__":
    sys.exit(main())
