"""The building clock that waits for its reader (simulators/paced_clock.py), on a fake wall clock."""

from __future__ import annotations

import pytest

from simulators.paced_clock import ReaderPacedClock


class FakeWall:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_clock_runs_while_read_and_stands_from_the_slack_until_the_next_request() -> None:
    wall = FakeWall()
    clock = ReaderPacedClock(0.5, wall)
    clock.request()
    wall.now += 0.3
    assert clock() == pytest.approx(1000.3)  # read recently: wall time
    clock.request()
    wall.now += 2.0
    assert clock() == pytest.approx(1000.8)  # stands 0.5 s after the last answer
    wall.now += 1.0
    assert clock() == pytest.approx(1000.8)
    clock.request()  # 3 s after the last answer: it stood 2.5 s, and goes on from where it stood
    assert clock() == pytest.approx(1000.8)
    wall.now += 0.1
    assert clock() == pytest.approx(1000.9)
    stops, stood = clock.stood()
    assert stops == 1 and stood == pytest.approx(2.5)


def test_wall_stamps_map_continuously_into_the_clock() -> None:
    wall = FakeWall()
    clock = ReaderPacedClock(0.5, wall)
    clock.request()
    wall.now = 1001.0
    clock.request()  # stood 1000.5 .. 1001.0
    wall.now = 1003.0
    clock.request()  # stood 1001.5 .. 1003.0
    assert clock.to_clock(1000.2) == pytest.approx(1000.2)
    assert clock.to_clock(1000.5) == pytest.approx(1000.5)
    assert clock.to_clock(1000.7) == pytest.approx(1000.5)  # stamped while it stood: where it stood
    assert clock.to_clock(1001.0) == pytest.approx(1000.5)
    assert clock.to_clock(1001.2) == pytest.approx(1000.7)
    assert clock.to_clock(1002.0) == pytest.approx(1001.0)
    assert clock.to_clock(1003.5) == pytest.approx(1001.5)
    # What the clock said at a request is where that request's stamp maps.
    wall.now = 1003.25
    assert clock() == pytest.approx(clock.to_clock(1003.25))


def test_a_clock_nobody_reads_stands_from_the_slack_after_it_was_made() -> None:
    wall = FakeWall()
    clock = ReaderPacedClock(0.5, wall)
    wall.now += 10
    assert clock() == pytest.approx(1000.5)
    with pytest.raises(ValueError, match="slack_s must be positive"):
        ReaderPacedClock(0, wall)
