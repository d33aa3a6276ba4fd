"""``dicom-pipeline demo [--limit N] [--state-dir DIR] [--no-orthanc]``.

Ingests a sample set through the local stack and prints a summary
(:func:`pipeline.local.demo.run_demo`); its JSON goes to ``DIR/demo-summary.json``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, TextIO

from pipeline.cli.common import positive_int
from pipeline.errors import CommandError

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add ``demo`` to the CLI's subparsers."""
    demo = subparsers.add_parser(
        "demo", help="ingest a sample set through the local stack, summarize"
    )
    demo.add_argument(
        "--limit", type=positive_int, default=None, help="only the first N sample files"
    )
    demo.add_argument("--state-dir", default=".local", help="where the summary JSON is written")
    demo.add_argument(
        "--no-orthanc",
        dest="orthanc",
        action="store_false",
        help="send the sample set straight into S3 (without Orthanc, the default when its "
        "packages are not installed)",
    )
    demo.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from pipeline.local.demo import run_demo
    from pipeline.local.stack import PortUnavailable
    from pipeline.orthanc.local import OrthancError

    try:
        return run_demo(
            limit=args.limit,
            json_out=Path(args.state_dir) / "demo-summary.json",
            orthanc=args.orthanc,
        )
    except PortUnavailable as exc:
        raise CommandError(str(exc)) from None
    except OrthancError as exc:  # installed, but it did not start: one line, never a bug
        raise CommandError(f"{exc}; or run without Orthanc: demo --no-orthanc") from None
