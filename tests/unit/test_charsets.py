"""Text decoded from its Specific Character Set into UTF-8, ISO 2022 escapes included.

The files are pydicom's ``data/charset_files`` (from the DICOM standard's character set
examples, PS3.5 Annex H-K): single-byte sets, ISO 2022 with escape sequences (Japanese,
Korean), UTF-8 and GB18030, and sequences that carry their own character set.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import pytest

from pipeline.dicom.parse import parse

# file -> (Specific Character Set, the PN groups of Patient's Name in UTF-8)
EXPECTED_NAMES = {
    "chrArab.dcm": (["ISO_IR 127"], {"Alphabetic": "قباني^لنزار"}),
    "chrFren.dcm": (["ISO_IR 100"], {"Alphabetic": "Buc^Jérôme"}),
    "chrGerm.dcm": (["ISO_IR 100"], {"Alphabetic": "Äneas^Rüdiger"}),
    "chrGreek.dcm": (["ISO_IR 126"], {"Alphabetic": "Διονυσιος"}),
    "chrHbrw.dcm": (["ISO_IR 138"], {"Alphabetic": "שרון^דבורה"}),
    # The file mixes Latin look-alikes into the Cyrillic name; kept exactly as it decodes.
    "chrRuss.dcm": (["ISO_IR 144"], {"Alphabetic": "Люкceмбypг"}),  # noqa: RUF001
    "chrH31.dcm": (
        [None, "ISO 2022 IR 87"],
        {"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎", "Phonetic": "やまだ^たろう"},
    ),
    "chrH32.dcm": (
        ["ISO 2022 IR 13", "ISO 2022 IR 87"],
        {"Alphabetic": "ﾔﾏﾀﾞ^ﾀﾛｳ", "Ideographic": "山田^太郎", "Phonetic": "やまだ^たろう"},
    ),
    "chrJapMulti.dcm": ([None, "ISO 2022 IR 87"], {"Alphabetic": "やまだ^たろう"}),
    "chrJapMultiExplicitIR6.dcm": (
        ["ISO 2022 IR 6", "ISO 2022 IR 87"],
        {"Alphabetic": "やまだ^たろう"},
    ),
    "chrI2.dcm": (
        [None, "ISO 2022 IR 149"],
        {"Alphabetic": "Hong^Gildong", "Ideographic": "洪^吉洞", "Phonetic": "홍^길동"},
    ),
    "chrKoreanMulti.dcm": ([None, "ISO 2022 IR 149"], {"Alphabetic": "김희중"}),
    "chrX1.dcm": (["ISO_IR 192"], {"Alphabetic": "Wang^XiaoDong", "Ideographic": "王^小東"}),
    "chrX2.dcm": (["GB18030"], {"Alphabetic": "Wang^XiaoDong", "Ideographic": "王^小东"}),
}


@pytest.mark.parametrize("name", sorted(EXPECTED_NAMES))
def test_patient_names_are_decoded_into_utf8_components(
    name: str, test_file: Callable[[str], Path]
) -> None:
    # Given a file whose Patient's Name is encoded in a non-ASCII character set
    charset, groups = EXPECTED_NAMES[name]

    # When it is parsed and its record built
    parsed = parse(str(test_file(name)))
    item = parsed.record().item

    # Then the JSON's PN has the decoded component groups, the record the Alphabetic one,
    # and both survive a UTF-8 round trip
    assert parsed.dicom_json["00080005"] == {"vr": "CS", "Value": charset}
    assert parsed.dicom_json["00100010"] == {"vr": "PN", "Value": [groups]}
    assert item["PatientName"] == groups["Alphabetic"]
    text = json.dumps(parsed.dicom_json, ensure_ascii=False).encode("utf-8")
    assert json.loads(text.decode("utf-8"))["00100010"]["Value"][0] == groups


def _pn_values(j: dict[str, Any], path: str = "") -> dict[str, Any]:
    """Every PN in a DICOM JSON object, by path."""
    out: dict[str, Any] = {}
    for key, element in j.items():
        if element["vr"] == "PN":
            out[f"{path}/{key}"] = element.get("Value", [])
        elif element["vr"] == "SQ":
            for i, item in enumerate(element.get("Value", [])):
                out.update(_pn_values(item, f"{path}/{key}[{i}]"))
    return out


def _pydicom_pn_values(ds: pydicom.Dataset, path: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for elem in ds:
        key = f"{path}/{int(elem.tag):08X}"
        if elem.VR == "PN":
            values = elem.value if elem.VM > 1 else ([elem.value] if elem.VM else [])
            out[key] = [
                {
                    name: part
                    for name, part in zip(
                        ("Alphabetic", "Ideographic", "Phonetic"), v.components, strict=False
                    )
                    if part
                }
                for v in values
            ]
        elif elem.VR == "SQ":
            for i, item in enumerate(elem.value):
                out.update(_pydicom_pn_values(item, f"{key}[{i}]"))
    return out


CHARSET_FILES = sorted(
    p.name for p in (Path(pydicom.__file__).parent / "data" / "charset_files").glob("*.dcm")
)


@pytest.mark.parametrize("name", CHARSET_FILES)
def test_every_name_at_every_level_matches_what_pydicom_decodes(
    name: str, test_file: Callable[[str], Path]
) -> None:
    # Given a charset file (including sequences whose items declare their own character set)
    path = test_file(name)
    ds = pydicom.dcmread(path)

    # When it is parsed
    j = parse(str(path)).dicom_json

    # Then every PN, nested ones included, has the components pydicom decodes
    ours = _pn_values(j)
    assert ours == _pydicom_pn_values(ds)
    assert ours  # each file has at least one name


def test_an_item_with_its_own_character_set_is_decoded_with_it(
    test_file: Callable[[str], Path],
) -> None:
    # Given chrSQEncoding1.dcm: an ISO 2022 dataset whose sequence item is in that set too
    j = parse(str(test_file("chrSQEncoding1.dcm"))).dicom_json
    # When its nested names are read
    names = _pn_values(j)
    # Then the Japanese components are decoded in the item
    nested = [v for k, v in names.items() if "[" in k]
    assert nested and any("Ideographic" in group for groups in nested for group in groups)
    assert any("山田^太郎" in json.dumps(groups, ensure_ascii=False) for groups in nested)


def test_long_text_in_an_iso_2022_set_is_decoded_after_being_deferred(
    dataset_factory: Callable[[], pydicom.Dataset],
    encode: Callable[..., bytes],
    mem_source: type,
) -> None:
    # Given a Japanese text value longer than the bulk threshold (so the reader skips it
    # first and fetches it when converting), encoded with ISO 2022 escapes
    ds = dataset_factory()
    ds.SpecificCharacterSet = ["", "ISO 2022 IR 87"]
    comment = "山田太郎" * 300  # far above 1 KiB once encoded
    ds.ImageComments = comment
    data = encode(ds)

    # When it is parsed
    j = parse(mem_source(data)).dicom_json

    # Then the whole text is back, in UTF-8
    assert j["00204000"] == {"vr": "LT", "Value": [comment]}
