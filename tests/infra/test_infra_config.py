"""Deployment settings from CDK context: coercion of ``-c`` strings and refusals."""

from __future__ import annotations

from typing import Any

import pytest

from cdk.config import ConfigError, DeploymentConfig


def _config(**context: Any) -> DeploymentConfig:
    return DeploymentConfig.from_context(context.get, environ={})


def test_defaults_are_pinned_and_safe() -> None:
    config = _config()
    assert config.stack_name == "DicomPipeline-dev"
    assert config.orthanc_image_tag != "latest"
    assert config.multi_az is True
    assert config.db_backup_days >= 7
    assert not config.certificate.configured
    assert config.parse_reserved_concurrency is None  # unreserved: fits any account's quota


def test_cli_strings_are_coerced() -> None:
    config = _config(
        multi_az="false",
        client_cidrs="203.0.113.0/24, 198.51.100.7/32",
        availability_zones='["eu-west-1a", "eu-west-1b"]',
        orthanc_max_count="6",
        region="eu-west-1",
        parse_reserved_concurrency="25",
    )
    assert config.multi_az is False
    assert config.client_cidrs == ("203.0.113.0/24", "198.51.100.7/32")
    assert config.availability_zones == ("eu-west-1a", "eu-west-1b")
    assert config.orthanc_max_count == 6
    assert config.region == "eu-west-1"
    assert config.parse_reserved_concurrency == 25


@pytest.mark.parametrize("unset", [None, "", "none", "None"])
def test_parse_reserved_concurrency_can_be_left_unset(unset: Any) -> None:
    assert _config(parse_reserved_concurrency=unset).parse_reserved_concurrency is None


def test_region_falls_back_to_the_cli_default() -> None:
    config = DeploymentConfig.from_context(
        lambda _key: None, environ={"CDK_DEFAULT_REGION": "us-east-2"}
    )
    assert config.region == "us-east-2"


@pytest.mark.parametrize(
    ("context", "message"),
    [
        ({"orthanc_image_tag": "latest"}, "pinned tag"),
        ({"db_backup_days": "3"}, "db_backup_days"),
        ({"multi_az": "maybe"}, "true or false"),
        ({"client_cidrs": "10.0.0.1/8"}, "not a CIDR"),
        ({"max_azs": "1"}, "two availability zones"),
        ({"domain_name": "pacs.example.org"}, "hosted_zone_id"),
        ({"hosted_zone_id": "Z1"}, "go together"),
        (
            {"domain_name": "pacs.other.org", "hosted_zone_id": "Z1", "hosted_zone_name": "x.org"},
            "must be in",
        ),
        ({"environment": "Prod!"}, "environment"),
        ({"orthanc_desired_count": "5", "orthanc_max_count": "2"}, "orthanc_desired_count"),
        ({"parse_reserved_concurrency": "0"}, "parse_reserved_concurrency"),
        ({"parse_reserved_concurrency": "lots"}, "parse_reserved_concurrency"),
    ],
)
def test_bad_context_is_refused_with_its_key(context: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _config(**context)


def test_certificate_arn_with_a_domain_needs_no_zone() -> None:
    config = _config(
        certificate_arn="arn:aws:acm:eu-central-1:123456789012:certificate/abc",
        domain_name="pacs.example.org",
    )
    assert config.certificate.configured
