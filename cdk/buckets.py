"""The one factory for the app's private SSE-KMS buckets (reports, exports, query results)."""

from __future__ import annotations

from collections.abc import Sequence

import aws_cdk as cdk
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from constructs import Construct

__all__ = ["private_bucket"]


def private_bucket(
    scope: Construct,
    construct_id: str,
    *,
    key: kms.IKey,
    access_logs: s3.IBucket,
    access_log_prefix: str,
    lifecycle_rules: Sequence[s3.LifecycleRule] = (),
) -> s3.Bucket:
    """A bucket encrypted with ``key`` (S3 Bucket Key on), versioned, TLS 1.2+ only, never
    public, ACLs off, its server access logs under ``access_log_prefix`` of ``access_logs``,
    and retained with the stack (CloudFormation names it)."""
    return s3.Bucket(
        scope,
        construct_id,
        encryption=s3.BucketEncryption.KMS,
        encryption_key=key,
        bucket_key_enabled=True,
        enforce_ssl=True,
        minimum_tls_version=1.2,
        versioned=True,
        block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
        object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
        server_access_logs_bucket=access_logs,
        server_access_logs_prefix=access_log_prefix,
        lifecycle_rules=list(lifecycle_rules),
        removal_policy=cdk.RemovalPolicy.RETAIN,
    )
