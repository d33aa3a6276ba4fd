"""Every notebook runs with papermill against a seeded local stack: no error cell, every plot
drawn; after the causes of the failures are fixed, the redrive notebook empties the DLQ and the
audit finds nothing missing, failed or orphaned. The committed notebooks carry no outputs."""

from __future__ import annotations

from pathlib import Path

import nbformat
from notebook_support import (
    CT_PATIENT_NAME,
    NOTEBOOKS,
    Seeded,
    errors,
    images,
    read,
    run_notebook,
    text,
)

from pipeline.ops.audit import audit
from pipeline.ops.redrive import list_dlq

NAMES = ("metadata_analysis", "ingestion_audit", "dlq_redrive")


def test_the_committed_notebooks_have_no_outputs_and_a_parameters_cell() -> None:
    assert sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) == sorted(NAMES)
    for name in NAMES:
        nb = read(NOTEBOOKS / f"{name}.ipynb")
        nbformat.validate(nb)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(not c.outputs and c.execution_count is None for c in code), name
        tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, name
        source = tagged[0].source
        assert 'stack_file = ".local/stack.json"' in source and "aws_stack = None" in source


def test_metadata_analysis_masks_patients_unless_asked(seeded: Seeded, tmp_path: Path) -> None:
    # Given the seeded stack, When the analysis runs with its defaults
    nb = run_notebook(
        "metadata_analysis",
        tmp_path,
        stack_file=str(seeded.stack_file),
        export_path=str(tmp_path / "records.parquet"),
    )
    # Then no cell failed, its four plots are drawn, and no patient name is shown
    assert errors(nb) == []
    assert images(nb) == 4
    out = text(nb)
    assert "patient columns masked" in out and "masked-" in out
    assert CT_PATIENT_NAME not in out
    # When it is asked to show them, Then it does
    shown = run_notebook(
        "metadata_analysis",
        tmp_path,
        stack_file=str(seeded.stack_file),
        export_path=str(tmp_path / "records.parquet"),
        show_patient_columns=True,
    )
    assert errors(shown) == [] and CT_PATIENT_NAME in text(shown)


def test_ingestion_audit_shows_classes_times_latency_and_failures(
    seeded: Seeded, tmp_path: Path
) -> None:
    nb = run_notebook("ingestion_audit", tmp_path, stack_file=str(seeded.stack_file))
    assert errors(nb) == []
    assert images(nb) == 4
    out = text(nb)
    for code in ("NOT_DICOM", "TRUNCATED", "INTERNAL"):
        assert code in out, code


def test_redrive_after_the_fix_empties_the_dlq_and_the_audit_finds_nothing_wrong(
    seeded: Seeded, tmp_path: Path
) -> None:
    failing = sorted([*seeded.broken, *seeded.bug_keys])
    target = seeded.target
    target.activate()
    assert sorted(e.key or "" for e in list_dlq(target)) == failing
    # Given the default run (a dry run), Then nothing changes
    dry = run_notebook("dlq_redrive", tmp_path, stack_file=str(seeded.stack_file))
    assert errors(dry) == [] and images(dry) == 2
    assert "nothing was re-sent" in text(dry)
    assert seeded.dlq_depth() == len(failing)
    # When the causes are fixed (the bug, the bytes: no new S3 event) and the redrive runs
    seeded.fix_bug()
    seeded.repair()
    nb = run_notebook("dlq_redrive", tmp_path, stack_file=str(seeded.stack_file), dry_run=False)
    # Then the DLQ is empty and the audit accounts for every object as indexed
    assert errors(nb) == [] and images(nb) == 2
    assert seeded.dlq_depth() == 0
    seeded.stack.drain(timeout=60)
    report = audit(target)
    counts = report.counts()
    assert report.problems() == 0, report.to_json()
    assert counts["failed"] == counts["missing"] == counts["stale"] == 0, counts
    assert counts["indexed"] == len(seeded.good) + len(failing), counts
    assert f"DLQ: {len(failing)} before, 0 now; missing or orphaned: 0" in text(nb)
