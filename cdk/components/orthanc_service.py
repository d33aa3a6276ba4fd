"""Orthanc on ECS Fargate, configured only through SSM parameters and secrets."""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_elasticloadbalancingv2 as elbv2
from aws_cdk import aws_kms as kms
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk import aws_ssm as ssm
from constructs import Construct

from cdk.components.log_archive import LogArchive
from cdk.components.network import https_egress_only_group
from cdk.constants import Database
from cdk.constants import Orthanc as C

#: Runs before the image's own entry point: write the RDS root CA that libpq needs for
#: ``sslmode=verify-full`` (the ECS secret ``RDS_CA_BUNDLE``, from an SSM parameter) to the
#: file the connection URI names, refuse to start without it, then hand over to the image's
#: entry point with its default argument. Nothing is downloaded.
CA_BOOTSTRAP = (
    'case "$RDS_CA_BUNDLE" in *"-----BEGIN CERTIFICATE-----"*) ;; '
    '*) echo "RDS_CA_BUNDLE holds no PEM certificate" >&2; exit 1 ;; esac; '
    'printf "%s\\n" "$RDS_CA_BUNDLE" > "$RDS_CA_BUNDLE_PATH" '
    "&& exec /docker-entrypoint.sh /tmp/orthanc.json"
)
#: An SSM Standard parameter holds at most 4 KB.
STANDARD_PARAMETER_BYTES = 4096


class OrthancService(Construct):
    """``orthancteam/orthanc`` at a pinned tag, on Fargate (arm64) in private subnets.

    Configuration uses the image's ``ORTHANC__SECTION__KEY`` environment convention. Every
    value is an SSM String parameter under ``/dicom-pipeline/<env>/orthanc/``, injected as
    an ECS secret, so the task definition holds no configuration in clear. The database
    password (``PGPASSWORD``, read by libpq) and the Orthanc users
    (``ORTHANC__REGISTERED_USERS``, a generated ``{"admin": "<password>"}`` secret) come from
    Secrets Manager. ``database_ca`` is the PEM root certificate of the database's CA (see
    :mod:`cdk.rds_ca`), also a parameter. See docs/security.md for the settings and why.

    Attributes
    ----------
    cluster, task_definition, service, security_group, admin_secret, parameters
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        vpc: ec2.IVpc,
        subnets: ec2.SubnetSelection,
        environment: str,
        image_tag: str,
        bucket_name: str,
        database_host: str,
        database_port: str,
        database_secret: secretsmanager.ISecret,
        database_ca: str,
        log_archive: LogArchive,
        cpu: int = C.CPU,
        memory_mib: int = C.MEMORY_MIB,
        desired_count: int = C.DESIRED_COUNT,
        max_count: int = C.MAX_COUNT,
    ) -> None:
        super().__init__(scope, construct_id)
        stack = cdk.Stack.of(self)
        if "BEGIN CERTIFICATE" not in database_ca:
            raise ValueError("database_ca must be a PEM certificate")
        if len(database_ca.encode()) > STANDARD_PARAMETER_BYTES:
            raise ValueError("database_ca must fit a standard SSM parameter (4 KB)")
        self.secrets_key = kms.Key(
            self,
            "SecretsKey",
            description="dicom-pipeline: Orthanc users secret encryption",
            enable_key_rotation=True,
        )
        self.admin_secret = secretsmanager.Secret(
            self,
            "Users",
            description="Orthanc RegisteredUsers: {user: password}",
            encryption_key=self.secrets_key,
            generate_secret_string=secretsmanager.SecretStringGenerator(
                secret_string_template="{}",
                generate_string_key=C.ADMIN_USER,
                exclude_punctuation=True,
                password_length=32,
            ),
        )

        connection_uri = cdk.Fn.join(
            "",
            [
                f"postgresql://{Database.USERNAME}@",
                database_host,
                ":",
                database_port,
                f"/{Database.NAME}?sslmode=verify-full&sslrootcert={C.RDS_CA_BUNDLE_PATH}",
            ],
        )
        settings: dict[str, str] = {
            "ORTHANC__NAME": f"dicom-pipeline-{environment}",
            # Access: only authenticated HTTP (DICOMweb, REST, UI) through the load balancer.
            "ORTHANC__REMOTE_ACCESS_ALLOWED": "true",
            "ORTHANC__AUTHENTICATION_ENABLED": "true",
            "ORTHANC__DICOM_SERVER_ENABLED": "false",
            "ORTHANC__DICOM_WEB__ENABLE": "true",
            "ORTHANC__DICOM_WEB__ROOT": "/dicom-web/",
            # Storage: plain DICOM files the pipeline can read, "<uuid>.dcm" at the bucket
            # root. No compression, and no client-side encryption (no StorageEncryption
            # section): S3 encrypts at rest with the bucket's KMS key.
            "ORTHANC__STORAGE_COMPRESSION": "false",
            "ORTHANC__AWS_S3_STORAGE__BUCKET_NAME": bucket_name,
            "ORTHANC__AWS_S3_STORAGE__REGION": stack.region,
            "ORTHANC__AWS_S3_STORAGE__STORAGE_STRUCTURE": "flat",
            # A re-sent instance replaces the stored one (a correction wins); the pipeline
            # sees the old object's removal and the new one's creation.
            "ORTHANC__OVERWRITE_INSTANCES": "true",
            # Index: PostgreSQL over TLS, server certificate verified against the RDS CA.
            # No password here: libpq reads PGPASSWORD (an ECS secret).
            "ORTHANC__POSTGRESQL__ENABLE_INDEX": "true",
            "ORTHANC__POSTGRESQL__ENABLE_STORAGE": "false",
            "ORTHANC__POSTGRESQL__LOCK": "false",  # several tasks share the index
            "ORTHANC__POSTGRESQL__CONNECTION_URI": connection_uri,
            # Used by the entry point (CA_BOOTSTRAP), not by Orthanc.
            "RDS_CA_BUNDLE": database_ca,
            "RDS_CA_BUNDLE_PATH": C.RDS_CA_BUNDLE_PATH,
        }
        prefix = f"{C.PARAMETER_PREFIX}/{environment}/orthanc"
        self.parameters: dict[str, ssm.StringParameter] = {
            name: ssm.StringParameter(
                self,
                f"Param{name.title().replace('_', '')}",
                parameter_name=f"{prefix}/{name}",
                string_value=value,
                description=f"Orthanc container setting {name}",
                tier=ssm.ParameterTier.STANDARD,
            )
            for name, value in settings.items()
        }
        secrets = {name: ecs.Secret.from_ssm_parameter(p) for name, p in self.parameters.items()}
        secrets["ORTHANC__REGISTERED_USERS"] = ecs.Secret.from_secrets_manager(self.admin_secret)
        secrets["PGPASSWORD"] = ecs.Secret.from_secrets_manager(database_secret, "password")

        self.cluster = ecs.Cluster(
            self, "Cluster", vpc=vpc, container_insights_v2=ecs.ContainerInsights.ENABLED
        )
        self.task_definition = ecs.FargateTaskDefinition(
            self,
            "Task",
            cpu=cpu,
            memory_limit_mib=memory_mib,
            runtime_platform=ecs.RuntimePlatform(
                cpu_architecture=ecs.CpuArchitecture.ARM64,
                operating_system_family=ecs.OperatingSystemFamily.LINUX,
            ),
        )
        self.container = self.task_definition.add_container(
            "Orthanc",
            image=ecs.ContainerImage.from_registry(f"{C.IMAGE}:{image_tag}"),
            entry_point=["/bin/sh", "-c"],
            command=[CA_BOOTSTRAP],
            secrets=secrets,
            port_mappings=[ecs.PortMapping(container_port=C.HTTP_PORT)],
            logging=ecs.LogDrivers.aws_logs(
                stream_prefix="orthanc", log_group=log_archive.log_group(self, "Logs")
            ),
            health_check=ecs.HealthCheck(
                command=["CMD-SHELL", f"python3 {C.HEALTH_CHECK} || exit 1"],
                interval=cdk.Duration.seconds(30),
                timeout=cdk.Duration.seconds(10),
                retries=3,
                start_period=cdk.Duration.seconds(120),
            ),
            essential=True,
        )
        # HTTPS out: Docker Hub, S3 and the other AWS APIs. PostgreSQL
        # to the database is added when the database allows this group in.
        self.security_group = https_egress_only_group(
            self,
            "SecurityGroup",
            vpc=vpc,
            description="Orthanc tasks: HTTP from the load balancer only",
        )
        self.service = ecs.FargateService(
            self,
            "Service",
            cluster=self.cluster,
            task_definition=self.task_definition,
            desired_count=desired_count,
            vpc_subnets=subnets,
            security_groups=[self.security_group],
            assign_public_ip=False,
            min_healthy_percent=100,
            max_healthy_percent=200,
            circuit_breaker=ecs.DeploymentCircuitBreaker(enable=True, rollback=True),
            health_check_grace_period=cdk.Duration.seconds(180),
            propagate_tags=ecs.PropagatedTagSource.SERVICE,
            enable_execute_command=False,
        )
        self.scaling = self.service.auto_scale_task_count(
            min_capacity=desired_count, max_capacity=max_count
        )
        self.scaling.scale_on_cpu_utilization(
            "Cpu", target_utilization_percent=C.CPU_TARGET_PERCENT
        )

    def scale_on_requests(self, target_group: elbv2.ApplicationTargetGroup) -> None:
        """Also scale on load balancer requests per task."""
        self.scaling.scale_on_request_count(
            "Requests", requests_per_target=C.REQUESTS_PER_TARGET, target_group=target_group
        )
