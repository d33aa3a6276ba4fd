"""Orthanc on ECS Fargate, configured only through SSM parameters and secrets."""

from __future__ import annotations

from pathlib import Path

import aws_cdk as cdk
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_elasticloadbalancingv2 as elbv2
from aws_cdk import aws_kms as kms
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk import aws_ssm as ssm
from constructs import Construct

from cdk import orthanc_entrypoint as entrypoint
from cdk.components.log_archive import LogArchive
from cdk.components.network import https_egress_only_group
from cdk.constants import Database
from cdk.constants import Orthanc as C
from pipeline.orthanc import authz
from pipeline.orthanc.config import deployed, to_environment

#: The container's entry point (cdk/orthanc_entrypoint.py), run with the image's python3:
#: writes the RDS root CA and the authorization plugin, builds the users, then hands over to
#: the image's entry point. Nothing is downloaded.
ENTRYPOINT = Path(entrypoint.__file__).read_text(encoding="utf-8")
#: The authorization plugin, as Orthanc's Python plugin runs it.
AUTHZ_SCRIPT = Path(authz.__file__).read_text(encoding="utf-8")
#: Its SHA-256, pinned in the task definition: the entry point refuses parameters that differ.
AUTHZ_SHA256 = entrypoint.script_sha256(AUTHZ_SCRIPT)
#: An SSM Standard parameter holds at most 4 KB.
STANDARD_PARAMETER_BYTES = 4096


def chunks(text: str, size: int = C.PARAMETER_CHUNK_CHARS) -> list[str]:
    """``text`` in parts of at most ``size`` characters (ASCII only: 1 byte each).

    Examples
    --------
    >>> chunks("abcde", 2)
    ['ab', 'cd', 'e']
    """
    if not text.isascii():
        raise ValueError("only ASCII text is split into parameters")
    return [text[i : i + size] for i in range(0, len(text), size)]


class OrthancService(Construct):
    """``orthancteam/orthanc`` at a pinned tag, on Fargate (arm64) in private subnets.

    Orthanc's settings are :func:`pipeline.orthanc.config.deployed` (the one source shared
    with the local Orthanc) turned into the image's ``ORTHANC__SECTION__KEY`` variables by
    :func:`~pipeline.orthanc.config.to_environment`. Every value is an SSM String parameter
    under ``/dicom-pipeline/<env>/orthanc/``, injected as an ECS secret, so the task
    definition holds no configuration in clear. The entry point's inputs are parameters
    too: the PEM root certificate of the database's CA (``database_ca``, see
    :mod:`cdk.rds_ca`) and the authorization plugin (:mod:`pipeline.orthanc.authz`, in
    parts), whose SHA-256 alone is in the task definition's environment: the entry point
    starts Orthanc only with the plugin this deploy built. Secrets Manager holds the
    database password (``PGPASSWORD``, read by libpq) and the Orthanc users:
    ``admin_secret`` (administrators) and ``uploader_secret`` (uploaders: STOW-RS only),
    each a generated ``{"<user>": "<password>"}`` that operators may extend. See
    docs/security.md for the settings and why.

    Attributes
    ----------
    cluster, task_definition, container, service, security_group, admin_secret,
    uploader_secret, secrets_key, parameters, settings
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        vpc: ec2.IVpc,
        subnets: ec2.SubnetSelection,
        environment: str,
        image: ecs.ContainerImage,
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
            description="dicom-pipeline: Orthanc users secrets encryption",
            enable_key_rotation=True,
        )
        # "Users" keeps the logical ID of the single users secret it replaces (same password).
        self.admin_secret = self._users_secret(
            "Users", C.ADMIN_USER, "Orthanc administrators: {user: password}"
        )
        self.uploader_secret = self._users_secret(
            "Uploaders", C.UPLOADER_USER, "Orthanc uploaders (STOW-RS only): {user: password}"
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
        #: Orthanc's settings: storage (plain "orthanc/<uuid>.dcm" objects, no
        #: compression, no client-side encryption: S3 encrypts with the bucket's key), index
        #: (PostgreSQL over TLS with the server certificate verified; no password in the URI,
        #: libpq reads PGPASSWORD), access and the authorization plugin.
        self.settings: dict[str, str] = to_environment(
            deployed(
                name=f"dicom-pipeline-{environment}",
                bucket=bucket_name,
                region=stack.region,
                postgresql_uri=connection_uri,
                authorization_script=C.AUTHZ_SCRIPT_PATH,
            )
        )
        # The entry point's inputs (cdk/orthanc_entrypoint.py), not Orthanc settings.
        inputs = {entrypoint.CA: database_ca, entrypoint.CA_PATH: C.RDS_CA_BUNDLE_PATH}
        for i, part in enumerate(chunks(AUTHZ_SCRIPT)):
            inputs[f"{entrypoint.SCRIPT}{i}"] = part
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
            for name, value in {**self.settings, **inputs}.items()
        }
        secrets = {name: ecs.Secret.from_ssm_parameter(p) for name, p in self.parameters.items()}
        secrets[entrypoint.ADMINISTRATORS] = ecs.Secret.from_secrets_manager(self.admin_secret)
        secrets[entrypoint.UPLOADERS] = ecs.Secret.from_secrets_manager(self.uploader_secret)
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
            image=image,
            entry_point=["python3", "-c"],
            command=[ENTRYPOINT],
            # Not a secret, and not a parameter: who may write the parameters must not be
            # able to change what the entry point accepts as the plugin.
            environment={entrypoint.SCRIPT_SHA256: AUTHZ_SHA256},
            secrets=secrets,
            port_mappings=[
                ecs.PortMapping(container_port=C.HTTP_PORT, name="http"),
                ecs.PortMapping(container_port=C.HEALTH_PORT, name="health"),
            ],
            logging=ecs.LogDrivers.aws_logs(
                stream_prefix="orthanc", log_group=log_archive.log_group(self, "Logs")
            ),
            # Liveness only: the plugin's /livez, which never reads the index database (a
            # Multi-AZ failover must not make ECS replace every task). The load balancer
            # checks readiness, /healthz, which does (cdk/components/front_door.py).
            health_check=ecs.HealthCheck(
                command=["CMD-SHELL", f"{C.LIVENESS_COMMAND} || exit 1"],
                interval=cdk.Duration.seconds(30),
                timeout=cdk.Duration.seconds(10),
                retries=3,
                start_period=cdk.Duration.seconds(120),
            ),
            essential=True,
        )
        # HTTPS out: ECR (the image), S3 and the other AWS APIs. PostgreSQL
        # to the database is added when the database allows this group in.
        self.security_group = https_egress_only_group(
            self,
            "SecurityGroup",
            vpc=vpc,
            description="Orthanc tasks: HTTP and health checks from the load balancer only",
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

    def _users_secret(
        self, construct_id: str, user: str, description: str
    ) -> secretsmanager.Secret:
        """A generated ``{"<user>": "<32 letters and digits>"}``, encrypted with the users key."""
        return secretsmanager.Secret(
            self,
            construct_id,
            description=description,
            encryption_key=self.secrets_key,
            generate_secret_string=secretsmanager.SecretStringGenerator(
                secret_string_template="{}",
                generate_string_key=user,
                exclude_punctuation=True,
                password_length=32,
            ),
        )

    def scale_on_requests(self, target_group: elbv2.ApplicationTargetGroup) -> None:
        """Also scale on load balancer requests per task."""
        self.scaling.scale_on_request_count(
            "Requests", requests_per_target=C.REQUESTS_PER_TARGET, target_group=target_group
        )
