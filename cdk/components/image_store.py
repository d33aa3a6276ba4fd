"""The image bucket: where Orthanc's S3 plugin stores ``orthanc/<uuid>.dcm`` objects."""

from __future__ import annotations

import aws_cdk as cdk
import jsii
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sqs as sqs
from aws_cdk.interfaces.aws_s3 import IBucketRef
from constructs import Construct

from cdk.constants import ImageStore as C
from cdk.constants import Logs
from pipeline.names import DICOM_SUFFIX, ORTHANC_PREFIX, SIDECAR_PREFIX, STAGING_PREFIX


class ImageStore(Construct):
    """SSE-KMS bucket (its own key), versioned, TLS-only, access-logged, never public.

    Attributes
    ----------
    key:
        Customer managed key of the bucket (rotated). Separate from the ingest queue's key:
        one shared key would make the bucket notification and the key policy depend on
        each other.
    bucket:
        The image bucket. Noncurrent versions expire after ``noncurrent_version_days``; under
        ``workflow-staging/`` (items the workflow reads back once) objects expire after a
        day; under ``dicom-json/`` (sidecars: whole DICOM headers, PHI) a replaced or deleted
        sidecar's noncurrent version expires after a day and its delete marker is removed.
        Where rules overlap, S3 applies the earliest expiration.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        access_logs: s3.IBucket,
        noncurrent_version_days: int = C.NONCURRENT_VERSION_DAYS,
    ) -> None:
        super().__init__(scope, construct_id)
        self.key = kms.Key(
            self,
            "Key",
            description="dicom-pipeline: image bucket encryption",
            enable_key_rotation=True,
            removal_policy=cdk.RemovalPolicy.RETAIN,
        )
        self.bucket = s3.Bucket(
            self,
            "Bucket",
            encryption=s3.BucketEncryption.KMS,
            encryption_key=self.key,
            bucket_key_enabled=True,
            enforce_ssl=True,
            minimum_tls_version=1.2,
            versioned=True,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            server_access_logs_bucket=access_logs,
            server_access_logs_prefix=Logs.IMAGE_BUCKET_PREFIX,
            lifecycle_rules=[
                s3.LifecycleRule(
                    id="noncurrent-versions",
                    noncurrent_version_expiration=cdk.Duration.days(noncurrent_version_days),
                    abort_incomplete_multipart_upload_after=cdk.Duration.days(
                        C.ABORT_MULTIPART_DAYS
                    ),
                ),
                # An expiration in days also removes the delete markers it leaves behind.
                s3.LifecycleRule(
                    id="workflow-staging",
                    prefix=STAGING_PREFIX,
                    expiration=cdk.Duration.days(C.STAGING_DAYS),
                    noncurrent_version_expiration=cdk.Duration.days(C.STAGING_DAYS),
                ),
                s3.LifecycleRule(
                    id="sidecar-versions",
                    prefix=SIDECAR_PREFIX,
                    noncurrent_version_expiration=cdk.Duration.days(C.SIDECAR_NONCURRENT_DAYS),
                    expired_object_delete_marker=True,
                ),
            ],
            removal_policy=cdk.RemovalPolicy.RETAIN,
        )

    def send_events_to(self, queue: sqs.IQueue) -> None:
        """Notify ``queue`` of created and removed objects under ``orthanc/`` whose key ends
        in ``.dcm`` (Orthanc's DICOM attachments, nothing the pipeline writes itself).

        S3 may send to the queue (and use its key) on behalf of this bucket in this account
        only: see :class:`QueueDestination`.
        """
        only_dicom = s3.NotificationKeyFilter(prefix=ORTHANC_PREFIX, suffix=DICOM_SUFFIX)
        destination = QueueDestination(queue)
        for event in (s3.EventType.OBJECT_CREATED, s3.EventType.OBJECT_REMOVED):
            self.bucket.add_event_notification(event, destination, only_dicom)

    def grant_header_reads(self, grantee: iam.IGrantable) -> iam.Grant:
        """Ranged GETs of ``*.dcm`` objects (any version) and HEAD for deletes.

        ``s3:ListBucket`` is granted too: without it S3 answers a missing key with 403, and
        the pipeline would report ``ACCESS_DENIED`` instead of a gone object.
        """
        grant = iam.Grant.add_to_principal(
            grantee=grantee,
            actions=["s3:GetObject", "s3:GetObjectVersion"],
            resource_arns=[self.bucket.arn_for_objects(f"*{DICOM_SUFFIX}")],
        )
        grant.combine(
            iam.Grant.add_to_principal(
                grantee=grantee, actions=["s3:ListBucket"], resource_arns=[self.bucket.bucket_arn]
            )
        )
        grant.combine(self.key.grant(grantee, "kms:Decrypt"))
        return grant

    def grant_listing(self, grantee: iam.IGrantable) -> iam.Grant:
        """``s3:ListBucket`` on the bucket (any prefix): the reindex Map's item reader lists
        keys, and listing needs no key permission and reads no object."""
        return iam.Grant.add_to_principal(
            grantee=grantee, actions=["s3:ListBucket"], resource_arns=[self.bucket.bucket_arn]
        )

    def grant_sidecar_writes(self, grantee: iam.IGrantable) -> iam.Grant:
        """PUT of offloaded DICOM JSON under ``dicom-json/`` only."""
        grant = iam.Grant.add_to_principal(
            grantee=grantee,
            actions=["s3:PutObject"],
            resource_arns=[self.bucket.arn_for_objects(f"{SIDECAR_PREFIX}*")],
        )
        grant.combine(self.key.grant(grantee, "kms:GenerateDataKey"))
        return grant

    def grant_sidecar_cleanup(self, grantee: iam.IGrantable) -> iam.Grant:
        """DELETE of sidecars under ``dicom-json/``, and listing only that prefix.

        The list lets the parse step find the sidecars of a key; S3 needs no key permission
        for either (a delete in a versioned bucket only adds a delete marker).
        """
        grant = iam.Grant.add_to_principal(
            grantee=grantee,
            actions=["s3:DeleteObject"],
            resource_arns=[self.bucket.arn_for_objects(f"{SIDECAR_PREFIX}*")],
        )
        grant.combine(
            iam.Grant.add_to_principal(
                grantee=grantee,
                actions=["s3:ListBucket"],
                resource_arns=[self.bucket.bucket_arn],
                conditions={"StringLike": {"s3:prefix": [f"{SIDECAR_PREFIX}*"]}},
            )
        )
        return grant

    def grant_sidecar_deletes(self, grantee: iam.IGrantable) -> iam.Grant:
        """DELETE of sidecars under ``dicom-json/`` only (the workflow retires a replaced
        record's sidecar after the write, and a losing writer's own)."""
        return iam.Grant.add_to_principal(
            grantee=grantee,
            actions=["s3:DeleteObject"],
            resource_arns=[self.bucket.arn_for_objects(f"{SIDECAR_PREFIX}*")],
        )

    def grant_staging_writes(self, grantee: iam.IGrantable) -> iam.Grant:
        """PUT of items too large for the workflow's state, under ``workflow-staging/`` only."""
        grant = iam.Grant.add_to_principal(
            grantee=grantee,
            actions=["s3:PutObject"],
            resource_arns=[self.bucket.arn_for_objects(f"{STAGING_PREFIX}*")],
        )
        grant.combine(self.key.grant(grantee, "kms:GenerateDataKey"))
        return grant

    def grant_staging_reads(self, grantee: iam.IGrantable) -> iam.Grant:
        """GET of staged items under ``workflow-staging/`` only (the workflow reads them back)."""
        grant = iam.Grant.add_to_principal(
            grantee=grantee,
            actions=["s3:GetObject"],
            resource_arns=[self.bucket.arn_for_objects(f"{STAGING_PREFIX}*")],
        )
        grant.combine(self.key.grant(grantee, "kms:Decrypt"))
        return grant

    def grant_orthanc_storage(self, grantee: iam.IGrantable) -> iam.Grant:
        """What Orthanc's S3 plugin does: put, get and delete attachments, under ``orthanc/``
        only (its ``RootPath``); list that prefix only. Sidecars, staged items and anything
        else in the bucket are out of its reach."""
        grant = iam.Grant.add_to_principal(
            grantee=grantee,
            actions=["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
            resource_arns=[self.bucket.arn_for_objects(f"{ORTHANC_PREFIX}*")],
        )
        grant.combine(
            iam.Grant.add_to_principal(
                grantee=grantee,
                actions=["s3:ListBucket"],
                resource_arns=[self.bucket.bucket_arn],
                conditions={"StringLike": {"s3:prefix": [f"{ORTHANC_PREFIX}*"]}},
            )
        )
        grant.combine(self.key.grant(grantee, "kms:Decrypt", "kms:GenerateDataKey"))
        return grant


@jsii.implements(s3.IBucketNotificationDestination)
class QueueDestination:
    """An SQS queue as a bucket's notification destination, without a confused deputy.

    ``aws_s3_notifications.SqsDestination`` lets ``s3.amazonaws.com`` use the queue's key for
    any bucket in any account (its key policy statement has no condition) and adds
    ``kms:Encrypt`` and ``kms:ReEncrypt*``. Here both the queue policy and the key policy admit
    S3 only with ``aws:SourceArn`` = the notifying bucket and ``aws:SourceAccount`` = this
    stack's account, and the key only for what sending needs (``kms:GenerateDataKey``,
    ``kms:Decrypt``, AWS's documented pair). The bucket has its own key, so the queue's key
    policy naming the bucket is no cycle (bucket -> its key; key policy -> bucket ARN).
    """

    def __init__(self, queue: sqs.IQueue) -> None:
        self.queue = queue

    def bind(self, scope: Construct, bucket: IBucketRef) -> s3.BucketNotificationDestinationConfig:
        """Add the two conditioned statements (CDK dedupes them across events)."""
        conditions = {
            "ArnLike": {"aws:SourceArn": bucket.bucket_ref.bucket_arn},
            "StringEquals": {"aws:SourceAccount": cdk.Stack.of(scope).account},
        }
        s3_service = iam.ServicePrincipal("s3.amazonaws.com")
        self.queue.add_to_resource_policy(
            iam.PolicyStatement(
                principals=[s3_service],
                actions=["sqs:SendMessage"],
                resources=[self.queue.queue_arn],
                conditions=conditions,
            )
        )
        key = self.queue.encryption_master_key
        if key is not None:
            added = key.add_to_resource_policy(
                iam.PolicyStatement(
                    principals=[s3_service],
                    actions=["kms:GenerateDataKey", "kms:Decrypt"],
                    resources=["*"],  # in a key policy, "*" is this key
                    conditions=conditions,
                ),
                True,  # allow_no_op: an imported key's policy cannot be changed here
            )
            if not added.statement_added:
                raise ValueError("the queue's key policy must let S3 send notifications")
        return s3.BucketNotificationDestinationConfig(
            arn=self.queue.queue_arn,
            type=s3.BucketNotificationDestinationType.QUEUE,
            dependencies=[self.queue],
        )
