"""Names and defaults of the CDK app, in one place (class constants, no logic)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Final

from pipeline.names import EXPORT_TABLE, PARSE_FUNCTION_MEMORY_MB
from pipeline.orthanc import authz

#: The repository root: ``cdk.json``, ``cdk.out``, ``pipeline/`` and ``lambdas/`` live here.
REPO_ROOT: Final = Path(__file__).resolve().parent.parent


class App:
    """The app and its stack."""

    #: Stack name prefix; the environment name is appended ("DicomPipeline-dev").
    STACK_PREFIX = "DicomPipeline"
    #: Cloud assembly directory, at the repository root.
    OUTDIR = REPO_ROOT / "cdk.out"
    #: Region when neither context ``region`` nor ``CDK_DEFAULT_REGION`` names one.
    DEFAULT_REGION = "eu-central-1"
    DEFAULT_ENVIRONMENT = "dev"
    #: Tag put on every resource.
    PROJECT_TAG = "dicom-pipeline"
    #: A syntactically valid ACM ARN used only when no certificate is configured, so that
    #: ``make synth`` works out of the box; a CloudFormation rule then refuses to deploy.
    EXAMPLE_CERTIFICATE_ARN = (
        "arn:aws:acm:{region}:111111111111:certificate/00000000-0000-0000-0000-000000000000"
    )


class Network:
    MAX_AZS = 2
    NAT_GATEWAYS = 1
    CIDR = "10.40.0.0/16"
    PUBLIC_MASK = 24
    APP_MASK = 22
    DATA_MASK = 24


class Logs:
    """CloudWatch Logs (one year, KMS-encrypted with the log archive key) and access logs."""

    #: S3 server access logs and ALB access logs are kept this long.
    ACCESS_LOG_DAYS = 365
    ALB_PREFIX = "alb"
    #: Step Functions log groups live under this prefix (see LogArchive.vended_log_group).
    VENDED_PREFIX = "/aws/vendedlogs/states/"
    IMAGE_BUCKET_PREFIX = "image-bucket/"


class ImageStore:
    NONCURRENT_VERSION_DAYS = 90
    ABORT_MULTIPART_DAYS = 7
    #: Staged workflow items (read back within one execution) expire after this many days.
    STAGING_DAYS = 1
    #: Replaced or deleted sidecars (DICOM headers: PHI) are kept this long as noncurrent.
    SIDECAR_NONCURRENT_DAYS = 1


class Orthanc:
    #: The image's repository on Docker Hub (pulled through the ECR cache, see ImageCache).
    IMAGE = "orthancteam/orthanc"
    #: Pinned default; override with context ``orthanc_image_tag``.
    IMAGE_TAG = "26.8.1"
    HTTP_PORT = 8042
    #: The health endpoint of the authorization plugin (pipeline/orthanc/authz.py).
    HEALTH_PORT = authz.HEALTH_PORT
    HEALTH_PATH = authz.HEALTH_PATH
    CPU = 1024
    MEMORY_MIB = 2048
    DESIRED_COUNT = 2
    MAX_COUNT = 4
    CPU_TARGET_PERCENT = 60
    REQUESTS_PER_TARGET = 500
    #: The users created in the generated secrets (``{"<user>": "<password>"}``): one
    #: administrator, one uploader (STOW-RS only). More can be added to either secret.
    ADMIN_USER = "admin"
    UPLOADER_USER = "uploader"
    #: Where the container writes the RDS root CA it gets as a parameter (docs/security.md).
    RDS_CA_BUNDLE_PATH = "/tmp/rds-ca-bundle.pem"
    #: Where the container writes the authorization plugin it gets as parameters.
    AUTHZ_SCRIPT_PATH = "/tmp/dicom-pipeline-authz.py"
    #: An SSM Standard parameter holds at most 4 KB: the plugin is delivered in parts.
    PARAMETER_CHUNK_CHARS = 4000
    #: SSM parameter path prefix for the configuration (environment name appended).
    PARAMETER_PREFIX = "/dicom-pipeline"
    #: The container's health check (liveness): GET /livez of the authorization plugin, which
    #: answers without asking Orthanc's index database, so a database failover does not make
    #: ECS replace every task. The load balancer keeps the database-backed /healthz.
    LIVENESS_PATH = authz.LIVENESS_PATH
    LIVENESS_COMMAND = (
        'python3 -c "import urllib.request; urllib.request.urlopen('
        f"'http://127.0.0.1:{authz.HEALTH_PORT}{authz.LIVENESS_PATH}', timeout=5)\""
    )
    #: Load balancer health check: the plugin's endpoint, healthy only when Orthanc answered.
    ALB_HEALTHY_CODES = "200"


class ImageCache:
    """The ECR pull-through cache rule for Docker Hub (cdk/components/image_cache.py)."""

    UPSTREAM_REGISTRY = "docker-hub"
    UPSTREAM_URL = "registry-1.docker.io"
    #: ECR reads upstream credentials only from secrets named with this prefix.
    SECRET_PREFIX = "ecr-pullthroughcache/"
    #: Used only when no secret is configured, so ``make synth`` works; a CloudFormation
    #: rule then refuses to deploy.
    EXAMPLE_SECRET_ARN = (
        "arn:aws:secretsmanager:{region}:111111111111:secret:ecr-pullthroughcache/docker-hub-AbCdEf"
    )
    #: Default repository prefix: ``dicom-pipeline-<environment>`` (ECR allows 2-30 characters).
    PREFIX_TEMPLATE = "dicom-pipeline-{environment}"


class Waf:
    """AWS WAF in front of the load balancer (cdk/components/web_firewall.py)."""

    #: Sizing of the default (docs/security.md, "Sizing the rate limit"): a site sends
    #: through one address (its NAT) up to this many studies in one window ...
    SITE_STUDIES_PER_WINDOW = 5
    #: ... of up to this many instances (a thin-slice CT), one instance per STOW-RS request
    #: (how most modalities and PACS forward) ...
    STUDY_INSTANCES = 2000
    #: ... with this much room for QIDO/WADO requests, retries and a burst.
    HEADROOM = 2
    #: Requests per client IP in the evaluation window before it is blocked (context
    #: ``waf_rate_limit``): the sizing above, 20,000 (about 67 a second on average).
    RATE_LIMIT = SITE_STUDIES_PER_WINDOW * STUDY_INSTANCES * HEADROOM
    RATE_WINDOW_SECONDS = 300
    #: AWS WAF's own bounds for a rate-based rule's limit.
    MIN_RATE_LIMIT = 10
    MAX_RATE_LIMIT = 2_000_000_000
    #: WAF writes to CloudWatch Logs only into log groups named with this prefix.
    LOG_GROUP_PREFIX = "aws-waf-logs-"


class Database:
    NAME = "orthanc"
    USERNAME = "orthanc"
    PORT = 5432
    INSTANCE_TYPE = "t4g.medium"
    #: PostgreSQL's full version (context ``db_engine_version``): a major version alone
    #: ("17") is deprecated for new instances (cfn-lint W3691, a deploy would fail). 17.9 is
    #: the newest 17.x that aws-cdk-lib 2.275 names and cfn-lint 1.58's RDS data lists as
    #: supported; minor upgrades then follow ``auto_minor_version_upgrade``.
    ENGINE_VERSION = "17.9"
    ALLOCATED_GB = 20
    MAX_ALLOCATED_GB = 200
    BACKUP_DAYS = 14
    MIN_BACKUP_DAYS = 7
    ROTATION_DAYS = 30
    #: The server certificate's CA; Orthanc trusts only its root (cdk/rds_ca.py).
    CA_CERTIFICATE = "rds-ca-rsa2048-g1"
    MULTI_AZ = True
    #: Characters left out of generated passwords: they would need quoting somewhere
    #: (JSON, libpq keyword strings, URIs, shells).
    PASSWORD_EXCLUDE = " %+~`#$&*()|[]{}:;<>?!'/@\"\\"


class Rotation:
    """The redeploy of Orthanc after the database password rotated (RotationRedeploy)."""

    RETRY_SECONDS = 10
    RETRY_ATTEMPTS = 3
    TIMEOUT_MINUTES = 10


class Ingestion:
    #: Reserved concurrency of the parse Lambda (context ``parse_reserved_concurrency``): the
    #: bound on how many batches are parsed at once. 100 batches of 10 at about 1.5 s each
    #: ingest about 670 objects/s, about 1,900 write request units/s for the measured mean
    #: item (2.9 WRU): under half of what a new on-demand table takes at once (4,000 WRU/s),
    #: and 100 of the default account quota of 1,000 (docs/capacity.md).
    PARSE_RESERVED_CONCURRENCY = 100
    #: The parse Lambda: one invocation per Pipes batch. Lambda gives one full vCPU at
    #: FULL_VCPU_MEMORY_MB and proportionally less below; the parse is GIL-bound, so more
    #: does not help. One full vCPU keeps the worst-case batch within half the timeout
    #: (``make bench``, docs/performance.md "CPU of a batch"). The local stack uses the same.
    FUNCTION_MEMORY_MB = PARSE_FUNCTION_MEMORY_MB
    #: The handler hands back what it cannot finish before it (ParseHeaders' TimeoutSeconds,
    #: 65 s, leaves room for the invocation's start); the workflow's worst case, 224 s
    #: (docs/workflow.md, computed by pipeline.workflow.budget), assumes it.
    FUNCTION_TIMEOUT_SECONDS = 60
    #: The memory at which Lambda gives one full vCPU (AWS Lambda documentation).
    FULL_VCPU_MEMORY_MB = 1769
    #: How much slower than one core of the bench machine Lambda's arm64 vCPU is assumed to
    #: be on the pure-Python parse (an assumption, not measured): ``make bench`` multiplies
    #: the measured CPU seconds by it.
    CPU_SAFETY_FACTOR = 1.5
    #: An Express execution lasts at most 5 minutes; our worst case stays under 240 s.
    EXPRESS_MAX_SECONDS = 300
    #: Longer than an execution's worst case (224 s): a batch is never visible again while
    #: it is processed.
    QUEUE_VISIBILITY_SECONDS = 360
    DLQ_RETENTION_DAYS = 14
    SERVICE_NAME = "dicom-pipeline"
    METRICS_NAMESPACE = "DicomPipeline"


class Lambda:
    """The Python runtime and how its code is bundled (see :mod:`cdk.bundling`)."""

    PYTHON_VERSION = "3.14"
    #: The wheelhouse folder's platform (``.local/wheels/<PLATFORM>-cp314``).
    PLATFORM = "manylinux2014_aarch64"
    #: Wheel platform tags the bundle accepts, the first preferred: manylinux2014 (glibc
    #: 2.17) as before, then every ``manylinux_2_x`` up to 2.28, which the Lambda's Amazon
    #: Linux 2023 (glibc 2.34) runs; some packages publish arm64 wheels for 2.28 only. pip
    #: expands no ``manylinux_2_x`` tag to older ones, so each is listed.
    PLATFORMS: ClassVar[tuple[str, ...]] = (
        PLATFORM,
        *(f"manylinux_2_{minor}_aarch64" for minor in range(28, 17, -1)),
    )
    WHEELHOUSE = REPO_ROOT / ".local" / "wheels"
    #: Distributions the Lambda Python runtime already ships: not bundled.
    RUNTIME_PROVIDED = (
        "boto3",
        "botocore",
        "s3transfer",
        "jmespath",
        "urllib3",
        "python-dateutil",
        "six",
    )
    #: Extras the deployed handler needs beyond the project's own pins (the Powertools
    #: tracer imports the X-Ray SDK at cold start when tracing is on).
    EXTRAS: ClassVar[dict[str, str]] = {"aws-lambda-powertools": "tracer"}


class Monitoring:
    DLQ_DEPTH_THRESHOLD = 0
    QUEUE_AGE_SECONDS = 900
    PERIOD_MINUTES = 5


class Inventory:
    """The daily S3 Inventory of the image bucket (cdk/components/inventory.py)."""

    #: The inventory configuration's ID: S3 writes under ``<prefix><source bucket>/<ID>/``.
    ID = "daily-current"
    #: Fields besides Bucket and Key, as ``pipeline/ops/audit/bucket.py`` reads them (CSV).
    OPTIONAL_FIELDS = ("Size", "LastModifiedDate", "ETag")
    #: Inventory reports (and reindex run results) are kept this long.
    REPORT_DAYS = 30
    #: Server access logs of the reports bucket, under this prefix of the access-log bucket.
    ACCESS_LOG_PREFIX = "reports-bucket/"


class Reindex:
    """The reindex Distributed Map (cdk/components/reindex_map.py, docs/operations.md)."""

    #: Keys per child execution (one Lambda invocation: one BatchGetItem per 100 keys).
    ITEMS_PER_BATCH = 100
    #: Child executions at once: each sends up to ITEMS_PER_BATCH messages to the ingest queue,
    #: then waits while the queue is deeper than the threshold. 10 enqueue about 1,700 keys/s
    #: (assumed 0.6 s per child), 2.5 times what the default parse concurrency ingests
    #: (about 670 objects/s), and overshoot the threshold by at most 1,000 messages
    #: (docs/capacity.md).
    MAX_CONCURRENCY = 10
    #: The reindex function's reserved (and maximum) concurrency: one per child execution.
    FUNCTION_RESERVED_CONCURRENCY = MAX_CONCURRENCY
    #: A run fails once more than this share of its child executions failed.
    TOLERATED_FAILURE_PERCENT = 5
    FUNCTION_MEMORY_MB = 512
    #: The function waits for room in the queue for up to this minus its send margin (10 s).
    FUNCTION_TIMEOUT_SECONDS = 50
    #: The child's Task TimeoutSeconds: above the function's timeout, so a function timeout
    #: is reported as the function's error; 3 attempts x 55 s + 15 s + 30 s of backoff = 210 s,
    #: inside the 240 s every Express execution must end in (docs/workflow.md).
    TASK_TIMEOUT_SECONDS = 55
    #: How long one run may take: 10 million objects at the assumed rate, twice over.
    TIMEOUT_HOURS = 24


class Analytics:
    """The Glue table over the export prefix and the Athena workgroup (analytics.py)."""

    #: The Glue table (docs/operations.md's SQL reads ``FROM records``).
    TABLE = EXPORT_TABLE
    #: Query results expire after this many days.
    RESULT_DAYS = 30
    #: A query that would scan more than this is cancelled (10 GiB).
    BYTES_SCANNED_CUTOFF = 10 * 1024**3
    #: Replaced export files (noncurrent versions) are kept this long.
    EXPORT_NONCURRENT_DAYS = 7
    EXPORTS_ACCESS_LOG_PREFIX = "exports-bucket/"
    RESULTS_ACCESS_LOG_PREFIX = "athena-results-bucket/"
    #: Columns named in the table besides the pipeline's (others: a crawler or by hand).
    DICOM_COLUMNS = (
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "SOPInstanceUID",
        "SOPClassUID",
        "Modality",
        "StudyDate",
        "Manufacturer",
        "PatientID",
    )
