"""Counter integrity, table-driven: each series of readings and the flags it must get."""

from __future__ import annotations

import pytest

from agent.integrity import CounterGuard, CounterLimits

HOUR = 3_600_000
KEY = ("heat-1", "energy_heat")
# A heat meter that can deliver at most 50 kWh per hour.
LIMITS = CounterLimits(max_rate_per_h=50.0, rollover_at=100_000.0, slack=0.1)

CASES = [
    ("steady", [100.0, 110.0, 120.0, 130.0], [None, None, None, None]),
    ("standing still", [100.0, 100.0, 100.0], [None, None, None]),
    ("single garbage read, high", [100.0, 110.0, 99_999.0, 120.0, 130.0], [None, None, "counter_jump", None, None]),
    ("single garbage read, low", [100.0, 110.0, 3.0, 120.0, 130.0], [None, None, "counter_backwards", None, None]),
    ("reset to zero", [100.0, 110.0, 0.0, 10.0, 20.0], [None, None, "counter_backwards", None, None]),
    ("rollover", [99_960.0, 99_990.0, 15.0, 40.0], [None, None, "counter_rollover", None]),
    ("a real step, confirmed", [100.0, 5_000.0, 5_010.0], [None, "counter_jump", None]),
    # Two bad reads that continue each other look exactly like a reset: the series
    # moves there, and the return to the true value is itself flagged once.
    ("two garbage reads in a row", [100.0, 7.0, 9.0, 110.0, 120.0],
     [None, "counter_backwards", None, "counter_jump", None]),
]


@pytest.mark.parametrize(("name", "values", "flags"), CASES, ids=[c[0] for c in CASES])
def test_each_case_gets_its_flag_and_nothing_else(name: str, values: list[float], flags: list[str | None]) -> None:
    guard = CounterGuard()
    got = [guard.check(KEY, v, i * HOUR, LIMITS) for i, v in enumerate(values)]
    assert got == flags


def test_without_a_rate_limit_only_backwards_is_flagged() -> None:
    guard = CounterGuard()
    limits = CounterLimits()
    assert [guard.check(KEY, v, i, limits) for i, v in enumerate([1.0, 1e9, 2e9, 5.0, 6.0])] == \
        [None, None, None, "counter_backwards", None]


def test_state_restored_from_the_buffer_is_the_baseline() -> None:
    guard = CounterGuard(last={KEY: (500.0, 0)})
    assert guard.check(KEY, 400.0, HOUR, LIMITS) == "counter_backwards"
    assert guard.take_changes() == {}
    assert guard.check(KEY, 510.0, 2 * HOUR, LIMITS) is None
    assert guard.take_changes() == {KEY: (510.0, 2 * HOUR)}


def test_a_new_meter_starts_a_new_series() -> None:
    guard = CounterGuard()
    guard.check(KEY, 5_000.0, 0, LIMITS)
    guard.forget_device("heat-1")
    assert guard.check(KEY, 0.5, HOUR, LIMITS) is None
