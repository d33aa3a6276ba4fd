"""The daily S3 Inventory of the image bucket, into an SSE-KMS reports bucket."""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from constructs import Construct

from cdk.buckets import private_bucket
from cdk.constants import Inventory as C
from pipeline.names import INVENTORY_PREFIX, REINDEX_RESULTS_PREFIX


class Inventory(Construct):
    """A daily CSV inventory of the image bucket's current versions (Bucket, Key, Size,
    LastModifiedDate, ETag) and the bucket it lands in.

    Attributes
    ----------
    key:
        Customer managed key of the reports bucket (rotated). S3 encrypts the inventory
        reports with it, on behalf of the image bucket only (key policy: ``aws:SourceArn``).
    bucket:
        The reports bucket: inventory reports under ``inventory/`` (S3 writes
        ``inventory/<image bucket>/daily-current/<date>/manifest.json`` and the CSV files it
        names), results of reindex runs under ``reindex-results/``; both expire after 30
        days. Its policy lets S3 put inventory reports of the image bucket under
        ``inventory/`` only (CDK adds that statement with the inventory configuration).
    prefix:
        The key prefix holding the dated report folders (``inventory/<bucket>/<ID>/``).
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        source: s3.Bucket,
        access_logs: s3.IBucket,
    ) -> None:
        super().__init__(scope, construct_id)
        stack = cdk.Stack.of(self)
        self.key = kms.Key(
            self,
            "Key",
            description="dicom-pipeline: inventory reports and reindex results",
            enable_key_rotation=True,
            removal_policy=cdk.RemovalPolicy.RETAIN,
        )
        # A KMS-encrypted inventory destination: S3 writes the reports as the service, so
        # the key policy must let S3 generate data keys (as AWS documents for inventory
        # reports). Only for this account's buckets: naming the image bucket here would be a
        # cycle (image bucket -> reports bucket -> key -> image bucket); the reports bucket's
        # policy admits inventory reports of the image bucket alone.
        self.key.add_to_resource_policy(
            iam.PolicyStatement(
                principals=[iam.ServicePrincipal("s3.amazonaws.com")],
                actions=["kms:GenerateDataKey"],
                resources=["*"],  # in a key policy, "*" is this key
                conditions={"StringEquals": {"aws:SourceAccount": stack.account}},
            )
        )
        expire = cdk.Duration.days(C.REPORT_DAYS)
        self.bucket = private_bucket(
            self,
            "Bucket",
            key=self.key,
            access_logs=access_logs,
            access_log_prefix=C.ACCESS_LOG_PREFIX,
            lifecycle_rules=[
                s3.LifecycleRule(
                    id=prefix.rstrip("/"),
                    prefix=prefix,
                    expiration=expire,
                    noncurrent_version_expiration=cdk.Duration.days(1),
                    abort_incomplete_multipart_upload_after=cdk.Duration.days(1),
                )
                for prefix in (INVENTORY_PREFIX, REINDEX_RESULTS_PREFIX)
            ],
        )
        source.add_inventory(
            destination=s3.InventoryDestination(
                bucket=self.bucket, prefix=INVENTORY_PREFIX.rstrip("/")
            ),
            inventory_id=C.ID,
            enabled=True,
            format=s3.InventoryFormat.CSV,
            frequency=s3.InventoryFrequency.DAILY,
            include_object_versions=s3.InventoryObjectVersion.CURRENT,
            optional_fields=list(C.OPTIONAL_FIELDS),
        )
        # S3 writes under "<destination prefix>/<source bucket>/<ID>/" (it adds the slash).
        self.prefix = f"{INVENTORY_PREFIX}{source.bucket_name}/{C.ID}/"

    @property
    def prefix_uri(self) -> str:
        """``s3://<reports bucket>/inventory/<image bucket>/daily-current/``."""
        return f"s3://{self.bucket.bucket_name}/{self.prefix}"

    def grant_manifest_reads(self, grantee: iam.IGrantable) -> iam.Grant:
        """GET of the inventory reports (manifests and CSV files) under ``inventory/``."""
        grant = iam.Grant.add_to_principal(
            grantee=grantee,
            actions=["s3:GetObject"],
            resource_arns=[self.bucket.arn_for_objects(f"{INVENTORY_PREFIX}*")],
        )
        grant.combine(self.key.grant(grantee, "kms:Decrypt"))
        return grant

    def grant_result_writes(self, grantee: iam.IGrantable) -> iam.Grant:
        """What a Distributed Map's ResultWriter does under ``reindex-results/`` (AWS's
        documented set: put, get, list and abort multipart uploads)."""
        grant = iam.Grant.add_to_principal(
            grantee=grantee,
            actions=[
                "s3:PutObject",
                "s3:GetObject",
                "s3:ListMultipartUploadParts",
                "s3:AbortMultipartUpload",
            ],
            resource_arns=[self.bucket.arn_for_objects(f"{REINDEX_RESULTS_PREFIX}*")],
        )
        grant.combine(self.key.grant(grantee, "kms:GenerateDataKey", "kms:Decrypt"))
        return grant
