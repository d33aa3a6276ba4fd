"""The notebooks layer's support: a local stack (moto's server, no Orthanc) seeded with good
and broken objects, and papermill running each notebook against it in its own kernel.

The stack runs in the test process (its pipe and the parse handler too); the notebooks'
kernels reach it through ``stack.json`` like any other client. Three kinds of failure are
seeded, each with a cause that a person can fix and the redrive then clears:

* ``broken/not-dicom.dcm`` and ``broken/truncated.dcm``: bad bytes (``NOT_DICOM``,
  ``TRUNCATED``); fixed by repairing the objects in place (:meth:`Seeded.repair`);
* ``bug/*.dcm``: good objects that fail with ``INTERNAL`` while a parser bug is injected
  (:meth:`Seeded.fix_bug` removes it, as a deploy of the fix would).
"""

from __future__ import annotations

import json
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbformat

from pipeline import aws
from pipeline.dicom.samples import pydicom_files_dir
from pipeline.local.stack import LocalStack
from pipeline.ops.target import Target, resolve_target

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
#: Good objects: pydicom's bundled files of several modalities, under two prefixes.
GOOD = (
    "CT_small.dcm",
    "MR_small.dcm",
    "rtdose.dcm",
    "rtplan.dcm",
    "rtstruct.dcm",
    "JPEG2000.dcm",
    "SC_rgb_rle.dcm",
    "liver_1frame.dcm",
    "examples_palette.dcm",
    "reportsi.dcm",
)
#: The patient name of CT_small.dcm: a masked notebook must never show it.
CT_PATIENT_NAME = "CompressedSamples^CT1"


def sample(name: str) -> bytes:
    return (pydicom_files_dir() / name).read_bytes()


@dataclass
class Seeded:
    """The seeded local stack and how to fix what it failed on."""

    stack: LocalStack
    stack_file: Path
    good: dict[str, bytes] = field(default_factory=dict)
    broken: dict[str, bytes] = field(default_factory=dict)  # key -> the good bytes it should hold
    bug_keys: list[str] = field(default_factory=list)
    bug: Any = None

    @property
    def target(self) -> Target:
        return resolve_target(self.stack_file)

    def dlq_depth(self) -> int:
        attrs = aws.client("sqs").get_queue_attributes(
            QueueUrl=self.stack.info.dlq_url if self.stack.info else "",
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return int(attrs["ApproximateNumberOfMessages"]) + int(
            attrs["ApproximateNumberOfMessagesNotVisible"]
        )

    def repair(self) -> None:
        """Put the good bytes into the broken objects without a new S3 event (as a restore
        that bypasses the bucket's notifications would): only a redrive indexes them."""
        s3 = aws.client("s3")
        config = s3.get_bucket_notification_configuration(Bucket=self.stack.bucket)
        config.pop("ResponseMetadata", None)
        s3.put_bucket_notification_configuration(
            Bucket=self.stack.bucket, NotificationConfiguration={}
        )
        try:
            for key, body in self.broken.items():
                self.stack.upload(key, body)
        finally:
            s3.put_bucket_notification_configuration(
                Bucket=self.stack.bucket, NotificationConfiguration=config
            )

    def fix_bug(self) -> None:
        """Undo the injected parser bug (the fix deployed)."""
        if self.bug is not None:
            self.bug.undo()
            self.bug = None


def reset_moto(stack: LocalStack) -> None:
    """Forget every resource of the stack's moto server: its backends are this process's, so
    a later stack in the same process would otherwise find them (IAM's role, the tables)."""
    request = urllib.request.Request(f"{stack.endpoint_url}/moto-api/reset", method="POST")
    with urllib.request.urlopen(request, timeout=10) as resp:
        resp.read()


def run_notebook(name: str, out_dir: Path, **parameters: Any) -> nbformat.NotebookNode:
    """Execute ``notebooks/<name>.ipynb`` with papermill (the repository as its working
    directory); raises papermill's PapermillExecutionError on an error cell."""
    import papermill

    out = out_dir / f"{name}.ipynb"
    papermill.execute_notebook(
        str(NOTEBOOKS / f"{name}.ipynb"),
        str(out),
        parameters=parameters,
        cwd=str(ROOT),
        kernel_name="python3",
        progress_bar=False,
        execution_timeout=300,
    )
    return read(out)


def read(path: Path) -> nbformat.NotebookNode:
    """A notebook file, as nbformat's version 4."""
    nb: nbformat.NotebookNode = nbformat.read(path, as_version=4)  # type: ignore[no-untyped-call]
    return nb


def images(nb: nbformat.NotebookNode) -> int:
    """How many image outputs the executed notebook holds."""
    return sum(
        1
        for cell in nb.cells
        for output in cell.get("outputs", [])
        if any(kind.startswith("image/") for kind in output.get("data", {}))
    )


def errors(nb: nbformat.NotebookNode) -> list[str]:
    return [
        f"{o.get('ename')}: {o.get('evalue')}"
        for cell in nb.cells
        for o in cell.get("outputs", [])
        if o.get("output_type") == "error"
    ]


def text(nb: nbformat.NotebookNode) -> str:
    """Every output of the notebook as text (streams, results, HTML), for searching."""
    return json.dumps([cell.get("outputs", []) for cell in nb.cells if cell.cell_type == "code"])
