"""Send DICOM files to Orthanc (or any DICOMweb server) with STOW-RS.

:func:`send` walks files and folders, reads each file with pydicom (a file pydicom cannot
read as a DICOM instance with a SOP Instance UID is reported as ``not_dicom`` and not sent),
and stores the files in batches with ``dicomweb-client``: transient HTTP errors (429, 5xx)
are retried with exponential backoff, and each file gets one :class:`SendResult` from the
server's answer (its Referenced and Failed SOP Sequences), never a guess.

One file the server cannot take (Orthanc: a file without a Study Instance UID) makes it refuse
the whole multi-file request (HTTP 400) without naming the file: the request is then split in
halves and each half sent again, down to single files, so only the files the server refuses
on their own are reported ``REFUSED``, with the server's own reason.

Files are sent as they are, byte for byte: ``DICOMwebClient.store_instances`` takes pydicom
datasets and writes them again, which changes files and fails on some that pydicom reads (a
VR it cannot encode). :func:`_store_files` therefore hands the file bytes to the client's
multipart POST (its retries, authentication and answer parsing), the one step
``store_instances`` adds on top.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any

__all__ = ["SendResult", "discover", "make_client", "send"]

#: STOW-RS requests carry at most this many bytes of DICOM (and at most BATCH_FILES files).
BATCH_BYTES = 32 * 1024 * 1024
BATCH_FILES = 50
#: HTTP statuses worth retrying, and how often.
RETRY_STATUSES = tuple(HTTPStatus(code) for code in (429, 500, 502, 503, 504))
RETRY_ATTEMPTS = 4


@dataclass
class SendResult:
    """What became of one file: ``stored``, ``failed`` or ``not_dicom`` (not sent)."""

    path: str
    sop_instance_uid: str | None
    status: str
    error: dict[str, str] | None = None
    size: int = 0

    def to_json(self) -> dict[str, Any]:
        """The JSON line of the ``send`` command (DESIGN.md)."""
        return {
            "path": self.path,
            "sop_instance_uid": self.sop_instance_uid,
            "status": self.status,
            "error": self.error,
        }


@dataclass
class _Instance:
    path: Path
    uid: str
    size: int


def discover(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Every regular file named or under a named folder, in a stable order.

    Raises
    ------
    FileNotFoundError
        A path does not exist.
    """
    out: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            out.extend(sorted(p for p in path.rglob("*") if p.is_file()))
        elif path.is_file():
            out.append(path)
        else:
            raise FileNotFoundError(f"no such file or folder: {path}")
    return out


def make_client(url: str, username: str | None, password: str | None) -> Any:
    """A ``DICOMwebClient`` for ``url`` (the DICOMweb root) with basic auth and retries."""
    import requests
    from dicomweb_client.api import DICOMwebClient

    session = requests.Session()
    if username is not None:
        session.auth = (username, password or "")
    client = DICOMwebClient(url=url.rstrip("/"), session=session, timeout=(10, 300))
    client.set_http_retry_params(
        retry=True,
        max_attempts=RETRY_ATTEMPTS,
        wait_exponential_multiplier=500,
        retriable_error_codes=RETRY_STATUSES,
    )
    return client


def _read(path: Path) -> _Instance | SendResult:
    import pydicom
    from pydicom.errors import InvalidDicomError

    size = path.stat().st_size
    try:
        with warnings.catch_warnings():
            # pydicom's notes on odd files ("Expected explicit VR, but found implicit VR"):
            # the file is sent byte for byte, and the server judges it.
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        uid = ds.get("SOPInstanceUID")
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError) as exc:
        return SendResult(
            str(path),
            None,
            "not_dicom",
            {"code": "NOT_DICOM", "message": f"not a DICOM file ({type(exc).__name__})"},
            size,
        )
    if not uid:
        return SendResult(
            str(path),
            None,
            "not_dicom",
            {"code": "NOT_DICOM", "message": "no SOP Instance UID (not an instance)"},
            size,
        )
    return _Instance(path, str(uid), size)


def _batches(paths: list[Path]) -> Iterator[tuple[list[_Instance], list[SendResult]]]:
    batch: list[_Instance] = []
    skipped: list[SendResult] = []
    size = 0
    for path in paths:
        item = _read(path)
        if isinstance(item, SendResult):
            skipped.append(item)
            continue
        if batch and (size + item.size > BATCH_BYTES or len(batch) >= BATCH_FILES):
            yield batch, skipped
            batch, skipped, size = [], [], 0
        batch.append(item)
        size += item.size
    if batch or skipped:
        yield batch, skipped


def _answer(response: Any) -> tuple[set[str], dict[str, str]]:
    """(stored UIDs, failed UID → failure reason) from a STOW-RS response dataset."""
    stored = {
        str(item.ReferencedSOPInstanceUID)
        for item in response.get("ReferencedSOPSequence", []) or []
        if "ReferencedSOPInstanceUID" in item
    }
    failed = {
        str(item.ReferencedSOPInstanceUID): _failure_reason(int(item.get("FailureReason", 0)))
        for item in response.get("FailedSOPSequence", []) or []
        if "ReferencedSOPInstanceUID" in item
    }
    return stored, failed


#: PS3.4 Table B.2-1 and PS3.18's STOW-RS failure reasons, as a reader wants them.
_FAILURE_REASONS = {
    0x0110: "processing failure",
    0x0122: "SOP Class not supported",
    0x0124: "not authorized",
    0xA700: "out of resources",
    0xA900: "data set does not match the SOP Class",
}


def _failure_reason(code: int) -> str:
    """``0xC000 (cannot understand)``: the server's FailureReason, with what it means."""
    if code in _FAILURE_REASONS:
        meaning = _FAILURE_REASONS[code]
    elif 0xC000 <= code <= 0xCFFF:
        meaning = "cannot understand"
    elif 0xA700 <= code <= 0xA7FF:
        meaning = "out of resources"
    else:
        return f"0x{code:04X}"
    return f"0x{code:04X}: {meaning}"


#: The most of a server's own error text a result carries.
_REASON_CHARS = 300


def _server_reason(response: Any) -> str:
    """The server's own words for a refusal: Orthanc's JSON ``Details`` or ``Message``, else a
    short text body; empty when it said nothing readable."""
    text = ""
    try:
        if "json" in (response.headers.get("Content-Type") or ""):
            body = response.json()
            if isinstance(body, dict):
                parts = [str(body[k]) for k in ("Message", "Details") if body.get(k)]
                text = ": ".join(dict.fromkeys(parts))
        elif (response.headers.get("Content-Type") or "").startswith("text/"):
            text = response.text
    except (ValueError, TypeError, AttributeError):
        return ""
    text = " ".join(text.split())
    return text if len(text) <= _REASON_CHARS else text[: _REASON_CHARS - 1] + "…"


def _error_answer(exc: Any) -> tuple[set[str], dict[str, str], dict[str, str]]:
    """Stored, failed and a general error from an HTTP error (a 409 may list failures)."""
    import pydicom

    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    stored: set[str] = set()
    failed: dict[str, str] = {}
    if response is not None:
        # Orthanc 1.10 answers a refused STOW-RS with a DICOM JSON body but no Content-Type.
        with contextlib.suppress(ValueError, TypeError, KeyError, AttributeError):
            body = response.json()
            if isinstance(body, dict) and "HttpStatus" not in body:  # not Orthanc's error JSON
                stored, failed = _answer(pydicom.Dataset.from_json(body))
    if status in (401, 403):
        error = {"code": "UNAUTHORIZED", "message": f"the server answered HTTP {status}"}
    elif status is not None and (status >= 500 or status == 429):
        error = {
            "code": "UNAVAILABLE",
            "message": f"the server answered HTTP {status} after {RETRY_ATTEMPTS} attempts",
        }
    elif status is not None:
        reason = _server_reason(response)
        error = {
            "code": "REFUSED",
            "message": f"the server answered HTTP {status}" + (f": {reason}" if reason else ""),
        }
    else:
        error = {"code": "UNAVAILABLE", "message": f"no answer ({type(exc).__name__})"}
    return stored, failed, error


def send(
    paths: Iterable[str | os.PathLike[str]],
    client: Any,
    *,
    on_result: Callable[[SendResult], None] | None = None,
) -> list[SendResult]:
    """Store every DICOM file under ``paths`` through ``client``; one result per file.

    Parameters
    ----------
    paths:
        Files and folders (walked recursively).
    client:
        A ``DICOMwebClient`` (:func:`make_client`).
    on_result:
        Called with each result as soon as it is known (progress, JSON lines).
    """
    results: list[SendResult] = []

    def emit(result: SendResult) -> None:
        results.append(result)
        if on_result is not None:
            on_result(result)

    for batch, skipped in _batches(discover(paths)):
        for result in skipped:
            emit(result)
        if batch:
            _store_batch(client, batch, emit)
    return results


def _store_batch(client: Any, batch: list[_Instance], emit: Callable[[SendResult], None]) -> None:
    """One STOW-RS request for ``batch``; a request refused whole is split and sent again."""
    import requests

    general: dict[str, str] | None = None
    try:
        stored, failed = _answer(_store_files(client, [i.path for i in batch]))
    except requests.RequestException as exc:
        stored, failed, general = _error_answer(exc)
    unlisted = [i for i in batch if i.uid not in stored and i.uid not in failed]
    if general is not None and general["code"] == "REFUSED" and len(batch) > 1 and unlisted:
        # Refused as a whole without naming a file: find the ones refused on their own.
        for inst in batch:
            if inst.uid in stored or inst.uid in failed:
                _emit_answer(inst, stored, failed, None, emit)
        half = len(unlisted) // 2
        _store_batch(client, unlisted[:half], emit)
        _store_batch(client, unlisted[half:], emit)
        return
    for inst in batch:
        _emit_answer(inst, stored, failed, general, emit)


def _emit_answer(
    inst: _Instance,
    stored: set[str],
    failed: dict[str, str],
    general: dict[str, str] | None,
    emit: Callable[[SendResult], None],
) -> None:
    if inst.uid in stored:
        emit(SendResult(str(inst.path), inst.uid, "stored", None, inst.size))
    elif inst.uid in failed:
        error = {
            "code": "REFUSED",
            "message": f"the server refused the instance (FailureReason {failed[inst.uid]})",
        }
        emit(SendResult(str(inst.path), inst.uid, "failed", error, inst.size))
    else:
        error = general or {
            "code": "REFUSED",
            "message": "the server's answer does not list the instance",
        }
        emit(SendResult(str(inst.path), inst.uid, "failed", error, inst.size))


def _store_files(client: Any, paths: list[Path]) -> Any:
    """POST the files' bytes as one STOW-RS request; returns the answer as a dataset."""
    url = f"{client.base_url}/studies"
    return client._http_post_multipart_application_dicom(url, (p.read_bytes() for p in paths))
