"""The whole app: cdk-nag clean, least privilege, no plaintext secret, outputs, no lookups."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

import aws_cdk as cdk
import pytest
from aws_cdk.assertions import Template
from cdk_nag import AwsSolutionsChecks, HIPAASecurityChecks
from infra_support import as_list, fast_app, policy_statements, refs, stack_of

from cdk.constants import REPO_ROOT, Ingestion, Waf
from cdk.nag import ACKS, rule_ids
from cdk.rds_ca import region_root
from cdk.stack import OUTPUTS, DicomPipelineStack
from pipeline.cli import build_parser
from pipeline.names import DICOM_SUFFIX, SIDECAR_PREFIX, STAGING_PREFIX, WORKFLOW_FILE

PACKS = [AwsSolutionsChecks, HIPAASecurityChecks]
#: A deployment that differs from the default on every switch the acknowledgments know.
PRODUCTION = {
    "environment": "prod",
    "certificate_arn": "arn:aws:acm:eu-central-1:123456789012:certificate/abc",
    "domain_name": "pacs.example.org",
    "client_cidrs": "203.0.113.0/24,198.51.100.7/32",
    "waf_rate_limit": "1200",
    "ecr_cache_prefix": "pacs-docker-hub",
    "dockerhub_secret_arn": (
        "arn:aws:secretsmanager:eu-central-1:123456789012:secret:ecr-pullthroughcache/docker-hub-AbCdEf"
    ),
    "multi_az": "false",
    "parse_reserved_concurrency": "20",
    "alarm_email": "ops@example.org",
}


def _findings(app: cdk.App, pack: type) -> dict[str, list[str]]:
    report = pack().validate_scope(app)
    return {
        v.rule_name: [r.construct_path for r in v.violating_resources] for v in report.violations
    }


@pytest.mark.parametrize("pack", PACKS, ids=lambda p: p.__name__)
def test_nag_finds_nothing_unacknowledged(app: cdk.App, pack: type) -> None:
    assert _findings(app, pack) == {}


@pytest.fixture(scope="module")
def production_app(tmp_path_factory: pytest.TempPathFactory) -> cdk.App:
    return fast_app(tmp_path_factory.mktemp("prod"), PRODUCTION)


@pytest.mark.parametrize("pack", PACKS, ids=lambda p: p.__name__)
def test_nag_finds_nothing_unacknowledged_in_another_configuration(
    production_app: cdk.App, pack: type
) -> None:
    assert _findings(production_app, pack) == {}


def test_every_acknowledgment_is_needed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without acknowledgments, each acknowledged rule really fires (no stale entries)."""

    def silenced(_stack: DicomPipelineStack) -> None:
        return None

    monkeypatch.setattr("cdk.app.acknowledge", silenced)
    apps = [fast_app(tmp_path / "dev"), fast_app(tmp_path / "prod", PRODUCTION)]
    fired: set[str] = set()
    for raw in apps:
        for pack in PACKS:
            fired |= set(_findings(raw, pack))
    for ack in ACKS:
        for rule in ack.rules:
            probe = re.split(r"@[({]", rule)[0]
            assert any(f.startswith(probe) for f in fired), f"{rule} never fires: drop it"


def test_app_synthesizes_with_both_packs_as_the_gate(tmp_path: Path) -> None:
    # Given the app with the nag plugins registered, as `make synth` builds it
    app = fast_app(tmp_path, nag=True)
    # When it synthesizes (an open finding would raise ValidationFailed)
    assembly = app.synth()
    # Then the report is clean and nothing was looked up
    report = json.loads((tmp_path / "validation-report.json").read_text())
    assert all(p["conclusion"] == "success" for p in report["pluginReports"])
    manifest = json.loads((Path(assembly.directory) / "manifest.json").read_text())
    assert not manifest.get("missing")


def test_an_unacknowledged_finding_fails_the_synth(tmp_path: Path) -> None:
    app = cdk.App(outdir=str(tmp_path), builtin_cloud_formation_validation=False)
    cdk.aws_sqs.Queue(cdk.Stack(app, "Bad"), "Queue")  # no DLQ, no TLS enforcement
    cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    with pytest.raises(RuntimeError, match=r"ValidationFailed[\s\S]*AwsSolutions-SQS3"):
        app.synth()


def test_deployed_state_machine_definition_is_the_asl_file(
    stack: DicomPipelineStack, template_json: dict[str, Any]
) -> None:
    sm = template_json["Resources"][_lid(stack, stack.ingestion.state_machine)]["Properties"]
    assert sm["DefinitionString"] == WORKFLOW_FILE.read_text(encoding="utf-8")
    placeholders = set(re.findall(r"\$\{(\w+)\}", sm["DefinitionString"]))
    assert placeholders == set(sm["DefinitionSubstitutions"])


# ---------------------------------------------------------------- least privilege

_WILDCARD_ACTION = re.compile(r"^(\*|[a-z0-9-]+:\*)$")


def test_no_policy_grants_all_actions_or_all_of_a_service(template_json: dict[str, Any]) -> None:
    for owner, st in policy_statements(template_json):
        for action in as_list(st.get("Action", [])):
            assert not _WILDCARD_ACTION.match(action), f"{owner}: {action}"
        assert "NotAction" not in st, owner


def test_only_resource_less_actions_are_granted_on_every_resource(
    template_json: dict[str, Any],
) -> None:
    resource_less = (
        "xray:",
        "logs:CreateLogDelivery",
        "logs:DeleteLogDelivery",
        "logs:DescribeLogGroups",
        "logs:DescribeResourcePolicies",
        "logs:GetLogDelivery",
        "logs:ListLogDeliveries",
        "logs:PutResourcePolicy",
        "logs:UpdateLogDelivery",
        "ec2:DescribeSecurityGroups",
        "ecr:GetAuthorizationToken",
    )
    for owner, st in policy_statements(template_json):
        if "*" in as_list(st.get("Resource", [])) and st["Effect"] == "Allow":
            for action in as_list(st["Action"]):
                assert action.startswith(resource_less), f"{owner}: {action} on *"


def test_pipe_role_reaches_only_its_queue_key_and_state_machine(
    stack: DicomPipelineStack, template_json: dict[str, Any]
) -> None:
    ing = stack.ingestion
    role_id = stack.resolve(ing.pipe_role.node.default_child.logical_id)  # type: ignore[union-attr]
    targets = {
        stack.resolve(c.node.default_child.logical_id)  # type: ignore[union-attr]
        for c in (ing.queue, ing.queue_key, ing.state_machine)
    }
    statements = [st for owner, st in policy_statements(template_json) if owner == role_id]
    assert statements
    for st in statements:
        assert refs(st["Resource"]) <= targets, st


def test_workflow_role_reaches_only_the_function_table_dlq_and_keys(
    stack: DicomPipelineStack, template_json: dict[str, Any]
) -> None:
    ing = stack.ingestion
    role = ing.state_machine.role.node.default_child  # type: ignore[union-attr]
    role_id = stack.resolve(role.logical_id)  # type: ignore[union-attr]
    allowed = {
        stack.resolve(c.node.default_child.logical_id)  # type: ignore[union-attr]
        for c in (
            ing.function,
            ing.dlq,
            ing.queue_key,
            stack.metadata_table.table,
            stack.metadata_table.ledger,
            stack.metadata_table.key,
            stack.image_store.bucket,  # staged items only, asserted below
            stack.image_store.key,
        )
    }
    statements = [st for owner, st in policy_statements(template_json) if owner == role_id]
    for st in statements:
        if st["Resource"] != "*":
            assert refs(st["Resource"]) <= allowed, st


def _lid(stack: DicomPipelineStack, construct: Any) -> str:
    element = construct if isinstance(construct, cdk.CfnElement) else construct.node.default_child
    return str(stack.resolve(element.logical_id))


def _grants(template_json: dict[str, Any], role_id: str) -> list[tuple[str, str, str]]:
    """(action, resource, condition) of every statement of one role, as JSON text."""
    return sorted(
        (action, json.dumps(resource), json.dumps(st.get("Condition")))
        for owner, st in policy_statements(template_json)
        if owner == role_id
        for action in as_list(st["Action"])
        for resource in as_list(st["Resource"])
    )


def _object_arn(stack: DicomPipelineStack, pattern: str) -> str:
    return json.dumps(stack.resolve(stack.image_store.bucket.arn_for_objects(pattern)))


def test_parse_function_grants_are_exact(
    stack: DicomPipelineStack, template_json: dict[str, Any]
) -> None:
    role = stack.ingestion.function.role
    assert role is not None
    got = [
        g
        for g in _grants(template_json, _lid(stack, role))
        if not g[0].startswith(("xray:", "ec2:"))
    ]
    bucket = json.dumps(stack.resolve(stack.image_store.bucket.bucket_arn))
    bucket_key = json.dumps(stack.resolve(stack.image_store.key.key_arn))
    table_key = json.dumps(stack.resolve(stack.metadata_table.key.key_arn))
    table = json.dumps(stack.resolve(stack.metadata_table.table.table_arn))
    ledger = json.dumps(stack.resolve(stack.metadata_table.ledger.table_arn))
    none = "null"
    sidecar_listing = json.dumps({"StringLike": {"s3:prefix": [f"{SIDECAR_PREFIX}*"]}})
    assert got == sorted(
        [
            # header reads (any version of *.dcm); listing, so a missing key is a 404
            ("s3:GetObject", _object_arn(stack, f"*{DICOM_SUFFIX}"), none),
            ("s3:GetObjectVersion", _object_arn(stack, f"*{DICOM_SUFFIX}"), none),
            ("s3:ListBucket", bucket, none),
            # sidecars: write, find (listing only their prefix) and delete
            ("s3:PutObject", _object_arn(stack, f"{SIDECAR_PREFIX}*"), none),
            ("s3:ListBucket", bucket, sidecar_listing),
            ("s3:DeleteObject", _object_arn(stack, f"{SIDECAR_PREFIX}*"), none),
            # staged items: write only
            ("s3:PutObject", _object_arn(stack, f"{STAGING_PREFIX}*"), none),
            ("kms:Decrypt", bucket_key, none),
            ("kms:GenerateDataKey", bucket_key, none),
            # stale-event check and the DLQ ledger: batch reads only
            ("dynamodb:BatchGetItem", table, none),
            ("dynamodb:BatchGetItem", ledger, none),
            ("kms:Decrypt", table_key, none),
        ]
    )


def test_workflow_grants_on_the_ledger_and_staged_items_are_exact(
    stack: DicomPipelineStack, template_json: dict[str, Any]
) -> None:
    role = stack.ingestion.state_machine.role.node.default_child  # type: ignore[union-attr]
    got = _grants(template_json, str(stack.resolve(role.logical_id)))  # type: ignore[union-attr]
    bucket_key = json.dumps(stack.resolve(stack.image_store.key.key_arn))
    ledger = json.dumps(stack.resolve(stack.metadata_table.ledger.table_arn))
    table = json.dumps(stack.resolve(stack.metadata_table.table.table_arn))
    s3 = [g for g in got if g[0].startswith("s3:") or g[1] == bucket_key]
    assert s3 == sorted(
        [
            ("kms:Decrypt", bucket_key, "null"),
            ("s3:GetObject", _object_arn(stack, f"{STAGING_PREFIX}*"), "null"),
            # sidecars: deleted after the write (the replaced record's) or by a losing writer
            ("s3:DeleteObject", _object_arn(stack, f"{SIDECAR_PREFIX}*"), "null"),
        ]
    )
    writes = [g for g in got if g[0].startswith("dynamodb:")]
    assert writes == sorted(
        [
            ("dynamodb:PutItem", ledger, "null"),
            ("dynamodb:PutItem", table, "null"),
            # which sidecar the stored record points to, before a losing writer deletes its own
            ("dynamodb:GetItem", table, "null"),
        ]
    )


def test_lambda_environment_names_the_ledger(
    stack: DicomPipelineStack, template_json: dict[str, Any]
) -> None:
    fn = template_json["Resources"][_lid(stack, stack.ingestion.function)]["Properties"]
    env = fn["Environment"]["Variables"]
    assert env["LEDGER_TABLE_NAME"] == stack.resolve(stack.metadata_table.ledger.table_name)
    # Always reserved (the default when the context says nothing): the pipe has no maximum
    # concurrency of its own, so this is the bound (docs/capacity.md)
    assert fn["ReservedConcurrentExecutions"] == Ingestion.PARSE_RESERVED_CONCURRENCY == 100


def test_parse_reserved_concurrency_comes_from_context(production_app: cdk.App) -> None:
    prod = stack_of(production_app)
    fn = Template.from_stack(prod).to_json()["Resources"][_lid(prod, prod.ingestion.function)]
    assert fn["Properties"]["ReservedConcurrentExecutions"] == 20
    # and the reindex pacing threshold follows it: 2 x 20 x 10
    reindex_fn = Template.from_stack(prod).to_json()["Resources"][_lid(prod, prod.reindex.function)]
    assert reindex_fn["Properties"]["Environment"]["Variables"]["MAX_QUEUE_DEPTH"] == "400"


# ---------------------------------------------------------------- names of retained resources

#: The property that holds the physical name, for every resource type the stack retains.
PHYSICAL_NAMES = {
    "AWS::KMS::Key": None,  # keys have IDs, not names
    "AWS::S3::Bucket": "BucketName",
    "AWS::DynamoDB::Table": "TableName",
    "AWS::Logs::LogGroup": "LogGroupName",
    "AWS::RDS::DBInstance": "DBInstanceIdentifier",
}


@pytest.mark.parametrize("which", ["dev", "prod"])
def test_no_retained_resource_has_a_fixed_physical_name(
    which: str, template_json: dict[str, Any], production_app: cdk.App
) -> None:
    """A redeploy after a teardown, or a second environment, finds no name already taken."""
    template = (
        template_json if which == "dev" else Template.from_stack(stack_of(production_app)).to_json()
    )
    kept = {"Retain", "RetainExceptOnCreate", "Snapshot"}
    retained = {
        logical_id: res
        for logical_id, res in template["Resources"].items()
        if res.get("DeletionPolicy") in kept or res.get("UpdateReplacePolicy") in kept
    }
    assert retained
    for logical_id, res in retained.items():
        assert res["Type"] in PHYSICAL_NAMES, f"{logical_id}: decide how {res['Type']} is named"
        prop = PHYSICAL_NAMES[res["Type"]]
        name = res.get("Properties", {}).get(prop) if prop else None
        # Either CloudFormation names it, or the name carries the stack's own ID.
        assert name is None or "AWS::StackId" in json.dumps(name), f"{logical_id}: {name}"


def test_rds_log_groups_are_the_ones_rds_writes_to(
    stack: DicomPipelineStack, template_json: dict[str, Any]
) -> None:
    resources = template_json["Resources"]
    db = resources[_lid(stack, stack.index_database.instance)]
    identifier = db["Properties"]["DBInstanceIdentifier"]
    exports = db["Properties"]["EnableCloudwatchLogsExports"]
    groups = [
        r["Properties"]["LogGroupName"]
        for r in resources.values()
        if r["Type"] == "AWS::Logs::LogGroup"
        and "/aws/rds/instance/" in json.dumps(r["Properties"].get("LogGroupName"))
    ]
    expected = [
        {"Fn::Join": ["", ["/aws/rds/instance/", *identifier["Fn::Join"][1], f"/{e}"]]}
        for e in exports
    ]
    assert sorted(map(json.dumps, groups)) == sorted(map(json.dumps, _joined(expected)))
    # Created before the instance, so RDS finds them (KMS-encrypted) instead of making its own.
    group_ids = {
        lid
        for lid, r in resources.items()
        if r["Type"] == "AWS::Logs::LogGroup" and r["Properties"].get("LogGroupName") in groups
    }
    assert len(group_ids) == len(exports)
    assert group_ids <= set(db.get("DependsOn", []))


def _joined(values: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``Fn::Join`` with adjacent literal strings merged, as CDK renders it."""
    out = []
    for value in values:
        parts: list[Any] = []
        for part in value["Fn::Join"][1]:
            if isinstance(part, str) and parts and isinstance(parts[-1], str):
                parts[-1] += part
            else:
                parts.append(part)
        out.append({"Fn::Join": ["", parts]})
    return out


# ---------------------------------------------------------------- rotation


def test_database_rotation_redeploys_orthanc_in_the_stack(
    stack: DicomPipelineStack, template_json: dict[str, Any]
) -> None:
    resources = template_json["Resources"]
    redeploy = stack.rotation_redeploy
    rule = resources[_lid(stack, redeploy.rule)]["Properties"]
    # The rule names the database secret (not the Orthanc users secret)
    secret = stack.resolve(stack.index_database.secret.secret_arn)
    assert rule["EventPattern"]["detail"]["additionalEventData"] == {"SecretId": [secret]}
    assert rule["EventPattern"]["detail"]["eventName"] == ["RotationSucceeded"]
    assert [t["Arn"] for t in rule["Targets"]] == [{"Ref": _lid(stack, redeploy.state_machine)}]
    # The redeploy updates the Orthanc service only
    role = redeploy.state_machine.role.node.default_child  # type: ignore[union-attr]
    scoped = [
        g
        for g in _grants(template_json, str(stack.resolve(role.logical_id)))  # type: ignore[union-attr]
        if g[1] != '"*"'
    ]
    assert scoped == [
        ("ecs:UpdateService", json.dumps({"Ref": _lid(stack, stack.orthanc.service)}), "null")
    ]
    # The schedule's first rotation (at creation) waits for the rule, so it is seen
    (schedule_id,) = [
        lid for lid, r in resources.items() if r["Type"] == "AWS::SecretsManager::RotationSchedule"
    ]
    depends = set(resources[schedule_id].get("DependsOn", []))
    assert {_lid(stack, redeploy.rule), _lid(stack, redeploy.state_machine)} <= depends


def test_orthanc_gets_the_stack_regions_rds_root(
    stack: DicomPipelineStack, template_json: dict[str, Any]
) -> None:
    values = {
        r["Properties"]["Name"].rsplit("/", 1)[1]: r["Properties"]["Value"]
        for r in template_json["Resources"].values()
        if r["Type"] == "AWS::SSM::Parameter"
    }
    assert values["RDS_CA_BUNDLE"] == region_root(stack.region)
    assert "truststore" not in json.dumps(template_json)


# ---------------------------------------------------------------- texts name what exists


def _slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _commands() -> set[str]:
    """Every ``dicom-pipeline`` command and subcommand path (``parse``, ``local up`` …)."""
    found: set[str] = set()

    def walk(parser: argparse.ArgumentParser, prefix: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    found.add(f"{prefix}{name}")
                    walk(sub, f"{prefix}{name} ")

    walk(build_parser(), "")
    return found


def _texts(template: dict[str, Any]) -> list[str]:
    alarms = [
        r["Properties"]["AlarmDescription"]
        for r in template["Resources"].values()
        if r["Type"] == "AWS::CloudWatch::Alarm"
    ]
    outputs = [o["Description"] for o in template["Outputs"].values() if "Description" in o]
    return alarms + outputs


def test_alarm_and_output_texts_name_only_what_exists(template_json: dict[str, Any]) -> None:
    texts = _texts(template_json)
    assert len(texts) >= 10
    commands = _commands()
    for text in texts:
        # Files (and their sections) in the repository
        for path, anchor in re.findall(r"([\w./-]+\.(?:md|py|json|ipynb))(?:#([\w-]+))?", text):
            target = REPO_ROOT / path
            assert target.is_file(), f"{text!r} names {path}, which does not exist"
            if anchor:
                headings = re.findall(r"^#+ (.+)$", target.read_text(encoding="utf-8"), re.M)
                assert anchor in {_slug(h) for h in headings}, f"{text!r}: no section {anchor}"
        # Commands of the CLI
        for command in re.findall(r"`dicom-pipeline ([a-z][a-z -]*)", text):
            words = command.split()
            assert any(" ".join(words[:n]) in commands for n in (1, 2)), f"{text!r}: {command}"
        # Nothing that is only planned
        if not (REPO_ROOT / "notebooks").is_dir():
            assert "notebook" not in text.lower(), text
        # Stack outputs that it names exist
        for output in re.findall(r"stack output (\w+)", text):
            assert output in template_json["Outputs"], f"{text!r}: no output {output}"


# ---------------------------------------------------------------- secrets


def test_no_plaintext_secret_anywhere(template_json: dict[str, Any]) -> None:
    text = json.dumps(template_json)
    resources = template_json["Resources"].values()
    # Generated secrets only, never a value.
    for res in resources:
        if res["Type"] == "AWS::SecretsManager::Secret":
            assert "SecretString" not in res["Properties"]
            assert "GenerateSecretString" in res["Properties"]
            assert "KmsKeyId" in res["Properties"]
    # The database password is a dynamic reference resolved by CloudFormation.
    (db,) = [r for r in resources if r["Type"] == "AWS::RDS::DBInstance"]
    assert json.dumps(db["Properties"]["MasterUserPassword"]).count("{{resolve:secretsmanager:")
    # No environment variable anywhere carries a secret-looking name.
    for res in resources:
        for container in res.get("Properties", {}).get("ContainerDefinitions", []):
            # the one variable: the authorization plugin's SHA-256, no secret
            names = [e["Name"] for e in container.get("Environment", [])]
            assert names in ([], ["DICOM_PIPELINE_AUTHZ_SHA256"]), names
        variables = res.get("Properties", {}).get("Environment", {}).get("Variables", {})
        for name in variables:
            assert not re.search(r"PASS|SECRET|TOKEN|KEY", name), name
    # No connection string with credentials, no literal password assignment.
    assert not re.search(r"postgres(ql)?://[^@\"/]*:[^@\"/]*@", text)
    assert not re.search(r"(?i)\"password\"\s*:\s*\"[^{]", text)


def test_orthanc_secrets_come_from_secrets_manager(stack: DicomPipelineStack) -> None:
    template = Template.from_stack(stack).to_json()
    (task,) = [
        r["Properties"]
        for r in template["Resources"].values()
        if r["Type"] == "AWS::ECS::TaskDefinition"
    ]
    secrets = {s["Name"]: s["ValueFrom"] for s in task["ContainerDefinitions"][0]["Secrets"]}
    db_secret = stack.resolve(stack.index_database.secret.secret_arn)
    assert json.dumps(db_secret) in json.dumps(secrets["PGPASSWORD"])
    # Two users secrets, one per role; the entry point builds RegisteredUsers from them.
    admins = stack.resolve(stack.orthanc.admin_secret.secret_arn)
    uploaders = stack.resolve(stack.orthanc.uploader_secret.secret_arn)
    assert secrets["DICOM_PIPELINE_ADMINISTRATORS"] == admins
    assert secrets["DICOM_PIPELINE_UPLOADERS"] == uploaders
    assert "ORTHANC__REGISTERED_USERS" not in secrets
    outputs = template["Outputs"]
    assert outputs["OrthancAdminSecretArn"]["Value"] == admins
    assert outputs["OrthancUploaderSecretArn"]["Value"] == uploaders


# ---------------------------------------------------------------- outputs, lookups, config


def test_outputs_for_the_cli_and_notebooks(template_json: dict[str, Any]) -> None:
    outputs = template_json["Outputs"]
    assert set(OUTPUTS) <= set(outputs)
    assert set(OUTPUTS) == {
        "Bucket",
        "QueueUrl",
        "DlqUrl",
        "Table",
        "StateMachineArn",
        "OrthancUrl",
    }


def test_no_context_lookup_and_no_dummy_values(template_json: dict[str, Any]) -> None:
    text = json.dumps(template_json)
    assert "dummy" not in text.lower()
    assert "DUMMY" not in text


@pytest.mark.parametrize("what", ["CertificateConfigured", "DockerHubSecretConfigured"])
def test_default_context_refuses_to_deploy_without_a_certificate_or_docker_hub_credentials(
    what: str, template_json: dict[str, Any], production_app: cdk.App
) -> None:
    assert any(what in rule for rule in template_json.get("Rules", {}))
    prod = Template.from_stack(stack_of(production_app)).to_json()
    assert not any(what in rule for rule in prod.get("Rules", {}))
    outputs = prod["Outputs"]
    assert outputs["OrthancUrl"]["Value"] == "https://pacs.example.org"


def test_acknowledgments_resolve_to_existing_logical_ids(stack: DicomPipelineStack) -> None:
    template = Template.from_stack(stack).to_json()
    for ack in ACKS:
        for rule in rule_ids(stack, ack):
            for logical_id in re.findall(r"<([A-Za-z0-9]+)\.Arn>", rule):
                assert logical_id in template["Resources"], rule


# ---------------------------------------------------------------- the way in, wired


@pytest.mark.parametrize("which", ["dev", "prod"])
def test_the_stack_puts_waf_on_its_load_balancer_with_the_configured_rate(
    which: str, stack: DicomPipelineStack, production_app: cdk.App
) -> None:
    target = stack if which == "dev" else stack_of(production_app)
    template = Template.from_stack(target).to_json()
    resources = template["Resources"]
    (association,) = [
        r["Properties"] for r in resources.values() if r["Type"] == "AWS::WAFv2::WebACLAssociation"
    ]
    assert association["ResourceArn"] == {"Ref": _lid(target, target.front_door.load_balancer)}
    (acl,) = [r["Properties"] for r in resources.values() if r["Type"] == "AWS::WAFv2::WebACL"]
    (rate,) = [r for r in acl["Rules"] if r["Name"] == "RateLimit"]
    expected = Waf.RATE_LIMIT if which == "dev" else int(PRODUCTION["waf_rate_limit"])
    assert rate["Statement"]["RateBasedStatement"]["Limit"] == expected
    assert rate["Priority"] == 0


def test_the_default_rate_limit_lets_a_site_send_several_ct_studies_instance_by_instance(
    stack: DicomPipelineStack,
) -> None:
    # Given a site behind one NAT whose modalities send 5 thin-slice CT studies of 2,000
    # instances each within 5 minutes, one instance per STOW-RS request, plus as many
    # requests again for searches, retrieves and retries
    site_requests = 5 * 2000 * 2
    # When the stack is synthesized with the default context
    acl = Template.from_stack(stack).find_resources("AWS::WAFv2::WebACL")
    ((_, resource),) = acl.items()
    (rate,) = [r for r in resource["Properties"]["Rules"] if r["Name"] == "RateLimit"]
    statement = rate["Statement"]["RateBasedStatement"]
    # Then the site is not blocked, and the rule still bounds a single address
    assert statement["EvaluationWindowSec"] == 300
    assert site_requests <= statement["Limit"] < Waf.MAX_RATE_LIMIT


@pytest.mark.parametrize("which", ["dev", "prod"])
def test_the_stack_pulls_orthanc_through_its_ecr_cache_and_checks_its_health(
    which: str, stack: DicomPipelineStack, production_app: cdk.App
) -> None:
    target = stack if which == "dev" else stack_of(production_app)
    template = dict(Template.from_stack(target).to_json())
    resources = template["Resources"]
    prefix = "dicom-pipeline-dev" if which == "dev" else PRODUCTION["ecr_cache_prefix"]
    # The rule, with the configured credentials in production
    rule = resources[_lid(target, target.image_cache.rule)]
    assert rule["Properties"]["EcrRepositoryPrefix"] == prefix
    assert rule["Properties"]["UpstreamRegistry"] == "docker-hub"
    if which == "prod":
        assert rule["Properties"]["CredentialArn"] == PRODUCTION["dockerhub_secret_arn"]
    # The task's image is the cached one, at the pinned tag
    task = resources[_lid(target, target.orthanc.task_definition)]["Properties"]
    image = json.dumps(task["ContainerDefinitions"][0]["Image"])
    assert f'"/{prefix}/orthancteam/orthanc:26.8.1"' in image
    assert '".dkr.ecr.eu-central-1."' in image and "AWS::AccountId" in image
    # The execution role may pull exactly that repository through the cache
    role = target.orthanc.task_definition.execution_role
    assert role is not None
    ecr = [g for g in _grants(template, _lid(target, role)) if g[0].startswith("ecr:")]
    repository = json.dumps(
        target.resolve(target.image_cache.repository_arn("orthancteam/orthanc"))
    )
    assert ecr == sorted(
        [
            (action, repository, "null")
            for action in (
                "ecr:BatchCheckLayerAvailability",
                "ecr:GetDownloadUrlForLayer",
                "ecr:BatchGetImage",
                "ecr:BatchImportUpstreamImage",
                "ecr:CreateRepository",
            )
        ]
        + [("ecr:GetAuthorizationToken", '"*"', "null")]
    )
    # And the service waits for the rule (the first pull creates the repository)
    service = resources[_lid(target, target.orthanc.service)]
    assert _lid(target, target.image_cache.rule) in service["DependsOn"]
    # The load balancer's health check: the plugin's endpoint, 200 only
    (group,) = [
        r["Properties"]
        for r in resources.values()
        if r["Type"] == "AWS::ElasticLoadBalancingV2::TargetGroup"
    ]
    assert (group["HealthCheckPort"], group["HealthCheckPath"], group["Matcher"]) == (
        "8043",
        "/healthz",
        {"HttpCode": "200"},
    )
