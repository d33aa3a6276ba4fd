"""After the database password rotates, replace the Orthanc tasks so they use the new one."""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk import aws_stepfunctions as sfn
from aws_cdk import aws_stepfunctions_tasks as tasks
from constructs import Construct

from cdk.components.log_archive import LogArchive
from cdk.constants import Rotation as C


class RotationRedeploy(Construct):
    """An EventBridge rule on the secret's ``RotationSucceeded`` that forces a new deployment.

    ECS resolves a task's secrets when the task starts, and single-user rotation changes the
    password at once: a running Orthanc task keeps its open connections but could not open a
    new one. Secrets Manager reports each finished rotation to EventBridge (through
    CloudTrail, as an "AWS Service Event via CloudTrail" whose
    ``detail.additionalEventData.SecretId`` is the secret's ARN); the rule starts a small
    Standard workflow that calls ``ecs:UpdateService`` with ``forceNewDeployment`` on the one
    service. The rolling deployment starts new tasks (which read the new password) before it
    stops the old ones, so Orthanc stays available; the circuit breaker rolls back a
    deployment whose tasks do not become healthy.

    CloudTrail delivers such events on a best-effort basis. If one were lost, a task whose
    database connection breaks fails its health check and ECS replaces it with a task that
    reads the current password; the alarm on failed executions reports a redeploy that did
    not happen.

    Attributes
    ----------
    rule, state_machine, events_role
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        secret: secretsmanager.ISecret,
        service: ecs.FargateService,
        log_archive: LogArchive,
    ) -> None:
        super().__init__(scope, construct_id)
        redeploy = tasks.CallAwsService(
            self,
            "ForceNewDeployment",
            comment="Start new Orthanc tasks: they read the rotated password when they start",
            service="ecs",
            action="updateService",
            parameters={
                "Cluster": service.cluster.cluster_arn,
                "Service": service.service_name,
                "ForceNewDeployment": True,
            },
            iam_action="ecs:UpdateService",
            iam_resources=[service.service_arn],
            result_path=sfn.JsonPath.DISCARD,  # the event stays the output
        )
        redeploy.add_retry(
            errors=["States.ALL"],
            interval=cdk.Duration.seconds(C.RETRY_SECONDS),
            max_attempts=C.RETRY_ATTEMPTS,
            backoff_rate=2,
            jitter_strategy=sfn.JitterType.FULL,
        )
        self.state_machine = sfn.StateMachine(
            self,
            "Workflow",
            comment="dicom-pipeline: redeploy Orthanc after the database password rotated",
            state_machine_type=sfn.StateMachineType.STANDARD,
            definition_body=sfn.DefinitionBody.from_chainable(redeploy),
            timeout=cdk.Duration.minutes(C.TIMEOUT_MINUTES),
            tracing_enabled=True,
            logs=sfn.LogOptions(
                destination=log_archive.vended_log_group(self, "Logs", purpose="redeploy"),
                level=sfn.LogLevel.ALL,
                include_execution_data=False,
            ),
        )
        self.events_role = iam.Role(
            self,
            "EventsRole",
            assumed_by=iam.ServicePrincipal(
                "events.amazonaws.com",
                conditions={"StringEquals": {"aws:SourceAccount": cdk.Stack.of(self).account}},
            ),
            description="dicom-pipeline: the rotation rule starts the Orthanc redeploy",
        )
        self.rule = events.Rule(
            self,
            "RotationSucceeded",
            description="dicom-pipeline: the database password rotated -> redeploy Orthanc",
            event_pattern=events.EventPattern(
                source=["aws.secretsmanager"],
                detail_type=["AWS Service Event via CloudTrail"],
                detail={
                    "eventSource": ["secretsmanager.amazonaws.com"],
                    "eventName": ["RotationSucceeded"],
                    "additionalEventData": {"SecretId": [secret.secret_arn]},
                },
            ),
            targets=[targets.SfnStateMachine(self.state_machine, role=self.events_role)],
        )
