"""Fault plans and the injector's decisions (``pipeline.local.faults``), and ``--faults``.

No stack runs here: the plan's parsing, the seeded decisions, pausing, the emulated clock's
accounting of parallel Map lanes, and the time budget. What the faults do to the running
workflow is in ``tests/workflow/test_load_faults.py``.
"""

from __future__ import annotations

import random

import pytest

from pipeline.cli import main
from pipeline.local.faults import (
    EXPRESS_TIME_LIMIT,
    FAULT_NAMES,
    EmulatedClock,
    FaultInjector,
    FaultPlan,
)
from pipeline.local.stack import LocalStack

EXECUTION = "arn:aws:states:us-east-1:123456789012:execution:dicom-pipeline-ingest:pipe-1"


def test_a_plan_parses_every_fault_with_its_rate() -> None:
    # Given every fault, with spaces and rates written in several ways
    text = (
        " lambda-throttle=0.1, lambda-timeout = 0,dynamodb-throttle=1,"
        "s3-slowdown=.25,duplicate-delivery=1e-1"
    )
    # When parsed
    plan = FaultPlan.parse(text)
    # Then each has its rate, and the text it prints parses back to the same plan
    assert dict(plan.rates) == {
        "lambda-throttle": 0.1,
        "lambda-timeout": 0.0,
        "dynamodb-throttle": 1.0,
        "s3-slowdown": 0.25,
        "duplicate-delivery": 0.1,
    }
    assert FaultPlan.parse(str(plan)) == plan
    assert str(plan).split(",")[0] == "lambda-throttle=0.1"


def test_a_fault_the_plan_does_not_name_has_rate_zero() -> None:
    plan = FaultPlan.parse("s3-slowdown=0.5")
    assert [plan.rate(name) for name in FAULT_NAMES] == [0.0, 0.0, 0.0, 0.5, 0.0]


@pytest.mark.parametrize(
    ("text", "phrase"),
    [
        ("lambda-throtle=0.1", "unknown fault 'lambda-throtle': expected one of lambda-throttle"),
        ("lambda-throttle=1.5", "fault lambda-throttle: rate 1.5 is not between 0 and 1"),
        ("s3-slowdown=-0.1", "fault s3-slowdown: rate -0.1 is not between 0 and 1"),
        ("s3-slowdown=nan", "fault s3-slowdown: rate nan is not between 0 and 1"),
        ("s3-slowdown=inf", "fault s3-slowdown: rate inf is not between 0 and 1"),
        ("s3-slowdown=often", "fault s3-slowdown: rate 'often' is not a number"),
        ("s3-slowdown", "fault 's3-slowdown' is not NAME=RATE"),
        ("s3-slowdown=", "fault 's3-slowdown=' is not NAME=RATE"),
        ("=0.1", "fault '=0.1' is not NAME=RATE"),
        ("s3-slowdown=0.1,,", "fault '' is not NAME=RATE"),
        ("s3-slowdown=0.1,s3-slowdown=0.2", "fault s3-slowdown is given twice"),
        ("", "no fault given"),
    ],
)
def test_a_bad_plan_is_a_one_line_value_error(text: str, phrase: str) -> None:
    # Given a bad --faults text / When parsed / Then ValueError, one line naming what is wrong
    with pytest.raises(ValueError) as info:
        FaultPlan.parse(text)
    message = str(info.value)
    assert phrase in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "rates",
    [{"lambda-timeouts": 0.1}, {"lambda-timeout": 2}, {"lambda-timeout": True}, {"x": 0}],
)
def test_a_plan_built_from_a_mapping_is_checked_too(rates: dict[str, float]) -> None:
    with pytest.raises(ValueError) as info:
        FaultPlan(rates)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("value", "phrase"),
    [
        ("dynamodb-throttle=2", "fault dynamodb-throttle: rate 2 is not between 0 and 1"),
        ("disk-full=0.1", "unknown fault 'disk-full'"),
    ],
)
def test_local_up_with_bad_faults_exits_2_with_one_line(
    value: str, phrase: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given `local up --faults` with a bad plan
    # When run
    with pytest.raises(SystemExit) as exit_info:
        main(["local", "up", "--no-orthanc", "--faults", value])
    captured = capsys.readouterr()
    # Then exit 2 with one line naming the fault, before anything started
    assert exit_info.value.code == 2
    assert captured.out == ""
    (line,) = captured.err.splitlines()
    assert line.startswith("dicom-pipeline: error: argument --faults: ")
    assert phrase in line


def test_the_library_refuses_a_bad_plan_before_starting_anything() -> None:
    # Given a stack asked for an unknown fault / Then the constructor raises (nothing started)
    with pytest.raises(ValueError, match="unknown fault 'gremlins'"):
        LocalStack(server=False, faults="gremlins=0.5")


def test_decisions_follow_the_rate_and_the_seed() -> None:
    # Given two injectors with the same seed, and one with another seed
    plan = FaultPlan.parse("s3-slowdown=0.3,lambda-throttle=1")
    first, again, other = (FaultInjector(plan, seed=s) for s in (7, 7, 8))
    # When each decides a thousand times
    draws = [[inj.roll("s3-slowdown") for _ in range(1000)] for inj in (first, again, other)]
    # Then the same seed makes the same decisions, at about the rate, counted
    assert draws[0] == draws[1] != draws[2]
    assert 250 <= sum(draws[0]) <= 350
    assert first.injected["s3-slowdown"] == sum(draws[0])
    # and rate 1 always injects, a fault not in the plan never does (nor draws a number)
    assert all(first.roll("lambda-throttle") for _ in range(50))
    assert all(again.roll("lambda-throttle") for _ in range(50))
    assert not any(first.roll("dynamodb-throttle") for _ in range(50))
    assert "dynamodb-throttle" not in first.injected
    assert [first.roll("s3-slowdown") for _ in range(100)] == [
        again.roll("s3-slowdown") for _ in range(100)
    ]


def test_nothing_is_injected_while_paused() -> None:
    # Given an injector that always injects
    injector = FaultInjector("dynamodb-throttle=1", seed=1)
    # When paused (nested), nothing is injected; after, it injects again
    with injector.paused():
        with injector.paused():
            assert not injector.roll("dynamodb-throttle")
        assert not injector.roll("dynamodb-throttle")
    assert injector.roll("dynamodb-throttle")
    assert injector.injected["dynamodb-throttle"] == 1


def test_parallel_map_lanes_overlap_and_the_main_path_adds_up() -> None:
    # Given an execution whose main path waited twice, and three Map workers that waited
    clock = EmulatedClock()
    clock.charge(EXECUTION, 60.0)  # an injected Lambda timeout
    clock.charge(EXECUTION, 4.0)  # a Retry interval before ParseHeaders' next attempt
    for lane, waits in {1: [1.0, 2.0, 4.0], 2: [8.0], 3: [0.5]}.items():
        for seconds in waits:
            clock.charge(EXECUTION, seconds, lane)
    # Then its charged time is the main path plus the slowest lane (lanes run at once)
    assert clock.charged(EXECUTION) == pytest.approx(64.0 + 8.0)
    assert clock.charged("another") == 0.0
    # and forgetting returns the same and clears it
    assert clock.forget(EXECUTION) == pytest.approx(72.0)
    assert clock.charged(EXECUTION) == 0.0


def test_an_execution_past_the_express_limit_is_over_budget() -> None:
    # Given an execution charged just under the limit, and another just over it
    injector = FaultInjector(FaultPlan({}))
    assert injector.time_limit == EXPRESS_TIME_LIMIT == 300.0
    injector.clock.charge(EXECUTION, 290.0)
    injector.clock.charge(EXECUTION + "-b", 295.0)
    # When each ended after 8 s of real time
    # Then only the second passed 300 s, each duration is kept by name, the accounts are gone
    assert not injector.over_budget(EXECUTION, 8.0)
    assert injector.over_budget(EXECUTION + "-b", 8.0)
    assert injector.durations == {"pipe-1": 298.0, "pipe-1-b": 303.0}
    assert injector.clock.charged(EXECUTION) == injector.clock.charged(EXECUTION + "-b") == 0.0


def test_the_seeded_generator_is_pythons_random() -> None:
    # The workflow tests pick seeds by replaying the generator: it must be random.Random
    injector = FaultInjector("lambda-throttle=0.5", seed=3)
    replay = random.Random(3)
    assert [injector.roll("lambda-throttle") for _ in range(20)] == [
        replay.random() < 0.5 for _ in range(20)
    ]
