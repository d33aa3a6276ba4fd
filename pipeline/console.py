"""Terminal output shared by the commands: consoles that never wrap a value in a pipe, and
labelled summary lines."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["is_tty", "plural", "print_lines", "summary_console"]

#: A console's width when its output is not a terminal: wide enough that no line folds.
PIPE_WIDTH = 240


def plural(count: int, noun: str) -> str:
    """``count`` and ``noun``, in the plural unless ``count`` is 1 (nouns that take an s).

    Examples
    --------
    >>> plural(1, "file"), plural(2, "file"), plural(0, "event")
    ('1 file', '2 files', '0 events')
    """
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def is_tty(file: IO[str]) -> bool:
    """Whether ``file`` is a terminal."""
    isatty = getattr(file, "isatty", None)
    return bool(isatty and isatty())


def summary_console(file: IO[str] | None = None) -> Console:
    """A rich console for ``file`` (stdout by default) that never wraps a value in a pipe.

    On a terminal rich uses the terminal's width; anywhere else (a pipe, a file, CI logs) the
    width is fixed wide and text is not wrapped, whatever ``COLUMNS`` says.
    """
    from rich.console import Console

    file = file or sys.stdout
    if is_tty(file):
        return Console(file=file)
    return Console(file=file, width=PIPE_WIDTH, soft_wrap=True, no_color=True)


def print_lines(console: Console, lines: Sequence[tuple[str, str]]) -> None:
    """Print ``(label, text)`` lines: a grid that wraps under its text on a terminal, one
    ``label  text`` line each anywhere else. Text is printed as is (no markup)."""
    from rich.table import Table
    from rich.text import Text

    if not lines:
        return
    if console.is_terminal:
        grid = Table.grid(padding=(0, 2))
        grid.add_column(no_wrap=True)
        grid.add_column()
        for label, text in lines:
            grid.add_row(label, Text(text))
        console.print(grid, highlight=False)
    else:
        width = max(len(label) for label, _ in lines)
        for label, text in lines:
            console.print(f"{label:<{width}}  {text}", highlight=False, markup=False)
