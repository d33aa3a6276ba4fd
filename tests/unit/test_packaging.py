"""pyproject.toml in the form current setuptools reads without deprecation notices."""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def test_the_license_is_an_spdx_expression_with_a_backend_that_reads_it() -> None:
    # setuptools deprecates the `project.license` table ("By 2027-Feb-18 ... no longer
    # supported") and prints a notice on every install; PEP 639's SPDX string needs >= 77.
    config = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))
    assert config["project"]["license"] == "Apache-2.0"
    (backend,) = [Requirement(r) for r in config["build-system"]["requires"]]
    assert backend.name == "setuptools"
    assert all(Version("77") <= Version(spec.version) for spec in backend.specifier)
    assert not backend.specifier.contains("76.1.0")
