"""Which deployment the operations commands act on: the local stack or a deployed stack.

Every command reads ``.local/stack.json`` (what ``dicom-pipeline local up`` writes) unless it
is given another file (``--stack FILE``) or a deployed stack's name (``--aws-stack NAME``),
whose CloudFormation outputs name the same things (``Bucket`` for ``bucket`` and so on). For
the local stack, the AWS clients point at its moto server with its test credentials; for AWS
they use the caller's own settings (profile, region, credentials).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_STACK_FILE",
    "Target",
    "TargetError",
    "add_target_arguments",
    "resolve_target",
]

DEFAULT_STACK_FILE = Path(".local/stack.json")

#: stack.json member → the deployed stack's output that holds the same thing.
_OUTPUT_OF = {
    "bucket": "Bucket",
    "queue_url": "QueueUrl",
    "dlq_url": "DlqUrl",
    "table": "Table",
    "state_machine_arn": "StateMachineArn",
    "ledger_table": "LedgerTable",
    "orthanc_url": "OrthancUrl",
    "reindex_state_machine_arn": "ReindexStateMachineArn",
    "export_prefix": "ExportPrefix",
    "athena_workgroup": "AthenaWorkgroup",
    "glue_database": "GlueDatabase",
    "inventory_prefix": "InventoryPrefix",
}


class TargetError(Exception):
    """The target cannot be resolved (its message is one line for the user)."""


@dataclass(frozen=True)
class Target:
    """The resources of one deployment (``None`` where it has no such thing)."""

    bucket: str
    queue_url: str
    dlq_url: str
    table: str
    state_machine_arn: str | None = None
    ledger_table: str | None = None
    orthanc_url: str | None = None
    dicomweb_url: str | None = None
    orthanc_username: str | None = None
    orthanc_password: str | None = None
    reindex_state_machine_arn: str | None = None
    export_prefix: str | None = None
    athena_workgroup: str | None = None
    glue_database: str | None = None
    #: ``s3://`` prefix of the image bucket's daily S3 Inventory reports (AWS only).
    inventory_prefix: str | None = None
    #: The local stack's moto server (None on AWS).
    endpoint_url: str | None = None
    region: str | None = None
    #: "local" or the deployed stack's name.
    name: str = "local"

    @property
    def local(self) -> bool:
        """Whether this is the local stack (moto)."""
        return self.endpoint_url is not None

    def activate(self) -> None:
        """Point this process's AWS clients at the target (the local stack's moto server).

        For a deployed stack nothing changes: boto3 uses the caller's settings.
        """
        from pipeline import aws

        if self.endpoint_url is not None:
            os.environ["AWS_ENDPOINT_URL"] = self.endpoint_url
            os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
            os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
            os.environ.pop("AWS_PROFILE", None)
        if self.region is not None:
            os.environ["AWS_REGION"] = os.environ["AWS_DEFAULT_REGION"] = self.region
        aws.reset_clients()


def _from_mapping(values: dict[str, Any], **extra: Any) -> Target:
    known = {f.name for f in fields(Target)}
    missing = [k for k in ("bucket", "queue_url", "dlq_url", "table") if not values.get(k)]
    if missing:
        raise TargetError(f"the target does not name {', '.join(missing)}")
    return Target(**{k: v for k, v in values.items() if k in known}, **extra)


def resolve_target(stack_file: str | Path | None = None, aws_stack: str | None = None) -> Target:
    """The target of a command: ``aws_stack``'s outputs, else ``stack_file`` (or
    ``.local/stack.json``).

    Raises
    ------
    TargetError
        No such file or stack, or it lacks what every command needs.
    """
    if aws_stack:
        from botocore.exceptions import BotoCoreError, ClientError

        from pipeline import aws

        try:
            stacks = aws.client("cloudformation").describe_stacks(StackName=aws_stack)["Stacks"]
        except (ClientError, BotoCoreError) as exc:
            raise TargetError(f"cannot read the stack {aws_stack}: {type(exc).__name__}") from None
        outputs = {o["OutputKey"]: o["OutputValue"] for o in stacks[0].get("Outputs", [])}
        values: dict[str, str | None] = {
            member: outputs.get(output) for member, output in _OUTPUT_OF.items()
        }
        orthanc_url = values.get("orthanc_url")
        if orthanc_url:
            values["dicomweb_url"] = orthanc_url.rstrip("/") + "/dicom-web"
        return _from_mapping(values, name=aws_stack)
    path = Path(stack_file) if stack_file else DEFAULT_STACK_FILE
    if path.is_dir():
        raise TargetError(f"{path} is a folder: give the stack.json file (--stack FILE)")
    if not path.is_file():
        raise TargetError(
            f"no {path}: start the local stack (dicom-pipeline local up) or give --aws-stack NAME"
        )
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise TargetError(f"{path} is not JSON") from None
    if not isinstance(values, dict):
        raise TargetError(f"{path} is not a stack.json (a JSON object)")
    target = _from_mapping(values, name="local")
    if target.endpoint_url is not None and not _answers(target.endpoint_url):
        raise TargetError(
            f"the local stack {path} names ({target.endpoint_url}) is not running: start it "
            "with `dicom-pipeline local up` (a stack.json left by a run that was killed is "
            "replaced then)"
        )
    return target


def _answers(url: str, timeout: float = 2.0) -> bool:
    """Whether something accepts TCP connections at ``url``'s host and port."""
    import socket
    from urllib.parse import urlparse

    parsed = urlparse(url)
    if not parsed.hostname:
        return False
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def add_target_arguments(parser: Any) -> None:
    """``--stack FILE`` and ``--aws-stack NAME``, as every operations command takes them."""
    parser.add_argument(
        "--stack", default=str(DEFAULT_STACK_FILE), help="the local stack's stack.json"
    )
    parser.add_argument("--aws-stack", metavar="NAME", help="a deployed stack (its outputs)")
