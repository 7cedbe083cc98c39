"""A building clock that waits for its reader, for accelerated runs on a busy machine.

At a simulated day every 0.1 s of wall time, 25 ms are six simulated hours.
A loaded machine can leave the agent (or the process serving the building)
unscheduled for longer than that, and the building's days then run on with
nobody reading them: a verification that needs a reading near every
midnight loses days to the host's scheduling, not to anything the agent did.

With this clock a building's time runs with the wall clock while it is
being read, and stands still from ``slack_s`` after the last answer until
the next request: between two answers the building's time never moves more
than ``slack_s``. The reader stamps readings with the real wall clock;
``to_clock`` maps such a stamp into this clock's time (continuously: a stamp
taken while the clock stood maps to where it stood), after which the
building's usual wall-to-simulated mapping (meta.json) applies unchanged.
A request is a Modbus or M-Bus read of one of the building's devices; radio
meters send unasked, so they alone never move this clock on.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable


class ReaderPacedClock:
    def __init__(self, slack_s: float, wall: Callable[[], float] = time.time) -> None:
        if slack_s <= 0:
            raise ValueError(f"slack_s must be positive, not {slack_s}")
        self.slack_s = slack_s
        self._wall = wall
        self._lock = threading.Lock()
        self._last_answer = wall()  # the clock may stand from slack_s after it was made, until a first request
        self._stood = 0.0  # wall seconds the clock has stood so far
        self._stops: list[tuple[float, float]] = []  # (wall when it stopped, wall when it went on)

    def __call__(self) -> float:
        with self._lock:
            now = self._wall()
            return min(now, self._last_answer + self.slack_s) - self._stood

    def request(self) -> None:
        """A reader asked: a clock that stood goes on from where it stood."""
        with self._lock:
            now = self._wall()
            stopped = self._last_answer + self.slack_s
            if now > stopped:
                self._stops.append((stopped, now))
                self._stood += now - stopped
            self._last_answer = now

    def to_clock(self, wall: float) -> float:
        """A real wall-clock time (a reading's ts) in this clock's time."""
        with self._lock:
            stops = list(self._stops)
        index = bisect.bisect_right(stops, (wall, float("inf")))
        stood = sum(end - start for start, end in stops[:index])
        if index and wall < stops[index - 1][1]:  # inside a stop: where the clock stood
            stood -= stops[index - 1][1] - wall
        return wall - stood

    def stood(self) -> tuple[int, float]:
        """How often and for how many wall seconds the clock stood (waiting for a reader)."""
        with self._lock:
            return len(self._stops), self._stood
