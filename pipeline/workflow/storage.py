"""What the workflow keeps in the image bucket besides the images: sidecars and staged items.

* **Sidecars** (``dicom-json/``): the gzip DICOM JSON of a record too large to hold it. Each is
  named by the key *and the event* that wrote it (``dicom-json/<key>/<order>.json.gz``), so a
  stale writer never overwrites the JSON a newer record points to. The sidecar a record points
  to is deleted when the record is replaced or becomes a tombstone; the bucket's lifecycle rule
  expires the noncurrent versions that deletion leaves.
* **Staged items** (``workflow-staging/``): items too large to travel in the workflow's state
  (Step Functions limits a state to 256 KiB), written by the parse step and read back by the
  workflow's ``LoadItem`` state; a lifecycle rule expires them after a day.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from pipeline import aws
from pipeline.names import SIDECAR_PREFIX, STAGING_PREFIX

__all__ = ["delete_s3_uri", "sidecar_uri", "split_s3_uri", "stage_item"]


def sidecar_uri(bucket: str, key: str, order: str) -> str:
    """Where the sidecar of ``key`` written by the event ``order`` goes.

    Examples
    --------
    >>> sidecar_uri("images", "ab.dcm", "0055AED6")
    's3://images/dicom-json/ab.dcm/0055AED6.json.gz'
    """
    return f"s3://{bucket}/{SIDECAR_PREFIX}{key}/{order}.json.gz"


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` → ``(bucket, key)``.

    Raises
    ------
    ValueError
        Not an ``s3://`` URI with a bucket and a key.
    """
    if not uri.startswith("s3://"):
        raise ValueError("not an s3:// URI")
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket or not key:
        raise ValueError("an s3:// URI needs a bucket and a key")
    return bucket, key


def delete_s3_uri(uri: str) -> None:
    """Delete the object at ``uri`` (a sidecar the table no longer points to)."""
    bucket, key = split_s3_uri(uri)
    aws.client("s3").delete_object(Bucket=bucket, Key=key)


def stage_item(bucket: str, item: dict[str, Any]) -> dict[str, str]:
    """Write ``item`` (DynamoDB JSON) under the staging prefix; returns ``{"bucket", "key"}``."""
    key = f"{STAGING_PREFIX}{uuid.uuid4().hex}.json"
    aws.client("s3").put_object(
        Bucket=bucket,
        Key=key,
        Body=json.dumps(item, ensure_ascii=False, separators=(",", ":")).encode("utf-8"),
        ContentType="application/json",
    )
    return {"bucket": bucket, "key": key}
