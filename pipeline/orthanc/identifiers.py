"""Orthanc's identifiers, computed as Orthanc computes them.

Orthanc names a patient, study, series and instance by the SHA-1 of its DICOM identifiers
joined with ``|`` (``PatientID|StudyInstanceUID|SeriesInstanceUID|SOPInstanceUID`` for an
instance), written as five groups of eight hexadecimal digits joined with ``-``. A record
carries its instance's ID, so the table links back to Orthanc's REST API
(``/instances/<id>``) without a lookup.
"""

from __future__ import annotations

import hashlib

__all__ = ["orthanc_id", "orthanc_instance_id"]


def orthanc_id(*values: str) -> str:
    """Orthanc's identifier of the resource that ``values`` (outermost first) name.

    Examples
    --------
    >>> orthanc_id("")  # a patient without PatientID
    'da39a3ee-5e6b4b0d-3255bfef-95601890-afd80709'
    """
    digest = hashlib.sha1("|".join(values).encode("utf-8")).hexdigest()
    return "-".join(digest[i : i + 8] for i in range(0, 40, 8))


def orthanc_instance_id(patient_id: str, study: str, series: str, sop_instance: str) -> str:
    """The ID Orthanc gives an instance (``/instances/<id>``)."""
    return orthanc_id(patient_id, study, series, sop_instance)
