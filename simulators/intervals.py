"""15-minute energy from counter readings, exactly: import, export, PV production.

Poland settles electricity in 15-minute periods (quarter-hours of the local
day, 96 a day, 92 or 100 at a clock change). A period's energy is the
difference of the counter at its two boundaries; the counter at a boundary
is the reading *nearest* to it (never interpolated: every interval is then a
difference of two values the meter really showed, and the intervals of a day
add up to the day's register delta to the last digit). The arithmetic is
decimal: values come as the digits the gateway sent (platform_store.exact).

A reading further than ``aligned_s`` (2 s) from its boundary still makes
the interval, flagged ``off_boundary`` with the offset, so a settlement can
see which periods lean on a late or early reading; none within
``max_offset_s`` (half a period) leaves the boundary, and both intervals
that share it, missing. The agent's part (polls aligned to the boundaries
while the clock is synchronised) is described in docs/savings.md.

Daily self-consumption and self-sufficiency follow from the three series:
self-consumed = produced - exported; consumed = imported + self-consumed;
self-consumption rate = self-consumed / produced; self-sufficiency =
self-consumed / consumed.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from simulators import counters

PERIOD_S = 900.0
ALIGNED_S = 2.0
MAX_OFFSET_S = PERIOD_S / 2
BREAK_FLAGS = frozenset({"counter_backwards", "counter_jump", "meter_swap"})


@dataclass(frozen=True)
class Interval:
    start: float
    end: float
    kwh: Decimal | None
    flags: tuple[str, ...] = ()


@dataclass
class Boundaries:
    """The reading used at each boundary (None: none near enough)."""

    times: list[float]
    rows: list[counters.Row | None] = field(default_factory=list)


def quarter_hours(start: float, end: float) -> list[float]:
    """The boundaries of the periods of [start, end): a local day's midnight
    is a whole quarter-hour in UTC too (Poland's offsets are whole hours)."""
    count = round((end - start) / PERIOD_S)
    return [start + k * PERIOD_S for k in range(count + 1)]


def nearest(rows: Sequence[counters.Row], times: Sequence[float], max_offset: float = MAX_OFFSET_S) -> Boundaries:
    """For each boundary, the reading nearest to it within ``max_offset``."""
    stamps = [row.t for row in rows]
    out = Boundaries(list(times))
    for moment in times:
        i = bisect.bisect_left(stamps, moment)
        candidates = [rows[j] for j in (i - 1, i) if 0 <= j < len(rows) and rows[j].value is not None]
        best = min(candidates, key=lambda row: abs(row.t - moment), default=None)
        out.rows.append(best if best is not None and abs(best.t - moment) <= max_offset else None)
    return out


def delta(rows: Sequence[counters.Row], first: counters.Row, last: counters.Row) -> tuple[Decimal | None, list[str]]:
    """The counter's rise from ``first`` to ``last``, exact, following the
    flags of the readings between them: a rollover adds the register width, a
    reset or a swap leaves the rise unknown."""
    assert first.value is not None and last.value is not None
    between = [r for r in rows if first.t < r.t <= last.t and r.value is not None]
    flags: list[str] = []
    total, previous = Decimal(0), first.value
    for row in between:
        quality = set(row.quality.split("+"))
        assert row.value is not None
        if quality & BREAK_FLAGS:
            return None, [f"series_break:{row.quality}"]
        if row.value < previous:
            if "counter_rollover" not in quality:
                return None, ["series_break:fell"]
            total += counters.wrap_width(previous, row.value) - previous + row.value
            flags.append("counter_rollover")
        else:
            total += row.value - previous
        previous = row.value
    return total, flags


def intervals(rows: Sequence[counters.Row], start: float, end: float, aligned_s: float = ALIGNED_S,
              max_offset: float = MAX_OFFSET_S) -> list[Interval]:
    """The 15-minute energies of [start, end) from one counter's readings."""
    bounds = nearest(rows, quarter_hours(start, end), max_offset)
    out = []
    for k in range(len(bounds.times) - 1):
        a, b = bounds.rows[k], bounds.rows[k + 1]
        begin, finish = bounds.times[k], bounds.times[k + 1]
        if a is None or b is None:
            out.append(Interval(begin, finish, None, ("missing_boundary_reading",)))
            continue
        kwh, flags = delta(rows, a, b)
        for name, row, moment in (("start", a, begin), ("end", b, finish)):
            offset = row.t - moment
            if abs(offset) > aligned_s:
                flags.append(f"off_boundary:{name}:{offset:+.1f}s")
        out.append(Interval(begin, finish, kwh, tuple(flags)))
    return out


def day_delta(rows: Sequence[counters.Row], start: float, end: float,
              max_offset: float = MAX_OFFSET_S) -> Decimal | None:
    """The register delta of [start, end): the reading nearest the end minus
    the reading nearest the start (with rollovers), the same two readings the
    first and last interval use."""
    bounds = nearest(rows, [start, end], max_offset)
    a, b = bounds.rows
    if a is None or b is None:
        return None
    return delta(rows, a, b)[0]


def pv_day(series: Mapping[str, Sequence[counters.Row]], start: float, end: float,
           aligned_s: float = ALIGNED_S) -> dict[str, Any]:
    """One local day of a PV site: every period's import, export and
    production, the day's totals, self-consumption and self-sufficiency.
    ``series`` maps ``import``, ``export`` and ``production`` to counter rows (kWh)."""
    periods = {name: intervals(rows, start, end, aligned_s) for name, rows in series.items()}
    count = round((end - start) / PERIOD_S)
    table = []
    for k in range(count):
        row: dict[str, Any] = {"start": start + k * PERIOD_S}
        flags: list[str] = []
        for name, values in periods.items():
            interval = values[k]
            row[name] = None if interval.kwh is None else str(interval.kwh)
            flags.extend(f"{name}:{f}" for f in interval.flags)
        if flags:
            row["flags"] = flags
        table.append(row)
    totals: dict[str, Decimal | None] = {}
    sums_equal: dict[str, bool] = {}
    for name, values in periods.items():
        known = [i.kwh for i in values if i.kwh is not None]
        totals[name] = sum(known, Decimal(0)) if len(known) == count else None
        register = day_delta(series[name], start, end)
        sums_equal[name] = totals[name] is not None and totals[name] == register
    out: dict[str, Any] = {
        "periods": count,
        "complete": {name: sum(1 for i in values if i.kwh is not None) for name, values in periods.items()},
        "off_boundary": {name: sum(1 for i in values if any(f.startswith("off_boundary") for f in i.flags))
                         for name, values in periods.items()},
        "totals_kwh": {name: None if v is None else str(v) for name, v in totals.items()},
        "register_delta_kwh": {name: (None if (d := day_delta(rows, start, end)) is None else str(d))
                               for name, rows in series.items()},
        "sums_equal_register_delta": sums_equal,
        "intervals": table,
    }
    produced, exported, imported = totals.get("production"), totals.get("export"), totals.get("import")
    if produced is not None and exported is not None and imported is not None:
        self_consumed = produced - exported
        consumed = imported + self_consumed
        out["self_consumed_kwh"] = str(self_consumed)
        out["consumed_kwh"] = str(consumed)
        out["self_consumption_rate"] = float(self_consumed / produced) if produced else None
        out["self_sufficiency"] = float(self_consumed / consumed) if consumed else None
    return out
