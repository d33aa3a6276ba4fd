"""End-to-end throughput of the local stack: objects/s from the first upload to a drained queue,
the tuned pipe emulator against the baseline (the emulator before issue 12), side by side in one
run (``make bench``).

Each (variant, moto mode) runs in a fresh child process: a new :class:`LocalStack` with its pipe
in the background, then ``--count`` small DICOM objects uploaded to the image bucket one after
the other (each S3 notification goes to the ingest queue, as on AWS) while the pipe drains.
The objects are copies of pydicom's bundled ``CT_small.dcm`` (``pydicom/data/test_files``,
found on disk, not fetched) with fresh Study, Series and SOP Instance UIDs. Measured: wall
seconds from the first upload until the queue is drained, objects/s, and the child's CPU
seconds (user + system; moto's server, when there is one, is a thread of the same process).

Nothing is lost, or the run fails: every key is in the table with ``status = indexed``, the
table holds exactly ``--count`` items, the DLQ is empty and every execution SUCCEEDED.

* ``tuned``: :class:`LocalStack` as ``local up`` and the tests run it now (concurrent batches,
  parsed definitions cached, completion awaited in process, the largest state read in place;
  with moto's server, this process's own calls served in process:
  :mod:`pipeline.local.loopback`);
* ``http``: ``tuned`` without the loopback (``LocalStack(loopback=False)``): every call of the
  pipe, the workflow and the handler over loopback HTTP to moto's server (server mode only;
  the same as ``tuned`` in process);
* ``baseline``: ``LocalStack(tuned=False)``: one batch at a time, DescribeExecution polled
  every 20 ms, every execution's history fetched through the API, every execution parsing the
  definition again.

Modes: ``inproc`` (``LocalStack(server=False)``, moto in process, as the workflow tests) and
``server`` (moto's server on loopback, as ``local up``, the demo and the notebooks). In server
mode the objects are uploaded over HTTP by a client of their own, as Orthanc uploads them
(never through the loopback).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
TARGET = 30.0  # objects/s, issue 12 section 5


def _objects(count: int) -> list[tuple[str, bytes]]:
    """``count`` copies of CT_small.dcm with fresh UIDs, as (key, bytes)."""
    import pydicom
    from pydicom.uid import generate_uid

    source = Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm"
    ds = pydicom.dcmread(source)
    out: list[tuple[str, bytes]] = []
    study = generate_uid()
    for i in range(count):
        if i % 50 == 0:
            study = generate_uid()
        ds.StudyInstanceUID = study
        if i % 10 == 0:
            ds.SeriesInstanceUID = generate_uid()
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        out.append((f"orthanc/bench/{i:05d}.dcm", buf.getvalue()))  # Orthanc's prefix: notified
    return out


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _profile_threads(profilers: list[cProfile.Profile]) -> None:
    """Profile every thread started from now on (the pipe's, moto's server's), not just this one."""
    import threading

    original = threading.Thread.run

    def run(self: threading.Thread) -> None:
        profiler = cProfile.Profile(time.thread_time)  # CPU, not waits for the GIL
        profilers.append(profiler)
        profiler.enable()
        try:
            original(self)
        finally:
            profiler.disable()

    threading.Thread.run = run  # type: ignore[method-assign]


def run_child(variant: str, mode: str, count: int, profile: str | None) -> dict[str, Any]:
    """One measurement in this process; returns its figures (and raises if anything was lost)."""
    import logging

    from pipeline import aws
    from pipeline.local.stack import LocalStack

    logging.basicConfig(level=logging.WARNING)
    objects = _objects(count)
    profilers: list[cProfile.Profile] = []
    if profile:
        _profile_threads(profilers)
    stack = LocalStack(
        server=mode == "server",
        tuned=variant != "baseline",
        loopback=variant == "tuned",
        visibility_timeout=30,
    )
    with stack:
        assert stack.info is not None and stack.pipe is not None
        upload = stack.upload
        if stack.endpoint_url:  # an uploader of its own over HTTP, as Orthanc
            import boto3

            s3 = boto3.session.Session().client("s3", endpoint_url=stack.endpoint_url)
            s3.head_bucket(Bucket=stack.bucket)  # connected before the clock starts

            def upload(key: str, body: bytes) -> None:
                s3.put_object(Bucket=stack.bucket, Key=key, Body=body)

        profiler = cProfile.Profile(time.thread_time) if profile else None
        if profiler:
            profilers.append(profiler)
        cpu0, t0 = _cpu(), time.monotonic()
        if profiler:
            profiler.enable()
        for key, body in objects:
            upload(key, body)
        uploaded = time.monotonic() - t0
        stack.drain(timeout=max(600.0, count * 0.5))
        seconds = time.monotonic() - t0
        if profiler:
            profiler.disable()
        cpu = _cpu() - cpu0
        results = list(stack.pipe.results)
        # Nothing lost: every key indexed, nothing else in the table, the DLQ empty.
        ddb = aws.client("dynamodb")
        items: dict[str, str] = {}
        kwargs: dict[str, Any] = {"TableName": stack.table, "ProjectionExpression": "s3_key, #s"}
        kwargs["ExpressionAttributeNames"] = {"#s": "status"}
        while True:
            page = ddb.scan(**kwargs)
            items.update({i["s3_key"]["S"]: i["status"]["S"] for i in page["Items"]})
            if "LastEvaluatedKey" not in page:
                break
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        dlq = aws.client("sqs").get_queue_attributes(
            QueueUrl=stack.info.dlq_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        dlq_depth = sum(int(v) for v in dlq.values())
    indexed = sum(1 for key, _ in objects if items.get(key) == "indexed")
    failed = [r for r in results if r.status != "SUCCEEDED"]
    figures = {
        "variant": variant,
        "mode": mode,
        "objects": count,
        "seconds": round(seconds, 2),
        "upload_seconds": round(uploaded, 2),
        "objects_per_s": round(count / seconds, 2),
        "cpu_seconds": round(cpu, 2),
        "cpu_ms_per_object": round(1000 * cpu / count, 2),
        "executions": len(results),
        "failed_executions": len(failed),
        "returned": sum(r.returned for r in results),
        "table_items": len(items),
        "indexed": indexed,
        "dlq": dlq_depth,
        "lost": count - indexed,
        "served_in_process": stack.loopback.served if stack.loopback else 0,
    }
    if profile:
        for p in profilers:
            p.disable()
        text = io.StringIO()
        stats = pstats.Stats(profilers[0], stream=text)
        for p in profilers[1:]:
            stats.add(p)
        stats.dump_stats(profile)
        stats.sort_stats("tottime").print_stats(30)
        stats.sort_stats("cumulative").print_stats(60)
        print(text.getvalue(), file=sys.stderr)
    if failed or indexed != count or len(items) != count or dlq_depth:
        raise SystemExit(f"LOST: {json.dumps(figures)}")
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--modes", default="inproc,server", help="inproc,server")
    parser.add_argument("--variants", default="tuned,http,baseline", help="tuned,http,baseline")
    parser.add_argument(
        "--baseline-count",
        type=int,
        default=None,
        help="objects for the baseline (default: --count)",
    )
    parser.add_argument("--profile", metavar="FILE", help="cProfile the (single) child")
    parser.add_argument("--child", nargs=2, metavar=("VARIANT", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        figures = run_child(args.child[0], args.child[1], args.count, args.profile)
        print(json.dumps(figures))
        return 0

    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"}
    rows: list[dict[str, Any]] = []
    for mode in args.modes.split(","):
        for variant in args.variants.split(","):
            if variant == "http" and mode != "server":
                continue  # no loopback in process: the same as tuned
            count = args.count
            if variant == "baseline" and args.baseline_count:
                count = args.baseline_count
            cmd = [sys.executable, __file__, "--child", variant, mode, "--count", str(count)]
            if args.profile:
                cmd += ["--profile", args.profile]
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            if proc.returncode:
                sys.stderr.write(proc.stderr[-4000:])
                print(proc.stdout.strip() or f"{variant}/{mode} failed", file=sys.stderr)
                return 1
            if args.profile:
                sys.stderr.write(proc.stderr)
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)

    print()
    print(
        f"{'mode':<7} {'variant':<9} {'objects':>7} {'seconds':>8} {'obj/s':>7} "
        f"{'CPU s':>7} {'CPU ms/obj':>10} {'executions':>10} {'lost':>5}"
    )
    for r in rows:
        print(
            f"{r['mode']:<7} {r['variant']:<9} {r['objects']:>7} {r['seconds']:>8} "
            f"{r['objects_per_s']:>7} {r['cpu_seconds']:>7} {r['cpu_ms_per_object']:>10} "
            f"{r['executions']:>10} {r['lost']:>5}"
        )
    for mode in args.modes.split(","):
        by = {r["variant"]: r for r in rows if r["mode"] == mode}
        if "tuned" in by:
            reached = by["tuned"]["objects_per_s"] >= TARGET
            line = f"{mode}: tuned {by['tuned']['objects_per_s']} objects/s"
            if "baseline" in by:
                ratio = by["tuned"]["objects_per_s"] / by["baseline"]["objects_per_s"]
                line += f", {ratio:.1f}x the baseline ({by['baseline']['objects_per_s']})"
            if "http" in by:
                ratio = by["tuned"]["objects_per_s"] / by["http"]["objects_per_s"]
                line += f", {ratio:.2f}x without the loopback ({by['http']['objects_per_s']})"
            print(f"{line}; target >= {TARGET:.0f} objects/s: {'met' if reached else 'NOT met'}")
    out = ROOT / ".local" / "bench" / "local_throughput.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "target": TARGET}, indent=2) + "\n", encoding="utf-8")
    print(f"figures written to {out.relative_to(ROOT)}")
    return 0  # the figures are reported, not a pass/fail test; a lost object fails the child


if __name__ == "__main__":
    sys.exit(main())
