"""Orthanc's storage area in an S3 bucket, with the official S3 plugin's flat layout.

The local Orthanc (:mod:`pipeline.orthanc.local`) loads this file as its Python plugin's
``PythonScript``; it registers a storage area (``orthanc.RegisterStorageArea``) that keeps
every attachment as one object under a root path of the bucket, named as the official
``AwsS3Storage`` plugin names it with ``"StorageStructure": "flat"`` and ``RootPath``
(``BaseStorage::GetPath`` in orthanc-object-storage: ``<RootPath>/<file name>``; the
project's root path is ``orthanc``, :data:`pipeline.names.ORTHANC_PREFIX`):

============================  =====  ===================
attachment                    type   key
============================  =====  ===================
DICOM file                    1      ``<root>/<uuid>.dcm``
DICOM as JSON                 2      ``<root>/<uuid>.json``
DICOM until pixel data        3      ``<root>/<uuid>.dcm.head``
anything else                 other  ``<root>/<uuid>.unk``
============================  =====  ===================

So an instance stored or deleted through the local Orthanc puts or deletes the same key as
the deployed one, and the bucket sends the same S3 events (the ingest queue listens to
``.dcm`` keys only).

Inside Orthanc, importing this file registers the storage area; imported anywhere else (the
project's tools and tests), it only defines names. It needs nothing but the standard library
and boto3 (the plugin's own virtual environment). Its settings come from the environment
Orthanc is started with:

``DICOM_PIPELINE_STORAGE_BUCKET``
    the bucket (required);
``DICOM_PIPELINE_STORAGE_ROOT_PATH``
    the root path (the S3 plugin's ``RootPath``; empty or unset: the bucket's root), set by
    :mod:`pipeline.orthanc.local` from :data:`pipeline.names.ORTHANC_PREFIX`;
``AWS_ENDPOINT_URL``, ``AWS_DEFAULT_REGION``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``
    the S3 endpoint (moto's server) and its credentials, read by boto3.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

__all__ = [
    "BUCKET_VARIABLE",
    "ROOT_PATH_VARIABLE",
    "DICOM",
    "DICOM_AS_JSON",
    "DICOM_UNTIL_PIXEL_DATA",
    "S3StorageArea",
    "from_environment",
    "object_key",
    "register",
]

#: The environment variable naming the bucket.
BUCKET_VARIABLE = "DICOM_PIPELINE_STORAGE_BUCKET"
#: The environment variable naming the root path (the S3 plugin's ``RootPath``).
ROOT_PATH_VARIABLE = "DICOM_PIPELINE_STORAGE_ROOT_PATH"

# Orthanc's attachment types (``OrthancPluginContentType``, ``orthanc.ContentType``).
DICOM = 1
DICOM_AS_JSON = 2
DICOM_UNTIL_PIXEL_DATA = 3

_EXTENSIONS = {DICOM: ".dcm", DICOM_AS_JSON: ".json", DICOM_UNTIL_PIXEL_DATA: ".dcm.head"}
_OTHER = ".unk"


def object_key(uuid: str, content_type: int, root_path: str = "") -> str:
    """The key of an attachment, as the official S3 plugin's flat layout names it.

    Examples
    --------
    >>> object_key("6b9e0f6c-3c1f-4c4e-9d3a-1f2e3d4c5b6a", 1)
    '6b9e0f6c-3c1f-4c4e-9d3a-1f2e3d4c5b6a.dcm'
    >>> object_key("6b9e0f6c-3c1f-4c4e-9d3a-1f2e3d4c5b6a", 3, "orthanc")
    'orthanc/6b9e0f6c-3c1f-4c4e-9d3a-1f2e3d4c5b6a.dcm.head'
    """
    if not uuid or "/" in uuid or uuid.startswith("."):
        raise ValueError(f"not an attachment UUID: {uuid!r}")
    if root_path.startswith("/"):
        raise ValueError(f"a root path must not start with '/': {root_path!r}")
    name = uuid + _EXTENSIONS.get(int(content_type), _OTHER)
    return f"{root_path.rstrip('/')}/{name}" if root_path else name


class S3StorageArea:
    """The three callbacks Orthanc calls: create, read and remove an attachment."""

    def __init__(self, client: Any, bucket: str, root_path: str = "") -> None:
        self.client = client
        self.bucket = bucket
        self.root_path = root_path

    def create(self, uuid: str, content_type: int, data: bytes) -> None:
        """Store an attachment (one PUT: S3 sends ``ObjectCreated:Put``)."""
        self.client.put_object(Bucket=self.bucket, Key=self._key(uuid, content_type), Body=data)

    def read(self, uuid: str, content_type: int) -> bytes:
        """The whole attachment."""
        response = self.client.get_object(Bucket=self.bucket, Key=self._key(uuid, content_type))
        return bytes(response["Body"].read())

    def remove(self, uuid: str, content_type: int) -> None:
        """Delete an attachment (S3 sends ``ObjectRemoved:Delete``)."""
        self.client.delete_object(Bucket=self.bucket, Key=self._key(uuid, content_type))

    def _key(self, uuid: str, content_type: int) -> str:
        return object_key(uuid, content_type, self.root_path)


def from_environment(environ: Mapping[str, str] | None = None) -> S3StorageArea:
    """The storage area the environment describes, with its own boto3 client.

    Raises
    ------
    RuntimeError
        ``DICOM_PIPELINE_STORAGE_BUCKET`` is not set.
    """
    import boto3
    from botocore.config import Config

    env = os.environ if environ is None else environ
    bucket = env.get(BUCKET_VARIABLE, "")
    if not bucket:
        raise RuntimeError(f"{BUCKET_VARIABLE} is not set: no bucket for Orthanc's attachments")
    client = boto3.session.Session().client(
        "s3",
        endpoint_url=env.get("AWS_ENDPOINT_URL") or None,
        region_name=env.get("AWS_DEFAULT_REGION") or env.get("AWS_REGION") or None,
        config=Config(
            s3={"addressing_style": "path"},
            retries={"max_attempts": 5, "mode": "standard"},
            connect_timeout=5,
            read_timeout=60,
        ),
    )
    return S3StorageArea(client, bucket, env.get(ROOT_PATH_VARIABLE, ""))


def register(orthanc: Any, environ: Mapping[str, str] | None = None) -> S3StorageArea:
    """Register the storage area with Orthanc (once, while Orthanc loads the plugin)."""
    area = from_environment(environ)
    orthanc.RegisterStorageArea(area.create, area.read, area.remove)
    root = area.root_path.rstrip("/") + "/" if area.root_path else ""
    orthanc.LogWarning(f"dicom-pipeline: attachments in s3://{area.bucket}/{root} (flat layout)")
    return area


try:  # only Orthanc's Python plugin provides this module
    import orthanc as _orthanc
except ImportError:
    _orthanc = None

if _orthanc is not None and hasattr(_orthanc, "RegisterStorageArea"):
    register(_orthanc)
