"""The front door: an internet-facing ALB, HTTPS only, in front of Orthanc."""

from __future__ import annotations

from collections.abc import Sequence

import aws_cdk as cdk
from aws_cdk import aws_certificatemanager as acm
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_elasticloadbalancingv2 as elbv2
from aws_cdk import aws_route53 as route53
from aws_cdk import aws_route53_targets as route53_targets
from aws_cdk import aws_s3 as s3
from constructs import Construct

from cdk.config import CertificateConfig
from cdk.constants import App, Logs, Orthanc


class FrontDoor(Construct):
    """ALB with an ACM certificate, a TLS 1.2+ policy and an HTTP listener that only redirects.

    Only ``client_cidrs`` may connect (required: an explicit ``0.0.0.0/0`` is the only way
    to let any address in). The target group checks Orthanc's health endpoint on its own
    port (``/healthz`` of the authorization plugin, which answers 200 only when Orthanc read
    its index database) and counts nothing else as healthy.

    The certificate is imported (``certificate_arn``) or issued and validated by DNS in the
    given hosted zone (``domain_name`` + ``hosted_zone_id`` + ``hosted_zone_name``; never a
    zone lookup, so synth needs no credentials). With neither, an example ARN keeps synth
    working and a CloudFormation rule refuses the deployment before anything is created.

    Attributes
    ----------
    load_balancer, https_listener, target_group, security_group, url
    """

    SSL_POLICY = elbv2.SslPolicy.RECOMMENDED_TLS  # TLS 1.3 and 1.2 only

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        vpc: ec2.IVpc,
        subnets: ec2.SubnetSelection,
        certificate: CertificateConfig,
        client_cidrs: Sequence[str],
        access_logs: s3.IBucket,
        target: ecs.FargateService,
    ) -> None:
        super().__init__(scope, construct_id)
        stack = cdk.Stack.of(self)
        if not client_cidrs:
            raise ValueError("client_cidrs is required (write 0.0.0.0/0 to allow any address)")
        self.security_group = ec2.SecurityGroup(
            self,
            "SecurityGroup",
            vpc=vpc,
            description="load balancer: HTTPS (and HTTP, redirected) from allowed clients",
            allow_all_outbound=False,
        )
        for peer in (ec2.Peer.ipv4(c) for c in client_cidrs):
            self.security_group.add_ingress_rule(peer, ec2.Port.tcp(443), "HTTPS")
            self.security_group.add_ingress_rule(peer, ec2.Port.tcp(80), "HTTP, redirected")

        self.load_balancer = elbv2.ApplicationLoadBalancer(
            self,
            "LoadBalancer",
            vpc=vpc,
            vpc_subnets=subnets,
            internet_facing=True,
            security_group=self.security_group,
            drop_invalid_header_fields=True,
            deletion_protection=True,
            http2_enabled=True,
        )
        self.load_balancer.log_access_logs(access_logs, prefix=Logs.ALB_PREFIX)

        zone = None
        if certificate.hosted_zone_id and certificate.hosted_zone_name:
            zone = route53.HostedZone.from_hosted_zone_attributes(
                self,
                "Zone",
                hosted_zone_id=certificate.hosted_zone_id,
                zone_name=certificate.hosted_zone_name,
            )
        if certificate.certificate_arn:
            cert = acm.Certificate.from_certificate_arn(
                self, "Certificate", certificate.certificate_arn
            )
        elif certificate.domain_name and zone is not None:
            cert = acm.Certificate(
                self,
                "Certificate",
                domain_name=certificate.domain_name,
                validation=acm.CertificateValidation.from_dns(zone),
            )
        else:
            cert = acm.Certificate.from_certificate_arn(
                self, "Certificate", App.EXAMPLE_CERTIFICATE_ARN.format(region=stack.region)
            )
            cdk.CfnRule(
                self,
                "CertificateConfigured",
                assertions=[
                    cdk.CfnRuleAssertion(
                        assert_=cdk.Fn.condition_equals(
                            cdk.Aws.REGION, "no-certificate-configured"
                        ),
                        assert_description=(
                            "No certificate configured: set context certificate_arn, or "
                            "domain_name + hosted_zone_id + hosted_zone_name (README, Deploy "
                            "to AWS)."
                        ),
                    )
                ],
            )

        self.https_listener = self.load_balancer.add_listener(
            "Https",
            port=443,
            protocol=elbv2.ApplicationProtocol.HTTPS,
            certificates=[elbv2.ListenerCertificate.from_certificate_manager(cert)],
            ssl_policy=self.SSL_POLICY,
            open=False,
        )
        self.load_balancer.add_listener(
            "Http",
            port=80,
            protocol=elbv2.ApplicationProtocol.HTTP,
            open=False,
            default_action=elbv2.ListenerAction.redirect(
                protocol="HTTPS", port="443", permanent=True
            ),
        )
        self.target_group = self.https_listener.add_targets(
            "Orthanc",
            port=Orthanc.HTTP_PORT,
            protocol=elbv2.ApplicationProtocol.HTTP,
            targets=[target],
            deregistration_delay=cdk.Duration.seconds(30),
            health_check=elbv2.HealthCheck(
                port=str(Orthanc.HEALTH_PORT),
                protocol=elbv2.Protocol.HTTP,
                path=Orthanc.HEALTH_PATH,
                healthy_http_codes=Orthanc.ALB_HEALTHY_CODES,
                timeout=cdk.Duration.seconds(5),
                interval=cdk.Duration.seconds(30),
                healthy_threshold_count=2,
                unhealthy_threshold_count=3,
            ),
        )

        # The health endpoint listens on a port of its own.
        target.connections.allow_from(
            self.load_balancer, ec2.Port.tcp(Orthanc.HEALTH_PORT), "health checks"
        )

        if zone is not None and certificate.domain_name:
            route53.ARecord(
                self,
                "Alias",
                zone=zone,
                record_name=certificate.domain_name,
                target=route53.RecordTarget.from_alias(
                    route53_targets.LoadBalancerTarget(self.load_balancer)
                ),
            )
        host = certificate.domain_name or self.load_balancer.load_balancer_dns_name
        self.url = f"https://{host}"
