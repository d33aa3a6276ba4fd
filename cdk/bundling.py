"""Bundle the parse Lambda locally: no Docker, and no network at synth time.

The Lambda's third-party packages are the project's own runtime pins (``pyproject.toml``,
``[project].dependencies``) minus what the Lambda runtime already ships (boto3 and friends).
``python -m cdk.bundling wheels`` (``make wheels``, run by ``make install`` while the network
is there) downloads their manylinux aarch64 wheels (manylinux2014, or ``manylinux_2_x`` up to
2.28) for the Lambda's Python into ``.local/wheels/``; at synth time pip installs them from
there with ``--no-index``, and the ``pipeline`` and ``lambdas`` packages are copied in next to
them.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aws_cdk as cdk
import jsii
from aws_cdk import aws_lambda as lambda_

from cdk.constants import REPO_ROOT, Lambda

__all__ = [
    "LocalPipBundling",
    "WheelhouseMissingError",
    "download_wheels",
    "lambda_code",
    "lambda_runtime",
    "lambda_requirements",
    "pip_platform_args",
    "wheelhouse",
]

#: Source packages copied into the asset, and what is left out of them.
SOURCE_PACKAGES = ("pipeline", "lambdas")
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "local")

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*(.*)$")


class WheelhouseMissingError(RuntimeError):
    """The local wheelhouse lacks what the bundle needs (run ``make wheels``)."""


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lambda_requirements(pyproject: Path = REPO_ROOT / "pyproject.toml") -> list[str]:
    """Requirement strings of the Lambda bundle, derived from the project's pins.

    Examples
    --------
    >>> any(r.startswith("pydicom==") for r in lambda_requirements())
    True
    """
    deps: list[str] = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"][
        "dependencies"
    ]
    provided = {_canonical(n) for n in Lambda.RUNTIME_PROVIDED}
    out = []
    for dep in deps:
        match = _NAME.match(dep)
        if not match:
            raise ValueError(f"cannot read the requirement {dep!r}")
        name, extras, rest = match.groups()
        if _canonical(name) in provided:
            continue
        extra = Lambda.EXTRAS.get(_canonical(name))
        if extra:
            extras = f"[{extra}]" if not extras else extras[:-1] + f",{extra}]"
        out.append(f"{name}{extras or ''}{rest}".strip())
    return out


def wheelhouse() -> Path:
    """The wheel directory for the Lambda's platform and Python version."""
    tag = f"{Lambda.PLATFORM}-cp{Lambda.PYTHON_VERSION.replace('.', '')}"
    return Lambda.WHEELHOUSE / tag


def pip_platform_args() -> list[str]:
    """What tells pip the Lambda's platform: one ``--platform`` per accepted wheel tag
    (:attr:`Lambda.PLATFORMS`), CPython of the Lambda's version, binary wheels only.

    Examples
    --------
    >>> "manylinux_2_28_aarch64" in pip_platform_args()
    True
    """
    platforms = [arg for tag in Lambda.PLATFORMS for arg in ("--platform", tag)]
    return [
        *platforms,
        "--implementation",
        "cp",
        "--python-version",
        Lambda.PYTHON_VERSION,
        "--only-binary=:all:",
    ]


def download_wheels(dest: Path | None = None) -> Path:
    """Fill the wheelhouse (needs the network; idempotent, pip skips what is there)."""
    target = dest or wheelhouse()
    target.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--disable-pip-version-check",
            "--dest",
            str(target),
            *pip_platform_args(),
            *lambda_requirements(),
        ],
        check=True,
    )
    return target


def _remove_distribution(site: Path, name: str) -> None:
    """Delete an installed distribution from ``site`` using its RECORD (what pip wrote)."""
    want = _canonical(name)
    root = site.resolve()
    emptied: set[Path] = set()
    for info in site.glob("*.dist-info"):
        if _canonical(info.name[: -len(".dist-info")].rsplit("-", 1)[0]) != want:
            continue
        record = info / "RECORD"
        lines = record.read_text(encoding="utf-8").splitlines() if record.exists() else []
        for line in lines:
            path = (site / line.split(",", 1)[0]).resolve()
            if path.is_relative_to(root) and path.is_file():
                path.unlink()
                emptied.add(path.parent)
        shutil.rmtree(info, ignore_errors=True)
    for start in sorted(emptied, key=lambda p: len(p.parts), reverse=True):
        folder = start
        while folder != root and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
            folder = folder.parent


def source_hash() -> str:
    """Hash of everything that goes into the bundle: sources, pins, runtime, wheels."""
    digest = hashlib.sha256()
    for line in (*lambda_requirements(), Lambda.PYTHON_VERSION, *Lambda.PLATFORMS):
        digest.update(line.encode() + b"\n")
    for package in SOURCE_PACKAGES:
        for path in sorted((REPO_ROOT / package).rglob("*")):
            rel = path.relative_to(REPO_ROOT)
            if path.is_file() and "__pycache__" not in rel.parts and path.suffix != ".pyc":
                digest.update(str(rel).encode() + b"\0" + path.read_bytes())
    house = wheelhouse()
    if house.is_dir():
        for wheel in sorted(house.glob("*.whl")):
            digest.update(wheel.name.encode() + b"\n")
    return digest.hexdigest()


@jsii.implements(cdk.ILocalBundling)
class LocalPipBundling:
    """``cdk.ILocalBundling``: CDK calls :meth:`try_bundle` instead of running Docker.

    CDK passes only ``image`` to ``try_bundle``, so every setting lives on the instance.
    A failure raises (returning False would make CDK fall back to Docker).
    """

    def __init__(self, requirements: Sequence[str], house: Path) -> None:
        self._requirements = list(requirements)
        self._house = house

    def try_bundle(self, output_dir: str, *, image: cdk.DockerImage, **_options: Any) -> bool:
        out = Path(output_dir)
        if not any(self._house.glob("*.whl")):
            raise WheelhouseMissingError(
                f"no wheels in {self._house}: run `make wheels` once (it needs the network)"
            )
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--no-compile",
                "--no-index",
                "--find-links",
                str(self._house),
                "--target",
                str(out),
                *pip_platform_args(),
                *self._requirements,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise WheelhouseMissingError(
                f"pip could not install the Lambda's packages from {self._house} "
                f"(run `make wheels`): {result.stderr.strip()[-2000:]}"
            )
        for name in Lambda.RUNTIME_PROVIDED:
            _remove_distribution(out, name)
        for package in SOURCE_PACKAGES:
            shutil.copytree(REPO_ROOT / package, out / package, ignore=_IGNORE, dirs_exist_ok=True)
        return True


def lambda_runtime() -> lambda_.Runtime:
    """The Lambda runtime of :attr:`Lambda.PYTHON_VERSION` (``Runtime.PYTHON_3_14``)."""
    runtime: lambda_.Runtime = getattr(
        lambda_.Runtime, "PYTHON_" + Lambda.PYTHON_VERSION.replace(".", "_")
    )
    return runtime


def lambda_code() -> lambda_.Code:
    """The parse Lambda's code asset, bundled locally at synth time."""
    return lambda_.Code.from_asset(
        str(REPO_ROOT / "lambdas"),
        asset_hash_type=cdk.AssetHashType.CUSTOM,
        asset_hash=source_hash(),
        bundling=cdk.BundlingOptions(
            image=lambda_runtime().bundling_image,  # never pulled: local bundling always answers
            local=LocalPipBundling(lambda_requirements(), wheelhouse()),
        ),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m cdk.bundling wheels|requirements``."""
    parser = argparse.ArgumentParser(prog="python -m cdk.bundling")
    parser.add_argument("command", choices=["wheels", "requirements"])
    args = parser.parse_args(argv)
    if args.command == "wheels":
        print(download_wheels())
    else:
        print("\n".join(lambda_requirements()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
