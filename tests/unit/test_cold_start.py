"""What a cold start of the parse handler imports, in a Lambda-like environment.

The handler keeps tracing (the X-Ray SDK patches botocore, whose S3, DynamoDB and SQS calls
become subsegments) without paying for what it never calls: the SDK's other patches (httpx,
requests, sqlite3, ... whatever is installed), pydantic-settings' sources, or pydantic itself
(about 60 ms of CPU: the settings and the S3 event models are msgspec Structs). The CPU time
against ``import boto3, pydicom`` is measured side by side in ``make bench``
(tests/bench/bench_cold_start.py, docs/performance.md "Cold start").
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROBE = """
import json, sys
class BlockNumpy:  # not in the Lambda bundle
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "numpy":
            raise ModuleNotFoundError(name)
sys.meta_path.insert(0, BlockNumpy())
import lambdas.parse_batch as handler
from aws_lambda_powertools.tracing import Tracer
print(json.dumps({
    "modules": sorted(sys.modules),
    "tracer_enabled": not handler.tracer._config["disabled"],
}))
"""


def _imported() -> dict[str, object]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("POWERTOOLS_")},
        # What the Lambda runtime sets (the X-Ray SDK and Powertools read them)
        "LAMBDA_TASK_ROOT": str(ROOT),
        "AWS_LAMBDA_FUNCTION_NAME": "dicom-pipeline-parse",
        "AWS_REGION": "us-east-1",
    }
    done = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True,
        check=True, timeout=120,
    )  # fmt: skip
    result: dict[str, object] = json.loads(done.stdout.splitlines()[-1])
    return result


def test_the_handler_traces_botocore_only_and_reads_settings_without_pydantic_settings() -> None:
    # Given a Lambda-like environment, When the parse handler is imported
    probe = _imported()
    modules = set(probe["modules"])  # type: ignore[call-overload]
    # Then tracing is on and botocore is patched
    assert probe["tracer_enabled"] is True
    assert "aws_xray_sdk.ext.botocore.patch" in modules
    # and nothing else the X-Ray SDK could patch, nor pydantic-settings, was imported
    patched = {m.split(".")[2] for m in modules if m.startswith("aws_xray_sdk.ext.")}
    assert patched <= {"botocore", "boto_utils", "util"}, patched
    assert "pydantic_settings" not in modules


def test_the_handler_imports_no_pydantic_and_patches_botocore_when_traced() -> None:
    # Given a Lambda-like environment without numpy (as in the bundle), When the handler is
    # imported
    modules = set(_imported()["modules"])  # type: ignore[call-overload]
    # Then neither pydantic nor its core was loaded: validation is msgspec's
    assert not {m for m in modules if m.partition(".")[0] in {"pydantic", "pydantic_core"}}
    assert "msgspec" in modules
    # and the tracer still patches botocore through the X-Ray SDK's recorder
    assert {"aws_xray_sdk.core", "aws_xray_sdk.ext.botocore.patch"} <= modules
    # on wrapt 1 (pyproject pins it below 2), whose import, unlike wrapt 2's, needs no asyncio
    assert "asyncio" not in modules
