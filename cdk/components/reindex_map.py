"""Reindex at scale: a STANDARD state machine whose Distributed Map hands batches of keys,
from the image bucket's listing or its S3 Inventory, to a Lambda that enqueues them."""

from __future__ import annotations

import json
from typing import Any

import aws_cdk as cdk
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sqs as sqs
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct

from cdk.bundling import lambda_code, lambda_runtime
from cdk.components.ingestion import PLACEHOLDER
from cdk.components.log_archive import LogArchive
from cdk.components.network import https_egress_only_group
from cdk.constants import Ingestion
from cdk.constants import Reindex as C
from pipeline.names import (
    ORTHANC_PREFIX,
    REINDEX_HANDLER,
    REINDEX_RESULTS_PREFIX,
    REINDEX_WORKFLOW_FILE,
)
from pipeline.ops.reindex import DEFAULT_MAX_QUEUE_DEPTH


def map_states(definition: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The Distributed Map states of a reindex definition, by name."""
    return {name: s for name, s in definition["States"].items() if s["Type"] == "Map"}


class ReindexMap(Construct):
    """The reindex Lambda and the state machine that fans keys out to it.

    Attributes
    ----------
    function:
        ``lambdas/reindex_batch.py``: a batch of keys → one synthetic reindex event per key
        on the ingest queue (``pipeline.ops.reindex.enqueue_keys``). The ingestion workflow
        then parses each object as for a real event and sends failures to the DLQ.
        It waits while the ingest queue holds more than ``max_queue_depth`` messages
        (environment ``MAX_QUEUE_DEPTH``), so a reindex never floods the queue faster than the
        parse function's reserved concurrency drains it (docs/capacity.md).
        Its reserved concurrency is the Map's ``MaxConcurrency`` (each child invokes it once
        at a time), so one run never waits for it and a second run at once is throttled
        (the child's retrier backs off) rather than doubling the enqueue rate. Its
        environment is encrypted with ``environment_key``.
    state_machine:
        STANDARD, defined by ``pipeline/workflow/reindex.asl.json``: a Distributed Map
        (items from ``ListObjectsV2`` of the image bucket or an inventory manifest, batches of
        100 keys, Express child executions, at most 10 at once, 5% of them may fail, results
        to ``reindex-results/`` of the reports bucket). Each child's Task has
        ``TimeoutSeconds`` and a retrier for ``ReindexQueueBusy``; the file is checked against
        :class:`cdk.constants.Reindex` at synth. Its name is known before it exists
        (``<stack>-reindex``) so that its role may start, describe and stop its own
        child executions, as AWS documents for a Distributed Map, without a dependency cycle.

    Grants on other constructs' resources (listing the bucket, reading the manifests, writing
    results, reading records and the DLQ ledger, sending to the queue) are made by the stack.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        image_bucket: s3.IBucket,
        reports_bucket: s3.IBucket,
        table_name: str,
        ledger_table_name: str,
        queue: sqs.IQueue,
        vpc: ec2.IVpc,
        subnets: ec2.SubnetSelection,
        log_archive: LogArchive,
        environment_key: kms.IKey,
        max_queue_depth: int = DEFAULT_MAX_QUEUE_DEPTH,
    ) -> None:
        super().__init__(scope, construct_id)
        if max_queue_depth < 1:
            raise ValueError("max_queue_depth must be at least 1 (0 would never send)")
        stack = cdk.Stack.of(self)
        self.security_group = https_egress_only_group(
            self,
            "FunctionSecurityGroup",
            vpc=vpc,
            description="reindex Lambda: HTTPS out only (DynamoDB, SQS, X-Ray)",
        )
        self.function = lambda_.Function(
            self,
            "Function",
            description="dicom-pipeline: enqueue synthetic reindex events for a batch of keys",
            runtime=lambda_runtime(),
            architecture=lambda_.Architecture.ARM_64,
            handler=REINDEX_HANDLER,
            code=lambda_code(),
            memory_size=C.FUNCTION_MEMORY_MB,
            timeout=cdk.Duration.seconds(C.FUNCTION_TIMEOUT_SECONDS),
            reserved_concurrent_executions=C.FUNCTION_RESERVED_CONCURRENCY,
            environment_encryption=environment_key,
            tracing=lambda_.Tracing.ACTIVE,
            vpc=vpc,
            vpc_subnets=subnets,
            security_groups=[self.security_group],
            log_group=log_archive.log_group(self, "FunctionLogs"),
            environment={
                "BUCKET_NAME": image_bucket.bucket_name,
                "TABLE_NAME": table_name,
                "LEDGER_TABLE_NAME": ledger_table_name,
                "QUEUE_URL": queue.queue_url,
                "MAX_QUEUE_DEPTH": str(max_queue_depth),
                "POWERTOOLS_SERVICE_NAME": f"{Ingestion.SERVICE_NAME}-reindex",
                "POWERTOOLS_METRICS_NAMESPACE": Ingestion.METRICS_NAMESPACE,
                "POWERTOOLS_LOG_LEVEL": "INFO",
            },
        )

        definition = REINDEX_WORKFLOW_FILE.read_text(encoding="utf-8")
        substitutions = {
            "ImageBucket": image_bucket.bucket_name,
            "InventoryBucket": reports_bucket.bucket_name,
            "ResultBucket": reports_bucket.bucket_name,
            "ResultPrefix": REINDEX_RESULTS_PREFIX,
            "OrthancPrefix": ORTHANC_PREFIX,
            "ReindexFunctionArn": self.function.function_arn,
        }
        missing = set(PLACEHOLDER.findall(definition)) ^ set(substitutions)
        if missing:
            raise ValueError(f"reindex placeholders and substitutions differ: {sorted(missing)}")
        for name, state in map_states(json.loads(definition)).items():
            settings = (
                state["ItemBatcher"]["MaxItemsPerBatch"],
                state["MaxConcurrency"],
                state["ToleratedFailurePercentage"],
            )
            if settings != (C.ITEMS_PER_BATCH, C.MAX_CONCURRENCY, C.TOLERATED_FAILURE_PERCENT):
                raise ValueError(f"{REINDEX_WORKFLOW_FILE.name}: {name} differs from constants")
            for task in state["ItemProcessor"]["States"].values():
                if task.get("TimeoutSeconds") != C.TASK_TIMEOUT_SECONDS:
                    raise ValueError(
                        f"{REINDEX_WORKFLOW_FILE.name}: {name}'s child task needs "
                        f"TimeoutSeconds {C.TASK_TIMEOUT_SECONDS}"
                    )

        # Not retained (deleted with the stack), so a name fixed per stack is safe.
        self.state_machine_name = f"{stack.stack_name}-reindex"
        self.state_machine = sfn.StateMachine(
            self,
            "StateMachine",
            state_machine_name=self.state_machine_name,
            state_machine_type=sfn.StateMachineType.STANDARD,
            definition_body=sfn.DefinitionBody.from_string(definition),
            definition_substitutions=substitutions,
            timeout=cdk.Duration.hours(C.TIMEOUT_HOURS),
            tracing_enabled=True,
            logs=sfn.LogOptions(
                destination=log_archive.vended_log_group(self, "Logs", purpose="reindex"),
                level=sfn.LogLevel.ALL,
                include_execution_data=False,  # keys only, but keep the logs plain
            ),
        )
        # from_string: CDK cannot see the tasks. The Map's own needs are granted here, the
        # item readers and the result writer by the stack.
        self.function.grant_invoke_latest_version(self.state_machine)
        iam.Grant.add_to_principal(
            grantee=self.state_machine,
            actions=["states:StartExecution"],
            resource_arns=[
                stack.format_arn(
                    service="states",
                    resource="stateMachine",
                    resource_name=self.state_machine_name,
                    arn_format=cdk.ArnFormat.COLON_RESOURCE_NAME,
                )
            ],
        )
        #: Its child executions: ``execution:<name>/<map run>:<id>``.
        self.child_executions_arn = stack.format_arn(
            service="states",
            resource="execution",
            resource_name=f"{self.state_machine_name}/*",
            arn_format=cdk.ArnFormat.COLON_RESOURCE_NAME,
        )
        iam.Grant.add_to_principal(
            grantee=self.state_machine,
            actions=["states:DescribeExecution", "states:StopExecution"],
            resource_arns=[self.child_executions_arn],
        )
