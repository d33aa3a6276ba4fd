"""The demo's summary: one line per fact when piped, and a last line whose counts agree.

Most tests render a made-up :class:`Summary` (codes and reasons the workflow may add later
included); one runs the real command over a few files with its output piped, at 80 columns.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from pipeline.local.demo import Summary, render, summary_console

LONG_REASON = "object_changed_since_the_event_and_already_in_dlq_for_a_reason_this_long"
VERDICT = re.compile(
    r"^result\s+all (\d+) records accounted for: "
    r"(\d+) indexed \+ (\d+) deleted \+ (\d+) skipped \+ (\d+) failed \(exit 0\)$"
)


def _summary() -> Summary:
    """What a demo run might report: an overwrite, a delete, a retried record."""
    return Summary(
        outcomes=Counter(indexed=6, deleted=1, skipped=3, failed=3, retry=1),
        failed_by_code=Counter(UNAVAILABLE=1, MISSING_REQUIRED_UID=2),
        skipped_by_reason=Counter({"test_event": 1, "already_in_dlq": 1, LONG_REASON: 1}),
        latencies_ms=[120.0, 250.5, 900.25],
        executions=4,
        dlq_messages=3,
        table_items=Counter(indexed=4, deleted=1),
        events={"upload": 10, "overwrite": 1, "delete": 1, "S3 test event": 1},
        writes_by_key={
            "a.dcm": ["indexed", "indexed"],
            "b.dcm": ["indexed", "deleted"],
            "c.dcm": ["indexed"],
            "d.dcm": ["indexed"],
            "e.dcm": ["indexed"],
        },
    )


def _piped(summary: Summary, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    monkeypatch.setenv("COLUMNS", "80")  # what a narrow terminal exports; a pipe must ignore it
    out = io.StringIO()
    render(summary, uploaded=10, seconds=12.3, console=summary_console(out))
    return out.getvalue().splitlines()


def test_piped_summary_never_wraps_a_value(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a summary with a long skip reason and lines longer than 80 characters
    # When it is rendered for a pipe while COLUMNS says 80
    lines = _piped(_summary(), monkeypatch)
    # Then every value sits whole on one line, and the long lines were not folded
    text = "\n".join(lines)
    for value in (LONG_REASON, "UNAVAILABLE", "already_in_dlq", "retry", "S3 test event"):
        assert any(value in line for line in lines), value
    assert any(len(line) > 80 for line in lines)
    labels = [line.split()[0] for line in lines if line[:1].isalpha()]
    assert labels[-6:] == ["attempts", "executions", "table", "DLQ", "latency", "result"]
    # And no escape codes or raw dicts reach a pipe
    assert "\x1b[" not in text and "{" not in text


def test_last_line_is_the_verdict_and_its_counts_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a summary where every record is accounted for
    summary = _summary()
    assert summary.problems() == []
    # When it is rendered
    lines = _piped(summary, monkeypatch)
    # Then the last line says so, and its parts add up to its total and to the events
    match = VERDICT.match(lines[-1])
    assert match, lines[-1]
    total, *parts = (int(g) for g in match.groups())
    assert sum(parts) == total == summary.expected == 13
    assert parts == [summary.outcomes[o] for o in ("indexed", "deleted", "skipped", "failed")]
    # And the table line explains why items (5) differ from writes (7)
    table = next(line for line in lines if line.startswith("table"))
    assert "5 items (4 indexed, 1 deleted): one per key written; 7 writes to 5 keys" in table
    assert "1 key indexed → deleted, 1 key indexed → indexed" in table
    assert json.loads(json.dumps(summary.as_dict()))["accounted_for"] is True


def test_a_record_unaccounted_for_makes_the_verdict_say_why(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given one failed record whose DLQ message is missing, and a table item too many
    summary = _summary()
    summary.dlq_messages = 2
    summary.table_items["indexed"] += 1
    # When it is rendered
    lines = _piped(summary, monkeypatch)
    # Then the last line names both differences, and the JSON view agrees
    assert lines[-1].startswith("result") and "NOT every record is accounted for" in lines[-1]
    assert "the DLQ holds 2 messages for 3 failed records" in lines[-1]
    assert "the table holds 6 items (5 indexed, 1 deleted)" in lines[-1]
    assert lines[-1].endswith("(exit 1)")
    assert summary.as_dict()["accounted_for"] is False


def test_terminal_summary_stays_within_the_terminal() -> None:
    # Given a terminal 80 columns wide
    from rich.console import Console

    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=80, color_system=None)
    # When the summary is rendered there
    render(_summary(), uploaded=10, seconds=1.0, console=console)
    # Then no line is wider than the terminal, and the verdict is still last
    lines = out.getvalue().splitlines()
    assert all(len(line) <= 80 for line in lines)
    assert lines[-2].startswith("result") or lines[-1].startswith("result")


def test_piped_demo_ends_with_one_agreeing_summary(tmp_path: Path) -> None:
    # Given the real command over a few files, its stdout a pipe and COLUMNS at 80
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["COLUMNS"] = "80"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.cli",
            "demo",
            "--limit",
            "6",
            "--state-dir",
            str(tmp_path),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    # Then it exits 0, progress went to stderr, and stdout ends with the verdict line
    assert done.returncode == 0, done.stdout + done.stderr
    saved = json.loads((tmp_path / "demo-summary.json").read_text())
    expected = saved["expected_records"]
    assert "sending 6 files through Orthanc" in done.stderr
    assert f"indexing {expected} records" in done.stderr
    lines = done.stdout.splitlines()
    match = VERDICT.match(lines[-1])
    assert match, done.stdout
    # And that line agrees with the JSON summary written next to it, which counts every S3
    # event record Orthanc and the demo caused (S3's test event included)
    total, *parts = (int(g) for g in match.groups())
    assert total == sum(parts) == expected == sum(saved["events"].values())
    assert saved["events"]["S3 test event"] == 1
    assert saved["accounted_for"] is True and saved["problems"] == []
    assert sum(saved["table_items"].values()) == sum(saved["table_expected"].values())


def test_an_internal_failure_is_not_accounted_for() -> None:
    # Given a summary where one record failed with INTERNAL (a bug in us), DLQ included
    summary = _summary()
    summary.outcomes["failed"] += 1
    summary.failed_by_code["INTERNAL"] += 1
    summary.dlq_messages += 1
    summary.events["upload"] += 1
    # Then the demo does not call that accounted for
    assert summary.problems() == ["1 record failed with INTERNAL"]
