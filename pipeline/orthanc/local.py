"""Start and stop a local Orthanc: Debian's packages, loopback, attachments in the local S3.

:class:`LocalOrthanc` runs ``/usr/sbin/Orthanc`` with a configuration from
:func:`pipeline.orthanc.config.local` in a private temporary folder (mode 0700, removed on
stop): authentication on, one user ``dicom-pipeline`` with a random password per run, remote
access off, no DICOM port, HTTP on a free port (Orthanc 1.10 binds every interface; remote
access off makes it answer loopback only). The DICOMweb plugin serves ``/dicom-web/``; the
Python plugin runs :mod:`pipeline.orthanc.storage`, so attachments go to the local bucket with
the official S3 plugin's keys under Orthanc's prefix (``orthanc/<uuid>.dcm``, as on AWS); with
``postgresql_uri`` the PostgreSQL plugin keeps the index.

The Python plugin embeds Debian's ``python3``; boto3 comes from a virtual environment built
once with ``/usr/bin/python3`` (never the project's ``.venv``: another interpreter) under
``.local/orthanc-venv``, and reaches the plugin through ``PYTHONPATH``.

Examples
--------
>>> with LocalOrthanc(bucket="b", s3_endpoint="http://127.0.0.1:5000") as orthanc:  # doctest: +SKIP
...     print(orthanc.info.dicomweb_url)
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.names import ORTHANC_ROOT_PATH
from pipeline.orthanc import config as orthanc_config
from pipeline.orthanc import storage

__all__ = [
    "DEBIAN_PACKAGES",
    "DEFAULT_VENV",
    "USERNAME",
    "Installation",
    "LocalOrthanc",
    "OrthancError",
    "OrthancInfo",
    "OrthancNotInstalled",
    "dying_with_parent",
    "ensure_plugin_venv",
    "find_installation",
    "remove_leftovers",
]

#: What ``make orthanc`` installs (``python3-venv``: the plugin's venv needs ``ensurepip``).
DEBIAN_PACKAGES = (
    "orthanc",
    "orthanc-dicomweb",
    "orthanc-python",
    "orthanc-postgresql",
    "postgresql",
    "python3-venv",
)
USERNAME = "dicom-pipeline"
DEFAULT_VENV = Path(".local/orthanc-venv")
#: The plugin's only dependency, in the range the project itself uses.
PLUGIN_REQUIREMENTS = ("boto3>=1.35,<2",)

_BINARIES = (Path("/usr/sbin/Orthanc"), Path("/usr/bin/Orthanc"))
_PLUGIN_DIR = Path("/usr/share/orthanc/plugins")
_PLUGINS = {
    "dicomweb": "libOrthancDicomWeb.so",
    "python": "libOrthancPython.so",
    "postgresql": "libOrthancPostgreSQLIndex.so",
}
#: Debian's interpreter, the one libOrthancPython.so embeds.
SYSTEM_PYTHON = Path("/usr/bin/python3")
_INSTALL_HINT = "run `make orthanc` to install Debian's packages"


class OrthancError(RuntimeError):
    """The local Orthanc cannot run; the message says why in one line."""


class OrthancNotInstalled(OrthancError):
    """Debian's Orthanc packages (or the interpreter its Python plugin embeds) are missing."""


@dataclass(frozen=True)
class Installation:
    """Where Debian put Orthanc and the plugins this project loads."""

    binary: Path
    plugins: dict[str, Path]
    python: Path


def find_installation(*, postgresql: bool = False) -> Installation:
    """Locate Orthanc, its plugins and ``/usr/bin/python3``.

    Raises
    ------
    OrthancNotInstalled
        Something is missing; the message names it and says to run ``make orthanc``.
    """
    binary = next((b for b in _BINARIES if b.is_file()), None)
    found = shutil.which("Orthanc")
    if binary is None and found:
        binary = Path(found)
    wanted = ["dicomweb", "python", *(["postgresql"] if postgresql else [])]
    plugins = {name: _PLUGIN_DIR / _PLUGINS[name] for name in wanted}
    missing = [] if binary else ["the Orthanc program"]
    missing += [path.name for path in plugins.values() if not path.is_file()]
    if not SYSTEM_PYTHON.is_file():
        missing.append(str(SYSTEM_PYTHON))
    if missing:
        raise OrthancNotInstalled(
            f"Orthanc is not installed (missing {', '.join(missing)}): " + _INSTALL_HINT
        )
    assert binary is not None
    return Installation(binary=binary, plugins=plugins, python=SYSTEM_PYTHON)


# -- processes that die with their parent, and what a killed run leaves ----------------------
#: Each run's temporary folder (its configuration holds the password) starts with this.
FOLDER_PREFIX = "dicom-pipeline-orthanc-"
#: In that folder: the PID of the process that started Orthanc.
OWNER_FILE = "owner.pid"


def dying_with_parent() -> list[str]:
    """The command prefix that makes a child die with this process, even on SIGKILL:
    util-linux's ``setpriv --pdeathsig KILL`` (the kernel's ``PR_SET_PDEATHSIG``, set just
    before the child's program starts; no Python code runs between fork and exec, which
    threads would make unsafe). Empty where ``setpriv`` is missing (not Linux).

    The signal follows the *thread* that started the child: start it from a thread that lives
    as long as the run (the main thread).
    """
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--"] if setpriv else []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_leftovers(tmp: Path | None = None) -> list[Path]:
    """Remove the temporary folders of runs whose owner is dead (killed before it could
    clean up: the folder holds the run's password); returns what was removed. Folders of
    live runs, and folders without an owner file, are left alone."""
    removed = []
    for folder in Path(tmp or tempfile.gettempdir()).glob(f"{FOLDER_PREFIX}*"):
        try:
            owner = int((folder / OWNER_FILE).read_text(encoding="utf-8").strip())
        except (OSError, ValueError):
            continue
        if owner != os.getpid() and not _alive(owner):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


# -- the plugin's virtual environment --------------------------------------------------------
def _clean_env() -> dict[str, str]:
    """This process's environment without another interpreter's or virtualenv's settings."""
    drop = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "PIP_REQUIRE_VIRTUALENV")
    return {k: v for k, v in os.environ.items() if k not in drop}


def _run(argv: list[str], what: str, timeout: float = 600) -> str:
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, env=_clean_env(), check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise OrthancError(f"{what} failed: {exc}") from None
    if done.returncode != 0:
        lines = [line for line in (done.stderr or done.stdout).splitlines() if line.strip()]
        last = lines[-1].strip() if lines else f"exit status {done.returncode}"
        raise OrthancError(f"{what} failed: {last}")
    return done.stdout


def ensure_plugin_venv(venv: Path = DEFAULT_VENV, *, python: Path = SYSTEM_PYTHON) -> Path:
    """Build (once) the Python plugin's virtual environment; return its site-packages.

    Idempotent and safe to call from several processes at once (a file lock): a stamp
    records the interpreter and requirements it was built for, and anything else rebuilds it.

    Raises
    ------
    OrthancNotInstalled
        ``python`` cannot make virtual environments (Debian's ``python3-venv``).
    OrthancError
        pip failed (e.g. no access to the package index).
    """
    venv = venv.absolute()
    venv.parent.mkdir(parents=True, exist_ok=True)
    stamp = venv / ".dicom-pipeline-stamp"
    with open(venv.parent / f".{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        version = _run([str(python), "-c", "import sys; print(sys.version)"], f"{python}").strip()
        want = json.dumps({"python": version, "requirements": PLUGIN_REQUIREMENTS})
        if stamp.is_file() and stamp.read_text(encoding="utf-8") == want:
            site = Path(json.loads(stamp.with_suffix(".site").read_text(encoding="utf-8")))
            if site.is_dir():
                return site
        probe = subprocess.run(
            [str(python), "-c", "import ensurepip, venv"],
            capture_output=True,
            env=_clean_env(),
            check=False,
        )
        if probe.returncode != 0:
            raise OrthancNotInstalled(
                f"{python} cannot make virtual environments (missing python3-venv): "
                + _INSTALL_HINT
            )
        _run([str(python), "-m", "venv", "--clear", str(venv)], f"making {venv}")
        vpython = str(venv / "bin" / "python")
        _run(
            [
                vpython,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                *PLUGIN_REQUIREMENTS,
            ],
            f"installing boto3 into {venv}",
        )
        purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
        site = Path(_run([vpython, "-c", purelib], f"{vpython}").strip())
        _run([vpython, "-c", "import boto3"], f"importing boto3 from {venv}")
        stamp.with_suffix(".site").write_text(json.dumps(str(site)), encoding="utf-8")
        stamp.write_text(want, encoding="utf-8")
        return site


# -- the process -----------------------------------------------------------------------------
@dataclass(frozen=True)
class OrthancInfo:
    """What clients need: the REST root, the DICOMweb root and the credentials."""

    url: str
    dicomweb_url: str
    username: str
    password: str


def _free_port() -> int:
    # Orthanc 1.10 binds every interface: the port must be free on all of them.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


class LocalOrthanc:
    """One Orthanc process, started and stopped as a unit.

    Parameters
    ----------
    bucket, s3_endpoint, region:
        Where attachments go (the local stack's bucket on moto's server).
    http_port:
        Orthanc's HTTP port (0: a free one).
    postgresql_uri:
        Keep the index in this PostgreSQL database (a libpq URI, e.g. with
        ``sslmode=verify-full&sslrootcert=...``) instead of SQLite in the private folder.
    venv:
        The Python plugin's virtual environment (built on first use).
    password:
        The user's password (default: a new random one).
    startup_timeout:
        How long to wait for ``/system`` to answer.
    """

    def __init__(
        self,
        *,
        bucket: str,
        s3_endpoint: str,
        region: str = "us-east-1",
        http_port: int = 0,
        postgresql_uri: str | None = None,
        venv: Path = DEFAULT_VENV,
        password: str | None = None,
        access_key: str = "testing",
        secret_key: str = "testing",
        name: str = "dicom-pipeline-local",
        startup_timeout: float = 60.0,
    ) -> None:
        self.bucket = bucket
        self.s3_endpoint = s3_endpoint
        self.region = region
        self.http_port = http_port
        self.postgresql_uri = postgresql_uri
        self.venv = venv
        self.password = password or secrets.token_urlsafe(24)
        self.access_key = access_key
        self.secret_key = secret_key
        self.name = name
        self.startup_timeout = startup_timeout
        self.info: OrthancInfo | None = None
        self.folder: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The REST root (``http://127.0.0.1:PORT``)."""
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def log_path(self) -> Path | None:
        """Orthanc's output (while it runs; the folder goes on stop)."""
        return self.folder / "orthanc.log" if self.folder else None

    @property
    def pid(self) -> int | None:
        """The process ID of the running Orthanc."""
        return self._process.pid if self._process else None

    def configuration(self, folder: Path, installation: Installation) -> dict[str, Any]:
        """Orthanc's configuration for this run (from :func:`pipeline.orthanc.config.local`)."""
        return orthanc_config.local(
            name=self.name,
            http_port=self.http_port,
            users={USERNAME: self.password},
            storage_directory=str(folder / "db"),
            plugins=[str(p) for p in installation.plugins.values()],
            python_script=str(Path(storage.__file__).resolve()),
            postgresql_uri=self.postgresql_uri,
        )

    def environment(self, site_packages: Path) -> dict[str, str]:
        """Orthanc's environment: nothing inherited but locale and paths, the plugin's
        interpreter settings, the local S3's endpoint and test credentials, the bucket and the
        root path."""
        keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "TZ")
        env = {k: v for k, v in os.environ.items() if k in keep or k.startswith("LC_")}
        env.update(
            PYTHONPATH=str(site_packages),
            PYTHONDONTWRITEBYTECODE="1",
            PYTHONNOUSERSITE="1",
            AWS_ENDPOINT_URL=self.s3_endpoint,
            AWS_DEFAULT_REGION=self.region,
            AWS_ACCESS_KEY_ID=self.access_key,
            AWS_SECRET_ACCESS_KEY=self.secret_key,
            AWS_EC2_METADATA_DISABLED="true",
        )
        env[storage.BUCKET_VARIABLE] = self.bucket
        # Under Orthanc's prefix, as the S3 plugin's RootPath puts them on AWS: the bucket
        # notifies the ingest queue of nothing else.
        env[storage.ROOT_PATH_VARIABLE] = ORTHANC_ROOT_PATH
        return env

    def start(self) -> OrthancInfo:
        """Start Orthanc and wait until it answers ``/system`` with the credentials.

        Raises
        ------
        OrthancNotInstalled
            The packages are missing (nothing was started).
        OrthancError
            Orthanc exited or did not answer in time (its last error line is in the message).
        """
        installation = find_installation(postgresql=self.postgresql_uri is not None)
        site_packages = ensure_plugin_venv(self.venv, python=installation.python)
        self.http_port = self.http_port or _free_port()
        remove_leftovers()
        self.folder = Path(tempfile.mkdtemp(prefix=FOLDER_PREFIX))
        try:
            (self.folder / OWNER_FILE).write_text(str(os.getpid()), encoding="utf-8")
            (self.folder / "db").mkdir()
            config_path = self.folder / "orthanc.json"
            text = json.dumps(self.configuration(self.folder, installation), indent=2)
            fd = os.open(config_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            assert self.log_path is not None
            with open(self.log_path, "wb") as log:
                self._process = subprocess.Popen(
                    [*dying_with_parent(), str(installation.binary), str(config_path)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.folder,
                    env=self.environment(site_packages),
                )
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise
        self.info = OrthancInfo(
            url=self.url,
            dicomweb_url=self.url + orthanc_config.DICOMWEB_ROOT.rstrip("/"),
            username=USERNAME,
            password=self.password,
        )
        return self.info

    def _wait_until_ready(self) -> None:
        assert self._process is not None
        token = base64.b64encode(f"{USERNAME}:{self.password}".encode()).decode()
        request = urllib.request.Request(
            f"{self.url}/system", headers={"Authorization": f"Basic {token}"}
        )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            status = self._process.poll()
            if status is not None:
                raise OrthancError(
                    f"Orthanc exited with status {status} while starting: {self.last_error()}"
                )
            try:
                with urllib.request.urlopen(request, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        raise OrthancError(
            f"Orthanc did not answer on {self.url} within {self.startup_timeout:.0f} s: "
            f"{self.last_error()}"
        )

    def last_error(self) -> str:
        """Orthanc's last error line (``E...``), else its last line, else a placeholder."""
        if self.log_path is None or not self.log_path.is_file():
            return "no output"
        lines = [
            line.strip()
            for line in self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
            if line.strip()
        ]
        errors = [line for line in lines if line.startswith("E")]
        return (errors or lines or ["no output"])[-1]

    def stop(self, timeout: float = 20.0) -> None:
        """Stop Orthanc (SIGTERM, then SIGKILL after ``timeout``) and remove its folder.

        Idempotent."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        folder, self.folder = self.folder, None
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
        self.info = None

    def __enter__(self) -> LocalOrthanc:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
