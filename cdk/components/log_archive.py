"""Where logs go: a KMS key for CloudWatch Logs and the S3 bucket for access logs."""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from constructs import Construct

from cdk.constants import Logs
from cdk.naming import stack_instance_suffix


class LogArchive(Construct):
    """The logs KMS key and the access-log bucket, plus a factory for encrypted log groups.

    Attributes
    ----------
    key:
        Customer managed key (rotated yearly) that encrypts every CloudWatch log group.
    access_logs:
        Target of S3 server access logs and ALB access logs. Log delivery writes only to
        SSE-S3 buckets, so this bucket (which holds no DICOM data) is SSE-S3.
    """

    def __init__(self, scope: Construct, construct_id: str) -> None:
        super().__init__(scope, construct_id)
        stack = cdk.Stack.of(self)
        self.key = kms.Key(
            self,
            "Key",
            description="dicom-pipeline: CloudWatch Logs encryption",
            enable_key_rotation=True,
            removal_policy=cdk.RemovalPolicy.RETAIN,
        )
        # CloudWatch Logs encrypts on behalf of the log groups of this account and region.
        self.key.add_to_resource_policy(
            iam.PolicyStatement(
                principals=[iam.ServicePrincipal(f"logs.{stack.region}.amazonaws.com")],
                actions=[
                    "kms:Encrypt",
                    "kms:Decrypt",
                    "kms:ReEncryptFrom",
                    "kms:ReEncryptTo",
                    "kms:GenerateDataKey",
                    "kms:GenerateDataKeyWithoutPlaintext",
                    "kms:DescribeKey",
                ],
                resources=["*"],  # in a key policy, "*" is this key
                conditions={
                    "ArnLike": {
                        "kms:EncryptionContext:aws:logs:arn": (
                            f"arn:{stack.partition}:logs:{stack.region}:{stack.account}:*"
                        )
                    }
                },
            )
        )
        self.access_logs = s3.Bucket(
            self,
            "AccessLogs",
            encryption=s3.BucketEncryption.S3_MANAGED,
            enforce_ssl=True,
            minimum_tls_version=1.2,
            versioned=True,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            lifecycle_rules=[
                s3.LifecycleRule(
                    expiration=cdk.Duration.days(Logs.ACCESS_LOG_DAYS),
                    noncurrent_version_expiration=cdk.Duration.days(30),
                )
            ],
            removal_policy=cdk.RemovalPolicy.RETAIN,
        )

    def log_group(
        self, scope: Construct, construct_id: str, *, name: str | None = None
    ) -> logs.LogGroup:
        """A log group encrypted with :attr:`key`, kept one year (the one factory for them).

        Log groups are retained when the stack is deleted, so ``name`` must be unique per
        stack instance (see :mod:`cdk.naming`); without it CloudFormation generates one.
        """
        return logs.LogGroup(
            scope,
            construct_id,
            log_group_name=name,
            encryption_key=self.key,
            retention=logs.RetentionDays.ONE_YEAR,
            removal_policy=cdk.RemovalPolicy.RETAIN,
        )

    def vended_log_group(
        self, scope: Construct, construct_id: str, *, purpose: str
    ) -> logs.LogGroup:
        """A log group for Step Functions: ``/aws/vendedlogs/states/<stack>-<purpose>-<suffix>``.

        Log delivery grants itself access to ``/aws/vendedlogs/*`` with one entry of the
        account's CloudWatch Logs resource policy, instead of one entry per log group (that
        policy is limited to 5,120 characters). The suffix is unique per stack instance.
        """
        stack = cdk.Stack.of(scope)
        name = f"{Logs.VENDED_PREFIX}{stack.stack_name}-{purpose}-{stack_instance_suffix()}"
        return self.log_group(scope, construct_id, name=name)
