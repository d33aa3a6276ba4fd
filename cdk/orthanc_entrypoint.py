"""The Orthanc container's entry point, run by the image's ``python3 -c`` before its own.

The task definition carries this file's text as its command (nothing is downloaded; the
image stays as published). From the ECS secrets the task starts with, it:

1. writes the RDS root CA (``RDS_CA_BUNDLE``, a PEM certificate) to ``RDS_CA_BUNDLE_PATH``,
   the ``sslrootcert`` of the PostgreSQL connection URI;
2. writes the authorization plugin (``DICOM_PIPELINE_AUTHZ_SCRIPT_0``, ``_1``, …: parts of
   :mod:`pipeline.orthanc.authz`, an SSM parameter holds at most 4 KB) to the path Orthanc
   loads it from (``ORTHANC__PYTHON_SCRIPT``), after checking that its SHA-256 is
   ``DICOM_PIPELINE_AUTHZ_SHA256`` and that it compiles. The hash is in the task
   definition's environment, computed from the file at synth: whoever may write the SSM
   parameters but not deploy the task definition cannot get other code into Orthanc (the
   container refuses to start, ``AUTHZ_SCRIPT_MISMATCH``);
3. builds Orthanc's users from the two users secrets, ``DICOM_PIPELINE_ADMINISTRATORS`` and
   ``DICOM_PIPELINE_UPLOADERS`` (each ``{"<user>": "<password>", ...}``): their union is
   ``ORTHANC__REGISTERED_USERS`` (administrators first), and their names are the roles
   ``ORTHANC__DICOM_PIPELINE__ADMINISTRATORS`` and ``…__UPLOADERS`` the plugin enforces;
4. hands over to the image's entry point with its default argument.

Anything missing or malformed stops the container with one line (no value is printed), so a
task never starts half configured; a plugin that is not the deployed one says
``AUTHZ_SCRIPT_MISMATCH`` (a code to alarm on, with no hash or text of the script).
Standard library only, no ``__file__``: it runs as ``python3 -c``; the infra tests import
it and call :func:`prepare`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import sys
from collections.abc import Callable, Mapping, MutableMapping

IMAGE_ENTRYPOINT = ["/docker-entrypoint.sh", "/tmp/orthanc.json"]

CA = "RDS_CA_BUNDLE"
CA_PATH = "RDS_CA_BUNDLE_PATH"
SCRIPT = "DICOM_PIPELINE_AUTHZ_SCRIPT_"
SCRIPT_PATH = "ORTHANC__PYTHON_SCRIPT"
#: The hex SHA-256 of the plugin's UTF-8 text: set in the task definition, not a parameter.
SCRIPT_SHA256 = "DICOM_PIPELINE_AUTHZ_SHA256"
#: The code of the line that refuses a plugin whose hash is not the deployed one.
SCRIPT_MISMATCH = "AUTHZ_SCRIPT_MISMATCH"
ADMINISTRATORS = "DICOM_PIPELINE_ADMINISTRATORS"
UPLOADERS = "DICOM_PIPELINE_UPLOADERS"
REGISTERED_USERS = "ORTHANC__REGISTERED_USERS"
ROLES = {
    ADMINISTRATORS: "ORTHANC__DICOM_PIPELINE__ADMINISTRATORS",
    UPLOADERS: "ORTHANC__DICOM_PIPELINE__UPLOADERS",
}
#: A user name Basic authentication can carry (no ':') and a log line can show.
USER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


class StartupError(Exception):
    """What stops the container: a one-line reason that quotes no value."""


def _write(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(path, 0o600)


def _required(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "")
    if not value:
        raise StartupError(f"{name} is not set")
    return value


def _users(env: Mapping[str, str], name: str) -> dict[str, str]:
    try:
        users = json.loads(_required(env, name))
    except ValueError:
        raise StartupError(f"{name} is not JSON") from None
    if not isinstance(users, dict) or not users:
        raise StartupError(f'{name} must be a JSON object {{"<user>": "<password>", ...}}')
    for user, password in users.items():
        if not USER_NAME.match(user):
            raise StartupError(f"{name}: a user name is not [A-Za-z0-9][A-Za-z0-9._@-]{{0,63}}")
        if not isinstance(password, str) or len(password) < 16:
            raise StartupError(f"{name}: the password of {user} is shorter than 16 characters")
    return users


def script_sha256(script: str) -> str:
    """The hex SHA-256 of a plugin's text, as the task definition carries it."""
    return hashlib.sha256(script.encode("utf-8")).hexdigest()


def prepare(environ: Mapping[str, str]) -> dict[str, str]:
    """Write the files and return the environment for the image's entry point.

    Raises
    ------
    StartupError
        A value is missing or malformed.
    """
    env = dict(environ)

    ca = _required(env, CA)
    if "-----BEGIN CERTIFICATE-----" not in ca:
        raise StartupError(f"{CA} holds no PEM certificate")
    _write(_required(env, CA_PATH), ca.rstrip("\n") + "\n")

    tails = [k[len(SCRIPT) :] for k in env if k.startswith(SCRIPT)]
    numbers = sorted(int(t) for t in tails if t.isdigit())
    if not numbers or numbers != list(range(len(numbers))):
        raise StartupError(f"{SCRIPT}0, 1, ... are not all set")
    script = "".join(env.pop(f"{SCRIPT}{i}") for i in numbers)
    expected = _required(env, SCRIPT_SHA256).strip().lower()
    if not hmac.compare_digest(script_sha256(script), expected):
        raise StartupError(
            f"{SCRIPT_MISMATCH}: {SCRIPT}* is not the plugin this task definition was built "
            f"with (its SHA-256 differs from {SCRIPT_SHA256})"
        )
    del env[SCRIPT_SHA256]
    path = _required(env, SCRIPT_PATH)
    try:
        compile(script, path, "exec")
    except SyntaxError:
        raise StartupError(f"{SCRIPT}* is not a Python script") from None
    _write(path, script)

    administrators = _users(env, ADMINISTRATORS)
    uploaders = _users(env, UPLOADERS)
    both = sorted(set(administrators) & set(uploaders))
    if both:
        raise StartupError(f"users in both {ADMINISTRATORS} and {UPLOADERS}: {', '.join(both)}")
    env[REGISTERED_USERS] = json.dumps({**administrators, **uploaders})
    for variable, users in ((ADMINISTRATORS, administrators), (UPLOADERS, uploaders)):
        env[ROLES[variable]] = json.dumps(sorted(users))
        del env[variable]
    return env


def main(
    environ: MutableMapping[str, str] | None = None,
    execve: Callable[[str, list[str], dict[str, str]], object] = os.execve,
) -> None:
    """Prepare, then replace this process by the image's entry point (exit 1 on a problem)."""
    try:
        env = prepare(os.environ if environ is None else environ)
    except (StartupError, OSError) as exc:
        reason = exc if isinstance(exc, StartupError) else f"cannot write a file ({exc.strerror})"
        print(f"dicom-pipeline: cannot start Orthanc: {reason}", file=sys.stderr)
        sys.exit(1)
    execve(IMAGE_ENTRYPOINT[0], IMAGE_ENTRYPOINT, env)


if __name__ == "__main__":
    main()
