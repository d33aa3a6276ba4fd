"""The template checkers AWS engineers run, on what the app synthesizes (issue 14, section 1).

- cfn-lint (pinned in the ``cdk`` extra, in ``.venv``) on every stack's template;
- checkov (pinned in ``tests/infra/tools/checkov.txt``, its own virtualenv in
  ``.local/tools/checkov``) on the template;
- asl-validator (pinned by ``tests/infra/tools/package-lock.json``, in ``.local/tools/npm``) on
  every state machine's definition as CloudFormation will see it: the definition files with
  their ``${...}`` substitutions made, references rendered as ARNs, names and URLs of the
  shape AWS gives them.

Both checkers run with nothing switched off; their findings are matched against the one table
of exceptions, ``cdk/checks.py``. ``make tools`` (a prerequisite of ``make test-infra``)
installs checkov and asl-validator; a missing tool fails these tests naming it.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aws_cdk as cdk
import pytest
from aws_cdk.assertions import Template
from infra_support import REGION, fast_app, only

from cdk import checks
from cdk.checks import CFN_LINT, CHECKOV, EXCEPTIONS, Finding, unexplained, unused
from cdk.components.index_database import IndexDatabase
from cdk.components.log_archive import LogArchive
from cdk.components.network import Network
from cdk.constants import REPO_ROOT, Database, Reindex
from cdk.stack import DicomPipelineStack
from pipeline.names import REINDEX_WORKFLOW_FILE, WORKFLOW_FILE

TOOLS = REPO_ROOT / ".local" / "tools"
CHECKOV_BIN = TOOLS / "checkov" / "bin" / "checkov"
ASL_VALIDATOR = TOOLS / "npm" / "node_modules" / ".bin" / "asl-validator"
#: cfn-lint's command, installed into .venv with the cdk extra (no ``python -m`` entry).
CFN_LINT_BIN = Path(sys.executable).parent / "cfn-lint"
ACCOUNT = "123456789012"


def _lid(construct: Any) -> str:
    """The logical ID of a construct's CloudFormation resource."""
    return str(cdk.Stack.of(construct).resolve(construct.node.default_child.logical_id))


def _tool(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"{path.relative_to(REPO_ROOT)} is missing: run `make tools`")
    return path


@pytest.fixture(scope="module")
def assembly(app: cdk.App) -> cdk.cx_api.CloudAssembly:
    """The session's app written out (one synth for this module)."""
    return app.synth()


@pytest.fixture(scope="module")
def template_files(assembly: cdk.cx_api.CloudAssembly) -> list[Path]:
    files = [Path(assembly.directory) / s.template_file for s in assembly.stacks]
    assert files
    return files


@pytest.fixture(scope="module")
def cfn_lint_findings(template_files: list[Path]) -> list[Finding]:
    run = subprocess.run(
        [str(CFN_LINT_BIN), "--format", "json", *map(str, template_files)],
        capture_output=True,
        text=True,
        check=False,
    )
    # cfn-lint exits with a bit mask of the levels found (2 error, 4 warning, 8 info)
    assert run.returncode in {0, 2, 4, 6, 8, 10, 12, 14}, run.stderr
    return [
        Finding(
            CFN_LINT,
            m["Rule"]["Id"],
            _cfn_lint_resource(m["Location"]["Path"]),
            f"{m['Level']}: {m['Message']}",
        )
        for m in json.loads(run.stdout or "[]")
    ]


def _cfn_lint_resource(path: list[Any]) -> str:
    return str(path[1]) if len(path) > 1 and path[0] == "Resources" else ""


@pytest.fixture(scope="module")
def checkov_findings(
    template_files: list[Path], tmp_path_factory: pytest.TempPathFactory
) -> list[Finding]:
    binary = _tool(CHECKOV_BIN)
    findings: list[Finding] = []
    for template in template_files:
        run = subprocess.run(
            [
                str(binary),
                "--file",
                str(template),
                "--framework",
                "cloudformation",
                "--skip-download",  # no guidelines from Prisma Cloud: offline, same result
                "--quiet",
                "--compact",
                "--output",
                "json",
            ],
            capture_output=True,
            text=True,
            check=False,
            cwd=tmp_path_factory.mktemp("checkov"),
        )
        # checkov exits 1 when a check failed; anything else is its own failure
        assert run.returncode in {0, 1}, run.stderr[-2000:]
        report = json.loads(run.stdout)
        (report,) = report if isinstance(report, list) else [report]
        assert report["summary"]["parsing_errors"] == 0, report["summary"]
        assert report["summary"]["passed"] > 0, report["summary"]
        findings += [
            Finding(CHECKOV, f["check_id"], f["resource"].split(".", 1)[1], f["check_name"])
            for f in report["results"]["failed_checks"]
        ]
    return findings


# ---------------------------------------------------------------- cfn-lint


def test_cfn_lint_finds_no_error_and_every_warning_is_explained(
    cfn_lint_findings: list[Finding],
) -> None:
    # Given every finding of cfn-lint on the app's templates, nothing switched off
    # Then none is an error, and each other one is an exception in cdk/checks.py
    errors = [f for f in cfn_lint_findings if f.message.startswith("Error")]
    assert not errors, "\n".join(map(str, errors))
    left = unexplained(cfn_lint_findings)
    assert not left, "explain in cdk/checks.py or fix:\n" + "\n".join(map(str, left))


def test_the_database_engine_is_a_supported_full_version(
    template_json: dict[str, Any], cfn_lint_findings: list[Finding]
) -> None:
    # Given the app's template: PostgreSQL at the full version of the setting's default
    (db,) = [
        r["Properties"]
        for r in template_json["Resources"].values()
        if r["Type"] == "AWS::RDS::DBInstance"
    ]
    assert db["EngineVersion"] == Database.ENGINE_VERSION
    assert re.fullmatch(r"\d+\.\d+", Database.ENGINE_VERSION)
    # Then cfn-lint's RDS data neither deprecates nor rejects it (a bare "17" is deprecated
    # for new instances: W3691; an unknown version: E3691)
    assert not [f for f in cfn_lint_findings if f.rule in {"W3691", "E3691"}]


def test_the_engine_version_setting_reaches_the_instance_and_its_parameter_group(
    bare_stack: cdk.Stack,
) -> None:
    # Given a database built with another full version
    archive = LogArchive(bare_stack, "Logs")
    network = Network(bare_stack, "Net", log_archive=archive)
    IndexDatabase(
        bare_stack,
        "Db",
        vpc=network.vpc,
        subnets=network.data_subnets,
        rotation_subnets=network.app_subnets,
        secrets_manager_endpoint=network.secrets_manager_endpoint,
        log_archive=archive,
        identifier_prefix="test-index",
        engine_version="16.8",
    )
    t = Template.from_stack(bare_stack)
    # Then the instance runs it and the parameter group is of its major version's family
    assert only(t, "AWS::RDS::DBInstance")["EngineVersion"] == "16.8"
    assert only(t, "AWS::RDS::DBParameterGroup")["Family"] == "postgres16"


def test_a_major_version_alone_is_refused(tmp_path: Path) -> None:
    # Given the deprecated form, a major version alone
    # Then the synth stops naming the context key
    with pytest.raises(ValueError, match="db_engine_version"):
        fast_app(tmp_path, {"client_cidrs": "0.0.0.0/0", "db_engine_version": "17"})


# ---------------------------------------------------------------- checkov


def test_checkov_failures_are_all_explained(checkov_findings: list[Finding]) -> None:
    # Given every failed checkov check on the template, nothing skipped
    # Then each is an exception in cdk/checks.py
    left = unexplained(checkov_findings)
    assert not left, "explain in cdk/checks.py or fix:\n" + "\n".join(map(str, left))


def test_the_pipeline_functions_are_bounded_and_their_environment_under_our_key(
    stack: DicomPipelineStack, template_json: dict[str, Any], checkov_findings: list[Finding]
) -> None:
    # Given the parse and reindex functions
    functions = {
        "parse": stack.ingestion.function,
        "reindex": stack.reindex.function,
    }
    key = stack.resolve(stack.ingestion.environment_key.key_arn)
    for name, function in functions.items():
        logical_id = _lid(function)
        props = template_json["Resources"][logical_id]["Properties"]
        # Then each has reserved concurrency and its environment under the customer managed key
        assert props["KmsKeyArn"] == key, name
        assert props["ReservedConcurrentExecutions"] >= 1, name
        # And checkov agrees, with no exception needed
        failed = {f.rule for f in checkov_findings if f.resource == logical_id}
        assert not failed & {"CKV_AWS_115", "CKV_AWS_173"}, (name, failed)
    reindex_id = _lid(stack.reindex.function)
    reserved = template_json["Resources"][reindex_id]["Properties"]["ReservedConcurrentExecutions"]
    assert reserved == Reindex.MAX_CONCURRENCY
    # And no execution role is given the key: Lambda decrypts through its own grant
    key_id = _lid(stack.ingestion.environment_key)
    for res in template_json["Resources"].values():
        if res["Type"] == "AWS::IAM::Policy":
            assert key_id not in json.dumps(res["Properties"]["PolicyDocument"])


# ---------------------------------------------------------------- the exceptions


def test_every_exception_has_a_reason_and_is_still_needed(
    cfn_lint_findings: list[Finding], checkov_findings: list[Finding]
) -> None:
    # Given each exception of cdk/checks.py
    for exception in EXCEPTIONS:
        # Then it gives a real reason
        assert len(exception.reason.split()) >= 8, exception
        assert exception.tool in {CFN_LINT, CHECKOV}
    # And every resource it names still fails its rule without it (nothing stale)
    stale = unused([*cfn_lint_findings, *checkov_findings])
    assert not stale, "remove from cdk/checks.py:\n" + "\n".join(map(str, stale))


def test_an_exception_covers_only_its_rule_on_its_resources() -> None:
    exception = checks.Waiver(CHECKOV, "CKV_AWS_1", ("Fn????????",), "a reason")
    assert exception.covers(Finding(CHECKOV, "CKV_AWS_1", "FnABCD1234"))
    assert not exception.covers(Finding(CHECKOV, "CKV_AWS_2", "FnABCD1234"))
    assert not exception.covers(Finding(CFN_LINT, "CKV_AWS_1", "FnABCD1234"))
    assert not exception.covers(Finding(CHECKOV, "CKV_AWS_1", "FnServiceRoleABCD1234"))
    assert unused([], [exception]) == [(exception, "Fn????????")]


def test_security_doc_holds_the_generated_exceptions() -> None:
    text = checks.SECURITY_DOC.read_text(encoding="utf-8")
    block = text.split(checks.DOC_START, 1)[1].split(checks.DOC_END, 1)[0]
    assert block.strip() == checks.markdown().strip(), (
        "run: .venv/bin/python -m cdk.checks --update"
    )


# ---------------------------------------------------------------- asl-validator


def _render(value: Any, resources: dict[str, Any]) -> str:
    """A substitution value as CloudFormation would give it, for the intrinsics CDK writes
    into definitions: ARNs, names and queue URLs of the shape AWS gives them."""
    if isinstance(value, str):
        return value
    if "Ref" in value:
        name = value["Ref"]
        pseudo = {
            "AWS::Partition": "aws",
            "AWS::Region": REGION,
            "AWS::AccountId": ACCOUNT,
            "AWS::URLSuffix": "amazonaws.com",
            "AWS::StackName": "DicomPipeline-dev",
        }
        if name in pseudo:
            return pseudo[name]
        kind = resources[name]["Type"]
        if kind == "AWS::SQS::Queue":
            return f"https://sqs.{REGION}.amazonaws.com/{ACCOUNT}/{name}"
        if kind == "AWS::Lambda::Function":
            return name
        return name.lower()  # bucket and table names
    if "Fn::GetAtt" in value:
        name, attribute = value["Fn::GetAtt"]
        kind = resources[name]["Type"]
        if attribute == "Name":  # an ECS service's name
            return name
        resource = {
            "AWS::Lambda::Function": f"lambda:{REGION}:{ACCOUNT}:function:",
            "AWS::SQS::Queue": f"sqs:{REGION}:{ACCOUNT}:",
            "AWS::DynamoDB::Table": f"dynamodb:{REGION}:{ACCOUNT}:table/",
            "AWS::SNS::Topic": f"sns:{REGION}:{ACCOUNT}:",
            "AWS::ECS::Cluster": f"ecs:{REGION}:{ACCOUNT}:cluster/",
        }.get(kind)
        assert attribute == "Arn" and resource, value
        return f"arn:aws:{resource}{name}"
    if "Fn::Join" in value:
        separator, parts = value["Fn::Join"]
        return str(separator).join(_render(p, resources) for p in parts)
    raise AssertionError(f"an intrinsic the renderer does not know: {value}")


def _definitions(template: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(logical ID, definition as deployed) of every state machine of the template."""
    resources = template["Resources"]
    for logical_id, res in resources.items():
        if res["Type"] != "AWS::StepFunctions::StateMachine":
            continue
        props = res["Properties"]
        text = _render(props["DefinitionString"], resources)
        for name, value in props.get("DefinitionSubstitutions", {}).items():
            text = text.replace("${" + name + "}", _render(value, resources))
        yield logical_id, text


def test_every_state_machine_definition_is_valid_asl(
    stack: DicomPipelineStack, template_json: dict[str, Any], tmp_path: Path
) -> None:
    validator = _tool(ASL_VALIDATOR)
    # Given every state machine of the template, substituted as CloudFormation will
    definitions = dict(_definitions(template_json))
    ingest = _lid(stack.ingestion.state_machine)
    reindex = _lid(stack.reindex.state_machine)
    assert {ingest, reindex} <= set(definitions)
    for logical_id, text in definitions.items():
        assert "${" not in text, logical_id
        # (the two files are what the workflows run: same states)
        source = {ingest: WORKFLOW_FILE, reindex: REINDEX_WORKFLOW_FILE}.get(logical_id)
        if source is not None:
            assert json.loads(text).keys() == json.loads(source.read_text()).keys()
        path = tmp_path / f"{logical_id}.asl.json"
        path.write_text(text, encoding="utf-8")
        # Then asl-validator accepts it, path expressions and Resource ARNs checked
        run = subprocess.run(
            [str(validator), "--json-path", str(path)], capture_output=True, text=True, check=False
        )
        assert run.returncode == 0, f"{logical_id}:\n{run.stdout}{run.stderr}"


def test_asl_validator_rejects_a_broken_definition(tmp_path: Path) -> None:
    # Given the ingest definition with a transition to a state that does not exist
    definition = json.loads(WORKFLOW_FILE.read_text(encoding="utf-8"))
    definition["StartAt"] = "NoSuchState"
    path = tmp_path / "broken.asl.json"
    path.write_text(json.dumps(definition), encoding="utf-8")
    # Then the validator fails it (the checks above can fail)
    run = subprocess.run(
        [str(_tool(ASL_VALIDATOR)), "--json-path", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode != 0, run.stdout
