"""Helpers of the infra layer (a uniquely named module: every test layer has a conftest)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import aws_cdk as cdk
from aws_cdk import aws_ecs as ecs
from aws_cdk.assertions import Template

from cdk.app import build_app
from cdk.components.index_database import IndexDatabase
from cdk.components.log_archive import LogArchive
from cdk.components.network import Network
from cdk.components.orthanc_service import OrthancService
from cdk.rds_ca import region_root
from cdk.stack import DicomPipelineStack

#: Skip asset bundling: the Lambda asset points at its source folder.
NO_BUNDLING: dict[str, Any] = {"aws:cdk:bundling-stacks": []}
#: aws-cdk-lib's built-in CloudFormation validation costs 3-10 s and ~400 MB per synth.
FAST: dict[str, Any] = {"builtin_cloud_formation_validation": False}
REGION = "eu-central-1"
#: What the repository's cdk.json lacks for a synth: the client allow-list is required, and
#: the development deployment writes out "any address".
DEV: dict[str, Any] = {"client_cidrs": "0.0.0.0/0"}
DEV_CIDRS = ("0.0.0.0/0",)
#: The image a bare Orthanc service runs (the stack's comes through the ECR cache).
IMAGE = "orthancteam/orthanc:26.8.1"


def fast_app(tmp: Path, context: dict[str, Any] | None = None, *, nag: bool = False) -> cdk.App:
    """The project's app, built fast (no bundling, no CloudFormation validation); without
    ``context``, the development deployment (:data:`DEV`)."""
    return build_app(
        context={**NO_BUNDLING, **(DEV if context is None else context)},
        nag=nag,
        outdir=str(tmp),
        **FAST,
    )


def stack_of(app: cdk.App) -> DicomPipelineStack:
    (stack,) = [c for c in app.node.children if isinstance(c, DicomPipelineStack)]
    return stack


def resources(template: Template, type_: str) -> dict[str, dict[str, Any]]:
    """``{logical id: resource}`` of one type."""
    return {k: dict(v) for k, v in template.find_resources(type_).items()}


def only(template: Template, type_: str) -> dict[str, Any]:
    """The properties of the one resource of ``type_``."""
    (resource,) = resources(template, type_).values()
    props: dict[str, Any] = resource.get("Properties", {})
    return props


def policy_statements(template_json: Mapping[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every statement of every identity policy: (role logical ids, statement)."""
    for logical_id, res in template_json["Resources"].items():
        props = res.get("Properties", {})
        if res["Type"] in {"AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"}:
            owners = ",".join(r.get("Ref", "?") for r in props.get("Roles", [])) or logical_id
            for st in props["PolicyDocument"]["Statement"]:
                yield owners, st
        if res["Type"] == "AWS::IAM::Role":
            for policy in props.get("Policies", []):
                for st in policy["PolicyDocument"]["Statement"]:
                    yield logical_id, st


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def refs(value: Any) -> set[str]:
    """Logical IDs that ``value`` references (Ref / Fn::GetAtt, anywhere inside)."""
    text = json.dumps(value)
    found: set[str] = set()
    for key in ('"Ref": "', '"Fn::GetAtt": ["'):
        start = 0
        while (i := text.find(key, start)) >= 0:
            j = text.index('"', i + len(key))
            found.add(text[i + len(key) : j])
            start = j
    return found


def database_like(stack: cdk.Stack, network: Network, archive: LogArchive) -> IndexDatabase:
    """An index database for an Orthanc service in a bare stack."""
    return IndexDatabase(
        stack,
        "Db",
        vpc=network.vpc,
        subnets=network.data_subnets,
        rotation_subnets=network.app_subnets,
        secrets_manager_endpoint=network.secrets_manager_endpoint,
        log_archive=archive,
        identifier_prefix="test-index",
    )


def orthanc_service(stack: cdk.Stack) -> tuple[OrthancService, Network, LogArchive]:
    """An Orthanc service (environment ``test``, bucket ``images-bucket``) with what it needs."""
    archive = LogArchive(stack, "Logs")
    network = Network(stack, "Net", log_archive=archive)
    db = database_like(stack, network, archive)
    orthanc = OrthancService(
        stack,
        "Orthanc",
        vpc=network.vpc,
        subnets=network.app_subnets,
        environment="test",
        image=ecs.ContainerImage.from_registry(IMAGE),
        bucket_name="images-bucket",
        database_host=db.endpoint_address,
        database_port=db.endpoint_port,
        database_secret=db.secret,
        database_ca=region_root(REGION),
        log_archive=archive,
    )
    return orthanc, network, archive
