"""Start, wire and stop the local stack (moto + the pipe emulator + the real handler)."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipeline import aws
from pipeline.local.faults import FaultInjector, FaultPlan
from pipeline.local.loopback import Loopback
from pipeline.local.pipe import PipeEmulator
from pipeline.local.shims import MotoExecutions, patched_moto, tuned_moto
from pipeline.names import (
    DICOM_SUFFIX,
    MAX_RECEIVE_COUNT,
    ORTHANC_PREFIX,
    PARSE_FUNCTION_MEMORY_MB,
    PARSE_HANDLER,
    PIPE_BATCH_SIZE,
    TTL_ATTRIBUTE,
    workflow_definition,
)
from pipeline.workflow.table import local_ledger_definition, local_table_definition

__all__ = ["LocalStack", "PortUnavailable", "StackInfo"]

log = logging.getLogger(__name__)
REGION = "us-east-1"
_EXECUTE = {"stepfunctions": {"execute_state_machine": True}}


@dataclass
class StackInfo:
    """What ``local up`` writes to ``.local/stack.json`` (DESIGN.md)."""

    endpoint_url: str | None
    region: str
    bucket: str
    queue_url: str
    dlq_url: str
    table: str
    state_machine_arn: str
    #: The DLQ ledger (beyond DESIGN.md's list: redrive removes its entries).
    ledger_table: str | None = None
    #: With Orthanc (``LocalStack(orthanc=True)``): its REST root, DICOMweb root and user.
    orthanc_url: str | None = None
    dicomweb_url: str | None = None
    orthanc_username: str | None = None
    orthanc_password: str | None = None

    def to_json(self) -> str:
        """The JSON document, without absent members."""
        return json.dumps({k: v for k, v in asdict(self).items() if v is not None}, indent=2)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PortUnavailable(OSError):
    """The local stack's port on 127.0.0.1 cannot be had (in use, or privileged): nothing
    was started. Its message names the port and why, in one line."""


def _check_port_free(port: int) -> None:
    """Bind-test ``127.0.0.1:port`` as moto's server will bind it; raise PortUnavailable if not.

    moto's ``ThreadedMotoServer.start`` waits forever for a server thread that died on a
    busy port, so the port is tried first. ``SO_REUSEADDR``, as the server sets it: a port
    a stopped run left in TIME_WAIT is free, one another program listens on is not.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                why = "is in use"
            elif exc.errno == errno.EACCES:
                why = "needs privileges this process does not have"
            else:
                why = f"cannot be bound ({errno.errorcode.get(exc.errno or 0, exc.errno)})"
            raise PortUnavailable(f"port {port} on 127.0.0.1 {why}") from None


class LocalStack:
    """The ingestion path on moto, started and stopped as one unit.

    Parameters
    ----------
    server:
        ``True``: moto's server on loopback (other programs can reach it: ``local up``,
        the demo, notebooks). ``False``: moto in process (tests).
    port:
        The server's port (0 picks a free one).
    visibility_timeout:
        The ingest queue's visibility timeout: how long a failed batch stays hidden before
        the pipe sees it again.
    lambda_env:
        Extra environment of the parse function (e.g. Powertools log level).
    orthanc:
        Also run a real Orthanc (:class:`pipeline.orthanc.local.LocalOrthanc`, Debian's
        packages) whose attachments go to the image bucket, started after moto; its URLs and
        credentials join :class:`StackInfo`. Needs ``server=True`` (Orthanc is another
        process: it cannot reach moto in process). Off by default, so tests that run moto in
        process are unchanged; ``local up`` and the demo turn it on.
    faults:
        Faults to inject (:mod:`pipeline.local.faults`): a :class:`FaultInjector` (tests seed
        it and read its counts), a :class:`FaultPlan` or its ``NAME=RATE,...`` text. With
        faults, the pipe also enforces the emulated 300 s budget of an Express execution.
    tuned:
        Run at speed (the default): moto without its quadratic and repeated work
        (:func:`pipeline.local.shims.tuned_moto`), executions' ends and histories read in
        place (:class:`pipeline.local.shims.MotoExecutions`) and ``pipe_concurrency`` batches
        at once. ``False`` is the emulator before issue 12 (the baseline of ``make bench``).
    pipe_concurrency:
        Batches the background pipe runs at once (default 4 when tuned, else 1).
    loopback:
        With moto's server: serve this process's own calls to it (the pipe's, the Step
        Functions integrations', the handler's) in process, not over loopback HTTP
        (:class:`pipeline.local.loopback.Loopback`); other programs still use HTTP. Default:
        ``tuned``.

    Examples
    --------
    >>> with LocalStack(server=False) as stack:  # doctest: +SKIP
    ...     stack.upload("orthanc/a.dcm", data)
    ...     stack.drain()
    """

    prefix = "dicom-pipeline"
    #: Batches the tuned background pipe runs at once (docs/performance.md, local throughput).
    PIPE_CONCURRENCY = 4

    def __init__(
        self,
        *,
        server: bool = True,
        port: int = 0,
        visibility_timeout: int = 2,
        max_receive_count: int = MAX_RECEIVE_COUNT,
        batch_size: int = PIPE_BATCH_SIZE,
        batch_window: float = 0.3,
        lambda_env: dict[str, str] | None = None,
        run_pipe: bool = True,
        orthanc: bool = False,
        faults: FaultInjector | FaultPlan | str | None = None,
        tuned: bool = True,
        pipe_concurrency: int | None = None,
        loopback: bool | None = None,
    ) -> None:
        if orthanc and not server:
            raise ValueError("orthanc=True needs server=True: Orthanc cannot reach moto in process")
        self.server = server
        self.orthanc = orthanc
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be 0 (any free one) to 65535, not {port}")
        self.port = port or (_free_port() if server else 0)
        self.visibility_timeout = visibility_timeout
        self.max_receive_count = max_receive_count
        self.batch_size = batch_size
        self.batch_window = batch_window
        self.lambda_env = lambda_env or {}
        self.run_pipe = run_pipe
        # faults: the injector, built before anything starts (a bad plan raises ValueError)
        self.faults = faults if isinstance(faults, FaultInjector | None) else FaultInjector(faults)
        self.tuned = tuned
        self.pipe_concurrency = pipe_concurrency or (self.PIPE_CONCURRENCY if tuned else 1)
        self.executions: MotoExecutions | None = None
        #: Routes this process's calls to moto's server in process (server mode, see loopback).
        self.loopback: Loopback | None = None
        self._use_loopback = server and (tuned if loopback is None else loopback)
        self.bucket = f"{self.prefix}-images"
        self.table = f"{self.prefix}-metadata"
        self.ledger = f"{self.prefix}-dlq-ledger"
        self.function = f"{self.prefix}-parse"
        self._stack = contextlib.ExitStack()
        self._orthanc: Any = None
        self._saved_env: dict[str, str | None] = {}
        self.info: StackInfo | None = None
        self.pipe: PipeEmulator | None = None
        self.invocations: list[dict[str, Any]] = []
        #: Every S3 event record sent to the ingest queue, by event name (see patched_moto).
        self.notifications: list[str] = []

    # -- environment -----------------------------------------------------------------------
    def _setenv(self, **values: str) -> None:
        for name, value in values.items():
            self._saved_env.setdefault(name, os.environ.get(name))
            os.environ[name] = value

    def _restore_env(self) -> None:
        for name, value in self._saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self._saved_env.clear()

    @property
    def endpoint_url(self) -> str | None:
        """The moto server's URL (None in process)."""
        return f"http://127.0.0.1:{self.port}" if self.server else None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> StackInfo:
        """Start moto, create every resource, start the pipe; returns the stack's facts."""
        self._setenv(
            AWS_ACCESS_KEY_ID="testing",
            AWS_SECRET_ACCESS_KEY="testing",
            AWS_SESSION_TOKEN="testing",
            AWS_REGION=REGION,
            AWS_DEFAULT_REGION=REGION,
        )
        for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL"):
            self._saved_env.setdefault(name, os.environ.pop(name, None))
        logging.getLogger("moto.stepfunctions.parser").setLevel(logging.CRITICAL)
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        try:
            if self.server:
                from moto.server import ThreadedMotoServer

                # Step Functions' service integrations call http://localhost:$MOTO_PORT.
                self._setenv(MOTO_PORT=str(self.port), AWS_ENDPOINT_URL=self.endpoint_url or "")
                _check_port_free(self.port)
                server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
                server.start()
                self._stack.callback(server.stop)
                request = urllib.request.Request(
                    f"{self.endpoint_url}/moto-api/config",
                    data=json.dumps(_EXECUTE).encode(),
                    method="POST",
                    headers={"Content-Type": "application/json"},
                )
                with urllib.request.urlopen(request, timeout=10) as resp:
                    resp.read()
                # moto's backends live in this process: a stack started after another one
                # stopped (the demo falling back to no Orthanc, tests) starts from nothing.
                reset = urllib.request.Request(f"{self.endpoint_url}/moto-api/reset", method="POST")
                with urllib.request.urlopen(reset, timeout=10) as resp:
                    resp.read()
            else:
                from moto import mock_aws

                self._stack.enter_context(mock_aws(config=_EXECUTE))  # type: ignore[call-overload]
            if self._use_loopback and self.endpoint_url:
                # Off while the resources are made: moto builds queue URLs from the host.
                self.loopback = Loopback(self.endpoint_url)
                self.loopback.enable(False)
                loopback = self.loopback
                self._stack.callback(aws.on_new_client(lambda _, client: loopback.attach(client)))
            aws.reset_clients()
            if self.tuned:
                self._stack.enter_context(tuned_moto(self.loopback))
                self.executions = self._stack.enter_context(MotoExecutions().installed())
            self.invocations = self._stack.enter_context(
                patched_moto({self.function: PARSE_HANDLER}, self.notifications)
            )
            if self.faults is not None:  # faults: over the shims' patches
                self._stack.enter_context(self.faults.installed())
            self.info = self._create_resources()
            if self.loopback is not None:
                self.loopback.enable()
            if self.run_pipe:
                assert self.pipe is not None
                self.pipe.start()
                self._stack.callback(self.pipe.stop)
            if self.orthanc:
                self._start_orthanc()
        except BaseException:
            self.stop()
            raise
        return self.info

    def stop(self) -> None:
        """Stop the pipe and moto and restore the environment (idempotent)."""
        try:
            self._stack.close()
        finally:
            self._restore_env()
            aws.reset_clients()

    @property
    def orthanc_pid(self) -> int | None:
        """The process ID of the local Orthanc, while it runs."""
        return self._orthanc.pid if self._orthanc is not None else None

    def __enter__(self) -> LocalStack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _start_orthanc(self) -> None:
        from pipeline.orthanc.local import LocalOrthanc

        assert self.info is not None and self.endpoint_url is not None
        orthanc = LocalOrthanc(bucket=self.bucket, s3_endpoint=self.endpoint_url, region=REGION)
        # Stopped first (nothing it does is lost), and briefly: SIGTERM, SIGKILL after 5 s.
        self._stack.callback(orthanc.stop, timeout=5.0)
        self._orthanc = orthanc
        started = orthanc.start()
        self.info.orthanc_url = started.url
        self.info.dicomweb_url = started.dicomweb_url
        self.info.orthanc_username = started.username
        self.info.orthanc_password = started.password

    # -- resources -------------------------------------------------------------------------
    def _create_resources(self) -> StackInfo:
        iam, s3, sqs = aws.client("iam"), aws.client("s3"), aws.client("sqs")
        ddb, lam, sfn = aws.client("dynamodb"), aws.client("lambda"), aws.client("stepfunctions")
        role = iam.create_role(RoleName=f"{self.prefix}-local", AssumeRolePolicyDocument="{}")
        role_arn = role["Role"]["Arn"]

        dlq_url = sqs.create_queue(
            QueueName=f"{self.prefix}-dlq", Attributes={"MessageRetentionPeriod": "1209600"}
        )["QueueUrl"]
        dlq_arn = self.queue_arn(dlq_url)
        queue_url = sqs.create_queue(
            QueueName=f"{self.prefix}-ingest",
            Attributes={
                "VisibilityTimeout": str(self.visibility_timeout),
                "RedrivePolicy": json.dumps(
                    {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": self.max_receive_count}
                ),
            },
        )["QueueUrl"]
        queue_arn = self.queue_arn(queue_url)

        # Unversioned: moto sends no delete events for a versioned bucket. As on AWS
        # (cdk/components/image_store.py), only .dcm keys under Orthanc's prefix notify.
        s3.create_bucket(Bucket=self.bucket)
        s3.put_bucket_notification_configuration(
            Bucket=self.bucket,
            NotificationConfiguration={
                "QueueConfigurations": [
                    {
                        "Id": "dicom-objects",
                        "QueueArn": queue_arn,
                        "Events": ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"],
                        "Filter": {
                            "Key": {
                                "FilterRules": [
                                    {"Name": "prefix", "Value": ORTHANC_PREFIX},
                                    {"Name": "suffix", "Value": DICOM_SUFFIX},
                                ]
                            }
                        },
                    }
                ]
            },
        )

        ddb.create_table(**local_table_definition(self.table))
        ddb.create_table(**local_ledger_definition(self.ledger))
        for table in (self.table, self.ledger):
            ddb.update_time_to_live(
                TableName=table,
                TimeToLiveSpecification={"Enabled": True, "AttributeName": TTL_ATTRIBUTE},
            )

        env = {
            "TABLE_NAME": self.table,
            "LEDGER_TABLE_NAME": self.ledger,
            "MAX_RECEIVE_COUNT": str(self.max_receive_count),
            # Set by the Lambda runtime on AWS: the parse step's memory budget follows it.
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(PARSE_FUNCTION_MEMORY_MB),
            "POWERTOOLS_SERVICE_NAME": "dicom-pipeline",
            "POWERTOOLS_METRICS_NAMESPACE": "DicomPipeline",
            "POWERTOOLS_TRACE_DISABLED": "true",
            **self.lambda_env,
        }
        function_arn = lam.create_function(
            FunctionName=self.function,
            Runtime="python3.12",
            Architectures=["arm64"],
            Role=role_arn,
            Handler=PARSE_HANDLER,
            Code={"ZipFile": b"in-process handler; see pipeline.local.shims"},
            Environment={"Variables": env},
            Timeout=60,
            MemorySize=PARSE_FUNCTION_MEMORY_MB,
        )["FunctionArn"]
        # The handler runs in this process: give it the function's environment.
        self._setenv(**env)

        definition = workflow_definition(
            {
                "ParseFunctionArn": function_arn,
                "TableName": self.table,
                "LedgerTableName": self.ledger,
                "DlqUrl": dlq_url,
                "MaxReceiveCount": str(self.max_receive_count),
            }
        )
        state_machine_arn = sfn.create_state_machine(
            name=f"{self.prefix}-ingest", type="EXPRESS", definition=definition, roleArn=role_arn
        )["stateMachineArn"]

        self.pipe = PipeEmulator(
            queue_url=queue_url,
            queue_arn=queue_arn,
            state_machine_arn=state_machine_arn,
            region=REGION,
            batch_size=self.batch_size,
            batch_window=self.batch_window,
            faults=self.faults,  # faults: duplicate deliveries, the emulated time budget
            concurrency=self.pipe_concurrency,
            executions=self.executions,
            hold_visibility=self.visibility_timeout if self.pipe_concurrency > 1 else None,
        )
        return StackInfo(
            endpoint_url=self.endpoint_url,
            region=REGION,
            bucket=self.bucket,
            queue_url=queue_url,
            dlq_url=dlq_url,
            table=self.table,
            state_machine_arn=state_machine_arn,
            ledger_table=self.ledger,
        )

    @staticmethod
    def queue_arn(queue_url: str) -> str:
        """The ARN of a queue."""
        attrs = aws.client("sqs").get_queue_attributes(
            QueueUrl=queue_url, AttributeNames=["QueueArn"]
        )
        return str(attrs["Attributes"]["QueueArn"])

    # -- helpers for callers -------------------------------------------------------------------
    def upload(self, key: str, body: bytes) -> None:
        """Put an object into the image bucket (a ``.dcm`` key under Orthanc's prefix,
        :data:`pipeline.names.ORTHANC_PREFIX`, notifies the ingest queue)."""
        aws.client("s3").put_object(Bucket=self.bucket, Key=key, Body=body)

    def delete(self, key: str) -> None:
        """Delete an object from the image bucket."""
        aws.client("s3").delete_object(Bucket=self.bucket, Key=key)

    def queue_depth(self) -> int:
        """Visible plus in-flight messages of the ingest queue."""
        assert self.info is not None
        attrs = aws.client("sqs").get_queue_attributes(
            QueueUrl=self.info.queue_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return int(attrs["ApproximateNumberOfMessages"]) + int(
            attrs["ApproximateNumberOfMessagesNotVisible"]
        )

    def drain(self, timeout: float = 120.0) -> None:
        """Wait until the ingest queue is empty and no batch is running.

        Without the background pipe (``run_pipe=False``) the batches are run here.

        Raises
        ------
        TimeoutError
            The queue did not drain in time.
        """
        assert self.pipe is not None
        deadline = time.monotonic() + timeout
        quiet_since: float | None = None
        while time.monotonic() < deadline:
            if not self.run_pipe:
                ran = self.pipe.poll_once()
                if ran is None and self.queue_depth() == 0:
                    return
                if ran is None:
                    time.sleep(0.1)  # failed batches hidden until their visibility timeout
                continue
            if self.queue_depth() == 0 and not self.pipe.busy:
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since > 0.3:
                    return
            else:
                quiet_since = None
            time.sleep(0.05)
        raise TimeoutError(f"the ingest queue did not drain within {timeout:.0f} s")

    def write_info(self, path: Path) -> None:
        """Write ``.local/stack.json``, readable by its owner only (mode 0600: it holds
        Orthanc's password)."""
        assert self.info is not None
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)  # an existing file keeps its mode through O_CREAT
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(self.info.to_json() + "\n")
