"""Every cdk-nag acknowledgment of the app, each with its reason: the one place for them.

cdk-nag 3.x acknowledgments are ``cdk.Validations.of(construct).acknowledge(...)``; one applies
to the construct and everything below it. Rule IDs are matched exactly (one ID per finding),
so IAM findings name the resource; ``@(path)`` in a rule ID stands for the logical ID of the
construct at that attribute path of the stack (e.g. ``<@(image_store.bucket).Arn>``), and
``@{path}`` for the string at that path, rendered as cdk-nag renders a resource (``Ref`` as
``<AWS::AccountId>``, ``Fn::GetAtt`` as ``<Id.Arn>``).

``python -m cdk.nag`` prints the table that docs/security.md holds; ``--update`` rewrites it
there (a test keeps them equal).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aws_cdk as cdk
from constructs import IConstruct

from cdk.constants import REPO_ROOT
from pipeline.names import (
    DICOM_SUFFIX,
    INVENTORY_PREFIX,
    REINDEX_RESULTS_PREFIX,
    SIDECAR_PREFIX,
    STAGING_PREFIX,
)

if TYPE_CHECKING:
    from cdk.stack import DicomPipelineStack

__all__ = ["ACKS", "Ack", "acknowledge", "logical_id", "markdown", "rule_ids"]

SECURITY_DOC = REPO_ROOT / "docs" / "security.md"
_MANAGED = "Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
_PLACEHOLDER = re.compile(r"@\(([a-z_.]+)\)")
_VALUE = re.compile(r"@\{([a-z_.]+)\}")


def _always(_stack: DicomPipelineStack) -> bool:
    return True


@dataclass(frozen=True)
class Ack:
    """Acknowledge ``rules`` on the construct at ``where`` (a path of stack attributes)."""

    where: str
    rules: tuple[str, ...]
    reason: str
    when: Callable[[DicomPipelineStack], bool] = _always
    condition: str = ""  # when ``when`` is not always: the condition, for the docs


ACKS: tuple[Ack, ...] = (
    # ---- the whole stack
    Ack(
        "",
        (f"AwsSolutions-IAM4[{_MANAGED}AWSLambdaBasicExecutionRole]",),
        "Lambda execution roles (the parse function and CDK's own helper functions: bucket "
        "notifications, default security group restriction) use the AWS managed basic "
        "execution policy: it only allows writing the function's logs.",
    ),
    Ack(
        "",
        (f"AwsSolutions-IAM4[{_MANAGED}AWSLambdaVPCAccessExecutionRole]",),
        "The parse function runs in the VPC; the AWS managed VPC access policy only manages "
        "the function's network interfaces.",
    ),
    Ack(
        "",
        ("HIPAA.Security-IAMNoInlinePolicy",),
        "Permissions are generated per role by CDK grant methods as that role's own inline "
        "policy, scoped to named resources; no policy is shared, so managed policies would add "
        "nothing but reuse.",
    ),
    # ---- network
    Ack(
        "network.vpc",
        (
            "HIPAA.Security-VPCSubnetAutoAssignPublicIpDisabled",
            "HIPAA.Security-VPCNoUnrestrictedRouteToIGW",
        ),
        "Only the public subnets map public IPs and route to the internet gateway; they hold "
        "nothing but the internet-facing load balancer and the NAT gateways. Tasks, functions "
        "and the database are in private subnets.",
    ),
    Ack(
        "network.vpc",
        (
            "AwsSolutions-EC23",
            "HIPAA.Security-EC2RestrictedCommonPorts",
            "HIPAA.Security-EC2RestrictedSSH",
        ),
        "The interface endpoints' security groups allow HTTPS from the VPC's CIDR, which is a "
        "CloudFormation reference cdk-nag cannot resolve (the rule errors); no rule is open to "
        "the internet.",
    ),
    # ---- index database
    Ack(
        "index_database.security_group",
        ("HIPAA.Security-EC2RestrictedCommonPorts", "HIPAA.Security-EC2RestrictedSSH"),
        "Ingress is the PostgreSQL port from the Orthanc and rotation security groups only; "
        "the port is a CloudFormation reference cdk-nag cannot resolve (the rule errors).",
    ),
    Ack(
        "index_database.instance",
        (f"AwsSolutions-IAM4[{_MANAGED}AmazonRDSEnhancedMonitoringRole]",),
        "Enhanced monitoring requires the AWS managed monitoring policy on its role.",
    ),
    Ack(
        "index_database.instance",
        ("AwsSolutions-RDS11",),
        "The default PostgreSQL port: the database is in isolated subnets, reachable only "
        "from the Orthanc and rotation security groups, over TLS with credentials; another "
        "port would add no protection.",
    ),
    Ack(
        "index_database.instance",
        ("HIPAA.Security-RDSInBackupPlan",),
        "Automated RDS backups with point-in-time restore (at least 7 days, 14 by default) "
        "and a final snapshot on deletion; an AWS Backup plan is the account's choice (AWS "
        "Organizations backup policies attach by tag).",
    ),
    Ack(
        "index_database.instance",
        ("HIPAA.Security-RDSMultiAZSupport", "AwsSolutions-RDS3"),
        "Single-AZ was chosen for this environment by context (multi_az=false) to save cost; "
        "production keeps the default Multi-AZ.",
        when=lambda stack: not stack.config.multi_az,
        condition="only when context multi_az is false",
    ),
    # ---- storage
    Ack(
        "log_archive.access_logs",
        ("HIPAA.Security-S3DefaultEncryptionKMS",),
        "The access-log bucket is the target of S3 server access logs and ALB access logs, "
        "which are delivered only to SSE-S3 buckets; it holds request logs, no DICOM data.",
    ),
    Ack(
        "log_archive.access_logs",
        ("HIPAA.Security-S3BucketReplicationEnabled",),
        "Access logs are not replicated: they are operational records kept one year, not "
        "the system of record.",
    ),
    Ack(
        "image_store.bucket",
        ("HIPAA.Security-S3BucketReplicationEnabled",),
        "Cross-region replication is a disaster-recovery decision of the account (a second "
        "region, its own key, data residency); the bucket is versioned with deletion "
        "retained as noncurrent versions.",
    ),
    Ack(
        "inventory.bucket",
        ("HIPAA.Security-S3BucketReplicationEnabled",),
        "Inventory reports and reindex run results are derived data that S3 writes again "
        "every day (and a run again on demand); they expire after 30 days.",
    ),
    Ack(
        "analytics.exports",
        ("HIPAA.Security-S3BucketReplicationEnabled",),
        "Exports are copies of the metadata table that dicom-pipeline export writes again at "
        "will; the table itself has point-in-time recovery.",
    ),
    Ack(
        "analytics.results",
        ("HIPAA.Security-S3BucketReplicationEnabled",),
        "Athena query results are reproducible by running the query again; they expire after "
        "30 days.",
    ),
    Ack(
        "metadata_table.table",
        ("HIPAA.Security-DynamoDBInBackupPlan",),
        "Point-in-time recovery (35 days) and deletion protection; the table can be rebuilt "
        "from the image bucket (reindex). An AWS Backup plan is the account's choice.",
    ),
    Ack(
        "metadata_table.ledger",
        ("HIPAA.Security-DynamoDBInBackupPlan",),
        "The DLQ ledger holds object keys, event orders and failure codes that expire with the "
        "DLQ's messages (14 days); point-in-time recovery is on, and losing it costs at most a "
        "duplicate DLQ message. A backup plan would keep nothing worth restoring.",
    ),
    # ---- front door
    Ack(
        "front_door.security_group",
        ("AwsSolutions-EC23",),
        "The deployment chose to accept HTTPS from any address by writing 0.0.0.0/0 in context "
        "client_cidrs (it has no default); AWS WAF rate-limits every client IP and every request "
        "still needs Orthanc credentials.",
        when=lambda stack: stack.config.any_client,
        condition="only when context client_cidrs includes 0.0.0.0/0",
    ),
    Ack(
        "front_door.load_balancer",
        ("HIPAA.Security-ELBv2ACMCertificateRequired",),
        "The HTTP listener carries no traffic: its only action is a permanent redirect to the "
        "HTTPS listener, which uses the ACM certificate.",
    ),
    # ---- Orthanc
    Ack(
        "orthanc.admin_secret",
        ("AwsSolutions-SMG4", "HIPAA.Security-SecretsManagerRotationEnabled"),
        "Orthanc reads its users only at start and Secrets Manager has no rotation function "
        "for them; the administrators' passwords are rotated by the operator (put a new value, "
        "then redeploy the service), as README's Deploy to AWS describes.",
    ),
    Ack(
        "orthanc.uploader_secret",
        ("AwsSolutions-SMG4", "HIPAA.Security-SecretsManagerRotationEnabled"),
        "Orthanc reads its users only at start, and an uploader's password is configured on "
        "the sending devices, which an automatic rotation would lock out; it is rotated by the "
        "operator together with the devices (README, Deploy to AWS, Operations).",
    ),
    Ack(
        "orthanc.task_definition.execution_role",
        ("AwsSolutions-IAM5[Resource::*]",),
        "ecr:GetAuthorizationToken, which every image pull from ECR needs, has no resource-level "
        "permissions; the pull itself is granted on the one cached Orthanc repository.",
    ),
    Ack(
        "orthanc.task_definition.task_role",
        ("AwsSolutions-IAM5[Resource::<@(image_store.bucket).Arn>/orthanc/*]",),
        "Orthanc's S3 plugin reads, writes and deletes its attachments (uuid.dcm and "
        "others) under its RootPath orthanc/ only (pipeline.names.ORTHANC_PREFIX); object "
        "actions need object ARNs.",
    ),
    Ack(
        "orthanc.task_definition",
        ("AwsSolutions-ECS2",),
        "The one environment variable is DICOM_PIPELINE_AUTHZ_SHA256, the SHA-256 of the "
        "authorization plugin computed at synth: no secret, and it must live in the task "
        "definition (not a parameter) so that only a deploy can change which code Orthanc runs.",
    ),
    # ---- ingestion
    Ack(
        "ingestion.function",
        ("HIPAA.Security-LambdaDLQ",),
        "The function is invoked synchronously by the workflow; failed records become coded "
        "DLQ messages, a failed execution leaves the batch on the queue, which redrives to "
        "the DLQ. A Lambda DLQ only applies to asynchronous invocations.",
    ),
    Ack(
        "ingestion.function.role",
        ("AwsSolutions-IAM5[Resource::*]",),
        "X-Ray tracing (xray:PutTraceSegments, xray:PutTelemetryRecords) has no resource-level "
        "permissions.",
    ),
    Ack(
        "ingestion.function.role",
        (
            f"AwsSolutions-IAM5[Resource::<@(image_store.bucket).Arn>/*{DICOM_SUFFIX}]",
            f"AwsSolutions-IAM5[Resource::<@(image_store.bucket).Arn>/{SIDECAR_PREFIX}*]",
            f"AwsSolutions-IAM5[Resource::<@(image_store.bucket).Arn>/{STAGING_PREFIX}*]",
        ),
        "Header reads are limited to keys ending in .dcm, sidecar writes and deletes to the "
        "dicom-json/ prefix and staged-item writes to the workflow-staging/ prefix of the "
        "image bucket; object actions need object ARNs.",
    ),
    Ack(
        "ingestion.state_machine.role",
        ("AwsSolutions-IAM5[Resource::*]",),
        "Step Functions log delivery (logs:*LogDelivery, DescribeLogGroups, resource policies) "
        "and X-Ray tracing have no resource-level permissions.",
    ),
    Ack(
        "ingestion.state_machine.role",
        (
            "AwsSolutions-IAM5[Action::kms:GenerateDataKey*]",
            "AwsSolutions-IAM5[Action::kms:ReEncrypt*]",
        ),
        "The workflow writes to the table encrypted with its customer managed key; the KMS "
        "actions are CDK's standard encrypt/decrypt grant, on that one key only.",
    ),
    Ack(
        "ingestion.state_machine.role",
        (
            f"AwsSolutions-IAM5[Resource::<@(image_store.bucket).Arn>/{STAGING_PREFIX}*]",
            f"AwsSolutions-IAM5[Resource::<@(image_store.bucket).Arn>/{SIDECAR_PREFIX}*]",
        ),
        "The workflow reads back only the items the parse step staged under the "
        "workflow-staging/ prefix of the image bucket, and deletes only sidecars under the "
        "dicom-json/ prefix; object actions need object ARNs.",
    ),
    # ---- reindex at scale
    Ack(
        "reindex.function",
        ("HIPAA.Security-LambdaDLQ",),
        "The function is invoked synchronously by the Map's child executions; a failed batch "
        "fails its child, which the Map counts against its tolerated failures and lists in its "
        "results. A Lambda DLQ only applies to asynchronous invocations.",
    ),
    Ack(
        "reindex.function.role",
        ("AwsSolutions-IAM5[Resource::*]",),
        "X-Ray tracing (xray:PutTraceSegments, xray:PutTelemetryRecords) has no resource-level "
        "permissions.",
    ),
    Ack(
        "reindex.state_machine.role",
        ("AwsSolutions-IAM5[Resource::*]",),
        "Step Functions log delivery (logs:*LogDelivery, DescribeLogGroups, resource policies) "
        "and X-Ray tracing have no resource-level permissions.",
    ),
    Ack(
        "reindex.state_machine.role",
        (
            f"AwsSolutions-IAM5[Resource::<@(inventory.bucket).Arn>/{INVENTORY_PREFIX}*]",
            f"AwsSolutions-IAM5[Resource::<@(inventory.bucket).Arn>/{REINDEX_RESULTS_PREFIX}*]",
            "AwsSolutions-IAM5[Resource::@{reindex.child_executions_arn}]",
        ),
        "The Distributed Map reads inventory reports (a manifest and the CSV files it names) "
        "under inventory/, writes its results under reindex-results/ of the reports bucket, "
        "and describes and stops its own child executions (execution:<stack>-reindex/*), as "
        "AWS documents for a Distributed Map; object and execution names are not known before "
        "a run.",
    ),
    # ---- rotation
    Ack(
        "rotation_redeploy.state_machine.role",
        ("AwsSolutions-IAM5[Resource::*]",),
        "Step Functions log delivery (logs:*LogDelivery, DescribeLogGroups, resource policies) "
        "and X-Ray tracing have no resource-level permissions; ecs:UpdateService is granted on "
        "the Orthanc service only.",
    ),
)


def _attribute(stack: DicomPipelineStack, path: str) -> Any:
    target: Any = stack
    for name in filter(None, path.split(".")):
        target = getattr(target, name)
    return target


def _flatten(value: Any) -> str:
    """A resolved CloudFormation value as cdk-nag writes it in a finding ID."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and "Ref" in value:
        return f"<{value['Ref']}>"
    if isinstance(value, dict) and "Fn::GetAtt" in value:
        return "<" + ".".join(value["Fn::GetAtt"]) + ">"
    if isinstance(value, dict) and "Fn::Join" in value:
        separator, parts = value["Fn::Join"]
        return str(separator).join(_flatten(p) for p in parts)
    raise TypeError(f"cannot render {value!r} as cdk-nag does")


def _value(stack: DicomPipelineStack, path: str) -> str:
    return _flatten(stack.resolve(_attribute(stack, path)))


def _resolve(stack: DicomPipelineStack, path: str) -> IConstruct:
    target = _attribute(stack, path)
    if not hasattr(target, "node"):
        raise TypeError(f"stack.{path} is not a construct")
    construct: IConstruct = target
    return construct


def logical_id(construct: IConstruct) -> str:
    """The logical ID as it appears in IAM finding IDs (``ImageStoreBucketF57D958E``)."""
    element = construct if isinstance(construct, cdk.CfnElement) else construct.node.default_child
    if element is None:
        raise TypeError(f"{construct.node.path} has no CloudFormation resource")
    stack = cdk.Stack.of(construct)
    return str(stack.resolve(stack.get_logical_id(element)))  # type: ignore[arg-type]


def rule_ids(stack: DicomPipelineStack, ack: Ack) -> list[str]:
    """The rule IDs of ``ack`` with their ``@(path)`` and ``@{path}`` placeholders resolved."""
    return [
        _VALUE.sub(
            lambda m: _value(stack, m.group(1)),
            _PLACEHOLDER.sub(lambda m: logical_id(_resolve(stack, m.group(1))), rule),
        )
        for rule in ack.rules
    ]


def acknowledge(stack: DicomPipelineStack) -> None:
    """Apply every acknowledgment of :data:`ACKS` that holds for this stack."""
    for ack in ACKS:
        if not ack.when(stack):
            continue
        cdk.Validations.of(_resolve(stack, ack.where)).acknowledge(
            *(cdk.Acknowledgment(id=rule, reason=ack.reason) for rule in rule_ids(stack, ack))
        )


def markdown() -> str:
    """The acknowledgments as a Markdown table (docs/security.md)."""
    lines = [
        "| where | rule | reason |",
        "|---|---|---|",
    ]
    for ack in ACKS:
        where = f"`{ack.where}`" if ack.where else "the whole stack"
        rules = "<br>".join(
            "`" + _VALUE.sub(r"\1", _PLACEHOLDER.sub(r"\1", rule)) + "`" for rule in ack.rules
        )
        reason = ack.reason + (f" *({ack.condition})*" if ack.condition else "")
        lines.append(f"| {where} | {rules} | {reason} |")
    return "\n".join(lines) + "\n"


#: The generated block of docs/security.md lies between these lines.
DOC_START = "<!-- cdk-nag acknowledgments: generated by `python -m cdk.nag --update` -->"
DOC_END = "<!-- end of cdk-nag acknowledgments -->"


def update_doc(path: Path) -> bool:
    """Rewrite the generated block of ``path``; return whether it changed."""
    text = path.read_text(encoding="utf-8")
    head, start, rest = text.partition(DOC_START)
    _, end, tail = rest.partition(DOC_END)
    if not (start and end):
        raise ValueError(f"{path} lacks the markers of the generated block")
    new = f"{head}{DOC_START}\n{markdown()}{DOC_END}{tail}"
    path.write_text(new, encoding="utf-8")
    return new != text


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m cdk.nag`` prints the table; ``--update`` rewrites docs/security.md."""
    parser = argparse.ArgumentParser(prog="python -m cdk.nag")
    parser.add_argument("--update", action="store_true", help=f"rewrite {SECURITY_DOC}")
    args = parser.parse_args(argv)
    if args.update:
        print(f"{SECURITY_DOC}: {'updated' if update_doc(SECURITY_DOC) else 'unchanged'}")
    else:
        print(markdown(), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
