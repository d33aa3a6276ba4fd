"""Starting the local Orthanc, without starting it: installation checks, configuration,
environment, the plugin's virtual environment stamp, and how ``local up`` reports failures.

The real process runs in the integration layer (tests/integration).
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.local.stack import LocalStack, StackInfo
from pipeline.orthanc import config, local, storage
from pipeline.orthanc.local import (
    Installation,
    LocalOrthanc,
    OrthancNotInstalled,
    ensure_plugin_venv,
    find_installation,
)

ROOT = Path(__file__).resolve().parents[2]


def _installation(tmp_path: Path, *, postgresql: bool = False) -> Installation:
    names = ["dicomweb", "python", *(["postgresql"] if postgresql else [])]
    return Installation(
        binary=tmp_path / "Orthanc",
        plugins={name: tmp_path / f"lib{name}.so" for name in names},
        python=Path("/usr/bin/python3"),
    )


def test_missing_packages_are_one_line_that_says_make_orthanc(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a machine without Debian's Orthanc packages
    monkeypatch.setattr(local, "_BINARIES", (tmp_path / "Orthanc",))
    monkeypatch.setattr(local, "_PLUGIN_DIR", tmp_path)
    monkeypatch.setattr(local.shutil, "which", lambda name: None)
    # When the installation is looked up
    with pytest.raises(OrthancNotInstalled) as raised:
        find_installation()
    # Then one line names what is missing and the make target that installs it
    message = str(raised.value)
    assert "\n" not in message
    assert "the Orthanc program" in message and "libOrthancPython.so" in message
    assert "run `make orthanc`" in message


def test_configuration_comes_from_the_one_source(tmp_path: Path) -> None:
    # Given a local Orthanc on a known port with a known password
    orthanc = LocalOrthanc(
        bucket="b", s3_endpoint="http://127.0.0.1:1", http_port=18042, password="pw"
    )
    # When its configuration is made
    made = orthanc.configuration(tmp_path, _installation(tmp_path))
    # Then it is config.local() with the run's values: loopback only, authentication on,
    # the one user, no DICOM port, the storage script as the Python plugin's script
    assert made == config.local(
        name="dicom-pipeline-local",
        http_port=18042,
        users={"dicom-pipeline": "pw"},
        storage_directory=str(tmp_path / "db"),
        plugins=[str(tmp_path / "libdicomweb.so"), str(tmp_path / "libpython.so")],
        python_script=str(Path(storage.__file__).resolve()),
    )
    assert made["RemoteAccessAllowed"] is False
    assert made["AuthenticationEnabled"] is True
    assert made["DicomServerEnabled"] is False
    assert made["RegisteredUsers"] == {"dicom-pipeline": "pw"}
    assert "PostgreSQL" not in made


def test_a_postgresql_index_loads_its_plugin(tmp_path: Path) -> None:
    uri = "postgresql://u:p@127.0.0.1:5/db?sslmode=verify-full&sslrootcert=/ca.pem"
    orthanc = LocalOrthanc(bucket="b", s3_endpoint="http://x", postgresql_uri=uri)
    made = orthanc.configuration(tmp_path, _installation(tmp_path, postgresql=True))
    assert made["PostgreSQL"]["ConnectionUri"] == uri
    assert made["PostgreSQL"]["EnableIndex"] is True
    assert str(tmp_path / "libpostgresql.so") in made["Plugins"]


def test_every_run_has_its_own_password() -> None:
    first = LocalOrthanc(bucket="b", s3_endpoint="http://x").password
    second = LocalOrthanc(bucket="b", s3_endpoint="http://x").password
    assert first != second and len(first) >= 24


def test_orthanc_gets_test_credentials_and_nothing_of_the_callers_aws_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a shell with real-looking AWS settings and another virtualenv
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "a-real-secret")
    monkeypatch.setenv("AWS_PROFILE", "production")
    monkeypatch.setenv("VIRTUAL_ENV", "/somewhere/.venv")
    orthanc = LocalOrthanc(bucket="images", s3_endpoint="http://127.0.0.1:5000")
    # When Orthanc's environment is made
    env = orthanc.environment(Path("/venv/lib/python3.11/site-packages"))
    # Then it carries the local S3's endpoint, test credentials, the bucket and the plugin's
    # packages, and none of the caller's settings
    assert env["AWS_ENDPOINT_URL"] == "http://127.0.0.1:5000"
    assert env["AWS_SECRET_ACCESS_KEY"] == "testing"
    assert env[storage.BUCKET_VARIABLE] == "images"
    assert env[storage.ROOT_PATH_VARIABLE] == "orthanc"  # Orthanc's prefix, as on AWS
    assert env["PYTHONPATH"] == "/venv/lib/python3.11/site-packages"
    assert "AWS_PROFILE" not in env and "VIRTUAL_ENV" not in env
    assert "a-real-secret" not in env.values()


def test_the_local_orthanc_stores_under_orthancs_prefix_as_the_deployed_one_does(
    aws_env: None,
) -> None:
    # Given the local Orthanc's environment, and the deployed Orthanc's S3 plugin settings
    env = LocalOrthanc(bucket="images", s3_endpoint="http://127.0.0.1:5000").environment(
        Path("/venv")
    )
    deployed = config.deployed(
        name="o", bucket="images", region="us-east-1", postgresql_uri="postgresql://h/db"
    )
    # When the storage area is made from that environment
    area = storage.from_environment(env)
    # Then a DICOM file's key is under Orthanc's prefix, the root path the S3 plugin has
    key = storage.object_key("6b9e0f6c-3c1f-4c4e-9d3a-1f2e3d4c5b6a", storage.DICOM, area.root_path)
    assert key == "orthanc/6b9e0f6c-3c1f-4c4e-9d3a-1f2e3d4c5b6a.dcm"
    assert area.root_path == deployed["AwsS3Storage"]["RootPath"]


def test_a_built_plugin_venv_is_reused_without_pip(tmp_path: Path) -> None:
    # Given a venv whose stamp matches this interpreter and the requirements
    venv = tmp_path / "orthanc-venv"
    site = venv / "lib" / "site-packages"
    site.mkdir(parents=True)
    version = subprocess.run(
        [sys.executable, "-c", "import sys; print(sys.version)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    stamp = venv / ".dicom-pipeline-stamp"
    stamp.write_text(json.dumps({"python": version, "requirements": local.PLUGIN_REQUIREMENTS}))
    stamp.with_suffix(".site").write_text(json.dumps(str(site)))
    # When it is asked for again
    found = ensure_plugin_venv(venv, python=Path(sys.executable))
    # Then it is returned as is: nothing was rebuilt
    assert found == site
    assert not (venv / "bin").exists()


def test_the_make_target_and_the_code_name_the_same_packages() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    line = next(x for x in makefile.splitlines() if x.startswith("ORTHANC_PACKAGES :="))
    assert tuple(line.split(":=", 1)[1].split()) == local.DEBIAN_PACKAGES
    assert "\northanc:" in makefile
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").replace("\\\n", " ")
    installs = next(x for x in ci.splitlines() if x.strip().startswith("for pkg in"))
    assert set(local.DEBIAN_PACKAGES) <= set(installs.replace(";", " ").split()), installs


def test_orthanc_needs_moto_as_a_server() -> None:
    with pytest.raises(ValueError, match="server=True"):
        LocalStack(server=False, orthanc=True)


def test_stack_json_is_private_and_names_orthanc(tmp_path: Path) -> None:
    # Given a stack.json another run left readable by everyone
    path = tmp_path / "stack.json"
    path.write_text("{}")
    path.chmod(0o644)
    stack = LocalStack(server=False)
    stack.info = StackInfo(
        endpoint_url="http://127.0.0.1:1",
        region="us-east-1",
        bucket="b",
        queue_url="q",
        dlq_url="d",
        table="t",
        state_machine_arn="arn",
        orthanc_url="http://127.0.0.1:2",
        dicomweb_url="http://127.0.0.1:2/dicom-web",
        orthanc_username="dicom-pipeline",
        orthanc_password="secret",
    )
    # When the stack writes its facts
    stack.write_info(path)
    # Then only the owner can read them, and they name Orthanc and its credentials
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    written = json.loads(path.read_text())
    assert written["orthanc_url"] == "http://127.0.0.1:2"
    assert written["dicomweb_url"] == "http://127.0.0.1:2/dicom-web"
    assert written["orthanc_username"] == "dicom-pipeline"
    assert written["orthanc_password"] == "secret"


def test_local_up_without_orthanc_installed_is_one_line_and_exit_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a machine where the local stack cannot start Orthanc
    def refuse(self: LocalStack) -> LocalStack:
        assert self.orthanc, "local up starts Orthanc by default"
        raise OrthancNotInstalled(
            "Orthanc is not installed (missing the Orthanc program): run `make orthanc`"
        )

    monkeypatch.setattr(LocalStack, "start", refuse)
    # When `local up` runs
    status = main(["local", "up", "--state-dir", str(tmp_path)])
    # Then it exits 1 with one line that says what to do, and writes no stack.json
    err = capsys.readouterr().err.splitlines()
    assert status == 1
    assert err == [
        "dicom-pipeline: error: Orthanc is not installed (missing the Orthanc program): "
        "run `make orthanc`; or run without Orthanc: local up --no-orthanc"
    ]
    assert not (tmp_path / "stack.json").exists()


def test_no_orthanc_turns_it_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    seen: list[bool] = []

    def record(self: LocalStack) -> LocalStack:
        seen.append(self.orthanc)
        raise KeyboardInterrupt

    monkeypatch.setattr(LocalStack, "start", record)
    assert main(["local", "up", "--no-orthanc", "--state-dir", str(tmp_path)]) == 130
    assert seen == [False]


def test_a_child_started_with_the_prefix_dies_when_its_parent_is_killed() -> None:
    import signal
    import subprocess
    import sys
    import time

    from pipeline.orthanc.local import dying_with_parent

    # Given a parent process that starts a long sleep through the prefix, then is SIGKILLed
    code = (
        "import subprocess, sys, time\n"
        f"p = subprocess.Popen({dying_with_parent()!r} + ['sleep', '300'])\n"
        "print(p.pid, flush=True)\n"
        "time.sleep(300)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    deadline = time.monotonic() + 5
    while Path(f"/proc/{child}/comm").read_text().strip() != "sleep":  # setpriv is done
        assert time.monotonic() < deadline
        time.sleep(0.01)
    parent.send_signal(signal.SIGKILL)
    parent.wait()

    # Then the child is dead too within a few seconds (gone, or a zombie no one reaped yet:
    # orphans go to PID 1, which need not reap them here)
    def running() -> bool:
        try:
            status = Path(f"/proc/{child}/status").read_text()
        except OSError:
            return False
        return "\nState:\tZ" not in status

    deadline = time.monotonic() + 5
    while running() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not running()


def test_leftovers_of_dead_runs_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    import os
    import subprocess

    from pipeline.orthanc.local import FOLDER_PREFIX, OWNER_FILE, remove_leftovers

    # Given the folders of a run whose process is dead, of a live run, and a foreign one
    dead = subprocess.Popen(["true"])
    dead.wait()
    folders = {}
    for name, owner in (("dead", str(dead.pid)), ("live", str(os.getppid())), ("foreign", None)):
        folder = tmp_path / f"{FOLDER_PREFIX}{name}"
        folder.mkdir()
        (folder / "orthanc.json").write_text('{"RegisteredUsers": {"u": "secret"}}')
        if owner is not None:
            (folder / OWNER_FILE).write_text(owner)
        folders[name] = folder
    # When leftovers are removed
    removed = remove_leftovers(tmp_path)
    # Then only the dead run's folder (and its password) is gone
    assert removed == [folders["dead"]]
    assert not folders["dead"].exists()
    assert folders["live"].exists() and folders["foreign"].exists()
