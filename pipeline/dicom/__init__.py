"""DICOM objects: byte sources (files, ranged S3 reads), header reading, DICOM JSON, records.

:func:`pipeline.dicom.parse.parse` is the one call from a source to its DICOM JSON and record.
"""
