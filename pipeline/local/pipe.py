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

moto has no ``StartSyncExecution``: an execution is started (with a unique name) and
``DescribeExecution`` polled, which for an Express workflow answers the same thing.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pipeline import aws

if TYPE_CHECKING:  # faults
    from pipeline.local.faults import FaultInjector

__all__ = ["STATE_LIMIT", "ExecutionResult", "PipeEmulator", "largest_state"]

log = logging.getLogger(__name__)
#: Step Functions' limit on an execution's input and on every state's input and output.
STATE_LIMIT = 256 * 1024


def largest_state(execution_arn: str) -> tuple[int, str]:
    """The largest input or output in an execution's history: (UTF-8 bytes, event type)."""
    sfn = aws.client("stepfunctions")
    largest, where = 0, ""
    kwargs: dict[str, Any] = {"executionArn": execution_arn, "maxResults": 1000}
    while True:
        page = sfn.get_execution_history(**kwargs)
        for event in page["events"]:
            for name, details in event.items():
                if not name.endswith("EventDetails") or not isinstance(details, dict):
                    continue
                for member in ("input", "output"):
                    text = details.get(member)
                    if isinstance(text, str) and len(text.encode("utf-8")) > largest:
                        largest, where = len(text.encode("utf-8")), f"{event['type']}.{member}"
        if not page.get("nextToken"):
            return largest, where
        kwargs["nextToken"] = page["nextToken"]


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
    results: list[ExecutionResult] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._busy = threading.Event()
        self._lock = threading.Lock()

    # -- one batch -----------------------------------------------------------------------
    def _receive(self, limit: int) -> list[dict[str, Any]]:
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
        batch = self._receive(self.batch_size)
        if not batch:
            return None
        self._busy.set()
        try:
            deadline = time.monotonic() + self.batch_window
            while len(batch) < self.batch_size and time.monotonic() < deadline:
                more = self._receive(self.batch_size - len(batch))
                if more:
                    batch.extend(more)
                else:
                    time.sleep(min(0.05, self.batch_window))
            return self.run_batch(batch)
        finally:
            self._busy.clear()

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
        desc: dict[str, Any] = {"status": "RUNNING"}
        while time.monotonic() - started < self.execution_timeout:
            desc = sfn.describe_execution(executionArn=arn)
            if desc["status"] != "RUNNING":
                break
            time.sleep(0.02)
        seconds = time.monotonic() - started
        result = ExecutionResult(name, desc["status"], len(batch), seconds)
        result.largest_state, result.largest_state_at = largest_state(arn)
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
        """Poll in a background thread until :meth:`stop`."""
        self._thread = threading.Thread(target=self._loop, name="pipe-emulator", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop polling and wait for the batch in flight."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.execution_timeout)

    @property
    def busy(self) -> bool:
        """Whether a batch is being run right now."""
        return self._busy.is_set()
