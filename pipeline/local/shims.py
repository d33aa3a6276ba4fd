"""The few patches moto needs to behave like AWS for this pipeline.

* Lambda: moto would run a function in Docker; we dispatch to the real handler in process,
  resolved from its handler string like the Lambda runtime does
  (:data:`pipeline.names.PARSE_HANDLER`).
* Step Functions' DynamoDB integration: AWS takes ``{"B": "<base64>"}`` in DynamoDB JSON
  and stores the decoded bytes; moto hands the base64 *text* to boto3, which encodes it
  again. We decode it first, so the table holds what AWS would.
"""

from __future__ import annotations

import base64
import contextlib
import importlib
import json
import threading
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
    """The attributes of a Lambda context object that Powertools reads."""

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

    def get_remaining_time_in_millis(self) -> int:
        return self._timeout_ms


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
def patched_moto(handlers: dict[str, str]) -> Iterator[list[dict[str, Any]]]:
    """Patch moto for the duration; yields a log of Lambda invocations (name, error).

    Parameters
    ----------
    handlers:
        Lambda function name → its handler string (``module.function``), imported at the
        first invocation, after the function's environment is in place (as in Lambda).
    """
    from moto.awslambda.models import LambdaFunction
    from moto.stepfunctions.parser.asl.component.state.exec.state_task.service import (
        state_task_service_dynamodb as sfn_ddb,
    )

    calls: list[dict[str, Any]] = []
    lock = threading.Lock()

    def invoke(
        self: LambdaFunction, body: str, request_headers: Any, response_headers: Any
    ) -> bytes:
        handler = resolve_handler(handlers[self.function_name])
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

    with (
        mock.patch.object(LambdaFunction, "invoke", invoke),
        mock.patch.object(sfn_ddb.StateTaskServiceDynamoDB, "_eval_service_task", eval_ddb),
    ):
        yield calls
