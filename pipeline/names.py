"""Names shared by the CDK app, the local stack and the tools: one place, no drift."""

from __future__ import annotations

from pathlib import Path

#: The workflow definition (Amazon States Language, JSONPath): the single source of truth.
WORKFLOW_FILE = Path(__file__).parent / "workflow" / "ingest.asl.json"
#: The parse Lambda's handler, as Lambda (and the local stack) resolve it.
PARSE_HANDLER = "lambdas.parse_batch.handler"
#: The reindex Distributed Map (a STANDARD state machine, deployed by the CDK app only).
REINDEX_WORKFLOW_FILE = Path(__file__).parent / "workflow" / "reindex.asl.json"
#: The Lambda each of its child executions calls with a batch of keys.
REINDEX_HANDLER = "lambdas.reindex_batch.handler"
#: Prefixes of the reports bucket: S3 Inventory reports, reindex run results (ResultWriter).
INVENTORY_PREFIX = "inventory/"
REINDEX_RESULTS_PREFIX = "reindex-results/"
#: Where ``dicom-pipeline export`` output goes on AWS: each run under a folder of its own
#: (``exports/run=<time>-<id>/``), and the Glue table's location switched to the newest.
EXPORT_PREFIX = "exports/"
#: The Glue table over the export (docs/operations.md's SQL reads ``FROM records``).
EXPORT_TABLE = "records"
#: The Glue table's location until the first export switches it: a folder no run writes to,
#: so the table reads no rows (never the base prefix: Athena would read every run under it).
EXPORT_EMPTY_PREFIX = EXPORT_PREFIX + "none/"
#: Attribute names of the metadata table.
TABLE_KEY = "s3_key"
TTL_ATTRIBUTE = "expires_at"
#: Offloaded DICOM JSON lives under this prefix of the image bucket.
SIDECAR_PREFIX = "dicom-json/"
#: Items too large to travel in the workflow's state (256 KiB) are staged under this prefix of
#: the image bucket for the workflow to read back; a lifecycle rule expires them after a day.
STAGING_PREFIX = "workflow-staging/"
#: The DLQ ledger: one item per (key, event order) sent to the DLQ, so a redelivered event
#: does not send a second message. Its key is (TABLE_KEY, ORDER_ATTRIBUTE).
ORDER_ATTRIBUTE = "event_order"
#: Ledger entries expire with the DLQ's messages (SQS keeps them at most 14 days).
DLQ_RETENTION_DAYS = 14
#: While a failure is being sent, its ledger entry is a claim: this attribute holds the SQS
#: message ID of the delivery sending it (the final entry, written after the send, has none).
#: Only that message may take the claim again (when it returns to the queue); another delivery
#: of the same event finds it and sends nothing, so two deliveries running at once send one
#: message (docs/workflow.md, "One DLQ message per failure").
CLAIM_ATTRIBUTE = "claimed_by"
#: Orthanc's prefix of the image bucket (its S3 plugin's ``RootPath``, without the slash):
#: Orthanc's task role may write and delete only here, and only here do ``.dcm`` objects
#: notify the ingest queue. Keys stored at the bucket's root before it existed are not
#: ingested (docs/operations.md, "Orthanc's prefix").
ORTHANC_PREFIX = "orthanc/"
#: The same as the S3 plugin's ``RootPath`` (and the local storage area's root path): without
#: the slash, which the plugin adds between it and the file name.
ORTHANC_ROOT_PATH = ORTHANC_PREFIX.rstrip("/")
#: Keys the pipeline indexes.
DICOM_SUFFIX = ".dcm"
#: The parse Lambda's memory (MB): one full vCPU (Lambda gives one at 1,769 MB), which keeps
#: the worst-case batch within half its timeout (``make bench``); the local stack runs the
#: handler with the same setting.
PARSE_FUNCTION_MEMORY_MB = 1769
#: The ingest queue moves a message to the DLQ after this many receives. A message comes back
#: after the queue's visibility timeout (6 minutes) each time the workflow hands it back
#: (a throttled or timed-out parse step, a dependency still unavailable after the workflow's
#: short retries): 10 receives give a throttled record about an hour to get through before the
#: workflow reports it as UNAVAILABLE (on its last receive, never as a raw notification).
#: The workflow reads it through the ``MaxReceiveCount`` substitution.
MAX_RECEIVE_COUNT = 10
#: EventBridge Pipes batching (records per workflow execution) and batching window.
PIPE_BATCH_SIZE = 10
PIPE_BATCH_WINDOW_SECONDS = 1


def workflow_definition(substitutions: dict[str, str]) -> str:
    """The ASL text with ``${Name}`` placeholders replaced, as CDK's substitutions do.

    Raises
    ------
    KeyError
        A placeholder has no value (or a value names no placeholder).
    """
    text = WORKFLOW_FILE.read_text(encoding="utf-8")
    for name, value in substitutions.items():
        placeholder = "${" + name + "}"
        if placeholder not in text:
            raise KeyError(f"the workflow has no placeholder {placeholder}")
        text = text.replace(placeholder, value)
    if "${" in text:
        start = text.index("${")
        raise KeyError(f"unsubstituted placeholder {text[start : text.index('}', start) + 1]}")
    return text
