"""Ingestion: queue → EventBridge Pipe → Express workflow (the ASL file) → table or DLQ."""

from __future__ import annotations

import re

import aws_cdk as cdk
from aws_cdk import aws_dynamodb as ddb
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_pipes as pipes
from aws_cdk import aws_sqs as sqs
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct

from cdk.bundling import lambda_code, lambda_runtime
from cdk.components.log_archive import LogArchive
from cdk.components.network import https_egress_only_group
from cdk.constants import Ingestion as C
from pipeline.names import (
    MAX_RECEIVE_COUNT,
    PARSE_HANDLER,
    PIPE_BATCH_SIZE,
    PIPE_BATCH_WINDOW_SECONDS,
    WORKFLOW_FILE,
)

#: ``${Name}`` placeholders of the workflow file.
PLACEHOLDER = re.compile(r"\$\{([A-Za-z0-9_]+)\}")


class Ingestion(Construct):
    """The ingest queue and its DLQ, the parse Lambda, the Express workflow and the pipe.

    Attributes
    ----------
    queue_key:
        Customer managed key of both queues; S3 may use it to send notifications.
    environment_key:
        Customer managed key of the parse function's environment variables (the stack gives
        it to the reindex function too).
    queue, dlq:
        The ingest queue redrives to the DLQ after ``MAX_RECEIVE_COUNT`` receives; the
        workflow also sends coded failures to the DLQ.
    function:
        The parse Lambda (arm64, locally bundled, Powertools environment).
    state_machine:
        The Express workflow, defined inline from ``pipeline/workflow/ingest.asl.json``.
    pipe, pipe_role:
        SQS → state machine, ``REQUEST_RESPONSE``, batched as ``pipeline.names`` says.

    Permissions on other constructs' resources (bucket, table, ledger) are granted by the
    stack. ``reserved_concurrency`` reserves that many concurrent executions of the parse
    Lambda and caps it there: the pipe has no maximum-concurrency setting, so this is the bound
    on how many batches are parsed (and written) at once; invocations beyond it are throttled,
    and the workflow hands their batch back to the queue (docs/capacity.md).
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        table: ddb.ITable,
        ledger: ddb.ITable,
        vpc: ec2.IVpc,
        subnets: ec2.SubnetSelection,
        log_archive: LogArchive,
        reserved_concurrency: int = C.PARSE_RESERVED_CONCURRENCY,
    ) -> None:
        super().__init__(scope, construct_id)
        if reserved_concurrency < 1:
            raise ValueError("the parse function needs a reserved concurrency of at least 1")
        stack = cdk.Stack.of(self)
        self.queue_key = kms.Key(
            self,
            "QueueKey",
            description="dicom-pipeline: ingest queue and DLQ encryption",
            enable_key_rotation=True,
        )
        self.dlq = self._queue("Dlq", retention_period=cdk.Duration.days(C.DLQ_RETENTION_DAYS))
        self.queue = self._queue(
            "Queue",
            visibility_timeout=cdk.Duration.seconds(C.QUEUE_VISIBILITY_SECONDS),
            dead_letter_queue=sqs.DeadLetterQueue(
                queue=self.dlq, max_receive_count=MAX_RECEIVE_COUNT
            ),
        )

        self.security_group = https_egress_only_group(
            self,
            "FunctionSecurityGroup",
            vpc=vpc,
            description="parse Lambda: HTTPS out only (S3, DynamoDB, X-Ray)",
        )
        # The pipeline functions' environment (names, no secrets) under a customer managed
        # key rather than Lambda's AWS managed one: who may read or change it is then the
        # key's policy (checkov CKV_AWS_173). Lambda decrypts through the grant it creates when
        # the function is deployed; no execution role is given kms:Decrypt.
        self.environment_key = kms.Key(
            self,
            "FunctionEnvironmentKey",
            description="dicom-pipeline: the parse and reindex functions' environment variables",
            enable_key_rotation=True,
        )
        self.function = lambda_.Function(
            self,
            "ParseFunction",
            description="dicom-pipeline: validate events, read DICOM headers, build records",
            runtime=lambda_runtime(),
            architecture=lambda_.Architecture.ARM_64,
            handler=PARSE_HANDLER,
            code=lambda_code(),
            memory_size=C.FUNCTION_MEMORY_MB,
            timeout=cdk.Duration.seconds(C.FUNCTION_TIMEOUT_SECONDS),
            reserved_concurrent_executions=reserved_concurrency,
            environment_encryption=self.environment_key,
            tracing=lambda_.Tracing.ACTIVE,
            vpc=vpc,
            vpc_subnets=subnets,
            security_groups=[self.security_group],
            log_group=log_archive.log_group(self, "ParseFunctionLogs"),
            environment={
                "TABLE_NAME": table.table_name,
                "LEDGER_TABLE_NAME": ledger.table_name,
                "POWERTOOLS_SERVICE_NAME": C.SERVICE_NAME,
                "POWERTOOLS_METRICS_NAMESPACE": C.METRICS_NAMESPACE,
                "POWERTOOLS_LOG_LEVEL": "INFO",
            },
        )

        definition = WORKFLOW_FILE.read_text(encoding="utf-8")
        substitutions = {
            "ParseFunctionArn": self.function.function_arn,
            "TableName": table.table_name,
            "LedgerTableName": ledger.table_name,
            "DlqUrl": self.dlq.queue_url,
            "MaxReceiveCount": str(MAX_RECEIVE_COUNT),
        }
        missing = set(PLACEHOLDER.findall(definition)) ^ set(substitutions)
        if missing:
            raise ValueError(f"workflow placeholders and substitutions differ: {sorted(missing)}")
        self.state_machine = sfn.StateMachine(
            self,
            "Workflow",
            state_machine_type=sfn.StateMachineType.EXPRESS,
            definition_body=sfn.DefinitionBody.from_string(definition),
            definition_substitutions=substitutions,
            tracing_enabled=True,
            logs=sfn.LogOptions(
                destination=log_archive.vended_log_group(self, "WorkflowLogs", purpose="ingest"),
                level=sfn.LogLevel.ALL,
                include_execution_data=False,  # execution data holds PHI (DICOM values)
            ),
        )
        # from_string: CDK cannot see the tasks, so the workflow's own needs are granted
        # here (the table and ledger writes and the staged-item reads by the stack).
        self.function.grant_invoke_latest_version(self.state_machine)
        # SendMessage to an SSE-KMS queue needs GenerateDataKey and Decrypt on its key.
        iam.Grant.add_to_principal(
            grantee=self.state_machine,
            actions=["sqs:SendMessage"],
            resource_arns=[self.dlq.queue_arn],
        )
        self.queue_key.grant(self.state_machine, "kms:GenerateDataKey", "kms:Decrypt")

        self.pipe_role = iam.Role(
            self,
            "PipeRole",
            assumed_by=iam.ServicePrincipal(
                "pipes.amazonaws.com",
                conditions={"StringEquals": {"aws:SourceAccount": stack.account}},
            ),
            description="dicom-pipeline: the ingest pipe reads the queue, runs the workflow",
        )
        self.queue.grant_consume_messages(self.pipe_role)
        self.state_machine.grant_start_sync_execution(self.pipe_role)
        self.pipe = pipes.CfnPipe(
            self,
            "Pipe",
            description="dicom-pipeline: S3 events on the ingest queue -> ingestion workflow",
            role_arn=self.pipe_role.role_arn,
            source=self.queue.queue_arn,
            target=self.state_machine.state_machine_arn,
            source_parameters=pipes.CfnPipe.PipeSourceParametersProperty(
                sqs_queue_parameters=pipes.CfnPipe.PipeSourceSqsQueueParametersProperty(
                    batch_size=PIPE_BATCH_SIZE,
                    maximum_batching_window_in_seconds=PIPE_BATCH_WINDOW_SECONDS,
                )
            ),
            target_parameters=pipes.CfnPipe.PipeTargetParametersProperty(
                step_function_state_machine_parameters=(
                    pipes.CfnPipe.PipeTargetStateMachineParametersProperty(
                        invocation_type="REQUEST_RESPONSE"
                    )
                )
            ),
        )
        # The pipe validates its role when created: the policy must exist first.
        self.pipe.node.add_dependency(self.pipe_role)

    def _queue(self, construct_id: str, **props: object) -> sqs.Queue:
        """A KMS-encrypted, TLS-only queue (the one factory for both queues)."""
        return sqs.Queue(
            self,
            construct_id,
            encryption=sqs.QueueEncryption.KMS,
            encryption_master_key=self.queue_key,
            data_key_reuse=cdk.Duration.minutes(5),
            enforce_ssl=True,
            **props,  # type: ignore[arg-type]
        )

    def grant_enqueue(self, grantee: iam.IGrantable) -> iam.Grant:
        """``sqs:SendMessage`` on the ingest queue (GenerateDataKey and Decrypt on its key):
        what sending synthetic reindex events needs, nothing more."""
        grant = iam.Grant.add_to_principal(
            grantee=grantee, actions=["sqs:SendMessage"], resource_arns=[self.queue.queue_arn]
        )
        grant.combine(self.queue_key.grant(grantee, "kms:GenerateDataKey", "kms:Decrypt"))
        return grant
