"""Fault injection for the local stack: AWS's transient failures, at chosen rates.

``dicom-pipeline local up --faults NAME=RATE,...`` (and ``LocalStack(faults=...)``) injects,
each at its rate (0 to 1, drawn per request from one seedable random generator):

``lambda-throttle``
    Lambda's ``Invoke`` answers 429 ``TooManyRequestsException``; the Step Functions
    ``lambda:invoke`` integration then fails with ``Lambda.TooManyRequestsException``.
``lambda-timeout``
    The invocation runs past the function's timeout and fails as Lambda reports it: status
    200, ``X-Amz-Function-Error: Unhandled``, payload ``{"errorType": "Sandbox.Timedout"}``
    (so Step Functions fails the task with ``Sandbox.Timedout``). The handler does not run,
    and nothing sleeps: the function's timeout is charged to the execution's emulated clock.
``dynamodb-throttle``
    DynamoDB reads and writes (``GetItem``, ``BatchGetItem``, ``Query``, ``Scan``,
    ``PutItem``, ``UpdateItem``, ``DeleteItem``, ``BatchWriteItem``, transactions) answer
    400 ``ProvisionedThroughputExceededException`` or ``ThrottlingException``: the workflow's
    DynamoDB integration (``WriteRecord``, ``ClaimInLedger``, ``NoteInLedger``) sees
    ``DynamoDB.<that name>``, the Lambda's boto3 calls a throttling ``ClientError``.
``s3-slowdown``
    S3 ``GetObject`` and ``HeadObject`` answer 503 ``SlowDown`` (the Lambda's ranged reads,
    the workflow's ``LoadItem``).
``duplicate-delivery``
    A message the pipe emulator receives is delivered again later, as at-least-once SQS
    does: the pipe sends a copy of it to the ingest queue (a new queue entry, so it comes in
    a later batch, with its own receive count).

The errors are injected in moto's request handlers (Lambda's function object, the DynamoDB
and S3 response classes), which serve both moto in process and moto's server in this
process: every client, the workflow's and the handler's, sees them.

The emulated time budget
------------------------
An Express execution on AWS ends at 300 s. moto's interpreter really sleeps every ``Retry``
interval, and an injected timeout would have to sleep the function's timeout: locally both
are charged to a per-execution :class:`EmulatedClock` instead, and only a fraction
(``retry_scale``, 1/100 by default) of each Retry interval is really slept. The pipe emulator
asks :meth:`FaultInjector.over_budget` with the execution's real duration: an execution whose
real time plus charged time passes :data:`EXPRESS_TIME_LIMIT` counts as failed with
``States.Timeout`` (its whole batch left on the queue), as AWS would fail it.

Examples
--------
>>> plan = FaultPlan.parse("lambda-throttle=0.1,s3-slowdown=0.05")
>>> plan.rate("lambda-throttle"), plan.rate("dynamodb-throttle")
(0.1, 0.0)
>>> str(plan)
'lambda-throttle=0.1,s3-slowdown=0.05'
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType, SimpleNamespace
from typing import Any

from pipeline import aws

__all__ = [
    "EXPRESS_TIME_LIMIT",
    "FAULT_NAMES",
    "RETRY_SCALE",
    "EmulatedClock",
    "FaultInjector",
    "FaultPlan",
]

log = logging.getLogger(__name__)

#: Every fault ``--faults`` knows, in the order the CLI's help names them.
FAULT_NAMES: tuple[str, ...] = (
    "lambda-throttle",
    "lambda-timeout",
    "dynamodb-throttle",
    "s3-slowdown",
    "duplicate-delivery",
)
#: An Express execution's maximum duration on AWS, in seconds.
EXPRESS_TIME_LIMIT = 300.0
#: The fraction of a ``Retry`` interval that is really slept (the whole interval is charged).
RETRY_SCALE = 0.01
#: DynamoDB operations that ``dynamodb-throttle`` fails (moto's handler method names).
DYNAMODB_OPERATIONS = frozenset(
    {
        "get_item",
        "batch_get_item",
        "query",
        "scan",
        "put_item",
        "update_item",
        "delete_item",
        "batch_write_item",
        "transact_get_items",
        "transact_write_items",
    }
)
_DYNAMODB_THROTTLES = ("ProvisionedThroughputExceededException", "ThrottlingException")


@dataclass(frozen=True)
class FaultPlan:
    """Which faults to inject, each at a rate from 0 (never) to 1 (always).

    Build one with :meth:`parse` (the ``--faults`` syntax) or directly from a mapping; an
    unknown name or a rate outside 0 to 1 raises :class:`ValueError` with a one-line message.
    """

    rates: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        checked: dict[str, float] = {}
        for name, rate in self.rates.items():
            if name not in FAULT_NAMES:
                raise ValueError(
                    f"unknown fault {name!r}: expected one of {', '.join(FAULT_NAMES)}"
                )
            if isinstance(rate, bool) or not isinstance(rate, int | float):
                raise ValueError(f"fault {name}: rate must be a number from 0 to 1")
            value = float(rate)
            if not (math.isfinite(value) and 0.0 <= value <= 1.0):
                raise ValueError(f"fault {name}: rate {rate!r} is not between 0 and 1")
            checked[name] = value
        object.__setattr__(self, "rates", MappingProxyType(checked))

    @classmethod
    def parse(cls, text: str) -> FaultPlan:
        """Parse ``NAME=RATE,...`` (spaces around the parts are allowed; a name at most once)."""
        rates: dict[str, float] = {}
        parts = [part.strip() for part in text.split(",")]
        if not any(parts):
            raise ValueError(
                f"no fault given: expected NAME=RATE,... with NAME one of {', '.join(FAULT_NAMES)}"
            )
        for part in parts:
            name, sep, value = (s.strip() for s in part.partition("="))
            if not sep or not name or not value:
                raise ValueError(f"fault {part!r} is not NAME=RATE (e.g. lambda-throttle=0.1)")
            if name in rates:
                raise ValueError(f"fault {name} is given twice")
            if name not in FAULT_NAMES:
                raise ValueError(
                    f"unknown fault {name!r}: expected one of {', '.join(FAULT_NAMES)}"
                )
            try:
                rate = float(value)
            except ValueError:
                raise ValueError(f"fault {name}: rate {value!r} is not a number") from None
            if not (math.isfinite(rate) and 0.0 <= rate <= 1.0):
                raise ValueError(f"fault {name}: rate {value} is not between 0 and 1")
            rates[name] = rate
        return cls(rates)

    def rate(self, name: str) -> float:
        """The rate of fault ``name`` (0 when the plan does not name it)."""
        if name not in FAULT_NAMES:
            raise ValueError(f"unknown fault {name!r}")
        return self.rates.get(name, 0.0)

    def __str__(self) -> str:
        return ",".join(
            f"{name}={self.rates[name]:g}" for name in FAULT_NAMES if name in self.rates
        )


class EmulatedClock:
    """Seconds charged to each execution beyond the real time it took (thread-safe).

    Keys are execution ids (ARNs), as ``$$.Execution.Id`` holds them. A charge belongs to
    the execution's main path (``lane=None``: the states before and after a Map) or to a
    *lane*, one worker of a Map state running its iterations concurrently with the others:
    lanes overlap in time, so an execution's charged time is its main path's plus its
    slowest lane's, not the sum of every wait.
    """

    def __init__(self) -> None:
        self._charged: dict[str, dict[int | None, float]] = {}
        self._lock = threading.Lock()

    def charge(self, execution: str, seconds: float, lane: int | None = None) -> None:
        """Add ``seconds`` of emulated time to ``execution`` (on ``lane``, if given)."""
        with self._lock:
            lanes = self._charged.setdefault(execution, {})
            lanes[lane] = lanes.get(lane, 0.0) + seconds

    def charged(self, execution: str) -> float:
        """The seconds charged to ``execution`` so far: main path plus the slowest lane."""
        with self._lock:
            return _total(self._charged.get(execution, {}))

    def forget(self, execution: str) -> float:
        """Drop ``execution``'s account; returns what :meth:`charged` said."""
        with self._lock:
            return _total(self._charged.pop(execution, {}))


def _total(lanes: dict[int | None, float]) -> float:
    parallel = [seconds for lane, seconds in lanes.items() if lane is not None]
    return lanes.get(None, 0.0) + max(parallel, default=0.0)


class FaultInjector:
    """Injects a :class:`FaultPlan`'s faults into moto and keeps the emulated clock.

    Parameters
    ----------
    plan:
        The faults and their rates (a :class:`FaultPlan` or its ``NAME=RATE,...`` text).
    seed:
        Seed of the random generator that decides each injection (None: unpredictable).
    retry_scale:
        The fraction of each Step Functions ``Retry`` interval really slept.
    time_limit:
        An execution's emulated duration above which it counts as timed out.

    Attributes
    ----------
    injected:
        How many times each fault was injected (by name).
    clock:
        The per-execution emulated time.
    durations:
        Execution name → its emulated duration (seconds), for every execution the pipe
        asked :meth:`over_budget` about.
    """

    def __init__(
        self,
        plan: FaultPlan | str,
        *,
        seed: int | None = None,
        retry_scale: float = RETRY_SCALE,
        time_limit: float = EXPRESS_TIME_LIMIT,
    ) -> None:
        self.plan = FaultPlan.parse(plan) if isinstance(plan, str) else plan
        if not 0.0 <= retry_scale <= 1.0:
            raise ValueError(f"retry_scale {retry_scale!r} is not between 0 and 1")
        self.retry_scale = retry_scale
        self.time_limit = time_limit
        self.clock = EmulatedClock()
        self.injected: Counter[str] = Counter()
        self.durations: dict[str, float] = {}
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._paused = 0
        self._local = threading.local()

    # -- decisions ---------------------------------------------------------------------------
    def roll(self, name: str) -> bool:
        """Whether to inject fault ``name`` now (counted in :attr:`injected` when it is)."""
        rate = self.plan.rate(name)
        with self._lock:
            if self._paused or rate <= 0.0:
                return False
            hit = self._rng.random() < rate
            if hit:
                self.injected[name] += 1
            return hit

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Inject nothing for the duration (e.g. while a test reads what the stack wrote)."""
        with self._lock:
            self._paused += 1
        try:
            yield
        finally:
            with self._lock:
                self._paused -= 1

    # -- the emulated time budget ------------------------------------------------------------
    def emulated_seconds(self, execution: str, real_seconds: float) -> float:
        """An execution's duration as AWS would see it: real time plus what was charged."""
        return real_seconds + self.clock.charged(execution)

    def over_budget(self, execution: str, real_seconds: float) -> bool:
        """Whether ``execution`` would have passed the Express time limit on AWS.

        Forgets the execution's account (ask once, when it has ended).
        """
        emulated = real_seconds + self.clock.forget(execution)
        with self._lock:
            self.durations[execution.rsplit(":", 1)[-1]] = emulated
        if emulated > self.time_limit:
            log.warning(
                "execution %s took %.0f s of emulated time, past the %.0f s limit",
                execution.rsplit(":", 1)[-1],
                emulated,
                self.time_limit,
            )
            return True
        return False

    # -- the pipe's hook ---------------------------------------------------------------------
    def redeliver(self, queue_url: str, batch: list[dict[str, Any]]) -> int:
        """``duplicate-delivery``: queue a copy of each message of ``batch`` at the fault's rate.

        The copy (same body and message attributes) is a new entry of the queue, so it is
        received in a later batch, as SQS's at-least-once delivery may do. Returns how many
        copies were sent.
        """
        copies = [m for m in batch if self.roll("duplicate-delivery")]
        sqs = aws.client("sqs")
        for m in copies:
            kwargs: dict[str, Any] = {"QueueUrl": queue_url, "MessageBody": m["Body"]}
            if m.get("MessageAttributes"):
                kwargs["MessageAttributes"] = m["MessageAttributes"]
            sqs.send_message(**kwargs)
        return len(copies)

    # -- moto patches ------------------------------------------------------------------------
    @contextlib.contextmanager
    def installed(self) -> Iterator[FaultInjector]:
        """Patch moto (in process and its server in this process) for the duration."""
        from unittest import mock

        from moto.awslambda.models import LambdaFunction
        from moto.dynamodb.responses import DynamoHandler
        from moto.s3.responses import S3Response
        from moto.stepfunctions.parser.asl.component.common.retry import retrier_decl

        patches = [
            mock.patch.object(LambdaFunction, "invoke", self._lambda_invoke(LambdaFunction.invoke)),
            mock.patch.object(
                DynamoHandler, "call_action", self._dynamodb_call(DynamoHandler.call_action)
            ),
            mock.patch.object(S3Response, "get_object", self._s3_read(S3Response.get_object)),
            mock.patch.object(S3Response, "head_object", self._s3_read(S3Response.head_object)),
            mock.patch.object(
                retrier_decl.RetrierDecl,
                "_eval_body",
                self._retrier_body(retrier_decl.RetrierDecl._eval_body),
            ),
            mock.patch.object(retrier_decl, "time", self._retry_time(vars(retrier_decl)["time"])),
        ]
        with contextlib.ExitStack() as stack:
            for patch in patches:
                stack.enter_context(patch)
            yield self

    def _lambda_invoke(self, original: Callable[..., Any]) -> Callable[..., Any]:
        from moto.core.exceptions import JsonRESTError

        injector = self

        class TooManyRequests(JsonRESTError):
            code = 429

            def __init__(self) -> None:
                super().__init__("TooManyRequestsException", "Rate Exceeded.")

        def invoke(fn: Any, body: str, request_headers: Any, response_headers: Any) -> Any:
            if injector.roll("lambda-throttle"):
                raise TooManyRequests()
            if injector.roll("lambda-timeout"):
                timeout = float(getattr(fn, "timeout", None) or 3)
                event = _json_object(body)
                execution = event.get("execution")
                if isinstance(execution, str):
                    injector.clock.charge(execution, timeout)
                response_headers["x-amz-function-error"] = "Unhandled"
                return json.dumps(
                    {
                        "errorType": "Sandbox.Timedout",
                        "errorMessage": f"Task timed out after {timeout:.2f} seconds",
                    }
                ).encode()
            return original(fn, body, request_headers, response_headers)

        return invoke

    def _dynamodb_call(self, original: Callable[..., Any]) -> Callable[..., Any]:
        injector = self

        def call_action(handler: Any) -> Any:
            from moto.core.utils import camelcase_to_underscores

            action = camelcase_to_underscores(handler._get_action())
            if action in DYNAMODB_OPERATIONS and injector.roll("dynamodb-throttle"):
                # Both names DynamoDB uses for it, in turn (no second draw: a seed's
                # draws stay one per request).
                error = _DYNAMODB_THROTTLES[injector.injected["dynamodb-throttle"] % 2]
                body = json.dumps(
                    {
                        "__type": f"com.amazonaws.dynamodb.v20120810#{error}",
                        "message": "Throughput exceeds the current capacity of your table or "
                        "index (injected by the local stack).",
                    }
                )
                headers = {
                    "Content-Type": "application/x-amz-json-1.0",
                    "x-amzn-ErrorType": error,
                    # Step Functions' integration names the request id in the error's cause.
                    "x-amzn-RequestId": uuid.uuid4().hex.upper(),
                }
                return 400, headers, body
            return original(handler)

        return call_action

    def _s3_read(self, original: Callable[..., Any]) -> Callable[..., Any]:
        injector = self

        def read(handler: Any, *args: Any, **kwargs: Any) -> Any:
            if injector.roll("s3-slowdown"):
                body = (
                    '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
                    "<Message>Please reduce your request rate.</Message></Error>"
                )
                return 503, {"Content-Type": "application/xml"}, body
            return original(handler, *args, **kwargs)

        return read

    def _retrier_body(self, original: Callable[..., None]) -> Callable[..., None]:
        local = self._local

        def eval_body(retrier: Any, env: Any) -> None:
            # A retrier inside a Map iteration (a frame of the execution's environment) waits
            # on its worker's thread, in parallel with the other workers: its own lane.
            local.execution = _execution_id(env)
            local.lane = threading.get_ident() if _is_frame(env) else None
            try:
                original(retrier, env)
            finally:
                local.execution = local.lane = None

        return eval_body

    def _retry_time(self, previous: Any) -> Any:
        """A stand-in for ``time`` in moto's retrier: charge in full, sleep scaled down."""
        injector, local = self, self._local

        def sleep(seconds: float) -> None:
            slept = seconds * injector.retry_scale
            execution = getattr(local, "execution", None)
            if execution:
                injector.clock.charge(execution, seconds - slept, getattr(local, "lane", None))
            previous.sleep(slept)

        return SimpleNamespace(sleep=sleep)


def _json_object(body: Any) -> dict[str, Any]:
    try:
        value = json.loads(body) if body else {}
    except (TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _execution_id(env: Any) -> str | None:
    """The execution id (ARN) of an interpreter environment, from its context object."""
    try:
        value = env.states.context_object.context_object_data["Execution"]["Id"]
    except (AttributeError, KeyError, TypeError):
        return None
    return value if isinstance(value, str) else None


def _is_frame(env: Any) -> bool:
    is_frame = getattr(env, "is_frame", None)
    return bool(is_frame()) if callable(is_frame) else False
