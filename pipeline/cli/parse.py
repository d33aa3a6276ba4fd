"""``dicom-pipeline parse SOURCE... [--format record|dicom-json] [--stats]``.

Prints one JSON document per source on stdout, in order; a source that fails prints
``{"source", "error": {"code", "message"}}`` and the command exits 1. ``--stats`` prints
``{"source", "bytes_read", "object_size", "header_bytes"}`` lines on stderr. ``parse`` never
writes anything: a record whose JSON would be offloaded shows the ``dicom_json_s3`` URI the
pipeline would use. A SOURCE that is a directory or a malformed ``s3://`` URI is a usage error
(:func:`source_problem`, checked by ``pipeline.cli.main`` before any source is parsed).
"""

from __future__ import annotations

import argparse
import json
import os
import re
from typing import Any, TextIO
from urllib.parse import unquote, urlparse

from pipeline.errors import DicomPipelineError, InternalError

__all__ = ["register", "source_problem"]

#: ``s3://bucket/key``: a bucket and a non-empty key.
_S3_URI = re.compile(r"s3://([^/]+)/(.+)", re.DOTALL)


def register(subparsers: Any) -> None:
    """Add ``parse`` to the CLI's subparsers."""
    p = subparsers.add_parser("parse", help="parse DICOM headers into records or DICOM JSON")
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="a file path or s3://bucket/key")
    p.add_argument("--format", choices=("record", "dicom-json"), default="record")
    p.add_argument("--stats", action="store_true", help="print read statistics on stderr")
    p.set_defaults(func=_cmd_parse)


def source_problem(source: str) -> str | None:
    """Why ``source`` cannot be a SOURCE of ``parse`` (a usage error), or None.

    A malformed ``s3://`` URI and a directory are usage errors; a path that does not exist is
    not (it is that source's ``OBJECT_NOT_FOUND`` line).

    Examples
    --------
    >>> source_problem("s3:/x")
    "'s3:/x' is not an s3://bucket/key URI"
    >>> source_problem("s3://bucket/key.dcm") is None
    True
    """
    if source.lower().startswith("s3:"):
        match = _S3_URI.fullmatch(source)
        if not match or not unquote(match[2]).strip("/"):
            return f"{source!r} is not an s3://bucket/key URI"
        return None
    path = unquote(urlparse(source).path) if source.startswith("file://") else source
    if os.path.isdir(path):
        return f"{source!r} is a directory: give the files in it"
    return None


def _cmd_parse(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from pipeline.dicom.parse import parse
    from pipeline.dicom.record import record_to_json

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
