"""Helpers of the infra layer (a uniquely named module: every test layer has a conftest)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import aws_cdk as cdk
from aws_cdk.assertions import Template

from cdk.app import build_app
from cdk.stack import DicomPipelineStack

#: Skip asset bundling: the Lambda asset points at its source folder.
NO_BUNDLING: dict[str, Any] = {"aws:cdk:bundling-stacks": []}
#: aws-cdk-lib's built-in CloudFormation validation costs 3-10 s and ~400 MB per synth.
FAST: dict[str, Any] = {"builtin_cloud_formation_validation": False}
REGION = "eu-central-1"


def fast_app(tmp: Path, context: dict[str, Any] | None = None, *, nag: bool = False) -> cdk.App:
    """The project's app, built fast (no bundling, no CloudFormation validation)."""
    return build_app(context={**NO_BUNDLING, **(context or {})}, nag=nag, outdir=str(tmp), **FAST)


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
