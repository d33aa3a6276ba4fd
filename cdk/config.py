"""Deployment settings read from CDK context (``cdk.json``, ``cdk.context.json``, ``-c``).

Values given with ``cdk -c key=value`` arrive as strings, so every field is coerced and
checked here; a bad value fails the synth with a message naming the context key.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from cdk.constants import App, Database, ImageCache, ImageStore, Ingestion, Network, Orthanc, Waf
from pipeline.names import PIPE_BATCH_SIZE

__all__ = ["CertificateConfig", "ConfigError", "DeploymentConfig"]

T = TypeVar("T")

#: Every context key the app reads (anything else in the context is CDK's own).
CONTEXT_KEYS = (
    "environment",
    "account",
    "region",
    "availability_zones",
    "max_azs",
    "nat_gateways",
    "orthanc_image_tag",
    "orthanc_desired_count",
    "orthanc_max_count",
    "orthanc_cpu",
    "orthanc_memory_mib",
    "certificate_arn",
    "domain_name",
    "hosted_zone_id",
    "hosted_zone_name",
    "client_cidrs",
    "waf_rate_limit",
    "ecr_cache_prefix",
    "dockerhub_secret_arn",
    "multi_az",
    "db_instance_type",
    "db_engine_version",
    "db_backup_days",
    "noncurrent_version_days",
    "parse_reserved_concurrency",
    "reindex_max_queue_depth",
    "alarm_email",
)

_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
#: PostgreSQL's full version on RDS: major.minor (a bare major is deprecated for new instances).
_ENGINE_VERSION = re.compile(r"^[1-9][0-9]*\.[0-9]+$")
_ENV = re.compile(r"^[a-z][a-z0-9-]{0,15}$")
#: ECR's rule for a pull-through cache repository prefix (2-30 characters).
_ECR_PREFIX = re.compile(
    r"^(?=.{2,30}$)[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*$"
)
_SECRET_ARN = re.compile(
    r"^arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:\d{12}:secret:"
    + re.escape(ImageCache.SECRET_PREFIX)
    + r"[A-Za-z0-9/_+=.@-]+$"
)
#: What to write when the context lacks the client allow-list.
_CIDRS_REQUIRED = (
    "context 'client_cidrs' is required: the IPv4 networks allowed to reach the load balancer, "
    'e.g. -c client_cidrs=203.0.113.0/24 or "client_cidrs": ["203.0.113.0/24"] in '
    'cdk.context.json (write "0.0.0.0/0" to allow any address)'
)


class ConfigError(ValueError):
    """A context value is missing, malformed or inconsistent."""


def _bool(key: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in {"true", "false", "1", "0", "yes", "no"}:
        return value.lower() in {"true", "1", "yes"}
    raise ConfigError(f"context {key!r} must be true or false, not {value!r}")


def _int(key: str, value: object) -> int:
    try:
        if isinstance(value, bool):
            raise TypeError
        return int(str(value))
    except (TypeError, ValueError):
        raise ConfigError(f"context {key!r} must be an integer, not {value!r}") from None


def _optional_int(key: str, value: object) -> int | None:
    if isinstance(value, str) and value.strip().lower() in {"none", "null"}:
        return None
    return _int(key, value)


def _str_list(key: str, value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            value = json.loads(text)
        else:
            value = [part.strip() for part in text.split(",") if part.strip()]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"context {key!r} must be a list of strings, not {value!r}")
    return tuple(value)


def _optional_str(value: object) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


@dataclass(frozen=True)
class CertificateConfig:
    """Either an existing ACM certificate (``certificate_arn``) or a domain to validate by DNS."""

    certificate_arn: str | None = None
    domain_name: str | None = None
    hosted_zone_id: str | None = None
    hosted_zone_name: str | None = None

    @property
    def configured(self) -> bool:
        """Whether a real certificate (imported or DNS-validated) is configured."""
        return bool(self.certificate_arn or self.domain_name)

    def check(self) -> None:
        """Raise :class:`ConfigError` when the combination cannot work."""
        zone = (self.hosted_zone_id, self.hosted_zone_name)
        if any(zone) and not all(zone):
            raise ConfigError("context 'hosted_zone_id' and 'hosted_zone_name' go together")
        if self.certificate_arn and not self.certificate_arn.startswith("arn:"):
            raise ConfigError("context 'certificate_arn' must be an ACM certificate ARN")
        if self.domain_name and not self.certificate_arn and not all(zone):
            raise ConfigError(
                "context 'domain_name' without 'certificate_arn' needs 'hosted_zone_id' and "
                "'hosted_zone_name' (the certificate is validated by DNS in that zone)"
            )
        if self.domain_name and self.hosted_zone_name:
            zone_name = self.hosted_zone_name.rstrip(".")
            if not (self.domain_name == zone_name or self.domain_name.endswith("." + zone_name)):
                raise ConfigError("context 'domain_name' must be in 'hosted_zone_name'")


@dataclass(frozen=True)
class DeploymentConfig:
    """Everything that differs between deployments; defaults live in :mod:`cdk.constants`."""

    environment: str = App.DEFAULT_ENVIRONMENT
    account: str | None = None
    region: str = App.DEFAULT_REGION
    availability_zones: tuple[str, ...] = ()
    max_azs: int = Network.MAX_AZS
    nat_gateways: int = Network.NAT_GATEWAYS
    orthanc_image_tag: str = Orthanc.IMAGE_TAG
    orthanc_desired_count: int = Orthanc.DESIRED_COUNT
    orthanc_max_count: int = Orthanc.MAX_COUNT
    orthanc_cpu: int = Orthanc.CPU
    orthanc_memory_mib: int = Orthanc.MEMORY_MIB
    certificate: CertificateConfig = field(default_factory=CertificateConfig)
    #: Required in the context (never a silent "any address"); "0.0.0.0/0" must be written out.
    client_cidrs: tuple[str, ...] = ()
    waf_rate_limit: int = Waf.RATE_LIMIT
    #: None: ``dicom-pipeline-<environment>`` (see :attr:`image_cache_prefix`).
    ecr_cache_prefix: str | None = None
    #: The Docker Hub credentials for the ECR pull-through cache; None refuses the deploy.
    dockerhub_secret_arn: str | None = None
    multi_az: bool = Database.MULTI_AZ
    db_instance_type: str = Database.INSTANCE_TYPE
    #: PostgreSQL's full version, major.minor (a major alone is deprecated for new instances).
    db_engine_version: str = Database.ENGINE_VERSION
    db_backup_days: int = Database.BACKUP_DAYS
    noncurrent_version_days: int = ImageStore.NONCURRENT_VERSION_DAYS
    #: Reserved concurrent executions of the parse Lambda: always set, the bound on how many
    #: batches are parsed at once (docs/capacity.md).
    parse_reserved_concurrency: int = Ingestion.PARSE_RESERVED_CONCURRENCY
    #: A reindex waits while the ingest queue holds more messages than this; None: twice what
    #: the parse concurrency takes in one round of batches (:attr:`reindex_queue_depth`).
    reindex_max_queue_depth: int | None = None
    alarm_email: str | None = None

    @property
    def stack_name(self) -> str:
        """``DicomPipeline-<environment>``."""
        return f"{App.STACK_PREFIX}-{self.environment}"

    @property
    def reindex_queue_depth(self) -> int:
        """The reindex pacing threshold: the context value, else ``2 x
        parse_reserved_concurrency x PIPE_BATCH_SIZE`` (one round of batches in flight, one
        waiting; 2,000 with the defaults)."""
        if self.reindex_max_queue_depth is not None:
            return self.reindex_max_queue_depth
        return 2 * self.parse_reserved_concurrency * PIPE_BATCH_SIZE

    @property
    def image_cache_prefix(self) -> str:
        """The ECR repository prefix of the pull-through cache rule this stack creates."""
        return self.ecr_cache_prefix or ImageCache.PREFIX_TEMPLATE.format(
            environment=self.environment
        )

    @property
    def any_client(self) -> bool:
        """Whether the allow-list is written out as "any IPv4 address"."""
        return "0.0.0.0/0" in self.client_cidrs

    @classmethod
    def from_context(
        cls, get: Callable[[str], Any], environ: Mapping[str, str] | None = None
    ) -> DeploymentConfig:
        """Build and check the settings; ``get`` is ``node.try_get_context``.

        Examples
        --------
        >>> context = {"multi_az": "false", "client_cidrs": "203.0.113.0/24"}
        >>> DeploymentConfig.from_context(context.get, environ={}).multi_az
        False
        """
        env = os.environ if environ is None else environ

        def opt(key: str, conv: Callable[[str, object], T], default: T) -> T:
            value = get(key)
            return default if value is None or value == "" else conv(key, value)

        config = cls(
            environment=str(get("environment") or App.DEFAULT_ENVIRONMENT),
            account=_optional_str(get("account")),
            region=str(get("region") or env.get("CDK_DEFAULT_REGION") or App.DEFAULT_REGION),
            availability_zones=opt("availability_zones", _str_list, ()),
            max_azs=opt("max_azs", _int, Network.MAX_AZS),
            nat_gateways=opt("nat_gateways", _int, Network.NAT_GATEWAYS),
            orthanc_image_tag=str(get("orthanc_image_tag") or Orthanc.IMAGE_TAG),
            orthanc_desired_count=opt("orthanc_desired_count", _int, Orthanc.DESIRED_COUNT),
            orthanc_max_count=opt("orthanc_max_count", _int, Orthanc.MAX_COUNT),
            orthanc_cpu=opt("orthanc_cpu", _int, Orthanc.CPU),
            orthanc_memory_mib=opt("orthanc_memory_mib", _int, Orthanc.MEMORY_MIB),
            certificate=CertificateConfig(
                certificate_arn=_optional_str(get("certificate_arn")),
                domain_name=_optional_str(get("domain_name")),
                hosted_zone_id=_optional_str(get("hosted_zone_id")),
                hosted_zone_name=_optional_str(get("hosted_zone_name")),
            ),
            client_cidrs=opt("client_cidrs", _str_list, ()),
            waf_rate_limit=opt("waf_rate_limit", _int, Waf.RATE_LIMIT),
            ecr_cache_prefix=_optional_str(get("ecr_cache_prefix")),
            dockerhub_secret_arn=_optional_str(get("dockerhub_secret_arn")),
            multi_az=opt("multi_az", _bool, Database.MULTI_AZ),
            db_instance_type=str(get("db_instance_type") or Database.INSTANCE_TYPE),
            db_engine_version=str(get("db_engine_version") or Database.ENGINE_VERSION).strip(),
            db_backup_days=opt("db_backup_days", _int, Database.BACKUP_DAYS),
            noncurrent_version_days=opt(
                "noncurrent_version_days", _int, ImageStore.NONCURRENT_VERSION_DAYS
            ),
            parse_reserved_concurrency=opt(
                "parse_reserved_concurrency", _int, Ingestion.PARSE_RESERVED_CONCURRENCY
            ),
            reindex_max_queue_depth=opt("reindex_max_queue_depth", _optional_int, None),
            alarm_email=_optional_str(get("alarm_email")),
        )
        config.check()
        return config

    def check(self) -> None:
        """Raise :class:`ConfigError` on any value that cannot be deployed."""
        if not _ENV.match(self.environment):
            raise ConfigError("context 'environment' must match [a-z][a-z0-9-]{0,15}")
        if not _TAG.match(self.orthanc_image_tag) or self.orthanc_image_tag == "latest":
            raise ConfigError("context 'orthanc_image_tag' must be a pinned tag, not 'latest'")
        if not _ENGINE_VERSION.match(self.db_engine_version):
            raise ConfigError(
                "context 'db_engine_version' must be PostgreSQL's full version, major.minor "
                f"(e.g. {Database.ENGINE_VERSION}): a major version alone is deprecated for new "
                "RDS instances"
            )
        if self.db_backup_days < Database.MIN_BACKUP_DAYS:
            raise ConfigError(
                f"context 'db_backup_days' must be at least {Database.MIN_BACKUP_DAYS}"
            )
        if self.max_azs < 2 or (self.availability_zones and len(self.availability_zones) < 2):
            raise ConfigError("the VPC needs at least two availability zones")
        if self.nat_gateways < 1:
            raise ConfigError(
                "context 'nat_gateways' must be at least 1 (the tasks pull their image from ECR "
                "and reach AWS APIs that have no endpoint in the VPC through it)"
            )
        if not 1 <= self.orthanc_desired_count <= self.orthanc_max_count:
            raise ConfigError("need 1 <= orthanc_desired_count <= orthanc_max_count")
        if self.noncurrent_version_days < 1:
            raise ConfigError("context 'noncurrent_version_days' must be at least 1")
        if self.parse_reserved_concurrency < 1:
            raise ConfigError(
                "context 'parse_reserved_concurrency' must be at least 1 (0 would stop "
                "ingestion); it bounds how many batches are parsed at once (docs/capacity.md)"
            )
        if self.reindex_max_queue_depth is not None and self.reindex_max_queue_depth < 1:
            raise ConfigError(
                "context 'reindex_max_queue_depth' must be at least 1 (0 would never send); "
                "leave it unset for twice what the parse concurrency takes at once"
            )
        if not self.client_cidrs:
            raise ConfigError(_CIDRS_REQUIRED)
        for cidr in self.client_cidrs:
            try:
                ipaddress.IPv4Network(cidr, strict=True)
            except ValueError:
                raise ConfigError(
                    f"context 'client_cidrs': {cidr!r} is not an IPv4 CIDR block"
                ) from None
        if not Waf.MIN_RATE_LIMIT <= self.waf_rate_limit <= Waf.MAX_RATE_LIMIT:
            raise ConfigError(
                f"context 'waf_rate_limit' must be between {Waf.MIN_RATE_LIMIT} and "
                f"{Waf.MAX_RATE_LIMIT:,} (requests per client IP in "
                f"{Waf.RATE_WINDOW_SECONDS // 60} minutes)"
            )
        if not _ECR_PREFIX.match(self.image_cache_prefix):
            raise ConfigError(
                f"context 'ecr_cache_prefix': {self.image_cache_prefix!r} is not an ECR repository "
                "prefix (2-30 lowercase letters, digits, '.', '_', '-', '/'); set one"
            )
        if self.dockerhub_secret_arn and not _SECRET_ARN.match(self.dockerhub_secret_arn):
            raise ConfigError(
                "context 'dockerhub_secret_arn' must be the full ARN of a Secrets Manager secret "
                f"whose name starts with {ImageCache.SECRET_PREFIX!r} (ECR reads no other)"
            )
        self.certificate.check()
