"""One call from a source to its DICOM JSON and record: what the CLI and the Lambda use."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeline.dicom.dicomjson import file_meta_to_json, header_to_json
from pipeline.dicom.direct import read_direct
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

__all__ = ["ParsedObject", "parse", "sidecar_uri_for"]


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
    """The outcome of parsing one source."""

    source: ByteSource
    header: DicomHeader
    dicom_json: dict[str, Any]
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
            sidecar_uri=sidecar_uri_for(src),
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
    """
    limits = limits or ReadLimits()
    src = open_source(source) if isinstance(source, str) else source
    # The direct reader first; the headers it leaves to pydicom are read again from the
    # start, with the ranges it fetched served from memory.
    recorded = RecordingSource(src, keep=2)
    direct = read_direct(recorded, limits)
    if direct is not None:
        header, dicom_json = direct
        return ParsedObject(source=src, header=header, dicom_json=dicom_json, limits=limits)
    header = read_header(recorded, limits)
    try:
        dicom_json = header_to_json(header, bulk_threshold=limits.bulk_threshold)
    except DicomPipelineError:
        raise
    except Exception as exc:
        raise classify_exception(exc, src.uri, header.stream) from exc
    return ParsedObject(source=src, header=header, dicom_json=dicom_json, limits=limits)
