"""The load scenario of ``tests/workflow/test_load_faults.py`` with a larger count, per fault
(``make bench``): objects/s end to end, and what was lost or duplicated.

Each scenario runs :func:`load.run_load` (``tests/workflow/load.py``): a fresh local stack in
process (moto, the real ASL file and handler, the pipe driven from this thread) with the
scenario's faults at :data:`load.DEFAULT_RATES` (seeded), ``--objects`` objects uploaded to the
image bucket (one in ten broken), the queue drained, then the table, the DLQ, the executions
and the audit read with injection paused. The seconds are from the first upload until the
queue drained (wall clock, this machine), so objects/s is end to end; the ratio is to the
scenario without faults of the same run.

Columns: ``lost`` = good objects not indexed plus broken ones without their v1 DLQ message;
``dup`` = v1 DLQ messages beyond one per broken object; ``raw`` = raw S3 notifications in the
DLQ (the queue's own redrive after failed executions); ``failed`` = failed executions (with
their errors below the table); ``audit`` = what the audit found unaccounted for;
``max emul s`` = the longest execution's emulated duration (real time plus charged Retry
waits and injected timeouts). Exits 1 when anything was lost, duplicated or dead-lettered raw.

Usage: ``python tests/bench/bench_load_faults.py [--objects N] [--scenario NAME ...]``
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow"))

from load import DEFAULT_RATES, LoadResult, run_load, scenario_plan

SCENARIOS = ["none", *DEFAULT_RATES, "all"]


def row(name: str, result: LoadResult, baseline: float | None) -> dict[str, Any]:
    rate = result.objects_per_second
    return {
        "scenario": name,
        "objects": len(result.objects),
        "seconds": round(result.seconds, 1),
        "objects_per_s": round(rate, 2),
        "ratio": round(rate / baseline, 2) if baseline else None,
        "executions": len(result.executions),
        "failed": len(result.failed_executions),
        "failed_errors": sorted({str(e.error) for e in result.failed_executions}),
        "lost": result.lost,
        "duplicated": result.duplicated,
        "raw": len(result.raw_notifications),
        "audit_problems": result.report.problems(),
        "injected": dict(result.injected),
        "max_emulated_s": round(max(result.emulated.values(), default=0.0), 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--objects", type=int, default=3000, help="objects per scenario")
    parser.add_argument("--scenario", action="append", choices=SCENARIOS, help="repeatable")
    parser.add_argument("--seed", type=int, default=12)
    args = parser.parse_args(argv)
    # The stack's own warnings (failed executions, timeouts) are in the table below.
    logging.disable(logging.WARNING)
    rows: list[dict[str, Any]] = []
    baseline: float | None = None
    for name in args.scenario or SCENARIOS:
        result = run_load(scenario_plan(name), args.objects, seed=args.seed)
        if name == "none":
            baseline = result.objects_per_second
        rows.append(row(name, result, baseline))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)

    rates = ", ".join(f"{k}={v:g}" for k, v in DEFAULT_RATES.items())
    print(f"\nLoad under faults: {args.objects} objects per scenario (1 in 10 broken); {rates}")
    header = (
        f"{'scenario':<20}{'obj/s':>7}{'ratio':>7}{'seconds':>9}{'execs':>7}{'failed':>7}"
        f"{'lost':>6}{'dup':>5}{'raw':>5}{'audit':>7}{'max emul s':>12}"
    )
    print(header)
    for r in rows:
        ratio = f"{r['ratio']:.2f}" if r["ratio"] is not None else "-"
        print(
            f"{r['scenario']:<20}{r['objects_per_s']:>7.2f}{ratio:>7}{r['seconds']:>9.1f}"
            f"{r['executions']:>7}{r['failed']:>7}{r['lost']:>6}{r['duplicated']:>5}"
            f"{r['raw']:>5}{r['audit_problems']:>7}{r['max_emulated_s']:>12.1f}"
        )
    for r in rows:
        if r["failed"]:
            print(f"  {r['scenario']}: failed executions: {', '.join(r['failed_errors'])}")
    bad = [r["scenario"] for r in rows if r["lost"] or r["duplicated"] or r["raw"]]
    if bad:
        print(f"lost, duplicated or raw DLQ messages under: {', '.join(bad)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
