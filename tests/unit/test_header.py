"""Header-only reading: encodings, what an object is, truncation, limits and bytes read."""

from __future__ import annotations

import io
import struct
import tracemalloc
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian

from pipeline.dicom.header import ReadLimits, read_header
from pipeline.dicom.parse import parse
from pipeline.errors import Malformed, Truncated

# -- encodings ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "encoding"),
    [
        ("CT_small.dcm", (False, True, "1.2.840.10008.1.2.1")),
        ("MR_small_implicit.dcm", (True, True, "1.2.840.10008.1.2")),
        ("MR_small_bigendian.dcm", (False, False, "1.2.840.10008.1.2.2")),
        ("ExplVR_BigEnd.dcm", (False, False, "1.2.840.10008.1.2.2")),
        ("image_dfl.dcm", (False, True, "1.2.840.10008.1.2.1.99")),
        ("JPEG2000.dcm", (False, True, "1.2.840.10008.1.2.4.91")),
        ("ExplVR_LitEndNoMeta.dcm", (False, True, None)),  # no preamble, no file meta
        ("ExplVR_BigEndNoMeta.dcm", (False, False, None)),
        ("rtstruct.dcm", (True, True, None)),  # no preamble, implicit VR
    ],
)
def test_each_encoding_is_detected_and_read(
    name: str,
    encoding: tuple[bool, bool, str | None],
    test_file: Callable[[str], Path],
    lenient_pydicom: None,
) -> None:
    # Given a file in one of the encodings (implicit VR?, little endian?, transfer syntax),
    # with or without file meta
    implicit, little, syntax = encoding
    path = test_file(name)

    # When its header is read
    parsed = parse(str(path))
    item = parsed.record().item

    # Then the encoding is the file's and the record holds what pydicom reads from it
    header = parsed.header
    assert (header.is_implicit_vr, header.is_little_endian) == (implicit, little)
    assert header.transfer_syntax == syntax
    assert header.deflated == (syntax == DeflatedExplicitVRLittleEndian)
    ds = pydicom.dcmread(path, force=True, stop_before_pixels=True)
    assert item["SOPInstanceUID"] == ds.SOPInstanceUID
    assert item["Modality"] == ds.Modality
    if "PatientName" in ds and ds.PatientName:
        assert item["PatientName"] == ds.PatientName.components[0]


def test_the_header_ends_at_pixel_data(test_file: Callable[[str], Path]) -> None:
    # Given CT_small.dcm, whose Pixel Data starts at a known offset
    path = test_file("CT_small.dcm")
    raw = path.read_bytes()
    pixel_tag = raw.index(struct.pack("<HH", 0x7FE0, 0x0010) + b"OW")

    # When its header is read
    stats = parse(str(path)).stats

    # Then the header is everything before Pixel Data
    assert stats["header_bytes"] == pixel_tag
    assert stats["object_size"] == len(raw)


# -- what an object is ----------------------------------------------------------------------


def test_an_empty_object_is_not_dicom(mem_source: type, parse_outcome: Callable) -> None:
    # Given an empty object / When parsed / Then NOT_DICOM
    assert parse_outcome(mem_source(b"")).code == "NOT_DICOM"


@pytest.mark.parametrize(
    "data",
    [b"\x00", b"hello, world", b'{"json": true}\n' * 20, bytes(200), b"\xff" * 300],
    ids=["one-byte", "text", "json", "zeros", "ones"],
)
def test_other_content_is_not_dicom(data: bytes, mem_source: type, parse_outcome: Callable) -> None:
    # Given bytes that are no DICOM (no DICM prefix, no plausible first element)
    # When parsed
    # Then NOT_DICOM
    assert parse_outcome(mem_source(data)).code == "NOT_DICOM"


def test_an_orthanc_compressed_attachment_is_storage_encoded(
    test_file: Callable[[str], Path], mem_source: type, parse_outcome: Callable
) -> None:
    # Given a DICOM file the way Orthanc stores it with StorageCompression: the
    # uncompressed size as a little-endian uint64, then a zlib stream of the file
    dicom = test_file("CT_small.dcm").read_bytes()
    attachment = struct.pack("<Q", len(dicom)) + zlib.compress(dicom)

    # When it is parsed
    outcome = parse_outcome(mem_source(attachment))

    # Then it is STORAGE_ENCODED (not NOT_DICOM): the storage is misconfigured, the data fine
    assert outcome.code == "STORAGE_ENCODED"
    assert "StorageCompression" in outcome.error.message


def test_an_orthanc_encrypted_attachment_is_storage_encoded(
    mem_source: type, parse_outcome: Callable
) -> None:
    # Given an object starting with the storage plugins' encryption header "A1"
    # When parsed / Then STORAGE_ENCODED
    assert parse_outcome(mem_source(b"A1" + bytes(range(200)))).code == "STORAGE_ENCODED"


UID_KEYWORDS = ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"]


def _assert_missing_uid(outcome: Any, keyword: str) -> None:
    assert outcome.code == "MISSING_REQUIRED_UID"
    assert keyword in outcome.error.message
    tag = pydicom.datadict.tag_for_keyword(keyword)
    assert f"({tag >> 16:04X},{tag & 0xFFFF:04X})" in outcome.error.message


@pytest.mark.parametrize("keyword", UID_KEYWORDS)
def test_an_absent_uid_is_missing_required_uid(
    keyword: str,
    dataset_factory: Callable[[], Dataset],
    encode: Callable[..., bytes],
    mem_source: type,
    parse_outcome: Callable,
) -> None:
    # Given a header without one of the four UIDs
    ds = dataset_factory()
    delattr(ds, keyword)
    # When parsed
    outcome = parse_outcome(mem_source(encode(ds)))
    # Then MISSING_REQUIRED_UID names the attribute and its tag, not a value
    _assert_missing_uid(outcome, keyword)


@pytest.mark.parametrize("keyword", UID_KEYWORDS)
def test_a_blank_uid_is_missing_required_uid(
    keyword: str, make_dicom: Callable[..., bytes], mem_source: type, parse_outcome: Callable
) -> None:
    # Given a header whose UID holds only spaces (written as raw bytes: pydicom refuses to
    # set such a UID)
    data = make_dicom(**{keyword: "9.9.9.9"})
    at = data.rindex(b"9.9.9.9\x00")  # the dataset's copy, after the file meta's
    data = data[:at] + b" " * 8 + data[at + 8 :]
    # When parsed
    outcome = parse_outcome(mem_source(data))
    # Then MISSING_REQUIRED_UID as for an absent one
    _assert_missing_uid(outcome, keyword)


# -- truncation -----------------------------------------------------------------------------

TRUNCATED_FILES = [
    "MR_small_implicit.dcm",  # implicit VR, Part 10
    "rtplan.dcm",  # nested sequences, no Pixel Data
    "ExplVR_BigEndNoMeta.dcm",  # big endian, no preamble
    "image_dfl.dcm",  # deflated
    "UN_sequence.dcm",  # undefined-length private sequences
]


def _same_elements(cut: dict[str, Any], whole: dict[str, Any]) -> bool:
    return all(whole.get(key) == value for key, value in cut.items())


@pytest.mark.parametrize("name", TRUNCATED_FILES)
def test_truncation_at_every_offset_of_the_header_is_coded(
    name: str, test_file: Callable[[str], Path], mem_source: type, parse_outcome: Callable
) -> None:
    # Given a small file and its complete parse
    data = test_file(name).read_bytes()
    whole = parse(mem_source(data))
    header_end = whole.header.header_bytes

    # When the object is cut at every offset from 0 to the end of its header
    codes = []
    for cut in range(header_end + 1):
        outcome = parse_outcome(mem_source(data[:cut]))
        codes.append(outcome.code)
        if outcome.parsed is not None:
            # Then a cut that still parses (it fell between two elements) holds only whole
            # elements of the original, never a shortened value
            assert _same_elements(outcome.parsed.dicom_json, whole.dicom_json), cut

    # and every cut gives a coded outcome: mostly TRUNCATED, NOT_DICOM before any element
    assert set(codes) <= {"NOT_DICOM", "TRUNCATED", "MISSING_REQUIRED_UID", "RECORD"}
    assert codes[0] == "NOT_DICOM"
    share = sum(code in ("TRUNCATED", "NOT_DICOM") for code in codes) / len(codes)
    assert share > 0.9, share
    if data[128:132] == b"DICM":
        assert set(codes[1:132]) == {"NOT_DICOM"}  # a preamble cut short is no DICOM
        assert codes[132] == "TRUNCATED"  # "DICM" and nothing else


def test_a_truncated_local_file_is_truncated(
    test_file: Callable[[str], Path], tmp_path: Path, parse_outcome: Callable
) -> None:
    # Given a file cut in the middle of its header, on disk
    path = tmp_path / "cut.dcm"
    path.write_bytes(test_file("CT_small.dcm").read_bytes()[:1000])
    # When parsed / Then TRUNCATED, with the offset in the message
    outcome = parse_outcome(str(path))
    assert outcome.code == "TRUNCATED"
    assert "1000" in outcome.error.message


def test_a_cut_inside_pixel_data_still_gives_the_whole_header(
    test_file: Callable[[str], Path], parse_outcome: Callable
) -> None:
    # Given pydicom's MR_truncated.dcm (cut inside its Pixel Data)
    # When parsed / Then a record: the header is complete
    assert parse_outcome(str(test_file("MR_truncated.dcm"))).code == "RECORD"


def test_a_value_cut_exactly_at_the_end_is_truncated(
    make_dicom: Callable[..., bytes], mem_source: type, parse_outcome: Callable
) -> None:
    # Given an object cut right after the tag and length of its last element (so a read of
    # the value starts exactly at the end of the object)
    data = make_dicom(ImageComments="the last element")
    cut = data.index(b"the last element")

    # When parsed
    outcome = parse_outcome(mem_source(data[:cut]))

    # Then TRUNCATED, not a record with an empty value
    assert outcome.code == "TRUNCATED"


# -- bulk data is skipped, not downloaded -----------------------------------------------------


def test_overlays_and_private_blobs_before_pixel_data_are_not_fetched(
    test_file: Callable[[str], Path], mem_source: type
) -> None:
    # Given examples_overlay.dcm (18 KB of Overlay Data and a private blob before Pixel Data)
    # read with small ranges so skipping is visible
    data = test_file("examples_overlay.dcm").read_bytes()
    source = mem_source(data)
    limits = ReadLimits(first_range=4096, block_size=4096)

    # When it is parsed
    parsed = parse(source, limits)

    # Then Overlay Data is a BulkDataURI pointing at exactly its bytes
    uri = parsed.dicom_json["60003000"]["BulkDataURI"]
    query = parse_qs(urlparse(uri).query)
    offset, length = int(query["offset"][0]), int(query["length"][0])
    ds = pydicom.dcmread(test_file("examples_overlay.dcm"))
    assert data[offset : offset + length] == ds[0x60003000].value
    # and none of its interior was fetched; what was fetched is what bytes_read says
    inner = range(offset + 4096, offset + length - 4096)
    assert not any(o < inner.stop and o + n > inner.start for o, n in source.ranges)
    assert parsed.header.bytes_read == source.bytes_served
    assert parsed.header.bytes_read < parsed.header.header_bytes - length + 3 * 4096
    assert "7FE00010" not in parsed.dicom_json


def test_a_256_mib_multiframe_object_costs_one_range(
    make_dicom: Callable[..., bytes], mem_source: type
) -> None:
    # Given a 256 MiB object: a header, then Pixel Data running to the end (a sparse fake,
    # so the test allocates only the header)
    header = make_dicom(NumberOfFrames="1024", Rows=512, Columns=256, BitsAllocated=16)
    pixel_length = 256 * 1024 * 1024 - len(header) - 12
    data = header + struct.pack("<HH", 0x7FE0, 0x0010) + b"OW\x00\x00"
    data += struct.pack("<I", pixel_length)
    source = mem_source(data, size=256 * 1024 * 1024)

    # When it is parsed
    tracemalloc.start()
    parsed = parse(source)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    # Then one 64 KiB range was read and memory stayed small
    assert source.ranges == [(0, 64 * 1024)]
    assert parsed.stats == {
        "bytes_read": 64 * 1024,
        "object_size": 256 * 1024 * 1024,
        "header_bytes": len(header),
    }
    assert peak < 4 * 1024 * 1024


# -- limits: bounded memory ------------------------------------------------------------------


def test_a_header_over_the_cap_is_malformed(
    dataset_factory: Callable[[], Dataset], encode: Callable[..., bytes], mem_source: type
) -> None:
    # Given a header with 3 MB of text (text is header: it is fetched)
    ds = dataset_factory()
    ds.add_new(0x00181030, "UT", "p" * 3_000_000)  # a huge Protocol Name-ish text
    data = encode(ds)

    # When it is parsed with a 1 MiB header cap
    # Then MALFORMED "header exceeds", not 3 MB fetched
    with pytest.raises(Malformed, match="exceeds the 1048576-byte limit"):
        parse(mem_source(data), ReadLimits(max_header_bytes=1024 * 1024))


def test_a_huge_declared_length_costs_neither_memory_nor_time(
    make_dicom: Callable[..., bytes], mem_source: type, parse_outcome: Callable
) -> None:
    # Given a 4 GiB object (sparse, zeros after the header) whose last element declares a
    # 2 GiB text value, so the parser lands in gigabytes of zeros
    data = make_dicom(ImageComments="x")
    at = data.index(struct.pack("<HH", 0x0020, 0x4000) + b"LT")
    data = data[:at] + struct.pack("<HH", 0x0020, 0x4000) + b"UT\x00\x00"
    data += struct.pack("<I", 0x7FFFFFF0)
    source = mem_source(data, size=4 * 1024**3)

    # When it is parsed (with the default limits)
    tracemalloc.start()
    outcome = parse_outcome(source)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    # Then a coded failure, with little memory and few bytes fetched
    assert outcome.code == "MALFORMED"
    assert peak < 8 * 1024 * 1024
    assert source.bytes_served < 1024 * 1024


def test_zeros_where_sequence_items_belong_are_malformed_quickly(
    make_dicom: Callable[..., bytes], mem_source: type, parse_outcome: Callable
) -> None:
    # Given an undefined-length sequence followed by megabytes of zeros (pydicom would read
    # each 8 zero bytes as one more empty item)
    data = make_dicom(ImageComments="x")
    at = data.index(struct.pack("<HH", 0x0020, 0x4000) + b"LT")
    data = data[:at] + struct.pack("<HH", 0x0040, 0x0275) + b"SQ\x00\x00" + b"\xff" * 4
    source = mem_source(data, size=64 * 1024 * 1024)

    # When it is parsed
    tracemalloc.start()
    outcome = parse_outcome(source)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    # Then MALFORMED, bounded memory
    assert outcome.code == "MALFORMED"
    assert "zero" in outcome.error.message
    assert peak < 8 * 1024 * 1024


def _deflated_with_blob(dataset_factory: Callable[[], Dataset], encode: Callable, size: int):
    ds = dataset_factory()
    ds.private_block(0x0029, "ACME BLOB", create=True).add_new(0x10, "OB", bytes(size))
    return encode(ds, DeflatedExplicitVRLittleEndian)


def test_a_deflate_bomb_is_malformed_within_the_cap(
    dataset_factory: Callable[[], Dataset], encode: Callable[..., bytes], mem_source: type
) -> None:
    # Given a small deflated file that inflates to 16 MiB (a private blob of zeros)
    data = _deflated_with_blob(dataset_factory, encode, 16 * 1024 * 1024)
    assert len(data) < 64 * 1024

    # When it is parsed with a 2 MiB cap
    tracemalloc.start()
    with pytest.raises(Malformed, match="inflates beyond"):
        read_header(mem_source(data), ReadLimits(max_header_bytes=2 * 1024 * 1024))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    # Then it fails before inflating past the cap
    assert peak < 6 * 1024 * 1024


def test_a_deflated_blob_under_the_cap_becomes_a_bulk_reference(
    dataset_factory: Callable[[], Dataset], encode: Callable[..., bytes], mem_source: type
) -> None:
    # Given a deflated file with a 64 KiB private blob
    data = _deflated_with_blob(dataset_factory, encode, 64 * 1024)
    # When it is parsed
    j = parse(mem_source(data)).dicom_json
    # Then the blob is a reference into the inflated stream
    uri = j["00291010"]["BulkDataURI"]
    assert "length=65536" in uri and uri.endswith("&encoding=deflate")


# -- coded failures are safe to log -------------------------------------------------------------


def test_error_messages_never_quote_values(
    make_dicom: Callable[..., bytes], mem_source: type, parse_outcome: Callable
) -> None:
    # Given headers with a recognisable patient name, cut and corrupted in many places
    data = make_dicom(PatientName="Secret^Patient", PatientID="SECRET-ID-42")
    outcomes = [parse_outcome(mem_source(data[:cut])) for cut in range(0, len(data), 7)]
    corrupt = bytearray(data)
    corrupt[data.index(b"SECRET-ID-42") - 2] = 0xFF  # its length field
    outcomes.append(parse_outcome(mem_source(bytes(corrupt))))

    # When the failures are reported
    messages = [o.error.message for o in outcomes if o.error]

    # Then no message contains the values
    assert messages
    assert not [m for m in messages if "Secret" in m or "SECRET" in m]


def test_read_header_raises_only_coded_errors(mem_source: type) -> None:
    # Given a Part 10 prefix followed by garbage where the file meta should be
    data = bytes(128) + b"DICM" + b"\x02\x00\x00\x00UL\x04\x00" + b"\xff" * 3

    # When its header is read / Then the failure is a coded TRUNCATED
    with pytest.raises(Truncated):
        read_header(mem_source(data))


def test_a_bare_dataset_without_preamble_is_read(
    dataset_factory: Callable[[], Dataset], mem_source: type
) -> None:
    # Given a dataset written without preamble and file meta (implicit VR, as some PACS do)
    ds = dataset_factory()
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, implicit_vr=True, little_endian=True)

    # When parsed / Then it is read as implicit VR little endian
    parsed = parse(mem_source(buf.getvalue()))
    assert parsed.header.transfer_syntax is None and parsed.header.is_implicit_vr
    assert parsed.record().item["PatientID"] == "P-001"


def test_a_deflated_stream_is_inflated_to_its_end_when_zlib_holds_back_output(
    mem_source: type,
) -> None:
    # Given a deflate stream whose last bytes zlib holds back once it has taken all the input
    # (it stopped at the output size asked for): seeded data known to do that
    import random

    from pipeline.dicom.header import InflatingReader
    from pipeline.dicom.sources import RangedReader

    rng = random.Random(42)
    full = bytes(rng.choice(b"0123456789.^ABC") for _ in range(4000))
    packer = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    compressed = packer.compress(full) + packer.flush()
    probe = zlib.decompressobj(-zlib.MAX_WBITS)
    probe.decompress(compressed, len(full) - 4)
    assert not probe.unconsumed_tail and not probe.eof  # the case this test is about
    stream = InflatingReader(RangedReader(mem_source(compressed)), cap=1 << 20)
    # When read up to those last bytes, then the rest
    head = stream.read(len(full) - 4)
    tail = stream.read(4)
    # Then every byte comes out, and the end is a clean end, not a truncation
    assert head + tail == full
    assert stream.read(8) == b""
