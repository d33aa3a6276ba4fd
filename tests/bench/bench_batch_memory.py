"""Peak memory of one parse step over a batch of ten worst-case objects, with and without the
memory gate, side by side in one run (``make bench``).

Each object is a deflate bomb of a header: a few kilobytes in S3 whose dataset inflates to
3.4 MB of 420,000 empty private elements (8 bytes each, the most elements per header byte;
within the default element budget). The direct reader leaves deflated datasets to pydicom's
reader, whose objects cost far more per element: the worst case we know. (The same header
not deflated, read by the direct reader, peaks at about 350 MiB for the batch; 240,000 empty
sequence items at about 90 MiB.) Each variant runs in
a fresh child process with moto in process: the figure is the child's peak resident memory
during ``plan_batch`` less its resident memory just before (interpreter, libraries, moto and
the ten objects moto holds).

* ``gated``: the parse step as deployed (the memory budget of a 1,024 MB function: one large
  read at a time, the worker count the budget allows);
* ``ungated`` (the baseline, the parse step before the gate): eight reads at once, no bound.
"""

from __future__ import annotations

import json
import os
import resource
import struct
import subprocess
import sys
import time
import zlib
from typing import Any

MiB = 1024 * 1024
OBJECTS = 10
PRIVATE_GROUPS = tuple(range(0x0011, 0x001F, 2))  # seven odd groups between 0008 and 0020
ELEMENTS_PER_GROUP = 60_000


def _element(group: int, elem: int, vr: bytes, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\x00" if vr == b"UI" else b" "
    return struct.pack("<HH", group, elem) + vr + struct.pack("<H", len(value)) + value


def worst_case_object(seed: int) -> bytes:
    """A Part 10 file whose deflated dataset inflates to 420,000 empty elements (3.4 MB)."""
    uid = f"1.2.826.0.1.3680043.8.498.{seed}"
    sop_class = b"1.2.840.10008.5.1.4.1.1.7"
    ts = b"1.2.840.10008.1.2.1.99"  # Deflated Explicit VR Little Endian
    meta_body = (
        struct.pack("<HH", 2, 1) + b"OB\x00\x00" + struct.pack("<I", 2) + b"\x00\x01"
    ) + b"".join(
        [
            _element(2, 2, b"UI", sop_class),
            _element(2, 3, b"UI", uid.encode() + b".1"),
            _element(2, 0x10, b"UI", ts),
        ]
    )
    meta = _element(2, 0, b"UL", struct.pack("<I", len(meta_body))) + meta_body
    parts = [
        b"\x00" * 128 + b"DICM" + meta,
        _element(8, 0x16, b"UI", sop_class),
        _element(8, 0x18, b"UI", uid.encode() + b".1"),
    ]
    empty_lo = b"LO\x00\x00"
    for group in PRIVATE_GROUPS:
        parts.append(_element(group, 0x0010, b"LO", b"BENCH"))
        head = struct.pack("<H", group)
        parts.extend(
            head + struct.pack("<H", elem) + empty_lo
            for elem in range(0x1000, 0x1000 + ELEMENTS_PER_GROUP)
        )
    parts.append(_element(0x20, 0x0D, b"UI", uid.encode() + b".2"))
    parts.append(_element(0x20, 0x0E, b"UI", uid.encode() + b".3"))
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    return parts[0] + deflate.compress(b"".join(parts[1:])) + deflate.flush()


def _rss() -> int:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def child(variant: str) -> dict[str, Any]:
    """Run one variant in this process; returns its figures."""
    os.environ.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_REGION="us-east-1",
        AWS_DEFAULT_REGION="us-east-1",
    )
    os.environ.pop("AWS_ENDPOINT_URL", None)
    from moto import mock_aws

    from pipeline import aws
    from pipeline.workflow.batch import IngestConfig, plan_batch
    from pipeline.workflow.table import local_table_definition

    with mock_aws():
        aws.reset_clients()
        s3, ddb = aws.client("s3"), aws.client("dynamodb")
        s3.create_bucket(Bucket="bench")
        ddb.create_table(**local_table_definition("bench-table"))
        messages = []
        for i in range(OBJECTS):
            key = f"worst/{i}.dcm"
            body = worst_case_object(i)
            s3.put_object(Bucket="bench", Key=key, Body=body)
            record = {
                "eventName": "ObjectCreated:Put",
                "eventTime": f"2026-01-01T00:00:0{i}.000Z",
                "s3": {"bucket": {"name": "bench"}, "object": {"key": key, "size": len(body)}},
            }
            messages.append({"messageId": f"m{i}", "body": json.dumps({"Records": [record]})})
        config = IngestConfig(
            table_name="bench-table",
            max_workers=8,
            memory_budget=(int(1024 * 0.85) - 100) * MiB if variant == "gated" else None,
        )
        before = _rss()
        started = time.perf_counter()
        plan = plan_batch(messages, config)
        seconds = time.perf_counter() - started
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    outcomes = plan.counts
    return {
        "variant": variant,
        "workers": config.workers(),
        "peak_mib": round((peak - before) / MiB, 1),
        "seconds": round(seconds, 2),
        "outcomes": outcomes,
        "large_reads": plan.large_reads,
    }


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2])))
        return 0
    rows = []
    for variant in ("gated", "ungated"):
        out = subprocess.run(
            [sys.executable, __file__, "--child", variant],
            check=True,
            capture_output=True,
            text=True,
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    gated, ungated = rows
    print(f"\nA batch of {OBJECTS} deflated headers of 420,000 elements each: peak memory")
    print(f"{'variant':<10}{'workers':>8}{'peak MiB':>10}{'seconds':>9}{'large':>7}  outcomes")
    for r in rows:
        print(
            f"{r['variant']:<10}{r['workers']:>8}{r['peak_mib']:>10}{r['seconds']:>9}"
            f"{r['large_reads'] if r['variant'] == 'gated' else '-':>7}  {r['outcomes']}"
        )
    ratio = gated["peak_mib"] / ungated["peak_mib"] if ungated["peak_mib"] else float("nan")
    print(f"gated / ungated peak memory: {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
