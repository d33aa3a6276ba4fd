"""What the parse Lambda tells operators: structured logs without PHI, and EMF metrics."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any
from unittest import mock

import pydicom
import pytest
from harness import Harness

import pipeline.workflow.batch
from lambdas.observability import logger as powertools_logger

#: pydicom files with patients in several scripts (charset files are found by name too).
PATIENT_FILES = ["CT_small.dcm", "MR_small.dcm", "chrRuss.dcm", "chrH31.dcm", "chrGreek.dcm"]


@pytest.fixture
def lambda_output(
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    recwarn: pytest.WarningsRecorder,
) -> Iterator[Callable[[], tuple[str, str]]]:
    """Capture what the handler emits: its Powertools log lines (at DEBUG), the standard
    loggers of ``pipeline``, ``lambdas`` and pydicom, stdout/stderr and warnings.

    Yields a function returning ``(powertools_lines, everything)``.
    """
    handler = powertools_logger.registered_handler
    assert isinstance(handler, logging.StreamHandler)
    stream = io.StringIO()
    saved_stream, saved_level = handler.setStream(stream), powertools_logger.log_level
    powertools_logger.setLevel("DEBUG")
    for name in ("pipeline", "pydicom", "lambdas"):
        caplog.set_level(logging.DEBUG, logger=name)

    def read() -> tuple[str, str]:
        out = capsys.readouterr()
        warned = [str(w.message) for w in recwarn.list]
        lines = stream.getvalue()
        return lines, "\n".join([lines, caplog.text, out.out, out.err, *warned])

    try:
        yield read
    finally:
        handler.setStream(saved_stream)
        powertools_logger.setLevel(saved_level)


def patient_values(body: bytes) -> set[str]:
    """PatientName (its groups and components) and PatientID, as text and as JSON escapes."""
    ds = pydicom.dcmread(io.BytesIO(body), stop_before_pixels=True)
    name = ds.PatientName
    values = {str(name), str(ds.PatientID)}
    for group in (name.alphabetic, name.ideographic, name.phonetic):
        if group:
            values.add(group)
            # Components too, unless so short and plain that any text could hold them
            values.update(p for p in group.split("^") if len(p) >= 4 or not p.isascii())
    return values | {json.dumps(v)[1:-1] for v in values}


def test_logs_never_hold_patient_name_or_id(
    wf: Harness,
    dicom: Callable[[str], bytes],
    lambda_output: Callable[[], tuple[str, str]],
) -> None:
    # Given files with patients in several scripts, and a truncated one that names a patient
    bodies = {f"phi/{i}.dcm": dicom(name) for i, name in enumerate(PATIENT_FILES)}
    bodies["phi/truncated.dcm"] = dicom("rtplan_truncated.dcm")
    secrets = set().union(*(patient_values(b) for b in bodies.values()))
    secrets |= {"Last^First^mid^pre", "id00001"}  # rtplan_truncated.dcm's patient
    wf.send(*(wf.created(k, wf.put(k, b)) for k, b in bodies.items()))

    # When the batch is indexed with the Lambda logging at DEBUG
    runs = wf.drain()
    assert [o["outcome"] for o in wf.outcomes(runs)].count("indexed") == len(PATIENT_FILES)

    # Then the logs carry keys, counts and codes ...
    logged, everything = lambda_output()
    lines = [json.loads(line) for line in logged.splitlines()]
    (summary,) = [line for line in lines if line["message"] == "batch planned"]
    assert summary["records"] == len(bodies)
    assert summary["counts"] == {"indexed": len(PATIENT_FILES), "failed": 1}
    assert summary["failures"] == {"TRUNCATED": 1}
    assert sorted(summary["keys"]) == sorted(bodies)
    assert summary["header_bytes_read"] > 0

    # ... and no patient's name or id anywhere: Lambda logs, standard logs, stdout, warnings
    leaked = sorted(s for s in secrets if s in everything)
    assert leaked == []


def emf_documents(stdout: str) -> list[dict[str, Any]]:
    docs = []
    for line in stdout.splitlines():
        if line.startswith("{") and '"_aws"' in line:
            docs.append(json.loads(line))
    return docs


def test_metrics_for_indexed_failed_and_skipped(
    wf: Harness, dicom: Callable[[str], bytes], capsys: pytest.CaptureFixture[str]
) -> None:
    # Given one batch holding an indexable object, a corrupt one, a foreign key and a test event
    good = wf.created("m/good.dcm", wf.put("m/good.dcm", dicom("CT_small.dcm")))
    bad = wf.created("m/bad.dcm", wf.put("m/bad.dcm", dicom("rtplan.dump")))
    foreign = wf.created("m/notes.txt", wf.put("m/notes.txt", b"hello"))
    capsys.readouterr()
    wf.send(good, bad, foreign, {"Service": "Amazon S3", "Event": "s3:TestEvent"})

    # When it is processed
    runs = wf.drain()
    assert len(runs) == 1

    # Then the Lambda printed one CloudWatch EMF document with a count per outcome, code,
    # reason and header reader, and the header bytes read and result size
    (doc,) = emf_documents(capsys.readouterr().out)
    (directive,) = doc["_aws"]["CloudWatchMetrics"]
    assert directive["Namespace"] == "DicomPipeline"
    assert directive["Dimensions"] == [["service"]]
    assert doc["service"] == "dicom-pipeline"
    units = {m["Name"]: m["Unit"] for m in directive["Metrics"]}
    assert units["HeaderBytesRead"] == "Bytes"
    counts = {name: doc[name] for name, unit in units.items() if unit == "Count"}
    assert counts == {
        "Records_indexed": [1.0],
        "Records_failed": [1.0],
        "Records_skipped": [2.0],
        "Failed_NOT_DICOM": [1.0],
        "Skipped_not_dcm_key": [1.0],
        "Skipped_test_event": [1.0],
        "Reader_direct": [1.0],
        "ItemsStaged": [0.0],
        "LargeHeaderReads": [0.0],
    }
    assert doc["HeaderBytesRead"][0] > 0
    assert units["ResultBytes"] == "Bytes" and 0 < doc["ResultBytes"][0] < 200 * 1024


def test_an_unexpected_error_logs_its_type_and_code_never_its_text(
    wf: Harness,
    dicom: Callable[[str], bytes],
    lambda_output: Callable[[], tuple[str, str]],
) -> None:
    # Given a bug in the parse path whose exception text quotes an element value
    planted = "DOE^JANE^PLANTED-PHI-7731"
    key = "phi/bug.dcm"
    record = wf.created(key, wf.put(key, dicom("CT_small.dcm")))
    bug = ValueError(f"cannot index PatientName={planted!r}")
    with mock.patch.object(pipeline.workflow.batch, "parse", side_effect=bug):
        # When the event is delivered with the Lambda logging at DEBUG
        wf.send(record)
        runs = wf.drain()

    # Then the record failed as INTERNAL, and the logs name the exception's type, the code
    # and where it was raised ...
    assert wf.outcomes(runs) == [{"key": key, "outcome": "failed", "code": "INTERNAL"}]
    _, everything = lambda_output()
    assert "unexpected error while parsing a header: ValueError (INTERNAL) at " in everything
    # ... but not its text, nor a traceback that would quote it
    assert planted not in everything
    assert "Traceback" not in everything
