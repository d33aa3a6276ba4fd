"""The metadata table (one item per S3 object, keyed by ``s3_key``; docs/record.md) and the
DLQ ledger."""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_dynamodb as ddb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from constructs import Construct

from pipeline.workflow.table import GSIS, LEDGER_KEY, TABLE_KEY, TTL_ATTRIBUTE


class MetadataTable(Construct):
    """On-demand table with its own KMS key, PITR, TTL on tombstones, deletion protection.

    The global secondary indexes are :data:`pipeline.workflow.table.GSIS`, the same the local stack
    creates, so queries behave alike here and there.

    Attributes
    ----------
    key:
        Customer managed key (rotated) of both tables.
    table:
        The metadata table; retained when the stack is deleted.
    ledger:
        The DLQ ledger: one item per (``s3_key``, ``event_order``) the workflow sent to the
        DLQ, so a redelivered event does not send a second message; items expire (TTL
        ``expires_at``) with the DLQ's messages. It holds object keys (UUIDs), event orders
        and failure codes, nothing that cannot be rebuilt, so it is deleted with the stack
        (``RemovalPolicy.DESTROY``): a retained copy would only be an orphan to clean up,
        and losing it costs at most a duplicate DLQ message, which redrive tolerates.
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
        partition, sort = LEDGER_KEY
        self.ledger = ddb.Table(
            self,
            "Ledger",
            partition_key=ddb.Attribute(name=partition, type=ddb.AttributeType.STRING),
            sort_key=ddb.Attribute(name=sort, type=ddb.AttributeType.STRING),
            billing_mode=ddb.BillingMode.PAY_PER_REQUEST,
            encryption=ddb.TableEncryption.CUSTOMER_MANAGED,
            encryption_key=self.key,
            point_in_time_recovery_specification=ddb.PointInTimeRecoverySpecification(
                point_in_time_recovery_enabled=True
            ),
            time_to_live_attribute=TTL_ATTRIBUTE,
            removal_policy=cdk.RemovalPolicy.DESTROY,
        )

    def grant_stale_checks(self, grantee: iam.IGrantable) -> iam.Grant:
        """``BatchGetItem`` on the table: the parse step's stale-event pre-check."""
        return self._grant_reads(grantee, self.table)

    def grant_record_writes(self, grantee: iam.IGrantable) -> iam.Grant:
        """``PutItem`` on the table: the workflow's conditional write of records."""
        return self._grant_writes(grantee, self.table)

    def grant_sidecar_checks(self, grantee: iam.IGrantable) -> iam.Grant:
        """``GetItem`` on the table: before the workflow deletes a losing writer's sidecar, it
        reads which sidecar the stored record points to."""
        grant = self._grant_on(grantee, self.table, "dynamodb:GetItem")
        grant.combine(self.key.grant_decrypt(grantee))
        return grant

    def grant_ledger_checks(self, grantee: iam.IGrantable) -> iam.Grant:
        """``BatchGetItem`` on the ledger: the parse step looks up events already in the DLQ."""
        return self._grant_reads(grantee, self.ledger)

    def grant_ledger_queries(self, grantee: iam.IGrantable) -> iam.Grant:
        """``Query`` on the ledger: a reindex leaves out keys whose latest event already
        failed (the newest entry of each key)."""
        grant = self._grant_on(grantee, self.ledger, "dynamodb:Query")
        grant.combine(self.key.grant_decrypt(grantee))
        return grant

    def grant_ledger_writes(self, grantee: iam.IGrantable) -> iam.Grant:
        """``PutItem`` on the ledger: the workflow notes each event it sent to the DLQ."""
        return self._grant_writes(grantee, self.ledger)

    def _grant_reads(self, grantee: iam.IGrantable, table: ddb.ITable) -> iam.Grant:
        grant = self._grant_on(grantee, table, "dynamodb:BatchGetItem")
        grant.combine(self.key.grant_decrypt(grantee))
        return grant

    def _grant_writes(self, grantee: iam.IGrantable, table: ddb.ITable) -> iam.Grant:
        grant = self._grant_on(grantee, table, "dynamodb:PutItem")
        grant.combine(self.key.grant_encrypt_decrypt(grantee))
        return grant

    @staticmethod
    def _grant_on(grantee: iam.IGrantable, table: ddb.ITable, action: str) -> iam.Grant:
        # Table.grant would add "<table>/index/*" too; these actions never touch an index.
        return iam.Grant.add_to_principal(
            grantee=grantee, actions=[action], resource_arns=[table.table_arn]
        )
