"""What the commands of ``dicom-pipeline`` share: the program's name, argument types, the
target arguments (``--stack``, ``--aws-stack``) and the SIGTERM exception.

Everything here is light to import (argparse and the standard library): building the parser
imports every command module, and ``dicom-pipeline --help`` must not pay for boto3 or pydicom.
"""

from __future__ import annotations

import argparse

from pipeline.ops.target import add_target_arguments

__all__ = [
    "PROG",
    "Terminated",
    "add_target_arguments",
    "port",
    "positive_int",
]

PROG = "dicom-pipeline"


class Terminated(BaseException):
    """SIGTERM arrived (raised in the main thread, like KeyboardInterrupt for SIGINT)."""


def positive_int(text: str) -> int:
    """An argument type: a whole number of 1 or more.

    Examples
    --------
    >>> positive_int("3")
    3
    """
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def port(text: str) -> int:
    """An argument type: a TCP port, 0 (any free port) to 65535."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be 0 (any free port) to 65535, not {value}")
    return value
