"""The VPC: public subnets for the load balancer and NAT, private ones for everything else."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from aws_cdk import aws_ec2 as ec2
from constructs import Construct

from cdk.components.log_archive import LogArchive
from cdk.constants import Network as Defaults


class Network(Construct):
    """A VPC over two or more AZs with gateway and interface endpoints.

    Subnets: ``public`` (ALB, NAT gateways), ``app`` (private with egress: Orthanc tasks,
    the parse Lambda, the rotation Lambda; egress is needed for Docker Hub), ``data``
    (isolated: the database). S3 and DynamoDB traffic stays on gateway endpoints; Secrets
    Manager, SSM and CloudWatch Logs on interface endpoints.
    """

    INTERFACE_ENDPOINTS: ClassVar[dict[str, ec2.InterfaceVpcEndpointAwsService]] = {
        "SecretsManager": ec2.InterfaceVpcEndpointAwsService.SECRETS_MANAGER,
        "Ssm": ec2.InterfaceVpcEndpointAwsService.SSM,
        "Logs": ec2.InterfaceVpcEndpointAwsService.CLOUDWATCH_LOGS,
    }

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        log_archive: LogArchive,
        max_azs: int = Defaults.MAX_AZS,
        availability_zones: Sequence[str] = (),
        nat_gateways: int = Defaults.NAT_GATEWAYS,
    ) -> None:
        super().__init__(scope, construct_id)
        # Explicit AZs avoid a context lookup; otherwise an env-agnostic account gives
        # Fn::GetAZs, which needs no lookup either.
        azs = {"availability_zones": list(availability_zones)} if availability_zones else {}
        self.vpc = ec2.Vpc(
            self,
            "Vpc",
            ip_addresses=ec2.IpAddresses.cidr(Defaults.CIDR),
            max_azs=None if availability_zones else max_azs,
            nat_gateways=nat_gateways,
            subnet_configuration=[
                ec2.SubnetConfiguration(
                    name="public", subnet_type=ec2.SubnetType.PUBLIC, cidr_mask=Defaults.PUBLIC_MASK
                ),
                ec2.SubnetConfiguration(
                    name="app",
                    subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS,
                    cidr_mask=Defaults.APP_MASK,
                ),
                ec2.SubnetConfiguration(
                    name="data",
                    subnet_type=ec2.SubnetType.PRIVATE_ISOLATED,
                    cidr_mask=Defaults.DATA_MASK,
                ),
            ],
            gateway_endpoints={
                "S3": ec2.GatewayVpcEndpointOptions(service=ec2.GatewayVpcEndpointAwsService.S3),
                "DynamoDb": ec2.GatewayVpcEndpointOptions(
                    service=ec2.GatewayVpcEndpointAwsService.DYNAMODB
                ),
            },
            **azs,  # type: ignore[arg-type]
        )
        self.vpc.add_flow_log(
            "FlowLog",
            destination=ec2.FlowLogDestination.to_cloud_watch_logs(
                log_archive.log_group(self, "FlowLogs")
            ),
            traffic_type=ec2.FlowLogTrafficType.ALL,
        )
        self.app_subnets = ec2.SubnetSelection(subnet_group_name="app")
        self.data_subnets = ec2.SubnetSelection(subnet_group_name="data")
        self.public_subnets = ec2.SubnetSelection(subnet_group_name="public")
        self.endpoints: dict[str, ec2.InterfaceVpcEndpoint] = {
            name: self.vpc.add_interface_endpoint(
                name, service=service, private_dns_enabled=True, subnets=self.app_subnets
            )
            for name, service in self.INTERFACE_ENDPOINTS.items()
        }

    @property
    def secrets_manager_endpoint(self) -> ec2.InterfaceVpcEndpoint:
        """The Secrets Manager endpoint (the rotation Lambda reaches the service through it)."""
        return self.endpoints["SecretsManager"]


def https_egress_only_group(
    scope: Construct, construct_id: str, *, vpc: ec2.IVpc, description: str
) -> ec2.SecurityGroup:
    """A security group that may only open HTTPS connections out (AWS APIs, image pulls).

    Ingress is whatever the caller allows afterwards; nothing else goes out.
    """
    group = ec2.SecurityGroup(
        scope, construct_id, vpc=vpc, description=description, allow_all_outbound=False
    )
    group.add_egress_rule(ec2.Peer.any_ipv4(), ec2.Port.tcp(443), "HTTPS")
    return group
