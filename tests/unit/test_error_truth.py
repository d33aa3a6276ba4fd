"""Errors tell the truth: bad bytes are TRUNCATED or MALFORMED, a bug is INTERNAL, and a
header the direct reader leaves to pydicom's reader says so.

An exception of a type bad bytes do not raise (AttributeError, TypeError, KeyError,
IndexError...) is a bug in us: ``INTERNAL``, never ``MALFORMED``, and never hidden by
reading the header again with pydicom.
"""

from __future__ import annotations

import logging
import re
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydicom.errors import InvalidDicomError

import pipeline.dicom.direct
import pipeline.dicom.header
import pipeline.dicom.parse
from pipeline.dicom.header import classify_exception, is_parse_error, raised_by_pydicom
from pipeline.dicom.parse import parse
from pipeline.errors import InternalError, Malformed, Truncated


class _Stream:
    def tell(self) -> int:
        return 1234


@pytest.mark.parametrize(
    "exc",
    [
        AttributeError("x"),
        TypeError("x"),
        KeyError("x"),
        IndexError("x"),
        LookupError("x"),
        RuntimeError("x"),
        AssertionError("x"),
        ZeroDivisionError("x"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_an_exception_bad_bytes_do_not_raise_is_internal(exc: Exception) -> None:
    # Given an exception of a type no malformed header makes the readers raise
    # When it is classified
    error = classify_exception(exc, "mem://a.dcm", _Stream())
    # Then it is INTERNAL (a bug), naming the type and the offset, not MALFORMED
    assert type(error) is InternalError
    assert (
        error.message
        == f"{type(exc).__name__} while reading the header of mem://a.dcm near offset 1234"
    )
    assert not is_parse_error(exc)


@pytest.mark.parametrize(
    "exc",
    [
        InvalidDicomError("x"),
        struct.error("x"),
        ValueError("x"),
        UnicodeDecodeError("ascii", b"\xff", 0, 1, "x"),
        OSError("No tag to read at file position 0"),
        NotImplementedError("Unknown Value Representation"),
        OverflowError("x"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_what_bad_bytes_make_pydicom_raise_is_malformed(exc: Exception) -> None:
    # Given what pydicom and struct raise on bytes that are not a valid header
    # When it is classified / Then MALFORMED, never quoting the exception's text
    error = classify_exception(exc, "mem://a.dcm", _Stream())
    assert type(error) is Malformed
    assert "x" not in error.message.replace("mem://a.dcm", "")
    assert is_parse_error(exc)


def test_an_eof_is_truncated() -> None:
    error = classify_exception(EOFError(), "mem://a.dcm", _Stream())
    assert type(error) is Truncated


def _raise_in_pydicom() -> BaseException:
    from pydicom.charset import convert_encodings

    try:
        convert_encodings([7])  # type: ignore[list-item]
    except Exception as exc:
        return exc
    raise AssertionError("pydicom took a number as a character set")


def _raise_here() -> BaseException:
    try:
        {}["a bug"]
    except Exception as exc:
        return exc
    raise AssertionError


def test_raised_by_pydicom_tells_pydicom_from_us() -> None:
    # Given a TypeError raised in the standard library on pydicom's behalf, and a KeyError
    # raised by our own code
    # Then the first is pydicom's (an odd value), the second ours (a bug)
    assert raised_by_pydicom(_raise_in_pydicom())
    assert not raised_by_pydicom(_raise_here())


def _with_charset_vr(data: bytes, vr: bytes) -> bytes:
    """``data`` with the explicit VR of its Specific Character Set replaced by ``vr``."""
    at = data.index(b"\x08\x00\x05\x00CS")
    return data[: at + 4] + vr + data[at + 6 :]


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "pydicom"])
def test_a_specific_character_set_that_is_not_text_is_malformed(
    direct: bool,
    make_dicom: Callable[..., bytes],
    mem_source: type,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a header whose (0008,0005) is US (pydicom hands its numbers to the charset lookup)
    data = _with_charset_vr(make_dicom(SpecificCharacterSet="ISO_IR 100"), b"US")
    if not direct:
        monkeypatch.setattr(pipeline.dicom.parse, "read_direct", lambda source, limits: None)
    # When parsed, by either reader
    with pytest.raises(Malformed) as caught:
        parse(mem_source(data))
    # Then MALFORMED naming the element (the fuzzers found it INTERNAL once pydicom's
    # TypeError was no longer called MALFORMED wholesale)
    assert "Specific Character Set (0008,0005)" in caught.value.message


def test_a_bug_in_the_direct_reader_is_internal_not_hidden_by_pydicom(
    test_file: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a bug in the direct reader (an AttributeError while it converts a value)
    def broken(*args: Any, **kwargs: Any) -> None:
        raise AttributeError("'NoneType' object has no attribute 'value'")

    monkeypatch.setattr(pipeline.dicom.direct._DirectReader, "emit", broken)
    # When a good file is parsed
    with pytest.raises(InternalError) as caught:
        parse(str(test_file("CT_small.dcm")))
    # Then INTERNAL: pydicom's reader does not quietly read it again
    assert caught.value.message.startswith("AttributeError while reading the header of file://")


def test_a_bug_on_the_pydicom_path_is_internal(
    test_file: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a bug after pydicom read the dataset (a KeyError in our own check)
    def broken(*args: Any) -> None:
        raise KeyError("00100010")

    monkeypatch.setattr(pipeline.dicom.parse, "read_direct", lambda source, limits: None)
    monkeypatch.setattr(pipeline.dicom.header, "_check_values_complete", broken)
    # When a good file is parsed / Then INTERNAL, never MALFORMED
    with pytest.raises(InternalError, match=r"^KeyError while reading the header"):
        parse(str(test_file("CT_small.dcm")))


def test_a_bug_in_our_value_conversion_is_internal(
    test_file: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a bug in our conversion of one value (an IndexError raised by our own code where
    # an undecodable value would be kept as UN)
    original = pipeline.dicom.dicomjson.convert_raw_data_element

    def broken(raw: Any, *args: Any, **kwargs: Any) -> Any:
        if raw.tag == 0x00100010:
            raise IndexError("a bug of ours")
        return original(raw, *args, **kwargs)

    monkeypatch.setattr(pipeline.dicom.dicomjson, "convert_raw_data_element", broken)
    monkeypatch.setattr(pipeline.dicom.dicomjson, "fast_customised", lambda: True)
    monkeypatch.setattr(pipeline.dicom.parse, "read_direct", lambda source, limits: None)
    # When a file is parsed / Then INTERNAL, not a PatientName quietly turned into UN
    with pytest.raises(InternalError, match=r"^IndexError"):
        parse(str(test_file("CT_small.dcm")))


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "pydicom"])
def test_a_value_pydicom_cannot_decode_is_kept_as_un(
    direct: bool,
    dataset_factory: Callable[[], Any],
    encode: Callable[..., bytes],
    mem_source: type,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a Person Name that pydicom's own decoder fails on under a Japanese character set
    # (an IndexError inside pydicom.charset: an odd value, not a bug of ours)
    ds = dataset_factory()
    ds.SpecificCharacterSet = ["ISO 2022 IR 87", "ISO 2022 IR 13"]
    ds.PatientName = "ZZZZZZZZZZZZ"
    data = encode(ds).replace(b"ZZZZZZZZZZZZ", b"=2)24+9=7.)2")
    if not direct:
        monkeypatch.setattr(pipeline.dicom.parse, "read_direct", lambda source, limits: None)
    # When parsed, by either reader
    parsed = parse(mem_source(data))
    # Then a record: the value is kept as its bytes (UN), as documented, not a failure
    assert parsed.dicom_json["00100010"] == {
        "vr": "UN",
        "InlineBinary": "GyhKPTIpMjQrOT03LikyIA==",  # ESC ( J =2)24+9=7.)2 and its padding
    }
    assert parsed.record().item["SOPInstanceUID"]


# -- the direct reader's fallback is observable ---------------------------------------------------


def test_a_header_left_to_pydicom_says_so(
    test_file: Callable[[str], Path], caplog: pytest.LogCaptureFixture
) -> None:
    # Given a deflated file (the direct reader leaves those to pydicom) and a usual one
    deflated, usual = test_file("image_dfl.dcm"), test_file("CT_small.dcm")
    # When both are parsed
    with caplog.at_level(logging.DEBUG, logger="pipeline.dicom.parse"):
        first = parse(str(deflated))
        second = parse(str(usual))
    # Then the parse records which reader read each header
    assert first.reader == "pydicom"
    assert second.reader == "direct"
    # and one INFO line says the first went to pydicom, and why, naming only its path
    lines = [r for r in caplog.records if r.name == "pipeline.dicom.parse"]
    assert len(lines) == 1
    assert lines[0].levelno == logging.INFO
    assert lines[0].getMessage() == (
        f"pydicom's reader reads {deflated}: the direct reader left it (a deflated dataset)"
    )


def test_the_fallback_line_names_an_s3_object_by_its_key_only(
    s3_object: Callable[..., str],
    test_file: Callable[[str], Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given an S3 object the direct reader leaves to pydicom (implicit VR with an ambiguous VR)
    uri = s3_object("0a1b2c3d.dcm", test_file("MR_small_implicit.dcm").read_bytes())
    # When parsed
    with caplog.at_level(logging.INFO, logger="pipeline.dicom.parse"):
        parsed = parse(uri)
    # Then the line names the key, neither the bucket nor any element value
    assert parsed.reader == "pydicom"
    (line,) = [r.getMessage() for r in caplog.records if r.name == "pipeline.dicom.parse"]
    assert "0a1b2c3d.dcm" in line
    assert "images" not in line and "s3://" not in line
    patient = parsed.dicom_json["00100010"]["Value"][0]["Alphabetic"]
    assert patient not in line
    assert re.fullmatch(
        r"pydicom's reader reads 0a1b2c3d\.dcm: the direct reader left it \(.+\)", line
    )


def test_a_file_meta_element_of_an_unknown_vr_is_malformed(
    tmp_path: Path, test_file: Callable[[str], Path]
) -> None:
    # Given a file whose Media Storage SOP Class UID (0002,0002) says VR "TI" (a bit flipped
    # in "UI"; found by the direct reader's property test)
    raw = bytearray(test_file("nested_priv_SQ.dcm").read_bytes())
    at = raw.index(b"\x02\x00\x02\x00UI")
    raw[at + 4 : at + 6] = b"TI"
    path = tmp_path / "meta-vr.dcm"
    path.write_bytes(bytes(raw))
    # When its record is built, Then it is MALFORMED naming the element, not a bug
    with pytest.raises(Malformed, match=r"file meta element \(0002,0002\)"):
        parse(str(path)).record(s3_key="meta-vr.dcm")
