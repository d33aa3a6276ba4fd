"""One place for Powertools' logger, tracer and metrics, applied in the same order everywhere.

Logs carry keys, codes, counts and timings; never a DICOM element value.
"""

from __future__ import annotations

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit

__all__ = ["MetricUnit", "logger", "metrics", "tracer"]

SERVICE = "dicom-pipeline"

logger = Logger(service=SERVICE)
#: Only botocore is patched (its S3, DynamoDB and SQS calls become subsegments): the default,
#: every library the X-Ray SDK knows that happens to be installed, costs cold-start time for
#: nothing the handlers call.
tracer = Tracer(service=SERVICE, patch_modules=("botocore",))
metrics = Metrics(service=SERVICE, namespace="DicomPipeline")
