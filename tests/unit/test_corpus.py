"""Every file pydicom bundles gives a record or a coded error, never a traceback or INTERNAL.

The corpus is pydicom's own ``data/test_files`` (about 176 files: DICOMDIR members, DICOMDIRs,
ICC profiles, JSON, text and a gzip included) and ``data/charset_files``, globbed next to
``pydicom.__file__``; none of them was written by us.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from pydicom.errors import InvalidDicomError

from pipeline.errors import CODES

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
CHARSET_FILES = Path(pydicom.__file__).parent / "data" / "charset_files"
REQUIRED = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
CORPUS = sorted(p for root in (TEST_FILES, CHARSET_FILES) for p in root.rglob("*") if p.is_file())

#: Files pydicom reads with all four UIDs that are nevertheless not indexable, and why.
NOT_INDEXABLE = {
    # The object ends inside the 976-byte Beam Sequence that starts at offset 1418; pydicom
    # silently keeps the items it could read, the pipeline reports TRUNCATED (DESIGN.md:
    # "the object ends inside the header"), so a cut upload is re-sent, not half-indexed.
    "rtplan_truncated.dcm": "TRUNCATED",
}


def _name(path: Path) -> str:
    root = TEST_FILES if path.is_relative_to(TEST_FILES) else CHARSET_FILES
    return f"{root.name}/{path.relative_to(root)}"


def pydicom_reads_with_uids(path: Path) -> bool:
    """Whether pydicom itself (no force) reads ``path`` and finds the four UIDs."""
    try:
        ds = pydicom.dcmread(path, force=False, stop_before_pixels=True)
        return all(str(ds.get(keyword) or "").strip() for keyword in REQUIRED)
    except (InvalidDicomError, OSError, ValueError, EOFError):
        return False


def test_the_corpus_is_the_bundled_one() -> None:
    # Given pydicom's bundled data
    # When it is globbed
    # Then it holds the ~176 test files and the charset files this layer is written against
    assert len([p for p in CORPUS if p.is_relative_to(TEST_FILES)]) >= 170
    assert len([p for p in CORPUS if p.is_relative_to(CHARSET_FILES)]) >= 15
    assert any("dicomdirtests" in str(p) for p in CORPUS)


@pytest.mark.parametrize("path", CORPUS, ids=_name)
def test_every_bundled_file_gives_a_record_or_a_coded_error(
    path: Path, parse_outcome: Callable[..., object], check_conformance: Callable
) -> None:
    # Given a file pydicom bundles (DICOM or not)
    # When the pipeline parses it and builds its record
    outcome = parse_outcome(str(path))

    # Then the outcome is a record or a known code other than INTERNAL
    assert outcome.code == "RECORD" or outcome.code in CODES
    assert outcome.code != "INTERNAL"
    if outcome.item is not None:
        # and a record's JSON is valid, conformant JSON with its four UIDs flattened
        dicom_json = outcome.parsed.dicom_json
        json.dumps(dicom_json, allow_nan=False)
        assert check_conformance(dicom_json) == []
        for keyword in REQUIRED:
            assert outcome.item[keyword]
    else:
        # and an error message never quotes a value: it is short and names no element text
        assert len(outcome.error.message) < 300


def _readable_with_uids() -> list[Path]:
    """The corpus files pydicom itself reads with the four UIDs (decided at collection, so
    the test below runs for exactly those: nothing is skipped)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [p for p in CORPUS if pydicom_reads_with_uids(p)]


READABLE_WITH_UIDS = _readable_with_uids()


def test_most_bundled_files_are_readable_by_pydicom_with_uids() -> None:
    # Given the corpus, When pydicom reads it, Then most files are complete DICOM instances
    assert len(READABLE_WITH_UIDS) >= 140


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom's own read of odd files
@pytest.mark.parametrize("path", READABLE_WITH_UIDS, ids=_name)
def test_files_pydicom_reads_with_four_uids_become_records(
    path: Path, parse_outcome: Callable[..., object], lenient_pydicom: None
) -> None:
    # Given a bundled file that pydicom itself (its default, lenient reading) reads, with
    # the four UIDs in it

    # When the pipeline parses it
    outcome = parse_outcome(str(path))

    # Then it is indexed (the documented exceptions get their documented code)
    assert outcome.code == NOT_INDEXABLE.get(path.name, "RECORD"), outcome.error
    if outcome.item is not None:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert outcome.item["SOPInstanceUID"] == str(ds.SOPInstanceUID).strip()
        assert outcome.item["StudyInstanceUID"] == str(ds.StudyInstanceUID).strip()


def test_most_of_the_corpus_is_indexed(parse_outcome: Callable[..., object]) -> None:
    # Given the whole corpus
    # When every file is parsed
    codes = [parse_outcome(str(p)).code for p in CORPUS]

    # Then the DICOM images and documents are indexed and only the rest fails, with codes
    assert codes.count("RECORD") >= 140
    assert "INTERNAL" not in codes
    assert set(codes) <= {"RECORD", "NOT_DICOM", "MISSING_REQUIRED_UID", "TRUNCATED"}


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("README.txt", "NOT_DICOM"),
        ("crayons.icc", "NOT_DICOM"),
        ("zipMR.gz", "NOT_DICOM"),
        ("test1.json", "NOT_DICOM"),
        ("dicomdirtests/DICOMDIR", "MISSING_REQUIRED_UID"),
        ("UN_sequence.dcm", "MISSING_REQUIRED_UID"),
        ("rtplan_truncated.dcm", "TRUNCATED"),
        ("MR_truncated.dcm", "RECORD"),  # cut inside Pixel Data: the header is whole
        ("ExplVR_LitEndNoMeta.dcm", "RECORD"),  # no preamble, no file meta: still DICOM
    ],
)
def test_known_files_get_their_code(
    name: str, code: str, test_file: Callable[[str], Path], parse_outcome: Callable
) -> None:
    # Given a bundled file whose nature we know
    # When it is parsed
    outcome = parse_outcome(str(test_file(name)))
    # Then it gets exactly the expected outcome
    assert outcome.code == code


#: The corpus files the direct reader leaves to pydicom's reader today, and why. A change to
#: this list is a change of speed (pydicom's reader is about 2.5 times slower): a file that
#: joins it is a regression of the direct reader, one that leaves it an improvement to note.
LEFT_TO_PYDICOM = {
    "test_files/MR_small_implicit.dcm": "an ambiguous VR",
    "test_files/SC_rgb_jpeg.dcm": "the dataset's VR encoding is not its transfer syntax's",
    "test_files/dicomdirtests/DICOMDIR-nooffset": "a sequence value ends inside an element header",
    "test_files/image_dfl.dcm": "a deflated dataset",
    "test_files/rtplan_truncated.dcm": "TRUNCATED near offset 1418",
}


def test_the_direct_reader_leaves_exactly_five_corpus_files_to_pydicom(
    parse_outcome: Callable[..., object], caplog: pytest.LogCaptureFixture
) -> None:
    # Given the whole corpus
    # When every file is parsed, the parse module's log captured
    readers: dict[str, str] = {}
    with caplog.at_level(logging.INFO, logger="pipeline.dicom.parse"):
        for path in CORPUS:
            outcome = parse_outcome(str(path))
            if outcome.parsed is not None:
                readers[_name(path)] = outcome.parsed.reader
    lines = [r.getMessage() for r in caplog.records if r.name == "pipeline.dicom.parse"]

    # Then exactly these files went to pydicom's reader, one log line each, with the reason
    assert len(lines) == 5
    left = {}
    for line in lines:
        match = re.fullmatch(
            r"pydicom's reader reads (.+): the direct reader left it \((.+)\)", line
        )
        assert match, line
        left[_name(Path(match[1]))] = match[2]
    assert left == LEFT_TO_PYDICOM
    # and the records say so too (the other two end in a coded error: no record)
    assert sorted(n for n, r in readers.items() if r == "pydicom") == [
        "test_files/MR_small_implicit.dcm",
        "test_files/SC_rgb_jpeg.dcm",
        "test_files/image_dfl.dcm",
    ]
    assert set(readers.values()) == {"direct", "pydicom"}
