"""AWS WAF in front of the load balancer, tuned so DICOMweb uploads (STOW-RS) get through."""

from __future__ import annotations

from typing import ClassVar

import aws_cdk as cdk
from aws_cdk import aws_elasticloadbalancingv2 as elbv2
from aws_cdk import aws_wafv2 as waf
from constructs import Construct

from cdk.components.log_archive import LogArchive
from cdk.constants import Waf as Defaults
from cdk.naming import stack_instance_suffix

W = waf.CfnWebACL


class WebFirewall(Construct):
    """A regional web ACL on the load balancer, its metrics, and its logs.

    Rules, in order (the first that blocks ends the evaluation):

    1. ``RateLimit``: more than ``rate_limit`` requests from one client IP in 5 minutes are
       blocked until the rate drops (AWS WAF's rate-based rule).
    2. ``AmazonIpReputationList``: addresses AWS threat intelligence knows as malicious.
    3. ``CommonRuleSet`` (AWS's core rule set) and 4. ``KnownBadInputs``, except for rules
       that would break uploads, which only count there:

       * ``SizeRestrictions_BODY`` blocks every body above 8 KB, that is every STOW-RS
         upload (a multipart body of whole DICOM files): it only counts, everywhere;
       * the rules that look for attack patterns in the first 8 KB of a body (cross-site
         scripting, file inclusion, metadata SSRF, Log4j, Java deserialization) read binary
         DICOM there (headers, private tags, pixel data) and a match would be chance; a
         DICOM device may also send no User-Agent (``NoUserAgent_HEADER``). They count in
         their groups, and 5. ``BlockMatchesOutsideUploads`` blocks what they matched unless
         the request is ``POST <dicom-web root>studies…`` (path URL-decoded and normalized
         first, so ``../`` cannot make another route look like an upload).

    Sampled requests are off: they would show request headers, Basic credentials included,
    in the console. The logs (CloudWatch Logs, ``aws-waf-logs-…``, KMS-encrypted, one year)
    redact the ``authorization`` and ``cookie`` headers and the query string (QIDO-RS
    searches by patient: ``?PatientName=…``, ``?PatientID=…``).

    Attributes
    ----------
    web_acl, log_group, logging
    """

    COMMON = "AWSManagedRulesCommonRuleSet"
    KNOWN_BAD_INPUTS = "AWSManagedRulesKnownBadInputsRuleSet"
    IP_REPUTATION = "AWSManagedRulesAmazonIpReputationList"
    #: Rules that only count, everywhere.
    COUNT_ONLY: ClassVar[dict[str, tuple[str, ...]]] = {COMMON: ("SizeRestrictions_BODY",)}
    #: Rules that count in their group and are blocked, by the label they leave, outside
    #: uploads: {group: {rule: label}}.
    UPLOAD_EXEMPT: ClassVar[dict[str, dict[str, str]]] = {
        COMMON: {
            rule: f"awswaf:managed:aws:core-rule-set:{label}"
            for rule, label in (
                ("CrossSiteScripting_BODY", "CrossSiteScripting_Body"),
                ("GenericLFI_BODY", "GenericLFI_Body"),
                ("GenericRFI_BODY", "GenericRFI_Body"),
                ("EC2MetaDataSSRF_BODY", "EC2MetaDataSSRF_Body"),
                ("NoUserAgent_HEADER", "NoUserAgent_Header"),
            )
        },
        KNOWN_BAD_INPUTS: {
            rule: f"awswaf:managed:aws:known-bad-inputs:{label}"
            for rule, label in (
                ("JavaDeserializationRCE_BODY", "JavaDeserializationRCE_Body"),
                ("Log4JRCE_BODY", "Log4JRCE_Body"),
            )
        },
    }
    #: Headers the logs never show.
    REDACTED_HEADERS = ("authorization", "cookie")

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        load_balancer: elbv2.IApplicationLoadBalancer,
        upload_path: str,
        log_archive: LogArchive,
        rate_limit: int = Defaults.RATE_LIMIT,
    ) -> None:
        super().__init__(scope, construct_id)
        stack = cdk.Stack.of(self)
        if not Defaults.MIN_RATE_LIMIT <= rate_limit <= Defaults.MAX_RATE_LIMIT:
            raise ValueError(f"rate_limit must be within AWS WAF's bounds, not {rate_limit}")
        if not upload_path.startswith("/"):
            raise ValueError("upload_path must be a path ('/dicom-web/studies')")

        rules = [
            W.RuleProperty(
                name="RateLimit",
                priority=0,
                action=W.RuleActionProperty(block={}),
                statement=W.StatementProperty(
                    rate_based_statement=W.RateBasedStatementProperty(
                        aggregate_key_type="IP",
                        limit=rate_limit,
                        evaluation_window_sec=Defaults.RATE_WINDOW_SECONDS,
                    )
                ),
                visibility_config=_visibility("RateLimit"),
            ),
            self._managed(self.IP_REPUTATION, 1),
            self._managed(self.COMMON, 2),
            self._managed(self.KNOWN_BAD_INPUTS, 3),
            W.RuleProperty(
                name="BlockMatchesOutsideUploads",
                priority=4,
                action=W.RuleActionProperty(block={}),
                statement=W.StatementProperty(
                    and_statement=W.AndStatementProperty(
                        statements=[
                            _any(
                                [
                                    W.StatementProperty(
                                        label_match_statement=W.LabelMatchStatementProperty(
                                            scope="LABEL", key=label
                                        )
                                    )
                                    for labels in self.UPLOAD_EXEMPT.values()
                                    for label in labels.values()
                                ]
                            ),
                            W.StatementProperty(
                                not_statement=W.NotStatementProperty(statement=_upload(upload_path))
                            ),
                        ]
                    )
                ),
                visibility_config=_visibility("BlockMatchesOutsideUploads"),
            ),
        ]
        self.web_acl = W(
            self,
            "WebAcl",
            scope="REGIONAL",
            description="dicom-pipeline: rate limit and AWS managed rules for the Orthanc ALB",
            default_action=W.DefaultActionProperty(allow={}),
            rules=rules,
            visibility_config=_visibility(f"{stack.stack_name}-waf"),
        )
        waf.CfnWebACLAssociation(
            self,
            "Association",
            resource_arn=load_balancer.load_balancer_arn,
            web_acl_arn=self.web_acl.attr_arn,
        )

        name = f"{Defaults.LOG_GROUP_PREFIX}{stack.stack_name}-{stack_instance_suffix()}"
        self.log_group = log_archive.log_group(self, "Logs", name=name)
        # WAF wants the log group's ARN without the ":*" CloudFormation's Arn attribute has.
        destination = stack.format_arn(
            service="logs",
            resource="log-group",
            resource_name=self.log_group.log_group_name,
            arn_format=cdk.ArnFormat.COLON_RESOURCE_NAME,
        )
        self.logging = waf.CfnLoggingConfiguration(
            self,
            "Logging",
            resource_arn=self.web_acl.attr_arn,
            log_destination_configs=[destination],
            redacted_fields=[
                *(
                    waf.CfnLoggingConfiguration.FieldToMatchProperty(single_header={"Name": header})
                    for header in self.REDACTED_HEADERS
                ),
                # QIDO-RS query parameters are patient attributes (PHI).
                waf.CfnLoggingConfiguration.FieldToMatchProperty(query_string={}),
            ],
        )

    def _managed(self, group: str, priority: int) -> waf.CfnWebACL.RuleProperty:
        counted = [*self.COUNT_ONLY.get(group, ()), *self.UPLOAD_EXEMPT.get(group, {})]
        return W.RuleProperty(
            name=group.removeprefix("AWSManagedRules"),
            priority=priority,
            override_action=W.OverrideActionProperty(none={}),
            statement=W.StatementProperty(
                managed_rule_group_statement=W.ManagedRuleGroupStatementProperty(
                    vendor_name="AWS",
                    name=group,
                    rule_action_overrides=[
                        W.RuleActionOverrideProperty(
                            name=rule, action_to_use=W.RuleActionProperty(count={})
                        )
                        for rule in counted
                    ]
                    or None,
                )
            ),
            visibility_config=_visibility(group.removeprefix("AWSManagedRules")),
        )


def _visibility(metric: str) -> waf.CfnWebACL.VisibilityConfigProperty:
    return W.VisibilityConfigProperty(
        cloud_watch_metrics_enabled=True, metric_name=metric, sampled_requests_enabled=False
    )


def _any(statements: list[waf.CfnWebACL.StatementProperty]) -> waf.CfnWebACL.StatementProperty:
    return W.StatementProperty(or_statement=W.OrStatementProperty(statements=statements))


def _upload(path: str) -> waf.CfnWebACL.StatementProperty:
    """``POST`` to a path that, URL-decoded and normalized, starts with ``path``."""
    return W.StatementProperty(
        and_statement=W.AndStatementProperty(
            statements=[
                W.StatementProperty(
                    byte_match_statement=W.ByteMatchStatementProperty(
                        field_to_match=W.FieldToMatchProperty(method={}),
                        positional_constraint="EXACTLY",
                        search_string="POST",
                        text_transformations=[
                            W.TextTransformationProperty(priority=0, type="NONE")
                        ],
                    )
                ),
                W.StatementProperty(
                    byte_match_statement=W.ByteMatchStatementProperty(
                        field_to_match=W.FieldToMatchProperty(uri_path={}),
                        positional_constraint="STARTS_WITH",
                        search_string=path,
                        text_transformations=[
                            W.TextTransformationProperty(priority=0, type="URL_DECODE"),
                            W.TextTransformationProperty(priority=1, type="NORMALIZE_PATH"),
                        ],
                    )
                ),
            ]
        )
    )
