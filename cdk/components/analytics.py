"""SQL over the export: a Glue table on the export prefix and an Athena workgroup."""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_athena as athena
from aws_cdk import aws_glue as glue
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from constructs import Construct

from cdk.buckets import private_bucket
from cdk.constants import Analytics as C
from pipeline.names import EXPORT_EMPTY_PREFIX, EXPORT_PREFIX
from pipeline.ops.export import PIPELINE_COLUMNS, column_type

#: ``pipeline.ops.export.column_type`` kinds → Glue (Hive) types of the Parquet columns.
GLUE_TYPES = {
    "string": "string",
    "int": "bigint",
    "float": "double",
    "timestamp": "timestamp",
    "list": "array<string>",
}


def table_columns() -> list[tuple[str, str]]:
    """``(name, Glue type)`` of the table: the pipeline's columns, then the DICOM keywords of
    :attr:`cdk.constants.Analytics.DICOM_COLUMNS`, typed as ``dicom-pipeline export`` writes
    them (one type per name, whatever the rows)."""
    names = [*PIPELINE_COLUMNS, *C.DICOM_COLUMNS]
    return [(name.lower(), GLUE_TYPES[column_type(name)]) for name in names]


class Analytics(Construct):
    """The exports bucket, the Glue database and table over its ``exports/`` prefix, and an
    Athena workgroup whose results are SSE-KMS encrypted in a bucket of their own.

    Attributes
    ----------
    key:
        Customer managed key (rotated) of both buckets and of the query results.
    exports:
        Holds ``dicom-pipeline export`` runs under ``exports/run=<time>-<id>/`` (PHI: patient
        columns are exported as the table has them). Versioned; a replaced or deleted file is
        kept 7 days.
    results:
        Athena's query results (expire after 30 days).
    database, table:
        Glue database ``dicom_pipeline_<environment>`` and table ``records`` (Parquet),
        with the pipeline's columns and a few DICOM keywords; more are added by a crawler or
        by hand (docs/operations.md). Its location starts at ``exports/none/`` (no rows);
        each ``dicom-pipeline export`` switches it to the run it wrote. A stack update that
        changes the table puts that location back: export again after one.
    workgroup:
        Athena engine v3; its configuration is enforced (clients cannot send results
        elsewhere, unencrypted, or scan more than the cutoff).
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        environment: str,
        access_logs: s3.IBucket,
    ) -> None:
        super().__init__(scope, construct_id)
        stack = cdk.Stack.of(self)
        self.key = kms.Key(
            self,
            "Key",
            description="dicom-pipeline: exports and Athena query results",
            enable_key_rotation=True,
            removal_policy=cdk.RemovalPolicy.RETAIN,
        )
        self.exports = private_bucket(
            self,
            "Exports",
            key=self.key,
            access_logs=access_logs,
            access_log_prefix=C.EXPORTS_ACCESS_LOG_PREFIX,
            lifecycle_rules=[
                s3.LifecycleRule(
                    id="replaced-exports",
                    noncurrent_version_expiration=cdk.Duration.days(C.EXPORT_NONCURRENT_DAYS),
                    abort_incomplete_multipart_upload_after=cdk.Duration.days(1),
                )
            ],
        )
        self.results = private_bucket(
            self,
            "Results",
            key=self.key,
            access_logs=access_logs,
            access_log_prefix=C.RESULTS_ACCESS_LOG_PREFIX,
            lifecycle_rules=[
                s3.LifecycleRule(
                    id="query-results",
                    expiration=cdk.Duration.days(C.RESULT_DAYS),
                    noncurrent_version_expiration=cdk.Duration.days(1),
                    abort_incomplete_multipart_upload_after=cdk.Duration.days(1),
                )
            ],
        )
        self.database_name = "dicom_pipeline_" + environment.replace("-", "_")
        self.database = glue.CfnDatabase(
            self,
            "Database",
            catalog_id=stack.account,
            database_input=glue.CfnDatabase.DatabaseInputProperty(
                name=self.database_name,
                description="dicom-pipeline: the metadata table as exported (Parquet)",
            ),
        )
        self.export_uri = f"s3://{self.exports.bucket_name}/{EXPORT_PREFIX}"
        self.table = glue.CfnTable(
            self,
            "Table",
            catalog_id=stack.account,
            database_name=self.database_name,
            table_input=glue.CfnTable.TableInputProperty(
                name=C.TABLE,
                description="dicom-pipeline export: one row per record, tombstones included",
                table_type="EXTERNAL_TABLE",
                parameters={"classification": "parquet", "EXTERNAL": "TRUE"},
                storage_descriptor=glue.CfnTable.StorageDescriptorProperty(
                    # Never export_uri itself: Athena reads every run below a location.
                    location=f"s3://{self.exports.bucket_name}/{EXPORT_EMPTY_PREFIX}",
                    input_format=("org.apache.hadoop.hive.ql.io.parquet.MapredParquetInputFormat"),
                    output_format=(
                        "org.apache.hadoop.hive.ql.io.parquet.MapredParquetOutputFormat"
                    ),
                    serde_info=glue.CfnTable.SerdeInfoProperty(
                        serialization_library=(
                            "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe"
                        ),
                    ),
                    columns=[
                        glue.CfnTable.ColumnProperty(name=name, type=type_)
                        for name, type_ in table_columns()
                    ],
                ),
            ),
        )
        self.table.node.add_dependency(self.database)
        self.workgroup = athena.CfnWorkGroup(
            self,
            "Workgroup",
            name=f"{stack.stack_name}-analytics",
            description="dicom-pipeline: SQL over the export (results SSE-KMS)",
            recursive_delete_option=True,  # saved queries and history go with the stack
            state="ENABLED",
            work_group_configuration=athena.CfnWorkGroup.WorkGroupConfigurationProperty(
                enforce_work_group_configuration=True,
                publish_cloud_watch_metrics_enabled=True,
                bytes_scanned_cutoff_per_query=C.BYTES_SCANNED_CUTOFF,
                engine_version=athena.CfnWorkGroup.EngineVersionProperty(
                    selected_engine_version="Athena engine version 3"
                ),
                result_configuration=athena.CfnWorkGroup.ResultConfigurationProperty(
                    output_location=f"s3://{self.results.bucket_name}/",
                    expected_bucket_owner=stack.account,
                    encryption_configuration=athena.CfnWorkGroup.EncryptionConfigurationProperty(
                        encryption_option="SSE_KMS", kms_key=self.key.key_arn
                    ),
                ),
            ),
        )

    @property
    def workgroup_name(self) -> str:
        """The workgroup's name (``<stack>-analytics``)."""
        name: str = self.workgroup.name
        return name
