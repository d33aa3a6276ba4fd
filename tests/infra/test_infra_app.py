"""The whole app: cdk-nag clean, least privilege, no plaintext secret, outputs, no lookups."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import aws_cdk as cdk
import pytest
from aws_cdk.assertions import Template
from cdk_nag import AwsSolutionsChecks, HIPAASecurityChecks
from infra_support import as_list, fast_app, policy_statements, refs, stack_of

from cdk.nag import ACKS, rule_ids
from cdk.stack import OUTPUTS, DicomPipelineStack
from pipeline.names import WORKFLOW_FILE

PACKS = [AwsSolutionsChecks, HIPAASecurityChecks]
#: A deployment that differs from the default on every switch the acknowledgments know.
PRODUCTION = {
    "environment": "prod",
    "certificate_arn": "arn:aws:acm:eu-central-1:123456789012:certificate/abc",
    "domain_name": "pacs.example.org",
    "client_cidrs": "203.0.113.0/24,198.51.100.7/32",
    "multi_az": "false",
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
            probe = rule if "@(" not in rule else rule.split("@(")[0]
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


def test_deployed_state_machine_definition_is_the_asl_file(template_json: dict[str, Any]) -> None:
    (sm,) = [
        r["Properties"]
        for r in template_json["Resources"].values()
        if r["Type"] == "AWS::StepFunctions::StateMachine"
    ]
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
            stack.metadata_table.key,
        )
    }
    statements = [st for owner, st in policy_statements(template_json) if owner == role_id]
    for st in statements:
        if st["Resource"] != "*":
            assert refs(st["Resource"]) <= allowed, st


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
            assert "Environment" not in container
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
    users = stack.resolve(stack.orthanc.admin_secret.secret_arn)
    assert secrets["ORTHANC__REGISTERED_USERS"] == users


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


def test_default_context_refuses_to_deploy_without_a_certificate(
    template_json: dict[str, Any], production_app: cdk.App
) -> None:
    assert any("CertificateConfigured" in rule for rule in template_json.get("Rules", {}))
    prod = Template.from_stack(stack_of(production_app)).to_json()
    assert not any("CertificateConfigured" in rule for rule in prod.get("Rules", {}))
    outputs = prod["Outputs"]
    assert outputs["OrthancUrl"]["Value"] == "https://pacs.example.org"


def test_acknowledgments_resolve_to_existing_logical_ids(stack: DicomPipelineStack) -> None:
    template = Template.from_stack(stack).to_json()
    for ack in ACKS:
        for rule in rule_ids(stack, ack):
            for logical_id in re.findall(r"<([A-Za-z0-9]+)\.Arn>", rule):
                assert logical_id in template["Resources"], rule
