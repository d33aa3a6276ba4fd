"""S3 event notifications as EventBridge Pipes delivers them: decoding and validation.

A Pipes batch is a list of SQS messages; each body is an S3 event notification that may be an
``s3:TestEvent``, hold several records, and carry URL-encoded keys (``+`` for a space). This
module turns a batch into one :class:`EventRecord` per S3 record, each already classified as
a create, a delete, or something to skip (with a reason) or fail (with a code).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal
from urllib.parse import unquote_plus

import msgspec
from msgspec import Meta

from pipeline.names import DICOM_SUFFIX

__all__ = [
    "DICOM_SUFFIX",
    "EventRecord",
    "S3EventRecordModel",
    "REINDEX_MARKER",
    "invalid_field",
    "order_token",
    "reindex_order",
    "split_batch",
]

#: S3 sequencers are hex strings of varying length. S3's documentation: "to compare these
#: values, first right pad the shorter value with zeros, and then do a lexicographical
#: comparison" (earlier versions of the page said left pad; the current one says right).
#: Right-padded to this width, stored tokens compare as strings exactly that way.
SEQUENCER_WIDTH = 64

Kind = Literal["create", "delete", "skip", "fail"]

#: A synthetic event of ``dicom-pipeline reindex`` carries this member at the top level of its
#: S3 record: ``{"after": "<the stored record's event_order>"}`` (``""`` or ``null`` when the
#: table held no record). Its order is then :func:`reindex_order`, not the S3 one.
REINDEX_MARKER = "dicomPipelineReindex"
#: Separates a reindex order from the stored order it follows. Real tokens never hold it
#: (hex digits, or ``T`` plus an ISO-8601 time), so it also marks a reindex order as such.
_REINDEX_SEPARATOR = "R"
#: The base of a reindex order when no record was stored: below every real token (``-`` sorts
#: before the digits, the hex letters and ``T``).
_NO_RECORD_BASE = "-"
#: A reindex order's timestamp digits are right-padded to this width, so two of them compare
#: by time.
_REINDEX_DIGITS = 20


#: A string that is present and not empty.
_Required = Annotated[str, Meta(min_length=1)]


# The models are msgspec Structs, not Pydantic models: importing pydantic was a third of the
# parse Lambda's cold start (docs/performance.md, "Cold start"). Fields not named here are
# ignored by the models and kept in ``EventRecord.record``, the original record.
class S3ObjectModel(msgspec.Struct, frozen=True):
    key: _Required
    size: int | None = None
    eTag: str | None = None
    versionId: str | None = None
    sequencer: str | None = None


class S3BucketModel(msgspec.Struct, frozen=True):
    name: _Required


class S3EntityModel(msgspec.Struct, frozen=True):
    bucket: S3BucketModel
    object: S3ObjectModel


class S3EventRecordModel(msgspec.Struct, frozen=True):
    """The fields of one S3 event record the pipeline relies on (others are ignored here and
    kept in the original record).

    :meth:`validate` is the way in: the constructor does not check the constraints.
    """

    eventName: _Required
    s3: S3EntityModel
    eventTime: str | None = None
    eventSource: str | None = None

    @classmethod
    def validate(cls, raw: Any) -> S3EventRecordModel:
        """``raw`` (a decoded JSON object) as a model; numbers given as strings are accepted
        as numbers (Pydantic's lax mode did the same).

        Raises
        ------
        msgspec.ValidationError
            A field is missing or invalid; its message names the field (see
            :func:`invalid_field`), never a value.
        """
        return msgspec.convert(raw, type=cls, strict=False)


def invalid_field(error: msgspec.ValidationError) -> str:
    """The dotted path of the field a validation error is about (``""``: the record itself).

    Examples
    --------
    >>> try:
    ...     S3EventRecordModel.validate({"eventName": "s3:ObjectCreated:Put", "s3": {}})
    ... except msgspec.ValidationError as exc:
    ...     print(invalid_field(exc))
    s3.bucket
    """
    text = str(error)
    where = ""
    if " - at `$" in text:
        text, _, at = text.rpartition(" - at `$")
        where = at.rstrip("`").lstrip(".")
    # msgspec names a missing field in the message, at its parent's path
    missing = text.partition("missing required field `")[2].partition("`")[0]
    if missing:
        where = f"{where}.{missing}" if where else missing
    return where


def order_token(sequencer: str | None, event_time: str | None) -> str:
    """A string that orders events *of one key* as S3 does.

    With a ``sequencer``: the sequencer upper-cased and right-padded with zeros. Without one
    (some emulators send none): ``"T"`` plus the event time, which sorts after any
    sequencer; the two kinds never meet for one key in one deployment.

    Examples
    --------
    >>> order_token("0055AED6DCD90281E5", None) < order_token("0055AED6DCD90281E6", None)
    True
    >>> order_token("0055AED6DCD9028", None) < order_token("0055AED6DCD90281", None)
    True
    """
    if sequencer:
        return sequencer.upper().ljust(SEQUENCER_WIDTH, "0")
    return "T" + (event_time or "")


def reindex_order(after: str | None, event_time: str | None) -> str:
    """The order of a synthetic reindex event: just after ``after``, before any newer event.

    ``after`` is the ``event_order`` the table held for the key when the event was made
    (``None`` or ``""``: no record). The order is that token's *real* part (a stored reindex
    order's own ``R`` suffix is dropped first, so repeated reindexes do not grow the token),
    then ``R``, then the digits of ``event_time`` right-padded to 20. Real tokens are fixed
    width (64 hex digits, or ``T`` plus an ISO-8601 time with milliseconds): one newer than
    ``after`` differs from it *within* those characters, at a position where it is greater,
    so it sorts above every ``after + "R..."``; a real token equal to or older than ``after``
    sorts below it. Without a stored record the base is ``-``, which sorts below every real
    token, so any real event still wins. See docs/workflow.md (reindex ordering).

    Examples
    --------
    >>> stored = order_token("0055AED6DCD90281E5", None)
    >>> newer = order_token("0055AED6DCD90281E6", None)
    >>> ours = reindex_order(stored, "2026-01-02T03:04:05.678Z")
    >>> stored < ours < newer
    True
    >>> ours.endswith("R20260102030405678000")
    True
    >>> reindex_order(None, "2026-01-02T03:04:05.678Z") < order_token("00", None)
    True
    """
    base = (after or "").split(_REINDEX_SEPARATOR, 1)[0] or _NO_RECORD_BASE
    digits = "".join(c for c in event_time or "" if c in "0123456789")
    return base + _REINDEX_SEPARATOR + digits.ljust(_REINDEX_DIGITS, "0")


@dataclass
class EventRecord:
    """One S3 record of a batch, classified.

    ``kind`` is ``create`` or ``delete`` for records to apply, ``skip`` (with ``reason``) or
    ``fail`` (with ``code`` and ``message``) otherwise. ``record`` is the original S3 event
    record (``None`` for a message that held none), kept for the DLQ message and redrive.
    ``receive_count`` is how many times SQS has delivered the message (its
    ``ApproximateReceiveCount``): on the last allowed receive a record is not retried again.
    ``reindex_after`` is set on a synthetic reindex event (:data:`REINDEX_MARKER`): the stored
    order it follows (``""`` for none).
    """

    kind: Kind
    message_id: str
    record: dict[str, Any] | None = None
    bucket: str | None = None
    key: str | None = None
    event_name: str | None = None
    event_time: str | None = None
    sequencer: str | None = None
    etag: str | None = None
    size: int | None = None
    version_id: str | None = None
    reason: str | None = None
    code: str | None = None
    message: str | None = None
    receive_count: int = 1
    reindex_after: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def order(self) -> str:
        """This event's :func:`order_token`, or :func:`reindex_order` for a reindex event."""
        if self.reindex_after is not None:
            return reindex_order(self.reindex_after, self.event_time)
        return order_token(self.sequencer, self.event_time)


def _classify(message_id: str, raw: Any) -> EventRecord:
    try:
        model = S3EventRecordModel.validate(raw)
    except msgspec.ValidationError as exc:
        return EventRecord(
            "fail",
            message_id,
            record=raw if isinstance(raw, dict) else None,
            code="MALFORMED",
            message=(
                f"S3 event record lacks or has invalid fields: {where[:200]}"
                if (where := invalid_field(exc))
                else "S3 event record is not a JSON object"
            ),
        )
    marker = raw.get(REINDEX_MARKER) if isinstance(raw, dict) else None
    after = marker.get("after") if isinstance(marker, dict) else None
    if marker is not None and not (isinstance(marker, dict) and isinstance(after, str | None)):
        return EventRecord(
            "fail",
            message_id,
            record=raw,
            code="MALFORMED",
            message=f"{REINDEX_MARKER} must be an object whose 'after' is a string or null",
        )
    obj = model.s3.object
    key = unquote_plus(obj.key)
    rec = EventRecord(
        "skip",
        message_id,
        record=raw,
        bucket=model.s3.bucket.name,
        key=key,
        event_name=model.eventName,
        event_time=model.eventTime,
        sequencer=obj.sequencer,
        etag=obj.eTag,
        size=obj.size,
        version_id=obj.versionId if obj.versionId not in (None, "", "null") else None,
        reindex_after=(after or "") if marker is not None else None,
    )
    name = model.eventName.removeprefix("s3:")
    if not key.endswith(DICOM_SUFFIX):
        rec.reason = "not_dcm_key"
    elif name.startswith("ObjectCreated:"):
        rec.kind = "create"
    elif name.startswith("ObjectRemoved:"):
        rec.kind = "delete"
    else:
        rec.reason = "unsupported_event"
    return rec


def split_batch(messages: list[dict[str, Any]]) -> list[EventRecord]:
    """Decode a Pipes batch of SQS messages into classified S3 event records.

    Parameters
    ----------
    messages:
        The batch exactly as EventBridge Pipes delivers it to Step Functions: dicts with
        ``messageId`` and ``body`` (a JSON string).

    Returns
    -------
    list of EventRecord
        In batch order; a test event or a body without records yields one ``skip``; a body
        that is not JSON yields one ``fail`` with code ``MALFORMED``.

    Examples
    --------
    >>> body = json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent"})
    >>> [r.reason for r in split_batch([{"messageId": "m1", "body": body}])]
    ['test_event']
    """
    out: list[EventRecord] = []
    for position, message in enumerate(messages):
        first = len(out)
        _split_message(position, message, out)
        count = receive_count(message)
        for rec in out[first:]:
            rec.receive_count = count
    return out


def receive_count(message: dict[str, Any]) -> int:
    """How many times SQS has delivered ``message`` (1 when the attribute is absent)."""
    try:
        return max(1, int((message.get("attributes") or {}).get("ApproximateReceiveCount", 1)))
    except (TypeError, ValueError):
        return 1


def _split_message(position: int, message: dict[str, Any], out: list[EventRecord]) -> None:
    """Append the records of one message to ``out``."""
    message_id = str(message.get("messageId") or f"#{position}")
    body = message.get("body")
    try:
        payload = json.loads(body) if isinstance(body, str) else body
    except ValueError:
        out.append(
            EventRecord(
                "fail",
                message_id,
                code="MALFORMED",
                message=f"message {message_id} body is not JSON",
            )
        )
        return
    if not isinstance(payload, dict):
        out.append(
            EventRecord(
                "fail",
                message_id,
                code="MALFORMED",
                message=f"message {message_id} body is not a JSON object",
            )
        )
        return
    if payload.get("Event") == "s3:TestEvent":
        out.append(EventRecord("skip", message_id, reason="test_event"))
        return
    records = payload.get("Records")
    if not isinstance(records, list) or not records:
        out.append(
            EventRecord(
                "fail",
                message_id,
                code="MALFORMED",
                message=f"message {message_id} holds no S3 event records",
            )
        )
        return
    out.extend(_classify(message_id, raw) for raw in records)
