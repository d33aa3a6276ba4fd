"""The metadata table: one item per S3 object, keyed by ``s3_key`` (see docs/record.md)."""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_dynamodb as ddb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from constructs import Construct

from pipeline.workflow.table import GSIS, TABLE_KEY, TTL_ATTRIBUTE


class MetadataTable(Construct):
    """On-demand table with its own KMS key, PITR, TTL on tombstones, deletion protection.

    The global secondary indexes are :data:`pipeline.workflow.table.GSIS`, the same the local stack
    creates, so queries behave alike here and there.
    """

    def __init__(self, scope: Construct, construct_id: str) -> None:
        super().__init__(scope, construct_id)
        self.key = kms.Key(
            self,
            "Key",
            description="dicom-pipeline: metadata table encryption",
            enable_key_rotation=True,
            removal_policy=cdk.RemovalPolicy.RETAIN,
        )
        self.table = ddb.Table(
            self,
            "Table",
            partition_key=ddb.Attribute(name=TABLE_KEY, type=ddb.AttributeType.STRING),
            billing_mode=ddb.BillingMode.PAY_PER_REQUEST,
            encryption=ddb.TableEncryption.CUSTOMER_MANAGED,
            encryption_key=self.key,
            point_in_time_recovery_specification=ddb.PointInTimeRecoverySpecification(
                point_in_time_recovery_enabled=True
            ),
            time_to_live_attribute=TTL_ATTRIBUTE,
            deletion_protection=True,
            removal_policy=cdk.RemovalPolicy.RETAIN,
        )
        for gsi in GSIS:
            self.table.add_global_secondary_index(
                index_name=gsi.name,
                partition_key=ddb.Attribute(name=gsi.partition_key, type=ddb.AttributeType.STRING),
                sort_key=(
                    ddb.Attribute(name=gsi.sort_key, type=ddb.AttributeType.STRING)
                    if gsi.sort_key
                    else None
                ),
                projection_type=ddb.ProjectionType.INCLUDE,
                non_key_attributes=list(gsi.include),
            )

    def grant_stale_checks(self, grantee: iam.IGrantable) -> iam.Grant:
        """``BatchGetItem`` on the table: the parse step's stale-event pre-check."""
        grant = self._grant_on_table(grantee, "dynamodb:BatchGetItem")
        grant.combine(self.key.grant_decrypt(grantee))
        return grant

    def grant_record_writes(self, grantee: iam.IGrantable) -> iam.Grant:
        """``PutItem`` on the table: the workflow's conditional write of records."""
        grant = self._grant_on_table(grantee, "dynamodb:PutItem")
        grant.combine(self.key.grant_encrypt_decrypt(grantee))
        return grant

    def _grant_on_table(self, grantee: iam.IGrantable, action: str) -> iam.Grant:
        # Table.grant would add "<table>/index/*" too; these actions never touch an index.
        return iam.Grant.add_to_principal(
            grantee=grantee, actions=[action], resource_arns=[self.table.table_arn]
        )
