"""The stack: composes one construct per concern and wires their permissions."""

from __future__ import annotations

from typing import Any

import aws_cdk as cdk
from constructs import Construct

from cdk.components.analytics import Analytics
from cdk.components.front_door import FrontDoor
from cdk.components.image_cache import ImageCache
from cdk.components.image_store import ImageStore
from cdk.components.index_database import IndexDatabase
from cdk.components.ingestion import Ingestion
from cdk.components.inventory import Inventory
from cdk.components.log_archive import LogArchive
from cdk.components.metadata_table import MetadataTable
from cdk.components.monitoring import Monitoring
from cdk.components.network import Network
from cdk.components.orthanc_service import OrthancService
from cdk.components.reindex_map import ReindexMap
from cdk.components.rotation_redeploy import RotationRedeploy
from cdk.components.web_firewall import WebFirewall
from cdk.config import DeploymentConfig
from cdk.constants import Orthanc
from cdk.rds_ca import region_root
from pipeline.orthanc.config import DICOMWEB_ROOT

#: Stack outputs, named like the fields of the ``.local/stack.json`` that ``dicom-pipeline
#: local up`` writes (``bucket`` → ``Bucket`` and so on): a tool reads either alike.
OUTPUTS = ("Bucket", "QueueUrl", "DlqUrl", "Table", "StateMachineArn", "OrthancUrl")


class DicomPipelineStack(cdk.Stack):
    """Orthanc behind HTTPS, the image bucket, and the ingestion pipeline to DynamoDB."""

    def __init__(
        self, scope: Construct, construct_id: str, *, config: DeploymentConfig, **kwargs: Any
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.config = config

        self.log_archive = LogArchive(self, "LogArchive")
        self.network = Network(
            self,
            "Network",
            log_archive=self.log_archive,
            max_azs=config.max_azs,
            availability_zones=config.availability_zones,
            nat_gateways=config.nat_gateways,
        )
        vpc = self.network.vpc
        self.image_store = ImageStore(
            self,
            "ImageStore",
            access_logs=self.log_archive.access_logs,
            noncurrent_version_days=config.noncurrent_version_days,
        )
        self.inventory = Inventory(
            self,
            "Inventory",
            source=self.image_store.bucket,
            access_logs=self.log_archive.access_logs,
        )
        self.metadata_table = MetadataTable(self, "MetadataTable")
        self.analytics = Analytics(
            self,
            "Analytics",
            environment=config.environment,
            access_logs=self.log_archive.access_logs,
        )
        self.ingestion = Ingestion(
            self,
            "Ingestion",
            table=self.metadata_table.table,
            ledger=self.metadata_table.ledger,
            vpc=vpc,
            subnets=self.network.app_subnets,
            log_archive=self.log_archive,
            reserved_concurrency=config.parse_reserved_concurrency,
        )
        self.reindex = ReindexMap(
            self,
            "Reindex",
            image_bucket=self.image_store.bucket,
            reports_bucket=self.inventory.bucket,
            table_name=self.metadata_table.table.table_name,
            ledger_table_name=self.metadata_table.ledger.table_name,
            queue=self.ingestion.queue,
            vpc=vpc,
            subnets=self.network.app_subnets,
            log_archive=self.log_archive,
            environment_key=self.ingestion.environment_key,
            max_queue_depth=config.reindex_queue_depth,
        )
        self.index_database = IndexDatabase(
            self,
            "IndexDatabase",
            vpc=vpc,
            subnets=self.network.data_subnets,
            rotation_subnets=self.network.app_subnets,
            secrets_manager_endpoint=self.network.secrets_manager_endpoint,
            log_archive=self.log_archive,
            identifier_prefix=f"dicom-pipeline-{config.environment}-index",
            multi_az=config.multi_az,
            instance_type=config.db_instance_type,
            backup_days=config.db_backup_days,
            engine_version=config.db_engine_version,
        )
        self.image_cache = ImageCache(
            self,
            "ImageCache",
            prefix=config.image_cache_prefix,
            credentials_secret_arn=config.dockerhub_secret_arn,
        )
        self.orthanc = OrthancService(
            self,
            "Orthanc",
            vpc=vpc,
            subnets=self.network.app_subnets,
            environment=config.environment,
            image=self.image_cache.image(Orthanc.IMAGE, config.orthanc_image_tag),
            bucket_name=self.image_store.bucket.bucket_name,
            database_host=self.index_database.endpoint_address,
            database_port=self.index_database.endpoint_port,
            database_secret=self.index_database.secret,
            database_ca=region_root(config.region),
            log_archive=self.log_archive,
            cpu=config.orthanc_cpu,
            memory_mib=config.orthanc_memory_mib,
            desired_count=config.orthanc_desired_count,
            max_count=config.orthanc_max_count,
        )
        self.rotation_redeploy = RotationRedeploy(
            self,
            "RotationRedeploy",
            secret=self.index_database.secret,
            service=self.orthanc.service,
            log_archive=self.log_archive,
        )
        self.front_door = FrontDoor(
            self,
            "FrontDoor",
            vpc=vpc,
            subnets=self.network.public_subnets,
            certificate=config.certificate,
            client_cidrs=config.client_cidrs,
            access_logs=self.log_archive.access_logs,
            target=self.orthanc.service,
        )
        self.web_firewall = WebFirewall(
            self,
            "WebFirewall",
            load_balancer=self.front_door.load_balancer,
            upload_path=f"{DICOMWEB_ROOT}studies",
            log_archive=self.log_archive,
            rate_limit=config.waf_rate_limit,
        )
        self.monitoring = Monitoring(
            self,
            "Monitoring",
            dashboard_name=f"dicom-pipeline-{config.environment}",
            queue=self.ingestion.queue,
            dlq=self.ingestion.dlq,
            state_machine=self.ingestion.state_machine,
            function=self.ingestion.function,
            target_group=self.front_door.target_group,
            database=self.index_database.instance,
            redeploy=self.rotation_redeploy.state_machine,
            reindex=self.reindex.state_machine,
            alarm_email=config.alarm_email,
        )

        # Wiring: who may touch what, in one place.
        self.image_store.send_events_to(self.ingestion.queue)
        self.image_store.grant_header_reads(self.ingestion.function)
        self.image_store.grant_sidecar_writes(self.ingestion.function)
        self.image_store.grant_sidecar_cleanup(self.ingestion.function)
        self.image_store.grant_staging_writes(self.ingestion.function)
        self.image_store.grant_staging_reads(self.ingestion.state_machine)
        self.image_store.grant_sidecar_deletes(self.ingestion.state_machine)
        self.metadata_table.grant_sidecar_checks(self.ingestion.state_machine)
        self.metadata_table.grant_stale_checks(self.ingestion.function)
        self.metadata_table.grant_ledger_checks(self.ingestion.function)
        self.metadata_table.grant_record_writes(self.ingestion.state_machine)
        self.metadata_table.grant_ledger_writes(self.ingestion.state_machine)
        # Reindex at scale: the Map lists the bucket or reads an inventory report and writes
        # its results; its Lambda reads stored records and enqueues synthetic events.
        self.image_store.grant_listing(self.reindex.state_machine)
        self.inventory.grant_manifest_reads(self.reindex.state_machine)
        self.inventory.grant_result_writes(self.reindex.state_machine)
        self.metadata_table.grant_stale_checks(self.reindex.function)
        # Objects whose latest event already failed are left alone (one Query per key).
        self.metadata_table.grant_ledger_queries(self.reindex.function)
        self.ingestion.grant_enqueue(self.reindex.function)
        # Pacing: the reindex function reads the ingest queue's depth before it sends.
        self.ingestion.queue.grant(self.reindex.function, "sqs:GetQueueAttributes")
        self.image_store.grant_orthanc_storage(self.orthanc.task_definition.task_role)
        self.index_database.allow_from(self.orthanc.service, "Orthanc index connections")
        self.image_cache.grant_pull(
            self.orthanc.task_definition.obtain_execution_role(), Orthanc.IMAGE
        )
        # The first pull creates the cached repository: the rule must exist before a task.
        self.orthanc.service.node.add_dependency(self.image_cache.rule)
        self.orthanc.scale_on_requests(self.front_door.target_group)
        # The schedule rotates once when it is created: only after the service and the
        # redeploy rule exist, so the tasks started with the first password are replaced.
        self.index_database.rotation_schedule.node.add_dependency(self.rotation_redeploy)

        self._outputs()

    def _outputs(self) -> None:
        """What the CLI, the notebooks and the operator read from the deployed stack."""
        values = {
            "Bucket": self.image_store.bucket.bucket_name,
            "QueueUrl": self.ingestion.queue.queue_url,
            "DlqUrl": self.ingestion.dlq.queue_url,
            "Table": self.metadata_table.table.table_name,
            "StateMachineArn": self.ingestion.state_machine.state_machine_arn,
            "OrthancUrl": self.front_door.url,
        }
        for name in OUTPUTS:
            cdk.CfnOutput(self, name, value=values[name])
        cdk.CfnOutput(
            self,
            "OrthancAdminSecretArn",
            value=self.orthanc.admin_secret.secret_arn,
            description="Secrets Manager secret with the Orthanc administrators ({user: password})",
        )
        cdk.CfnOutput(
            self,
            "OrthancUploaderSecretArn",
            value=self.orthanc.uploader_secret.secret_arn,
            description=(
                "Secrets Manager secret with the Orthanc uploaders, STOW-RS only ({user: password})"
            ),
        )
        cdk.CfnOutput(self, "AlarmTopicArn", value=self.monitoring.topic.topic_arn)
        cdk.CfnOutput(
            self,
            "LedgerTable",
            value=self.metadata_table.ledger.table_name,
            description="The DLQ ledger (dicom-pipeline audit reads it)",
        )
        # Operations at scale (docs/operations.md).
        cdk.CfnOutput(
            self,
            "ExportPrefix",
            value=self.analytics.export_uri,
            description=(
                "dicom-pipeline export --out here: each run in a folder of its own, then the "
                "Glue table records switched to it"
            ),
        )
        cdk.CfnOutput(
            self,
            "AthenaWorkgroup",
            value=self.analytics.workgroup_name,
            description="Athena workgroup for SQL over the export (results SSE-KMS)",
        )
        cdk.CfnOutput(
            self,
            "GlueDatabase",
            value=self.analytics.database_name,
            description="Glue database of the table records over ExportPrefix",
        )
        cdk.CfnOutput(
            self,
            "ReindexStateMachineArn",
            value=self.reindex.state_machine.state_machine_arn,
            description="Reindex at scale: a Distributed Map over the bucket or its inventory",
        )
        cdk.CfnOutput(
            self,
            "InventoryBucket",
            value=self.inventory.bucket.bucket_name,
            description="Bucket of the daily S3 Inventory reports and the reindex run results",
        )
        cdk.CfnOutput(
            self,
            "InventoryPrefix",
            value=self.inventory.prefix_uri,
            description=(
                "The image bucket's daily S3 Inventory (CSV): one dated folder a day under this "
                "URI, each with its manifest (docs/operations.md#reindex-at-scale)"
            ),
        )
        # For operations and teardown (README, Deploy to AWS).
        cdk.CfnOutput(self, "OrthancCluster", value=self.orthanc.cluster.cluster_name)
        cdk.CfnOutput(self, "OrthancServiceName", value=self.orthanc.service.service_name)
        cdk.CfnOutput(
            self, "LoadBalancerArn", value=self.front_door.load_balancer.load_balancer_arn
        )
        cdk.CfnOutput(self, "WebAclArn", value=self.web_firewall.web_acl.attr_arn)
        cdk.CfnOutput(
            self,
            "OrthancImageRepository",
            value=f"{self.image_cache.prefix}/{Orthanc.IMAGE}",
            description="ECR repository the pull-through cache creates (delete it after teardown)",
        )
        cdk.CfnOutput(
            self, "DatabaseInstance", value=self.index_database.instance.instance_identifier
        )
