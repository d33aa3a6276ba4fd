"""``make notebooks``: the operational notebooks executed against a stack, as HTML.

Which stack they read:

* a deployed stack, when one is named (``AWS_STACK=<name>``: its outputs);
* else the local stack ``stack.json`` names, when it is running;
* else a local stack started here (with Orthanc where its packages are installed), seeded with
  the sample set as the demo seeds it (through Orthanc, plus what Orthanc refuses and a few
  broken objects straight into S3, an overwrite and a delete), drained, and stopped once the
  notebooks have run. Its ``stack.json`` is written into the output folder (mode 0600) and
  removed with it.

Each notebook runs with papermill in its own kernel into ``<out>/<name>.ipynb`` and is
converted to ``<out>/<name>.html``. The committed notebooks are never written.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["NOTEBOOKS", "main", "run_notebooks"]

#: The notebooks, in the order they run (the analysis exports first, the redrive reads last).
NOTEBOOKS = ("metadata_analysis", "ingestion_audit", "dlq_redrive")
_NOTEBOOK_DIR = Path("notebooks")


class NotebooksError(Exception):
    """The notebooks could not be run (one line for the user)."""


@contextmanager
def _stack_for_notebooks(stack_file: Path, out: Path, orthanc: bool, say: Any) -> Iterator[Path]:
    """The stack.json the notebooks read: a running local stack's, or that of one started and
    seeded here for the duration."""
    from pipeline.ops.target import TargetError, resolve_target

    try:
        resolve_target(stack_file)
    except TargetError as exc:
        say(f"no running local stack ({exc}): starting one for the notebooks")
    else:
        say(f"using the running local stack of {stack_file}")
        yield stack_file
        return

    from pipeline.dicom.samples import sample_files
    from pipeline.local.demo import QUIET_HANDLER, Progress, seed, start_stack, wait_for_drain

    progress = Progress()
    stack = start_stack(progress, orthanc, QUIET_HANDLER)
    own = out / "stack.json"
    try:
        seeded = seed(stack, sample_files(include_charsets=True), progress)
        expected = len(stack.notifications)
        with progress.phase(f"indexing {expected} records", total=expected):
            wait_for_drain(stack, progress, expected, timeout=300)
        say(f"seeded: {seeded.describe()}")
        stack.write_info(own)
        yield own
    finally:
        own.unlink(missing_ok=True)
        stack.stop()


def _execute(name: str, out: Path, parameters: dict[str, Any]) -> Path:
    """Run one notebook with papermill into ``out``; returns the HTML file."""
    import nbformat
    import papermill
    from nbconvert import HTMLExporter

    executed = out / f"{name}.ipynb"
    papermill.execute_notebook(
        str(_NOTEBOOK_DIR / f"{name}.ipynb"),
        str(executed),
        parameters=parameters,
        cwd=".",
        kernel_name="python3",
        progress_bar=False,
        execution_timeout=600,
    )
    nb = nbformat.read(executed, as_version=4)  # type: ignore[no-untyped-call]
    body, _ = HTMLExporter().from_notebook_node(nb)  # type: ignore[no-untyped-call]
    html = out / f"{name}.html"
    html.write_text(body, encoding="utf-8")
    for path in (executed, html):
        path.chmod(0o600)  # outputs may show keys and, when asked, patient columns
    return html


def run_notebooks(
    out: Path,
    *,
    stack_file: Path,
    aws_stack: str | None = None,
    orthanc: bool = True,
    say: Any = print,
) -> list[Path]:
    """Execute every notebook against a stack (see the module); returns the HTML files.

    Raises
    ------
    NotebooksError
        A notebook failed (papermill's error, in one line), or a deployed stack is named and
        cannot be read.
    """
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    html: list[Path] = []

    def run_all(parameters: dict[str, Any]) -> None:
        from papermill.exceptions import PapermillExecutionError

        for name in NOTEBOOKS:
            say(f"== {name}")
            try:
                html.append(_execute(name, out, parameters))
            except PapermillExecutionError as exc:
                raise NotebooksError(
                    f"{name} failed in cell {exc.exec_count}: {exc.ename}: {exc.evalue}; "
                    f"see {out / (name + '.ipynb')}"
                ) from None

    if aws_stack:
        from pipeline.ops.target import TargetError, resolve_target

        try:
            resolve_target(aws_stack=aws_stack)
        except TargetError as exc:
            raise NotebooksError(str(exc)) from None
        run_all({"aws_stack": aws_stack})
        return html
    with _stack_for_notebooks(stack_file, out, orthanc, say) as file:
        run_all({"stack_file": str(file)})
    return html


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m pipeline.local.notebooks [--out DIR] [--stack FILE] [--aws-stack NAME]``."""
    parser = argparse.ArgumentParser(
        prog="make notebooks", description="Execute the notebooks into HTML."
    )
    parser.add_argument("--out", default=".local/notebooks", help="where the HTML goes")
    parser.add_argument("--stack", default=".local/stack.json", help="a running local stack")
    parser.add_argument("--aws-stack", default="", help="a deployed stack's name")
    parser.add_argument("--no-orthanc", dest="orthanc", action="store_false")
    args = parser.parse_args(argv)
    try:
        files = run_notebooks(
            Path(args.out),
            stack_file=Path(args.stack),
            aws_stack=args.aws_stack or None,
            orthanc=args.orthanc,
        )
    except NotebooksError as exc:
        print(f"make notebooks: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("make notebooks: interrupted", file=sys.stderr)
        return 130
    print(f"== executed notebooks: {', '.join(str(f) for f in files)}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
