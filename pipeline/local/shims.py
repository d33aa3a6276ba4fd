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
"""

from __future__ import annotations

import base64
import contextlib
import importlib
import json
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from unittest import mock

__all__ = ["FakeLambdaContext", "patched_moto", "resolve_handler"]

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
        self.memory_limit_in_mb = 1024
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
