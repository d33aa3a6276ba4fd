"""The security doc lists every cdk-nag acknowledgment, as cdk/nag.py has them."""

from __future__ import annotations

from cdk.config import CONTEXT_KEYS
from cdk.constants import REPO_ROOT
from cdk.nag import ACKS, DOC_END, DOC_START, SECURITY_DOC, markdown


def test_security_doc_holds_the_generated_acknowledgments() -> None:
    text = SECURITY_DOC.read_text(encoding="utf-8")
    block = text.split(DOC_START, 1)[1].split(DOC_END, 1)[0]
    assert block.strip() == markdown().strip(), "run: .venv/bin/python -m cdk.nag --update"
    assert len(block.strip().splitlines()) == len(ACKS) + 2


def test_every_acknowledgment_has_a_real_reason() -> None:
    for ack in ACKS:
        assert len(ack.reason) > 60 and ack.reason.endswith("."), ack
        assert "|" not in ack.reason, "the reason would break the Markdown table"


def test_readme_explains_the_deployment() -> None:
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Deploy to AWS", 1)[1]
    for needed in (
        "aws-cdk@2 bootstrap",
        "certificate_arn",
        "hosted_zone_id",
        "orthanc_image_tag",
        "client_cidrs",
        "aws-cdk@2 deploy",
        "store_instances",
        "aws-cdk@2 destroy",
        "OrthancRedeployFailed",
        "python -m cdk.rds_ca update",
        "ecr-pullthroughcache/",
        "dockerhub_secret_arn",
        "OrthancAdminSecretArn",
        "OrthancUploaderSecretArn",
        "OrthancImageRepository",
        "waf_rate_limit",
    ):
        assert needed in section, needed
    assert "OrthancUsersSecretArn" not in section  # the single users secret is gone


def test_readme_documents_every_context_key() -> None:
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    table = readme.split("## Deploy to AWS", 1)[1].split("### Context values", 1)[1]
    table = table.split("###", 1)[0]
    for key in CONTEXT_KEYS:
        assert f"`{key}`" in table, key


def test_readme_needs_no_manual_redeploy_for_the_database_password() -> None:
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    operations = readme.split("### Operations", 1)[1].split("###", 1)[0]
    (database,) = [item for item in operations.split("\n- ") if "database password" in item]
    assert "force-new-deployment" not in database and "by itself" in database


def test_readme_says_how_to_add_a_user() -> None:
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    operations = readme.split("### Operations", 1)[1].split("###", 1)[0]
    (item,) = [i for i in operations.split("\n- ") if "To add a user" in i]
    for needed in ("OrthancUploaderSecretArn", "OrthancAdminSecretArn", "put-secret-value"):
        assert needed in item, needed
    assert "force-new-deployment" in item  # Orthanc reads its users only at start


def test_security_doc_explains_roles_health_checks_waf_and_the_image_cache() -> None:
    text = SECURITY_DOC.read_text(encoding="utf-8")
    for heading in (
        "## Orthanc's users and what they may do",
        "## Health checks",
        "## AWS WAF",
        "## The image: ECR pull-through cache",
    ):
        assert heading in text, heading
    for needed in ("To add a user", "SizeRestrictions_BODY", "/changes?last", "authorization"):
        assert needed in text, needed
    assert "AWS WAF on the load\nbalancer" not in text  # no longer "not covered"
