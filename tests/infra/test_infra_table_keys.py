"""The tables the CDK app declares are the tables the local stack creates and the workflow
writes: key types and indexes cannot drift between the template, moto and the records."""

from __future__ import annotations

from typing import Any

from pipeline.workflow.table import (
    GSIS,
    INDEX_KEY_ATTRIBUTES,
    conform_index_keys,
    local_ledger_definition,
    local_table_definition,
)


def _tables(template_json: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        r["Properties"]
        for r in template_json["Resources"].values()
        if r["Type"] == "AWS::DynamoDB::Table"
    ]


def _shape(props: dict[str, Any]) -> tuple[Any, ...]:
    """Key schema, attribute types and GSIs, names and order normalized."""
    types = {a["AttributeName"]: a["AttributeType"] for a in props["AttributeDefinitions"]}
    gsis = sorted(
        (g["IndexName"], tuple((k["AttributeName"], k["KeyType"]) for k in g["KeySchema"]))
        for g in props.get("GlobalSecondaryIndexes", [])
    )
    keys = tuple((k["AttributeName"], k["KeyType"]) for k in props["KeySchema"])
    return keys, tuple(sorted(types.items())), tuple(gsis)


def test_metadata_table_matches_the_local_definition(template_json: dict[str, Any]) -> None:
    # Given the synthesized metadata table (the one with the GSIs)
    (deployed,) = [t for t in _tables(template_json) if t.get("GlobalSecondaryIndexes")]
    # Then its keys, attribute types and indexes are those the local stack creates
    assert _shape(deployed) == _shape(local_table_definition("x"))
    assert {g["IndexName"] for g in deployed["GlobalSecondaryIndexes"]} == {g.name for g in GSIS}


def test_ledger_matches_the_local_definition(template_json: dict[str, Any]) -> None:
    (ledger,) = [
        t
        for t in _tables(template_json)
        if [k["AttributeName"] for k in t["KeySchema"]] == ["s3_key", "event_order"]
    ]
    assert _shape(ledger) == _shape(local_ledger_definition("x"))


def test_every_index_key_is_declared_a_string_and_records_conform(
    template_json: dict[str, Any],
) -> None:
    # Given the attribute types the deployed metadata table declares
    (deployed,) = [t for t in _tables(template_json) if t.get("GlobalSecondaryIndexes")]
    declared = {a["AttributeName"]: a["AttributeType"] for a in deployed["AttributeDefinitions"]}
    # Then every GSI key attribute the records may carry is declared, as a string
    assert declared.keys() >= INDEX_KEY_ATTRIBUTES
    assert {declared[a] for a in INDEX_KEY_ATTRIBUTES} == {"S"}

    # And an item with awkward values for them is made to fit those declarations
    item: dict[str, Any] = {
        "s3_key": "k.dcm",
        "PatientID": ["A", "B"],
        "StudyInstanceUID": "1.2.3",
        "SeriesInstanceUID": "",
        "SOPInstanceUID": "é" * 600,  # 1,200 bytes
    }
    assert conform_index_keys(item) == ["SOPInstanceUID", "SeriesInstanceUID"]
    for name in INDEX_KEY_ATTRIBUTES & item.keys():
        assert declared[name] == "S" and isinstance(item[name], str) and item[name]
