"""The parse Lambda's settings: one validated model, read from the environment."""

from __future__ import annotations

import pytest
from msgspec import ValidationError

from lambdas.settings import ParseSettings, get_settings
from pipeline.dicom.header import ReadLimits


def test_defaults_and_the_ingest_config_they_describe(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given only the required variable
    monkeypatch.setenv("TABLE_NAME", "dicom-metadata")
    # When the settings are read
    settings = ParseSettings.from_environment()
    config = settings.ingest_config()
    # Then the defaults are the documented ones and reach the ingest config unchanged
    assert config.table_name == "dicom-metadata"
    assert config.tombstone_ttl_days == 30
    assert config.payload_budget == 200 * 1024
    assert config.max_workers == 8
    assert config.limits.first_range == 64 * 1024
    assert config.limits.bulk_threshold == 1024
    # and the header limits are ReadLimits' own, sized for the CPU budget (make bench)
    assert config.limits == ReadLimits()
    assert (config.limits.max_elements, config.limits.max_header_bytes) == (100_000, 8 * 2**20)


def test_environment_values_are_parsed_and_mapped(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given every variable set, as CDK sets them
    for name, value in {
        "TABLE_NAME": "t-123",
        "TOMBSTONE_TTL_DAYS": "7",
        "PAYLOAD_BUDGET_BYTES": "65536",
        "MAX_WORKERS": "4",
        "FIRST_RANGE_BYTES": "32768",
        "BULK_THRESHOLD_BYTES": "256",
        "MAX_HEADER_BYTES": "2097152",
    }.items():
        monkeypatch.setenv(name, value)
    # When the settings are read
    config = ParseSettings.from_environment().ingest_config()
    # Then each is an int in the ingest config
    assert (config.tombstone_ttl_days, config.payload_budget, config.max_workers) == (7, 65536, 4)
    assert config.limits.first_range == 32768
    assert config.limits.bulk_threshold == 256
    assert config.limits.max_header_bytes == 2 * 1024 * 1024


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("TABLE_NAME", ""),
        ("PAYLOAD_BUDGET_BYTES", str(250 * 1024)),  # over what a Step Functions state can carry
        ("MAX_WORKERS", "0"),
        ("TOMBSTONE_TTL_DAYS", "zero"),
        ("MAX_ELEMENTS", "2000000"),  # ten such headers cannot fit in the CPU budget
        ("MAX_HEADER_BYTES", str(128 * 1024 * 1024)),
    ],
)
def test_invalid_values_fail_at_cold_start(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    # Given one invalid variable
    monkeypatch.setenv("TABLE_NAME", "dicom-metadata")
    monkeypatch.setenv(name, value)
    # When the settings are read, Then validation names the problem instead of failing later
    with pytest.raises(ValidationError):
        ParseSettings.from_environment()


def test_the_error_names_the_variable_not_its_value(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a value out of range
    monkeypatch.setenv("TABLE_NAME", "dicom-metadata")
    monkeypatch.setenv("MAX_WORKERS", "65")
    # When the settings are read, Then the error names the field and its bound, not the value
    with pytest.raises(ValidationError) as caught:
        ParseSettings.from_environment()
    assert "max_workers" in str(caught.value) and "<= 64" in str(caught.value)
    assert "65" not in str(caught.value)


def test_the_runtime_memory_size_sets_the_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given the variables Lambda sets for a 1,769 MB function
    monkeypatch.setenv("TABLE_NAME", "dicom-metadata")
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "1769")
    # When the settings are read, Then the string became an int and bounds the batch's reads
    settings = ParseSettings.from_environment()
    assert settings.aws_lambda_function_memory_size == 1769
    assert settings.ingest_config().memory_budget == (int(1769 * 0.85) - 100) * 2**20


def test_missing_table_name_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TABLE_NAME", raising=False)
    with pytest.raises(ValidationError):
        ParseSettings.from_environment()


def test_settings_are_read_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given settings read once
    get_settings.cache_clear()
    monkeypatch.setenv("TABLE_NAME", "first")
    first = get_settings()
    # When the environment changes afterwards, Then the cold-start value stays
    monkeypatch.setenv("TABLE_NAME", "second")
    assert get_settings() is first
    get_settings.cache_clear()
