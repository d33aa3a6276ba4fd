"""The security doc lists every cdk-nag acknowledgment, as cdk/nag.py has them."""

from __future__ import annotations

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
    ):
        assert needed in section, needed
