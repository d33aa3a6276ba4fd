"""dicom-pipeline: index the headers of DICOM objects stored in S3.

Subpackages by concern: :mod:`pipeline.dicom` (sources, header reading, DICOM JSON,
records), :mod:`pipeline.workflow` (events, the batch step, table, DLQ, the workflow file),
:mod:`pipeline.local` (the local stack, the demo), :mod:`pipeline.ops` (audit, redrive,
reindex, export: the library the notebooks use); :mod:`pipeline.errors` (coded failures and
the command line's ``CommandError``), :mod:`pipeline.aws` (lazily created clients),
:mod:`pipeline.names` (names shared with the CDK app) and :mod:`pipeline.cli` (the command
line, one module per command).
"""

__version__ = "0.1.0"
