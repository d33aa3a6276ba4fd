"""Operations at scale: the image bucket's inventory, SQL over the export (Glue, Athena) and
the reindex Distributed Map, each construct alone in a bare stack and in the app."""

from __future__ import annotations

import json
from typing import Any

import aws_cdk as cdk
from aws_cdk import aws_iam as iam
from aws_cdk.assertions import Template
from infra_support import as_list, only, policy_statements, refs, resources

from cdk.components.analytics import Analytics
from cdk.components.image_store import ImageStore
from cdk.components.inventory import Inventory
from cdk.components.log_archive import LogArchive
from cdk.components.reindex_map import map_states
from cdk.constants import Analytics as AnalyticsDefaults
from cdk.constants import Inventory as InventoryDefaults
from cdk.constants import Reindex as ReindexDefaults
from cdk.stack import DicomPipelineStack
from pipeline.names import (
    EXPORT_EMPTY_PREFIX,
    EXPORT_PREFIX,
    INVENTORY_PREFIX,
    ORTHANC_PREFIX,
    REINDEX_HANDLER,
    REINDEX_RESULTS_PREFIX,
    REINDEX_WORKFLOW_FILE,
)


def _lid(stack: cdk.Stack, construct: Any) -> str:
    element = construct if isinstance(construct, cdk.CfnElement) else construct.node.default_child
    return str(stack.resolve(stack.get_logical_id(element)))


def _inventory(stack: cdk.Stack) -> tuple[Inventory, ImageStore]:
    archive = LogArchive(stack, "Logs")
    store = ImageStore(stack, "Store", access_logs=archive.access_logs)
    return Inventory(
        stack, "Inventory", source=store.bucket, access_logs=archive.access_logs
    ), store


def _assert_private_kms_bucket(bucket: dict[str, Any], key_id: str) -> None:
    props = bucket["Properties"]
    (rule,) = props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] == "aws:kms"
    assert key_id in refs(rule["ServerSideEncryptionByDefault"]["KMSMasterKeyID"])
    assert rule["BucketKeyEnabled"] is True
    assert props["VersioningConfiguration"] == {"Status": "Enabled"}
    assert all(props["PublicAccessBlockConfiguration"].values())
    assert props["OwnershipControls"]["Rules"] == [{"ObjectOwnership": "BucketOwnerEnforced"}]
    assert "DestinationBucketName" in props["LoggingConfiguration"]
    assert bucket["DeletionPolicy"] == "Retain"


def _bucket_policy(template: Template, bucket_id: str) -> list[dict[str, Any]]:
    (policy,) = [
        p["Properties"]["PolicyDocument"]["Statement"]
        for p in resources(template, "AWS::S3::BucketPolicy").values()
        if p["Properties"]["Bucket"] == {"Ref": bucket_id}
    ]
    statements: list[dict[str, Any]] = policy
    return statements


def _assert_tls_only(statements: list[dict[str, Any]]) -> None:
    denies = [s for s in statements if s["Effect"] == "Deny"]
    assert {json.dumps(s["Condition"], sort_keys=True) for s in denies} >= {
        json.dumps({"Bool": {"aws:SecureTransport": "false"}}),
        json.dumps({"NumericLessThan": {"s3:TlsVersion": 1.2}}),
    }


# ---------------------------------------------------------------- inventory


def test_inventory_is_daily_csv_of_current_versions_into_its_prefix(
    bare_stack: cdk.Stack,
) -> None:
    inventory, store = _inventory(bare_stack)
    t = Template.from_stack(bare_stack)
    image = resources(t, "AWS::S3::Bucket")[_lid(bare_stack, store.bucket)]["Properties"]
    (config,) = image["InventoryConfigurations"]
    assert config["Enabled"] is True
    assert config["Id"] == InventoryDefaults.ID
    assert config["ScheduleFrequency"] == "Daily"
    assert config["IncludedObjectVersions"] == "Current"
    # CSV, as pipeline/ops/audit/bucket.py reads it (its manifest names the CSV schema)
    assert config["Destination"]["Format"] == "CSV"
    assert set(config["OptionalFields"]) == {"Size", "LastModifiedDate", "ETag"}
    # S3 adds the "/" after the prefix: "inventory/<bucket>/<id>/<date>/manifest.json"
    assert config["Destination"]["Prefix"] == INVENTORY_PREFIX.rstrip("/")
    assert refs(config["Destination"]["BucketArn"]) == {_lid(bare_stack, inventory.bucket)}
    assert bare_stack.resolve(inventory.prefix).get("Fn::Join") is not None
    assert INVENTORY_PREFIX in json.dumps(bare_stack.resolve(inventory.prefix_uri))


def test_inventory_bucket_is_kms_encrypted_private_tls_only_and_expires_reports(
    bare_stack: cdk.Stack,
) -> None:
    inventory, _ = _inventory(bare_stack)
    t = Template.from_stack(bare_stack)
    key_id = _lid(bare_stack, inventory.key)
    bucket_id = _lid(bare_stack, inventory.bucket)
    bucket = resources(t, "AWS::S3::Bucket")[bucket_id]
    _assert_private_kms_bucket(bucket, key_id)
    rules = {r["Prefix"]: r for r in bucket["Properties"]["LifecycleConfiguration"]["Rules"]}
    assert set(rules) == {INVENTORY_PREFIX, REINDEX_RESULTS_PREFIX}
    assert all(r["ExpirationInDays"] == InventoryDefaults.REPORT_DAYS for r in rules.values())
    assert resources(t, "AWS::KMS::Key")[key_id]["Properties"]["EnableKeyRotation"] is True
    statements = _bucket_policy(t, bucket_id)
    _assert_tls_only(statements)


def test_only_s3_may_put_inventory_reports_of_the_image_bucket(bare_stack: cdk.Stack) -> None:
    inventory, store = _inventory(bare_stack)
    t = Template.from_stack(bare_stack)
    statements = _bucket_policy(t, _lid(bare_stack, inventory.bucket))
    (allow,) = [s for s in statements if s["Effect"] == "Allow"]
    assert allow["Principal"] == {"Service": "s3.amazonaws.com"}
    assert allow["Action"] == "s3:PutObject"
    assert refs(allow["Condition"]["ArnLike"]["aws:SourceArn"]) == {_lid(bare_stack, store.bucket)}
    objects = [r for r in as_list(allow["Resource"]) if "Fn::Join" in r]
    assert all(json.dumps(r).endswith(f'"/{INVENTORY_PREFIX.rstrip("/")}*"]]}}') for r in objects)
    # The key: S3 may generate data keys for this account's reports, nothing else
    key = resources(t, "AWS::KMS::Key")[_lid(bare_stack, inventory.key)]["Properties"]
    (s3_statement,) = [
        s
        for s in key["KeyPolicy"]["Statement"]
        if s.get("Principal") == {"Service": "s3.amazonaws.com"}
    ]
    assert s3_statement["Action"] == "kms:GenerateDataKey"
    assert s3_statement["Condition"] == {
        "StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}
    }


def test_inventory_grants_are_exact(bare_stack: cdk.Stack) -> None:
    inventory, _ = _inventory(bare_stack)
    role = iam.Role(bare_stack, "Role", assumed_by=iam.ServicePrincipal("states.amazonaws.com"))
    inventory.grant_manifest_reads(role)
    inventory.grant_result_writes(role)
    t = Template.from_stack(bare_stack)
    statements = {
        tuple(sorted(as_list(st["Action"]))): st for _, st in policy_statements(t.to_json())
    }
    reads = statements[("s3:GetObject",)]
    assert json.dumps(reads["Resource"]).endswith(f'"/{INVENTORY_PREFIX}*"]]}}')
    writes = statements[
        ("s3:AbortMultipartUpload", "s3:GetObject", "s3:ListMultipartUploadParts", "s3:PutObject")
    ]
    assert json.dumps(writes["Resource"]).endswith(f'"/{REINDEX_RESULTS_PREFIX}*"]]}}')
    key_id = _lid(bare_stack, inventory.key)
    kms = [st for key, st in statements.items() if key[0].startswith("kms:")]
    assert kms and all(refs(st["Resource"]) == {key_id} for st in kms)
    assert {a for st in kms for a in as_list(st["Action"])} == {
        "kms:Decrypt",
        "kms:GenerateDataKey",
    }


# ---------------------------------------------------------------- Glue and Athena


def _analytics(stack: cdk.Stack) -> Analytics:
    archive = LogArchive(stack, "Logs")
    return Analytics(stack, "Analytics", environment="test-1", access_logs=archive.access_logs)


def test_glue_table_is_parquet_over_the_export_prefix_with_the_export_types(
    bare_stack: cdk.Stack,
) -> None:
    analytics = _analytics(bare_stack)
    t = Template.from_stack(bare_stack)
    database = only(t, "AWS::Glue::Database")["DatabaseInput"]
    assert database["Name"] == "dicom_pipeline_test_1"
    table = only(t, "AWS::Glue::Table")
    assert table["DatabaseName"] == "dicom_pipeline_test_1"
    tin = table["TableInput"]
    assert tin["Name"] == AnalyticsDefaults.TABLE == "records"
    assert tin["TableType"] == "EXTERNAL_TABLE"
    sd = tin["StorageDescriptor"]
    assert sd["SerdeInfo"]["SerializationLibrary"].endswith("ParquetHiveSerDe")
    assert sd["InputFormat"].endswith("MapredParquetInputFormat")
    location = json.dumps(sd["Location"])
    assert location.startswith('{"Fn::Join": ["", ["s3://", {"Ref": ')
    # An empty folder until the first export switches it (never the base: Athena would read
    # every run below it)
    assert location.endswith(f'"/{EXPORT_EMPTY_PREFIX}"]]}}')
    assert EXPORT_EMPTY_PREFIX.startswith(EXPORT_PREFIX) and "run=" not in EXPORT_EMPTY_PREFIX
    assert refs(sd["Location"]) == {_lid(bare_stack, analytics.exports)}
    columns = {c["Name"]: c["Type"] for c in sd["Columns"]}
    assert {
        "s3_key": "string",
        "status": "string",
        "bucket": "string",
        "etag": "string",
        "size": "bigint",
        "indexed_at": "timestamp",
        "event_time": "timestamp",
        "parser_version": "string",
        "orthanc_instance_id": "string",
        "studyinstanceuid": "string",
        "seriesinstanceuid": "string",
        "sopinstanceuid": "string",
        "sopclassuid": "string",
        "modality": "string",
        "studydate": "string",
        "manufacturer": "string",
        "patientid": "string",
    }.items() <= columns.items()
    assert "dicom_json_gz" not in columns


def test_athena_workgroup_enforces_kms_encrypted_results_in_their_own_bucket(
    bare_stack: cdk.Stack,
) -> None:
    analytics = _analytics(bare_stack)
    t = Template.from_stack(bare_stack)
    wg = only(t, "AWS::Athena::WorkGroup")
    assert wg["Name"] == "Bare-analytics"
    conf = wg["WorkGroupConfiguration"]
    assert conf["EnforceWorkGroupConfiguration"] is True
    assert conf["BytesScannedCutoffPerQuery"] == AnalyticsDefaults.BYTES_SCANNED_CUTOFF
    result = conf["ResultConfiguration"]
    assert result["EncryptionConfiguration"]["EncryptionOption"] == "SSE_KMS"
    key_id = _lid(bare_stack, analytics.key)
    assert refs(result["EncryptionConfiguration"]["KmsKey"]) == {key_id}
    assert refs(result["OutputLocation"]) == {_lid(bare_stack, analytics.results)}
    assert result["ExpectedBucketOwner"] == {"Ref": "AWS::AccountId"}
    # Both buckets: SSE-KMS with the analytics key, private, TLS only, logged, retained
    buckets = resources(t, "AWS::S3::Bucket")
    for bucket in (analytics.exports, analytics.results):
        bucket_id = _lid(bare_stack, bucket)
        _assert_private_kms_bucket(buckets[bucket_id], key_id)
        _assert_tls_only(_bucket_policy(t, bucket_id))
    (rule,) = buckets[_lid(bare_stack, analytics.results)]["Properties"]["LifecycleConfiguration"][
        "Rules"
    ]
    assert rule["ExpirationInDays"] == AnalyticsDefaults.RESULT_DAYS


# ---------------------------------------------------------------- in the app


def test_stack_outputs_name_the_operations_resources(
    stack: DicomPipelineStack, template_json: dict[str, Any]
) -> None:
    outputs = template_json["Outputs"]
    for name in (
        "InventoryBucket",
        "InventoryPrefix",
        "ExportPrefix",
        "AthenaWorkgroup",
        "GlueDatabase",
        "LedgerTable",
    ):
        assert name in outputs, name
    assert refs(outputs["InventoryBucket"]["Value"]) == {_lid(stack, stack.inventory.bucket)}
    prefix = json.dumps(outputs["InventoryPrefix"]["Value"])
    assert refs(outputs["InventoryPrefix"]["Value"]) == {
        _lid(stack, stack.inventory.bucket),
        _lid(stack, stack.image_store.bucket),
    }
    assert f'"/{INVENTORY_PREFIX}"' in prefix and f'"/{InventoryDefaults.ID}/"' in prefix
    assert refs(outputs["ExportPrefix"]["Value"]) == {_lid(stack, stack.analytics.exports)}
    assert outputs["AthenaWorkgroup"]["Value"] == f"{stack.stack_name}-analytics"
    assert refs(outputs["LedgerTable"]["Value"]) == {_lid(stack, stack.metadata_table.ledger)}


# ---------------------------------------------------------------- the reindex Distributed Map


def _definition() -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(REINDEX_WORKFLOW_FILE.read_text(encoding="utf-8"))
    return parsed


def test_reindex_definition_is_a_distributed_map_over_listing_or_inventory() -> None:
    definition = _definition()
    maps = map_states(definition)
    assert set(maps) == {"FromListing", "FromInventory"}
    (choice,) = definition["States"]["Source"]["Choices"]
    assert choice == {"Variable": "$.manifest_key", "IsPresent": True, "Next": "FromInventory"}
    assert definition["States"]["Source"]["Default"] == "FromListing"
    listing, inventory = maps["FromListing"], maps["FromInventory"]
    assert listing["ItemReader"]["Resource"] == "arn:aws:states:::s3:listObjectsV2"
    assert listing["ItemReader"]["Parameters"] == {
        "Bucket": "${ImageBucket}",
        "Prefix.$": "$.prefix",
    }
    assert inventory["ItemReader"] == {
        "Resource": "arn:aws:states:::s3:getObject",
        "ReaderConfig": {"InputType": "MANIFEST"},
        "Parameters": {"Bucket": "${InventoryBucket}", "Key.$": "$.manifest_key"},
    }
    for state, encoded in ((listing, False), (inventory, True)):
        assert state["ItemProcessor"]["ProcessorConfig"] == {
            "Mode": "DISTRIBUTED",
            "ExecutionType": "EXPRESS",
        }
        assert state["ItemBatcher"]["MaxItemsPerBatch"] == ReindexDefaults.ITEMS_PER_BATCH
        assert state["ItemBatcher"]["BatchInput"]["url_encoded"] is encoded
        assert state["MaxConcurrency"] == ReindexDefaults.MAX_CONCURRENCY
        assert state["ToleratedFailurePercentage"] == ReindexDefaults.TOLERATED_FAILURE_PERCENT
        assert state["ResultWriter"] == {
            "Resource": "arn:aws:states:::s3:putObject",
            "Parameters": {"Bucket": "${ResultBucket}", "Prefix": "${ResultPrefix}"},
        }
        (task,) = state["ItemProcessor"]["States"].values()
        assert task["Resource"] == "arn:aws:states:::lambda:invoke"
        assert task["Parameters"]["FunctionName"] == "${ReindexFunctionArn}"
        assert task["Parameters"]["Payload"]["keys.$"] == "$.Items[*].key"
        assert task["Retry"] and task["End"] is True
        assert task["TimeoutSeconds"] == ReindexDefaults.TASK_TIMEOUT_SECONDS
        assert "ReindexQueueBusy" in task["Retry"][0]["ErrorEquals"]


def test_reindex_state_machine_is_standard_and_deploys_the_asl_file(
    stack: DicomPipelineStack, template_json: dict[str, Any]
) -> None:
    sm = template_json["Resources"][_lid(stack, stack.reindex.state_machine)]["Properties"]
    assert sm["StateMachineType"] == "STANDARD"
    assert sm["StateMachineName"] == f"{stack.stack_name}-reindex"
    assert sm["DefinitionString"] == REINDEX_WORKFLOW_FILE.read_text(encoding="utf-8")
    subs = sm["DefinitionSubstitutions"]
    assert set(subs) == {
        "ImageBucket",
        "InventoryBucket",
        "ResultBucket",
        "ResultPrefix",
        "OrthancPrefix",
        "ReindexFunctionArn",
    }
    # With no prefix given, a run lists Orthanc's prefix only
    assert subs["OrthancPrefix"] == ORTHANC_PREFIX
    assert refs(subs["ImageBucket"]) == {_lid(stack, stack.image_store.bucket)}
    assert (
        refs(subs["InventoryBucket"])
        == refs(subs["ResultBucket"])
        == {_lid(stack, stack.inventory.bucket)}
    )
    assert subs["ResultPrefix"] == REINDEX_RESULTS_PREFIX
    assert refs(subs["ReindexFunctionArn"]) == {_lid(stack, stack.reindex.function)}
    assert sm["TracingConfiguration"] == {"Enabled": True}
    assert sm["LoggingConfiguration"]["Level"] == "ALL"
    assert sm["LoggingConfiguration"]["IncludeExecutionData"] is False
    output = template_json["Outputs"]["ReindexStateMachineArn"]["Value"]
    assert refs(output) == {_lid(stack, stack.reindex.state_machine)}


def _role_statements(
    stack: DicomPipelineStack, template_json: dict[str, Any], role: iam.IRole
) -> list[dict[str, Any]]:
    role_id = _lid(stack, role)
    return [st for owners, st in policy_statements(template_json) if role_id in owners.split(",")]


def test_reindex_map_role_is_least_privilege(
    stack: DicomPipelineStack, template_json: dict[str, Any]
) -> None:
    role = stack.reindex.state_machine.role
    granted = {
        (tuple(sorted(as_list(st["Action"]))), json.dumps(st["Resource"], sort_keys=True))
        for st in _role_statements(stack, template_json, role)
        if not any(a.startswith(("logs:", "xray:")) for a in as_list(st["Action"]))
    }
    bucket = _lid(stack, stack.image_store.bucket)
    reports = _lid(stack, stack.inventory.bucket)
    by_action = {actions: resource for actions, resource in granted}
    assert by_action[("s3:ListBucket",)] == json.dumps({"Fn::GetAtt": [bucket, "Arn"]})
    assert by_action[("s3:GetObject",)].endswith(f'"/{INVENTORY_PREFIX}*"]]}}')
    assert reports in by_action[("s3:GetObject",)]
    writes = by_action[
        ("s3:AbortMultipartUpload", "s3:GetObject", "s3:ListMultipartUploadParts", "s3:PutObject")
    ]
    assert writes.endswith(f'"/{REINDEX_RESULTS_PREFIX}*"]]}}') and reports in writes
    invoke = by_action[("lambda:InvokeFunction",)]
    assert refs(json.loads(invoke)) == {_lid(stack, stack.reindex.function)}
    start = by_action[("states:StartExecution",)]
    assert f":stateMachine:{stack.stack_name}-reindex" in start and "*" not in start
    children = by_action[("states:DescribeExecution", "states:StopExecution")]
    assert f":execution:{stack.stack_name}-reindex/*" in children
    kms = {actions for actions, _ in granted if actions[0].startswith("kms:")}
    assert kms <= {("kms:Decrypt",), ("kms:Decrypt", "kms:GenerateDataKey")}
    # Nothing else: no table, queue or other bucket access for the Map itself
    allowed = {
        ("s3:ListBucket",),
        ("s3:GetObject",),
        ("s3:AbortMultipartUpload", "s3:GetObject", "s3:ListMultipartUploadParts", "s3:PutObject"),
        ("lambda:InvokeFunction",),
        ("states:StartExecution",),
        ("states:DescribeExecution", "states:StopExecution"),
    } | kms
    assert {actions for actions, _ in granted} <= allowed


def test_reindex_function_reads_records_and_sends_to_the_ingest_queue_only(
    stack: DicomPipelineStack, template_json: dict[str, Any]
) -> None:
    fn = template_json["Resources"][_lid(stack, stack.reindex.function)]["Properties"]
    assert fn["Handler"] == REINDEX_HANDLER
    assert fn["Architectures"] == ["arm64"]
    assert fn["TracingConfig"] == {"Mode": "Active"}
    assert "VpcConfig" in fn
    env = fn["Environment"]["Variables"]
    assert refs(env["BUCKET_NAME"]) == {_lid(stack, stack.image_store.bucket)}
    assert refs(env["TABLE_NAME"]) == {_lid(stack, stack.metadata_table.table)}
    assert refs(env["QUEUE_URL"]) == {_lid(stack, stack.ingestion.queue)}
    # It leaves out keys whose latest event already failed: the DLQ ledger, queried only
    assert refs(env["LEDGER_TABLE_NAME"]) == {_lid(stack, stack.metadata_table.ledger)}
    # It paces itself by the queue's depth (docs/capacity.md): the default threshold
    assert env["MAX_QUEUE_DEPTH"] == str(stack.config.reindex_queue_depth) == "2000"
    assert fn["Timeout"] == ReindexDefaults.FUNCTION_TIMEOUT_SECONDS
    role = stack.reindex.function.role
    assert role is not None
    statements = [
        st
        for st in _role_statements(stack, template_json, role)
        if not any(a.startswith("xray:") for a in as_list(st["Action"]))
    ]
    by_action = {tuple(sorted(as_list(st["Action"]))): st["Resource"] for st in statements}
    assert refs(by_action[("dynamodb:BatchGetItem",)]) == {_lid(stack, stack.metadata_table.table)}
    assert refs(by_action[("dynamodb:Query",)]) == {_lid(stack, stack.metadata_table.ledger)}
    # Send, and read the depth to pace the sends (CDK merges the two on the one queue)
    queue_actions = ("sqs:GetQueueAttributes", "sqs:SendMessage")
    assert refs(by_action[queue_actions]) == {_lid(stack, stack.ingestion.queue)}
    assert refs(by_action[("kms:Decrypt", "kms:GenerateDataKey")]) == {
        _lid(stack, stack.ingestion.queue_key)
    }
    assert refs(by_action[("kms:Decrypt",)]) == {_lid(stack, stack.metadata_table.key)}
    assert set(by_action) == {
        ("dynamodb:BatchGetItem",),
        ("dynamodb:Query",),
        queue_actions,
        ("kms:Decrypt", "kms:GenerateDataKey"),
        ("kms:Decrypt",),
    }


def test_alarms_point_to_the_notebooks_and_commands(template_json: dict[str, Any]) -> None:
    texts = [
        r["Properties"]["AlarmDescription"]
        for r in template_json["Resources"].values()
        if r["Type"] == "AWS::CloudWatch::Alarm"
    ]
    text = "\n".join(texts)
    for needed in (
        "notebooks/dlq_redrive.ipynb",
        "notebooks/ingestion_audit.ipynb",
        "`dicom-pipeline dlq list",
        "`dicom-pipeline dlq redrive",
        "`dicom-pipeline audit`",
        "docs/operations.md#reindex-at-scale",
    ):
        assert needed in text, needed
