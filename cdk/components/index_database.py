"""Orthanc's index: RDS PostgreSQL, TLS forced, encrypted, credentials rotated."""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_kms as kms
from aws_cdk import aws_rds as rds
from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct

from cdk.components.log_archive import LogArchive
from cdk.constants import Database as C
from cdk.naming import stack_instance_suffix


class IndexDatabase(Construct):
    """A PostgreSQL instance in isolated subnets, reachable only from allowed peers.

    ``rds.force_ssl = 1`` refuses clear-text connections; Orthanc verifies the server
    certificate (``sslmode=verify-full``) against the RDS CA (:data:`Database.CA_CERTIFICATE
    <cdk.constants.Database.CA_CERTIFICATE>`). Storage, Performance Insights and the
    credentials secret use the construct's own KMS key; the log groups RDS exports to are
    created here first so they are KMS-encrypted too.

    The instance identifier is ``<identifier_prefix>-<suffix>``, the suffix unique per stack
    instance (:mod:`cdk.naming`). RDS names its log groups after the identifier, and those
    are retained when the stack is deleted: with a fixed identifier, deploying the stack again
    after a teardown would fail on the log groups left behind.

    Attributes
    ----------
    instance, instance_identifier, engine, secret, rotation_schedule, key, security_group
    """

    LOG_EXPORTS = ("postgresql", "upgrade")

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        vpc: ec2.IVpc,
        subnets: ec2.SubnetSelection,
        rotation_subnets: ec2.SubnetSelection,
        secrets_manager_endpoint: ec2.IInterfaceVpcEndpoint,
        log_archive: LogArchive,
        identifier_prefix: str,
        multi_az: bool = C.MULTI_AZ,
        instance_type: str = C.INSTANCE_TYPE,
        backup_days: int = C.BACKUP_DAYS,
        engine_version: str = C.ENGINE_VERSION,
    ) -> None:
        super().__init__(scope, construct_id)
        major, _, minor = engine_version.partition(".")
        if not (major.isdigit() and minor.isdigit()):
            raise ValueError(
                f"engine_version must be a full version such as 17.9, not {engine_version!r}"
            )
        #: PostgreSQL at ``engine_version`` (the parameter group's family is its major version).
        self.engine = rds.DatabaseInstanceEngine.postgres(
            version=rds.PostgresEngineVersion.of(engine_version, major)
        )
        if backup_days < C.MIN_BACKUP_DAYS:
            raise ValueError(f"backups must be kept at least {C.MIN_BACKUP_DAYS} days")
        self.key = kms.Key(
            self,
            "Key",
            description="dicom-pipeline: index database encryption",
            enable_key_rotation=True,
            removal_policy=cdk.RemovalPolicy.RETAIN,
        )
        self.security_group = ec2.SecurityGroup(
            self,
            "SecurityGroup",
            vpc=vpc,
            description="index database: PostgreSQL from allowed peers only",
            allow_all_outbound=False,
        )
        self.instance_identifier = f"{identifier_prefix}-{stack_instance_suffix()}"
        log_groups = [
            log_archive.log_group(
                self,
                f"Logs{name.title()}",
                name=f"/aws/rds/instance/{self.instance_identifier}/{name}",
            )
            for name in self.LOG_EXPORTS
        ]
        self.instance = rds.DatabaseInstance(
            self,
            "Instance",
            engine=self.engine,
            instance_identifier=self.instance_identifier,
            instance_type=ec2.InstanceType(instance_type),
            vpc=vpc,
            vpc_subnets=subnets,
            security_groups=[self.security_group],
            publicly_accessible=False,
            port=C.PORT,
            database_name=C.NAME,
            credentials=rds.Credentials.from_generated_secret(
                C.USERNAME, encryption_key=self.key, exclude_characters=C.PASSWORD_EXCLUDE
            ),
            parameter_group=rds.ParameterGroup(
                self, "Parameters", engine=self.engine, parameters={"rds.force_ssl": "1"}
            ),
            ca_certificate=rds.CaCertificate.of(C.CA_CERTIFICATE),
            multi_az=multi_az,
            storage_encrypted=True,
            storage_encryption_key=self.key,
            storage_type=rds.StorageType.GP3,
            allocated_storage=C.ALLOCATED_GB,
            max_allocated_storage=C.MAX_ALLOCATED_GB,
            backup_retention=cdk.Duration.days(backup_days),
            copy_tags_to_snapshot=True,
            deletion_protection=True,
            removal_policy=cdk.RemovalPolicy.SNAPSHOT,
            auto_minor_version_upgrade=True,
            iam_authentication=True,
            cloudwatch_logs_exports=list(self.LOG_EXPORTS),
            monitoring_interval=cdk.Duration.seconds(60),
            enable_performance_insights=True,
            performance_insight_encryption_key=self.key,
        )
        for group in log_groups:
            self.instance.node.add_dependency(group)
        assert self.instance.secret is not None  # from_generated_secret always makes one
        self.secret: secretsmanager.ISecret = self.instance.secret
        self.instance.add_rotation_single_user(
            automatically_after=cdk.Duration.days(C.ROTATION_DAYS),
            vpc_subnets=rotation_subnets,
            endpoint=secrets_manager_endpoint,
        )
        # The schedule (CDK puts it under the secret): it also rotates once when created.
        (self.rotation_schedule,) = [
            c for c in self.secret.node.children if isinstance(c, secretsmanager.RotationSchedule)
        ]

    def allow_from(self, peer: ec2.IConnectable, description: str) -> None:
        """Open the PostgreSQL port to ``peer`` (and nothing else)."""
        self.instance.connections.allow_default_port_from(peer, description)

    @property
    def endpoint_address(self) -> str:
        return self.instance.db_instance_endpoint_address

    @property
    def endpoint_port(self) -> str:
        return self.instance.db_instance_endpoint_port
