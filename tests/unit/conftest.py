"""Fakes and factories of the unit layer (no network, no AWS except moto)."""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from pipeline.dicom.header import ReadLimits
from pipeline.dicom.parse import ParsedObject, parse
from pipeline.errors import CODES, DicomPipelineError

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


@dataclass
class BytesSource:
    """A ByteSource fake over bytes in memory that records every range it serves.

    ``size`` may exceed ``len(data)``: the missing tail reads as zeros (a sparse object), so a
    test can declare a huge object without allocating it.
    """

    data: bytes
    uri: str = "mem://object.dcm"
    size: int = -1
    ranges: list[tuple[int, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.size < 0:
            self.size = len(self.data)

    def read_range(self, offset: int, length: int) -> bytes:
        self.ranges.append((offset, length))
        end = min(offset + length, self.size)
        if offset >= end:
            return b""
        chunk = self.data[offset:end]
        return chunk + bytes(end - offset - len(chunk))

    @property
    def bytes_served(self) -> int:
        return sum(max(0, min(o + n, self.size) - o) for o, n in self.ranges)


@dataclass
class Outcome:
    """What one parse gave: a record (and its parse) or a coded error."""

    parsed: ParsedObject | None = None
    item: dict[str, Any] | None = None
    error: DicomPipelineError | None = None

    @property
    def code(self) -> str:
        return self.error.code if self.error else "RECORD"


def outcome_of(source: Any, limits: ReadLimits | None = None) -> Outcome:
    """Parse ``source`` and build its record; a coded error is an outcome, anything else raises."""
    try:
        parsed = parse(source, limits)
        item = parsed.record().item
    except DicomPipelineError as exc:
        assert exc.code in CODES, f"unknown code {exc.code}"
        assert exc.code != "INTERNAL", f"INTERNAL: {exc.message} (cause: {exc.__cause__!r})"
        return Outcome(error=exc)
    return Outcome(parsed=parsed, item=item)


@pytest.fixture(scope="session")
def parse_outcome() -> Callable[..., Outcome]:
    """``parse_outcome(source, limits=None)`` -> :class:`Outcome`; fails the test on INTERNAL."""
    return outcome_of


@pytest.fixture(scope="session")
def mem_source() -> type[BytesSource]:
    """The in-memory ByteSource fake (a class: ``mem_source(data, size=...)``)."""
    return BytesSource


def base_dataset() -> Dataset:
    """A minimal valid Secondary Capture header with the four UIDs and a patient."""
    ds = Dataset()
    ds.SOPClassUID = SECONDARY_CAPTURE
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "P-001"
    ds.Modality = "OT"
    return ds


def to_part10(ds: Dataset, transfer_syntax: str = ExplicitVRLittleEndian) -> bytes:
    """Encode ``ds`` as a Part 10 file (preamble, DICM, file meta) with pydicom."""
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    ds.file_meta.MediaStorageSOPClassUID = ds.get("SOPClassUID") or SECONDARY_CAPTURE
    ds.file_meta.MediaStorageSOPInstanceUID = ds.get("SOPInstanceUID") or "1.2.3.4"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@pytest.fixture(scope="session")
def make_dicom() -> Callable[..., bytes]:
    """Factory: ``make_dicom(**attrs, transfer_syntax=...)`` -> Part 10 bytes."""

    def make(transfer_syntax: str = ExplicitVRLittleEndian, **attrs: Any) -> bytes:
        ds = base_dataset()
        for name, value in attrs.items():
            setattr(ds, name, value)
        return to_part10(ds, transfer_syntax)

    return make


_TAG = re.compile(r"[0-9A-F]{8}")
_AT = re.compile(r"[0-9A-F]{8}")
BINARY = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}
NUMBERS = {"FL", "FD", "SL", "SS", "SV", "UL", "US", "UV", "IS", "DS"}
ALL_VRS = BINARY | NUMBERS | {
    "AE", "AS", "AT", "CS", "DA", "DT", "LO", "LT", "PN", "SH", "SQ", "ST", "TM", "UC",
    "UI", "UR", "UT",
}  # fmt: skip
PIXEL_DATA = {0x7FE00010, 0x7FE00008, 0x7FE00009}


def conformance_problems(obj: dict[str, Any], path: str = "") -> list[str]:
    """Every way ``obj`` departs from PS3.18 Annex F and DESIGN.md (empty when it conforms)."""
    problems: list[str] = []
    for key, element in obj.items():
        where = f"{path}/{key}"
        if not _TAG.fullmatch(key):
            problems.append(f"{where}: key is not 8 upper-case hex digits")
            continue
        tag = int(key, 16)
        if tag & 0xFFFF == 0:
            problems.append(f"{where}: group length")
        if tag >> 16 == 0xFFFC:
            problems.append(f"{where}: padding (FFFC,FFFC)")
        if tag in PIXEL_DATA:
            problems.append(f"{where}: pixel data")
        if tag >> 16 == 0x0002:
            problems.append(f"{where}: file meta inside the dataset")
        if not isinstance(element, dict) or "vr" not in element:
            problems.append(f"{where}: no vr")
            continue
        vr = element["vr"]
        if vr not in ALL_VRS:
            problems.append(f"{where}: unknown vr {vr!r}")
        payload = set(element) - {"vr"}
        if len(payload) > 1 or not payload <= {"Value", "InlineBinary", "BulkDataURI"}:
            problems.append(f"{where}: members {sorted(payload)}")
            continue
        if "InlineBinary" in element:
            if vr not in BINARY:
                problems.append(f"{where}: InlineBinary for {vr}")
            try:
                base64.b64decode(element["InlineBinary"], validate=True)
            except ValueError:
                problems.append(f"{where}: InlineBinary is not base64")
        if "BulkDataURI" in element:
            if vr not in BINARY:
                problems.append(f"{where}: BulkDataURI for {vr}")
            if not isinstance(element["BulkDataURI"], str):
                problems.append(f"{where}: BulkDataURI is not a string")
        if "Value" not in element:
            continue
        values = element["Value"]
        if not isinstance(values, list) or not values:
            problems.append(f"{where}: Value is not a non-empty array")
            continue
        if vr in BINARY:
            problems.append(f"{where}: Value for binary {vr}")
        elif vr == "SQ":
            for i, item in enumerate(values):
                if not isinstance(item, dict):
                    problems.append(f"{where}[{i}]: item is not an object")
                else:
                    problems.extend(conformance_problems(item, f"{where}[{i}]"))
        elif vr == "PN":
            for v in values:
                if v is not None and (
                    not isinstance(v, dict)
                    or not v
                    or not set(v) <= {"Alphabetic", "Ideographic", "Phonetic"}
                    or not all(isinstance(s, str) for s in v.values())
                ):
                    problems.append(f"{where}: PN value {type(v).__name__} not a name object")
        elif vr in NUMBERS:
            for v in values:
                ok = v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))
                # An invalid IS/DS string is kept as written (documented in docs/record.md);
                # a non-finite FL/FD, which a JSON number cannot hold, is spelled out.
                ok = ok or (vr in {"IS", "DS"} and isinstance(v, str))
                ok = ok or (vr in {"FL", "FD"} and v in ("NaN", "Infinity", "-Infinity"))
                if not ok:
                    problems.append(f"{where}: {vr} value of type {type(v).__name__}")
        elif vr == "AT":
            for v in values:
                if not (isinstance(v, str) and _AT.fullmatch(v)):
                    problems.append(f"{where}: AT value is not GGGGEEEE")
        else:
            for v in values:
                if v is not None and not isinstance(v, str):
                    problems.append(f"{where}: {vr} value of type {type(v).__name__}")
    return problems


@pytest.fixture(scope="session")
def check_conformance() -> Callable[[dict[str, Any]], list[str]]:
    return conformance_problems


@pytest.fixture(scope="session")
def dataset_factory() -> Callable[[], Dataset]:
    """A fresh minimal valid dataset (four UIDs, patient, modality) per call."""
    return base_dataset


@pytest.fixture(scope="session")
def encode() -> Callable[..., bytes]:
    """``encode(ds, transfer_syntax=ExplicitVRLittleEndian)`` -> Part 10 bytes."""
    return to_part10
