"""export: the metadata table (moto, in process) as Parquet; load, DuckDB's query, mask.

The items are real records: pydicom's bundled files parsed by the pipeline's own parser, put
into a table made from the local stack's definition, plus a tombstone and an item whose JSON
was offloaded to S3.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import aws
from pipeline.cli import main
from pipeline.dicom.parse import parse
from pipeline.ops.export import (
    ALWAYS_COLUMNS,
    EXAMPLE_SQL,
    PIPELINE_COLUMNS,
    column_type,
    export,
    load,
    mask,
    patient_columns,
    per_modality,
    query,
)
from pipeline.ops.target import Target
from pipeline.workflow.batch import to_dynamodb_json
from pipeline.workflow.table import local_table_definition

ROOT = Path(__file__).resolve().parents[2]
TABLE = "metadata"
FILES = (
    "CT_small.dcm",
    "MR_small.dcm",
    "rtdose.dcm",
    "JPEG2000.dcm",
    "SC_rgb_rle.dcm",
    "rtplan.dcm",
)


def _item(path: Path, key: str, minute: int) -> dict[str, Any]:
    item = (
        parse(str(path))
        .record(
            s3_key=key,
            bucket="images",
            etag="0" * 32,
            event_time=f"2026-01-02T03:{minute:02d}:00.000Z",
            indexed_at=f"2026-01-02T03:{minute:02d}:01.500Z",
        )
        .item
    )
    item.pop("dicom_json_s3", None)
    return item


@pytest.fixture
def table(aws_env: None, test_file: Callable[[str], Path]) -> Iterator[list[dict[str, Any]]]:
    """A moto table holding the records of FILES, a tombstone and an offloaded record."""
    from moto import mock_aws

    with mock_aws():
        ddb = aws.client("dynamodb")
        ddb.create_table(**local_table_definition(TABLE))
        items = [_item(test_file(name), f"images/{name}", i) for i, name in enumerate(FILES)]
        offloaded = _item(test_file("CT_small.dcm"), "images/offloaded.dcm", 30)
        offloaded.pop("dicom_json_gz")
        offloaded["dicom_json_s3"] = "s3://images/dicom-json/images/offloaded.dcm/1.json.gz"
        tombstone = {
            "s3_key": "images/gone.dcm",
            "status": "deleted",
            "indexed_at": "2026-01-02T04:00:00.000Z",
            "expires_at": Decimal(1_800_000_000),
        }
        items += [offloaded, tombstone]
        for item in items:
            ddb.put_item(TableName=TABLE, Item=to_dynamodb_json(item))
        yield items


def _target() -> Target:
    return Target(bucket="images", queue_url="q", dlq_url="d", table=TABLE)


def test_one_row_per_item_flat_typed_columns_without_the_gzip_header(
    table: list[dict[str, Any]], tmp_path: Path
) -> None:
    # Given the table, When it is exported to one file
    seen: list[int] = []
    result = export(_target(), tmp_path / "records.parquet", progress=seen.append, segments=3)
    # Then there is one file, one row per item, in key order, and progress counted them all
    assert result.files == (str(tmp_path / "records.parquet"),)
    assert result.rows == len(table) == sum(seen)
    parquet = pq.read_table(result.out)
    keys = parquet.column("s3_key").to_pylist()
    assert keys == sorted(item["s3_key"] for item in table)
    # the header itself stays out; the URI of an offloaded one and every attribute stay in
    names = parquet.column_names
    assert "dicom_json_gz" not in names and "dicom_json_s3" in names
    every = ({k for item in table for k in item} | set(ALWAYS_COLUMNS)) - {"dicom_json_gz"}
    assert set(names) == every == set(result.columns)
    first = [c for c in PIPELINE_COLUMNS if c in every]
    assert names[: len(first)] == first
    assert names[len(first) :] == sorted(set(names) - set(first))
    # and each column's type follows from its name
    schema = parquet.schema
    assert schema.field("Rows").type == pa.int64()
    assert schema.field("size").type == pa.int64()
    assert schema.field("SliceThickness").type == pa.float64()
    assert schema.field("PixelSpacing").type == pa.list_(pa.string())
    assert schema.field("ImageType").type == pa.list_(pa.string())
    assert schema.field("StudyDate").type == pa.string()
    assert schema.field("indexed_at").type == pa.timestamp("ms", tz="UTC")
    ct = parquet.filter(pa.compute.equal(parquet.column("s3_key"), "images/CT_small.dcm"))
    row = ct.to_pylist()[0]
    source = next(item for item in table if item["s3_key"] == "images/CT_small.dcm")
    assert row["Rows"] == int(source["Rows"])
    assert row["PixelSpacing"] == [str(v) for v in source["PixelSpacing"]]
    assert row["SliceThickness"] == float(source["SliceThickness"])
    assert row["PatientName"] == source["PatientName"]
    assert row["indexed_at"].isoformat() == "2026-01-02T03:00:01.500000+00:00"
    tomb = parquet.filter(pa.compute.equal(parquet.column("status"), "deleted")).to_pylist()[0]
    assert tomb["expires_at"] == 1_800_000_000 and tomb["Rows"] is None


def test_a_folder_export_is_part_files_that_read_as_the_same_table(
    table: list[dict[str, Any]], tmp_path: Path
) -> None:
    # Given an earlier export's stale part in the folder
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "part-999-0000.parquet").write_bytes(b"stale")
    # When the table is exported to the folder with small parts
    result = export(_target(), folder, segments=2, rows_per_file=2)
    # Then the rows are spread over several parts, the stale one is gone
    assert len(result.files) >= 3
    assert [str(p) for p in sorted(folder.iterdir())] == list(result.files)
    assert sum(pq.read_metadata(f).num_rows for f in result.files) == len(table)
    # and load() reads them as the single-file export reads
    single = export(_target(), tmp_path / "one.parquet", segments=1)
    a = load(folder).sort_values("s3_key").reset_index(drop=True)
    b = load(single.out)
    assert list(a.columns) == list(b.columns)
    pd.testing.assert_frame_equal(
        a.drop(columns=["PixelSpacing", "ImageType"]), b.drop(columns=["PixelSpacing", "ImageType"])
    )


def test_the_documented_sql_runs_on_duckdb_and_agrees_with_pandas(
    table: list[dict[str, Any]], tmp_path: Path
) -> None:
    # Given an export (a file, and the same as a folder)
    one = export(_target(), tmp_path / "records.parquet").out
    folder = export(_target(), tmp_path / "parts", rows_per_file=3).out
    # When the documented SQL runs on each
    by_file, by_folder = query(one, EXAMPLE_SQL), query(folder, EXAMPLE_SQL)
    # Then both answer the same: studies, series and instances per modality of indexed rows
    pd.testing.assert_frame_equal(by_file, by_folder)
    assert list(by_file.columns) == ["Modality", "studies", "series", "instances"]
    assert by_file["instances"].sum() == len(table) - 1  # the tombstone is not counted
    expected = per_modality(load(one))
    got = by_file.set_index("Modality")
    for modality, row in expected.iterrows():
        assert got.loc[modality, "instances"] == row["instances"], modality
        assert got.loc[modality, "studies"] == row["studies"], modality
    # And docs/operations.md shows exactly this SQL
    docs = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    assert EXAMPLE_SQL in docs


def test_an_s3_export_writes_a_new_run_and_leaves_what_was_there(
    table: list[dict[str, Any]], tmp_path: Path
) -> None:
    # Given the exports bucket with an earlier export's part, a sub-folder and another file
    s3 = aws.client("s3")
    s3.create_bucket(Bucket="exports")
    earlier = ["exports/README", "exports/old/part-0.parquet", "exports/part-999-0000.parquet"]
    for key in earlier:
        s3.put_object(Bucket="exports", Key=key, Body=b"x")
    # When the table is exported to the prefix (as the stack's ExportPrefix names it)
    result = export(_target(), "s3://exports/exports/", rows_per_file=3)
    # Then its part files are in a new run folder under it, and nothing else was touched
    assert result.out.startswith("s3://exports/exports/run=") and result.out.endswith("/")
    run = result.out.removeprefix("s3://exports/")
    listed = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="exports")["Contents"])
    parts = sorted(u.removeprefix("s3://exports/") for u in result.files)
    assert listed == sorted([*parts, *earlier])
    assert all(p.startswith(f"{run}part-") for p in parts) and len(parts) >= 3
    for i, key in enumerate(parts):
        s3.download_file("exports", key, str(tmp_path / f"part-{i}.parquet"))
    assert len(load(tmp_path)) == result.rows == len(table)
    assert result.bytes > 0 and result.table is None


def test_an_empty_table_is_an_export_with_no_rows(aws_env: None, tmp_path: Path) -> None:
    from moto import mock_aws

    with mock_aws():
        aws.client("dynamodb").create_table(**local_table_definition(TABLE))
        for out in (tmp_path / "empty.parquet", tmp_path / "empty"):
            result = export(_target(), out)
            assert result.rows == 0 and len(result.files) == 1
            assert load(out).empty
            assert query(out, "SELECT count(*) AS n FROM records")["n"].tolist() == [0]


def test_patient_columns_are_masked_with_stable_pseudonyms(
    table: list[dict[str, Any]], tmp_path: Path
) -> None:
    frame = load(export(_target(), tmp_path / "records.parquet").out)
    masked = mask(frame, salt=b"k")
    hidden = patient_columns(frame.columns)
    assert {"PatientName", "PatientID"} <= set(hidden)
    assert "PatientPosition" not in hidden
    for column in hidden:
        values = frame[column].dropna()
        shown = masked[column].dropna()
        assert len(values) == len(shown), column
        assert all(str(v).startswith("masked-") for v in shown), column
        assert not set(map(str, values)) & set(map(str, shown)), column
        # equal values, equal pseudonyms: patients can still be counted
        assert values.astype(str).nunique() == shown.nunique(), column
    others = [c for c in frame.columns if c not in hidden]
    pd.testing.assert_frame_equal(masked[others], frame[others])
    assert mask(frame, salt=b"k")["PatientID"].equals(masked["PatientID"])
    assert not mask(frame)["PatientID"].dropna().equals(masked["PatientID"].dropna())


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("s3_key", "string"),
        ("event_time", "timestamp"),
        ("header_bytes", "int"),
        ("Rows", "int"),
        ("InstanceNumber", "int"),
        ("SmallestImagePixelValue", "int"),  # "US or SS"
        ("SliceThickness", "float"),
        ("WindowCenter", "list"),
        ("ImageOrientationPatient", "list"),
        ("Modality", "string"),
        ("PatientName", "string"),
        ("StudyTime", "string"),
        ("a_later_pipeline_attribute", "string"),
    ],
)
def test_a_columns_type_follows_from_its_name(name: str, kind: str) -> None:
    assert column_type(name) == kind


def test_values_that_do_not_fit_their_column_are_null(aws_env: None, tmp_path: Path) -> None:
    from moto import mock_aws

    with mock_aws():
        aws.client("dynamodb").create_table(**local_table_definition(TABLE))
        item = {
            "s3_key": "odd.dcm",
            "Rows": [Decimal(1), Decimal(2)],  # two values of a single-valued number
            "ReferencedFrameNumber": Decimal(3),  # one value of a multi-valued one
            "StudyDescription": ["A", "B"],  # several values of single-valued text
            "FileMetaInformationVersion": Decimal(1),  # unexpected: as text
            "event_time": "not a time",
            "InstanceNumber": Decimal("1E+30"),  # beyond int64
        }
        aws.client("dynamodb").put_item(TableName=TABLE, Item=to_dynamodb_json(item))
        row = pq.read_table(export(_target(), tmp_path / "o.parquet").out).to_pylist()[0]
    assert row["Rows"] is None and row["InstanceNumber"] is None and row["event_time"] is None
    assert row["ReferencedFrameNumber"] == ["3"]
    assert row["StudyDescription"] == "A\\B"


def test_the_command_writes_the_export_and_one_summary_line(
    table: list[dict[str, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stack = tmp_path / "stack.json"
    stack.write_text(
        json.dumps({"bucket": "images", "queue_url": "q", "dlq_url": "d", "table": TABLE})
    )
    out = tmp_path / "cli.parquet"
    assert main(["export", "--out", str(out), "--stack", str(stack)]) == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("dicom-pipeline export: 8 records, ")
    assert str(out) in lines[0]
    assert len(load(out)) == len(table)


def test_the_command_without_a_target_or_with_bad_arguments_says_so_in_one_line(
    aws_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "none.json"
    assert main(["export", "--out", str(tmp_path / "x.parquet"), "--stack", str(missing)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "local up" in err[0]
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--out", "x.parquet", "--segments", "0"])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit) as exit_info:
        main(["export"])
    assert exit_info.value.code == 2


def _stack_file(tmp_path: Path) -> Path:
    stack = tmp_path / "stack.json"
    stack.write_text(
        json.dumps({"bucket": "images", "queue_url": "q", "dlq_url": "d", "table": TABLE})
    )
    return stack


def test_the_command_exports_to_an_s3_url_and_writes_nothing_locally(
    table: list[dict[str, Any]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given the exports bucket, and a working folder that must stay empty
    aws.client("s3").create_bucket(Bucket="exports")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    # When the command exports to s3://exports/exports/ (the path docs give for Athena)
    status = main(
        ["export", "--out", "s3://exports/exports/", "--stack", str(_stack_file(tmp_path))]
    )
    # Then it exits 0 with one summary line naming the URL, and the parts are in S3
    err = capsys.readouterr().err.splitlines()
    assert status == 0, err
    assert len(err) == 1 and " to s3://exports/exports/run=" in err[0]
    keys = [o["Key"] for o in aws.client("s3").list_objects_v2(Bucket="exports")["Contents"]]
    assert keys and all(k.startswith("exports/run=") and "/part-" in k for k in keys)
    # and no ./s3:/ folder (or anything else) was left behind
    assert list(work.iterdir()) == []


@pytest.mark.parametrize("out", ["", " ", ".", "./", "../work"])
def test_the_command_refuses_an_empty_or_current_folder_target(
    out: str,
    aws_env: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given a working folder
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    # When --out is empty or names the current folder
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--out", out, "--stack", str(_stack_file(tmp_path))])
    # Then it exits 2 with one line, having written nothing
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "--out" in err[0]
    assert list(work.iterdir()) == []


def test_every_part_of_a_folder_export_has_one_schema(
    table: list[dict[str, Any]], tmp_path: Path
) -> None:
    import duckdb

    # Given rows whose attributes differ (a tombstone has no DICOM columns, modalities differ)
    # When the table is exported in small parts
    result = export(_target(), tmp_path / "parts", segments=3, rows_per_file=1)
    # Then every part has the same schema, the whole export's columns
    schemas = {pq.read_schema(f) for f in result.files}
    assert len(result.files) == len(table) and len(schemas) == 1
    assert schemas.pop().names == list(result.columns)
    # and DuckDB reads the glob without union_by_name, as pandas does
    glob = str(tmp_path / "parts" / "*.parquet")
    count = duckdb.sql(f"SELECT count(*) FROM read_parquet('{glob}')").fetchall()
    assert count == [(len(table),)]
    assert len(pd.read_parquet(tmp_path / "parts")) == len(table)


def test_exported_files_are_their_owners_only(table: list[dict[str, Any]], tmp_path: Path) -> None:
    # Given a permissive umask
    import os

    old = os.umask(0o022)
    try:
        # When the table is exported to a new folder and to a file in a new folder
        folder = export(_target(), tmp_path / "new" / "parts", rows_per_file=3)
        single = export(_target(), tmp_path / "other" / "records.parquet")
    finally:
        os.umask(old)
    # Then every file is mode 0600 and the folders the export made are 0700
    for path in [*folder.files, *single.files]:
        assert Path(path).stat().st_mode & 0o777 == 0o600, path
    for made in (tmp_path / "new", tmp_path / "new" / "parts", tmp_path / "other"):
        assert made.stat().st_mode & 0o777 == 0o700, made


def test_a_file_in_the_way_of_the_target_folder_is_named_in_one_line(
    table: list[dict[str, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a plain file where the target's folder would be (like /etc/passwd/out.parquet)
    blocker = tmp_path / "passwd"
    blocker.write_text("not a folder")
    # When the command exports under it
    out = blocker / "out.parquet"
    status = main(["export", "--out", str(out), "--stack", str(_stack_file(tmp_path))])
    # Then it exits 1 with one line saying it is not a folder (not "File exists")
    err = capsys.readouterr().err.splitlines()
    assert status == 1 and len(err) == 1
    assert f"{blocker} is not a folder" in err[0] and "File exists" not in err[0]
