"""Fixtures of the infra layer: CDK synthesis and cdk-nag, offline, no Docker.

Speed: asset bundling is skipped (context ``aws:cdk:bundling-stacks: []``) and so is
aws-cdk-lib's built-in CloudFormation validation, except in the one test that synthesizes
the app for real (``test_infra_synth.py``). The whole app is built once per session; each
construct is also synthesized alone in a bare stack.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aws_cdk as cdk
import pytest
from aws_cdk.assertions import Template
from infra_support import FAST, NO_BUNDLING, REGION, fast_app, stack_of

from cdk.app import file_context
from cdk.stack import DicomPipelineStack


@pytest.fixture(scope="session")
def app(tmp_path_factory: pytest.TempPathFactory) -> cdk.App:
    """The app with the repository's context and any client address written out (example
    certificate, no Docker Hub credentials: synth works, deploying is refused)."""
    return fast_app(tmp_path_factory.mktemp("app"))


@pytest.fixture(scope="session")
def stack(app: cdk.App) -> DicomPipelineStack:
    return stack_of(app)


@pytest.fixture(scope="session")
def template(stack: DicomPipelineStack) -> Template:
    return Template.from_stack(stack)


@pytest.fixture(scope="session")
def template_json(template: Template) -> dict[str, Any]:
    return dict(template.to_json())


@pytest.fixture
def bare_stack(tmp_path: Path) -> Iterator[cdk.Stack]:
    """An empty stack in an app with the repository's feature flags, for one construct."""
    flags = {k: v for k, v in file_context().items() if k.startswith("@aws-cdk")}
    app = cdk.App(context={**flags, **NO_BUNDLING}, outdir=str(tmp_path), **FAST)
    yield cdk.Stack(app, "Bare", env=cdk.Environment(region=REGION))
