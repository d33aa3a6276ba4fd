"""One call from a source to its DICOM JSON and record: what the CLI and the Lambda use."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Literal

from pipeline.dicom.dicomjson import file_meta_to_json, header_to_json
from pipeline.dicom.direct import fallback_reason, read_direct
from pipeline.dicom.header import DicomHeader, ReadLimits, classify_exception, read_header
from pipeline.dicom.record import DEFAULT_ITEM_BUDGET, BuiltRecord, build_record
from pipeline.dicom.sources import (
    ByteSource,
    LocalFileSource,
    RecordingSource,
    S3Source,
    open_source,
)
from pipeline.errors import DicomPipelineError
from pipeline.names import SIDECAR_PREFIX

__all__ = ["ParsedObject", "Reader", "parse", "sidecar_uri_for"]

log = logging.getLogger(__name__)

#: Which reader read a header: the direct reader, or pydicom's (what it falls back to).
Reader = Literal["direct", "pydicom"]


def sidecar_uri_for(source: ByteSource, prefix: str = SIDECAR_PREFIX) -> str:
    """Where an object's offloaded JSON goes: beside it, under ``prefix``.

    Examples
    --------
    >>> sidecar_uri_for(S3Source("images", "ab12.dcm"))
    's3://images/dicom-json/ab12.dcm.json.gz'
    """
    if isinstance(source, S3Source):
        return f"s3://{source.bucket}/{prefix}{source.key}.json.gz"
    return f"{source.uri}.json.gz"


@dataclass
class ParsedObject:
    """The outcome of parsing one source.

    ``reader`` says which reader read the header: ``"direct"`` (most headers) or
    ``"pydicom"``, when the direct reader left the header to pydicom's reader.
    """

    source: ByteSource
    header: DicomHeader
    dicom_json: dict[str, Any]
    reader: Reader
    limits: ReadLimits = field(default_factory=ReadLimits)

    @property
    def stats(self) -> dict[str, int]:
        """``bytes_read``, ``object_size`` and ``header_bytes``."""
        return {
            "bytes_read": self.header.bytes_read,
            "object_size": self.header.object_size,
            "header_bytes": self.header.header_bytes,
        }

    def record(
        self,
        *,
        s3_key: str | None = None,
        budget: int = DEFAULT_ITEM_BUDGET,
        **provenance: Any,
    ) -> BuiltRecord:
        """Build the metadata record (see :func:`pipeline.dicom.record.build_record`)."""
        src = self.source
        bucket: str | None = None
        if isinstance(src, S3Source):
            key, bucket = src.key, src.bucket
        elif isinstance(src, LocalFileSource):
            key = str(src.path)
        else:  # any other ByteSource: its URI is the best key it has
            key = src.uri
        meta_json = header_file_meta_json(self)
        return build_record(
            self.dicom_json,
            s3_key=s3_key or key,
            bucket=provenance.pop("bucket", bucket),
            file_meta_json=meta_json,
            header_bytes=self.header.header_bytes,
            size=provenance.pop("size", self.header.object_size),
            etag=provenance.pop("etag", getattr(src, "etag", None)),
            version_id=provenance.pop("version_id", getattr(src, "version_id", None)),
            sidecar_uri=provenance.pop("sidecar_uri", None) or sidecar_uri_for(src),
            budget=budget,
            **provenance,
        )


def header_file_meta_json(parsed: ParsedObject) -> dict[str, Any]:
    """The File Meta Information group as DICOM JSON (for the flattened attributes)."""
    if parsed.header.file_meta_json is not None:  # built by the direct reader
        return parsed.header.file_meta_json
    return file_meta_to_json(parsed.header, bulk_threshold=parsed.limits.bulk_threshold)


def parse(source: str | ByteSource, limits: ReadLimits | None = None) -> ParsedObject:
    """Read the header of ``source`` and convert it to DICOM JSON.

    Parameters
    ----------
    source:
        A path, an ``s3://bucket/key`` URI, or a :class:`~pipeline.dicom.sources.ByteSource`.
    limits:
        Read limits; the bulk threshold also decides InlineBinary vs BulkDataURI.

    Raises
    ------
    DicomPipelineError
        Always coded; an unexpected exception becomes ``INTERNAL``.

    Notes
    -----
    When the direct reader leaves the header to pydicom's reader, one INFO line on this
    module's logger says so, naming the object by its key (path for a file) and why, with no
    element value; ``ParsedObject.reader`` is then ``"pydicom"``.
    """
    limits = limits or ReadLimits()
    src = open_source(source) if isinstance(source, str) else source
    # The direct reader first; the headers it leaves to pydicom are read again from the
    # start, with the ranges it fetched served from memory.
    recorded = RecordingSource(src, keep=2)
    direct = read_direct(recorded, limits)
    if direct is not None:
        header, dicom_json = direct
        return ParsedObject(
            source=src, header=header, dicom_json=dicom_json, reader="direct", limits=limits
        )
    log.info(
        "pydicom's reader reads %s: the direct reader left it (%s)",
        _log_name(src),
        fallback_reason() or "no reason given",
    )
    header = read_header(recorded, limits)
    try:
        dicom_json = header_to_json(header, bulk_threshold=limits.bulk_threshold)
    except DicomPipelineError:
        raise
    except Exception as exc:
        raise classify_exception(exc, src.uri, header.stream) from exc
    return ParsedObject(
        source=src, header=header, dicom_json=dicom_json, reader="pydicom", limits=limits
    )


def _log_name(source: ByteSource) -> str:
    """How a log line names an object: its key (S3) or path (file), never more."""
    if isinstance(source, S3Source):
        return source.key
    if isinstance(source, LocalFileSource):
        return str(source.path)
    return source.uri
