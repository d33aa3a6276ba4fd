"""The ``dicom-pipeline`` command line.

``parse SOURCE... [--format record|dicom-json] [--stats]`` prints one JSON document per
source on stdout, in order; a source that fails prints ``{"source", "error": {"code",
"message"}}`` and the command exits 1. ``--stats`` prints ``{"source", "bytes_read",
"object_size", "header_bytes"}`` lines on stderr. ``parse`` never writes anything: a record
whose JSON would be offloaded shows the ``dicom_json_s3`` URI the pipeline would use.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from pipeline import __version__
from pipeline.dicom.parse import parse
from pipeline.dicom.record import record_to_json
from pipeline.errors import DicomPipelineError, InternalError

__all__ = ["main"]


def _cmd_parse(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    failed = False
    for source in args.sources:
        stats: dict[str, int] | None = None
        try:
            parsed = parse(source)
            stats = parsed.stats
            if args.format == "dicom-json":
                text = json.dumps(parsed.dicom_json, ensure_ascii=False, separators=(",", ":"))
            else:
                text = record_to_json(parsed.record().item)
        except DicomPipelineError as exc:
            failed = True
            text = json.dumps({"source": source, "error": exc.to_dict()}, ensure_ascii=False)
        except Exception as exc:  # a bug: still one coded line, never a traceback
            failed = True
            bug = InternalError(f"{type(exc).__name__} while parsing {source}")
            text = json.dumps({"source": source, "error": bug.to_dict()}, ensure_ascii=False)
        out.write(text + "\n")
        out.flush()
        if args.stats and stats is not None:
            err.write(json.dumps({"source": source, **stats}) + "\n")
    return 1 if failed else 0


def _cmd_local_up(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    import signal
    import threading

    from pipeline.local import LocalStack

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    state = Path(args.state_dir) / "stack.json"
    with LocalStack(server=True, port=args.port) as stack:
        stack.write_info(state)
        err.write(f"local stack ready at {stack.endpoint_url}; wrote {state}; Ctrl-C stops it\n")
        err.flush()
        try:
            stop.wait()
        finally:
            state.unlink(missing_ok=True)
    err.write("local stack stopped\n")
    return 0


def _cmd_demo(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from pipeline.local.demo import run_demo

    return run_demo(limit=args.limit, json_out=Path(args.state_dir) / "demo-summary.json")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``dicom-pipeline``."""
    parser = argparse.ArgumentParser(
        prog="dicom-pipeline",
        description="Index the headers of DICOM objects stored in S3.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("parse", help="parse DICOM headers into records or DICOM JSON")
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="a file path or s3://bucket/key")
    p.add_argument("--format", choices=("record", "dicom-json"), default="record")
    p.add_argument("--stats", action="store_true", help="print read statistics on stderr")
    p.set_defaults(func=_cmd_parse)

    local = sub.add_parser("local", help="the local stack (moto, the workflow, the handler)")
    local_sub = local.add_subparsers(dest="local_command", required=True)
    up = local_sub.add_parser("up", help="run the local stack in the foreground")
    up.add_argument("--port", type=int, default=0, help="moto's port on 127.0.0.1 (0: any free)")
    up.add_argument("--state-dir", default=".local", help="where stack.json is written")
    up.set_defaults(func=_cmd_local_up)

    demo = sub.add_parser("demo", help="ingest a sample set through the local stack, summarize")
    demo.add_argument("--limit", type=int, default=None, help="only the first N sample files")
    demo.add_argument("--state-dir", default=".local", help="where the summary JSON is written")
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    return int(args.func(args, sys.stdout, sys.stderr))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
