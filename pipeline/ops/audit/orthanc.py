"""The audit's Orthanc source: its instances, and the S3 key of an instance's DICOM file.

Read only when the target names Orthanc and there are credentials (:func:`orthanc_target`):
``/instances`` page by page (:func:`instances_or_reason`; an Orthanc that cannot be read is
skipped with a reason, not an error), then each instance's attachment for its key
(:func:`instance_keys`).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from pipeline.names import ORTHANC_ROOT_PATH
from pipeline.ops.audit.progress import Phase
from pipeline.ops.audit.sources import POINT_READERS

if TYPE_CHECKING:
    from pipeline.ops.target import Target

__all__ = ["ORTHANC_PAGE", "instance_keys", "instances_or_reason", "orthanc_target"]

#: Instances per page of Orthanc's ``/instances``.
ORTHANC_PAGE = 1000


def _orthanc_credentials(target: Target) -> tuple[str, str] | None:
    """``DICOM_PIPELINE_USERNAME``/``_PASSWORD`` (as ``send``), else the target's (stack.json)."""
    username = os.environ.get("DICOM_PIPELINE_USERNAME") or target.orthanc_username
    password = os.environ.get("DICOM_PIPELINE_PASSWORD") or target.orthanc_password
    if not username or not password:
        return None
    return username, password


def orthanc_target(target: Target) -> tuple[str, tuple[str, str]] | None:
    """Orthanc's REST root and credentials, or None (no Orthanc, or no credentials).

    The credentials are ``DICOM_PIPELINE_USERNAME``/``_PASSWORD`` (as ``send``), else the
    target's (stack.json).
    """
    url = (target.orthanc_url or "").rstrip("/")
    auth = _orthanc_credentials(target) if url else None
    return (url, auth) if url and auth else None


def _orthanc_session(auth: tuple[str, str]) -> Any:
    import requests

    session = requests.Session()
    session.auth = auth
    return session


def _orthanc_instances(url: str, auth: tuple[str, str], phase: Phase) -> list[str]:
    """Every instance ID of Orthanc, ``/instances`` page by page (``since``, ``limit``)."""
    session = _orthanc_session(auth)
    ids: list[str] = []
    while True:
        resp = session.get(
            f"{url}/instances", params={"since": len(ids), "limit": ORTHANC_PAGE}, timeout=60
        )
        resp.raise_for_status()
        page = [str(i) for i in resp.json()]
        ids.extend(page)
        phase.add(len(page))
        if len(page) < ORTHANC_PAGE:
            return ids


def instances_or_reason(url: str, auth: tuple[str, str], phase: Phase) -> list[str] | str:
    """Orthanc's instance IDs, or why they could not be read (one line: Orthanc is skipped).

    Parameters
    ----------
    url, auth:
        Orthanc's REST root and credentials (:func:`orthanc_target`).
    phase:
        Counts the instances read.
    """
    import requests

    try:
        return _orthanc_instances(url, auth, phase)
    except requests.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "?"
        return f"{url}/instances answered HTTP {status}"
    except (requests.RequestException, ValueError) as exc:
        return f"{url} cannot be read ({type(exc).__name__})"


def instance_keys(url: str, auth: tuple[str, str], ids: list[str]) -> dict[str, str]:
    """The S3 key of each instance's DICOM attachment (the S3 plugin's flat layout under
    Orthanc's prefix: ``orthanc/<Uuid>.dcm``).

    Best effort: an instance whose attachment cannot be read is left out.
    """
    import requests

    from pipeline.orthanc.storage import DICOM, object_key

    session = _orthanc_session(auth)

    def key_of(instance_id: str) -> tuple[str, str | None]:
        try:
            resp = session.get(f"{url}/instances/{instance_id}/attachments/dicom/info", timeout=30)
            if resp.ok:
                uuid = str(resp.json()["Uuid"])
                return instance_id, object_key(uuid, DICOM, ORTHANC_ROOT_PATH)
        except (requests.RequestException, ValueError, KeyError, TypeError):
            pass  # best effort: the instance's entry then names no key
        return instance_id, None

    with ThreadPoolExecutor(max_workers=POINT_READERS, thread_name_prefix="audit-orthanc") as pool:
        return {i: k for i, k in pool.map(key_of, ids) if k}
