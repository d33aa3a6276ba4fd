"""``dicom-pipeline export --out s3://...`` against the local stack (moto's server), as a user
runs it: the path docs/operations.md gives for Athena."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import duckdb

from pipeline import aws
from pipeline.local.stack import LocalStack


def test_export_to_an_s3_prefix_of_the_local_stack(
    tmp_path: Path, test_file: Callable[[str], Path]
) -> None:
    # Given the local stack (moto's server) with three indexed objects
    with LocalStack(server=True) as stack:
        for name in ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm"):
            stack.upload(f"orthanc/{name}", test_file(name).read_bytes())
        stack.drain(timeout=120)
        stack_file = tmp_path / "stack.json"
        stack.write_info(stack_file)
        work = tmp_path / "work"
        work.mkdir()
        # When the command exports to s3://<bucket>/exports/ from another process
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "pipeline.cli",
                "export",
                "--out",
                f"s3://{stack.bucket}/exports/",
                "--stack",
                str(stack_file),
            ],
            cwd=work,
            env={k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        # Then it exits 0 with one line, the parts are under the prefix, nothing is local
        assert done.returncode == 0, done.stderr
        assert len(done.stderr.splitlines()) == 1 and "3 records" in done.stderr
        assert list(work.iterdir()) == []
        s3 = aws.client("s3")
        keys = [
            o["Key"] for o in s3.list_objects_v2(Bucket=stack.bucket, Prefix="exports/")["Contents"]
        ]
        assert keys and all(k.startswith("exports/run=") and "/part-" in k for k in keys)
        # and the parts read back as the table's three records
        for i, key in enumerate(keys):
            s3.download_file(stack.bucket, key, str(tmp_path / f"part-{i}.parquet"))
    glob = str(tmp_path / "part-*.parquet")
    rows = duckdb.sql(f"SELECT s3_key FROM read_parquet('{glob}') ORDER BY 1").fetchall()
    assert rows == [("orthanc/CT_small.dcm",), ("orthanc/MR_small.dcm",), ("orthanc/rtplan.dcm",)]
