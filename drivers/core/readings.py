"""The reading: one value of one point of one device at one moment.

A NamedTuple rather than a class with behaviour: readings are made by the
thousand per second on the hot path and only carried, never changed.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

QUALITY_OK = "ok"
QUALITY_INVALID = "invalid"  # no usable value: not a number, or the meter says it has none
Kind = Literal["counter", "gauge"]  # a counter's differences are consumption; a gauge is read as is


class Reading(NamedTuple):
    device: str
    point: str
    value: float | int | str | None
    unit: str
    ts: int  # UTC epoch milliseconds of the moment the meter answered
    quality: str = QUALITY_OK  # "ok", or flags joined by "+" (docs/payload.md)
    kind: str = "gauge"  # "counter" or "gauge": eviction spares counters longest
    meter: str = ""  # the meter's identification number, when it has one
    mono: int | None = None  # monotonic ms, only while the wall clock is not trusted


def with_flag(quality: str, flag: str) -> str:
    """Add a flag to a quality: flags combine, sorted, joined by '+'."""
    if quality == QUALITY_OK:
        return flag
    flags = set(quality.split("+"))
    flags.add(flag)
    return "+".join(sorted(flags))


def now_ms() -> int:
    import time

    return time.time_ns() // 1_000_000
