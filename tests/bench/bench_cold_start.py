"""Cold start of the parse Lambda: importing its handler against ``import boto3, pydicom``.

Every new Lambda sandbox imports the handler before its first batch. The requirement (issue 13,
section 6): that import costs at most ``LIMIT`` times the CPU of ``import boto3, pydicom``,
the floor any parse handler pays. Each sample is a fresh child process that measures
``time.process_time()`` around the import and reports its peak RSS (``ru_maxrss``); rounds
interleave the two sides and the figures are medians.

Conditions, side by side in one run:

* ``lambda``: like the deployed function. Lambda's environment variables are set
  (``LAMBDA_TASK_ROOT``, ``AWS_LAMBDA_FUNCTION_NAME``, ``AWS_REGION``: inside Lambda the
  X-Ray SDK uses its local sampler instead of building a botocore client for centralized
  sampling); every module installed here that neither the bundle nor the Lambda runtime has
  is blocked (numpy, PIL, requests...: pydicom imports them when it finds them); and the
  bundle's packages (the project's runtime pins and what they require, minus
  ``Lambda.RUNTIME_PROVIDED``, plus ``pipeline`` and ``lambdas``) are copied without bytecode
  ahead of the venv: the bundle is installed with ``--no-compile``, its sources are copied
  without ``__pycache__`` and ``/var/task`` is read-only, so Lambda compiles them at every
  cold start. boto3, botocore and the standard library keep their bytecode, as in the
  runtime. A PASS/FAIL condition.
* ``lambda-bytecode``: the same, with every module read from cached bytecode (a fresh
  ``PYTHONPYCACHEPREFIX``, filled by one discarded round): what a bundle shipping bytecode
  for its Python would give. Also PASS/FAIL.
* ``dev-tree`` (information): Lambda's variables and the same modules blocked, but the venv
  as ``make`` runs it: third-party packages from the venv's bytecode, this tree's modules
  compiled at every import (``PYTHONDONTWRITEBYTECODE``): a mix Lambda never sees.
* ``dev-venv`` (information): the developer's venv as is (numpy imported by pydicom, no
  Lambda variables: the X-Ray SDK builds its sampling client).
* ``parse-cli`` (information): what ``dicom-pipeline parse`` imports (``pipeline.cli`` and
  the parser) against the same base, in the developer's venv.

Prints a table and PASS/FAIL; exits 1 when a gated condition exceeds ``LIMIT``. Figures go
to ``.local/bench/cold_start.json``. Run with ``make bench`` (or this file, ``--rounds N``).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cdk.constants import Lambda  # noqa: E402

#: The handler's import CPU may be at most this many times ``import boto3, pydicom``'s.
LIMIT = 1.5
OUT = ROOT / ".local" / "bench" / "cold_start.json"

#: The child: blocks the top-level modules named in its second argument (comma-separated),
#: times the import, prints CPU seconds, peak RSS (MiB) and the files of its modules.
CHILD = """
import resource, sys, time
blocked = set(sys.argv[2].split(",")) - {""}
if blocked:
    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in blocked:
                raise ModuleNotFoundError(name)
    sys.meta_path.insert(0, Block())
what = sys.argv[1]
start = time.process_time()
if what == "base":
    import boto3, pydicom
elif what == "handler":
    import lambdas.parse_batch
else:
    import pipeline.cli, pipeline.dicom.parse, pipeline.dicom.record
cpu = time.process_time() - start
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
files = [getattr(m, "__file__", None) or "" for m in list(sys.modules.values())]
print(repr((cpu, rss, sorted(set(files)))))
"""

SIDES = {"handler": "handler", "parse-cli": "cli"}


def _lambda_env(task_root: Path) -> dict[str, str]:
    return {
        "LAMBDA_TASK_ROOT": str(task_root),
        "AWS_LAMBDA_FUNCTION_NAME": "dicom-pipeline-parse",
        "AWS_REGION": "us-east-1",
    }


def _child(what: str, *, blocked: str, env: dict[str, str]) -> tuple[float, float, list[str]]:
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("POWERTOOLS_", "AWS_", "LAMBDA_", "PYTHONPYCACHEPREFIX"))
    }
    done = subprocess.run(
        [sys.executable, "-c", CHILD, what, blocked],
        env={**base, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": str(ROOT), **env},
        cwd=tempfile.gettempdir(),
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    if done.returncode:
        raise SystemExit(f"bench_cold_start: the {what} child failed:\n{done.stderr[-2000:]}")
    cpu, rss, files = ast.literal_eval(done.stdout.strip().splitlines()[-1])
    return float(cpu), float(rss), list(files)


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _bundle_distributions() -> set[str]:
    """The distributions the Lambda bundle holds: the project's runtime pins and what they
    require (with ``Lambda.EXTRAS``), minus what the Lambda runtime provides, as
    :func:`cdk.bundling.lambda_requirements` and pip resolve them."""
    pins = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    provided = {_canonical(n) for n in Lambda.RUNTIME_PROVIDED}
    todo = [(Requirement(p), Lambda.EXTRAS.get(_canonical(Requirement(p).name))) for p in pins]
    seen: set[str] = set()
    while todo:
        req, extra = todo.pop()
        name = _canonical(req.name)
        if name in provided or name in seen:
            continue
        seen.add(name)
        extras = set(req.extras) | ({extra} if extra else set())
        for text in metadata.distribution(name).requires or []:
            sub = Requirement(text)
            wanted = not sub.marker or any(
                sub.marker.evaluate({"extra": e}) for e in (extras or {""})
            )
            if wanted:
                todo.append((sub, None))
    return seen


def _top_levels(dist: metadata.Distribution) -> set[str]:
    """The top-level modules a distribution installs (``foo`` for ``foo/...`` or ``foo.py``)."""
    out = set()
    for file in dist.files or []:
        first = file.parts[0]
        if first.endswith((".dist-info", ".egg-info", ".pth")) or first in {"..", "__pycache__"}:
            continue
        out.add(first.split(".")[0] if first.endswith((".py", ".so")) else first)
    return out


def _lambda_view(dest: Path) -> tuple[list[str], str]:
    """Copy the bundle's packages without bytecode into ``dest``; return their top-level
    names and the comma-separated top-level names to block (installed here, not in Lambda)."""
    bundled = _bundle_distributions()
    provided = {_canonical(n) for n in Lambda.RUNTIME_PROVIDED}
    site = Path(sysconfig.get_paths()["purelib"])
    keep: set[str] = set()
    block: set[str] = set()
    for dist in metadata.distributions():
        name = _canonical(dist.metadata["Name"])
        if name == "dicom-pipeline":
            continue
        tops = _top_levels(dist)
        if name in bundled:
            keep |= tops
        elif name not in provided:
            block |= tops
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    copied = []
    for top in sorted(keep):
        for source in (site / top, site / f"{top}.py"):
            if source.is_dir():
                shutil.copytree(source, dest / top, ignore=ignore)
            elif source.is_file():
                shutil.copy2(source, dest / source.name)
            else:
                continue
            copied.append(top)
    for package in ("pipeline", "lambdas"):
        shutil.copytree(ROOT / package, dest / package, ignore=ignore)
    return copied, ",".join(sorted(block - keep))


def _conditions(work: Path) -> dict[str, dict[str, Any]]:
    bundle = work / "bundle"
    bundle.mkdir()
    shipped, blocked = _lambda_view(bundle)
    pycache = work / "pycache"
    print(f"bundle (copied without bytecode): {', '.join(shipped)}, pipeline, lambdas")
    return {
        "lambda": {
            "gate": True,
            "side": "handler",
            "blocked": blocked,
            "env": {**_lambda_env(bundle), "PYTHONPATH": str(bundle)},
        },
        "lambda-bytecode": {
            "gate": True,
            "side": "handler",
            "blocked": blocked,
            "bytecode": True,
            "env": {
                **_lambda_env(ROOT),
                "PYTHONPYCACHEPREFIX": str(pycache),
                "PYTHONDONTWRITEBYTECODE": "",
            },
        },
        "dev-tree": {
            "gate": False,
            "side": "handler",
            "blocked": blocked,
            "env": _lambda_env(ROOT),
        },
        "dev-venv": {"gate": False, "side": "handler", "blocked": "", "env": {}},
        "parse-cli": {"gate": False, "side": "parse-cli", "blocked": "", "env": {}},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (median)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="cold-start-") as tmp:
        conditions = _conditions(Path(tmp))
        # One discarded round fills the bytecode cache of ``lambda-bytecode``.
        for cond in conditions.values():
            if cond.get("bytecode"):
                for what in ("base", SIDES[cond["side"]]):
                    _child(what, blocked=cond["blocked"], env=cond["env"])
        samples: dict[str, dict[str, list[tuple[float, float]]]] = {
            name: {"base": [], "side": []} for name in conditions
        }
        for _ in range(args.rounds):
            for name, cond in conditions.items():
                for key, what in (("base", "base"), ("side", SIDES[cond["side"]])):
                    cpu, rss, _files = _child(what, blocked=cond["blocked"], env=cond["env"])
                    samples[name][key].append((cpu, rss))
    print(
        f"\ncold start: import CPU (median of {args.rounds} interleaved rounds, fresh process "
        f"each), against import boto3, pydicom; limit {LIMIT}x"
    )
    print(f"{'condition':<16} {'base s':>7} {'ours s':>7} {'ratio':>6} {'base MiB':>9} "
          f"{'ours MiB':>9} {'ratio':>6}  verdict")  # fmt: skip
    results: dict[str, Any] = {}
    failed = False
    for name, cond in conditions.items():
        base_cpu = statistics.median(c for c, _ in samples[name]["base"])
        ours_cpu = statistics.median(c for c, _ in samples[name]["side"])
        base_rss = statistics.median(r for _, r in samples[name]["base"])
        ours_rss = statistics.median(r for _, r in samples[name]["side"])
        ratio = ours_cpu / base_cpu
        verdict = "info"
        if cond["gate"]:
            verdict = "PASS" if ratio <= LIMIT else "FAIL"
            failed |= verdict == "FAIL"
        print(
            f"{name:<16} {base_cpu:7.3f} {ours_cpu:7.3f} {ratio:5.2f}x {base_rss:9.1f} "
            f"{ours_rss:9.1f} {ours_rss / base_rss:5.2f}x  {verdict}"
        )
        results[name] = {
            "side": cond["side"],
            "gated": cond["gate"],
            "base_cpu_s": base_cpu,
            "cpu_s": ours_cpu,
            "cpu_ratio": ratio,
            "base_rss_mib": base_rss,
            "rss_mib": ours_rss,
            "rss_ratio": ours_rss / base_rss,
            "verdict": verdict,
            "samples": samples[name],
        }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"limit": LIMIT, "rounds": args.rounds, **results}, indent=1))
    print(f"cold start: {'FAIL' if failed else 'PASS'} (figures in {OUT.relative_to(ROOT)})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
