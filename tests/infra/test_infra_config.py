"""Deployment settings from CDK context: coercion of ``-c`` strings and refusals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cdk import app
from cdk.config import ConfigError, DeploymentConfig
from cdk.constants import Ingestion, Waf
from pipeline.names import PIPE_BATCH_SIZE
from pipeline.ops.reindex import DEFAULT_MAX_QUEUE_DEPTH

#: The one setting without a default.
REQUIRED = {"client_cidrs": "203.0.113.0/24"}


def _config(**context: Any) -> DeploymentConfig:
    return DeploymentConfig.from_context({**REQUIRED, **context}.get, environ={})


def test_defaults_are_pinned_and_safe() -> None:
    config = _config()
    assert config.stack_name == "DicomPipeline-dev"
    assert config.orthanc_image_tag != "latest"
    assert config.multi_az is True
    assert config.db_backup_days >= 7
    assert not config.certificate.configured
    # Always reserved: the bound on parse concurrency (docs/capacity.md); the reindex pacing
    # threshold follows it: one round of pipe batches in flight and one waiting
    assert config.parse_reserved_concurrency == Ingestion.PARSE_RESERVED_CONCURRENCY == 100
    assert config.reindex_queue_depth == 2 * 100 * PIPE_BATCH_SIZE == DEFAULT_MAX_QUEUE_DEPTH
    assert config.waf_rate_limit == Waf.RATE_LIMIT
    assert config.image_cache_prefix == "dicom-pipeline-dev"
    assert config.dockerhub_secret_arn is None  # deploying is refused (a CloudFormation rule)
    assert not config.any_client


@pytest.mark.parametrize("missing", [None, "", [], "[]", " , "])
def test_client_cidrs_are_required(missing: Any) -> None:
    # Given no allow-list (absent, empty, or an empty list as cdk.json has it)
    context = {} if missing is None else {"client_cidrs": missing}
    # Then the synth stops with a message naming the key and how to allow any address
    with pytest.raises(ConfigError, match=r"context 'client_cidrs' is required.*0\.0\.0\.0/0"):
        DeploymentConfig.from_context(context.get, environ={})


def test_any_address_must_be_written_out() -> None:
    assert _config(client_cidrs="0.0.0.0/0").any_client
    assert not _config(client_cidrs="203.0.113.0/24,198.51.100.7/32").any_client


def test_missing_client_cidrs_stop_the_synth_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given an app whose context lacks the allow-list (as the repository's cdk.json does)
    monkeypatch.setattr(app, "file_context", lambda: {"client_cidrs": []})
    monkeypatch.setenv("CDK_OUTDIR", str(tmp_path))
    monkeypatch.delenv("CDK_CONTEXT_JSON", raising=False)
    # When `make synth` runs it
    code = app.main()
    # Then it exits 1 with one line that names the key, and no traceback
    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1, err
    assert err.startswith("ERROR context 'client_cidrs' is required")


def test_cli_strings_are_coerced() -> None:
    config = _config(
        multi_az="false",
        client_cidrs="203.0.113.0/24, 198.51.100.7/32",
        availability_zones='["eu-west-1a", "eu-west-1b"]',
        orthanc_max_count="6",
        region="eu-west-1",
        parse_reserved_concurrency="25",
        waf_rate_limit="1200",
        ecr_cache_prefix="docker-hub/pacs",
        dockerhub_secret_arn=(
            "arn:aws:secretsmanager:eu-west-1:123456789012:secret:ecr-pullthroughcache/hub-AbC"
        ),
    )
    assert config.multi_az is False
    assert config.client_cidrs == ("203.0.113.0/24", "198.51.100.7/32")
    assert config.availability_zones == ("eu-west-1a", "eu-west-1b")
    assert config.orthanc_max_count == 6
    assert config.region == "eu-west-1"
    assert config.parse_reserved_concurrency == 25
    assert config.waf_rate_limit == 1200
    assert config.image_cache_prefix == "docker-hub/pacs"
    assert config.dockerhub_secret_arn and config.dockerhub_secret_arn.endswith("/hub-AbC")


@pytest.mark.parametrize("unset", [None, ""])
def test_parse_reserved_concurrency_unset_is_the_default_never_unreserved(unset: Any) -> None:
    assert _config(parse_reserved_concurrency=unset).parse_reserved_concurrency == 100


def test_reindex_queue_depth_follows_the_parse_concurrency_unless_set() -> None:
    assert _config(parse_reserved_concurrency="30").reindex_queue_depth == 600
    config = _config(parse_reserved_concurrency="30", reindex_max_queue_depth="5000")
    assert config.reindex_queue_depth == 5000
    assert _config(reindex_max_queue_depth="none").reindex_queue_depth == 2000


def test_region_falls_back_to_the_cli_default() -> None:
    config = DeploymentConfig.from_context(
        REQUIRED.get, environ={"CDK_DEFAULT_REGION": "us-east-2"}
    )
    assert config.region == "us-east-2"


@pytest.mark.parametrize(
    ("context", "message"),
    [
        ({"orthanc_image_tag": "latest"}, "pinned tag"),
        ({"db_backup_days": "3"}, "db_backup_days"),
        ({"multi_az": "maybe"}, "true or false"),
        ({"client_cidrs": "10.0.0.1/8"}, "not an IPv4 CIDR"),
        ({"client_cidrs": "::/0"}, "not an IPv4 CIDR"),
        ({"waf_rate_limit": "5"}, "waf_rate_limit"),
        ({"waf_rate_limit": "many"}, "waf_rate_limit"),
        ({"ecr_cache_prefix": "Docker Hub"}, "ecr_cache_prefix"),
        ({"environment": "abcdefghijklmnop"}, "ecr_cache_prefix"),  # default prefix > 30
        (
            {"dockerhub_secret_arn": "arn:aws:secretsmanager:eu-central-1:123456789012:secret:hub"},
            "ecr-pullthroughcache/",
        ),
        ({"dockerhub_secret_arn": "ecr-pullthroughcache/docker-hub"}, "full ARN"),
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
        ({"parse_reserved_concurrency": "none"}, "parse_reserved_concurrency"),
        ({"reindex_max_queue_depth": "0"}, "reindex_max_queue_depth"),
        ({"reindex_max_queue_depth": "deep"}, "reindex_max_queue_depth"),
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
