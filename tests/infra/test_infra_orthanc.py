"""The Orthanc service alone in a bare stack: one source for its settings, the entry point,
the authorization plugin's delivery, the two users secrets, the health checks."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import aws_cdk as cdk
import pytest
from aws_cdk.assertions import Template
from infra_support import IMAGE, REGION, database_like, only, orthanc_service, resources

from cdk import orthanc_entrypoint as entrypoint
from cdk.components.log_archive import LogArchive
from cdk.components.network import Network
from cdk.components.orthanc_service import (
    AUTHZ_SCRIPT,
    AUTHZ_SHA256,
    ENTRYPOINT,
    OrthancService,
    chunks,
)
from cdk.constants import Orthanc as C
from cdk.rds_ca import region_root
from pipeline.orthanc import authz
from pipeline.orthanc.config import DIFFERENCES, SHARED, deployed, local, to_environment

# ---------------------------------------------------------------- the image's own rules


def _image_key(word: str) -> str:
    """orthanc-builder's ``envVarToCamelCase``: ``DICOM_WEB`` → ``DicomWeb``."""
    return "".join(w[0] + w.lower()[1:] for w in word.split("_"))


def image_configuration(env: dict[str, str]) -> dict[str, Any]:
    """What the orthancteam image makes of ``ORTHANC__*`` variables (docker/orthanc/
    configurator.py of orthanc-builder: the PostgreSQL prefix it maps itself, camel-cased
    words, a value parsed as JSON when it is JSON, else kept as a string)."""
    config: dict[str, Any] = {}
    for variable, value in env.items():
        if not variable.startswith("ORTHANC__"):
            continue
        name = variable.replace("ORTHANC__POSTGRESQL__", "ORTHANC__POSTGRE_S_Q_L__")
        path = [_image_key(token) for token in name[len("ORTHANC__") :].split("__")]
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = value
        target = config
        for key in path[:-1]:
            target = target.setdefault(key, {})
        target[path[-1]] = parsed
    return config


def _deployed(uri: str = "postgresql://orthanc@db:5432/orthanc") -> dict[str, Any]:
    return deployed(
        name="dicom-pipeline-test",
        bucket="images-bucket",
        region=REGION,
        postgresql_uri=uri,
        authorization_script=C.AUTHZ_SCRIPT_PATH,
    )


def _local() -> dict[str, Any]:
    return local(
        name="dicom-pipeline-local",
        http_port=18042,
        users={"dicom-pipeline": "a-random-password"},
        storage_directory="/tmp/orthanc/db",
        plugins=["/usr/share/orthanc/plugins/libOrthancPython.so"],
        python_script="/repo/pipeline/orthanc/storage.py",
    )


@pytest.mark.parametrize("which", ["deployed", "local"])
def test_environment_variables_mean_the_configuration_to_the_image(which: str) -> None:
    # Given either configuration of the one module
    config = _deployed() if which == "deployed" else _local()
    # When the image reads its environment variables
    # Then it rebuilds exactly that configuration (PostgreSQL and user names included)
    assert image_configuration(to_environment(config)) == config


def test_deployed_and_local_share_every_shared_setting_and_differ_only_where_declared() -> None:
    deployed_env, local_env = to_environment(_deployed()), to_environment(_local())
    # Every shared setting reaches both Orthancs with the same value
    shared = to_environment(SHARED)
    assert {k: deployed_env[k] for k in shared} == shared
    assert {k: local_env[k] for k in shared} == shared
    # And every other difference is one the module declares (storage plugin, index, access)
    deployed_config, local_config = _deployed(), _local()
    differing = {
        key
        for key in set(deployed_config) | set(local_config)
        if deployed_config.get(key) != local_config.get(key)
    }
    declared = {key for keys in DIFFERENCES.values() for key in keys}
    assert differing <= declared
    assert not set(SHARED) & declared


# ---------------------------------------------------------------- the task definition


def _parameters(t: Template) -> dict[str, Any]:
    return {
        p["Properties"]["Name"].rsplit("/", 1)[1]: p["Properties"]["Value"]
        for p in resources(t, "AWS::SSM::Parameter").values()
    }


def _container(t: Template) -> dict[str, Any]:
    (container,) = only(t, "AWS::ECS::TaskDefinition")["ContainerDefinitions"]
    return dict(container)


def test_orthanc_settings_are_the_deployed_configuration_of_the_shared_module(
    bare_stack: cdk.Stack,
) -> None:
    # Given the Orthanc service
    orthanc, _, _ = orthanc_service(bare_stack)
    t = Template.from_stack(bare_stack)
    params = _parameters(t)
    container = _container(t)
    # When Orthanc's settings are read back: the ORTHANC__ parameters and the environment
    settings = {k: v for k, v in params.items() if k.startswith("ORTHANC__")}
    settings.update(
        {
            e["Name"]: e["Value"]
            for e in container.get("Environment", [])
            if e["Name"].startswith("ORTHANC__")
        }
    )
    # Then they are to_environment(deployed(...)) of the synthesized values, nothing more
    uri = settings["ORTHANC__POSTGRESQL__CONNECTION_URI"]  # a CloudFormation expression
    assert settings == bare_stack.resolve(to_environment(_deployed(cdk.Token.as_string(uri))))
    assert settings == bare_stack.resolve(orthanc.settings)
    # And the URI verifies the server against the RDS CA, with no password in it
    text = json.dumps(uri)
    assert "sslmode=verify-full" in text and f"sslrootcert={C.RDS_CA_BUNDLE_PATH}" in text
    assert "postgresql://orthanc@" in text


def test_orthanc_configuration_is_all_parameters_and_secrets(bare_stack: cdk.Stack) -> None:
    orthanc_service(bare_stack)
    t = Template.from_stack(bare_stack)
    container = _container(t)
    assert container["Image"] == IMAGE
    # Nothing in clear in the task definition but the plugin's hash (not a secret)
    assert [e["Name"] for e in container["Environment"]] == [entrypoint.SCRIPT_SHA256]
    secrets = {s["Name"]: json.dumps(s["ValueFrom"]) for s in container["Secrets"]}
    params = _parameters(t)
    for name in params:
        assert name in secrets and "AWS::SSM::Parameter" not in secrets[name]
    # Secrets Manager: the database password and the two users secrets, nothing else
    assert set(secrets) - set(params) == {
        "PGPASSWORD",
        entrypoint.ADMINISTRATORS,
        entrypoint.UPLOADERS,
    }
    assert ":password::" in secrets["PGPASSWORD"]  # the JSON key of the database secret
    assert all(
        p["Properties"]["Type"] == "String" and len(p["Properties"]["Value"].encode()) <= 4096
        for p in resources(t, "AWS::SSM::Parameter").values()
        if isinstance(p["Properties"]["Value"], str)
    )


def test_orthanc_settings_storage_index_and_access(bare_stack: cdk.Stack) -> None:
    orthanc_service(bare_stack)
    params = _parameters(Template.from_stack(bare_stack))
    # Storage: plain, flat objects the pipeline can read; no client-side encryption.
    assert params["ORTHANC__AWS_S3_STORAGE__STORAGE_STRUCTURE"] == "flat"
    assert params["ORTHANC__AWS_S3_STORAGE__BUCKET_NAME"] == "images-bucket"
    assert params["ORTHANC__STORAGE_COMPRESSION"] == "false"
    assert not any("STORAGE_ENCRYPTION" in name for name in params)
    # Access: DICOMweb on, authentication on, no overwrite (an uploader must not replace a
    # stored instance), the plugin loaded.
    assert params["ORTHANC__DICOM_WEB__ENABLE"] == "true"
    assert params["ORTHANC__AUTHENTICATION_ENABLED"] == "true"
    assert params["ORTHANC__OVERWRITE_INSTANCES"] == "false"
    assert params["ORTHANC__PYTHON_SCRIPT"] == C.AUTHZ_SCRIPT_PATH
    assert params["ORTHANC__DICOM_PIPELINE__HEALTH_PORT"] == str(C.HEALTH_PORT)
    # Index: the image's own PostgreSQL names (not POSTGRE_SQL), shared by several tasks.
    assert params["ORTHANC__POSTGRESQL__ENABLE_INDEX"] == "true"
    assert params["ORTHANC__POSTGRESQL__LOCK"] == "false"
    assert not any("POSTGRE_SQL" in name for name in params)


def test_orthanc_gets_the_rds_root_ca_as_a_parameter_and_downloads_nothing(
    bare_stack: cdk.Stack,
) -> None:
    # Given the Orthanc service with the region's RDS root CA
    orthanc_service(bare_stack)
    t = Template.from_stack(bare_stack)
    params = _parameters(t)
    # Then the certificate is a standard String parameter, given to the task as a secret
    assert params[entrypoint.CA] == region_root(REGION)
    assert len(params[entrypoint.CA].encode()) <= 4096  # a standard parameter
    assert params[entrypoint.CA_PATH] == C.RDS_CA_BUNDLE_PATH
    assert "RDS_CA_BUNDLE_URL" not in params
    container = _container(t)
    assert {entrypoint.CA, entrypoint.CA_PATH} <= {s["Name"] for s in container["Secrets"]}
    # And the entry point is this repository's file, run by the image's python3: no download
    assert container["EntryPoint"] == ["python3", "-c"]
    assert container["Command"] == [ENTRYPOINT]
    compile(ENTRYPOINT, "orthanc_entrypoint.py", "exec")
    for word in ("http", "urlopen", "urllib", "socket", "curl", "wget"):
        assert word not in ENTRYPOINT
    assert entrypoint.IMAGE_ENTRYPOINT == ["/docker-entrypoint.sh", "/tmp/orthanc.json"]


def test_the_authorization_plugin_reaches_the_task_in_standard_parameters(
    bare_stack: cdk.Stack,
) -> None:
    # Given the Orthanc service
    orthanc_service(bare_stack)
    params = _parameters(Template.from_stack(bare_stack))
    # Then the parts, in order, are pipeline/orthanc/authz.py as it is
    parts = sorted(
        (int(k[len(entrypoint.SCRIPT) :]), v)
        for k, v in params.items()
        if k.startswith(entrypoint.SCRIPT)
    )
    assert [i for i, _ in parts] == list(range(len(parts)))
    assert "".join(v for _, v in parts) == AUTHZ_SCRIPT == Path(authz.__file__).read_text()
    assert all(len(v.encode()) <= 4096 for _, v in parts)
    # And Orthanc loads it from where the entry point writes it
    assert params["ORTHANC__PYTHON_SCRIPT"] == C.AUTHZ_SCRIPT_PATH


def test_the_task_definition_pins_the_plugins_sha256_computed_from_the_file(
    bare_stack: cdk.Stack,
) -> None:
    # Given the Orthanc service
    orthanc_service(bare_stack)
    container = _container(Template.from_stack(bare_stack))
    # Then its environment carries the SHA-256 of pipeline/orthanc/authz.py as it is on disk
    environment = {e["Name"]: e["Value"] for e in container["Environment"]}
    on_disk = hashlib.sha256(Path(authz.__file__).read_bytes()).hexdigest()
    assert environment[entrypoint.SCRIPT_SHA256] == on_disk == AUTHZ_SHA256
    # And it is in the task definition itself, not in a parameter someone else may write
    assert entrypoint.SCRIPT_SHA256 not in {s["Name"] for s in container["Secrets"]}


def test_chunks_keep_the_text_and_refuse_what_is_not_ascii() -> None:
    assert "".join(chunks(AUTHZ_SCRIPT)) == AUTHZ_SCRIPT
    assert chunks("") == []
    with pytest.raises(ValueError, match="ASCII"):
        chunks("é")


def test_two_generated_users_secrets_encrypted_with_their_own_key(bare_stack: cdk.Stack) -> None:
    orthanc, _, _ = orthanc_service(bare_stack)
    t = Template.from_stack(bare_stack)
    secrets = resources(t, "AWS::SecretsManager::Secret")
    key = {"Fn::GetAtt": [_lid(orthanc.secrets_key), "Arn"]}
    for secret, user in (
        (orthanc.admin_secret, C.ADMIN_USER),
        (orthanc.uploader_secret, C.UPLOADER_USER),
    ):
        props = secrets[_lid(secret)]["Properties"]
        assert "SecretString" not in props
        assert props["KmsKeyId"] == key
        generated = props["GenerateSecretString"]
        assert generated["SecretStringTemplate"] == "{}"
        assert generated["GenerateStringKey"] == user
        assert generated["PasswordLength"] >= 32 and generated["ExcludePunctuation"] is True
    # The administrators' secret keeps the logical ID of the single users secret it replaces
    assert orthanc.admin_secret.node.id == "Users"


def _lid(construct: Any) -> str:
    child = construct.node.default_child
    return str(cdk.Stack.of(construct).resolve(child.logical_id))


def test_orthanc_refuses_a_ca_that_is_no_certificate_or_too_large(bare_stack: cdk.Stack) -> None:
    archive = LogArchive(bare_stack, "Logs")
    network = Network(bare_stack, "Net", log_archive=archive)
    db = database_like(bare_stack, network, archive)
    pem = region_root(REGION)
    for i, (bad, message) in enumerate([("not a certificate", "PEM"), (pem * 3, "4 KB")]):
        with pytest.raises(ValueError, match=message):
            OrthancService(
                bare_stack,
                f"Orthanc{i}",
                vpc=network.vpc,
                subnets=network.app_subnets,
                environment="test",
                image=cdk.aws_ecs.ContainerImage.from_registry(IMAGE),
                bucket_name="images-bucket",
                database_host=db.endpoint_address,
                database_port=db.endpoint_port,
                database_secret=db.secret,
                database_ca=bad,
                log_archive=archive,
            )


def test_orthanc_service_health_circuit_breaker_scaling_and_encrypted_logs(
    bare_stack: cdk.Stack,
) -> None:
    orthanc_service(bare_stack)
    t = Template.from_stack(bare_stack)
    service = only(t, "AWS::ECS::Service")
    assert service["DeploymentConfiguration"]["DeploymentCircuitBreaker"] == {
        "Enable": True,
        "Rollback": True,
    }
    assert service["NetworkConfiguration"]["AwsvpcConfiguration"]["AssignPublicIp"] == "DISABLED"
    container = _container(t)
    # The container's own check is liveness: the plugin's /livez on its port, which reads
    # nothing from the index database (not the image's probe, which reads /changes)
    command = container["HealthCheck"]["Command"]
    assert command[0] == "CMD-SHELL"
    assert f"http://127.0.0.1:{C.HEALTH_PORT}{authz.LIVENESS_PATH}" in command[1]
    assert authz.HEALTH_PATH not in command[1] and "/probes/" not in command[1]
    assert "changes" not in command[1]
    compile(command[1].split('"')[1], "health-check", "exec")  # the python3 -c program
    assert [m["ContainerPort"] for m in container["PortMappings"]] == [
        C.HTTP_PORT,
        C.HEALTH_PORT,
    ]
    assert container["LogConfiguration"]["LogDriver"] == "awslogs"
    t.resource_count_is("AWS::ApplicationAutoScaling::ScalingPolicy", 1)  # CPU; requests later
    for group in resources(t, "AWS::Logs::LogGroup").values():
        assert "KmsKeyId" in group["Properties"]
    only(t, "AWS::ECS::Cluster")  # exactly one cluster
    (group,) = [
        g["Properties"]
        for g in resources(t, "AWS::EC2::SecurityGroup").values()
        if g["Properties"]["GroupDescription"].startswith("Orthanc tasks")
    ]
    assert [(r["FromPort"], r["CidrIp"]) for r in group["SecurityGroupEgress"]] == [
        (443, "0.0.0.0/0")
    ]
    assert "SecurityGroupIngress" not in group  # only the load balancer, added with it


# ---------------------------------------------------------------- the entry point


def _inputs(tmp_path: Path, **overrides: str) -> dict[str, str]:
    env = {
        **to_environment(_deployed()),
        "PATH": "/usr/bin",
        entrypoint.CA: region_root(REGION),
        entrypoint.CA_PATH: str(tmp_path / "rds-ca.pem"),
        entrypoint.SCRIPT_PATH: str(tmp_path / "authz.py"),
        entrypoint.ADMINISTRATORS: json.dumps({"admin": "A" * 32}),
        entrypoint.UPLOADERS: json.dumps({"uploader": "U" * 32, "ct-scanner-2": "C" * 32}),
        **{f"{entrypoint.SCRIPT}{i}": part for i, part in enumerate(chunks(AUTHZ_SCRIPT))},
        entrypoint.SCRIPT_SHA256: AUTHZ_SHA256,
    }
    env.update(overrides)
    return env


def test_entry_point_writes_the_files_and_builds_the_users(tmp_path: Path) -> None:
    # Given the variables the task starts with
    env = entrypoint.prepare(_inputs(tmp_path))
    # Then the CA and the plugin are where the configuration says
    assert (tmp_path / "rds-ca.pem").read_text() == region_root(REGION).rstrip("\n") + "\n"
    assert (tmp_path / "authz.py").read_text() == AUTHZ_SCRIPT
    assert oct((tmp_path / "authz.py").stat().st_mode & 0o777) == "0o600"
    # And the users are both secrets, administrators first (the container check signs in
    # as the first user), their roles are the secrets' names, the inputs are gone
    users = json.loads(env["ORTHANC__REGISTERED_USERS"])
    assert list(users) == ["admin", "uploader", "ct-scanner-2"]
    assert json.loads(env["ORTHANC__DICOM_PIPELINE__ADMINISTRATORS"]) == ["admin"]
    assert json.loads(env["ORTHANC__DICOM_PIPELINE__UPLOADERS"]) == ["ct-scanner-2", "uploader"]
    assert not any(k.startswith(entrypoint.SCRIPT) for k in env)
    assert entrypoint.ADMINISTRATORS not in env and entrypoint.UPLOADERS not in env
    # And the plugin reads from the image's configuration what it needs
    policy = authz.Policy.from_configuration(image_configuration(env))
    assert policy.administrators == {"admin"}
    assert policy.uploaders == {"uploader", "ct-scanner-2"}
    assert policy.upload_path == "/dicom-web/studies"
    assert authz.health_port(image_configuration(env)) == C.HEALTH_PORT
    basic = base64.b64encode(b"ct-scanner-2:" + b"C" * 32).decode()
    assert policy.allows("POST", "/dicom-web/studies", {"authorization": f"Basic {basic}"})
    assert not policy.allows("GET", "/patients", {"authorization": f"Basic {basic}"})


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({entrypoint.CA: "no certificate"}, "no PEM certificate"),
        ({entrypoint.CA: ""}, "RDS_CA_BUNDLE is not set"),
        ({f"{entrypoint.SCRIPT}0": "def (:"}, entrypoint.SCRIPT_MISMATCH),
        (
            {
                f"{entrypoint.SCRIPT}0": "def (:",
                entrypoint.SCRIPT_SHA256: entrypoint.script_sha256(
                    "def (:" + "".join(chunks(AUTHZ_SCRIPT)[1:])
                ),
            },
            "not a Python script",
        ),
        ({entrypoint.ADMINISTRATORS: "not json"}, "not JSON"),
        ({entrypoint.ADMINISTRATORS: "{}"}, "JSON object"),
        ({entrypoint.UPLOADERS: json.dumps({"up:loader": "U" * 32})}, "user name"),
        ({entrypoint.UPLOADERS: json.dumps({"uploader": "short"})}, "shorter than 16"),
        ({entrypoint.UPLOADERS: json.dumps({"admin": "U" * 32})}, "users in both"),
    ],
)
def test_entry_point_refuses_what_is_missing_or_malformed(
    tmp_path: Path, override: dict[str, str], message: str
) -> None:
    with pytest.raises(entrypoint.StartupError, match=message) as caught:
        entrypoint.prepare(_inputs(tmp_path, **override))
    assert not re.search(r"[AUC]{16}", str(caught.value))  # no password in the reason


def test_entry_point_refuses_a_plugin_that_is_not_the_deployed_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given parameters whose plugin someone changed after the deploy (valid Python still)
    tampered = AUTHZ_SCRIPT.replace(
        'return method == "POST" and uri == self.upload_path', "return True"
    )
    assert tampered != AUTHZ_SCRIPT
    compile(tampered, "authz.py", "exec")
    parts = {f"{entrypoint.SCRIPT}{i}": p for i, p in enumerate(chunks(tampered))}
    env = {k: v for k, v in _inputs(tmp_path).items() if not k.startswith(entrypoint.SCRIPT)}
    calls: list[object] = []
    # When the container starts
    with pytest.raises(SystemExit) as stopped:
        entrypoint.main({**env, **parts}, execve=lambda *a: calls.append(a))
    # Then Orthanc is never started, the plugin is never written, and one coded line says
    # why without the hash or the script's text
    assert stopped.value.code == 1 and calls == []
    assert not (tmp_path / "authz.py").exists()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and entrypoint.SCRIPT_MISMATCH in err
    assert AUTHZ_SHA256 not in err and entrypoint.script_sha256(tampered) not in err
    assert "return True" not in err


def test_entry_point_refuses_to_start_without_the_pinned_hash(tmp_path: Path) -> None:
    env = _inputs(tmp_path)
    del env[entrypoint.SCRIPT_SHA256]
    with pytest.raises(entrypoint.StartupError, match=entrypoint.SCRIPT_SHA256):
        entrypoint.prepare(env)
    assert not (tmp_path / "authz.py").exists()


def test_entry_point_refuses_a_missing_part_of_the_plugin(tmp_path: Path) -> None:
    env = _inputs(tmp_path)
    last = max(int(k[len(entrypoint.SCRIPT) :]) for k in env if k.startswith(entrypoint.SCRIPT))
    del env[f"{entrypoint.SCRIPT}0" if last == 0 else f"{entrypoint.SCRIPT}{last - 1}"]
    with pytest.raises(entrypoint.StartupError, match="not all set"):
        entrypoint.prepare(env)


def test_entry_point_hands_over_to_the_image_or_stops_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a good environment, the image's entry point gets the prepared one
    calls: list[tuple[str, list[str], dict[str, str]]] = []
    entrypoint.main(_inputs(tmp_path), execve=lambda *args: calls.append(args))
    ((path, argv, env),) = calls
    assert (path, argv) == ("/docker-entrypoint.sh", ["/docker-entrypoint.sh", "/tmp/orthanc.json"])
    assert "ORTHANC__REGISTERED_USERS" in env
    # Given a bad one, the container stops with one line and never starts Orthanc
    with pytest.raises(SystemExit) as stopped:
        entrypoint.main(
            _inputs(tmp_path, **{entrypoint.CA: "x"}), execve=lambda *a: calls.append(a)
        )
    assert stopped.value.code == 1 and len(calls) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot start Orthanc" in err
