"""The few patches moto needs to behave like AWS for this pipeline.

* Lambda: moto would run a function in Docker; we dispatch to the real handler in process,
  resolved from its handler string like the Lambda runtime does
  (:data:`pipeline.names.PARSE_HANDLER`). Each patched session is a new deployment: before
  its first invocation the handler module's ``cold_start()`` (if it has one) forgets what a
  warm sandbox would keep, such as settings read from the environment.
* Step Functions' DynamoDB integration: AWS takes ``{"B": "<base64>"}`` in DynamoDB JSON
  and stores the decoded bytes; moto hands the base64 *text* to boto3, which encodes it
  again. We decode it first, so the table holds what AWS would.
* Step Functions' AWS SDK integration: S3 ``GetObject`` answers its ``Body`` as text on AWS;
  moto leaves boto3's stream in the state. We read it into text.
* DynamoDB is stricter on AWS than in moto: an attribute that is a key of a global secondary
  index must have the type the table declares for it (``S`` here), be non-empty and at most
  2,048 (partition) or 1,024 (sort key) bytes. moto stores a list or an empty string there;
  we reject the write with AWS's ``ValidationException``, so tests see what AWS would do.

:func:`tuned_moto` (the local stack's default) removes the costs moto adds that AWS does not
have, without changing what any call answers: see its docstring. :class:`MotoExecutions`
reads finished executions from moto's Step Functions backend in this process, for the pipe.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import importlib
import json
import marshal
import sys
import threading
import time
import types
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any
from unittest import mock

from pipeline.names import PARSE_FUNCTION_MEMORY_MB

if TYPE_CHECKING:
    from pipeline.local.loopback import Loopback

__all__ = ["FakeLambdaContext", "MotoExecutions", "patched_moto", "resolve_handler", "tuned_moto"]

Handler = Callable[[dict[str, Any], Any], Any]


def resolve_handler(spec: str) -> Handler:
    """Import ``package.module.function`` the way the Lambda runtime resolves a handler."""
    module_name, _, attr = spec.rpartition(".")
    handler: Handler = getattr(importlib.import_module(module_name), attr)
    return handler


class FakeLambdaContext:
    """The attributes of a Lambda context object that Powertools reads; the remaining time
    counts down from its creation (the invocation's start), as Lambda's does."""

    def __init__(self, function_name: str, timeout_ms: int = 60_000) -> None:
        self.function_name = function_name
        self.function_version = "$LATEST"
        self.memory_limit_in_mb = PARSE_FUNCTION_MEMORY_MB
        self.invoked_function_arn = (
            f"arn:aws:lambda:us-east-1:123456789012:function:{function_name}"
        )
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = "local"
        self._timeout_ms = timeout_ms
        self._started = time.monotonic()

    def get_remaining_time_in_millis(self) -> int:
        elapsed_ms = int((time.monotonic() - self._started) * 1000)
        return max(0, self._timeout_ms - elapsed_ms)


def _decode_binary(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"B"} and isinstance(value["B"], str):
            return {"B": base64.b64decode(value["B"])}
        if set(value) == {"BS"} and isinstance(value["BS"], list):
            return {"BS": [base64.b64decode(v) if isinstance(v, str) else v for v in value["BS"]]}
        return {k: _decode_binary(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode_binary(v) for v in value]
    return value


@contextlib.contextmanager
def patched_moto(
    handlers: dict[str, str], notifications: list[str] | None = None
) -> Iterator[list[dict[str, Any]]]:
    """Patch moto for the duration; yields a log of Lambda invocations (name, error).

    Parameters
    ----------
    handlers:
        Lambda function name → its handler string (``module.function``), imported at the
        first invocation, after the function's environment is in place (as in Lambda).
    notifications:
        When given, the name of every S3 event record (``ObjectCreated:Put``…, or
        ``s3:TestEvent``) moto sends to a queue is appended to it: what the pipeline must
        account for, whoever wrote the objects.
    """
    from moto.awslambda.models import LambdaFunction
    from moto.stepfunctions.parser.asl.component.state.exec.state_task.service import (
        state_task_service_dynamodb as sfn_ddb,
    )

    calls: list[dict[str, Any]] = []
    lock = threading.Lock()
    warm: set[str] = set()

    def invoke(
        self: LambdaFunction, body: str, request_headers: Any, response_headers: Any
    ) -> bytes:
        handler = resolve_handler(handlers[self.function_name])
        with lock:
            cold = self.function_name not in warm
            warm.add(self.function_name)
        if cold:
            hook = getattr(sys.modules[handler.__module__], "cold_start", None)
            if callable(hook):
                hook()
        event = json.loads(body) if body else {}
        try:
            result = handler(event, FakeLambdaContext(self.function_name))
        except Exception as exc:  # surfaces to the workflow as the error name, like AWS
            response_headers["x-amz-function-error"] = "Unhandled"
            with lock:
                calls.append({"function": self.function_name, "error": type(exc).__name__})
            return json.dumps(
                {"errorType": type(exc).__name__, "errorMessage": "handler raised"}
            ).encode()
        with lock:
            calls.append({"function": self.function_name, "error": None})
        return json.dumps(result).encode()

    from moto.dynamodb.exceptions import MockValidationException
    from moto.dynamodb.models.table import Table
    from moto.stepfunctions.parser.asl.component.state.exec.state_task.service import (
        state_task_service_aws_sdk as sfn_sdk,
    )

    original = sfn_ddb.StateTaskServiceDynamoDB._eval_service_task

    def eval_ddb(
        self: Any,
        env: Any,
        resource_runtime_part: Any,
        normalised_parameters: dict[str, Any],
        *a: Any,
        **kw: Any,
    ) -> Any:
        return original(
            self, env, resource_runtime_part, _decode_binary(normalised_parameters), *a, **kw
        )

    original_sdk = sfn_sdk.StateTaskServiceAwsSdk._eval_service_task

    def eval_sdk(self: Any, env: Any, *a: Any, **kw: Any) -> Any:
        result = original_sdk(self, env, *a, **kw)
        response = env.stack[-1] if env.stack else None
        if isinstance(response, dict) and hasattr(response.get("Body"), "read"):
            response["Body"] = response["Body"].read().decode("utf-8")
        return result

    from moto.s3 import notifications as s3_notifications

    original_send = s3_notifications._send_sqs_message

    def counted_send(account_id: str, event_body: Any, *a: Any, **kw: Any) -> None:
        if notifications is not None and isinstance(event_body, dict):
            with lock:
                if event_body.get("Event") == "s3:TestEvent":
                    notifications.append("s3:TestEvent")
                for record in event_body.get("Records") or []:
                    notifications.append(str(record.get("eventName")))
        original_send(account_id, event_body, *a, **kw)

    original_put = Table.put_item

    def strict_put(self: Table, item_attrs: dict[str, Any], *a: Any, **kw: Any) -> Any:
        _check_index_keys(self, item_attrs, MockValidationException)
        return original_put(self, item_attrs, *a, **kw)

    with (
        mock.patch.object(LambdaFunction, "invoke", invoke),
        mock.patch.object(sfn_ddb.StateTaskServiceDynamoDB, "_eval_service_task", eval_ddb),
        mock.patch.object(sfn_sdk.StateTaskServiceAwsSdk, "_eval_service_task", eval_sdk),
        mock.patch.object(Table, "put_item", strict_put),
        mock.patch.object(s3_notifications, "_send_sqs_message", counted_send),
    ):
        yield calls


#: DynamoDB's limits on index key values, in bytes: partition key, sort key.
_KEY_LIMITS = {"HASH": 2048, "RANGE": 1024}


def _check_index_keys(table: Any, item: dict[str, Any], error: type[Exception]) -> None:
    """Reject ``item`` as AWS does when a GSI key attribute is of the wrong type or size."""
    declared = {a["AttributeName"]: a["AttributeType"] for a in table.attr}
    for index in table.global_indexes:
        for element in index.schema:
            name = element["AttributeName"]
            if name not in item:
                continue
            ((actual, value),) = item[name].items()
            expected = declared.get(name)
            if actual != expected:
                raise error(
                    "One or more parameter values were invalid: Type mismatch for Index Key "
                    f"{name} Expected: {expected} Actual: {actual} IndexName: {index.name}"
                )
            if isinstance(value, str) and not value:
                raise error(
                    "One or more parameter values are not valid. A value specified for a "
                    "secondary index key is not supported. The AttributeValue for a key "
                    f"attribute cannot contain an empty string value. IndexName: "
                    f"{index.name}, IndexKey: {name}"
                )
            size = len(value.encode("utf-8")) if isinstance(value, str) else len(str(value))
            if size > _KEY_LIMITS[element["KeyType"]]:
                raise error(
                    "One or more parameter values were invalid: Size of "
                    f"{element['KeyType'].lower()} key exceeded: {name} IndexName: {index.name}"
                )


# -- performance: moto without its quadratic and repeated work ---------------------------------


def _fast_deepcopy(value: Any, memo: Any = None) -> Any:
    """``copy.deepcopy``, through ``marshal`` when it can (4-7x faster on a state's data).

    ``marshal`` writes only the exact built-in types (dict, list, tuple, str, numbers, bool,
    None, bytes) and keeps shared references shared, as ``deepcopy`` does; anything else (a
    ``datetime`` in the context object, a subclass) raises and goes to ``copy.deepcopy``.
    """
    if type(value) in _IMMUTABLE:
        return value
    if memo is None:
        with contextlib.suppress(ValueError):
            return marshal.loads(marshal.dumps(value))
    return copy.deepcopy(value, memo)


_IMMUTABLE = frozenset({str, int, float, bool, type(None), bytes})

#: moto's Step Functions modules that build a boto3 client per Task (those our ASL file uses).
_SFN_CLIENT_MODULES = (
    "moto.stepfunctions.parser.asl.component.state.exec.state_task.lambda_eval_utils",
    "moto.stepfunctions.parser.asl.component.state.exec.state_task.service."
    "state_task_service_dynamodb",
    "moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service_sqs",
    "moto.stepfunctions.parser.asl.component.state.exec.state_task.service."
    "state_task_service_aws_sdk",
)

#: moto's Step Functions modules that deep-copy (``import copy``), most on every path evaluation.
_SFN_COPYING_MODULES = tuple(
    f"moto.stepfunctions.parser.{name}"
    for name in (
        "asl.component.common.string.string_expression",
        "asl.component.common.path.result_path",
        "asl.component.state.exec.state_map.state_map",
        "asl.component.state.exec.state_map.iteration.job",
        "asl.component.state.exec.state_task.service.state_task_service",
        "asl.component.state.exec.state_parallel.state_parallel",
        "asl.component.state.exec.execute_state",
        "asl.eval.states",
        "asl.eval.event.event_manager",
        "asl.eval.environment",
    )
)


@contextlib.contextmanager
def tuned_moto(loopback: Loopback | None = None) -> Iterator[None]:
    """Patch moto's costs away for the duration; every call answers what it answered before.

    With ``loopback`` (moto's server in this process), the Step Functions integrations'
    clients are attached to it: their calls are served in process, not over loopback HTTP.

    Measured with ``tests/bench/bench_local_throughput.py --profile`` (docs/performance.md):

    * Step Functions parses the definition with ANTLR at every execution (~60 ms for ours):
      the parse tree is kept per definition text and only turned into (fresh) evaluation
      components per execution, so no execution shares state with another.
    * Every service integration Task builds a new boto3 client (~5 ms of CPU each, a third of
      a batch's): clients are kept per (region, service, endpoint), as any AWS SDK user does
      (boto3 clients are thread-safe).
    * Every JSONPath is parsed again at every evaluation (jsonpath-ng, ~0.3 ms each, ~80 per
      batch): parsed paths are cached (they are immutable).
    * Every path evaluation deep-copies the state (``copy.deepcopy`` of the batch and its
      parse results): the copies stay, made through ``marshal`` (:func:`_fast_deepcopy`).
    * DynamoDB recomputes an item's whole size for each attribute it adds (quadratic in the
      attribute count, ~100 attributes here): the size is checked once, against the same
      limit, before the item is built.
    * SQS computes every queue attribute three times per attribute asked for, each count a
      pass over all messages with a ``datetime`` per message, and once more per message
      received (its retention period): attributes are computed once per call and message
      times read from ``time.time()`` (the same clock).
    * moto's server lists its own package directory (a ``stat`` per service, ~150) on every
      request to find the service a host names: the list is read once.
    * SQS is not thread-safe: a delete rebuilding the message list while S3 appends a
      notification can lose the notification, and two concurrent receives can take the same
      message. Deletes and receives hold the queue's own message lock, as sends already do.
    """
    with contextlib.ExitStack() as stack:
        patches = (*_step_functions_patches(loopback), *_dynamodb_patches(), *_sqs_patches())
        for patch in patches:
            stack.enter_context(patch)
        yield


_Patch = Any  # what mock.patch.object returns


def _step_functions_patches(loopback: Loopback | None = None) -> list[_Patch]:
    from functools import lru_cache

    from moto import backends
    from moto.stepfunctions.parser.asl.parse import asl_parser
    from moto.stepfunctions.parser.asl.parse.preprocessor import Preprocessor
    from moto.stepfunctions.parser.asl.utils import boto_client, json_path

    parse_asl = asl_parser.AmazonStateLanguageParser.parse
    trees: dict[str, Any] = {}
    lock = threading.Lock()

    def cached_parse(definition: str) -> tuple[Any, Any]:
        with lock:
            tree = trees.get(definition)
        if tree is None:
            program, tree = parse_asl(definition)  # raises on a bad definition, uncached
            with lock:
                trees[definition] = tree
            return program, tree
        return Preprocessor().visit(tree), tree

    clients: dict[tuple[Any, ...], Any] = {}
    new_client = boto_client.boto_client_for

    def cached_client(region: str, service: str, state_credentials: Any = None) -> Any:
        # The endpoint (in process or moto's server) is decided per call, as moto does.
        stubbed = boto_client.botocore_stubber.enabled  # type: ignore[attr-defined]
        key = (region, service, stubbed, boto_client.moto_server_port())  # type: ignore[attr-defined]
        with lock:
            if key not in clients:
                made = new_client(region, service, state_credentials)
                if loopback is not None and not stubbed:
                    loopback.attach(made)
                clients[key] = made
            return clients[key]

    fast_copy = types.SimpleNamespace(deepcopy=_fast_deepcopy, copy=copy.copy)
    modules = tuple(backends.list_of_moto_modules())
    return [
        *(
            mock.patch.object(importlib.import_module(name), "copy", fast_copy)
            for name in _SFN_COPYING_MODULES
        ),
        *(
            mock.patch.object(importlib.import_module(name), "boto_client_for", cached_client)
            for name in _SFN_CLIENT_MODULES
        ),
        mock.patch.object(
            asl_parser.AmazonStateLanguageParser, "parse", staticmethod(cached_parse)
        ),
        mock.patch.object(
            json_path,
            "parse",
            lru_cache(maxsize=4096)(json_path.parse),  # type: ignore[attr-defined]
        ),
        mock.patch.object(backends, "list_of_moto_modules", lambda: modules),
    ]


def _dynamodb_patches() -> list[_Patch]:
    from moto.dynamodb.exceptions import ItemSizeTooLarge
    from moto.dynamodb.models import dynamo_type
    from moto.dynamodb.models.utilities import bytesize

    def item_init(self: Any, hash_key: Any, range_key: Any, attrs: dict[str, Any]) -> None:
        self.hash_key = hash_key
        self.range_key = range_key
        values = {key: dynamo_type.DynamoType(value) for key, value in attrs.items()}
        # moto checks the running total at each attribute; sizes are not negative, so the
        # total decides alike.
        total = sum(bytesize(k) + v.size() for k, v in values.items())
        if total > 405000:
            raise ItemSizeTooLarge
        self.attrs = dynamo_type.LimitedSizeDict(values)

    return [mock.patch.object(dynamo_type.Item, "__init__", item_init)]


def _sqs_patches() -> list[_Patch]:
    from moto.sqs import models as sqs
    from moto.sqs.exceptions import InvalidAttributeName

    def visible(self: Any) -> bool:
        return bool(time.time() * 1000.0 > self.visible_at)

    def delayed(self: Any) -> bool:
        return bool(time.time() * 1000.0 < self.delayed_until)

    def get_queue_attributes(self: Any, queue_name: str, attribute_names: list[str]) -> Any:
        queue = self.get_queue(queue_name)
        if not attribute_names:
            return {}
        valid = ["All", *queue.BASE_ATTRIBUTES, *queue.FIFO_ATTRIBUTES, *queue.KMS_ATTRIBUTES]
        invalid = next((n for n in attribute_names if n not in valid), None)
        if invalid or invalid == "":
            raise InvalidAttributeName(invalid)
        every = queue.attributes
        if "All" in attribute_names:
            return every
        return {n: every[n] for n in attribute_names if every.get(n) is not None}

    def retained(self: Any, queue_name: str, message: Any) -> bool:
        period = self.get_queue(queue_name).message_retention_period
        return bool(period + message.sent_timestamp / 1000 > time.time())

    original_delete = sqs.Queue.delete_message
    original_receive = sqs.SQSBackend.receive_message

    def locked_delete(self: Any, receipt_handle: str) -> None:
        with self._messages_lock:
            original_delete(self, receipt_handle)

    def locked_receive(self: Any, queue_name: str, *a: Any, **kw: Any) -> Any:
        with self.get_queue(queue_name)._messages_lock:
            return original_receive(self, queue_name, *a, **kw)

    backend = sqs.SQSBackend
    return [
        mock.patch.object(sqs.Message, "visible", property(visible)),
        mock.patch.object(sqs.Message, "delayed", property(delayed)),
        mock.patch.object(backend, "get_queue_attributes", get_queue_attributes),
        mock.patch.object(backend, "is_message_valid_based_on_retention_period", retained),
        mock.patch.object(sqs.Queue, "delete_message", locked_delete),
        mock.patch.object(backend, "receive_message", locked_receive),
    ]


class MotoExecutions:
    """Finished Step Functions executions, read from moto's backend in this process.

    What the pipe otherwise learns through the API (``DescribeExecution`` polled,
    ``GetExecutionHistory`` serialized and parsed), answered in place: :meth:`wait` returns
    when the execution ends (moto signals it) with what ``DescribeExecution`` would answer,
    and :meth:`history` is the execution's event list as moto holds it (not copied: read it,
    never change it). Works for moto in process and for moto's threaded server alike (both
    live in this process). Use within :meth:`installed`.
    """

    def __init__(self) -> None:
        self._ended: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def _event(self, arn: str) -> threading.Event:
        with self._lock:
            return self._ended.setdefault(arn, threading.Event())

    @contextlib.contextmanager
    def installed(self) -> Iterator[MotoExecutions]:
        """Be told by moto when an execution ends."""
        from moto.stepfunctions.parser.backend import execution as sfn_execution

        comm = sfn_execution.BaseExecutionWorkerCommunication
        original = comm.terminated

        def terminated(worker: Any) -> None:
            try:
                original(worker)
            finally:
                self._event(worker.execution.exec_arn).set()

        with mock.patch.object(comm, "terminated", terminated):
            yield self

    @staticmethod
    def _execution(arn: str) -> Any:
        from moto.stepfunctions.parser.models import stepfunctions_parser_backends

        # arn:aws:states:REGION:ACCOUNT:execution:MACHINE:NAME
        _, _, _, region, account, *_ = arn.split(":")
        return stepfunctions_parser_backends[account][region].describe_execution(arn)

    def wait(self, arn: str, timeout: float) -> dict[str, Any]:
        """What ``DescribeExecution`` answers once the execution ended (or at ``timeout``)."""
        ended = self._event(arn)
        deadline = time.monotonic() + timeout
        try:
            while True:
                # Also look now and then: an execution whose program raised never signals.
                ended.wait(min(0.5, max(0.0, deadline - time.monotonic())))
                described: dict[str, Any] = dict(self._execution(arn).to_describe_output())
                status = described["status"]
                described["status"] = str(getattr(status, "value", status))
                if described["status"] != "RUNNING" or time.monotonic() >= deadline:
                    return described
        finally:
            with self._lock:
                self._ended.pop(arn, None)

    def history(self, arn: str) -> list[dict[str, Any]]:
        """The execution's history events, as ``GetExecutionHistory`` lists them."""
        env = self._execution(arn).exec_worker.env
        events: list[dict[str, Any]] = list(env.event_manager._history_event_list)
        return events
