"""The notebooks layer's fixture: the seeded local stack (see notebook_support)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from notebook_support import GOOD, Seeded, reset_moto, sample

from pipeline.local.stack import LocalStack


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seeded]:
    """A local stack with 10 good objects, 2 broken ones and 2 that hit a parser bug, drained."""
    from pipeline.workflow import batch

    bug = pytest.MonkeyPatch()
    real_parse = batch.parse  # type: ignore[attr-defined]

    def buggy_parse(source: Any, *args: Any, **kwargs: Any) -> Any:
        if "/bug/" in str(getattr(source, "uri", "")):
            raise RuntimeError("an injected parser bug")
        return real_parse(source, *args, **kwargs)

    bug.setattr(batch, "parse", buggy_parse)
    quiet = {"POWERTOOLS_LOG_LEVEL": "WARNING", "POWERTOOLS_METRICS_DISABLED": "true"}
    stack = LocalStack(server=True, orthanc=False, lambda_env=quiet)
    stack.start()
    try:
        state = tmp_path_factory.mktemp("stack") / "stack.json"
        stack.write_info(state)
        seeded = Seeded(stack=stack, stack_file=state, bug=bug)
        for i, name in enumerate(GOOD):
            key = f"orthanc/{'studies' if i % 2 else 'archive'}/{name}"
            seeded.good[key] = sample(name)
        ct = sample("CT_small.dcm")
        # (under Orthanc's prefix: the bucket notifies the ingest queue of nothing else)
        seeded.broken = {
            "orthanc/broken/not-dicom.dcm": sample("MR_small.dcm"),
            "orthanc/broken/truncated.dcm": ct,
        }
        seeded.bug_keys = ["orthanc/bug/rtdose.dcm", "orthanc/bug/MR_small.dcm"]
        uploads = {
            **seeded.good,
            "orthanc/broken/not-dicom.dcm": b"this is not a DICOM file\n" * 40,
            "orthanc/broken/truncated.dcm": ct[:1200],
            **{key: sample(key.rsplit("/", 1)[1]) for key in seeded.bug_keys},
        }
        for key, body in uploads.items():
            stack.upload(key, body)
        stack.drain(timeout=120)
        yield seeded
    finally:
        bug.undo()
        if stack.info is not None:
            reset_moto(stack)
        stack.stop()
