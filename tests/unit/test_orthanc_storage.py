"""The local Orthanc's storage area (pipeline/orthanc/storage.py), without Orthanc.

The script is loaded as Orthanc's Python plugin loads it (a top-level module named after
the file, with an ``orthanc`` module present) against a fake ``orthanc`` module and moto's
S3 in process. The key layout is the official S3 plugin's flat one (orthanc-object-storage,
``BaseStorage::GetPath``).
"""

from __future__ import annotations

import ast
import importlib.util
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from pipeline.orthanc import storage
from pipeline.orthanc.storage import object_key

SCRIPT = Path(storage.__file__)
UUID = "0f4b7c3e-5d21-4a8b-9c6f-2e1d3a4b5c6d"


class FakeOrthanc(types.ModuleType):
    """The two functions of the ``orthanc`` module the script calls."""

    def __init__(self) -> None:
        super().__init__("orthanc")
        self.registered: tuple[Any, Any, Any] | None = None
        self.warnings: list[str] = []

    def RegisterStorageArea(self, create: Any, read: Any, remove: Any) -> None:
        assert self.registered is None, "registered twice"
        self.registered = (create, read, remove)

    def LogWarning(self, message: str) -> None:
        self.warnings.append(message)


def _load_as_orthanc_does(monkeypatch: pytest.MonkeyPatch) -> FakeOrthanc:
    fake = FakeOrthanc()
    monkeypatch.setitem(sys.modules, "orthanc", fake)
    spec = importlib.util.spec_from_file_location("storage", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "storage", module)
    spec.loader.exec_module(module)
    return fake


@pytest.mark.parametrize(
    ("content_type", "key"),
    [
        (1, f"{UUID}.dcm"),  # DICOM
        (2, f"{UUID}.json"),  # DICOM as JSON
        (3, f"{UUID}.dcm.head"),  # DICOM until pixel data
        (0, f"{UUID}.unk"),  # unknown
        (1024, f"{UUID}.unk"),  # a user-defined attachment
    ],
)
def test_keys_follow_the_s3_plugins_flat_layout(content_type: int, key: str) -> None:
    assert object_key(UUID, content_type) == key


@pytest.mark.parametrize("uuid", ["", "a/b", "../x", ".hidden"])
def test_a_uuid_that_would_leave_the_bucket_root_is_refused(uuid: str) -> None:
    with pytest.raises(ValueError, match="not an attachment UUID"):
        object_key(uuid, 1)


def test_only_dicom_attachments_reach_the_ingest_queues_filter() -> None:
    # The bucket notifies keys ending in ".dcm": Orthanc's other attachments stay out.
    keys = [object_key(UUID, t) for t in (1, 2, 3, 0)]
    assert [k for k in keys if k.endswith(".dcm")] == [f"{UUID}.dcm"]


def test_importing_the_script_outside_orthanc_registers_nothing() -> None:
    # Imported by the project (no `orthanc` module), it only defines names.
    assert "orthanc" not in sys.modules
    assert storage._orthanc is None


def test_the_script_needs_only_the_standard_library_and_boto3() -> None:
    tree = ast.parse(SCRIPT.read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - {"__future__"}
    assert third_party <= {"boto3", "botocore", "orthanc"}, third_party


def test_loaded_by_orthanc_it_stores_reads_and_removes_in_s3(
    s3: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the bucket named in Orthanc's environment
    s3.create_bucket(Bucket="images")
    monkeypatch.setenv(storage.BUCKET_VARIABLE, "images")
    # When Orthanc loads the script
    fake = _load_as_orthanc_does(monkeypatch)
    # Then it registered a storage area, and said where
    assert fake.registered is not None
    assert fake.warnings == ["dicom-pipeline: attachments in s3://images/ (flat layout)"]
    create, read, remove = fake.registered

    # When Orthanc stores an instance's attachments
    create(UUID, 1, b"DICM file")
    create(UUID.replace("0f", "1a"), 3, b"header only")
    # Then they are objects at the bucket's root, named as the S3 plugin names them
    listed = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="images")["Contents"])
    assert listed == [f"{UUID}.dcm", f"{UUID.replace('0f', '1a')}.dcm.head"]
    assert read(UUID, 1) == b"DICM file"

    # When Orthanc removes the DICOM attachment
    remove(UUID, 1)
    # Then the object is gone (S3 sends ObjectRemoved), and the other one stays
    listed = [o["Key"] for o in s3.list_objects_v2(Bucket="images").get("Contents", [])]
    assert listed == [f"{UUID.replace('0f', '1a')}.dcm.head"]


def test_reading_a_missing_attachment_raises(s3: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # (Orthanc turns the exception into a storage error and logs the traceback)
    s3.create_bucket(Bucket="images")
    monkeypatch.setenv(storage.BUCKET_VARIABLE, "images")
    fake = _load_as_orthanc_does(monkeypatch)
    assert fake.registered is not None
    _, read, _ = fake.registered
    with pytest.raises(Exception, match="NoSuchKey"):
        read(UUID, 1)


def test_without_a_bucket_orthanc_refuses_to_start(
    aws_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given no bucket in the environment
    monkeypatch.delenv(storage.BUCKET_VARIABLE, raising=False)
    # Then loading the script fails (Orthanc stops: "Error during the installation of the
    # Python script"), naming the variable
    with pytest.raises(RuntimeError, match=storage.BUCKET_VARIABLE):
        _load_as_orthanc_does(monkeypatch)


def test_a_root_path_puts_every_attachment_under_it_as_the_s3_plugin_does(
    s3: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the bucket and a root path (the S3 plugin's RootPath: "<root>/<file name>")
    s3.create_bucket(Bucket="images")
    monkeypatch.setenv(storage.BUCKET_VARIABLE, "images")
    monkeypatch.setenv(storage.ROOT_PATH_VARIABLE, "orthanc")
    fake = _load_as_orthanc_does(monkeypatch)
    assert fake.registered is not None
    create, read, remove = fake.registered
    # When Orthanc stores an attachment
    create(UUID, 1, b"DICM file")
    # Then it is under the root path, read and removed there
    listed = [o["Key"] for o in s3.list_objects_v2(Bucket="images")["Contents"]]
    assert listed == [f"orthanc/{UUID}.dcm"]
    assert read(UUID, 1) == b"DICM file"
    remove(UUID, 1)
    assert "Contents" not in s3.list_objects_v2(Bucket="images")
    # And a root path starting with "/" is refused, as the plugin refuses it
    with pytest.raises(ValueError, match="must not start"):
        object_key(UUID, 1, "/orthanc")
