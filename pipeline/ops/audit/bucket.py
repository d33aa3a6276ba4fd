"""The audit's S3 source: the ``.dcm`` objects under Orthanc's prefix, listed or from an S3
Inventory.

Only Orthanc's prefix (:data:`pipeline.names.ORTHANC_PREFIX`) is read: only there do ``.dcm``
objects notify the ingest queue, so only there does the pipeline index them. The prefix is
listed with ``ListObjectsV2`` (:func:`list_bucket`) or, at scale, read from a CSV S3 Inventory
report of the whole bucket (:func:`read_inventory`: its rows outside the prefix are left out,
as a listing never sees them); a key is read again with ``HeadObject`` (:func:`head_object`).
Objects under the prefix that are not ``.dcm`` are counted by kind, not audited.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote_plus

from botocore.exceptions import ClientError

from pipeline import aws
from pipeline.names import DICOM_SUFFIX, ORTHANC_PREFIX
from pipeline.ops.audit.progress import Phase
from pipeline.ops.audit.report import AuditError
from pipeline.ops.audit.sources import (
    S3_URI,
    BucketObject,
    error_code,
    iso_time,
    plain_etag,
    version_or_none,
)

__all__ = ["head_object", "list_bucket", "read_inventory"]


def _not_audited_kind(key: str) -> str:
    """The report's name for a key under Orthanc's prefix that is not audited (the sidecars
    and staged items, under prefixes of their own, are not read at all)."""
    if key.endswith(DICOM_SUFFIX + ".head"):
        return "Orthanc header copies (.dcm.head)"
    return "other objects (not .dcm)"


def list_bucket(bucket: str, phase: Phase) -> tuple[dict[str, BucketObject], Counter[str]]:
    """The ``.dcm`` objects under Orthanc's prefix of ``bucket`` by key, and the other objects
    there counted by kind.

    Parameters
    ----------
    bucket:
        The bucket, its prefix listed with ``ListObjectsV2`` page by page.
    phase:
        Counts every object listed.
    """
    objects: dict[str, BucketObject] = {}
    skipped: Counter[str] = Counter()
    pages = (
        aws.client("s3")
        .get_paginator("list_objects_v2")
        .paginate(Bucket=bucket, Prefix=ORTHANC_PREFIX)
    )
    for page in pages:
        contents = page.get("Contents", [])
        for o in contents:
            key = o["Key"]
            if key.endswith(DICOM_SUFFIX):
                objects[key] = BucketObject(
                    plain_etag(o.get("ETag")), o.get("Size"), iso_time(o.get("LastModified"))
                )
            else:
                skipped[_not_audited_kind(key)] += 1
        phase.add(len(contents))
    return objects, skipped


def head_object(s3: Any, bucket: str, key: str) -> BucketObject | None:
    """The object ``key`` of ``bucket`` as ``HeadObject`` sees it now, or None when it is gone.

    ``s3`` is the caller's S3 client (:func:`pipeline.aws.client`), shared by its threads.

    Raises
    ------
    botocore.exceptions.ClientError
        Any error but "not found".
    """
    try:
        head = s3.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if error_code(exc) not in ("404", "NoSuchKey", "NotFound"):
            raise
        return None
    return BucketObject(
        plain_etag(head.get("ETag")),
        head.get("ContentLength"),
        iso_time(head.get("LastModified")),
        version_or_none(head.get("VersionId")),
    )


@dataclass
class _Inventory:
    bucket: str
    files: list[str]
    columns: dict[str, int]
    snapshot: str | None


def _parse_manifest(text: bytes, uri: str, bucket: str) -> _Inventory:
    """The parts of an S3 Inventory ``manifest.json`` the audit reads (CSV reports only)."""
    try:
        manifest = json.loads(text)
    except ValueError:
        raise AuditError(f"{uri} is not JSON") from None
    if not isinstance(manifest, dict):
        raise AuditError(f"{uri} is not an S3 Inventory manifest")
    fmt = str(manifest.get("fileFormat", "")).upper()
    if fmt != "CSV":
        raise AuditError(f"{uri}: only CSV inventories are read, this one is {fmt or 'unknown'}")
    source = manifest.get("sourceBucket")
    if source != bucket:
        raise AuditError(f"{uri} is the inventory of bucket {source}, not of {bucket}")
    columns = {c.strip(): i for i, c in enumerate(str(manifest.get("fileSchema", "")).split(","))}
    if "Key" not in columns:
        raise AuditError(f"{uri}: the inventory's fileSchema has no Key column")
    destination = str(manifest.get("destinationBucket", "")).removeprefix("arn:aws:s3:::")
    files = [str(f["key"]) for f in manifest.get("files", []) if isinstance(f, dict) and "key" in f]
    if not destination:
        raise AuditError(f"{uri}: the manifest names no destinationBucket")
    snapshot = None
    created = manifest.get("creationTimestamp")
    if created is not None:
        try:
            snapshot = iso_time(datetime.fromtimestamp(int(created) / 1000, UTC))
        except (TypeError, ValueError, OverflowError):
            snapshot = None
    return _Inventory(destination, files, columns, snapshot)


def _inventory_rows(inventory: _Inventory, key: str) -> Iterator[list[str]]:
    body = aws.client("s3").get_object(Bucket=inventory.bucket, Key=key)["Body"]
    raw: Any = gzip.GzipFile(fileobj=body) if key.endswith(".gz") else body
    with io.TextIOWrapper(raw, encoding="utf-8", newline="") as text:
        yield from csv.reader(text)


def _read_inventory_file(
    inventory: _Inventory, key: str, bucket: str, phase: Phase
) -> tuple[dict[str, BucketObject], Counter[str]]:
    cols = inventory.columns

    def col(row: list[str], name: str) -> str | None:
        i = cols.get(name)
        return row[i] if i is not None and i < len(row) and row[i] != "" else None

    objects: dict[str, BucketObject] = {}
    skipped: Counter[str] = Counter()
    n = 0
    for row in _inventory_rows(inventory, key):
        n += 1
        if n % 1000 == 0:
            phase.add(1000)
        if col(row, "Bucket") not in (None, bucket):
            continue
        if col(row, "IsDeleteMarker") == "true" or col(row, "IsLatest") == "false":
            continue  # a versioned inventory: only the current version of a live object counts
        name = col(row, "Key")
        if name is None:
            continue
        # CSV inventories URL-encode the key, a space as "+" (cloud-custodian issue 1997).
        name = unquote_plus(name)
        if not name.startswith(ORTHANC_PREFIX):
            continue  # what a listing of the prefix does not see
        if not name.endswith(DICOM_SUFFIX):
            skipped[_not_audited_kind(name)] += 1
            continue
        size = col(row, "Size")
        objects[name] = BucketObject(
            plain_etag(col(row, "ETag")),
            int(size) if size is not None and size.isdigit() else None,
            col(row, "LastModifiedDate"),
            version_or_none(col(row, "VersionId")),
        )
    phase.add(n % 1000)
    return objects, skipped


def read_inventory(
    uri: str, bucket: str, phase: Phase
) -> tuple[dict[str, BucketObject], Counter[str], dict[str, Any]]:
    """The ``.dcm`` objects under Orthanc's prefix of ``bucket`` from a CSV S3 Inventory
    report, instead of a listing.

    Parameters
    ----------
    uri:
        ``s3://bucket/.../manifest.json`` of the report (its files are read four at a time).
    bucket:
        The audited bucket: the manifest's ``sourceBucket`` must be it.
    phase:
        Counts the inventory's rows.

    Returns
    -------
    tuple
        The objects by key, the other objects counted by kind, and what the source was
        (``from``, ``manifest``, ``snapshot``, ``files``) for the report.

    Raises
    ------
    AuditError
        The URI, the manifest or its format is not one the audit reads.
    """
    match = S3_URI.fullmatch(uri)
    if not match:
        raise AuditError(f"{uri!r} is not the s3://bucket/key URI of an inventory manifest.json")
    try:
        text = aws.client("s3").get_object(Bucket=match[1], Key=match[2])["Body"].read()
    except ClientError as exc:
        raise AuditError(f"cannot read the inventory manifest {uri}: {error_code(exc)}") from None
    inventory = _parse_manifest(text, uri, bucket)
    objects: dict[str, BucketObject] = {}
    skipped: Counter[str] = Counter()
    with ThreadPoolExecutor(max_workers=4, thread_name_prefix="audit-inventory") as pool:
        parts = pool.map(
            lambda f: _read_inventory_file(inventory, f, bucket, phase), inventory.files
        )
        for part_objects, part_skipped in parts:
            objects.update(part_objects)
            skipped.update(part_skipped)
    info = {
        "from": "inventory",
        "manifest": uri,
        "snapshot": inventory.snapshot,
        "files": len(inventory.files),
    }
    return objects, skipped, info
