"""dicom-pipeline: index the headers of DICOM objects stored in S3.

The domain library: header reading (:mod:`pipeline.header`), DICOM JSON
(:mod:`pipeline.dicomjson`), records (:mod:`pipeline.record`), coded failures
(:mod:`pipeline.errors`) and the command line (:mod:`pipeline.cli`).
"""

__version__ = "0.1.0"
