"""Orthanc's configuration: one source for the deployed image and the local Orthanc.

:data:`SHARED` holds every setting both Orthancs have: authentication on, no DICOM port, the
DICOMweb plugin at ``/dicom-web/``, plain (uncompressed) attachments the pipeline can read, and
re-sent instances that never replace the stored one. :func:`deployed` and :func:`local` add what
differs, and nothing else:

* deployed (``orthancteam/orthanc`` on ECS): the official S3 plugin (``AwsS3Storage``, flat
  layout under ``RootPath`` ``orthanc``) and the PostgreSQL index over TLS; remote access on
  (the load balancer is the only way in); with ``authorization_script``, the Python plugin
  runs :mod:`pipeline.orthanc.authz` (roles, and the health endpoint on its own port);
* local (Debian's ``orthanc`` packages): the Python plugin's storage area
  (:mod:`pipeline.orthanc.storage`) writing the same keys to the local S3 bucket, the index in
  a private folder (or a given PostgreSQL), loopback only.

:func:`to_environment` turns a configuration into the image's ``ORTHANC__SECTION__KEY``
environment variables (what the CDK task definition sets); tests compare both sides, and
:data:`DIFFERENCES` names every top-level setting the two may set differently.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

from pipeline.names import ORTHANC_ROOT_PATH
from pipeline.orthanc import authz

__all__ = [
    "DICOMWEB_ROOT",
    "DIFFERENCES",
    "SHARED",
    "deployed",
    "local",
    "to_environment",
]

DICOMWEB_ROOT = "/dicom-web/"

#: The settings both Orthancs share (Orthanc's JSON configuration keys).
SHARED: dict[str, Any] = {
    # Only authenticated HTTP: DICOMweb, the REST API, the UI.
    "AuthenticationEnabled": True,
    "DicomServerEnabled": False,
    "DicomWeb": {"Enable": True, "Root": DICOMWEB_ROOT},
    # Attachments as plain DICOM files: the pipeline reads their headers with ranged GETs
    # (a compressed attachment would be STORAGE_ENCODED).
    "StorageCompression": False,
    # A re-sent instance never replaces the stored one: an uploader (STOW-RS only) must not
    # be able to overwrite any instance whose SOP Instance UID it knows or guesses. Orthanc
    # keeps the first file and answers the re-send as stored (AlreadyStored), so a client
    # that retries is not told it failed; nothing changes in S3. A correction is a delete
    # then a send, by an administrator (docs/security.md, "Uploaders cannot overwrite").
    "OverwriteInstances": False,
}


#: The top-level settings the deployed and the local Orthanc may set differently (or only one
#: of them sets), by concern; every other setting is :data:`SHARED`.
DIFFERENCES: dict[str, tuple[str, ...]] = {
    "name": ("Name",),
    "storage plugin": ("AwsS3Storage", "StorageDirectory"),
    "index": ("PostgreSQL", "IndexDirectory"),
    "access": ("RemoteAccessAllowed", "HttpPort", "RegisteredUsers", authz.SECTION),
    "python plugin": ("Plugins", "PythonScript", "PythonVerbose"),
}


def _merged(extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(SHARED)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def deployed(
    *,
    name: str,
    bucket: str,
    region: str,
    postgresql_uri: str,
    authorization_script: str | None = None,
) -> dict[str, Any]:
    """The deployed image's configuration (registered users and their roles come from
    secrets when the container starts).

    ``authorization_script``, the path where the container's entry point writes
    :mod:`pipeline.orthanc.authz`, turns on the Python plugin with it: who may do what, and
    the health endpoint on port ``DicomPipeline.HealthPort``.
    """
    extra: dict[str, Any] = {}
    if authorization_script is not None:
        extra = {
            "PythonScript": authorization_script,
            authz.SECTION: {authz.HEALTH_PORT_KEY: authz.HEALTH_PORT},
        }
    return _merged(
        {
            "Name": name,
            # Behind the load balancer: its security group is the only way in.
            "RemoteAccessAllowed": True,
            "AwsS3Storage": {
                "BucketName": bucket,
                "Region": region,
                "StorageStructure": "flat",
                # Attachments under orthanc/ only (the plugin joins it and the file name
                # with "/"; it refuses a leading "/").
                "RootPath": ORTHANC_ROOT_PATH,
            },
            "PostgreSQL": {
                "EnableIndex": True,
                "EnableStorage": False,
                "Lock": False,  # several tasks share the index
                "ConnectionUri": postgresql_uri,
            },
            **extra,
        }
    )


def local(
    *,
    name: str,
    http_port: int,
    users: dict[str, str],
    storage_directory: str,
    plugins: list[str],
    python_script: str,
    postgresql_uri: str | None = None,
) -> dict[str, Any]:
    """The local Orthanc's configuration: loopback only, attachments through the Python
    plugin's S3 storage area, index in ``storage_directory`` (or PostgreSQL)."""
    extra: dict[str, Any] = {
        "Name": name,
        "RemoteAccessAllowed": False,
        "HttpPort": http_port,
        "RegisteredUsers": users,
        "StorageDirectory": storage_directory,
        "IndexDirectory": storage_directory,
        "Plugins": plugins,
        "PythonScript": python_script,
        "PythonVerbose": False,
    }
    if postgresql_uri is not None:
        extra["PostgreSQL"] = {
            "EnableIndex": True,
            "EnableStorage": False,
            "Lock": False,
            "ConnectionUri": postgresql_uri,
        }
    return _merged(extra)


#: Names the image does not derive by its rule: it maps these variables to these keys itself
#: (``configurator.py`` and ``env-var-non-standards.json`` of orthanc-builder).
_IMAGE_NAMES = {"PostgreSQL": "POSTGRESQL", "MySQL": "MYSQL", "OHIF": "OHIF"}
#: Settings whose keys are names (users, modalities, peers), not settings: one JSON value,
#: since the image would capitalize a name spelt as a variable (``admin`` → ``Admin``).
_JSON_VALUES = frozenset({"RegisteredUsers", "DicomModalities", "OrthancPeers"})


def _env_name(key: str) -> str:
    """``DicomWeb`` → ``DICOM_WEB``, ``AwsS3Storage`` → ``AWS_S3_STORAGE`` (the image's rule,
    which turns each ``_``-separated word back into a capitalized one), ``PostgreSQL`` →
    ``POSTGRESQL`` (one of the names the image maps itself)."""
    if key in _IMAGE_NAMES:
        return _IMAGE_NAMES[key]
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", key).upper()


def to_environment(config: dict[str, Any]) -> dict[str, str]:
    """The ``ORTHANC__SECTION__KEY`` variables of the ``orthancteam/orthanc`` image.

    Examples
    --------
    >>> to_environment({"DicomWeb": {"Enable": True}, "Name": "x"})
    {'ORTHANC__DICOM_WEB__ENABLE': 'true', 'ORTHANC__NAME': 'x'}
    """
    out: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                name = f"{prefix}__{_env_name(key)}"
                if key in _JSON_VALUES:
                    out[name] = json.dumps(inner)
                else:
                    walk(name, inner)
        elif isinstance(value, bool):
            out[prefix] = "true" if value else "false"
        elif isinstance(value, str):
            out[prefix] = value
        else:
            out[prefix] = json.dumps(value)

    walk("ORTHANC", config)
    return out
