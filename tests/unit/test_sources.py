"""Byte-range sources (local files, S3 through moto) and the ranged reader over them."""

from __future__ import annotations

import io
import re
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from botocore.config import Config
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    PartialCredentialsError,
    ReadTimeoutError,
)
from botocore.response import StreamingBody
from botocore.stub import ANY, Stubber
from pydicom.dataset import Dataset

from pipeline import aws
from pipeline.dicom.header import ReadLimits
from pipeline.dicom.parse import parse
from pipeline.dicom.sources import (
    MAX_ZERO_READS,
    LocalFileSource,
    RangedReader,
    S3Source,
    _s3_error,
    open_source,
)
from pipeline.errors import (
    AccessDenied,
    InternalError,
    Malformed,
    NotDicom,
    ObjectChanged,
    ObjectNotFound,
    TransientError,
    Truncated,
)

# -- naming sources ---------------------------------------------------------------------------


def test_s3_uris_are_url_decoded_keys() -> None:
    # Given an s3 URI with an encoded key / When opened / Then bucket and stored key
    source = open_source("s3://images/study%201/a%2Bb.dcm")
    assert isinstance(source, S3Source)
    assert (source.bucket, source.key) == ("images", "study 1/a+b.dcm")


@pytest.mark.parametrize("uri", ["s3://", "s3://bucket-only", "s3:///key-only"])
def test_incomplete_s3_uris_are_not_found(uri: str) -> None:
    # Given an s3 URI without bucket or key / When opened / Then OBJECT_NOT_FOUND
    with pytest.raises(ObjectNotFound):
        open_source(uri)


def test_local_paths_and_file_uris_open_the_file(tmp_path: Path) -> None:
    # Given a file / When opened by path and by file URI / Then the same file
    path = tmp_path / "a b.dcm"
    path.write_bytes(b"0123456789")
    by_path = open_source(str(path))
    by_uri = open_source(path.as_uri())
    assert isinstance(by_path, LocalFileSource) and isinstance(by_uri, LocalFileSource)
    assert by_path.size == by_uri.size == 10
    assert by_uri.read_range(3, 4) == b"3456"
    assert by_path.read_range(8, 100) == b"89"  # fewer only at the end


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_a_missing_local_file_is_not_found(kind: str, tmp_path: Path) -> None:
    # Given a path that is not a regular file / When opened / Then OBJECT_NOT_FOUND
    path = tmp_path / "nothing.dcm" if kind == "missing" else tmp_path
    with pytest.raises(ObjectNotFound):
        open_source(str(path))


# -- the ranged reader ------------------------------------------------------------------------


def test_the_reader_fetches_only_what_is_read(mem_source: type) -> None:
    # Given a 1 MiB object read through small blocks
    data = bytes(range(256)) * 4096
    source = mem_source(data)
    reader = RangedReader(source, first_range=1024, block_size=4096)

    # When it reads inside the first range, seeks far, and reads there
    assert reader.read(100) == data[:100]
    reader.seek(700_000)
    assert reader.read(10) == data[700_000:700_010]
    reader.seek(700_005)
    assert reader.read(5) == data[700_005:700_010]

    # Then the seek fetched nothing and the second read came from the cached block
    assert source.ranges == [(0, 1024), (700_000, 4096)]
    assert reader.stats.bytes_read == 1024 + 4096 == source.bytes_served
    assert reader.stats.requests == 2


def test_a_read_spanning_blocks_is_whole(mem_source: type) -> None:
    # Given small blocks / When a read spans three of them / Then the bytes are contiguous
    data = bytes(range(256)) * 64
    reader = RangedReader(mem_source(data), first_range=100, block_size=100)
    reader.seek(50)
    assert reader.read(300) == data[50:350]


def test_the_end_of_the_object(mem_source: type) -> None:
    # Given a 10-byte object
    reader = RangedReader(mem_source(b"0123456789"))
    # When reading exactly at the end / Then b"" (a clean end for the parser)
    reader.seek(10)
    assert reader.read(8) == b""
    assert reader.reads_at_end == 1
    # When a read runs past the end or starts past it / Then TRUNCATED with offsets
    reader.seek(6)
    with pytest.raises(Truncated, match="ends at offset 10 inside a 8-byte read at offset 6"):
        reader.read(8)
    reader.seek(20)
    with pytest.raises(Truncated, match="offset 20"):
        reader.read(1)
    # When a length points before the start / Then MALFORMED
    with pytest.raises(Malformed):
        reader.seek(-30, 1)


def test_the_reader_refuses_to_fetch_beyond_its_cap(mem_source: type) -> None:
    # Given a reader capped at 8 KiB over a 1 MiB object
    reader = RangedReader(
        mem_source(bytes(1 << 20)), first_range=4096, block_size=4096, max_bytes=8192
    )
    # When the parser reads a large value / Then MALFORMED, nothing more fetched
    reader.seek(100_000)
    with pytest.raises(Malformed, match="exceeds the 8192-byte limit"):
        reader.read(10_000)
    assert reader.stats.bytes_read == 4096


def test_a_long_run_of_zero_headers_is_malformed(mem_source: type) -> None:
    # Given zeros where the parser reads tags / When it keeps reading 8 bytes at a time
    reader = RangedReader(mem_source(bytes(1 << 20)))
    reader.read(6)  # a few zero reads are fine (a zero value, a zero length)
    reader.read(4)
    # Then past the limit it stops with MALFORMED instead of parsing megabytes of zeros
    with pytest.raises(Malformed, match="run of zero bytes"):
        for _ in range(MAX_ZERO_READS):
            reader.read(8)


# -- S3 through moto ----------------------------------------------------------------------------


def test_s3_ranged_reads_without_an_endpoint_url(
    s3_object: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an S3 object in (in-process) moto, and no AWS_ENDPOINT_URL at all
    body = bytes(range(256)) * 1024  # 256 KiB
    uri = s3_object("ranged/object.bin", body)
    import os

    assert "AWS_ENDPOINT_URL" not in os.environ

    # When a reader fetches a first range and a later block
    source = open_source(uri)
    reader = RangedReader(source, first_range=4096, block_size=8192)
    reader.seek(200_000)
    chunk = reader.read(100)

    # Then the first GET answered size, ETag and bytes; later reads are ranges of it
    assert isinstance(source, S3Source)
    assert source.size == len(body)
    assert source.etag and source.etag.strip('"')
    assert chunk == body[200_000:200_100]
    assert reader.stats.requests == 2
    assert reader.stats.bytes_read == 4096 + 8192


def test_aws_endpoint_url_is_honoured(aws_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given AWS_ENDPOINT_URL set (as the local stack does)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:4566")
    aws.reset_clients()
    # When the S3 client is created (nothing is sent)
    client = aws.client("s3")
    # Then it points there
    assert client.meta.endpoint_url == "http://127.0.0.1:4566"


def test_an_s3_object_that_is_not_there_is_object_not_found(
    s3_object: Callable[..., str], parse_outcome: Callable
) -> None:
    # Given a bucket without the key, and a bucket that does not exist
    s3_object("present.dcm", b"x")
    # When they are parsed / Then OBJECT_NOT_FOUND, with the URI in the message
    missing = parse_outcome("s3://images/absent.dcm")
    no_bucket = parse_outcome("s3://no-such-bucket/absent.dcm")
    assert missing.code == no_bucket.code == "OBJECT_NOT_FOUND"
    assert "s3://images/absent.dcm" in missing.error.message


def test_an_empty_s3_object_is_not_dicom(
    s3_object: Callable[..., str], parse_outcome: Callable
) -> None:
    # Given an empty object in S3 / When parsed / Then NOT_DICOM
    assert parse_outcome(s3_object("empty.dcm", b"")).code == "NOT_DICOM"


def test_an_s3_dicom_header_is_read_in_one_request(
    s3_object: Callable[..., str], test_file: Callable[[str], Path]
) -> None:
    # Given CT_small.dcm (39 KB) in S3
    data = test_file("CT_small.dcm").read_bytes()
    uri = s3_object("ct/CT_small.dcm", data)

    # When it is parsed and its record built
    parsed = parse(uri)
    item = parsed.record().item

    # Then one ranged GET did it, and the record carries the S3 provenance
    assert parsed.header.reader is not None and parsed.header.reader.stats.requests == 1
    assert item["s3_key"] == "ct/CT_small.dcm" and item["bucket"] == "images"
    assert item["etag"] and '"' not in item["etag"]
    assert item["size"] == len(data)


def test_an_object_overwritten_between_ranges_is_not_stitched(
    s3_object: Callable[..., str],
) -> None:
    # Given a reader that fetched the first range of an object
    uri = s3_object("moving.dcm", b"a" * 100_000)
    reader = RangedReader(open_source(uri), first_range=1024, block_size=1024)
    # When the object is overwritten before the next range is fetched
    s3_object("moving.dcm", b"b" * 100_000)
    reader.seek(50_000)
    # Then the next read fails as ObjectChanged (ETag pinned with If-Match), not mixed bytes:
    # UNAVAILABLE (retried; the overwrite's own event describes the new object), not TRUNCATED
    with pytest.raises(ObjectChanged, match="changed while its header was read") as caught:
        reader.read(10)
    assert caught.value.code == "UNAVAILABLE"
    assert isinstance(caught.value, TransientError)


def test_a_412_on_a_later_range_is_object_changed_through_parse(
    s3: Any, s3_object: Callable[..., str], test_file: Callable[[str], Path]
) -> None:
    # Given an object whose header needs a second range, and S3 answering the pinned second
    # GET with 412 PreconditionFailed (the object was overwritten in between)
    data = test_file("CT_small.dcm").read_bytes()
    uri = s3_object("pinned.dcm", data)
    stubber = Stubber(s3)
    stubber.add_response(
        "get_object",
        {
            "Body": StreamingBody(io.BytesIO(data[:1024]), 1024),
            "ContentRange": f"bytes 0-1023/{len(data)}",
            "ETag": '"first"',
        },
        {"Bucket": "images", "Key": "pinned.dcm", "Range": "bytes=0-1023"},
    )
    stubber.add_client_error(
        "get_object",
        service_error_code="PreconditionFailed",
        http_status_code=412,
        expected_params={
            "Bucket": "images",
            "Key": "pinned.dcm",
            "Range": ANY,
            "IfMatch": '"first"',
        },
    )
    # When it is parsed with a first range shorter than its header
    with stubber, pytest.raises(ObjectChanged) as caught:
        parse(uri, ReadLimits(first_range=1024, block_size=1024))
    # Then UNAVAILABLE naming the object, never TRUNCATED
    assert caught.value.code == "UNAVAILABLE"
    assert "s3://images/pinned.dcm" in caught.value.message


def test_a_local_file_that_changes_size_while_read_is_object_changed(
    tmp_path: Path, test_file: Callable[[str], Path]
) -> None:
    # Given a local file opened for reading (its size noted)
    path = tmp_path / "growing.dcm"
    data = test_file("CT_small.dcm").read_bytes()
    path.write_bytes(data)
    source = open_source(str(path))
    reader = RangedReader(source, first_range=1024, block_size=1024)
    # When it is rewritten, shorter, before the next block is read
    path.write_bytes(data[:5000])
    reader.seek(2048)
    # Then ObjectChanged (UNAVAILABLE), not TRUNCATED, and not bytes from two versions
    with pytest.raises(ObjectChanged, match="changed while its header was read"):
        reader.read(16)


def test_a_version_id_pins_the_version(s3: Any, s3_object: Callable[..., str]) -> None:
    # Given a versioned bucket with two versions of an object
    s3_object("v.dcm", b"old" * 1000)
    s3.put_bucket_versioning(Bucket="images", VersioningConfiguration={"Status": "Enabled"})
    first = s3.put_object(Bucket="images", Key="v.dcm", Body=b"one" * 1000)["VersionId"]
    s3.put_object(Bucket="images", Key="v.dcm", Body=b"two" * 1000)
    # When the first version is read by its id / Then its bytes, not the latest
    source = S3Source("images", "v.dcm", version_id=first)
    assert RangedReader(source).read(3) == b"one"


def _client_error(code: str, status: int) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "GetObject",
    )


@pytest.mark.parametrize(
    ("code", "status", "expected"),
    [
        ("NoSuchKey", 404, ObjectNotFound),
        ("NoSuchBucket", 404, ObjectNotFound),
        ("AccessDenied", 403, AccessDenied),
        ("InvalidObjectState", 403, AccessDenied),
        ("SlowDown", 503, TransientError),
        ("InternalError", 500, TransientError),
        ("ServiceUnavailable", 503, TransientError),
        ("ThrottlingException", 400, TransientError),
        ("TooManyRequestsException", 429, TransientError),
        ("RequestTimeout", 400, TransientError),
        ("ExpiredToken", 400, TransientError),
        ("InvalidRequest", 400, InternalError),
    ],
)
def test_s3_errors_map_to_codes(code: str, status: int, expected: type) -> None:
    # Given an error S3 answered (after botocore's retries)
    # When it is classified / Then it is the coded failure for it, naming the object; a
    # refusal we do not know is ours to fix (INTERNAL), never a property of the bytes
    error = _s3_error(_client_error(code, status), "bkt", "k.dcm")
    assert type(error) is expected
    assert "s3://bkt/k.dcm" in error.message
    assert not isinstance(error, Malformed)


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("SlowDown", 503),
        ("InternalError", 500),
        ("ServiceUnavailable", 503),
        ("Throttling", 400),
        ("ExpiredToken", 400),
    ],
)
def test_throttling_and_5xx_from_s3_are_unavailable(
    code: str, status: int, s3: Any, s3_object: Callable[..., str]
) -> None:
    # Given S3 answering a GET with throttling or a 5xx (what is left after botocore's retries)
    uri = s3_object("busy.dcm", b"x" * 100)
    stubber = Stubber(s3)
    stubber.add_client_error("get_object", service_error_code=code, http_status_code=status)
    # When the object is parsed
    with stubber, pytest.raises(TransientError) as caught:
        parse(uri)
    # Then UNAVAILABLE, naming the object and the error, never a value
    assert caught.value.code == "UNAVAILABLE"
    assert "s3://images/busy.dcm" in caught.value.message
    assert code in caught.value.message


def _no_credentials_anywhere(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    for name in (
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_ROLE_ARN",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # never reached
    aws.reset_clients()


def test_missing_credentials_are_unavailable(
    aws_env: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Given no AWS credentials at all (no variables, files, metadata service)
    _no_credentials_anywhere(monkeypatch, tmp_path)
    # When an S3 object is parsed
    with pytest.raises(TransientError) as caught:
        parse("s3://images/a.dcm")
    # Then UNAVAILABLE saying what is missing and for what
    assert caught.value.code == "UNAVAILABLE"
    assert caught.value.message == "no AWS credentials found to read s3://images/a.dcm"
    assert isinstance(caught.value.__cause__, NoCredentialsError)


def test_partial_credentials_are_unavailable(
    aws_env: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Given an access key id without its secret
    _no_credentials_anywhere(monkeypatch, tmp_path)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
    aws.reset_clients()
    # When an S3 object is parsed
    with pytest.raises(TransientError) as caught:
        parse("s3://images/a.dcm")
    # Then UNAVAILABLE naming the missing variable, never the key itself
    assert isinstance(caught.value.__cause__, PartialCredentialsError)
    assert "AWS_SECRET_ACCESS_KEY" in caught.value.message
    assert "AKIAEXAMPLE" not in caught.value.message
    assert "s3://images/a.dcm" in caught.value.message


@pytest.fixture
def one_attempt(aws_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """botocore without retries and with short timeouts (the mapping is what is tested)."""
    monkeypatch.setattr(
        aws,
        "RETRY_CONFIG",
        Config(retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=1, read_timeout=1),
    )
    aws.reset_clients()


def _serve(handle: Callable[[socket.socket], None]) -> tuple[int, threading.Event]:
    """A loopback TCP server that hands every connection to ``handle``; returns its port."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    stop = threading.Event()

    def run() -> None:
        server.settimeout(0.2)
        with server:
            while not stop.is_set():
                try:
                    conn, _ = server.accept()
                except TimeoutError:
                    continue
                with conn:
                    handle(conn)

    threading.Thread(target=run, daemon=True).start()
    return int(server.getsockname()[1]), stop


def _silent(conn: socket.socket) -> None:
    conn.recv(65536)
    time.sleep(1.5)  # longer than the read timeout


def _hang_up(conn: socket.socket) -> None:
    conn.recv(65536)


@pytest.mark.parametrize(
    ("behaviour", "expected", "phrase"),
    [
        (None, EndpointConnectionError, "cannot connect to http://127.0.0.1:"),
        (_silent, ReadTimeoutError, "did not answer in time"),
        (_hang_up, ConnectionClosedError, "closed the connection"),
    ],
)
def test_an_unreachable_endpoint_is_unavailable(
    behaviour: Callable[[socket.socket], None] | None,
    expected: type,
    phrase: str,
    one_attempt: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given an endpoint that refuses connections, never answers, or hangs up
    if behaviour is None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]  # closed again: nothing listens there
        stop = threading.Event()
    else:
        port, stop = _serve(behaviour)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    aws.reset_clients()
    try:
        # When an S3 object is parsed through it
        with pytest.raises(TransientError) as caught:
            parse("s3://images/a.dcm")
    finally:
        stop.set()
    # Then UNAVAILABLE naming the endpoint and the object
    assert isinstance(caught.value.__cause__, expected)
    assert phrase in caught.value.message
    assert f"127.0.0.1:{port}" in caught.value.message
    assert "s3://images/a.dcm" in caught.value.message


@pytest.mark.parametrize(
    "error",
    [
        NoCredentialsError(),
        PartialCredentialsError(provider="env", cred_var="AWS_SECRET_ACCESS_KEY"),
        EndpointConnectionError(endpoint_url="https://s3.example"),
        ConnectTimeoutError(endpoint_url="https://s3.example"),
        ReadTimeoutError(endpoint_url="https://s3.example"),
        ConnectionClosedError(endpoint_url="https://s3.example"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_each_botocore_failure_is_unavailable_naming_what_and_where(
    error: Exception, s3: Any, s3_object: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the S3 client failing with one of botocore's own errors (after its retries)
    uri = s3_object("k.dcm", b"x" * 100)
    s3.meta.events.register("before-call.s3.GetObject", lambda **_: _raise(error))
    # When the object is parsed / Then UNAVAILABLE naming the object (and the endpoint)
    with pytest.raises(TransientError) as caught:
        parse(uri)
    assert caught.value.code == "UNAVAILABLE"
    assert "s3://images/k.dcm" in caught.value.message
    if "endpoint_url" in getattr(error, "kwargs", {}):
        assert "https://s3.example" in caught.value.message


def _raise(error: Exception) -> None:
    raise error


# -- bulk data before Pixel Data, from S3 ---------------------------------------------------------


def test_a_48_mib_private_blob_before_pixel_data_is_skipped(
    s3_object: Callable[..., str],
    dataset_factory: Callable[[], Dataset],
    encode: Callable[..., bytes],
) -> None:
    # Given an S3 object with a 48 MiB private OB blob, then a 1 MiB Pixel Data
    blob = 48 * 1024 * 1024
    ds = dataset_factory()
    ds.private_block(0x0029, "ACME BLOB", create=True).add_new(0x10, "OB", b"\x5a" * blob)
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.SamplesPerPixel = 512, 1024, 16, 1
    ds.PixelData = bytes(1024 * 1024)
    data = encode(ds)
    uri = s3_object("big/blob.dcm", data)
    del ds, data

    # When it is parsed
    parsed = parse(uri)
    item = parsed.record().item

    # Then the blob is a BulkDataURI into the object and was not downloaded: far less than
    # 256 KiB was read for a header of more than 48 MiB
    bulk = parsed.dicom_json["00291010"]
    assert bulk["vr"] == "OB"
    assert bulk["BulkDataURI"].startswith("s3://images/big/blob.dcm?offset=")
    assert bulk["BulkDataURI"].endswith(f"&length={blob}")
    stats = parsed.stats
    assert stats["header_bytes"] > blob
    assert stats["bytes_read"] < 256 * 1024
    assert parsed.header.reader is not None and parsed.header.reader.stats.requests <= 3
    assert item["header_bytes"] == stats["header_bytes"]


def test_a_header_longer_than_the_first_range_is_read_whole(
    s3_object: Callable[..., str],
    dataset_factory: Callable[[], Dataset],
    encode: Callable[..., bytes],
) -> None:
    # Given an S3 object whose header is longer than the 64 KiB first range (a long text)
    ds = dataset_factory()
    ds.private_block(0x0029, "ACME TEXT", create=True).add_new(0x20, "UT", "c" * 100_000)
    data = encode(ds)
    uri = s3_object("long.dcm", data)
    # When parsed / Then the text is whole, fetched with further ranges of the same object
    parsed = parse(uri)
    assert parsed.dicom_json["00291020"] == {"vr": "UT", "Value": ["c" * 100_000]}
    assert parsed.header.reader is not None and parsed.header.reader.stats.requests >= 2


def test_not_dicom_from_s3_is_reported_with_the_uri(s3_object: Callable[..., str]) -> None:
    # Given a text object / When parsed / Then NOT_DICOM naming the URI
    uri = s3_object("notes.dcm", b"just some text, no DICOM here at all" * 10)
    with pytest.raises(NotDicom, match=re.escape("s3://images/notes.dcm")):
        parse(uri)
