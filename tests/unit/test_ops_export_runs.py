"""export to S3 for Athena: each run under a prefix of its own, then the Glue table switched.

Writing over the table's prefix in place let a query see a mix of two exports (or the same
rows twice); these tests hold the run layout, the order (every part uploaded before the
switch), the table kept as it was but for its location, and ``--keep``. moto's S3, DynamoDB
and Glue, in process; the records are pydicom's bundled files parsed by the pipeline.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from cdk.components.analytics import table_columns
from pipeline import aws
from pipeline.cli import main
from pipeline.dicom.parse import parse
from pipeline.names import EXPORT_EMPTY_PREFIX, EXPORT_PREFIX, EXPORT_TABLE
from pipeline.ops.export import export, prune_runs, run_prefix, switch_table
from pipeline.ops.target import Target
from pipeline.workflow.batch import to_dynamodb_json
from pipeline.workflow.table import local_table_definition

TABLE = "metadata"
BUCKET = "exports"
DATABASE = "dicom_pipeline_dev"
GLUE_TABLE = f"{DATABASE}.{EXPORT_TABLE}"
BASE = f"s3://{BUCKET}/{EXPORT_PREFIX}"
FILES = ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm")
PARQUET = "org.apache.hadoop.hive.ql.io.parquet"


@pytest.fixture
def stack(aws_env: None, test_file: Callable[[str], Path]) -> Iterator[list[str]]:
    """The metadata table with FILES' records, the exports bucket, and the Glue table as the
    stack creates it (location: the empty folder); yields the records' keys."""
    from moto import mock_aws

    with mock_aws():
        ddb = aws.client("dynamodb")
        ddb.create_table(**local_table_definition(TABLE))
        keys = []
        for i, name in enumerate(FILES):
            record = parse(str(test_file(name))).record(
                s3_key=f"images/{name}",
                bucket="images",
                etag="0" * 32,
                event_time=f"2026-01-02T03:0{i}:00.000Z",
                indexed_at=f"2026-01-02T03:0{i}:01.000Z",
            )
            ddb.put_item(TableName=TABLE, Item=to_dynamodb_json(record.item))
            keys.append(f"images/{name}")
        aws.client("s3").create_bucket(Bucket=BUCKET)
        glue = aws.client("glue")
        glue.create_database(DatabaseInput={"Name": DATABASE})
        glue.create_table(DatabaseName=DATABASE, TableInput=_stack_table_input())
        yield keys


def _stack_table_input() -> dict[str, Any]:
    return {
        "Name": EXPORT_TABLE,
        "Description": "dicom-pipeline export: one row per record, tombstones included",
        "TableType": "EXTERNAL_TABLE",
        "Parameters": {"classification": "parquet", "EXTERNAL": "TRUE"},
        "StorageDescriptor": {
            "Location": f"s3://{BUCKET}/{EXPORT_EMPTY_PREFIX}",
            "InputFormat": f"{PARQUET}.MapredParquetInputFormat",
            "OutputFormat": f"{PARQUET}.MapredParquetOutputFormat",
            "SerdeInfo": {"SerializationLibrary": f"{PARQUET}.serde.ParquetHiveSerDe"},
            "Columns": [{"Name": n, "Type": t} for n, t in table_columns()],
        },
    }


def _target() -> Target:
    return Target(bucket="images", queue_url="q", dlq_url="d", table=TABLE)


def _location() -> str:
    table = aws.client("glue").get_table(DatabaseName=DATABASE, Name=EXPORT_TABLE)["Table"]
    return str(table["StorageDescriptor"]["Location"])


def _objects(prefix: str = EXPORT_PREFIX) -> list[str]:
    pages = aws.client("s3").get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def _rows_at(location: str, tmp_path: Path) -> list[str]:
    """The s3_key of every row under ``location``, read as Athena would (every file below)."""
    prefix = location.removeprefix(f"s3://{BUCKET}/")
    keys: list[str] = []
    for i, key in enumerate(_objects(prefix)):
        local = tmp_path / f"read-{len(list(tmp_path.iterdir()))}-{i}.parquet"
        aws.client("s3").download_file(BUCKET, key, str(local))
        keys += pq.read_table(local).column("s3_key").to_pylist()
    return sorted(keys)


def test_run_prefixes_are_new_folders_under_the_base_in_time_order() -> None:
    from datetime import UTC, datetime

    # Given two runs in the same second and one a second later
    first = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    later = datetime(2026, 1, 2, 3, 4, 6, tzinfo=UTC)
    a, b, c = run_prefix("exports", first), run_prefix("exports/", first), run_prefix("", later)
    # Then each is a folder of its own, named for its UTC start, and they sort by time
    assert a.startswith("exports/run=20260102T030405.000000Z-") and a.endswith("/")
    assert a != b and c.startswith("run=20260102T030406.000000Z-")
    assert sorted([run_prefix("x/", later), run_prefix("x/", first)])[0].startswith(
        "x/run=20260102T030405.000000Z"
    )


def test_each_export_is_a_new_run_and_the_table_switches_once_it_is_complete(
    stack: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a first export, which the Glue table reads
    first = export(_target(), BASE, glue_table=GLUE_TABLE, rows_per_file=1)
    assert _location() == first.out and first.out.startswith(f"{BASE}run=")
    first_parts = _objects(first.out.removeprefix(f"s3://{BUCKET}/"))
    assert len(first_parts) == len(FILES)
    # When a second export runs, recording where the table points at every part it uploads
    # (on this process's S3 client: the target is already active)
    monkeypatch.setattr(Target, "activate", lambda self: None)
    seen: list[str] = []
    s3 = aws.client("s3")
    s3.meta.events.register("before-call.s3.PutObject", lambda **_: seen.append(_location()))
    try:
        second = export(_target(), BASE, glue_table=GLUE_TABLE, rows_per_file=1)
    finally:
        s3.meta.events.unregister("before-call.s3.PutObject")
    # Then while it uploaded, the table read the whole first run (never a mix) ...
    assert seen and set(seen) == {first.out}
    # ... and then the second run, in a folder of its own; the first run is untouched
    assert _location() == second.out != first.out
    assert _objects(first.out.removeprefix(f"s3://{BUCKET}/")) == first_parts
    # and a reader of the table's location sees each record once
    assert _rows_at(_location(), tmp_path) == sorted(stack)
    assert second.table == GLUE_TABLE and "Glue table" in second.summary()


def test_the_switch_keeps_the_rest_of_the_table_as_it_was(stack: list[str]) -> None:
    # Given the table as the stack creates it
    glue = aws.client("glue")
    before = glue.get_table(DatabaseName=DATABASE, Name=EXPORT_TABLE)["Table"]
    # When its location is switched
    old = switch_table(GLUE_TABLE, f"{BASE}run=x/")
    after = glue.get_table(DatabaseName=DATABASE, Name=EXPORT_TABLE)["Table"]
    # Then only the location changed: columns, formats, serde, parameters, description stay
    assert old == f"s3://{BUCKET}/{EXPORT_EMPTY_PREFIX}"
    assert after["StorageDescriptor"].pop("Location") == f"{BASE}run=x/"
    before["StorageDescriptor"].pop("Location")
    for field in ("StorageDescriptor", "Parameters", "Description", "TableType", "Name"):
        assert after[field] == before[field], field


def test_keep_deletes_all_but_the_newest_runs_and_never_other_files(stack: list[str]) -> None:
    # Given three exports and an unrelated file under the base prefix
    aws.client("s3").put_object(Bucket=BUCKET, Key=f"{EXPORT_PREFIX}README", Body=b"x")
    runs = [export(_target(), BASE, glue_table=GLUE_TABLE).out for _ in range(3)]
    # When a fourth keeps two runs
    last = export(_target(), BASE, glue_table=GLUE_TABLE, keep=2)
    # Then the fourth and the third remain, the table reads the fourth, the file stays
    remaining = {key.rsplit("/", 1)[0] + "/" for key in _objects() if "/run=" in key}
    assert remaining == {
        runs[2].removeprefix(f"s3://{BUCKET}/"),
        last.out.removeprefix(f"s3://{BUCKET}/"),
    }
    assert last.pruned == tuple(runs[:2]) and _location() == last.out
    assert f"{EXPORT_PREFIX}README" in _objects()
    # and keep=1 leaves the current run alone
    assert prune_runs(BUCKET, EXPORT_PREFIX, keep=1, current=_location()[len(f"s3://{BUCKET}/") :])
    assert {k.rsplit("/", 1)[0] + "/" for k in _objects() if "/run=" in k} == {
        last.out.removeprefix(f"s3://{BUCKET}/")
    }


def _stack_file(tmp_path: Path, **outputs: str) -> Path:
    path = tmp_path / "stack.json"
    values = {"bucket": "images", "queue_url": "q", "dlq_url": "d", "table": TABLE, **outputs}
    path.write_text(json.dumps(values))
    return path


def test_the_command_switches_the_stacks_table_when_exporting_to_its_prefix(
    stack: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a target whose outputs name the export prefix and the Glue database (as a
    # deployed stack's ExportPrefix and GlueDatabase do)
    stack_file = _stack_file(tmp_path, export_prefix=BASE, glue_database=DATABASE)
    # When the command exports to that prefix without naming a table
    status = main(["export", "--out", BASE, "--stack", str(stack_file)])
    # Then it exits 0 with one line, and the stack's table reads the new run
    err = capsys.readouterr().err.splitlines()
    assert status == 0, err
    assert len(err) == 1 and f"Glue table {GLUE_TABLE} now reads it" in err[0]
    assert _location().startswith(f"{BASE}run=") and _location() in err[0]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--glue-table", "records"], "not DATABASE.TABLE"),
        (["--keep", "0"], "must be 1 or more"),
    ],
)
def test_bad_run_arguments_exit_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["export", "--out", BASE, "--stack", str(_stack_file(tmp_path)), *extra])
    assert exit_.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()[-1:]
    assert message in line


def test_run_arguments_with_a_local_out_are_refused(
    stack: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a local folder as --out, When --keep is given too
    status = main(
        [
            "export",
            "--out",
            str(tmp_path / "out"),
            "--keep",
            "2",
            "--stack",
            str(_stack_file(tmp_path)),
        ]
    )
    # Then the command refuses with one line and writes nothing
    err = capsys.readouterr().err.splitlines()
    assert status == 1 and len(err) == 1 and "s3://" in err[0]
    assert not (tmp_path / "out").exists()
