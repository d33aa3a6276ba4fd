"""CPU of the parse function's worst-case batch, at the CPU share its memory buys (``make bench``).

Lambda gives a function one vCPU at 1,769 MB of memory and proportionally less below; the
parse step's threads share one interpreter lock, so a batch's CPU seconds add up whatever the
worker count, and more than one vCPU does not help. For each hostile header below, built as
the worst the read limits admit, a fresh child process parses one object (``parse`` then
``.record()``: the DICOM JSON, the record, its gzip) from memory and measures its process CPU
time (``time.process_time``; no S3 or DynamoDB calls, whose CPU is small and not the parser's).
The batch is ``PIPE_BATCH_SIZE`` such objects (Pipes' batch: ten messages, one object each):
``batch = objects x one object's CPU``. Scaled to Lambda:

    lambda_seconds = batch_cpu_seconds x CPU_SAFETY_FACTOR / share,
    share = min(1, memory_mb / 1769)

``CPU_SAFETY_FACTOR`` (cdk/constants.py) is the assumption that Lambda's arm64 (Graviton)
vCPU may be that much slower than one core of the machine the bench runs on; it is not
measured. A scenario PASSes when ``lambda_seconds <= FUNCTION_TIMEOUT_SECONDS / 2``; the bench
exits 1 when any scenario of the current tree FAILs.

Side by side in one run: the baseline (a commit before the CPU budget, extracted with
``git archive``: its limits, its memory, the same scenarios built at *its* limits) and the
current tree; ratios baseline / current. Each scenario's figures go to
``.local/bench/batch_cpu.json``.

Scenarios (N: the element budget in units, B: the header byte cap, V: values per unit):

* ``deflate-bomb``: a deflated dataset (a few KB in S3) of N empty private elements, which
  the direct reader leaves to pydicom's reader (the memory bench's object, at the limit);
* ``deflate-items``: the same with N empty sequence items (a ``Dataset`` each: pydicom's
  costliest unit);
* ``bail-late``: N empty items the direct reader reads, then an element out of order that
  makes it bail out, so pydicom's reader reads them all again: the most work per unit;
* ``bail-late-text``: the same after a UT filling the rest of the byte cap with control
  characters (JSON escapes each as 6 bytes): both limits at once, read twice;
* ``values``: a DS element of N x V values ``0\\0\\...`` in implicit VR (bounded by B without a
  value budget: 16 million values in 32 MiB);
* ``escapes``: a UT under ISO 2022 IR 87 with N x V escape sequences (pydicom decodes
  fragment by fragment);
* ``text-bytes``: B bytes of control characters in one UT (JSON escapes each as 6 bytes);
* ``deep-sequences``: sequences nested as deep as the readers accept (200 levels) with text
  at the bottom (a defined-length value is copied at every level);
* ``attrs-1200``: a header of 1,200 short attributes, for scale.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if "--child" not in sys.argv:  # a child imports the tree its PYTHONPATH names (the baseline's)
    sys.path.insert(0, str(ROOT))

from cdk.constants import Ingestion  # noqa: E402  (the current tree's, for both sides)
from pipeline.names import PIPE_BATCH_SIZE  # noqa: E402

#: The commit before the CPU budget (issue 12, section 2): 500,000 units, values free, 1,024 MB.
BASELINE = "2cfefc7"
SCENARIOS = (
    "deflate-bomb",
    "deflate-items",
    "bail-late",
    "bail-late-text",
    "values",
    "escapes",
    "text-bytes",
    "deep-sequences",
    "attrs-1200",
)
SOP_CLASS = b"1.2.840.10008.5.1.4.1.1.7\x00"
EMPTY_ITEM = b"\xfe\xff\x00\xe0\x00\x00\x00\x00"
SEQUENCE_END = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
#: Units a scenario leaves unspent for the few elements around its payload.
SLACK = 64
#: Nesting depth of ``deep-sequences`` (both readers accept it; about 1,000 is a RecursionError).
DEPTH = 200


# -- building the objects --------------------------------------------------------------------
def _explicit(group: int, elem: int, vr: bytes, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\x00" if vr == b"UI" else b" "
    if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT", b"UC"):
        return (
            struct.pack("<HH", group, elem)
            + vr
            + b"\x00\x00"
            + struct.pack("<I", len(value))
            + value
        )
    return struct.pack("<HH", group, elem) + vr + struct.pack("<H", len(value)) + value


def _implicit(group: int, elem: int, value: bytes) -> bytes:
    if len(value) % 2:
        value += b" "
    return struct.pack("<HHI", group, elem, len(value)) + value


def _part10(transfer_syntax: bytes, dataset: bytes, *, deflate: bool = False) -> bytes:
    body = (
        struct.pack("<HH", 2, 1)
        + b"OB\x00\x00"
        + struct.pack("<I", 2)
        + b"\x00\x01"
        + _explicit(2, 2, b"UI", SOP_CLASS)
        + _explicit(2, 3, b"UI", b"1.2.3.4")
        + _explicit(2, 0x10, b"UI", transfer_syntax)
    )
    meta = b"\x00" * 128 + b"DICM" + _explicit(2, 0, b"UL", struct.pack("<I", len(body))) + body
    if deflate:
        packer = zlib.compressobj(9, zlib.DEFLATED, -15)
        return meta + packer.compress(dataset) + packer.flush()
    return meta + dataset


def _uids_explicit(first: bool) -> bytes:
    if first:
        return _explicit(8, 0x16, b"UI", SOP_CLASS) + _explicit(8, 0x18, b"UI", b"1.2.3.4")
    return _explicit(0x20, 0x0D, b"UI", b"1.2.3.5") + _explicit(0x20, 0x0E, b"UI", b"1.2.3.6")


def _uids_implicit(first: bool) -> bytes:
    if first:
        return _implicit(8, 0x16, SOP_CLASS) + _implicit(8, 0x18, b"1.2.3.4")
    return _implicit(0x20, 0x0D, b"1.2.3.5") + _implicit(0x20, 0x0E, b"1.2.3.6")


EXPLICIT, IMPLICIT, DEFLATED = (
    b"1.2.840.10008.1.2.1",
    b"1.2.840.10008.1.2",
    b"1.2.840.10008.1.2.1.99",
)


def build(scenario: str, units: int, max_bytes: int, values_per_unit: int | None) -> bytes:
    """One object of ``scenario`` at the limits (see the module docstring)."""
    n = units - SLACK
    # Values a header may hold: the budget's, or without one what the byte cap allows.
    by_bytes = max_bytes // 2 - 4096
    values = min(n * values_per_unit, by_bytes) if values_per_unit else by_bytes
    if scenario == "deflate-bomb":
        parts = [_uids_explicit(True)]
        group, left = 0x0011, n
        while left > 0:
            count = min(left, 0xEFFF)
            parts.append(_explicit(group, 0x0010, b"LO", b"BENCH"))
            head = struct.pack("<H", group)
            parts.extend(
                head + struct.pack("<H", e) + b"LO\x00\x00" for e in range(0x1000, 0x1000 + count)
            )
            left -= count
            group += 2
        parts.append(_uids_explicit(False))
        return _part10(DEFLATED, b"".join(parts), deflate=True)
    if scenario == "bail-late-text":
        # Both bounds at once: the byte cap less the items in control characters, then the items.
        text = b"\x01" * (max_bytes - 8 * n - 64 * 1024)
        sequence = b"\x40\x00\x75\x02SQ\x00\x00\xff\xff\xff\xff" + EMPTY_ITEM * n + SEQUENCE_END
        dataset = (
            _uids_explicit(True) + _uids_explicit(False) + _explicit(0x20, 0x4000, b"UT", text)
        )
        return _part10(EXPLICIT, dataset + sequence + _explicit(8, 0x20, b"DA", b"20260101"))
    if scenario in ("deflate-items", "bail-late"):
        sequence = b"\x40\x00\x75\x02SQ\x00\x00\xff\xff\xff\xff" + EMPTY_ITEM * n + SEQUENCE_END
        if scenario == "deflate-items":
            dataset = _uids_explicit(True) + _uids_explicit(False) + sequence
            return _part10(DEFLATED, dataset, deflate=True)
        # (0008,0020) after (0040,0275): out of order, the direct reader bails at the end.
        dataset = _uids_explicit(True) + _uids_explicit(False) + sequence
        return _part10(EXPLICIT, dataset + _explicit(8, 0x20, b"DA", b"20260101"))
    if scenario == "values":
        # Implicit VR: one element's length field holds 32 bits, so one DS element may hold
        # every value the limits admit.
        value = b"\\".join([b"0"] * values)
        dataset = _uids_implicit(True) + _implicit(0x0018, 0x0050, value) + _uids_implicit(False)
        return _part10(IMPLICIT, dataset)
    if scenario == "escapes":
        escapes = min(values, max_bytes // 5 - 4096)  # 5 bytes an escape
        text = b"\x1b$B!!\x1b(Ba" * (escapes // 2)
        dataset = (
            _explicit(8, 5, b"CS", b"\\ISO 2022 IR 87")
            + _uids_explicit(True)
            + _explicit(0x0018, 0x0050, b"DS", b"1")
            + _uids_explicit(False)
            + _explicit(0x0020, 0x4000, b"UT", text)
        )
        return _part10(EXPLICIT, dataset)
    if scenario == "text-bytes":
        text = b"\x01" * (max_bytes - 64 * 1024)
        dataset = (
            _uids_explicit(True) + _uids_explicit(False) + _explicit(0x20, 0x4000, b"UT", text)
        )
        return _part10(EXPLICIT, dataset)
    if scenario == "deep-sequences":
        payload = b"\x01" * (max_bytes // 8)
        inner = _explicit(0x0020, 0x4000, b"UT", payload)
        for _ in range(DEPTH):
            item = b"\xfe\xff\x00\xe0" + struct.pack("<I", len(inner)) + inner
            inner = b"\x40\x00\x75\x02SQ\x00\x00" + struct.pack("<I", len(item)) + item
        dataset = _uids_explicit(True) + _uids_explicit(False) + inner
        return _part10(EXPLICIT, dataset)
    if scenario == "attrs-1200":
        parts = [_uids_explicit(True), _explicit(0x0009, 0x0010, b"LO", b"BENCH")]
        parts.extend(
            _explicit(0x0009, 0x1000 + i, b"LO", f"value {i}".encode()) for i in range(1200)
        )
        parts.append(_uids_explicit(False))
        return _part10(EXPLICIT, b"".join(parts))
    raise ValueError(scenario)


# -- the child: one scenario in a fresh process ------------------------------------------------
class _Memory:
    """A ByteSource over bytes in memory."""

    def __init__(self, data: bytes, name: str) -> None:
        self.data = data
        self.uri = f"mem://{name}"
        self.size = len(data)

    def read_range(self, offset: int, length: int) -> bytes:
        return self.data[offset : offset + length]


def child(scenario: str) -> dict[str, Any]:
    """Build and parse one object of ``scenario`` with this process's ``pipeline``."""
    import pipeline
    from pipeline.dicom import sources
    from pipeline.dicom.header import ReadLimits
    from pipeline.dicom.parse import parse
    from pipeline.errors import DicomPipelineError

    limits = ReadLimits()
    values_per_unit = getattr(sources, "VALUES_PER_UNIT", None)
    # Warm up (imports, caches) on a small object, outside the measurement.
    parse(_Memory(build("attrs-1200", 2000, 1 << 20, 8), "warm")).record()
    data = build(scenario, limits.max_elements, limits.max_header_bytes, values_per_unit)
    rss_before = _rss()
    started = time.process_time()
    try:
        parsed = parse(_Memory(data, scenario), limits)
        parsed.record()
        outcome = f"indexed ({parsed.reader})"
    except DicomPipelineError as exc:
        outcome = exc.code
    cpu = time.process_time() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "scenario": scenario,
        "pipeline": str(Path(pipeline.__file__).parent),
        "max_elements": limits.max_elements,
        "max_header_bytes": limits.max_header_bytes,
        "values_per_unit": values_per_unit,
        "object_bytes": len(data),
        "cpu_seconds": round(cpu, 3),
        "peak_rss_increase_mib": round(max(peak - rss_before, 0) / 2**20, 1),
        "outcome": outcome,
    }


def _rss() -> int:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


# -- the parent ----------------------------------------------------------------------------------
def _baseline_tree(ref: str, into: Path) -> tuple[Path, int]:
    """Extract ``pipeline/`` and ``cdk/constants.py`` of ``ref``; return the tree and its memory."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", ref, "pipeline", "cdk/constants.py", "cdk/__init__.py"],
        check=True,
        capture_output=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    memory = subprocess.run(
        [
            sys.executable,
            "-c",
            "from cdk.constants import Ingestion; print(Ingestion.FUNCTION_MEMORY_MB)",
        ],
        check=True,
        capture_output=True,
        text=True,
        cwd=into,
        env={**os.environ, "PYTHONPATH": str(into)},
    ).stdout.strip()
    return into, int(memory)


def _run(tree: Path, scenario: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", scenario],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1"},
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def lambda_seconds(batch_cpu: float, memory_mb: int) -> float:
    """Batch CPU seconds on this machine as seconds on Lambda at ``memory_mb`` (see above)."""
    share = min(1.0, memory_mb / Ingestion.FULL_VCPU_MEMORY_MB)
    return batch_cpu * Ingestion.CPU_SAFETY_FACTOR / share


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument(
        "--baseline", default=BASELINE, help="git ref of the baseline (default %(default)s)"
    )
    parser.add_argument("--no-baseline", action="store_true", help="measure the current tree only")
    parser.add_argument("--only", nargs="*", choices=SCENARIOS, help="these scenarios only")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child)))
        return 0
    scenarios = args.only or list(SCENARIOS)
    limit = Ingestion.FUNCTION_TIMEOUT_SECONDS / 2
    sides: dict[str, tuple[Path, int]] = {"current": (ROOT, Ingestion.FUNCTION_MEMORY_MB)}
    with tempfile.TemporaryDirectory() as tmp:
        if not args.no_baseline:
            sides = {"baseline": _baseline_tree(args.baseline, Path(tmp)), **sides}
        rows: dict[str, dict[str, dict[str, Any]]] = {side: {} for side in sides}
        for scenario in scenarios:
            for side, (tree, memory) in sides.items():
                row = _run(tree, scenario)
                row["memory_mb"] = memory
                row["batch_cpu_seconds"] = round(row["cpu_seconds"] * PIPE_BATCH_SIZE, 2)
                row["lambda_seconds"] = round(lambda_seconds(row["batch_cpu_seconds"], memory), 1)
                row["pass"] = row["lambda_seconds"] <= limit
                rows[side][scenario] = row
    print(
        f"\nWorst-case batch CPU: {PIPE_BATCH_SIZE} objects, one object's process CPU x "
        f"{PIPE_BATCH_SIZE}; on Lambda = batch x {Ingestion.CPU_SAFETY_FACTOR} (safety) / "
        f"min(1, memory / {Ingestion.FULL_VCPU_MEMORY_MB}); limit {limit:.0f} s (half the timeout)"
    )
    for side, (_, memory) in sides.items():
        first = next(iter(rows[side].values()))
        print(
            f"  {side}: {memory} MB, max_elements {first['max_elements']:,}, "
            f"max_header_bytes {first['max_header_bytes']:,}, values per unit "
            f"{first['values_per_unit'] or 'not counted'}"
        )
    head = (
        f"{'scenario':<16}{'side':<10}{'object':>10}{'1 obj s':>9}{'batch s':>9}"
        f"{'Lambda s':>10}{'RSS MiB':>9}  outcome"
    )
    print(head)
    failed = False
    for scenario in scenarios:
        for side in sides:
            r = rows[side][scenario]
            verdict = "PASS" if r["pass"] else "FAIL"
            failed |= side == "current" and not r["pass"]
            print(
                f"{scenario:<16}{side:<10}{r['object_bytes'] / 2**20:>9.2f}M"
                f"{r['cpu_seconds']:>9.2f}"
                f"{r['batch_cpu_seconds']:>9.1f}{r['lambda_seconds']:>10.1f}"
                f"{r['peak_rss_increase_mib']:>9.0f}  {r['outcome']:<18}{verdict}"
            )
        if "baseline" in sides:
            base, cur = rows["baseline"][scenario], rows["current"][scenario]
            ratio = (
                base["lambda_seconds"] / cur["lambda_seconds"]
                if cur["lambda_seconds"]
                else float("inf")
            )
            print(f"{'':<16}{'ratio':<10}baseline / current Lambda seconds: {ratio:.1f}x")
    out = ROOT / ".local" / "bench" / "batch_cpu.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"limit_seconds": limit, "rows": rows}, indent=2))
    print(f"{'FAIL' if failed else 'PASS'}: figures in {out.relative_to(ROOT)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
