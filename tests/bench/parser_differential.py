"""Differential check of the parser: snapshot every output, compare two snapshots.

A parser change that should not change behaviour (a speed-up) is checked by snapshotting the
outputs before and after and comparing them::

    git stash; .venv/bin/python tests/bench/parser_differential.py snap before.jsonl; git stash pop
    .venv/bin/python tests/bench/parser_differential.py snap after.jsonl
    .venv/bin/python tests/bench/parser_differential.py diff before.jsonl after.jsonl

and the direct reader of ``pipeline.dicom.dicomjson`` is checked against pydicom's reading in the
same code (``--pydicom-only`` reads every header with pydicom; ``--budget N`` adds every file
parsed with a small element budget, so the budget runs out at every kind of place)::

    .venv/bin/python tests/bench/parser_differential.py snap ref.jsonl --pydicom-only --budget 40
    .venv/bin/python tests/bench/parser_differential.py snap new.jsonl --budget 40
    .venv/bin/python tests/bench/parser_differential.py diff ref.jsonl new.jsonl

One line per case, in a fixed order. A case is a source (a real file, or a mutated copy of one)
parsed with some :class:`~pipeline.dicom.header.ReadLimits`; its line holds the outcome exactly: the
DICOM JSON as serialised (key order included), the File Meta JSON, the record as plain JSON
(``indexed_at`` pinned; the gzip body replaced by the JSON it inflates to, plus a hash of the
gzip bytes in ``gzip_sha256``), the read statistics and the ranges fetched — or the error code
and message.

Cases:

* every file of pydicom's ``test_files`` and ``charset_files`` (globbed), with the default
  limits and with small ranges (``first_range=256``, ``block_size=128``, bulk threshold 64),
  so that reads cross block boundaries and more values are deferred;
* mutated copies of a few small files (seeded, so both snapshots see the same inputs):
  truncations, bit flips, byte rewrites and random 32-bit length fields.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import hashlib
import json
import random
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom

from pipeline.dicom.header import ReadLimits
from pipeline.dicom.parse import header_file_meta_json, parse
from pipeline.errors import DicomPipelineError

DATA = Path(pydicom.__file__).parent / "data"
SMALL_LIMITS = ReadLimits(first_range=256, block_size=128, bulk_threshold=64)
FUZZ_LIMITS = ReadLimits(max_header_bytes=1024 * 1024)
MUTATED = [
    "test_files/MR_small_implicit.dcm",
    "test_files/rtplan.dcm",
    "test_files/ExplVR_BigEndNoMeta.dcm",
    "test_files/image_dfl.dcm",
    "test_files/UN_sequence.dcm",
    "charset_files/chrH31.dcm",
    "charset_files/chrSQEncoding.dcm",
    "test_files/CT_small.dcm",
    "test_files/test-SR.dcm",
    "test_files/waveform_ecg.dcm",
    "test_files/JPEG2000.dcm",
    "test_files/nested_priv_SQ.dcm",
    "test_files/reportsi.dcm",
    "test_files/rtdose_expb_1frame.dcm",
]


class MemSource:
    """An in-memory ByteSource recording the ranges it serves."""

    def __init__(self, data: bytes, uri: str) -> None:
        self.data = data
        self.size = len(data)
        self.uri = uri
        self.ranges: list[tuple[int, int]] = []

    def read_range(self, offset: int, length: int) -> bytes:
        self.ranges.append((offset, length))
        return self.data[offset : offset + length]


def outcome(data: bytes, uri: str, limits: ReadLimits) -> dict[str, Any]:
    src = MemSource(data, uri)
    out: dict[str, Any] = {}
    try:
        parsed = parse(src, limits)
        out["json"] = json.dumps(parsed.dicom_json, ensure_ascii=False)
        out["meta"] = json.dumps(header_file_meta_json(parsed), ensure_ascii=False)
        out["stats"] = parsed.stats
        try:
            built = parsed.record(indexed_at="2000-01-01T00:00:00.000Z")
        except DicomPipelineError as exc:
            out["record_error"] = exc.to_dict()
        else:
            item = dict(built.item)
            body = item.pop("dicom_json_gz", None) or built.sidecar_body
            if body is not None:
                out["gzip_sha256"] = hashlib.sha256(body).hexdigest()
                out["gzip_json"] = gzip.decompress(body).decode("utf-8")
            out["record"] = json.dumps(
                item,
                ensure_ascii=False,
                default=lambda v: base64.b64encode(v).decode() if isinstance(v, bytes) else repr(v),
            )
            out["dropped"] = list(built.dropped)
    except DicomPipelineError as exc:
        out["error"] = exc.to_dict()
    except Exception as exc:  # a crash is an outcome too: it must not change either
        out["crash"] = type(exc).__name__
    out["ranges"] = src.ranges
    return out


def mutations(data: bytes, rng: random.Random, count: int) -> Iterator[tuple[str, bytes]]:
    n = len(data)
    step = max(1, n // 60)
    for cut in range(0, n, step):
        yield f"cut{cut}", data[:cut]
    for i in range(count):
        kind = i % 3
        buf = bytearray(data)
        if kind == 0:  # bit flips
            for _ in range(rng.randint(1, 4)):
                pos = rng.randrange(n)
                buf[pos] ^= 1 << rng.randrange(8)
        elif kind == 1:  # byte rewrites
            for _ in range(rng.randint(1, 4)):
                buf[rng.randrange(n)] = rng.randrange(256)
        else:  # a 16- or 32-bit field rewritten (lengths, VRs, tags)
            pos = rng.randrange(max(1, n - 4))
            width = rng.choice((2, 4))
            value = rng.choice((0, 0xFFFFFFFF, 0xFFFF, rng.randrange(1 << 32), rng.randrange(64)))
            buf[pos : pos + width] = (value & ((1 << (8 * width)) - 1)).to_bytes(width, "little")
        yield f"mut{i}", bytes(buf)


def budget_limits(max_elements: int) -> ReadLimits:
    """Default limits with a small element budget (``--budget``)."""
    return ReadLimits(max_elements=max_elements)


def cases(
    mutation_count: int, budgets: tuple[int, ...] = ()
) -> Iterator[tuple[str, bytes, ReadLimits]]:
    files = sorted(
        p for folder in ("test_files", "charset_files") for p in (DATA / folder).rglob("*")
    )
    for path in files:
        if not path.is_file():
            continue
        name = str(path.relative_to(DATA))
        data = path.read_bytes()
        yield name, data, ReadLimits()
        yield name + "#small", data, SMALL_LIMITS
        for budget in budgets:
            yield f"{name}#budget{budget}", data, budget_limits(budget)
    for name in MUTATED:
        data = (DATA / name).read_bytes()
        rng = random.Random(name)
        for label, mutated in mutations(data, rng, mutation_count):
            yield f"{name}#{label}", mutated, FUZZ_LIMITS


def snapshot(
    out_path: Path, mutation_count: int, budgets: tuple[int, ...] = (), pydicom_only: bool = False
) -> None:
    warnings.simplefilter("ignore")
    if pydicom_only:  # the reference: every header read by pydicom, none by the direct reader
        import pipeline.dicom.parse

        pipeline.dicom.parse.read_direct = lambda source, limits: None  # type: ignore[assignment]
    with out_path.open("w") as out:
        for name, data, limits in cases(mutation_count, budgets):
            line = {"case": name, **outcome(data, "mem://" + name, limits)}
            out.write(json.dumps(line, sort_keys=True) + "\n")


def diff(a: Path, b: Path, *, show: int = 20) -> int:
    la = a.read_text().split("\n")[:-1]
    lb = b.read_text().split("\n")[:-1]
    if len(la) != len(lb):
        print(f"different case counts: {len(la)} vs {len(lb)}")
        return 1
    bad = gzip_only = 0
    for x, y in zip(la, lb, strict=True):
        if x == y:
            continue
        dx, dy = json.loads(x), json.loads(y)
        dx.pop("gzip_sha256", None)
        dy.pop("gzip_sha256", None)
        if dx == dy:
            gzip_only += 1
            continue
        bad += 1
        if bad <= show:
            keys = sorted(k for k in set(dx) | set(dy) if dx.get(k) != dy.get(k))
            print(f"DIFF {dx['case']}: {keys}")
            for k in keys:
                print(f"   {k}: {str(dx.get(k))[:300]}")
                print(f"   {' ' * len(k)}  {str(dy.get(k))[:300]}")
    codes: dict[str, int] = {}
    for x in lb:
        d = json.loads(x)
        key = d["error"]["code"] if "error" in d else ("crash" if "crash" in d else "parsed")
        codes[key] = codes.get(key, 0) + 1
    print(
        f"{len(la)} cases; {bad} differ; {gzip_only} differ only in their gzip bytes; "
        f"outcomes: {codes}"
    )
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("snap")
    s.add_argument("out", type=Path)
    s.add_argument("--mutations", type=int, default=300, help="mutations per mutated file")
    s.add_argument(
        "--budget",
        type=int,
        action="append",
        default=[],
        help="also parse every file with this max_elements (repeatable)",
    )
    s.add_argument(
        "--pydicom-only",
        action="store_true",
        help="read every header with pydicom (the reference for the direct reader)",
    )
    d = sub.add_parser("diff")
    d.add_argument("a", type=Path)
    d.add_argument("b", type=Path)
    args = ap.parse_args(argv)
    if args.cmd == "snap":
        snapshot(args.out, args.mutations, tuple(args.budget), args.pydicom_only)
        return 0
    return diff(args.a, args.b)


if __name__ == "__main__":
    sys.exit(main())
