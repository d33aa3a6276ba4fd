"""The metadata record (DynamoDB item), schema v1 of DESIGN.md.

A record holds the pipeline's provenance attributes (snake_case), the four identifying UIDs,
a flattened copy of the top-level attributes worth indexing (by DICOM keyword), and the whole
header as a gzip-compressed DICOM JSON object. What is flattened and what is left to the JSON
is documented in ``docs/record.md``.

An item never exceeds its byte budget (at most DynamoDB's 400 KB): above it the JSON moves to
an S3 sidecar object and the item keeps its ``s3://`` URI in ``dicom_json_s3``.
"""

from __future__ import annotations

import base64
import functools
import gzip
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Context, Decimal
from typing import Any

from pydicom.datadict import keyword_for_tag

from pipeline import __version__
from pipeline.errors import MissingRequiredUid
from pipeline.orthanc.identifiers import orthanc_instance_id

__all__ = [
    "DYNAMODB_ITEM_LIMIT",
    "REQUIRED_UIDS",
    "BuiltRecord",
    "build_record",
    "flatten",
    "item_size",
    "record_to_json",
]

DYNAMODB_ITEM_LIMIT = 400 * 1024
#: Items are kept below this by default: the limit less a margin for DynamoDB's accounting.
DEFAULT_ITEM_BUDGET = 380 * 1024
#: A flattened attribute's text (all values together) above this stays in the JSON only.
MAX_FLAT_VALUE_BYTES = 1024
#: The UIDs every record must have, with their tags.
REQUIRED_UIDS = {
    "StudyInstanceUID": "0020000D",
    "SeriesInstanceUID": "0020000E",
    "SOPInstanceUID": "00080018",
    "SOPClassUID": "00080016",
}
_FLAT_SKIP_VRS = frozenset({"SQ", "OB", "OD", "OF", "OL", "OV", "OW", "UN"})
_NUMBER_VRS = frozenset({"FL", "FD", "SL", "SS", "SV", "UL", "US", "UV", "IS", "DS"})
# DynamoDB numbers: 38 significant digits, magnitude 1E-130 to 9.99E+125.
_DDB_CONTEXT = Context(prec=38, Emin=-128, Emax=126)
#: The longest str() of such a Decimal: 38 digits, a sign, a point and up to 6 leading zeros
#: ("-0.000001234..."), or in scientific notation a point and an exponent up to "E-130".
_MAX_DECIMAL_CHARS = 50


def _to_decimal(value: Any) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None  # an invalid numeric string stays in the JSON only
    try:
        number = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
        if not number.is_finite():
            return None
        rounded = _DDB_CONTEXT.create_decimal(number)
        if rounded != 0 and not (-130 <= rounded.adjusted() <= 125):
            return None
        return rounded
    except (ArithmeticError, ValueError):
        return None


def _flat_value(vr: str, element: dict[str, Any]) -> Any:
    values = element.get("Value")
    if not values:
        return None
    if len(values) == 1 and vr not in _NUMBER_VRS:
        # One value (most elements): what the general case below gives, computed directly.
        value = values[0]
        if vr == "PN":
            value = (value or {}).get("Alphabetic")
        if not isinstance(value, str) or not value or len(value) > MAX_FLAT_VALUE_BYTES:
            return None
        return value
    if vr == "PN":
        out: list[Any] = [(v or {}).get("Alphabetic") for v in values]
    elif vr in _NUMBER_VRS:
        out = [_to_decimal(v) for v in values]
        if any(v is None for v in out):
            return None
        if len(out) * _MAX_DECIMAL_CHARS <= MAX_FLAT_VALUE_BYTES:
            return out[0] if len(out) == 1 else out  # what the checks below would keep
    else:
        out = [v if isinstance(v, str) else None for v in values]
    if all(v is None or v == "" for v in out):
        return None
    if sum(len(str(v or "")) for v in out) > MAX_FLAT_VALUE_BYTES:
        return None
    return out[0] if len(out) == 1 else out


@functools.lru_cache(maxsize=8192)
def _flat_keyword(tag_hex: str) -> str:
    """The keyword of a public tag other than a group length; "" for any other tag."""
    tag = int(tag_hex, 16)
    if (tag >> 16) % 2 or tag & 0xFFFF == 0:
        return ""  # private, or a group length
    return str(keyword_for_tag(tag))


def flatten(
    dicom_json: dict[str, Any], file_meta_json: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Return the indexed top-level attributes of a DICOM JSON object, by keyword.

    Kept: public, non-sequence, non-binary elements with a value no longer than
    :data:`MAX_FLAT_VALUE_BYTES`. Text becomes a string (multi-valued: a list), PN its
    Alphabetic group, numbers :class:`~decimal.Decimal` (never float).

    Examples
    --------
    >>> flatten({"00080060": {"vr": "CS", "Value": ["CT"]}})
    {'Modality': 'CT'}
    """
    out: dict[str, Any] = {}
    for source in (file_meta_json or {}, dicom_json):
        for tag_hex, element in source.items():
            keyword = _flat_keyword(tag_hex)
            if not keyword:
                continue  # private, a group length, or not in the dictionary
            vr = element.get("vr", "UN")
            if vr in _FLAT_SKIP_VRS:
                continue
            value = _flat_value(vr, element)
            if value is not None:
                out[keyword] = value
    return out


def _size_of(value: Any) -> int:
    if isinstance(value, str):
        return len(value) if value.isascii() else len(value.encode("utf-8"))
    if isinstance(value, (bytes, bytearray)):
        return len(value)
    if isinstance(value, bool) or value is None:
        return 1
    if isinstance(value, (Decimal, int, float)):
        digits = len(str(value).lstrip("-").replace(".", "").lstrip("0")) or 1
        return (digits + 1) // 2 + 1
    if isinstance(value, (list, tuple)):
        return 3 + sum(1 + _size_of(v) for v in value)
    if isinstance(value, dict):
        return 3 + sum(1 + len(k.encode("utf-8")) + _size_of(v) for k, v in value.items())
    return len(str(value).encode("utf-8"))


def item_size(item: dict[str, Any]) -> int:
    """Return the size DynamoDB counts for ``item`` (names plus values), rounded up.

    Examples
    --------
    >>> item_size({"s3_key": "a.dcm"})
    11
    """
    return sum(len(name.encode("utf-8")) + _size_of(value) for name, value in item.items())


def gzip_json(obj: Any) -> bytes:
    """Compact JSON, gzip-compressed, reproducible (no timestamp in the gzip header)."""
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    return gzip.compress(text.encode("utf-8"), compresslevel=6, mtime=0)


@dataclass
class BuiltRecord:
    """A record and, when its JSON did not fit, the sidecar object to write.

    Attributes
    ----------
    item:
        The DynamoDB item (Python types: str, Decimal, bytes, lists).
    sidecar_uri, sidecar_body:
        Where the gzip JSON must be written (``s3://bucket/key``) and its bytes, when the
        item keeps ``dicom_json_s3`` instead of ``dicom_json_gz``.
    dropped:
        Flattened attributes left out so the item fits (they stay in the JSON).
    """

    item: dict[str, Any]
    sidecar_uri: str | None = None
    sidecar_body: bytes | None = None
    dropped: tuple[str, ...] = ()


def now_iso() -> str:
    """The current UTC time as ISO-8601 with milliseconds and a ``Z``."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def build_record(
    dicom_json: dict[str, Any],
    *,
    s3_key: str,
    bucket: str | None = None,
    file_meta_json: dict[str, Any] | None = None,
    header_bytes: int | None = None,
    size: int | None = None,
    etag: str | None = None,
    version_id: str | None = None,
    sequencer: str | None = None,
    event_time: str | None = None,
    indexed_at: str | None = None,
    sidecar_uri: str | None = None,
    budget: int = DEFAULT_ITEM_BUDGET,
) -> BuiltRecord:
    """Build the schema-v1 item of one DICOM object.

    Parameters
    ----------
    dicom_json:
        The header's DICOM JSON object (:func:`pipeline.dicom.dicomjson.header_to_json`).
    s3_key:
        The partition key: the object key as stored (URL-decoded).
    sidecar_uri:
        Where the JSON goes when the item would exceed ``budget``; without it such an
        item raises instead (there is nowhere to put the JSON).
    budget:
        The largest item size allowed, at most :data:`DYNAMODB_ITEM_LIMIT`.

    Raises
    ------
    MissingRequiredUid
        One of the four UIDs is absent or empty.
    """
    budget = min(budget, DYNAMODB_ITEM_LIMIT)
    uids: dict[str, str] = {}
    for keyword, tag in REQUIRED_UIDS.items():
        values = dicom_json.get(tag, {}).get("Value") or []
        value = values[0] if values and isinstance(values[0], str) else ""
        if not value.strip():
            raise MissingRequiredUid(f"{keyword} ({tag[:4]},{tag[4:]}) is missing or empty")
        uids[keyword] = value.strip()
    patient = dicom_json.get("00100020", {}).get("Value") or []
    patient_id = "\\".join(v if isinstance(v, str) else "" for v in patient).strip()

    item: dict[str, Any] = {
        "s3_key": s3_key,
        "bucket": bucket,
        "status": "indexed",
        "etag": etag.strip('"') if etag else None,
        "size": Decimal(size) if size is not None else None,
        "version_id": version_id,
        "sequencer": sequencer,
        "event_time": event_time,
        "indexed_at": indexed_at or now_iso(),
        "parser_version": __version__,
        "header_bytes": Decimal(header_bytes) if header_bytes is not None else None,
        "orthanc_instance_id": orthanc_instance_id(
            patient_id,
            uids["StudyInstanceUID"],
            uids["SeriesInstanceUID"],
            uids["SOPInstanceUID"],
        ),
    }
    item = {k: v for k, v in item.items() if v is not None}
    flat = flatten(dicom_json, file_meta_json)
    flat.update(uids)
    item.update(flat)
    body = gzip_json(dicom_json)
    built = BuiltRecord(item=item)
    fixed = item_size(item)
    if fixed + len("dicom_json_gz") + len(body) <= budget:
        item["dicom_json_gz"] = body
        return built
    if sidecar_uri is None:
        raise ValueError("the record needs a sidecar location for its JSON")
    item["dicom_json_s3"] = sidecar_uri
    built.sidecar_uri, built.sidecar_body = sidecar_uri, body
    # Still too big (thousands of flattened attributes): drop the largest flattened ones.
    dropped: list[str] = []
    size_now = item_size(item)
    if size_now > budget:
        candidates = sorted(
            (k for k in flat if k not in REQUIRED_UIDS),
            key=lambda k: len(k) + _size_of(flat[k]),
            reverse=True,
        )
        for keyword in candidates:
            size_now -= len(keyword) + _size_of(item.pop(keyword))
            dropped.append(keyword)
            if size_now <= budget:
                break
    built.dropped = tuple(dropped)
    return built


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(bytes(value)).decode("ascii")
    raise TypeError(f"cannot encode {type(value).__name__}")


def record_to_json(item: dict[str, Any]) -> str:
    """The record as plain JSON: numbers as numbers, binary attributes base64-encoded."""
    return json.dumps(item, default=_json_default, ensure_ascii=False, separators=(",", ":"))
