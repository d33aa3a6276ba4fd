"""Alarms (to an encrypted SNS topic) and a dashboard of ingestion rates and outcomes."""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_cloudwatch as cw
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_elasticloadbalancingv2 as elbv2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_rds as rds
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from aws_cdk import aws_sqs as sqs
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct

from cdk.constants import Ingestion
from cdk.constants import Monitoring as C

#: Outcomes the parse Lambda counts (``Records_<outcome>``, docs/workflow.md).
OUTCOMES = ("indexed", "deleted", "skipped", "failed", "retry")


class Monitoring(Construct):
    """Alarms on DLQ depth, queue age, workflow failures and throttles, Lambda errors
    (plus the load balancer's targets, the database and the redeploy after a password
    rotation), an SNS topic for them, a dashboard.

    Attributes
    ----------
    topic, alarms, dashboard
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        dashboard_name: str,
        queue: sqs.IQueue,
        dlq: sqs.IQueue,
        state_machine: sfn.StateMachine,
        function: lambda_.IFunction,
        target_group: elbv2.ApplicationTargetGroup,
        database: rds.DatabaseInstance,
        redeploy: sfn.IStateMachine,
        reindex: sfn.IStateMachine | None = None,
        alarm_email: str | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        self.key = kms.Key(
            self,
            "TopicKey",
            description="dicom-pipeline: alarm topic encryption",
            enable_key_rotation=True,
        )
        # CloudWatch publishes alarm notifications to the encrypted topic.
        self.key.add_to_resource_policy(
            iam.PolicyStatement(
                principals=[iam.ServicePrincipal("cloudwatch.amazonaws.com")],
                actions=["kms:Decrypt", "kms:GenerateDataKey"],
                resources=["*"],  # in a key policy, "*" is this key
            )
        )
        self.topic = sns.Topic(self, "Alarms", master_key=self.key, enforce_ssl=True)
        if alarm_email:
            self.topic.add_subscription(subscriptions.EmailSubscription(alarm_email))

        period = cdk.Duration.minutes(C.PERIOD_MINUTES)
        self.alarms: list[cw.Alarm] = []
        # Each description says where to look; an infra test checks that every file, section
        # and command named here exists.
        self._alarm(
            "DlqNotEmpty",
            "Records are waiting in the DLQ (stack output DlqUrl). `dicom-pipeline dlq list "
            "--aws-stack <stack>` groups them by failure code and key prefix "
            "(docs/workflow.md#failure-codes-on-the-way); re-read an object's header with "
            "`dicom-pipeline parse s3://<bucket>/<key>`. Once the cause is fixed, "
            "`dicom-pipeline dlq redrive --dry-run`, then without --dry-run, re-sends the "
            "events, and `dicom-pipeline audit` confirms nothing is missing; "
            "notebooks/dlq_redrive.ipynb does all three.",
            dlq.metric_approximate_number_of_messages_visible(period=period, statistic="Maximum"),
            C.DLQ_DEPTH_THRESHOLD,
        )
        self._alarm(
            "IngestQueueAge",
            "The oldest ingest message is older than expected: the pipe is stuck or slow "
            "(docs/workflow.md#path-of-an-event).",
            queue.metric_approximate_age_of_oldest_message(period=period, statistic="Maximum"),
            C.QUEUE_AGE_SECONDS,
        )
        self._alarm(
            "WorkflowFailed",
            "Workflow executions failed: their batches stay on the ingest queue and reach the "
            "DLQ after repeated failures (docs/workflow.md#guarantees). `dicom-pipeline audit` "
            "(or notebooks/ingestion_audit.ipynb) shows what is not indexed.",
            state_machine.metric_failed(period=period),
            0,
        )
        self._alarm(
            "WorkflowTimedOut",
            "Workflow executions timed out (docs/workflow.md#guarantees).",
            state_machine.metric_timed_out(period=period),
            0,
        )
        self._alarm(
            "WorkflowThrottled",
            "Workflow executions were throttled (docs/workflow.md#observability).",
            state_machine.metric_throttled(period=period),
            0,
        )
        self._alarm(
            "ParseErrors",
            "The parse Lambda raised errors: see its log group and docs/workflow.md#observability.",
            function.metric_errors(period=period),
            0,
        )
        self._alarm(
            "ParseThrottles",
            "The parse Lambda was throttled: its reserved concurrency (context "
            "parse_reserved_concurrency, README.md#context-values) or the account's limit.",
            function.metric_throttles(period=period),
            0,
        )
        self._alarm(
            "OrthancUnhealthy",
            "An Orthanc task fails the load balancer health check (README.md#operations).",
            target_group.metrics.unhealthy_host_count(period=period, statistic="Maximum"),
            0,
        )
        self._alarm(
            "Orthanc5xx",
            "Orthanc answered with server errors (README.md#operations).",
            target_group.metrics.http_code_target(
                elbv2.HttpCodeTarget.TARGET_5XX_COUNT, period=period
            ),
            5,
        )
        self._alarm(
            "DatabaseStorageLow",
            "The index database has less than 2 GiB free.",
            database.metric_free_storage_space(period=period, statistic="Minimum"),
            2 * 1024**3,
            comparison=cw.ComparisonOperator.LESS_THAN_THRESHOLD,
        )
        self._alarm(
            "OrthancRedeployFailed",
            "Orthanc was not redeployed after the database password rotated: its tasks may "
            "fail to reconnect. Force a new deployment by hand (README.md#operations).",
            redeploy.metric_failed(period=period),
            0,
        )
        if reindex is not None:
            self._alarm(
                "ReindexFailed",
                "A reindex run failed: more than its tolerated share of batches could not be "
                "enqueued, or it timed out. Its results (failed batches, errors) are under "
                "reindex-results/ of stack output InventoryBucket; start it again "
                "(docs/operations.md#reindex-at-scale), then `dicom-pipeline audit`.",
                reindex.metric_failed(period=period),
                0,
            )
            self._alarm(
                "ReindexTimedOut",
                "A reindex run timed out (docs/operations.md#reindex-at-scale).",
                reindex.metric_timed_out(period=period),
                0,
            )

        outcome_metrics: list[cw.IMetric] = [
            cw.Metric(
                namespace=Ingestion.METRICS_NAMESPACE,
                metric_name=f"Records_{outcome}",
                dimensions_map={"service": Ingestion.SERVICE_NAME},
                statistic="Sum",
                period=period,
                label=outcome,
            )
            for outcome in OUTCOMES
        ]
        self.dashboard = cw.Dashboard(
            self,
            "Dashboard",
            dashboard_name=dashboard_name,
            widgets=[
                [
                    cw.GraphWidget(
                        title="Ingest queue",
                        left=[
                            queue.metric_number_of_messages_sent(period=period, label="sent"),
                            queue.metric_number_of_messages_deleted(period=period, label="done"),
                            dlq.metric_approximate_number_of_messages_visible(
                                period=period, label="in DLQ"
                            ),
                        ],
                        right=[queue.metric_approximate_age_of_oldest_message(period=period)],
                        width=8,
                    ),
                    cw.GraphWidget(
                        title="Workflow executions",
                        left=[
                            state_machine.metric_started(period=period, label="started"),
                            state_machine.metric_succeeded(period=period, label="succeeded"),
                            state_machine.metric_failed(period=period, label="failed"),
                            state_machine.metric_throttled(period=period, label="throttled"),
                        ],
                        width=8,
                    ),
                    cw.GraphWidget(
                        title="Record outcomes", left=outcome_metrics, stacked=True, width=8
                    ),
                ],
                [
                    cw.GraphWidget(
                        title="Parse Lambda",
                        left=[
                            function.metric_invocations(period=period),
                            function.metric_errors(period=period),
                        ],
                        right=[function.metric_duration(period=period, statistic="p90")],
                        width=12,
                    ),
                    cw.AlarmStatusWidget(title="Alarms", alarms=list(self.alarms), width=12),
                ],
            ],
        )

    def _alarm(
        self,
        construct_id: str,
        description: str,
        metric: cw.IMetric,
        threshold: float,
        *,
        comparison: cw.ComparisonOperator = cw.ComparisonOperator.GREATER_THAN_THRESHOLD,
    ) -> cw.Alarm:
        """One alarm on ``metric`` that notifies the topic (the one factory for alarms)."""
        alarm = cw.Alarm(
            self,
            construct_id,
            alarm_description=description,
            metric=metric,
            threshold=threshold,
            evaluation_periods=1,
            comparison_operator=comparison,
            treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
        )
        alarm.add_alarm_action(cw_actions.SnsAction(self.topic))
        alarm.add_ok_action(cw_actions.SnsAction(self.topic))
        self.alarms.append(alarm)
        return alarm
