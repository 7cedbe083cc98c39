"""The reading: one value of one point of one device at one moment.

A NamedTuple rather than a class with behaviour: readings are made by the
thousand per second on the hot path and only carried, never changed.
"""

from __future__ import annotations

from typing import NamedTuple

QUALITY_OK = "ok"


class Reading(NamedTuple):
    device: str
    point: str
    value: float | int | str | None
    unit: str
    ts: int  # UTC epoch milliseconds of the moment the meter answered
    quality: str = QUALITY_OK
    kind: str = "gauge"  # "counter" or "gauge": eviction spares counters longest


def now_ms() -> int:
    import time

    return time.time_ns() // 1_000_000
