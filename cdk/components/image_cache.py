"""Docker Hub images through the account's own registry: an ECR pull-through cache rule."""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_ecr as ecr
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_iam as iam
from constructs import Construct

from cdk.constants import ImageCache as Defaults


class ImageCache(Construct):
    """A pull-through cache rule for Docker Hub under the ECR repository prefix ``prefix``.

    A task pulls ``<account>.dkr.ecr.<region>.amazonaws.com/<prefix>/<repository>:<tag>``;
    the first pull creates the repository and imports the image from Docker Hub, later pulls
    are served by ECR (no Docker Hub rate limit, no Docker Hub outage at scale-out). ECR
    refreshes a cached tag from upstream at most once every 24 hours.

    Docker Hub requires credentials for a cache rule: a Secrets Manager secret whose name
    starts with ``ecr-pullthroughcache/`` and holds ``{"username": ..., "accessToken": ...}``
    (created once per account and region, see README "Deploy to AWS"). Without
    ``credentials_secret_arn``, an example ARN keeps synth working and a CloudFormation rule
    refuses the deployment before anything is created.

    Attributes
    ----------
    rule, prefix
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        prefix: str,
        credentials_secret_arn: str | None,
    ) -> None:
        super().__init__(scope, construct_id)
        stack = cdk.Stack.of(self)
        self.prefix = prefix
        if credentials_secret_arn is None:
            credentials_secret_arn = Defaults.EXAMPLE_SECRET_ARN.format(region=stack.region)
            cdk.CfnRule(
                self,
                "DockerHubSecretConfigured",
                assertions=[
                    cdk.CfnRuleAssertion(
                        assert_=cdk.Fn.condition_equals(
                            cdk.Aws.REGION, "no-docker-hub-secret-configured"
                        ),
                        assert_description=(
                            "No Docker Hub credentials for the ECR pull-through cache: create "
                            "the secret ecr-pullthroughcache/docker-hub and set context "
                            "dockerhub_secret_arn (README, Deploy to AWS)."
                        ),
                    )
                ],
            )
        self.rule = ecr.CfnPullThroughCacheRule(
            self,
            "Rule",
            ecr_repository_prefix=prefix,
            upstream_registry=Defaults.UPSTREAM_REGISTRY,
            upstream_registry_url=Defaults.UPSTREAM_URL,
            credential_arn=credentials_secret_arn,
        )

    def image_uri(self, repository: str, tag: str) -> str:
        """``<account>.dkr.ecr.<region>.<suffix>/<prefix>/<repository>:<tag>``."""
        stack = cdk.Stack.of(self)
        return (
            f"{stack.account}.dkr.ecr.{stack.region}.{stack.url_suffix}/"
            f"{self.prefix}/{repository}:{tag}"
        )

    def image(self, repository: str, tag: str) -> ecs.ContainerImage:
        """The container image of Docker Hub's ``repository:tag``, through the cache."""
        return ecs.ContainerImage.from_registry(self.image_uri(repository, tag))

    def repository_arn(self, repository: str) -> str:
        """The ARN of the cached repository ``<prefix>/<repository>``."""
        return cdk.Stack.of(self).format_arn(
            service="ecr", resource="repository", resource_name=f"{self.prefix}/{repository}"
        )

    def grant_pull(self, grantee: iam.IGrantable, repository: str) -> None:
        """Let ``grantee`` (a task execution role) pull ``repository`` through the cache.

        Pulling an image (layer checks, layer URLs, the manifest) on the cached repository,
        plus what a pull through the cache needs on it, as AWS documents: creating the
        repository on the first pull and importing the upstream image.
        ``ecr:GetAuthorizationToken`` has no resource-level permissions.
        """
        iam.Grant.add_to_principal(
            grantee=grantee,
            actions=[
                "ecr:BatchCheckLayerAvailability",
                "ecr:GetDownloadUrlForLayer",
                "ecr:BatchGetImage",
                "ecr:BatchImportUpstreamImage",
                "ecr:CreateRepository",
            ],
            resource_arns=[self.repository_arn(repository)],
        )
        iam.Grant.add_to_principal(
            grantee=grantee, actions=["ecr:GetAuthorizationToken"], resource_arns=["*"]
        )
