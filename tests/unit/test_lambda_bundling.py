"""The Lambda bundle's wheel selection: which platform tags pip accepts for arm64.

The wheels here are built by the test (a one-module package in a zip, as PEP 427 lays it
out) and installed by pip offline (``--no-index``), exactly as the synth installs the
wheelhouse.
"""

from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path

import aws_cdk as cdk
import pytest

from cdk.bundling import LocalPipBundling, WheelhouseMissingError, pip_platform_args
from cdk.constants import Lambda

CP = "cp" + Lambda.PYTHON_VERSION.replace(".", "")


def _digest(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _wheel(house: Path, name: str, platform: str) -> Path:
    """A minimal valid wheel of ``name`` 1.0 for CPython of the Lambda's version."""
    dist = f"{name}-1.0.dist-info"
    files = {
        f"{name}/__init__.py": b"VALUE = 1\n",
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n".encode(),
        f"{dist}/WHEEL": (
            f"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: false\n"
            f"Tag: {CP}-{CP}-{platform}\n"
        ).encode(),
    }
    record = [f"{path},sha256={_digest(data)},{len(data)}" for path, data in files.items()]
    files[f"{dist}/RECORD"] = ("\n".join([*record, f"{dist}/RECORD,,"]) + "\n").encode()
    path = house / f"{name}-1.0-{CP}-{CP}-{platform}.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for member, data in files.items():
            zf.writestr(member, data)
    return path


def _bundle(house: Path, out: Path, requirement: str) -> None:
    LocalPipBundling([requirement], house).try_bundle(
        str(out), image=cdk.DockerImage.from_registry("unused")
    )


def test_pip_is_told_every_accepted_arm64_platform() -> None:
    # Given the arguments the wheel download and the synth's install both pass to pip
    args = pip_platform_args()
    # Then each accepted tag has its own --platform (pip does not expand manylinux_2_x)
    platforms = [args[i + 1] for i, arg in enumerate(args) if arg == "--platform"]
    assert platforms[0] == "manylinux2014_aarch64"
    assert "manylinux_2_28_aarch64" in platforms
    assert all(p.endswith("_aarch64") for p in platforms)
    assert "--only-binary=:all:" in args


@pytest.mark.parametrize("platform", ["manylinux_2_28_aarch64", "manylinux2014_aarch64"])
def test_a_wheel_for_either_manylinux_arm64_platform_is_bundled(
    tmp_path: Path, platform: str
) -> None:
    # Given a wheelhouse whose only wheel of a package is for this platform
    house = tmp_path / "house"
    house.mkdir()
    _wheel(house, "edgepkg", platform)
    out = tmp_path / "asset"
    out.mkdir()
    # When the bundle installs it as the synth does (offline, from the wheelhouse)
    _bundle(house, out, "edgepkg==1.0")
    # Then the package is in the asset
    assert (out / "edgepkg" / "__init__.py").read_text() == "VALUE = 1\n"


def test_a_wheel_for_another_architecture_is_refused(tmp_path: Path) -> None:
    # Given a wheelhouse holding only an x86-64 wheel of the package
    house = tmp_path / "house"
    house.mkdir()
    _wheel(house, "edgepkg", "manylinux_2_28_x86_64")
    out = tmp_path / "asset"
    out.mkdir()
    # When the bundle installs it, then pip finds no wheel for the Lambda and says so
    with pytest.raises(WheelhouseMissingError, match="make wheels"):
        _bundle(house, out, "edgepkg==1.0")
