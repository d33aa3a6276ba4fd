"""The CDK app: ``python -m cdk.app`` (what ``cdk.json`` runs) synthesizes into ``cdk.out``.

Works without AWS credentials, Docker or network: context comes from ``cdk.json`` and
``cdk.context.json`` (read here, because plain ``python`` does not read them; under the
CDK CLI, ``CDK_CONTEXT_JSON`` still wins), nothing is looked up, and the Lambda is bundled
from the local wheelhouse. cdk-nag's AwsSolutions and HIPAA packs check the whole app; an
unacknowledged finding fails the synth.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import aws_cdk as cdk
from cdk_nag import AwsSolutionsChecks, HIPAASecurityChecks

from cdk.config import ConfigError, DeploymentConfig
from cdk.constants import REPO_ROOT, App
from cdk.nag import acknowledge
from cdk.stack import DicomPipelineStack

__all__ = ["build_app", "file_context", "main"]


def file_context(root: Path = REPO_ROOT) -> dict[str, Any]:
    """The ``context`` of ``cdk.json`` overlaid with ``cdk.context.json``."""
    ctx: dict[str, Any] = {}
    cdk_json = root / "cdk.json"
    if cdk_json.exists():
        ctx.update(json.loads(cdk_json.read_text(encoding="utf-8")).get("context", {}))
    cdk_context = root / "cdk.context.json"
    if cdk_context.exists():
        ctx.update(json.loads(cdk_context.read_text(encoding="utf-8")))
    return ctx


def build_app(
    *, context: dict[str, Any] | None = None, nag: bool = True, **app_kwargs: Any
) -> cdk.App:
    """The app with its one stack; tests pass ``context`` and App options (``outdir`` …)."""
    app_kwargs.setdefault("outdir", os.environ.get("CDK_OUTDIR") or str(App.OUTDIR))
    app = cdk.App(context={**file_context(), **(context or {})}, **app_kwargs)
    config = DeploymentConfig.from_context(app.node.try_get_context)
    stack = DicomPipelineStack(
        app,
        config.stack_name,
        config=config,
        env=cdk.Environment(account=config.account, region=config.region),
        description="dicom-pipeline: Orthanc on ECS, S3 image store, ingestion to DynamoDB",
        termination_protection=config.environment not in {"dev", "test"},
    )
    cdk.Tags.of(app).add("project", App.PROJECT_TAG)
    cdk.Tags.of(app).add("environment", config.environment)
    acknowledge(stack)
    if nag:
        cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app), HIPAASecurityChecks(app))
    return app


def main() -> int:
    """Synthesize; exit 1 (with the report) on any unacknowledged cdk-nag finding, and with
    one line on a missing or bad context value."""
    try:
        app = build_app()
    except ConfigError as exc:
        print(f"ERROR {exc}", file=sys.stderr)
        return 1
    assembly = app.synth()
    manifest = json.loads((Path(assembly.directory) / "manifest.json").read_text())
    if manifest.get("missing"):  # a lookup got a dummy value: never deploy that
        print("ERROR missing context:", [m["key"] for m in manifest["missing"]], file=sys.stderr)
        return 1
    for stack in app.node.children:
        if isinstance(stack, DicomPipelineStack) and not stack.config.certificate.configured:
            print(
                f"WARNING {stack.stack_name}: no certificate configured (context certificate_arn, "
                "or domain_name + hosted_zone_id + hosted_zone_name): CloudFormation will "
                "refuse to deploy this template",
                file=sys.stderr,
            )
        if isinstance(stack, DicomPipelineStack) and not stack.config.dockerhub_secret_arn:
            print(
                f"WARNING {stack.stack_name}: no Docker Hub credentials for the ECR pull-through "
                "cache (context dockerhub_secret_arn): CloudFormation will refuse to deploy this "
                "template",
                file=sys.stderr,
            )
    print(f"synthesized {', '.join(s.stack_name for s in assembly.stacks)} -> {assembly.directory}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
