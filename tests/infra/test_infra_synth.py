"""One real synth: local Lambda bundling (offline, no Docker), cdk-nag and CloudFormation
validation on, as ``make synth`` does it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from infra_support import DEV

from cdk.app import build_app
from cdk.bundling import lambda_requirements, wheelhouse
from cdk.constants import Lambda

#: ELF header: e_machine (offset 18, little endian) of AArch64.
EM_AARCH64 = 183


@pytest.fixture(scope="module")
def synthesized(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not any(wheelhouse().glob("*.whl")):
        pytest.fail(f"no wheels in {wheelhouse()}: run `make wheels` (needs the network once)")
    out = tmp_path_factory.mktemp("synth")
    with pytest.MonkeyPatch.context() as mp:
        # Any attempt to reach the network during the synth fails.
        for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
            mp.setenv(var, "http://127.0.0.1:9")
        mp.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
        mp.delenv("CDK_CONTEXT_JSON", raising=False)
        build_app(context=DEV, outdir=str(out)).synth()  # nag on: raises on an open finding
    return out


def _asset(out: Path) -> Path:
    (asset,) = [p.parent.parent for p in out.glob("asset.*/lambdas/parse_batch.py")]
    return asset


def test_synth_passes_nag_and_cloudformation_validation(synthesized: Path) -> None:
    report = json.loads((synthesized / "validation-report.json").read_text())
    assert all(p["conclusion"] == "success" for p in report["pluginReports"]), report
    manifest = json.loads((synthesized / "manifest.json").read_text())
    assert not manifest.get("missing")


def test_lambda_bundle_holds_our_code_and_arm64_wheels_only(synthesized: Path) -> None:
    asset = _asset(synthesized)
    # Our code: the handler and the library it calls (not the local stack).
    assert (asset / "lambdas" / "parse_batch.py").is_file()
    assert (asset / "pipeline" / "workflow" / "batch.py").is_file()
    assert not (asset / "pipeline" / "local").exists()
    assert not list(asset.rglob("__pycache__"))
    # Third-party packages for the Lambda's Python on arm64.
    tag = Lambda.PYTHON_VERSION.replace(".", "")
    (core,) = asset.glob(f"msgspec/_core.cpython-{tag}-aarch64-linux-gnu.so")
    header = core.read_bytes()[:20]
    assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == EM_AARCH64
    for package in ("pydicom", "aws_lambda_powertools", "aws_xray_sdk", "msgspec"):
        assert (asset / package).is_dir(), package
    # Validation is msgspec's: pydantic (a third of the cold start) is not bundled.
    assert not list(asset.glob("pydantic*")), list(asset.glob("pydantic*"))
    # What the runtime ships is left out.
    for package in ("boto3", "botocore", "s3transfer", "urllib3", "dateutil"):
        assert not (asset / package).exists(), package


def test_lambda_requirements_follow_the_project_pins() -> None:
    reqs = lambda_requirements()
    assert "pydicom==3.0.2" in reqs
    assert any(r.startswith("aws-lambda-powertools[tracer]") for r in reqs)
    assert not any(r.startswith("boto3") for r in reqs)
    # wrapt 2 would cost the cold start its asyncio import (docs/performance.md)
    assert "wrapt>=1.17,<2" in reqs
