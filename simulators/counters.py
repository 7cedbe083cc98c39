"""Counter readings -> continuous series, exactly, following the quality flags.

The rules are the payload contract's (docs/payload.md, "Quality flags"):
a reading flagged `counter_backwards` or `counter_jump` is held until the
next one says what it was (a reset the series moved to: a new series starts
there; garbage it did not follow: left out), `counter_rollover` adds the
register width, `meter_swap` starts a new series, a fall without a flag is
never counted. Nothing is repaired in silence: every such decision is a
:class:`Note` with its moment, flag and what was done, so a report can list
it on its day. Values are decimals: a series' consumption is the exact sum of
the register steps the meter served.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal

BREAK_FLAGS = frozenset({"counter_backwards", "counter_jump"})


@dataclass(frozen=True)
class Row:
    """One counter reading: simulated (or real) UTC epoch seconds, the value
    in the point's unit (None: no value), its quality and where it came from."""

    t: float
    value: Decimal | None
    quality: str = "ok"
    id: int = 0
    stream: str = ""


@dataclass(frozen=True)
class Note:
    """What a flag (or its absence) made the series do at ``t``."""

    t: float
    kind: str  # break, dropped, rollover, missing, restamped, pending
    quality: str
    detail: str
    id: int = 0
    stream: str = ""


@dataclass
class Series:
    """Segments of (t, consumption since the segment began); between two
    segments the consumption is unknown (a reset, a swap)."""

    segments: list[list[tuple[float, Decimal]]] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for note in self.notes:
            out[note.kind] = out.get(note.kind, 0) + 1
        return out


def wrap_width(previous: Decimal, value: Decimal) -> Decimal:
    """The register width a counter wrapped at: the smallest 2^16, 2^32, 2^48
    or 2^64 times a decimal resolution above the last value (the payload does
    not carry the register type; real counters wrap at these)."""
    widths = sorted(Decimal(2) ** bits * Decimal(10) ** exp for bits in (16, 32, 48, 64) for exp in range(-4, 4))
    for width in widths:
        if width > previous and width - previous + value >= 0:
            return width
    return previous


def build_series(rows: Iterable[Row]) -> Series:
    """Readings in time order -> segments, with a note for every flag handled."""
    series = Series()
    current: list[tuple[float, Decimal]] | None = None
    last: Row | None = None  # the last reading the series accepted
    used = Decimal(0)  # consumption of the current segment at ``last``
    held: Row | None = None  # a counter_backwards / counter_jump reading waiting for the next one
    for row in rows:
        flags = set(row.quality.split("+")) - {"ok"}
        if row.value is None:
            series.notes.append(Note(row.t, "missing", row.quality, "no value (the meter sent none): left out",
                                     row.id, row.stream))
            continue
        if "restamped" in flags:
            series.notes.append(Note(row.t, "restamped", row.quality, "stamped on the gateway from its monotonic "
                                     "clock before NTP: time used as sent", row.id, row.stream))
        if current is None or last is None or "meter_swap" in flags:
            if current is not None:
                series.notes.append(Note(row.t, "break", row.quality, "meter swap: a new series starts; the energy "
                                         "between the old meter's last reading and this one is unknown",
                                         row.id, row.stream))
            if held is not None:
                series.notes.append(_dropped(held))
            current = [(row.t, Decimal(0))]
            series.segments.append(current)
            last, used, held = row, Decimal(0), None
            continue
        if flags & BREAK_FLAGS:
            if held is not None:
                series.notes.append(_dropped(held))
            held = row
            continue
        value, previous = row.value, last.value
        assert previous is not None
        if "counter_rollover" in flags and value < previous:
            width = wrap_width(previous, value)
            used += width - previous + value
            series.notes.append(Note(row.t, "rollover", row.quality, f"wrapped at {width.normalize():f}: "
                                     "consumption = width - previous + current", row.id, row.stream))
        elif held is not None and held.value is not None and (
                value < previous or (held.value > previous and value >= held.value)):
            # The series moved to the held value: a reset. What was used between
            # the last accepted reading and it is unknown; a new segment starts there.
            series.notes.append(Note(held.t, "break", held.quality, "the counter moved to this value and went on "
                                     "from it (a reset): the energy before it is unknown; a new series starts",
                                     held.id, held.stream))
            current = [(held.t, Decimal(0))]
            series.segments.append(current)
            used = value - held.value
        elif value >= previous:
            if held is not None:
                series.notes.append(_dropped(held))
            used += value - previous
        else:  # lower without a flag (an older agent?): never counted as consumption
            series.notes.append(Note(row.t, "break", row.quality, "fell without a flag: not counted; a new series "
                                     "starts", row.id, row.stream))
            current = [(row.t, Decimal(0))]
            series.segments.append(current)
            used = Decimal(0)
        held = None
        last = row
        current.append((row.t, used))
    if held is not None:
        series.notes.append(Note(held.t, "pending", held.quality, "flagged; the next reading decides whether the "
                                 "series moved to it", held.id, held.stream))
    return series


def _dropped(row: Row) -> Note:
    return Note(row.t, "dropped", row.quality, "the series did not go on from this value (a garbage read): "
                "left out", row.id, row.stream)


@dataclass(frozen=True)
class Boundary:
    """The counter at a moment (a midnight), interpolated between the
    readings on either side of it in one segment."""

    segment: int
    value: float  # consumption of that segment at the moment
    distance: float  # seconds to the nearer of the two readings


def at(series: Series, moment: float) -> Boundary | None:
    """The counter at ``moment``, or None when no segment spans it."""
    for index, segment in enumerate(series.segments):
        if not segment or moment < segment[0][0] or moment > segment[-1][0]:
            continue
        times = [t for t, _ in segment]
        i = bisect.bisect_left(times, moment)
        if times[i] == moment:
            return Boundary(index, float(segment[i][1]), 0.0)
        (t0, c0), (t1, c1) = segment[i - 1], segment[i]
        share = (moment - t0) / (t1 - t0)
        return Boundary(index, float(c0) + float(c1 - c0) * share, min(moment - t0, t1 - moment))
    return None


def covered(series: Series, start: float, end: float, max_gap: float) -> float:
    """Seconds of [start, end) between two readings of one segment no more
    than ``max_gap`` apart: the time the gateway watched the counter."""
    total = 0.0
    for segment in series.segments:
        times = [t for t, _ in segment]
        first = max(0, bisect.bisect_right(times, start) - 1)
        for (t0, _), (t1, _) in zip(segment[first:], segment[first + 1:], strict=False):
            if t0 >= end:
                break
            if t1 - t0 <= max_gap:
                total += max(0.0, min(t1, end) - max(t0, start))
    return total
