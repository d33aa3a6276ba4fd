"""The sample set: files bundled with pydicom, which no one on this team wrote.

pydicom ships about 180 test files under ``pydicom/data/test_files`` (DICOM of many
transfer syntaxes and modalities, DICOMDIR members, and a few non-DICOM files) and
character-set examples under ``pydicom/data/charset_files``. We glob them directly:
``pydicom.data.get_testdata_files()`` tries the network first and wastes time offline.
"""

from __future__ import annotations

from pathlib import Path

import pydicom

__all__ = ["charset_files", "sample_files", "pydicom_files_dir"]


def pydicom_files_dir() -> Path:
    """The folder of pydicom's bundled test files."""
    return Path(pydicom.__file__).parent / "data" / "test_files"


def sample_files(*, include_charsets: bool = False) -> list[Path]:
    """Every regular file bundled with pydicom's tests, sorted, good and bad alike.

    Examples
    --------
    >>> len(sample_files()) > 150
    True
    """
    roots = [pydicom_files_dir()]
    if include_charsets:
        roots.append(pydicom_files_dir().parent / "charset_files")
    return sorted(p for root in roots for p in root.rglob("*") if p.is_file())


def charset_files() -> list[Path]:
    """pydicom's character-set examples (ISO 2022 escapes, multi-byte sets)."""
    return sorted((pydicom_files_dir().parent / "charset_files").glob("*.dcm"))
