"""Typed, coded failures.

Every failure the pipeline expects is one of these classes. Each carries the DLQ ``code``
fixed by ``DESIGN.md``; its message says *what* and *where* (offsets, tags, keys) and never
contains a DICOM element value, so it is safe to log and to put in a DLQ message.

:class:`CommandError` is the command line's own failure (no code, exit 1): the commands under
:mod:`pipeline.cli` raise it, and ``pipeline.cli.main`` prints its one line.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "CODES",
    "AccessDenied",
    "CommandError",
    "DicomPipelineError",
    "InternalError",
    "Malformed",
    "MissingRequiredUid",
    "NotDicom",
    "ObjectChanged",
    "ObjectNotFound",
    "StorageEncoded",
    "TransientError",
    "Truncated",
    "UnprocessedKeys",
]


class DicomPipelineError(Exception):
    """Base class of every coded failure.

    Parameters
    ----------
    message:
        What went wrong and where, without element values.
    """

    code: ClassVar[str] = "INTERNAL"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_dict(self) -> dict[str, str]:
        """Return ``{"code": ..., "message": ...}`` as used by the CLI and the DLQ."""
        return {"code": self.code, "message": self.message}


class NotDicom(DicomPipelineError):
    """The object is not a DICOM Part 10 file nor a bare DICOM dataset."""

    code = "NOT_DICOM"


class Truncated(DicomPipelineError):
    """The object ends inside the header (inside a tag, a length or a value)."""

    code = "TRUNCATED"


class Malformed(DicomPipelineError):
    """The header is structurally invalid (bad lengths, delimiters, VRs, encoding)."""

    code = "MALFORMED"


class MissingRequiredUid(DicomPipelineError):
    """One of the four identifying UIDs is absent or empty."""

    code = "MISSING_REQUIRED_UID"


class StorageEncoded(DicomPipelineError):
    """An Orthanc attachment that Orthanc compressed or encrypted before storing it."""

    code = "STORAGE_ENCODED"


class ObjectNotFound(DicomPipelineError):
    """The S3 object (or local file) does not exist (any more).

    ``gone`` is true when the object itself is missing (deleted since its event), false when
    its bucket is: the workflow skips the first and fails the second.
    """

    code = "OBJECT_NOT_FOUND"

    def __init__(self, message: str, *, gone: bool = False) -> None:
        super().__init__(message)
        self.gone = gone


class AccessDenied(DicomPipelineError):
    """The caller may not read the object."""

    code = "ACCESS_DENIED"


class InternalError(DicomPipelineError):
    """A bug in dicom-pipeline: no input may produce it.

    An exception of a type the readers do not expect from bad bytes (``AttributeError``,
    ``TypeError``, ``KeyError``, ``IndexError``...) is one, never ``MALFORMED``.
    """

    code = "INTERNAL"


class TransientError(DicomPipelineError):
    """A service we depend on is unavailable: throttling, 5xx, a timeout, an unreachable
    endpoint or missing credentials, after botocore's own retries.

    The workflow retries the record (EventBridge Pipes' partial batch failure returns only its
    message to the queue); on the message's last receive it goes to the DLQ with this code.
    """

    code = "UNAVAILABLE"


class ObjectChanged(TransientError):
    """The object was overwritten while it was read; a newer event describes it.

    Its bytes are never stitched from two versions: the read stops (an S3 ranged GET pinned
    to the first range's ETag answers ``412 PreconditionFailed``, or a local file's size
    changed). Like any :class:`TransientError` the record is retried; by then the object is
    whole again, and its newer event indexes it too.
    """


class UnprocessedKeys(TransientError):
    """``BatchGetItem`` still left keys unprocessed after every backoff attempt.

    A key it did not read is neither present nor absent: callers must not treat it as a
    missing item. ``rows`` holds the items that were read (for best-effort callers that can
    use a partial answer); the message names only counts, never a key.
    """

    def __init__(self, message: str, *, rows: list[dict[str, object]] | None = None) -> None:
        super().__init__(message)
        self.rows = rows or []


class CommandError(Exception):
    """A command cannot do its job, for a reason its message says in one line (exit 1)."""


CODES: tuple[str, ...] = (
    "NOT_DICOM",
    "TRUNCATED",
    "MALFORMED",
    "MISSING_REQUIRED_UID",
    "STORAGE_ENCODED",
    "OBJECT_NOT_FOUND",
    "ACCESS_DENIED",
    "UNAVAILABLE",
    "INTERNAL",
)
