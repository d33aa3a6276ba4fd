"""The metadata table as Parquet: one row per item, one flat column per indexed attribute.

:func:`export` scans the table in parallel (``TotalSegments`` segments, one thread each) and
writes what it read with pyarrow; :func:`load` reads an export into pandas and :func:`query`
runs SQL over it with DuckDB, under the table name ``records``, the name the SQL in
``docs/operations.md`` (:data:`EXAMPLE_SQL`) uses locally and on Athena.

Columns
-------
Every attribute of any item becomes a column; an item without it has a null there (the
pipeline's columns, the four UIDs and ``Modality`` are always there, even in an empty export:
:data:`ALWAYS_COLUMNS`). The pipeline's columns come first (:data:`PIPELINE_COLUMNS`), then
the DICOM keywords in alphabetical order. ``dicom_json_gz`` (the gzip header) is left out;
``dicom_json_s3`` (the URI of an offloaded header) stays. A column's type follows from its
name alone, never from the values one export happens to hold, so every export (and every part
file of one) agrees with the Glue table over the export prefix:

* ``size``, ``header_bytes``, ``expires_at``: ``int64``; ``event_time``, ``indexed_at``:
  ``timestamp[ms, UTC]``; the pipeline's other columns: ``string``.
* A DICOM keyword by its data dictionary entry (pydicom's): a value multiplicity other than
  ``1`` (``ImageType``, ``PixelSpacing``, ``WindowCenter``) is a **list of strings** (numbers
  written as the record's ``Decimal`` writes them, ``"0.5"``; a single value is a one-element
  list); otherwise the integer VRs (IS, US, UL, SS, SL, SV, UV) are ``int64``, the decimal
  and floating VRs (DS, FL, FD) ``float64`` (``double``: what pandas and Athena compute with;
  the exact text stays in the header's JSON), and every text VR (dates and times included,
  as written in the file: ``StudyDate`` ``"20240131"``) a ``string``.
* A value that does not fit its column (a second value of a single-valued number, a
  ``UV`` beyond ``int64``) is null; the record's DICOM JSON still holds it. Several values of a
  single-valued text attribute are joined with ``\\``, as DICOM writes them.

Files
-----
``out`` ending in ``.parquet`` is one file, written once the scan is done (the rows are held
as Arrow tables meanwhile: about the size of the file, uncompressed). Any other ``out`` is a
folder of part files ``part-<segment>-<n>.parquet`` of at most ``rows_per_file`` rows each,
written as each segment reads them, so memory stays bounded however large the table: that is
the form for a large table and for the Athena prefix. All part files of one export share one
schema (once the scan is done, a part that lacks some of the export's columns is rewritten with
them, null), so ``read_parquet('dir/*.parquet')`` reads the folder in DuckDB and pandas without
``union_by_name``. A new export into a folder replaces its part files.

The files hold PHI: each is created readable by its owner only (mode 0600), like
``stack.json``, and a folder the export creates is its owner's only (0700).

An ``s3://bucket/prefix/`` ``out`` is the base of runs in S3: each export is written in a
temporary folder, then uploaded under a prefix of its own,
``<prefix>run=<UTC time>-<random>/`` (:func:`run_prefix`), and never over an earlier one, so a
reader never sees a mix of two exports. With ``glue_table`` (``DATABASE.TABLE``, the stack's
``records`` table over ``ExportPrefix``), once every part is uploaded the table's location is
switched to the new run (:func:`switch_table`: ``glue:GetTable`` then ``glue:UpdateTable``
with the rest of the table as it was); a query that started before reads the old run to the
end. Earlier runs stay until ``keep`` says otherwise (:func:`prune_runs`).
"""

from __future__ import annotations

import hashlib
import math
import re
import secrets
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

    from pipeline.ops.target import Target

__all__ = [
    "ALWAYS_COLUMNS",
    "EXAMPLE_SQL",
    "PATIENT_COLUMNS",
    "PIPELINE_COLUMNS",
    "ExportResult",
    "acquisition_months",
    "column_type",
    "export",
    "indexed",
    "latency",
    "load",
    "manufacturers",
    "mask",
    "overview",
    "patient_columns",
    "per_modality",
    "plot",
    "prune_runs",
    "query",
    "run_prefix",
    "sizes",
    "switch_table",
    "timeline",
]

#: The pipeline's columns, in the order they come first, with their kinds (see the module).
PIPELINE_COLUMNS: dict[str, str] = {
    "s3_key": "string",
    "bucket": "string",
    "status": "string",
    "etag": "string",
    "version_id": "string",
    "sequencer": "string",
    "event_order": "string",
    "event_time": "timestamp",
    "indexed_at": "timestamp",
    "size": "int",
    "header_bytes": "int",
    "parser_version": "string",
    "orthanc_instance_id": "string",
    "expires_at": "int",
    "dicom_json_s3": "string",
}
#: Columns every export (and every part file) has, even when no item has the attribute: the
#: pipeline's, the UIDs and Modality (what :data:`EXAMPLE_SQL` and the summaries read).
ALWAYS_COLUMNS: tuple[str, ...] = (
    *PIPELINE_COLUMNS,
    "Modality",
    "SOPClassUID",
    "SOPInstanceUID",
    "SeriesInstanceUID",
    "StudyInstanceUID",
)
#: Attributes never exported (the header itself: it is in the table, or in S3).
_DROPPED = frozenset({"dicom_json_gz"})

#: Patient-identifying attributes (PS3.15 Annex E's patient attributes that a record can
#: flatten), masked by :func:`mask`; every other ``Patient*`` column is masked too, except
#: :data:`_NOT_IDENTIFYING` (the patient's position on the table).
PATIENT_COLUMNS: tuple[str, ...] = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "TypeOfPatientID",
    "OtherPatientIDs",
    "OtherPatientNames",
    "PatientBirthName",
    "PatientMotherBirthName",
    "PatientBirthDate",
    "PatientBirthTime",
    "PatientAge",
    "PatientSex",
    "PatientSize",
    "PatientWeight",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "PatientTelecomInformation",
    "PatientComments",
    "PatientReligiousPreference",
    "PatientState",
    "PatientInsurancePlanCodeSequence",
    "EthnicGroup",
    "Occupation",
    "MedicalRecordLocator",
    "MilitaryRank",
    "BranchOfService",
    "CountryOfResidence",
    "RegionOfResidence",
    "ResponsiblePerson",
    "ResponsibleOrganization",
    "AdditionalPatientHistory",
    "PregnancyStatus",
    "LastMenstrualDate",
    "SmokingStatus",
    "MedicalAlerts",
    "Allergies",
)
_NOT_IDENTIFYING = frozenset({"PatientPosition", "PatientOrientation"})

#: One query that runs, as written, on DuckDB (:func:`query`) and on Athena (the Glue table
#: ``records`` over the export prefix): studies, series and instances per modality. Unquoted
#: identifiers: both engines match them case-insensitively.
EXAMPLE_SQL = """\
SELECT Modality,
       count(DISTINCT StudyInstanceUID) AS studies,
       count(DISTINCT SeriesInstanceUID) AS series,
       count(*) AS instances
FROM records
WHERE status = 'indexed'
GROUP BY Modality
ORDER BY instances DESC, Modality"""

_S3_URI = re.compile(r"s3://([^/]+)/?(.*)", re.DOTALL)
#: Each S3 export's folder under the base prefix: ``run=<UTC time>-<random>/``.
RUN_MARK = "run="
#: Rows converted to Arrow at a time (bounds the Python objects alive per segment).
_BATCH_ROWS = 5000
_INT64 = (-(2**63), 2**63 - 1)
_INT_VRS = frozenset({"IS", "US", "UL", "SS", "SL", "SV", "UV"})
_FLOAT_VRS = frozenset({"DS", "FL", "FD"})


# -- column types ---------------------------------------------------------------------------


@lru_cache(maxsize=4096)
def column_type(name: str) -> str:
    """The kind of a column: ``string``, ``int``, ``float``, ``timestamp`` or ``list``.

    Examples
    --------
    >>> column_type("Rows"), column_type("SliceThickness"), column_type("PixelSpacing")
    ('int', 'float', 'list')
    >>> column_type("StudyDate"), column_type("indexed_at")
    ('string', 'timestamp')
    """
    if name in PIPELINE_COLUMNS:
        return PIPELINE_COLUMNS[name]
    from pydicom.datadict import dictionary_VM, dictionary_VR, tag_for_keyword

    tag = tag_for_keyword(name)
    if tag is None:
        return "string"  # not a keyword: an attribute a later schema adds, as text
    if dictionary_VM(tag).strip() != "1":
        return "list"
    vrs = set(dictionary_VR(tag).replace(" ", "").split("or"))
    if vrs <= _INT_VRS:
        return "int"
    if vrs <= _INT_VRS | _FLOAT_VRS:
        return "float"
    return "string"


def _arrow_type(kind: str) -> pa.DataType:
    import pyarrow as pa

    return {
        "string": pa.string(),
        "int": pa.int64(),
        "float": pa.float64(),
        "timestamp": pa.timestamp("ms", tz="UTC"),
        "list": pa.list_(pa.string()),
    }[kind]


def _text(value: Any) -> str:
    from boto3.dynamodb.types import Binary

    if isinstance(value, Binary):
        value = bytes(value)  # type: ignore[call-overload]  # Binary defines __bytes__
    if isinstance(value, (bytes, bytearray)):
        return value.hex()  # no binary attribute is flattened; a later one would read as hex
    return str(value)


def _convert(kind: str, value: Any) -> Any:
    """``value`` (as the DynamoDB deserializer gives it) as its column's kind, or None."""
    if value is None:
        return None
    if kind == "list":
        values = value if isinstance(value, (list, set, tuple)) else [value]
        return [None if v is None else _text(v) for v in values]
    if isinstance(value, (list, set, tuple)):
        if kind != "string":
            return None  # several values of a single-valued number: the JSON keeps them
        return "\\".join("" if v is None else _text(v) for v in value)
    if kind == "int":
        if isinstance(value, Decimal) and value == value.to_integral_value():
            number = int(value)
            return number if _INT64[0] <= number <= _INT64[1] else None
        return None
    if kind == "float":
        return float(value) if isinstance(value, (Decimal, int, float)) else None
    if kind == "timestamp":
        try:
            return datetime.fromisoformat(str(value))
        except ValueError:
            return None
    return _text(value)


def _ordered(names: Iterable[str]) -> list[str]:
    names = set(names)
    first = [c for c in PIPELINE_COLUMNS if c in names]
    return first + sorted(names - set(first))


def _to_table(items: list[dict[str, Any]]) -> pa.Table:
    """Arrow table of ``items`` (deserialized DynamoDB items), one column per attribute."""
    import pyarrow as pa

    names = _ordered(({k for item in items for k in item} | set(ALWAYS_COLUMNS)) - _DROPPED)
    columns = []
    for name in names:
        kind = column_type(name)
        values = [_convert(kind, item.get(name)) for item in items]
        columns.append(pa.array(values, type=_arrow_type(kind)))
    return pa.Table.from_arrays(columns, names=names)


def _combine(tables: list[pa.Table]) -> pa.Table:
    """One table of ``tables`` (missing columns null), columns in export order, rows by key."""
    import pyarrow as pa

    if not tables:
        tables = [_to_table([])]
    table = pa.concat_tables(tables, promote_options="default")
    table = table.select(_ordered(table.column_names))
    return table.sort_by("s3_key")


# -- the scan -------------------------------------------------------------------------------


def _scan_segment(table: str, segment: int, segments: int) -> Iterator[list[dict[str, Any]]]:
    """The items of one scan segment, a page at a time, as Python values."""
    from boto3.dynamodb.types import TypeDeserializer

    from pipeline.workflow.table import scan_pages

    deserialize = TypeDeserializer().deserialize
    for page in scan_pages(table, segment=segment, segments=segments):
        yield [{k: deserialize(v) for k, v in raw.items() if k not in _DROPPED} for raw in page]


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export` wrote: ``out`` and ``files`` are paths, or ``s3://`` URIs."""

    out: str
    files: tuple[str, ...]
    rows: int
    columns: tuple[str, ...]
    segments: int
    seconds: float
    bytes: int
    #: The Glue table (``DATABASE.TABLE``) switched to this export, if any.
    table: str | None = None
    #: Earlier runs deleted (``keep``).
    pruned: tuple[str, ...] = ()

    def summary(self) -> str:
        """One line: rows, columns, files, size, time, where (and the table switched)."""
        files = "1 file" if len(self.files) == 1 else f"{len(self.files)} files"
        line = (
            f"{self.rows:,} records, {len(self.columns)} columns, {files} "
            f"({self.bytes / 1e6:.1f} MB) in {self.seconds:.1f} s to {self.out}"
        )
        if self.table:
            line += f"; Glue table {self.table} now reads it"
        if self.pruned:
            line += f"; {len(self.pruned)} earlier run(s) deleted"
        return line


def _write(table: pa.Table, path: Path) -> Path:
    """Write ``table`` to ``path`` (mode 0600: the rows hold PHI), atomically."""
    import os

    import pyarrow.parquet as pq

    partial = path.with_name(f".{path.name}.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an existing file keeps its mode through O_CREAT
    with os.fdopen(fd, "wb") as f:
        pq.write_table(table, f, compression="zstd")
    partial.replace(path)  # a reader never sees half a file
    return path


def _with_columns(table: pa.Table, names: list[str]) -> pa.Table:
    """``table`` with exactly the columns ``names`` (in that order), missing ones null."""
    import pyarrow as pa

    for name in names:
        if name not in table.column_names:
            kind = _arrow_type(column_type(name))
            table = table.append_column(name, pa.nulls(table.num_rows, type=kind))
    return table.select(names)


def _make_dirs(path: Path) -> None:
    """Create ``path`` and its missing parents, each readable by its owner only."""
    missing = []
    for parent in (path, *path.parents):
        if parent.exists():
            break
        missing.append(parent)
    for folder in reversed(missing):
        folder.mkdir(mode=0o700, exist_ok=True)
    if not path.is_dir():
        raise NotADirectoryError(f"{path} is not a folder")


class _Sink:
    """Where segments hand their rows: one file at the end, or part files as they fill."""

    def __init__(self, out: Path, rows_per_file: int) -> None:
        self.out = out
        self.single = out.suffix == ".parquet"
        self.rows_per_file = rows_per_file
        self._lock = threading.Lock()
        self.tables: list[pa.Table] = []
        self.files: list[Path] = []
        self.columns: set[str] = set()
        self.rows = 0
        _make_dirs(out.parent if self.single else out)

    def segment(self, segment: int, batches: Iterator[pa.Table]) -> None:
        import pyarrow as pa

        held: list[pa.Table] = []
        rows = chunk = 0
        for batch in batches:
            held.append(batch)
            rows += batch.num_rows
            while not self.single and rows >= self.rows_per_file:
                table = pa.concat_tables(held, promote_options="default")
                self._part(segment, chunk, [table.slice(0, self.rows_per_file)])
                rest = table.slice(self.rows_per_file)
                held, rows, chunk = [rest] if rest.num_rows else [], rest.num_rows, chunk + 1
        if held and self.single:
            with self._lock:
                self.tables.extend(held)
        elif held:
            self._part(segment, chunk, held)

    def _part(self, segment: int, chunk: int, tables: list[pa.Table]) -> None:
        table = _combine(tables)
        path = _write(table, self.out / f"part-{segment:03d}-{chunk:04d}.parquet")
        with self._lock:
            self.files.append(path)
            self.columns.update(table.column_names)
            self.rows += table.num_rows

    def finish(self) -> None:
        if self.single:
            table = _combine(self.tables)
            self.tables = []
            self.files = [_write(table, self.out)]
            self.columns = set(table.column_names)
            self.rows = table.num_rows
            return
        if not self.files:
            self._part(0, 0, [])  # an empty table is still an export: one file, no rows
        self._conform()
        for stale in set(self.out.glob("part-*.parquet")) - set(self.files):
            stale.unlink()  # an earlier export's parts: the folder is this export only
        self.files.sort()

    def _conform(self) -> None:
        """Give every part the export's columns (one schema for all), one part at a time."""
        import pyarrow.parquet as pq

        names = _ordered(self.columns)
        for path in self.files:
            if pq.read_schema(path).names != names:
                _write(_with_columns(pq.read_table(path), names), path)


def export(
    target: Target,
    out: str | Path,
    *,
    progress: Callable[[int], None] | None = None,
    segments: int = 8,
    rows_per_file: int = 250_000,
    glue_table: str | None = None,
    keep: int | None = None,
) -> ExportResult:
    """Write the target's metadata table to ``out`` as Parquet (see the module for the form).

    Parameters
    ----------
    target:
        The deployment whose table is read (:func:`pipeline.ops.target.resolve_target`);
        activated here (a local stack's endpoint).
    out:
        ``*.parquet``: one file; ``s3://bucket/prefix/``: part files under a new run prefix
        below it (:func:`run_prefix`); anything else: a folder of part files.
    progress:
        Called with the number of items each scanned page held (from the scan's threads).
    segments:
        Parallel scan segments, each read by its own thread.
    rows_per_file:
        At most this many rows per part file (folder form).
    glue_table:
        ``DATABASE.TABLE`` whose location is switched to the new run once it is uploaded
        (S3 only).
    keep:
        After the switch, delete all but the ``keep`` newest runs under the base prefix
        (S3 only; at least 1: the new run). None keeps every run.

    Examples
    --------
    >>> result = export(resolve_target(), Path(".local/export/records.parquet"))  # doctest: +SKIP
    >>> load(result.out).groupby("Modality").size()  # doctest: +SKIP
    """
    if segments < 1 or rows_per_file < 1:
        raise ValueError("segments and rows_per_file must be 1 or more")
    if keep is not None and keep < 1:
        raise ValueError("keep must be 1 or more (the new run)")
    uri = _S3_URI.fullmatch(str(out))
    if uri is None and (glue_table is not None or keep is not None):
        raise ValueError("glue_table and keep apply to an s3:// export only")
    if glue_table is not None:
        _table_name(glue_table)
    target.activate()
    started = time.monotonic()
    table = None
    pruned: list[str] = []
    if uri is None:
        sink = _scan_into(target, Path(out), progress, segments, rows_per_file)
        files = [str(f) for f in sink.files]
        size = sum(f.stat().st_size for f in sink.files)
    else:
        bucket, base = uri[1], _folder(uri[2])
        run = run_prefix(base)
        with tempfile.TemporaryDirectory(prefix="dicom-pipeline-export-") as folder:
            sink = _scan_into(target, Path(folder), progress, segments, rows_per_file)
            files, size = (
                _upload(sink.files, bucket, run),
                sum(f.stat().st_size for f in sink.files),
            )
        out = f"s3://{bucket}/{run}"
        if glue_table is not None:
            switch_table(glue_table, out)
            table = glue_table
        if keep is not None:
            pruned = prune_runs(bucket, base, keep=keep, current=run)
    return ExportResult(
        out=str(out),
        files=tuple(files),
        rows=sink.rows,
        columns=tuple(_ordered(sink.columns)),
        segments=segments,
        seconds=time.monotonic() - started,
        bytes=size,
        table=table,
        pruned=tuple(pruned),
    )


def _scan_into(
    target: Target,
    out: Path,
    progress: Callable[[int], None] | None,
    segments: int,
    rows_per_file: int,
) -> _Sink:
    """Scan the table in ``segments`` threads into a sink writing ``out``; returns it, done."""
    sink = _Sink(out, rows_per_file)

    def batches(segment: int) -> Iterator[pa.Table]:
        pending: list[dict[str, Any]] = []
        for page in _scan_segment(target.table, segment, segments):
            pending.extend(page)
            if progress is not None:
                progress(len(page))
            if len(pending) >= _BATCH_ROWS:
                yield _to_table(pending)
                pending = []
        if pending:
            yield _to_table(pending)

    with ThreadPoolExecutor(max_workers=segments, thread_name_prefix="export") as pool:
        futures = [pool.submit(sink.segment, s, batches(s)) for s in range(segments)]
        for future in futures:
            future.result()
    sink.finish()
    return sink


def _folder(prefix: str) -> str:
    """``prefix`` as a folder (ending in ``/``), or "" for the bucket's root."""
    return prefix.rstrip("/") + "/" if prefix.strip("/") else ""


def run_prefix(base: str, now: datetime | None = None) -> str:
    """A new run's folder under ``base``: ``<base>run=<UTC time, microseconds>Z-<8 hex
    digits>/``.

    Runs sort by name in the order they started (the random part only separates two runs
    started in the same microsecond, on two machines).

    Examples
    --------
    >>> from datetime import UTC, datetime
    >>> run_prefix("exports/", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))[:36]
    'exports/run=20260102T030405.000000Z-'
    """
    from datetime import UTC

    when = (now or datetime.now(UTC)).astimezone(UTC)
    return f"{_folder(base)}{RUN_MARK}{when:%Y%m%dT%H%M%S.%fZ}-{secrets.token_hex(4)}/"


def _upload(files: list[Path], bucket: str, prefix: str) -> list[str]:
    """Put the part files under ``s3://bucket/prefix`` (a new run's folder: nothing there is
    replaced or deleted); returns their URIs."""
    from pipeline import aws

    s3 = aws.client("s3")
    keys = []
    for path in files:
        key = f"{prefix}{path.name}"
        s3.upload_file(str(path), bucket, key)
        keys.append(key)
    return [f"s3://{bucket}/{key}" for key in keys]


def _table_name(glue_table: str) -> tuple[str, str]:
    database, dot, name = glue_table.partition(".")
    if not (database and dot and name) or "." in name:
        raise ValueError(f"a Glue table is DATABASE.TABLE, not {glue_table!r}")
    return database, name


def switch_table(glue_table: str, location: str) -> str:
    """Point the Glue table ``DATABASE.TABLE`` at ``location``; returns its old location.

    Reads the table (``glue:GetTable``) and writes it back (``glue:UpdateTable``) with every
    field ``TableInput`` takes as it was (columns, format, parameters, description) and only
    ``StorageDescriptor.Location`` changed.
    """
    from pipeline import aws

    database, name = _table_name(glue_table)
    glue = aws.client("glue")
    table = glue.get_table(DatabaseName=database, Name=name)["Table"]
    accepted = glue.meta.service_model.shape_for("TableInput").members
    table_input = {k: v for k, v in table.items() if k in accepted}
    descriptor = dict(table_input.get("StorageDescriptor") or {})
    old = str(descriptor.get("Location", ""))
    descriptor["Location"] = location
    table_input["StorageDescriptor"] = descriptor
    glue.update_table(DatabaseName=database, TableInput=table_input)
    return old


def prune_runs(bucket: str, base: str, *, keep: int, current: str) -> list[str]:
    """Delete every object of all but the ``keep`` newest runs under ``s3://bucket/base``
    (never ``current``, the run just written); returns the runs deleted.

    In a versioned bucket (the stack's exports bucket) a delete adds a delete marker; the
    bucket's lifecycle expires the old versions.
    """
    from pipeline import aws

    if keep < 1:
        raise ValueError("keep must be 1 or more (the new run)")
    s3 = aws.client("s3")
    base = _folder(base)
    runs = sorted(
        prefix["Prefix"]
        for page in s3.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=base + RUN_MARK, Delimiter="/"
        )
        for prefix in page.get("CommonPrefixes", [])
    )
    older = [run for run in runs if run != current]
    doomed = older[: max(0, len(older) - (keep - 1))]
    for run in doomed:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=run):
            keys = [{"Key": obj["Key"]} for obj in page.get("Contents", [])]
            if keys:
                s3.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
    return [f"s3://{bucket}/{run}" for run in doomed]


# -- reading an export ----------------------------------------------------------------------


def _files(out: str | Path) -> list[Path]:
    out = Path(out)
    if out.is_file():
        return [out]
    files = sorted(out.glob("part-*.parquet")) if out.is_dir() else []
    if not files:
        raise FileNotFoundError(f"no export at {out} (dicom-pipeline export --out {out})")
    return files


def load(out: str | Path) -> pd.DataFrame:
    """An export (a file or a folder of parts) as one pandas DataFrame.

    List columns hold arrays of strings, integer columns are pandas' nullable ``Int64``,
    timestamps are UTC, a column missing from a part is null in its rows.
    """
    import pyarrow as pa
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    files = _files(out)
    schema = pa.unify_schemas([pq.read_schema(f) for f in files])
    import pandas as pd

    table = ds.dataset([str(f) for f in files], schema=schema, format="parquet").to_table()
    # Integers stay integers where some rows are null (pandas' nullable Int64, not float64).
    integers = {pa.int64(): pd.Int64Dtype()}
    return table.select(_ordered(table.column_names)).to_pandas(types_mapper=integers.get)


def query(out: str | Path, sql: str, *, table: str = "records") -> pd.DataFrame:
    """Run ``sql`` with DuckDB over an export, which it names ``table`` (``records``).

    Examples
    --------
    >>> query(Path(".local/export/records.parquet"), EXAMPLE_SQL)  # doctest: +SKIP
      Modality  studies  series  instances
    0       CT        2       2          5
    """
    import duckdb

    con = duckdb.connect()
    try:
        relation = con.read_parquet([str(f) for f in _files(out)], union_by_name=True)
        relation.create_view(table)
        return con.execute(sql).df()
    finally:
        con.close()


# -- masking --------------------------------------------------------------------------------


def patient_columns(columns: Iterable[str]) -> list[str]:
    """The patient-identifying ones among ``columns``: :data:`PATIENT_COLUMNS` and every
    other ``Patient*`` column but the patient's position.

    Examples
    --------
    >>> patient_columns(["PatientID", "PatientPosition", "PatientSpeciesDescription", "Rows"])
    ['PatientID', 'PatientSpeciesDescription']
    """
    listed = set(PATIENT_COLUMNS)
    return [
        c for c in columns if c in listed or (c.startswith("Patient") and c not in _NOT_IDENTIFYING)
    ]


def mask(frame: pd.DataFrame, *, salt: bytes | None = None) -> pd.DataFrame:
    """A copy of ``frame`` whose patient-identifying columns hold pseudonyms.

    Each non-null value becomes ``masked-<10 hex digits>``, a keyed hash (a random key per call
    unless ``salt`` is given): equal values get equal pseudonyms within one call, so patients
    can still be counted, and nothing of the value can be read back.

    Examples
    --------
    >>> import pandas as pd
    >>> masked = mask(pd.DataFrame({"PatientID": ["P1", "P1", None], "Rows": [1, 2, 3]}))
    >>> masked["PatientID"].nunique(), masked["PatientID"].isna().sum(), list(masked["Rows"])
    (1, np.int64(1), [1, 2, 3])
    """
    key = salt if salt is not None else secrets.token_bytes(16)

    def pseudonym(value: Any) -> Any:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return None
        if not isinstance(value, str) and hasattr(value, "__iter__"):  # a list column's array
            value = "\\".join(map(str, value))
        text = str(value)
        return "masked-" + hashlib.blake2b(text.encode(), key=key, digest_size=5).hexdigest()

    masked = frame.copy()
    for column in patient_columns(frame.columns):
        masked[column] = frame[column].map(pseudonym).astype(object)
    return masked


# -- the standard summaries of the metadata_analysis notebook --------------------------------


def indexed(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of current images (``status == "indexed"``: no tombstones)."""
    return frame[frame["status"] == "indexed"]


def overview(frame: pd.DataFrame) -> pd.Series:
    """Records, tombstones, and the indexed rows' patients, studies, series and instances."""
    import pandas as pd

    rows = indexed(frame)
    return pd.Series(
        {
            "records": len(frame),
            "tombstones": int((frame["status"] == "deleted").sum()),
            "patients": _column(rows, "PatientID").nunique(),
            "studies": _column(rows, "StudyInstanceUID").nunique(),
            "series": _column(rows, "SeriesInstanceUID").nunique(),
            "instances": len(rows),
            "modalities": _column(rows, "Modality").nunique(),
            "bytes": int(_column(rows, "size").sum()),
        },
        name="count",
    )


def _column(frame: pd.DataFrame, name: str) -> pd.Series:
    import pandas as pd

    if name in frame.columns:
        return frame[name]
    return pd.Series([None] * len(frame), index=frame.index, dtype=object)


def per_modality(frame: pd.DataFrame) -> pd.DataFrame:
    """Studies, series and instances per modality (indexed rows; no modality: ``"(none)"``)."""
    rows = indexed(frame)
    by = _column(rows, "Modality").fillna("(none)").rename("Modality")
    grouped = rows.groupby(by)
    table = grouped.agg(
        studies=("StudyInstanceUID", "nunique"),
        series=("SeriesInstanceUID", "nunique"),
        instances=("s3_key", "size"),
    )
    return table.sort_values(["instances", "studies"], ascending=False)


def manufacturers(frame: pd.DataFrame, top: int = 15) -> pd.DataFrame:
    """Instances and series per manufacturer and model (indexed rows), the ``top`` most."""
    rows = indexed(frame).assign(
        Manufacturer=_column(indexed(frame), "Manufacturer").fillna("(none)"),
        ManufacturerModelName=_column(indexed(frame), "ManufacturerModelName").fillna("(none)"),
    )
    grouped = rows.groupby(["Manufacturer", "ManufacturerModelName"])
    table = grouped.agg(
        series=("SeriesInstanceUID", "nunique"), instances=("s3_key", "size")
    ).reset_index()
    return table.sort_values("instances", ascending=False).head(top).reset_index(drop=True)


def sizes(frame: pd.DataFrame) -> pd.DataFrame:
    """Object and header sizes per modality in KiB: count, total, median, largest."""
    rows = indexed(frame)
    by = _column(rows, "Modality").fillna("(none)").rename("Modality")
    kib = rows.assign(object_kib=rows["size"] / 1024, header_kib=rows["header_bytes"] / 1024)
    table = kib.groupby(by).agg(
        instances=("s3_key", "size"),
        total_kib=("object_kib", "sum"),
        median_kib=("object_kib", "median"),
        largest_kib=("object_kib", "max"),
        median_header_kib=("header_kib", "median"),
    )
    return table.sort_values("total_kib", ascending=False).round(1)


def acquisition_months(frame: pd.DataFrame) -> pd.Series:
    """Instances per month of acquisition: ``AcquisitionDate``, else ``ContentDate``, else
    ``SeriesDate``, else ``StudyDate`` (indexed rows with a valid date only)."""
    import pandas as pd

    rows = indexed(frame)
    date = pd.Series([None] * len(rows), index=rows.index, dtype=object)
    for name in ("AcquisitionDate", "ContentDate", "SeriesDate", "StudyDate"):
        date = date.fillna(_column(rows, name))
    when = pd.to_datetime(date.astype("string").str[:8], format="%Y%m%d", errors="coerce")
    months = when.dropna().dt.to_period("M")
    return months.value_counts().sort_index().rename("instances").rename_axis("month")


def _times(values: pd.Series) -> pd.Series:
    import pandas as pd

    return pd.to_datetime(values, utc=True, errors="coerce", format="ISO8601")


def timeline(frame: pd.DataFrame, when: str, by: str, freq: str = "min") -> pd.DataFrame:
    """Rows per ``freq`` (a pandas frequency) of the time column ``when`` (ISO-8601 text or
    timestamps; rows without one are left out), one column per value of ``by``.

    Examples
    --------
    >>> import pandas as pd
    >>> rows = pd.DataFrame({"failed_at": ["2026-01-01T10:00:05Z", "2026-01-01T10:00:50Z"],
    ...                      "code": ["TRUNCATED", "NOT_DICOM"]})
    >>> timeline(rows, "failed_at", "code").to_dict("records")
    [{'NOT_DICOM': 1, 'TRUNCATED': 1}]
    """
    rows = frame.assign(
        _when=_times(_column(frame, when)).dt.floor(freq),
        _by=_column(frame, by).fillna("(none)").astype(str),
    ).dropna(subset=["_when"])
    table = rows.groupby(["_when", "_by"]).size().unstack("_by", fill_value=0)
    table.index.name, table.columns.name = when, by
    return table


def latency(frame: pd.DataFrame, freq: str = "min") -> pd.DataFrame:
    """Seconds from the S3 event to the record (``event_time`` to ``indexed_at``), per
    ``freq`` of ``indexed_at``: records, median, 95th percentile and largest.

    Works on an export or on the audit's entries (``AuditReport.to_records()``); rows without
    either time are left out.
    """
    import pandas as pd

    written = _times(_column(frame, "indexed_at"))
    seconds = (written - _times(_column(frame, "event_time"))).dt.total_seconds()
    rows = pd.DataFrame({"indexed_at": written.dt.floor(freq), "seconds": seconds}).dropna()
    table = rows.groupby("indexed_at")["seconds"].agg(
        records="size",
        median_s="median",
        p95_s=lambda s: s.quantile(0.95),
        max_s="max",
    )
    return table.round(3)


def plot(table: pd.DataFrame | pd.Series, kind: str, title: str, **options: Any) -> Any:
    """A matplotlib Figure of ``table`` (``DataFrame.plot(kind=...)``); an empty table is a
    figure that says so, so a notebook always shows its plot."""
    import matplotlib.pyplot as plt
    import pandas as pd

    fig, ax = plt.subplots(figsize=options.pop("figsize", (8, 3.5)))
    if isinstance(table.index, pd.DatetimeIndex):  # time buckets as short labels
        table = table.set_axis(table.index.strftime("%Y-%m-%d %H:%M"))
    if len(table) == 0:
        ax.text(0.5, 0.5, "nothing to show", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
    else:
        table.plot(kind=kind, ax=ax, **options)
    ax.set_title(title)
    fig.tight_layout()
    return fig
