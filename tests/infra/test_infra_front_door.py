"""The way in, each construct alone in a bare stack: the load balancer (allow-list required,
health checks that need Orthanc's answer), AWS WAF, and the ECR pull-through cache."""

from __future__ import annotations

import json
from typing import Any

import aws_cdk as cdk
import pytest
from aws_cdk import aws_iam as iam
from aws_cdk.assertions import Template
from infra_support import DEV_CIDRS, as_list, only, orthanc_service, policy_statements, resources

from cdk.components.front_door import FrontDoor
from cdk.components.image_cache import ImageCache
from cdk.components.web_firewall import WebFirewall
from cdk.config import CertificateConfig
from cdk.constants import ImageCache as CacheDefaults
from cdk.constants import Orthanc as C
from cdk.constants import Waf
from pipeline.orthanc import authz

# ---------------------------------------------------------------- load balancer


def _front_door(
    stack: cdk.Stack,
    certificate: CertificateConfig | None = None,
    cidrs: tuple[str, ...] = DEV_CIDRS,
) -> FrontDoor:
    orthanc, network, archive = orthanc_service(stack)
    door = FrontDoor(
        stack,
        "Door",
        vpc=network.vpc,
        subnets=network.public_subnets,
        certificate=certificate or CertificateConfig(),
        client_cidrs=cidrs,
        access_logs=archive.access_logs,
        target=orthanc.service,
    )
    orthanc.scale_on_requests(door.target_group)
    return door


@pytest.mark.parametrize(
    ("certificate", "cidrs"),
    [
        (
            CertificateConfig(
                certificate_arn="arn:aws:acm:eu-central-1:123456789012:certificate/x"
            ),
            ("203.0.113.0/24", "198.51.100.7/32"),
        ),
        (
            CertificateConfig(
                domain_name="pacs.example.org",
                hosted_zone_id="Z123",
                hosted_zone_name="example.org",
            ),
            ("203.0.113.0/24",),
        ),
        (CertificateConfig(), ("0.0.0.0/0",)),
    ],
    ids=["imported", "dns-validated", "none"],
)
def test_front_door_is_https_only_tls12_logged_and_allow_listed(
    bare_stack: cdk.Stack, certificate: CertificateConfig, cidrs: tuple[str, ...]
) -> None:
    door = _front_door(bare_stack, certificate, cidrs)
    t = Template.from_stack(bare_stack)
    listeners = {
        lst["Properties"]["Port"]: lst["Properties"]
        for lst in resources(t, "AWS::ElasticLoadBalancingV2::Listener").values()
    }
    assert set(listeners) == {80, 443}
    assert listeners[443]["Protocol"] == "HTTPS"
    assert listeners[443]["SslPolicy"] == "ELBSecurityPolicy-TLS13-1-2-2021-06"
    (redirect,) = listeners[80]["DefaultActions"]
    assert redirect["Type"] == "redirect"
    assert redirect["RedirectConfig"]["Protocol"] == "HTTPS"
    attributes = {
        a["Key"]: a["Value"]
        for a in only(t, "AWS::ElasticLoadBalancingV2::LoadBalancer")["LoadBalancerAttributes"]
    }
    assert attributes["access_logs.s3.enabled"] == "true"
    assert attributes["routing.http.drop_invalid_header_fields.enabled"] == "true"
    assert attributes["deletion_protection.enabled"] == "true"
    # Exactly the allow-list, never more (0.0.0.0/0 only when written out)
    ingress = [
        rule
        for sg in resources(t, "AWS::EC2::SecurityGroup").values()
        if "load balancer" in sg["Properties"]["GroupDescription"]
        for rule in sg["Properties"].get("SecurityGroupIngress", [])
    ]
    assert {r["CidrIp"] for r in ingress} == set(cidrs)
    assert {r["FromPort"] for r in ingress} == {80, 443}
    rules = t.to_json().get("Rules", {})
    certificates = resources(t, "AWS::CertificateManager::Certificate")
    if certificate.certificate_arn:
        assert not certificates and not any("Certificate" in r for r in rules)
    elif certificate.domain_name:
        (cert,) = certificates.values()
        assert cert["Properties"]["ValidationMethod"] == "DNS"
        assert cert["Properties"]["DomainValidationOptions"][0]["HostedZoneId"] == "Z123"
        t.has_resource_properties("AWS::Route53::RecordSet", {"Type": "A"})
        assert door.url == "https://pacs.example.org"
    else:
        assert any("CertificateConfigured" in r for r in rules)  # deploy refused
    t.resource_count_is("AWS::ApplicationAutoScaling::ScalingPolicy", 2)


def test_front_door_has_no_default_any_address(bare_stack: cdk.Stack) -> None:
    with pytest.raises(ValueError, match="client_cidrs is required"):
        _front_door(bare_stack, cidrs=())


def test_load_balancer_health_check_needs_orthanc_to_answer(bare_stack: cdk.Stack) -> None:
    # Given the front door in front of Orthanc
    _front_door(bare_stack)
    t = Template.from_stack(bare_stack)
    group = only(t, "AWS::ElasticLoadBalancingV2::TargetGroup")
    # Then the check is the plugin's endpoint on its own port, and only 200 is healthy (a
    # 401 or 403 from Orthanc's port would only prove that something listens)
    assert group["Port"] == C.HTTP_PORT
    assert group["HealthCheckPort"] == str(authz.HEALTH_PORT)
    assert group["HealthCheckPath"] == authz.HEALTH_PATH == "/healthz"
    assert group["HealthCheckProtocol"] == "HTTP"
    assert group["Matcher"] == {"HttpCode": "200"}
    # And the tasks accept the health port from the load balancer's group only
    rules = [
        r["Properties"]
        for r in resources(t, "AWS::EC2::SecurityGroupIngress").values()
        if r["Properties"]["FromPort"] == authz.HEALTH_PORT
    ]
    (rule,) = rules
    assert rule["ToPort"] == authz.HEALTH_PORT
    assert "SourceSecurityGroupId" in rule and "CidrIp" not in rule
    egress = [
        r["Properties"]
        for r in resources(t, "AWS::EC2::SecurityGroupEgress").values()
        if r["Properties"]["FromPort"] == authz.HEALTH_PORT
    ]
    assert len(egress) == 1  # the load balancer may reach it


# ---------------------------------------------------------------- AWS WAF


def _web_acl(stack: cdk.Stack, rate_limit: int = Waf.RATE_LIMIT) -> tuple[WebFirewall, Template]:
    door = _front_door(stack)
    archive = stack.node.find_child("Logs")
    firewall = WebFirewall(
        stack,
        "Firewall",
        load_balancer=door.load_balancer,
        upload_path="/dicom-web/studies",
        log_archive=archive,  # type: ignore[arg-type]
        rate_limit=rate_limit,
    )
    return firewall, Template.from_stack(stack)


def _rules(t: Template) -> dict[str, dict[str, Any]]:
    return {r["Name"]: r for r in only(t, "AWS::WAFv2::WebACL")["Rules"]}


def test_web_acl_is_regional_on_the_load_balancer_and_rate_limits_each_client(
    bare_stack: cdk.Stack,
) -> None:
    firewall, t = _web_acl(bare_stack, rate_limit=1200)
    acl = only(t, "AWS::WAFv2::WebACL")
    assert acl["Scope"] == "REGIONAL"
    assert acl["DefaultAction"] == {"Allow": {}}
    association = only(t, "AWS::WAFv2::WebACLAssociation")
    assert association["WebACLArn"] == {
        "Fn::GetAtt": [bare_stack.resolve(firewall.web_acl.logical_id), "Arn"]
    }
    assert association["ResourceArn"] == {
        "Ref": _lid(t, "AWS::ElasticLoadBalancingV2::LoadBalancer")
    }
    rules = sorted(acl["Rules"], key=lambda r: r["Priority"])
    assert [r["Name"] for r in rules] == [
        "RateLimit",
        "AmazonIpReputationList",
        "CommonRuleSet",
        "KnownBadInputsRuleSet",
        "BlockMatchesOutsideUploads",
    ]
    rate = rules[0]
    assert rate["Action"] == {"Block": {}}
    assert rate["Statement"]["RateBasedStatement"] == {
        "AggregateKeyType": "IP",
        "Limit": 1200,
        "EvaluationWindowSec": 300,
    }


def test_web_acl_lets_stow_rs_uploads_through_and_blocks_the_rest(bare_stack: cdk.Stack) -> None:
    _, t = _web_acl(bare_stack)
    rules = _rules(t)
    # The managed groups block by their own rules...
    for name, group in (
        ("AmazonIpReputationList", "AWSManagedRulesAmazonIpReputationList"),
        ("CommonRuleSet", "AWSManagedRulesCommonRuleSet"),
        ("KnownBadInputsRuleSet", "AWSManagedRulesKnownBadInputsRuleSet"),
    ):
        statement = rules[name]["Statement"]["ManagedRuleGroupStatement"]
        assert statement["VendorName"] == "AWS" and statement["Name"] == group
        assert rules[name]["OverrideAction"] == {"None": {}}
    # ...except those an upload's body would trip, which only count
    common = rules["CommonRuleSet"]["Statement"]["ManagedRuleGroupStatement"]
    counted = {o["Name"]: o["ActionToUse"] for o in common["RuleActionOverrides"]}
    assert counted["SizeRestrictions_BODY"] == {"Count": {}}  # every STOW-RS body is > 8 KB
    assert set(counted) == {
        "SizeRestrictions_BODY",
        "CrossSiteScripting_BODY",
        "GenericLFI_BODY",
        "GenericRFI_BODY",
        "EC2MetaDataSSRF_BODY",
        "NoUserAgent_HEADER",
    }
    assert all(action == {"Count": {}} for action in counted.values())
    bad_inputs = rules["KnownBadInputsRuleSet"]["Statement"]["ManagedRuleGroupStatement"]
    assert {o["Name"] for o in bad_inputs["RuleActionOverrides"]} == {
        "JavaDeserializationRCE_BODY",
        "Log4JRCE_BODY",
    }
    # And what those matched is blocked unless the request is a STOW-RS POST
    block = rules["BlockMatchesOutsideUploads"]
    assert block["Action"] == {"Block": {}}
    matched, not_upload = block["Statement"]["AndStatement"]["Statements"]
    labels = {s["LabelMatchStatement"]["Key"] for s in matched["OrStatement"]["Statements"]}
    assert labels == {
        label for rules_ in WebFirewall.UPLOAD_EXEMPT.values() for label in rules_.values()
    }
    assert "awswaf:managed:aws:core-rule-set:SizeRestrictions_Body" not in labels
    method, path = not_upload["NotStatement"]["Statement"]["AndStatement"]["Statements"]
    assert method["ByteMatchStatement"]["FieldToMatch"] == {"Method": {}}
    assert method["ByteMatchStatement"]["SearchString"] == "POST"
    assert method["ByteMatchStatement"]["PositionalConstraint"] == "EXACTLY"
    path_match = path["ByteMatchStatement"]
    assert path_match["SearchString"] == "/dicom-web/studies"
    assert path_match["PositionalConstraint"] == "STARTS_WITH"
    # "../" cannot make another route look like an upload
    assert [x["Type"] for x in path_match["TextTransformations"]] == [
        "URL_DECODE",
        "NORMALIZE_PATH",
    ]


def test_web_acl_metrics_on_sampled_requests_off_and_logs_without_credentials(
    bare_stack: cdk.Stack,
) -> None:
    firewall, t = _web_acl(bare_stack)
    acl = only(t, "AWS::WAFv2::WebACL")
    for config in [acl["VisibilityConfig"], *(r["VisibilityConfig"] for r in acl["Rules"])]:
        assert config["CloudWatchMetricsEnabled"] is True
        assert config["SampledRequestsEnabled"] is False  # they would show Basic credentials
    logging = only(t, "AWS::WAFv2::LoggingConfiguration")
    assert logging["ResourceArn"] == {
        "Fn::GetAtt": [bare_stack.resolve(firewall.web_acl.logical_id), "Arn"]
    }
    # Credentials and QIDO-RS searches (?PatientName=..., PHI) never reach the logs
    assert logging["RedactedFields"] == [
        {"SingleHeader": {"Name": "authorization"}},
        {"SingleHeader": {"Name": "cookie"}},
        {"QueryString": {}},
    ]
    # The destination is the log group's ARN without ":*", in the account's logs
    (destination,) = logging["LogDestinationConfigs"]
    text = json.dumps(destination)
    assert ":log-group:" in text and ":*" not in text
    group_id = bare_stack.resolve(firewall.log_group.node.default_child.logical_id)  # type: ignore[union-attr]
    assert group_id in text
    group = resources(t, "AWS::Logs::LogGroup")[group_id]
    assert group["DeletionPolicy"] == "Retain"
    assert "KmsKeyId" in group["Properties"] and group["Properties"]["RetentionInDays"] == 365
    # Named as WAF requires, unique per stack instance (it outlives the stack)
    head, *tail = group["Properties"]["LogGroupName"]["Fn::Join"][1]
    assert head.startswith("aws-waf-logs-Bare-") and "AWS::StackId" in json.dumps(tail)


def test_web_acl_refuses_a_rate_limit_waf_does_not_accept(bare_stack: cdk.Stack) -> None:
    with pytest.raises(ValueError, match="rate_limit"):
        _web_acl(bare_stack, rate_limit=5)


def _lid(t: Template, type_: str) -> str:
    (logical_id,) = resources(t, type_)
    return logical_id


# ---------------------------------------------------------------- ECR pull-through cache

SECRET = "arn:aws:secretsmanager:eu-central-1:123456789012:secret:ecr-pullthroughcache/hub-AbCdEf"


def test_image_cache_rule_pulls_docker_hub_with_the_configured_credentials(
    bare_stack: cdk.Stack,
) -> None:
    cache = ImageCache(
        bare_stack, "Cache", prefix="dicom-pipeline-test", credentials_secret_arn=SECRET
    )
    t = Template.from_stack(bare_stack)
    assert only(t, "AWS::ECR::PullThroughCacheRule") == {
        "EcrRepositoryPrefix": "dicom-pipeline-test",
        "UpstreamRegistry": "docker-hub",
        "UpstreamRegistryUrl": "registry-1.docker.io",
        "CredentialArn": SECRET,
    }
    assert not any("DockerHub" in name for name in t.to_json().get("Rules", {}))
    uri = bare_stack.resolve(cache.image_uri(C.IMAGE, "26.8.1"))
    assert uri == {
        "Fn::Join": [
            "",
            [
                {"Ref": "AWS::AccountId"},
                ".dkr.ecr.eu-central-1.",
                {"Ref": "AWS::URLSuffix"},
                "/dicom-pipeline-test/orthancteam/orthanc:26.8.1",
            ],
        ]
    }


def test_image_cache_without_credentials_refuses_to_deploy(bare_stack: cdk.Stack) -> None:
    ImageCache(bare_stack, "Cache", prefix="dicom-pipeline-test", credentials_secret_arn=None)
    t = Template.from_stack(bare_stack)
    rule = only(t, "AWS::ECR::PullThroughCacheRule")
    assert rule["CredentialArn"] == CacheDefaults.EXAMPLE_SECRET_ARN.format(region="eu-central-1")
    assert any("DockerHubSecretConfigured" in name for name in t.to_json()["Rules"])


def test_image_cache_grants_the_pull_of_one_repository(bare_stack: cdk.Stack) -> None:
    cache = ImageCache(
        bare_stack, "Cache", prefix="dicom-pipeline-test", credentials_secret_arn=SECRET
    )
    role = iam.Role(bare_stack, "Exec", assumed_by=iam.ServicePrincipal("ecs-tasks.amazonaws.com"))
    cache.grant_pull(role, C.IMAGE)
    t = Template.from_stack(bare_stack)
    grants = sorted(
        (action, json.dumps(resource))
        for _, st in policy_statements(t.to_json())
        for action in as_list(st["Action"])
        for resource in as_list(st["Resource"])
    )
    repository = json.dumps(bare_stack.resolve(cache.repository_arn(C.IMAGE)))
    assert "repository/dicom-pipeline-test/orthancteam/orthanc" in repository
    assert grants == sorted(
        [
            ("ecr:BatchCheckLayerAvailability", repository),
            ("ecr:BatchGetImage", repository),
            ("ecr:BatchImportUpstreamImage", repository),
            ("ecr:CreateRepository", repository),
            ("ecr:GetDownloadUrlForLayer", repository),
            ("ecr:GetAuthorizationToken", '"*"'),
        ]
    )
