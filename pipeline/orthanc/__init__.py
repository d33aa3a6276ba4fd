"""Orthanc: its configuration for AWS and locally, the storage layout, the DICOMweb sender."""
