"""An EventBridge Pipes emulator: SQS source → Step Functions (Express, REQUEST_RESPONSE).

Pipes' semantics that matter here: messages are batched (up to ``batch_size``, waiting at
most ``batch_window`` seconds for a batch to fill); the target is invoked synchronously with
the batch as a JSON array of SQS records; on success the batch is deleted from the queue,
except the messages the output names in ``batchItemFailures`` (partial batch failure: those
are left, as is the whole batch when an identifier is not in it or the execution failed);
what is left reappears after the visibility timeout, and the queue's redrive policy moves it to
the DLQ after ``maxReceiveCount`` receives.

AWS's limits that moto does not enforce are enforced here, as AWS would: the batch sent to
the workflow and every state's input and output (read from the execution's history) are at
most :data:`STATE_LIMIT` bytes; above it the execution counts as failed with
``States.DataLimitExceeded``.

moto has no ``StartSyncExecution``: an execution is started (with a unique name) and its
end awaited, which for an Express workflow answers the same thing: by default
``DescribeExecution`` is polled and the history read through ``GetExecutionHistory``; given an
:class:`ExecutionReader` (the local stack passes
:class:`pipeline.local.shims.MotoExecutions`), both are read from moto in this process.

Like Pipes, which runs many executions at once, the emulator runs up to ``concurrency``
batches at once (one poller thread each); receives are serialized, so no two pollers hold the
same message, and so is the collection of a batch (its window), so batches fill as they would.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from pipeline import aws

if TYPE_CHECKING:  # faults
    from pipeline.local.faults import FaultInjector

__all__ = ["STATE_LIMIT", "ExecutionReader", "ExecutionResult", "PipeEmulator", "largest_state"]

log = logging.getLogger(__name__)
#: Step Functions' limit on an execution's input and on every state's input and output.
STATE_LIMIT = 256 * 1024


class ExecutionReader(Protocol):
    """Reads an execution's end and history without the API (see the module docstring)."""

    def wait(self, arn: str, timeout: float) -> dict[str, Any]:
        """What ``DescribeExecution`` answers once the execution ended (or at ``timeout``)."""
        ...

    def history(self, arn: str) -> list[dict[str, Any]]:
        """The execution's history events, as ``GetExecutionHistory`` lists them."""
        ...


def largest_state(
    execution_arn: str, events: list[dict[str, Any]] | None = None
) -> tuple[int, str]:
    """The largest input or output in an execution's history: (UTF-8 bytes, event type).

    ``events`` is the history when the caller has it; otherwise it is read through
    ``GetExecutionHistory``.
    """
    largest, where = 0, ""
    if events is not None:
        return _largest_in(events, largest, where)
    sfn = aws.client("stepfunctions")
    kwargs: dict[str, Any] = {"executionArn": execution_arn, "maxResults": 1000}
    while True:
        page = sfn.get_execution_history(**kwargs)
        largest, where = _largest_in(page["events"], largest, where)
        if not page.get("nextToken"):
            return largest, where
        kwargs["nextToken"] = page["nextToken"]


def _largest_in(events: list[dict[str, Any]], largest: int, where: str) -> tuple[int, str]:
    for event in events:
        for name, details in event.items():
            if not name.endswith("EventDetails") or not isinstance(details, dict):
                continue
            for member in ("input", "output"):
                text = details.get(member)
                if isinstance(text, str) and len(text) * 4 > largest:  # UTF-8: <= 4 B/char
                    size = len(text.encode("utf-8"))
                    if size > largest:
                        kind = event["type"]  # moto's in-memory history holds an enum
                        largest, where = size, f"{getattr(kind, 'value', kind)}.{member}"
    return largest, where


@dataclass
class ExecutionResult:
    """One workflow execution the pipe ran."""

    name: str
    status: str
    messages: int
    seconds: float
    output: dict[str, Any] | None = None
    error: str | None = None
    #: The largest state input or output of the execution (bytes) and where it was.
    largest_state: int = 0
    largest_state_at: str = ""
    #: Messages returned to the queue through ``batchItemFailures``.
    returned: int = 0


@dataclass
class PipeEmulator:
    """Polls ``queue_url`` and invokes ``state_machine_arn`` with batches, like a Pipe."""

    queue_url: str
    queue_arn: str
    state_machine_arn: str
    region: str = "us-east-1"
    batch_size: int = 10
    batch_window: float = 0.5
    poll_interval: float = 0.1
    execution_timeout: float = 300.0
    #: Fault injection (faults): duplicate deliveries and the emulated time budget.
    faults: FaultInjector | None = None
    #: Batches run at once (one poller thread each), as Pipes runs several executions.
    concurrency: int = 1
    #: Reads executions in place instead of polling the API (None: the API).
    executions: ExecutionReader | None = None
    #: The queue's visibility timeout (s): with it, a running batch's messages stay hidden
    #: until its execution ends, as on AWS, where the visibility timeout is longer than an
    #: execution can last (the local stack's is short, so failed records come back soon).
    #: Without it, a concurrent poller could take a message whose execution still runs.
    hold_visibility: int | None = None
    results: list[ExecutionResult] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._running = 0  # batches being collected or run
        self._lock = threading.Lock()
        self._receive_lock = threading.Lock()
        self._collect_lock = threading.Lock()

    # -- one batch -----------------------------------------------------------------------
    def _receive(self, limit: int) -> list[dict[str, Any]]:
        with self._receive_lock:  # one receive at a time: moto's are not thread-safe
            return self._receive_unlocked(limit)

    def _receive_unlocked(self, limit: int) -> list[dict[str, Any]]:
        resp = aws.client("sqs").receive_message(
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=max(1, min(10, limit)),
            WaitTimeSeconds=0,
            AttributeNames=["All"],
            MessageAttributeNames=["All"],
        )
        messages: list[dict[str, Any]] = resp.get("Messages", [])
        return messages

    def _as_pipe_record(self, m: dict[str, Any]) -> dict[str, Any]:
        return {
            "messageId": m["MessageId"],
            "receiptHandle": m["ReceiptHandle"],
            "body": m["Body"],
            "attributes": m.get("Attributes", {}),
            "messageAttributes": m.get("MessageAttributes", {}),
            "md5OfBody": m.get("MD5OfBody"),
            "eventSource": "aws:sqs",
            "eventSourceARN": self.queue_arn,
            "awsRegion": self.region,
        }

    def poll_once(self) -> ExecutionResult | None:
        """Collect one batch (honouring the window) and run it; None when the queue is empty."""
        # One batch is collected at a time (its window ends before the next one opens), as a
        # pipe fills a batch before it invokes; batches then run concurrently. Collecting in
        # every poller at once would split a stream of messages into small batches, each
        # paying a whole execution's cost.
        with self._collect_lock:
            batch = self._receive(self.batch_size)
            if not batch:
                return None
            with self._lock:
                self._running += 1
            try:
                deadline = time.monotonic() + self.batch_window
                while len(batch) < self.batch_size and time.monotonic() < deadline:
                    more = self._receive(self.batch_size - len(batch))
                    if more:
                        batch.extend(more)
                    else:
                        time.sleep(min(0.05, self.batch_window))
            except BaseException:
                with self._lock:
                    self._running -= 1
                raise
        try:
            return self.run_batch(batch)
        finally:
            with self._lock:
                self._running -= 1

    def run_batch(self, batch: list[dict[str, Any]]) -> ExecutionResult:
        """Invoke the workflow with ``batch``; delete what succeeded, leave what did not."""
        sfn = aws.client("stepfunctions")
        name = f"pipe-{uuid.uuid4().hex}"
        if self.faults is not None:  # faults: at-least-once delivery, a copy comes again later
            self.faults.redeliver(self.queue_url, batch)
        started = time.monotonic()
        payload = json.dumps([self._as_pipe_record(m) for m in batch])
        if len(payload.encode("utf-8")) > STATE_LIMIT:
            result = ExecutionResult(name, "FAILED", len(batch), 0.0)
            result.error = "States.DataLimitExceeded"
            log.warning("batch of %d messages exceeds the workflow's input limit", len(batch))
            with self._lock:
                self.results.append(result)
            return result
        arn = sfn.start_execution(stateMachineArn=self.state_machine_arn, name=name, input=payload)[
            "executionArn"
        ]
        with self._held(batch):
            desc = self._wait(arn, started)
        seconds = time.monotonic() - started
        result = ExecutionResult(name, desc["status"], len(batch), seconds)
        events = self.executions.history(arn) if self.executions is not None else None
        result.largest_state, result.largest_state_at = largest_state(arn, events)
        if result.largest_state > STATE_LIMIT and desc["status"] == "SUCCEEDED":
            # AWS would have failed the execution at that state.
            desc = {"status": "FAILED", "error": "States.DataLimitExceeded"}
            result.status = "FAILED"
        if self.faults is not None and self.faults.over_budget(arn, seconds):  # faults
            # Retry waits and injected timeouts were charged, not slept: AWS would have
            # stopped the execution at 300 s, leaving the whole batch to the queue.
            desc = {"status": "FAILED", "error": "States.Timeout"}
            result.status = "FAILED"
        if desc["status"] == "SUCCEEDED":
            result.output = json.loads(desc.get("output") or "null")
            keep = self._failed_items(batch, result.output)
            done = [m for m in batch if m["MessageId"] not in keep]
            result.returned = len(batch) - len(done)
            if done:
                entries = [
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(done)
                ]
                aws.client("sqs").delete_message_batch(QueueUrl=self.queue_url, Entries=entries)
        else:
            result.error = desc.get("error") or desc["status"]
            log.warning("workflow execution %s ended %s (%s)", name, desc["status"], result.error)
        with self._lock:
            self.results.append(result)
        return result

    def _wait(self, arn: str, started: float) -> dict[str, Any]:
        desc: dict[str, Any] = {"status": "RUNNING"}
        if self.executions is not None:
            desc = self.executions.wait(arn, self.execution_timeout)
        sfn = aws.client("stepfunctions")
        while desc["status"] == "RUNNING" and time.monotonic() - started < self.execution_timeout:
            desc = sfn.describe_execution(executionArn=arn)
            if desc["status"] != "RUNNING":
                break
            time.sleep(0.02)
        return desc

    @contextlib.contextmanager
    def _held(self, batch: list[dict[str, Any]]) -> Iterator[None]:
        """Keep ``batch`` hidden while the block runs (see ``hold_visibility``)."""
        if not self.hold_visibility:
            yield
            return
        timeout = self.hold_visibility
        done = threading.Event()
        entries = [
            {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": timeout}
            for i, m in enumerate(batch)
        ]

        def renew() -> None:
            while not done.wait(timeout / 4):  # early: a busy interpreter runs threads late
                try:
                    aws.client("sqs").change_message_visibility_batch(
                        QueueUrl=self.queue_url, Entries=entries
                    )
                except Exception:  # the batch runs on; its messages may then come back early
                    log.warning("could not keep a running batch's messages hidden")

        thread = threading.Thread(target=renew, name="pipe-visibility", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()

    @staticmethod
    def _failed_items(batch: list[dict[str, Any]], output: Any) -> set[str]:
        """The message ids to leave on the queue, as Pipes reads ``batchItemFailures``.

        An identifier that is not in the batch (or a malformed list) fails the whole batch.
        """
        ids = {m["MessageId"] for m in batch}
        failures = output.get("batchItemFailures") if isinstance(output, dict) else None
        if not failures:
            return set()
        named: set[str] = set()
        for entry in failures if isinstance(failures, list) else [None]:
            ident = entry.get("itemIdentifier") if isinstance(entry, dict) else None
            if not isinstance(ident, str) or ident not in ids:
                return ids
            named.add(ident)
        return named

    # -- background loop -------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                if self.poll_once() is None:
                    self._stop.wait(self.poll_interval)
            except Exception:  # keep polling, like the managed service would
                log.exception("pipe emulator poll failed")
                self._stop.wait(1.0)

    def start(self) -> None:
        """Poll in ``concurrency`` background threads until :meth:`stop`."""
        for i in range(max(1, self.concurrency)):
            thread = threading.Thread(target=self._loop, name=f"pipe-emulator-{i}", daemon=True)
            self._threads.append(thread)
            thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop polling; wait at most ``timeout`` seconds for the batches in flight (their
        daemon threads end with the process; what they left unfinished stays on the queue)."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))

    @property
    def busy(self) -> bool:
        """Whether a batch is being collected or run right now."""
        with self._lock:
            return self._running > 0
