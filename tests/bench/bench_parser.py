"""Benchmark of the header parser against the seed guide's way (issue 2, "Performance").

Run with ``make bench`` (or ``.venv/bin/python tests/bench/bench_parser.py``). Offline: S3 is
moto. Every figure is measured side by side with the baseline in the same run and reported as a
ratio; nothing here is a timed pass/fail test.

The baseline ("seed guide") is what one writes first with pydicom::

    body = s3.get_object(Bucket=b, Key=k)["Body"].read()
    ds = dcmread(BytesIO(body), stop_before_pixels=True, defer_size="2 KB")
    ds.to_json()

Ours is ``pipeline.dicom.parse.parse(source).record()`` (DICOM JSON and the schema-v1 record).

Sections
--------
1. Bytes read from S3 (moto in process, ``mock_aws``) for a small object, a 256 MiB
   multi-frame object and an object with 48 MiB of binary values (a private OB blob and an
   overlay) before its Pixel Data. Counted twice: by the parser (``stats["bytes_read"]``) and
   by a botocore ``after-call.s3.GetObject`` hook summing ``Content-Length``.
2. Peak memory for the same objects: ``tracemalloc`` peak and RSS high-water delta, each
   measured in a fresh child process reading from a moto *server* subprocess. (In-process moto
   materialises the whole object in the reading process on every ranged GET, so it would
   charge the server's memory to the client.)
3. Parse throughput over pydicom's bundled test files (those the baseline reads and converts),
   interleaved rounds in one process, median files/s of each and their ratio.

Figures go to stdout as a table and to ``.local/bench/parser.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import gc
import glob
import io
import json
import os
import platform
import pstats
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import tracemalloc
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pydicom
from boto3.s3.transfer import TransferConfig
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from pipeline import aws
from pipeline.dicom.parse import parse
from pipeline.errors import DicomPipelineError

REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO / ".local" / "bench" / "parser.json"
TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
BUCKET = "bench-images"
REGION = "us-east-1"
KiB, MiB = 1024, 1024 * 1024
#: Issue 2: at most this many bytes read from S3 for a large object (header plus one range).
BYTES_TARGET = 256 * KiB
THROUGHPUT_TARGET, THROUGHPUT_AIM = 1.5, 3.0


# -- synthetic objects -------------------------------------------------------------------------


@dataclass
class BenchObject:
    """A DICOM object written to a local file and uploaded to S3 under ``key``."""

    name: str
    path: Path
    key: str
    description: str

    @property
    def size(self) -> int:
        return self.path.stat().st_size


def _fresh_uids(ds: pydicom.Dataset) -> None:
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID


def _drop_trailing_padding(ds: pydicom.Dataset) -> None:
    """Remove (FFFC,FFFC) Data Set Trailing Padding, so Pixel Data is the last element."""
    if 0xFFFCFFFC in ds:
        del ds[0xFFFCFFFC]


def write_multiframe(path: Path, pixel_bytes: int) -> None:
    """CT_small's header with ``NumberOfFrames`` raised, then ``pixel_bytes`` of Pixel Data.

    The Pixel Data value is streamed to the file in 1 MiB zero chunks, so the object is never
    held in memory (pydicom writes only the header).
    """
    ds = dcmread(TEST_FILES / "CT_small.dcm")
    frame = ds.Rows * ds.Columns * ds.SamplesPerPixel * (ds.BitsAllocated // 8)
    frames, rest = divmod(pixel_bytes, frame)
    if rest or pixel_bytes % 2:
        raise ValueError(f"{pixel_bytes} is not a whole, even number of {frame}-byte frames")
    del ds.PixelData
    _drop_trailing_padding(ds)
    ds.NumberOfFrames = frames
    ds.FrameIncrementPointer = 0x00180050  # any tag; makes the multi-frame header plausible
    _fresh_uids(ds)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    with path.open("wb") as fh:
        ds.save_as(fh, implicit_vr=False, little_endian=True, enforce_file_format=True)
        # (7FE0,0010) OW, explicit VR little endian: tag, VR, 2 reserved bytes, 4-byte length.
        fh.write(struct.pack("<HH2s2xI", 0x7FE0, 0x0010, b"OW", pixel_bytes))
        chunk = bytes(MiB)
        left = pixel_bytes
        while left:
            n = min(left, len(chunk))
            fh.write(chunk[:n] if n < len(chunk) else chunk)
            left -= n


def write_bulk_before_pixels(path: Path, blob_bytes: int, overlay_bytes: int) -> None:
    """MR_small with a private OB blob (CSA-style, group 0029) and an overlay before Pixel Data.

    Overlay Rows x Columns bits equal ``overlay_bytes``. The values are written by pydicom, so
    they are in memory once here, while the file is made (not while anything is measured).
    """
    ds = dcmread(TEST_FILES / "MR_small.dcm")
    _drop_trailing_padding(ds)
    _fresh_uids(ds)
    block = ds.private_block(0x0029, "DICOM-PIPELINE BENCH", create=True)
    block.add_new(0x10, "OB", bytes(blob_bytes))
    bits = overlay_bytes * 8
    cols = 8192
    if bits % cols:
        raise ValueError(f"overlay of {overlay_bytes} bytes is not a multiple of {cols // 8}")
    ds.add_new(0x60000010, "US", bits // cols)  # Overlay Rows
    ds.add_new(0x60000011, "US", cols)  # Overlay Columns
    ds.add_new(0x60000040, "CS", "G")  # Overlay Type
    ds.add_new(0x60000050, "SS", [1, 1])  # Overlay Origin
    ds.add_new(0x60000100, "US", 1)  # Overlay Bits Allocated
    ds.add_new(0x60000102, "US", 0)  # Overlay Bit Position
    ds.add_new(0x60003000, "OW", bytes(overlay_bytes))  # Overlay Data
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(path, implicit_vr=False, little_endian=True, enforce_file_format=True)
    del ds
    gc.collect()


def write_small(path: Path) -> None:
    """CT_small as it is (39 KiB): the size-independent reference for memory."""
    path.write_bytes((TEST_FILES / "CT_small.dcm").read_bytes())


def check_object(obj: BenchObject, pixel_length: int) -> None:
    """Fail fast when a synthetic object is not what it claims.

    pydicom must read its header, and the object must end with a ``pixel_length`` Pixel Data
    value (explicit VR little endian ``OW``: a 12-byte element header, then the value).
    """
    dcmread(obj.path, stop_before_pixels=True)
    with obj.path.open("rb") as fh:
        fh.seek(obj.size - pixel_length - 12)
        group, elem, vr, length = struct.unpack("<HH2s2xI", fh.read(12))
    if (group, elem, vr, length) != (0x7FE0, 0x0010, b"OW", pixel_length):
        raise RuntimeError(f"{obj.name}: does not end with {pixel_length} bytes of Pixel Data")


def make_objects(workdir: Path, *, big_bytes: int, bulk_bytes: int) -> list[BenchObject]:
    small = BenchObject("small", workdir / "small.dcm", "small.dcm", "CT_small, 39 KiB")
    big = BenchObject(
        "multiframe",
        workdir / "multiframe.dcm",
        "multiframe.dcm",
        f"CT_small header, {big_bytes // MiB} MiB multi-frame Pixel Data",
    )
    bulk = BenchObject(
        "bulk-before-pixels",
        workdir / "bulk.dcm",
        "bulk.dcm",
        f"MR_small + {bulk_bytes // MiB} MiB of OB blob and overlay before Pixel Data",
    )
    write_small(small.path)
    write_multiframe(big.path, big_bytes)
    write_bulk_before_pixels(bulk.path, bulk_bytes // 2, bulk_bytes // 2)
    check_object(big, big_bytes)
    check_object(bulk, 64 * 64 * 2)
    return [small, big, bulk]


# -- the two approaches -----------------------------------------------------------------------


def baseline_s3(s3: Any, bucket: str, key: str) -> str:
    """The seed guide: download the whole object, read its header, ``to_json``."""
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    ds = dcmread(io.BytesIO(body), stop_before_pixels=True, defer_size="2 KB")
    return ds.to_json()


def baseline_file(path: str) -> str:
    ds = dcmread(path, stop_before_pixels=True, defer_size="2 KB")
    return ds.to_json()


def ours(source: str) -> tuple[str, dict[str, int]]:
    """Our full output: DICOM JSON plus the record. Returns the outcome and read stats."""
    parsed = parse(source)
    stats = parsed.stats
    try:
        parsed.record()
    except DicomPipelineError as exc:
        return exc.code, stats
    return "record", stats


class GetObjectCounter:
    """Counts ``GetObject`` calls and the ``Content-Length`` of their responses."""

    def __init__(self) -> None:
        self.requests = 0
        self.bytes = 0

    def __call__(self, parsed: dict[str, Any] | None = None, **_: Any) -> None:
        self.requests += 1
        self.bytes += int((parsed or {}).get("ContentLength") or 0)

    def attach(self, client: Any) -> None:
        client.meta.events.register("after-call.s3.GetObject", self)

    def reset(self) -> None:
        self.requests = self.bytes = 0


# -- 1. bytes read (moto in process) ----------------------------------------------------------


@contextlib.contextmanager
def fake_aws_env(endpoint_url: str | None = None) -> Iterator[None]:
    """Fake credentials and region; ``AWS_ENDPOINT_URL`` only when given. Restored after."""
    keys = (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_DEFAULT_REGION",
        "AWS_REGION",
        "AWS_PROFILE",
        "AWS_ENDPOINT_URL",
    )
    saved = {k: os.environ.get(k) for k in keys}
    for k in keys:
        os.environ.pop(k, None)
    os.environ.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION=REGION,
        AWS_REGION=REGION,
    )
    if endpoint_url:
        os.environ["AWS_ENDPOINT_URL"] = endpoint_url
    aws.reset_clients()
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        aws.reset_clients()


def upload(s3: Any, objects: list[BenchObject]) -> None:
    s3.create_bucket(Bucket=BUCKET)
    config = TransferConfig(multipart_threshold=64 * MiB, multipart_chunksize=64 * MiB)
    for obj in objects:
        s3.upload_file(str(obj.path), BUCKET, obj.key, Config=config)


def bench_bytes(objects: list[BenchObject]) -> list[dict[str, Any]]:
    from moto import mock_aws

    rows = []
    with fake_aws_env(), mock_aws():
        aws.reset_clients()
        seed_s3 = boto3.client("s3", region_name=REGION)
        upload(seed_s3, objects)
        ours_s3 = aws.client("s3")  # the client the pipeline's S3Source uses
        ours_count, base_count = GetObjectCounter(), GetObjectCounter()
        ours_count.attach(ours_s3)
        base_count.attach(seed_s3)
        for obj in objects:
            uri = f"s3://{BUCKET}/{obj.key}"
            ours_count.reset()
            t0 = time.perf_counter()
            outcome, stats = ours(uri)
            ours_s = time.perf_counter() - t0
            base_count.reset()
            t0 = time.perf_counter()
            out = baseline_s3(seed_s3, BUCKET, obj.key)
            base_s = time.perf_counter() - t0
            del out
            gc.collect()
            rows.append(
                {
                    "object": obj.name,
                    "description": obj.description,
                    "object_size": obj.size,
                    "ours_outcome": outcome,
                    "ours_bytes_read_stats": stats["bytes_read"],
                    "ours_bytes_read_hook": ours_count.bytes,
                    "ours_requests": ours_count.requests,
                    "header_bytes": stats["header_bytes"],
                    "baseline_bytes_read_hook": base_count.bytes,
                    "baseline_requests": base_count.requests,
                    "ratio_baseline_over_ours": base_count.bytes / max(ours_count.bytes, 1),
                    "target_bytes": BYTES_TARGET,
                    "within_target": max(stats["bytes_read"], ours_count.bytes) <= BYTES_TARGET,
                    "ours_wall_s": ours_s,
                    "baseline_wall_s": base_s,
                }
            )
    aws.reset_clients()
    return rows


# -- 2. peak memory (child processes against a moto server) -----------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """A moto server subprocess on localhost; yields its endpoint URL."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("moto server did not start")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _reset_rss_peak() -> bool:
    """Reset VmHWM (Linux ``clear_refs`` 5); False when the kernel refuses."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def child_memory(approach: str, key: str, warm_key: str) -> dict[str, Any]:
    """Run in a fresh process: peak memory of one approach on one object.

    A warm-up on the small object first (client creation, pydicom's dictionaries, imports);
    then one run measured by RSS high-water delta, then one under ``tracemalloc``.
    """
    warnings.simplefilter("ignore")
    s3 = aws.client("s3") if approach == "ours" else boto3.client("s3")
    counter = GetObjectCounter()
    counter.attach(s3)

    def run(k: str) -> Any:
        if approach == "ours":
            return ours(f"s3://{BUCKET}/{k}")
        return baseline_s3(s3, BUCKET, k)

    run(warm_key)
    gc.collect()
    rss_before = _proc_status_kib("VmRSS")
    hwm_reset = _reset_rss_peak()
    counter.reset()
    result = run(key)
    rss_peak = _proc_status_kib("VmHWM") if hwm_reset else 0
    bytes_read = counter.bytes
    del result
    gc.collect()
    tracemalloc.start()
    run(key)
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {
        "tracemalloc_peak": traced_peak,
        "rss_delta": (rss_peak - rss_before) * KiB if hwm_reset else None,
        "bytes_read_hook": bytes_read,
    }


def bench_memory(objects: list[BenchObject]) -> list[dict[str, Any]]:
    rows = []
    with moto_server() as url, fake_aws_env(url):
        s3 = boto3.client("s3", region_name=REGION)
        upload(s3, objects)
        env = dict(os.environ)
        for obj in objects:
            row: dict[str, Any] = {"object": obj.name, "object_size": obj.size}
            for approach in ("ours", "baseline"):
                out = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--child-memory",
                        approach,
                        obj.key,
                        objects[0].key,
                    ],
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=240,
                    check=False,
                )
                if out.returncode:
                    raise RuntimeError(f"memory child {approach}/{obj.name} failed:\n{out.stderr}")
                figures = json.loads(out.stdout.strip().splitlines()[-1])
                for name, value in figures.items():
                    row[f"{approach}_{name}"] = value
            row["tracemalloc_ratio_baseline_over_ours"] = row["baseline_tracemalloc_peak"] / max(
                row["ours_tracemalloc_peak"], 1
            )
            rows.append(row)
    return rows


# -- 3. throughput over pydicom's bundled files -----------------------------------------------


def corpus() -> list[str]:
    """pydicom's bundled test files (glob, not ``get_testdata_files``: that may go online)."""
    files = glob.glob(str(TEST_FILES / "**"), recursive=True)
    return sorted(p for p in files if os.path.isfile(p))


def eligible(files: list[str]) -> tuple[list[str], dict[str, str], dict[str, Any]]:
    """Files the baseline reads (``force=False``) and converts; ours' outcome for each."""
    kept, outcomes = [], {}
    skipped: Counter[str] = Counter()
    for path in files:
        try:
            baseline_file(path)
        except Exception as exc:  # the baseline's own failures decide eligibility
            skipped[type(exc).__name__] += 1
            continue
        try:
            outcome, _ = ours(path)
        except DicomPipelineError as exc:
            outcome = exc.code
        kept.append(path)
        outcomes[path] = outcome
    return kept, outcomes, {"total": len(files), "baseline_failed": dict(skipped)}


def _ours_file(path: str) -> None:
    with contextlib.suppress(DicomPipelineError):
        ours(path)


def bench_throughput(rounds: int) -> dict[str, Any]:
    """Median files/s of each approach over the eligible files, interleaved per file.

    Each round runs both approaches on every file back to back (the order alternates between
    rounds), so a background load slows both alike instead of whichever ran at that moment.
    """
    files, outcomes, skipped = eligible(corpus())
    records = [i for i, p in enumerate(files) if outcomes[p] == "record"]
    approaches: dict[str, Callable[[str], Any]] = {"ours": _ours_file, "baseline": baseline_file}
    per_round: dict[str, list[list[float]]] = {name: [] for name in approaches}
    clock = time.perf_counter
    for r in range(rounds + 1):  # round 0 warms up and is not counted
        order = list(approaches) if r % 2 == 0 else list(reversed(approaches))
        times: dict[str, list[float]] = {name: [] for name in approaches}
        gc.collect()
        for path in files:
            for name in order:
                t0 = clock()
                approaches[name](path)
                times[name].append(clock() - t0)
        if r:
            for name in approaches:
                per_round[name].append(times[name])

    def summary(subset: list[int]) -> dict[str, Any]:
        totals = {name: [sum(t[j] for j in subset) for t in per_round[name]] for name in approaches}
        ratios = [b / o for b, o in zip(totals["baseline"], totals["ours"], strict=True)]
        out: dict[str, Any] = {"files": len(subset)}
        for name in approaches:
            out[f"{name}_median_s"] = statistics.median(totals[name])
            out[f"{name}_files_per_s"] = len(subset) / out[f"{name}_median_s"]
        out["ratio_ours_over_baseline"] = out["ours_files_per_s"] / out["baseline_files_per_s"]
        out["ratio_per_round_median"] = statistics.median(ratios)
        out["ratio_per_round_min"] = min(ratios)
        out["ratio_per_round_max"] = max(ratios)
        return out

    slowest = sorted(
        (
            (
                statistics.median(t[i] for t in per_round["ours"]),
                statistics.median(t[i] for t in per_round["baseline"]),
                os.path.relpath(files[i], TEST_FILES),
            )
            for i in range(len(files))
        ),
        reverse=True,
    )[:8]
    return {
        "rounds": rounds,
        "corpus": skipped,
        "ours_outcomes": dict(Counter(outcomes.values())),
        "all_eligible": summary(list(range(len(files)))),
        "ours_records_only": summary(records),
        "slowest_files_ours": [
            {"file": f, "ours_ms": o * 1e3, "baseline_ms": b * 1e3} for o, b, f in slowest
        ],
        "target": THROUGHPUT_TARGET,
        "aim": THROUGHPUT_AIM,
    }


def profile_ours(top: int) -> None:
    files, _, _ = eligible(corpus())
    prof = cProfile.Profile()
    prof.enable()
    for path in files:
        _ours_file(path)
    prof.disable()
    stats = pstats.Stats(prof, stream=sys.stdout)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)


# -- report -----------------------------------------------------------------------------------


def _size(n: float | None) -> str:
    if n is None:
        return "n/a"
    for unit, div in (("MiB", MiB), ("KiB", KiB)):
        if abs(n) >= div:
            return f"{n / div:.1f} {unit}"
    return f"{n:.0f} B"


def _table(title: str, head: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    line = "  ".join("-" * w for w in widths)
    out = [title, "  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)), line]
    for r in rows:
        cells = [
            c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        out.append("  ".join(cells))
    return "\n".join(out)


def report(results: dict[str, Any]) -> str:
    parts = []
    if "bytes" in results:
        rows = [
            [
                r["object"],
                _size(r["object_size"]),
                _size(r["header_bytes"]),
                _size(r["ours_bytes_read_stats"]),
                _size(r["ours_bytes_read_hook"]),
                str(r["ours_requests"]),
                _size(r["baseline_bytes_read_hook"]),
                f"{r['ratio_baseline_over_ours']:.0f}x",
                "yes" if r["within_target"] else "NO",
            ]
            for r in results["bytes"]
        ]
        parts.append(
            _table(
                "1. Bytes read from S3 (moto in process); target <= 256 KiB for ours",
                [
                    "object",
                    "size",
                    "header",
                    "ours (stats)",
                    "ours (GETs)",
                    "GETs",
                    "baseline",
                    "baseline/ours",
                    "<= 256 KiB",
                ],
                rows,
            )
        )
    if "memory" in results:
        rows = [
            [
                r["object"],
                _size(r["object_size"]),
                _size(r["ours_tracemalloc_peak"]),
                _size(r["baseline_tracemalloc_peak"]),
                f"{r['tracemalloc_ratio_baseline_over_ours']:.1f}x",
                _size(r["ours_rss_delta"]),
                _size(r["baseline_rss_delta"]),
            ]
            for r in results["memory"]
        ]
        parts.append(
            _table(
                "2. Peak memory per parse (fresh child process, moto server)",
                [
                    "object",
                    "size",
                    "ours tracemalloc",
                    "baseline tracemalloc",
                    "baseline/ours",
                    "ours RSS delta",
                    "baseline RSS delta",
                ],
                rows,
            )
        )
        peaks = [r["ours_tracemalloc_peak"] for r in results["memory"]]
        sizes = [r["object_size"] for r in results["memory"]]
        parts[-1] += (
            f"\n   ours: peak {_size(min(peaks))}-{_size(max(peaks))} for objects of "
            f"{_size(min(sizes))}-{_size(max(sizes))} (max/min {max(peaks) / min(peaks):.2f})"
        )
    if "throughput" in results:
        t = results["throughput"]
        rows = []
        for label, key in (
            ("all eligible files", "all_eligible"),
            ("files ours turns into records", "ours_records_only"),
        ):
            s = t[key]
            rows.append(
                [
                    label,
                    str(s["files"]),
                    f"{s['ours_files_per_s']:.0f}",
                    f"{s['baseline_files_per_s']:.0f}",
                    f"{s['ratio_ours_over_baseline']:.2f}x",
                    f"{s['ratio_per_round_min']:.2f}-{s['ratio_per_round_max']:.2f}",
                ]
            )
        title = (
            f"3. Parse throughput, pydicom test files, median of {t['rounds']} interleaved "
            f"rounds; target {t['target']}x, aim {t['aim']}x\n"
            f"   corpus: {t['corpus']['total']} files, baseline fails on "
            f"{sum(t['corpus']['baseline_failed'].values())}; ours on the rest: "
            f"{t['ours_outcomes']}"
        )
        ratio = t["all_eligible"]["ratio_ours_over_baseline"]
        verdict = (
            f"   target {t['target']}x: {'met' if ratio >= t['target'] else 'NOT met'}"
            f" ({ratio:.2f}x over all eligible files)"
        )
        parts.append(
            _table(
                title,
                ["set", "files", "ours files/s", "baseline files/s", "ours/baseline", "per round"],
                rows,
            )
            + "\n"
            + verdict
        )
    return "\n\n".join(parts)


def _git(*args: str) -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), *args], capture_output=True, text=True, check=False
        )
    except OSError:
        return ""
    return out.stdout.strip()


def environment() -> dict[str, Any]:
    import botocore
    import moto

    import pipeline

    pipeline_dir = Path(pipeline.__file__).resolve().parent
    in_repo = pipeline_dir == REPO / "pipeline"
    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": _git("rev-parse", "--short", "HEAD"),
        # Which parser was measured: the repository's (and whether it had local changes) or
        # another copy put first on PYTHONPATH (e.g. a candidate patch).
        "pipeline_path": str(pipeline_dir),
        "pipeline_uncommitted_changes": bool(_git("status", "--porcelain", "pipeline"))
        if in_repo
        else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "pydicom": pydicom.__version__,
        "boto3": boto3.__version__,
        "botocore": botocore.__version__,
        "moto": moto.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=11, help="throughput rounds (default 11)")
    ap.add_argument("--big-mib", type=int, default=256, help="multi-frame Pixel Data size")
    ap.add_argument("--bulk-mib", type=int, default=48, help="binary values before Pixel Data")
    ap.add_argument(
        "--only",
        choices=["bytes", "memory", "throughput"],
        action="append",
        help="run only these sections (repeatable)",
    )
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON output path")
    ap.add_argument("--profile", action="store_true", help="cProfile ours over the corpus, exit")
    ap.add_argument(
        "--child-memory", nargs=3, metavar=("APPROACH", "KEY", "WARM_KEY"), help=argparse.SUPPRESS
    )
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")

    if args.child_memory:
        print(json.dumps(child_memory(*args.child_memory)))
        return 0
    if args.profile:
        profile_ours(25)
        return 0

    sections = args.only or ["bytes", "memory", "throughput"]
    results: dict[str, Any] = {"environment": environment()}
    started = time.perf_counter()
    if {"bytes", "memory"} & set(sections):
        with tempfile.TemporaryDirectory(prefix="bench-parser-") as tmp:
            print(f"writing synthetic objects to {tmp} ...", file=sys.stderr)
            objects = make_objects(
                Path(tmp), big_bytes=args.big_mib * MiB, bulk_bytes=args.bulk_mib * MiB
            )
            if "bytes" in sections:
                print("1. bytes read (moto in process) ...", file=sys.stderr)
                results["bytes"] = bench_bytes(objects)
            if "memory" in sections:
                print("2. peak memory (children, moto server) ...", file=sys.stderr)
                results["memory"] = bench_memory(objects)
    if "throughput" in sections:
        print(f"3. throughput ({args.rounds} rounds) ...", file=sys.stderr)
        results["throughput"] = bench_throughput(args.rounds)
    results["elapsed_s"] = time.perf_counter() - started

    print(report(results))
    env = results["environment"]
    print(f"\nparser measured: {env['pipeline_path']} at {env['commit']}", end="")
    print(" (with uncommitted changes)" if env["pipeline_uncommitted_changes"] else "")
    print(f"(total {results['elapsed_s']:.0f} s; figures in {args.out})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
