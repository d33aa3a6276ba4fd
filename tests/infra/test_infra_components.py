"""Each construct synthesized alone in a bare stack, and its promises asserted."""

from __future__ import annotations

import json
from typing import Any, NamedTuple

import aws_cdk as cdk
import pytest
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_sqs as sqs
from aws_cdk.assertions import Match, Template
from infra_support import (
    DEV_CIDRS,
    as_list,
    only,
    orthanc_service,
    policy_statements,
    refs,
    resources,
)

from cdk.components.front_door import FrontDoor
from cdk.components.image_store import ImageStore
from cdk.components.index_database import IndexDatabase
from cdk.components.ingestion import Ingestion
from cdk.components.log_archive import LogArchive
from cdk.components.metadata_table import MetadataTable
from cdk.components.monitoring import Monitoring
from cdk.components.network import Network
from cdk.components.rotation_redeploy import RotationRedeploy
from cdk.config import CertificateConfig
from cdk.constants import Ingestion as Defaults
from pipeline.names import (
    DICOM_SUFFIX,
    MAX_RECEIVE_COUNT,
    ORTHANC_PREFIX,
    PARSE_HANDLER,
    PIPE_BATCH_SIZE,
    PIPE_BATCH_WINDOW_SECONDS,
    SIDECAR_PREFIX,
    STAGING_PREFIX,
    WORKFLOW_FILE,
)
from pipeline.orthanc.config import deployed
from pipeline.workflow.table import GSIS, LEDGER_KEY, TABLE_KEY, TTL_ATTRIBUTE

TLS_DENY = Match.object_like(
    {
        "Effect": "Deny",
        "Condition": {"Bool": {"aws:SecureTransport": "false"}},
    }
)


def _kms_key_ids(template: Template) -> set[str]:
    return set(resources(template, "AWS::KMS::Key"))


def _assert_keys_rotate(template: Template) -> None:
    for key in resources(template, "AWS::KMS::Key").values():
        assert key["Properties"]["EnableKeyRotation"] is True


# ---------------------------------------------------------------- log archive, network


def test_log_archive_key_is_for_cloudwatch_logs_and_log_bucket_is_private(
    bare_stack: cdk.Stack,
) -> None:
    # Given a log archive
    archive = LogArchive(bare_stack, "LogArchive")
    archive.log_group(bare_stack, "Group")
    t = Template.from_stack(bare_stack)
    # Then log groups are KMS-encrypted by a rotating key CloudWatch Logs may use
    _assert_keys_rotate(t)
    t.has_resource_properties(
        "AWS::Logs::LogGroup", {"KmsKeyId": Match.any_value(), "RetentionInDays": 365}
    )
    key_policy = json.dumps(only(t, "AWS::KMS::Key")["KeyPolicy"])
    assert "logs.eu-central-1.amazonaws.com" in key_policy
    assert "kms:EncryptionContext:aws:logs:arn" in key_policy
    # And the access-log bucket is SSE-S3 (log delivery needs it), private and TLS-only
    bucket = only(t, "AWS::S3::Bucket")
    sse = bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]
    assert sse["ServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    assert all(bucket["PublicAccessBlockConfiguration"].values())
    t.has_resource_properties(
        "AWS::S3::BucketPolicy", {"PolicyDocument": {"Statement": Match.array_with([TLS_DENY])}}
    )


def test_network_spans_two_azs_with_private_subnets_endpoints_and_flow_logs(
    bare_stack: cdk.Stack,
) -> None:
    network = Network(bare_stack, "Network", log_archive=LogArchive(bare_stack, "Logs"))
    t = Template.from_stack(bare_stack)
    subnets = resources(t, "AWS::EC2::Subnet").values()
    public = [s for s in subnets if s["Properties"]["MapPublicIpOnLaunch"]]
    assert len(subnets) == 6 and len(public) == 2  # public, app, data in two AZs
    endpoints = [e["Properties"] for e in resources(t, "AWS::EC2::VPCEndpoint").values()]
    names = json.dumps([e["ServiceName"] for e in endpoints])
    for service in ("s3", "dynamodb", "secretsmanager", "ssm", "logs"):
        assert f".{service}" in names, service
    gateway = [e for e in endpoints if e.get("VpcEndpointType", "Gateway") == "Gateway"]
    assert len(gateway) == 2
    t.has_resource_properties("AWS::EC2::FlowLog", {"TrafficType": "ALL"})
    assert "dummy" not in json.dumps(t.to_json())  # no silent AZ lookup
    assert network.secrets_manager_endpoint is network.endpoints["SecretsManager"]


# ---------------------------------------------------------------- image store


def _image_store(stack: cdk.Stack) -> tuple[ImageStore, sqs.Queue, iam.Role]:
    archive = LogArchive(stack, "Logs")
    store = ImageStore(stack, "Images", access_logs=archive.access_logs)
    queue = sqs.Queue(stack, "Queue", encryption=sqs.QueueEncryption.SQS_MANAGED)
    role = iam.Role(stack, "Reader", assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"))
    return store, queue, role


def test_image_bucket_is_kms_encrypted_versioned_private_tls_only_and_logged(
    bare_stack: cdk.Stack,
) -> None:
    store, _, _ = _image_store(bare_stack)
    t = Template.from_stack(bare_stack)
    buckets = resources(t, "AWS::S3::Bucket")
    image = buckets[bare_stack.resolve(store.bucket.node.default_child.logical_id)]["Properties"]  # type: ignore[union-attr]
    sse = image["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]
    assert sse["ServerSideEncryptionByDefault"]["SSEAlgorithm"] == "aws:kms"
    assert sse["ServerSideEncryptionByDefault"]["KMSMasterKeyID"] == {
        "Fn::GetAtt": [bare_stack.resolve(store.key.node.default_child.logical_id), "Arn"]  # type: ignore[union-attr]
    }
    assert sse["BucketKeyEnabled"] is True
    assert image["VersioningConfiguration"] == {"Status": "Enabled"}
    assert all(image["PublicAccessBlockConfiguration"].values())
    assert image["LoggingConfiguration"]["LogFilePrefix"]
    rules = {r["Id"]: r for r in image["LifecycleConfiguration"]["Rules"]}
    assert rules["noncurrent-versions"] == {
        "Id": "noncurrent-versions",
        "Status": "Enabled",
        "NoncurrentVersionExpiration": {"NoncurrentDays": 90},
        "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 7},
    }
    # Staged items live a day, their noncurrent versions (and so delete markers) a day more.
    assert rules["workflow-staging"] == {
        "Id": "workflow-staging",
        "Status": "Enabled",
        "Prefix": STAGING_PREFIX,
        "ExpirationInDays": 1,
        "NoncurrentVersionExpiration": {"NoncurrentDays": 1},
    }
    # Replaced or deleted sidecars (PHI) are gone a day later, their delete markers too.
    assert rules["sidecar-versions"] == {
        "Id": "sidecar-versions",
        "Status": "Enabled",
        "Prefix": SIDECAR_PREFIX,
        "NoncurrentVersionExpiration": {"NoncurrentDays": 1},
        "ExpiredObjectDeleteMarker": True,
    }
    assert len(rules) == 3
    _assert_keys_rotate(t)
    t.has_resource_properties(
        "AWS::S3::BucketPolicy", {"PolicyDocument": {"Statement": Match.array_with([TLS_DENY])}}
    )


def test_image_bucket_notifies_the_queue_of_dcm_creates_and_removes(
    bare_stack: cdk.Stack,
) -> None:
    store, queue, _ = _image_store(bare_stack)
    store.send_events_to(queue)
    t = Template.from_stack(bare_stack)
    config = only(t, "Custom::S3BucketNotifications")["NotificationConfiguration"]
    events = sorted(e for c in config["QueueConfigurations"] for e in c["Events"])
    assert events == ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"]
    # Only Orthanc's .dcm objects: under its prefix (what the pipeline writes itself, the
    # sidecars and staged items, is elsewhere)
    for c in config["QueueConfigurations"]:
        rules = {r["Name"].lower(): r["Value"] for r in c["Filter"]["Key"]["FilterRules"]}
        assert rules == {"prefix": ORTHANC_PREFIX, "suffix": DICOM_SUFFIX}
        assert not SIDECAR_PREFIX.startswith(ORTHANC_PREFIX)
        assert not STAGING_PREFIX.startswith(ORTHANC_PREFIX)


def test_orthancs_role_reaches_only_its_prefix(bare_stack: cdk.Stack) -> None:
    # Given Orthanc's storage grant on the image bucket
    store, _, role = _image_store(bare_stack)
    store.grant_orthanc_storage(role)
    t = Template.from_stack(bare_stack)
    by_action = {
        tuple(sorted(as_list(st["Action"]))): st for _, st in policy_statements(t.to_json())
    }
    # Then it may read, write and delete objects under orthanc/ only (not dicom-json/ or
    # workflow-staging/), and list that prefix only
    objects = by_action[("s3:DeleteObject", "s3:GetObject", "s3:PutObject")]
    assert _arn_suffix(objects["Resource"]) == f"/{ORTHANC_PREFIX}*"
    listing = by_action[("s3:ListBucket",)]
    assert listing["Condition"] == {"StringLike": {"s3:prefix": [f"{ORTHANC_PREFIX}*"]}}
    # And its RootPath is that prefix (the plugin adds the "/")
    settings = deployed(name="n", bucket="b", region="r", postgresql_uri="u")
    assert settings["AwsS3Storage"]["RootPath"] + "/" == ORTHANC_PREFIX


def test_s3_may_use_the_queue_and_its_key_only_for_this_bucket_in_this_account(
    bare_stack: cdk.Stack,
) -> None:
    # Given a KMS-encrypted queue with its own key, as the ingest queue is
    store, _, _ = _image_store(bare_stack)
    key = kms.Key(bare_stack, "QueueKey")
    queue = sqs.Queue(
        bare_stack, "KmsQueue", encryption=sqs.QueueEncryption.KMS, encryption_master_key=key
    )
    # When the bucket notifies it
    store.send_events_to(queue)
    t = Template.from_stack(bare_stack)
    # Then every grant to S3, in the queue policy and the key policy, names this bucket and
    # this account (no confused deputy), and the key serves only sending
    bucket_arn = {"Fn::GetAtt": [_lid(store.bucket), "Arn"]}
    expected = {
        "ArnLike": {"aws:SourceArn": bucket_arn},
        "StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}},
    }
    (queue_policy,) = resources(t, "AWS::SQS::QueuePolicy").values()
    key_policy = resources(t, "AWS::KMS::Key")[_lid(key)]["Properties"]["KeyPolicy"]
    grants = {
        "queue": [
            st
            for st in queue_policy["Properties"]["PolicyDocument"]["Statement"]
            if st.get("Principal") == {"Service": "s3.amazonaws.com"}
        ],
        "key": [
            st
            for st in key_policy["Statement"]
            if st.get("Principal") == {"Service": "s3.amazonaws.com"}
        ],
    }
    assert [sorted(as_list(st["Action"])) for st in grants["queue"]] == [["sqs:SendMessage"]]
    assert [sorted(as_list(st["Action"])) for st in grants["key"]] == [
        ["kms:Decrypt", "kms:GenerateDataKey"]
    ]
    for st in grants["queue"] + grants["key"]:
        assert st["Effect"] == "Allow"
        assert st["Condition"] == expected


def _statements(t: Template) -> list[dict[str, Any]]:
    return [st for _, st in policy_statements(t.to_json())]


def _arn_suffix(resource: Any) -> str:
    """The literal tail of an ``Fn::Join`` ARN (``/dicom-json/*``), or "" for a plain ref."""
    if isinstance(resource, dict) and "Fn::Join" in resource:
        return str(resource["Fn::Join"][1][-1])
    return ""


def test_image_store_grants_are_exact(bare_stack: cdk.Stack) -> None:
    store, _, role = _image_store(bare_stack)
    store.grant_header_reads(role)
    store.grant_sidecar_writes(role)
    t = Template.from_stack(bare_stack)
    statements = {
        tuple(sorted(as_list(st["Action"]))): json.dumps(st["Resource"])
        for _, st in policy_statements(t.to_json())
    }
    assert f'"/*{DICOM_SUFFIX}"' in statements[("s3:GetObject", "s3:GetObjectVersion")]
    assert f'"/{SIDECAR_PREFIX}*"' in statements[("s3:PutObject",)]
    assert "/*" not in statements[("s3:ListBucket",)]  # the bucket itself: 404, not 403
    assert ("kms:Decrypt", "kms:GenerateDataKey") in statements


def test_staging_and_sidecar_cleanup_grants_are_exact(bare_stack: cdk.Stack) -> None:
    # Given the parse function's and the workflow's grants on the bucket
    store, _, writer = _image_store(bare_stack)
    reader = iam.Role(
        bare_stack, "Workflow", assumed_by=iam.ServicePrincipal("states.amazonaws.com")
    )
    store.grant_staging_writes(writer)
    store.grant_sidecar_cleanup(writer)
    store.grant_staging_reads(reader)
    t = Template.from_stack(bare_stack)
    key = {"Fn::GetAtt": [_lid(store.key), "Arn"]}
    bucket = {"Fn::GetAtt": [_lid(store.bucket), "Arn"]}
    by_role: dict[str, list[dict[str, Any]]] = {}
    for owner, st in policy_statements(t.to_json()):
        by_role.setdefault(owner, []).append(st)
    # Then the writer may put staged items, delete sidecars and list only the sidecar prefix
    got = sorted(
        (st["Action"], _arn_suffix(st["Resource"]), json.dumps(st.get("Condition")))
        for st in by_role[_lid(writer)]
    )
    assert got == sorted(
        [
            ("s3:PutObject", f"/{STAGING_PREFIX}*", "null"),
            ("s3:DeleteObject", f"/{SIDECAR_PREFIX}*", "null"),
            (
                "s3:ListBucket",
                "",
                json.dumps({"StringLike": {"s3:prefix": [f"{SIDECAR_PREFIX}*"]}}),
            ),
            ("kms:GenerateDataKey", "", "null"),
        ]
    )
    listing = next(st for st in by_role[_lid(writer)] if st["Action"] == "s3:ListBucket")
    assert listing["Resource"] == bucket
    assert (
        next(st for st in by_role[_lid(writer)] if st["Action"].startswith("kms:"))["Resource"]
        == key
    )
    # And the reader may only get staged items and decrypt them
    (decrypt, get) = sorted(by_role[_lid(reader)], key=lambda st: st["Action"])
    assert decrypt == {"Action": "kms:Decrypt", "Effect": "Allow", "Resource": key}
    assert get["Action"] == "s3:GetObject"
    assert _arn_suffix(get["Resource"]) == f"/{STAGING_PREFIX}*"
    assert refs(get["Resource"]) == {_lid(store.bucket)}


# ---------------------------------------------------------------- metadata table


def test_metadata_table_shape_encryption_recovery_ttl_and_indexes(bare_stack: cdk.Stack) -> None:
    metadata = MetadataTable(bare_stack, "Metadata")
    t = Template.from_stack(bare_stack)
    table = resources(t, "AWS::DynamoDB::Table")[_lid(metadata.table)]
    assert table["DeletionPolicy"] == "Retain"
    props = table["Properties"]
    assert props["KeySchema"] == [{"AttributeName": TABLE_KEY, "KeyType": "HASH"}]
    assert props["BillingMode"] == "PAY_PER_REQUEST"
    assert props["SSESpecification"]["SSEType"] == "KMS"
    assert "KMSMasterKeyId" in props["SSESpecification"]
    assert props["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert props["TimeToLiveSpecification"] == {"AttributeName": TTL_ATTRIBUTE, "Enabled": True}
    assert props["DeletionProtectionEnabled"] is True
    indexes = {g["IndexName"]: g for g in props["GlobalSecondaryIndexes"]}
    assert set(indexes) == {g.name for g in GSIS}
    for gsi in GSIS:
        schema = indexes[gsi.name]["KeySchema"]
        assert schema[0] == {"AttributeName": gsi.partition_key, "KeyType": "HASH"}
        if gsi.sort_key:
            assert schema[1] == {"AttributeName": gsi.sort_key, "KeyType": "RANGE"}
        assert indexes[gsi.name]["Projection"] == {
            "ProjectionType": "INCLUDE",
            "NonKeyAttributes": list(gsi.include),
        }
    _assert_keys_rotate(t)


def test_ledger_shape_encryption_recovery_ttl_and_removal(bare_stack: cdk.Stack) -> None:
    metadata = MetadataTable(bare_stack, "Metadata")
    t = Template.from_stack(bare_stack)
    ledger = resources(t, "AWS::DynamoDB::Table")[_lid(metadata.ledger)]
    props = ledger["Properties"]
    assert props["KeySchema"] == [
        {"AttributeName": LEDGER_KEY[0], "KeyType": "HASH"},
        {"AttributeName": LEDGER_KEY[1], "KeyType": "RANGE"},
    ]
    assert props["AttributeDefinitions"] == [
        {"AttributeName": name, "AttributeType": "S"} for name in LEDGER_KEY
    ]
    assert props["BillingMode"] == "PAY_PER_REQUEST"
    # The metadata table's key, point-in-time recovery, TTL with the DLQ's messages
    assert props["SSESpecification"] == {
        "KMSMasterKeyId": {"Fn::GetAtt": [_lid(metadata.key), "Arn"]},
        "SSEEnabled": True,
        "SSEType": "KMS",
    }
    assert props["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert props["TimeToLiveSpecification"] == {"AttributeName": TTL_ATTRIBUTE, "Enabled": True}
    # Keys and codes only: deleted with the stack, and no fixed name
    assert ledger["DeletionPolicy"] == "Delete"
    assert "TableName" not in props and "GlobalSecondaryIndexes" not in props


def test_table_and_ledger_grants_are_exact(bare_stack: cdk.Stack) -> None:
    # Given the parse function's reads and the workflow's writes
    metadata = MetadataTable(bare_stack, "Metadata")
    parse = iam.Role(bare_stack, "Parse", assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"))
    flow = iam.Role(bare_stack, "Flow", assumed_by=iam.ServicePrincipal("states.amazonaws.com"))
    metadata.grant_stale_checks(parse)
    metadata.grant_ledger_checks(parse)
    metadata.grant_record_writes(flow)
    metadata.grant_ledger_writes(flow)
    t = Template.from_stack(bare_stack)
    by_role: dict[str, list[dict[str, Any]]] = {}
    for owner, st in policy_statements(t.to_json()):
        by_role.setdefault(owner, []).append(st)
    table = {"Fn::GetAtt": [_lid(metadata.table), "Arn"]}
    ledger = {"Fn::GetAtt": [_lid(metadata.ledger), "Arn"]}
    key = {"Fn::GetAtt": [_lid(metadata.key), "Arn"]}

    def grants(role: iam.Role) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {}
        for st in by_role[_lid(role)]:
            for action in as_list(st["Action"]):
                out.setdefault(action, []).extend(as_list(st["Resource"]))
        return {a: sorted(r, key=json.dumps) for a, r in out.items()}

    # Then: BatchGetItem on both tables (never an index) and decrypt, nothing else
    assert grants(parse) == {
        "dynamodb:BatchGetItem": sorted([table, ledger], key=json.dumps),
        "kms:Decrypt": [key],
    }
    # And PutItem on both tables with the key's encrypt/decrypt grant
    flow_grants = grants(flow)
    assert flow_grants.pop("dynamodb:PutItem") == sorted([table, ledger], key=json.dumps)
    assert set(flow_grants) == {
        "kms:Decrypt",
        "kms:Encrypt",
        "kms:GenerateDataKey*",
        "kms:ReEncrypt*",
    }
    assert all(resources == [key] for resources in flow_grants.values())


# ---------------------------------------------------------------- ingestion


class Wired(NamedTuple):
    ingestion: Ingestion
    table: MetadataTable
    template: Template


@pytest.fixture
def ingestion_template(bare_stack: cdk.Stack) -> Wired:
    """An ingestion construct, the table it writes to, and the template."""
    archive = LogArchive(bare_stack, "Logs")
    network = Network(bare_stack, "Net", log_archive=archive)
    table = MetadataTable(bare_stack, "Metadata")
    ingestion = Ingestion(
        bare_stack,
        "Ingestion",
        table=table.table,
        ledger=table.ledger,
        vpc=network.vpc,
        subnets=network.app_subnets,
        log_archive=archive,
    )
    return Wired(ingestion, table, Template.from_stack(bare_stack))


def _lid(construct: Any) -> str:
    stack = cdk.Stack.of(construct)
    return str(stack.resolve(construct.node.default_child.logical_id))


def test_queues_are_kms_encrypted_tls_only_and_redrive_to_the_dlq(
    ingestion_template: Wired,
) -> None:
    ingestion, _table, t = ingestion_template
    queues = resources(t, "AWS::SQS::Queue")
    queue = queues[_lid(ingestion.queue)]["Properties"]
    dlq = queues[_lid(ingestion.dlq)]["Properties"]
    for q in (queue, dlq):
        assert q["KmsMasterKeyId"] == {"Fn::GetAtt": [_lid(ingestion.queue_key), "Arn"]}
    assert queue["RedrivePolicy"] == {
        "deadLetterTargetArn": {"Fn::GetAtt": [_lid(ingestion.dlq), "Arn"]},
        "maxReceiveCount": MAX_RECEIVE_COUNT,
    }
    # A batch must stay invisible for longer than one execution can take.
    assert queue["VisibilityTimeout"] > Defaults.EXPRESS_MAX_SECONDS
    for policy in resources(t, "AWS::SQS::QueuePolicy").values():
        assert "aws:SecureTransport" in json.dumps(policy)


def test_pipe_batches_sqs_into_the_express_workflow_synchronously(
    ingestion_template: Wired,
) -> None:
    ingestion, _table, t = ingestion_template
    pipe = only(t, "AWS::Pipes::Pipe")
    assert pipe["Source"] == {"Fn::GetAtt": [_lid(ingestion.queue), "Arn"]}
    assert pipe["Target"] == {"Ref": _lid(ingestion.state_machine)}
    assert pipe["SourceParameters"]["SqsQueueParameters"] == {
        "BatchSize": PIPE_BATCH_SIZE,
        "MaximumBatchingWindowInSeconds": PIPE_BATCH_WINDOW_SECONDS,
    }
    assert pipe["TargetParameters"]["StepFunctionStateMachineParameters"] == {
        "InvocationType": "REQUEST_RESPONSE"
    }


def test_state_machine_is_the_asl_file_express_traced_and_logs_no_execution_data(
    ingestion_template: Wired,
) -> None:
    ingestion, table, t = ingestion_template
    sm = only(t, "AWS::StepFunctions::StateMachine")
    assert sm["StateMachineType"] == "EXPRESS"
    assert sm["DefinitionString"] == WORKFLOW_FILE.read_text(encoding="utf-8")
    subs = sm["DefinitionSubstitutions"]
    assert set(subs) == {
        "ParseFunctionArn",
        "TableName",
        "LedgerTableName",
        "DlqUrl",
        "MaxReceiveCount",
    }
    # the workflow's last-receive check and the queue's redrive agree
    assert subs["MaxReceiveCount"] == str(MAX_RECEIVE_COUNT)
    assert subs["ParseFunctionArn"] == {"Fn::GetAtt": [_lid(ingestion.function), "Arn"]}
    assert subs["TableName"] == {"Ref": _lid(table.table)}
    assert subs["LedgerTableName"] == {"Ref": _lid(table.ledger)}
    assert subs["DlqUrl"] == {"Ref": _lid(ingestion.dlq)}
    assert sm["TracingConfiguration"] == {"Enabled": True}
    logging = sm["LoggingConfiguration"]
    assert logging["Level"] == "ALL" and logging["IncludeExecutionData"] is False
    groups = resources(t, "AWS::Logs::LogGroup")
    (group_id,) = {
        d["CloudWatchLogsLogGroup"]["LogGroupArn"]["Fn::GetAtt"][0] for d in logging["Destinations"]
    }
    assert "KmsKeyId" in groups[group_id]["Properties"]
    # Under /aws/vendedlogs/ (one resource-policy entry for all), unique per stack instance
    name = groups[group_id]["Properties"]["LogGroupName"]["Fn::Join"][1]
    assert name[0] == "/aws/vendedlogs/states/Bare-ingest-"
    assert "AWS::StackId" in json.dumps(name[1:])


def test_parse_function_is_arm64_python_314_traced_in_the_vpc(
    ingestion_template: Wired,
) -> None:
    t = ingestion_template.template
    fns = [
        f["Properties"]
        for f in resources(t, "AWS::Lambda::Function").values()
        if f["Properties"].get("Handler") == PARSE_HANDLER
    ]
    (fn,) = fns
    assert fn["Architectures"] == ["arm64"]
    assert fn["Runtime"] == "python3.14"
    assert fn["TracingConfig"] == {"Mode": "Active"}
    assert fn["VpcConfig"]["SubnetIds"]
    # Always reserved: the bound on parse concurrency (docs/capacity.md); a deployment setting
    assert fn["ReservedConcurrentExecutions"] == Defaults.PARSE_RESERVED_CONCURRENCY
    env = fn["Environment"]["Variables"]
    assert set(env) == {
        "TABLE_NAME",
        "LEDGER_TABLE_NAME",
        "POWERTOOLS_SERVICE_NAME",
        "POWERTOOLS_METRICS_NAMESPACE",
        "POWERTOOLS_LOG_LEVEL",
    }
    assert env["POWERTOOLS_METRICS_NAMESPACE"] == "DicomPipeline"
    assert env["LEDGER_TABLE_NAME"] == {"Ref": _lid(ingestion_template.table.ledger)}


def test_parse_function_reserved_concurrency_is_a_setting(bare_stack: cdk.Stack) -> None:
    archive = LogArchive(bare_stack, "Logs")
    network = Network(bare_stack, "Net", log_archive=archive)
    table = MetadataTable(bare_stack, "Metadata")
    Ingestion(
        bare_stack,
        "Ingestion",
        table=table.table,
        ledger=table.ledger,
        vpc=network.vpc,
        subnets=network.app_subnets,
        log_archive=archive,
        reserved_concurrency=5,
    )
    t = Template.from_stack(bare_stack)
    t.has_resource_properties(
        "AWS::Lambda::Function", {"Handler": PARSE_HANDLER, "ReservedConcurrentExecutions": 5}
    )


def test_pipe_and_workflow_roles_are_scoped_to_their_resources(
    ingestion_template: Wired,
) -> None:
    ingestion, _table, t = ingestion_template
    by_role: dict[str, list[dict[str, Any]]] = {}
    for owner, st in policy_statements(t.to_json()):
        by_role.setdefault(owner, []).append(st)
    pipe = by_role[_lid(ingestion.pipe_role)]
    assert {json.dumps(st["Resource"]) for st in pipe} == {
        json.dumps({"Fn::GetAtt": [_lid(ingestion.queue), "Arn"]}),
        json.dumps({"Fn::GetAtt": [_lid(ingestion.queue_key), "Arn"]}),
        json.dumps({"Ref": _lid(ingestion.state_machine)}),
    }
    assert {a for st in pipe for a in as_list(st["Action"])} >= {
        "sqs:ReceiveMessage",
        "sqs:DeleteMessage",
        "states:StartSyncExecution",
    }
    role = ingestion.state_machine.role.node.default_child  # type: ignore[union-attr]
    workflow = by_role[cdk.Stack.of(ingestion).resolve(role.logical_id)]  # type: ignore[union-attr]
    scoped = [st for st in workflow if st["Resource"] != "*"]
    actions = {a for st in scoped for a in as_list(st["Action"])}
    assert actions >= {"lambda:InvokeFunction", "sqs:SendMessage", "kms:GenerateDataKey"}
    invoke = next(st for st in scoped if "lambda:InvokeFunction" in as_list(st["Action"]))
    assert all(_lid(ingestion.function) in json.dumps(r) for r in as_list(invoke["Resource"]))
    send = next(st for st in scoped if st["Action"] == "sqs:SendMessage")
    assert send["Resource"] == {"Fn::GetAtt": [_lid(ingestion.dlq), "Arn"]}
    # The only unscoped actions are log delivery and X-Ray, which have no resource ARNs.
    unscoped = {a for st in workflow if st["Resource"] == "*" for a in as_list(st["Action"])}
    assert all(a.startswith(("logs:", "xray:")) for a in unscoped), unscoped


# ---------------------------------------------------------------- database


def _database(stack: cdk.Stack, **kwargs: Any) -> IndexDatabase:
    archive = LogArchive(stack, "Logs")
    network = Network(stack, "Net", log_archive=archive)
    return IndexDatabase(
        stack,
        "Db",
        vpc=network.vpc,
        subnets=network.data_subnets,
        rotation_subnets=network.app_subnets,
        secrets_manager_endpoint=network.secrets_manager_endpoint,
        log_archive=archive,
        identifier_prefix="test-index",
        **kwargs,
    )


def test_database_is_private_encrypted_tls_only_backed_up_and_rotated(
    bare_stack: cdk.Stack,
) -> None:
    _database(bare_stack, multi_az=True)
    t = Template.from_stack(bare_stack)
    db = only(t, "AWS::RDS::DBInstance")
    assert db["StorageEncrypted"] is True and "KmsKeyId" in db
    assert db["PubliclyAccessible"] is False
    assert db["MultiAZ"] is True
    assert db["BackupRetentionPeriod"] >= 7
    assert db["DeletionProtection"] is True
    assert db["Engine"] == "postgres"
    assert "{{resolve:secretsmanager:" in json.dumps(db["MasterUserPassword"])
    params = only(t, "AWS::RDS::DBParameterGroup")["Parameters"]
    assert params == {"rds.force_ssl": "1"}
    t.resource_count_is("AWS::SecretsManager::RotationSchedule", 1)
    assert "KmsKeyId" in only(t, "AWS::SecretsManager::Secret")
    for group in resources(t, "AWS::Logs::LogGroup").values():
        assert "KmsKeyId" in group["Properties"]
    assert db["CACertificateIdentifier"] == "rds-ca-rsa2048-g1"


def test_database_identifier_and_its_log_groups_are_unique_per_stack_instance(
    bare_stack: cdk.Stack,
) -> None:
    # Given a database whose identifier starts with a prefix
    database = _database(bare_stack)
    t = Template.from_stack(bare_stack)
    # Then the identifier is the prefix plus a part of the stack's ID (new for every stack)
    identifier = only(t, "AWS::RDS::DBInstance")["DBInstanceIdentifier"]
    assert identifier == bare_stack.resolve(database.instance_identifier)
    head, *tail = identifier["Fn::Join"][1]
    assert head == "test-index-" and "AWS::StackId" in json.dumps(tail)
    # And the log groups RDS writes to are named after that same identifier
    names = sorted(
        json.dumps(g["Properties"]["LogGroupName"])
        for g in resources(t, "AWS::Logs::LogGroup").values()
        if "/aws/rds/instance/" in json.dumps(g["Properties"].get("LogGroupName"))
    )
    expected = sorted(
        json.dumps(bare_stack.resolve(f"/aws/rds/instance/{database.instance_identifier}/{e}"))
        for e in IndexDatabase.LOG_EXPORTS
    )
    assert names == expected
    # And the schedule (which rotates once when created) is exposed for ordering
    assert database.rotation_schedule.node.default_child is not None


def test_database_refuses_short_backups(bare_stack: cdk.Stack) -> None:
    with pytest.raises(ValueError, match="at least 7 days"):
        _database(bare_stack, backup_days=3)


# ---------------------------------------------------------------- monitoring


def test_monitoring_alarms_go_to_an_encrypted_topic(bare_stack: cdk.Stack) -> None:
    orthanc, network, archive = orthanc_service(bare_stack)
    door = FrontDoor(
        bare_stack,
        "Door",
        vpc=network.vpc,
        subnets=network.public_subnets,
        certificate=CertificateConfig(),
        client_cidrs=DEV_CIDRS,
        access_logs=archive.access_logs,
        target=orthanc.service,
    )
    table = MetadataTable(bare_stack, "Metadata")
    ingestion = Ingestion(
        bare_stack,
        "Ingestion",
        table=table.table,
        ledger=table.ledger,
        vpc=network.vpc,
        subnets=network.app_subnets,
        log_archive=archive,
    )
    db = bare_stack.node.find_child("Db")
    assert isinstance(db, IndexDatabase)
    redeploy = RotationRedeploy(
        bare_stack, "Redeploy", secret=db.secret, service=orthanc.service, log_archive=archive
    )
    Monitoring(
        bare_stack,
        "Monitoring",
        dashboard_name="test",
        queue=ingestion.queue,
        dlq=ingestion.dlq,
        state_machine=ingestion.state_machine,
        function=ingestion.function,
        target_group=door.target_group,
        database=db.instance,
        redeploy=redeploy.state_machine,
        alarm_email="ops@example.org",
    )
    t = Template.from_stack(bare_stack)
    topic = only(t, "AWS::SNS::Topic")
    assert "KmsMasterKeyId" in topic
    alarms = [a["Properties"] for a in resources(t, "AWS::CloudWatch::Alarm").values()]
    metrics = {a.get("MetricName") for a in alarms}
    assert metrics >= {
        "ApproximateNumberOfMessagesVisible",  # DLQ depth
        "ApproximateAgeOfOldestMessage",  # queue age
        "ExecutionsFailed",
        "ExecutionThrottled",
        "Errors",  # Lambda
    }
    # The redeploy after a password rotation alarms when it fails
    (redeploy_alarm,) = [
        a
        for a in alarms
        if a.get("MetricName") == "ExecutionsFailed"
        and a["Dimensions"][0]["Value"] == {"Ref": _lid(redeploy.state_machine)}
    ]
    assert "README.md#operations" in redeploy_alarm["AlarmDescription"]
    assert all(a["AlarmActions"] for a in alarms)
    dashboard = json.dumps(only(t, "AWS::CloudWatch::Dashboard"))
    assert "Records_indexed" in dashboard and "Records_failed" in dashboard
    t.has_resource_properties("AWS::SNS::Subscription", {"Protocol": "email"})
    assert isinstance(network.vpc, ec2.Vpc)


# ---------------------------------------------------------------- rotation redeploy


def test_rotation_of_the_database_secret_redeploys_the_orthanc_service(
    bare_stack: cdk.Stack,
) -> None:
    # Given the redeploy wired to the database secret and the Orthanc service
    orthanc, _network, archive = orthanc_service(bare_stack)
    db = bare_stack.node.find_child("Db")
    assert isinstance(db, IndexDatabase)
    redeploy = RotationRedeploy(
        bare_stack, "Redeploy", secret=db.secret, service=orthanc.service, log_archive=archive
    )
    t = Template.from_stack(bare_stack)
    secret_arn = bare_stack.resolve(db.secret.secret_arn)
    # Then the rule matches only a finished rotation of that one secret
    rule = only(t, "AWS::Events::Rule")
    assert rule["EventPattern"] == {
        "source": ["aws.secretsmanager"],
        "detail-type": ["AWS Service Event via CloudTrail"],
        "detail": {
            "eventSource": ["secretsmanager.amazonaws.com"],
            "eventName": ["RotationSucceeded"],
            "additionalEventData": {"SecretId": [secret_arn]},
        },
    }
    # And its one target is the redeploy workflow, started through a role of this account
    (target,) = rule["Targets"]
    assert target["Arn"] == {"Ref": _lid(redeploy.state_machine)}
    assert target["RoleArn"] == {"Fn::GetAtt": [_lid(redeploy.events_role), "Arn"]}
    by_role: dict[str, list[dict[str, Any]]] = {}
    for owner, st in policy_statements(t.to_json()):
        by_role.setdefault(owner, []).append(st)
    assert by_role[_lid(redeploy.events_role)] == [
        {
            "Action": "states:StartExecution",
            "Effect": "Allow",
            "Resource": {"Ref": _lid(redeploy.state_machine)},
        }
    ]
    trust = resources(t, "AWS::IAM::Role")[_lid(redeploy.events_role)]["Properties"]
    assert "aws:SourceAccount" in json.dumps(trust["AssumeRolePolicyDocument"])
    # And the workflow may update that one service and nothing else (log delivery and X-Ray
    # have no resource ARNs)
    role = redeploy.state_machine.role.node.default_child  # type: ignore[union-attr]
    statements = by_role[bare_stack.resolve(role.logical_id)]  # type: ignore[union-attr]
    scoped = [st for st in statements if st["Resource"] != "*"]
    assert scoped == [
        {
            "Action": "ecs:UpdateService",
            "Effect": "Allow",
            "Resource": {"Ref": _lid(orthanc.service)},
        }
    ]
    unscoped = {a for st in statements if st["Resource"] == "*" for a in as_list(st["Action"])}
    assert all(a.startswith(("logs:", "xray:")) for a in unscoped), unscoped
    # And it forces a new deployment of that service, logged and traced
    machines = resources(t, "AWS::StepFunctions::StateMachine")
    sm = machines[_lid(redeploy.state_machine)]["Properties"]
    definition = json.dumps(sm["DefinitionString"])
    assert ":states:::aws-sdk:ecs:updateService" in definition
    assert '\\"ForceNewDeployment\\":true' in definition
    assert _lid(orthanc.service) in definition and _lid(orthanc.cluster) in definition
    assert sm.get("StateMachineType", "STANDARD") == "STANDARD"
    assert sm["TracingConfiguration"] == {"Enabled": True}
    assert sm["LoggingConfiguration"]["Level"] == "ALL"
