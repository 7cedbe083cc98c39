"""Flat by flat: each flat's heat cost allocator and water meters before and after a retrofit.

The building's heat meter says what the block saved; the flats' allocators
say how each flat's space heating changed. An allocator counts HCA units in
proportion to the heat its radiator gives off, so for each flat, on the
days every allocator of the building was measured:

- its **share** of the building's units: how the building's heat divides
  among the flats (what a heat bill is split by);
- its **units per heating degree day**, before and after the retrofit, and
  the change: the flat's space heating corrected for the weather (degree
  days below the building's base temperature, from the same daily mean
  temperatures the building's model uses);
- its cold and hot water per day, before and after (not weather dependent).

A flat whose allocator is missing on a day leaves that day out for every
flat (shares must add up to one); `days_ok` says how many days each meter
was measured on its own. Daily values come from verify.py (interpolated at
local midnights, DST-correct, a reset or swap breaking the day), so a flat
is verified by the same rules as the building. Pure arithmetic: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

BASE_TEMPERATURE_C = 15.5  # the building's, when its metadata does not say
HCA_POINT = "hca_units"
WATER_POINT = "volume"
_DEVICE = re.compile(r"^(?P<flat>.+)-(?P<kind>hca|cold|hot)$")


@dataclass(frozen=True)
class FlatMeter:
    device: str
    flat: str
    kind: str  # hca, cold, hot
    true_share: float | None = None  # the simulator's allocator share (meta.json), for comparison

    @property
    def point(self) -> str:
        return HCA_POINT if self.kind == "hca" else WATER_POINT


def flat_meters(devices: Iterable[tuple[str, str]], meta: Mapping[str, Any] | None) -> list[FlatMeter]:
    """The flats' meters among the stored (device, point) series.

    A simulated building's meta.json lists them (and each allocator's true
    share); otherwise a device named ``<flat>-hca`` with ``hca_units``, or
    ``<flat>-cold`` / ``<flat>-hot`` with ``volume``, is one.
    """
    listed = ((meta or {}).get("apartments") or {}).get("meters") or {}
    out = []
    for device, point in sorted(set(devices)):
        match = _DEVICE.match(device)
        if match is None or (listed and device not in listed):
            continue
        kind = match["kind"]
        if point != (HCA_POINT if kind == "hca" else WATER_POINT):
            continue
        share = (listed.get(device) or {}).get("share")
        out.append(FlatMeter(device, match["flat"], kind, float(share) if share is not None else None))
    return out


def degree_days(temperature: Mapping[str, float | None], base_c: float) -> dict[str, float | None]:
    return {day: None if t is None else max(0.0, base_c - t) for day, t in temperature.items()}


def report(meters: Sequence[FlatMeter], daily: Mapping[str, Mapping[str, float | None]],
           hdd: Mapping[str, float | None], baseline: Sequence[str], reporting: Sequence[str]) -> dict[str, Any]:
    """The flats section of the verification report (see the module docstring).

    ``daily``: device -> local date -> the day's units or m3 (None: not
    measured). ``baseline`` and ``reporting``: the periods' local dates.
    """
    allocators = [m for m in meters if m.kind == "hca"]
    periods = {"baseline": list(baseline), "reporting": list(reporting)}
    complete = {name: [d for d in dates if hdd.get(d) is not None
                       and all(daily[m.device].get(d) is not None for m in allocators)]
                for name, dates in periods.items()}
    totals = {name: sum(float(daily[m.device][d] or 0.0) for m in allocators for d in days)
              for name, days in complete.items()}
    degree = {name: sum(float(hdd[d] or 0.0) for d in days) for name, days in complete.items()}
    flats: dict[str, dict[str, Any]] = {}
    for meter in meters:
        entry = flats.setdefault(meter.flat, {"meters": {}})
        entry["meters"][meter.kind] = meter.device
        measured = [d for d in periods["baseline"] + periods["reporting"] if daily[meter.device].get(d) is not None]
        entry.setdefault("days_ok", {})[meter.kind] = len(measured)
        if meter.kind == "hca":
            entry.update(_allocator(meter, daily[meter.device], complete, totals, degree))
        else:
            entry.setdefault("water_m3_per_day", {})[meter.kind] = _water(daily[meter.device], periods)
    building: dict[str, Any] = {
        "complete_days": {name: len(days) for name, days in complete.items()},
        "degree_days": {name: round(value, 3) for name, value in degree.items()},
        "units_per_degree_day": {name: _ratio(totals[name], degree[name]) for name in periods},
    }
    building["units_per_degree_day"]["change"] = _change(building["units_per_degree_day"])
    return {"building": building, "flats": flats, "allocators": len(allocators),
            "meaning": "HCA units per heating degree day: a flat's space heating, weather-corrected; share: "
                       "its part of the building's units; days every allocator was measured only"}


def _allocator(meter: FlatMeter, days: Mapping[str, float | None], complete: Mapping[str, list[str]],
               totals: Mapping[str, float], degree: Mapping[str, float]) -> dict[str, Any]:
    units = {name: sum(float(days[d] or 0.0) for d in dates) for name, dates in complete.items()}
    share: dict[str, float | None] = {name: _ratio(units[name], totals[name]) for name in complete}
    if meter.true_share is not None:
        share["true"] = round(meter.true_share, 6)
    per_degree_day: dict[str, float | None] = {name: _ratio(units[name], degree[name]) for name in complete}
    per_degree_day["change"] = _change(per_degree_day)
    return {"hca_units": {name: round(value, 3) for name, value in units.items()}, "share": share,
            "units_per_degree_day": per_degree_day}


def _water(days: Mapping[str, float | None], periods: Mapping[str, list[str]]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for name, dates in periods.items():
        values = [float(v) for d in dates if (v := days.get(d)) is not None]
        out[name] = round(sum(values) / len(values), 6) if values else None
    out["change"] = _change(out)
    return out


def _ratio(part: float, whole: float) -> float | None:
    return round(part / whole, 6) if whole else None


def _change(values: Mapping[str, float | None]) -> float | None:
    before, after = values.get("baseline"), values.get("reporting")
    return round(after / before - 1, 6) if before and after is not None else None


def render(section: Mapping[str, Any]) -> list[str]:
    """The lines a person reads: the building's allocators, then one line per flat."""
    building = section["building"]
    per = building["units_per_degree_day"]
    lines = [(f"  flats: {section['allocators']} allocator(s); days all were measured: "
             f"{building['complete_days']['baseline']} before, {building['complete_days']['reporting']} after; "
             f"HCA units per degree day {_text(per['baseline'])} -> {_text(per['reporting'])} ({_pct(per['change'])})")]
    for flat, entry in sorted(section["flats"].items()):
        parts = []
        if "share" in entry:
            share = entry["share"]
            true = f" (true {share['true']:.1%})" if share.get("true") is not None else ""
            parts.append(f"share {_pct(share['reporting'], sign=False)}{true}")
            per_flat = entry["units_per_degree_day"]
            parts.append(f"units/degree day {_text(per_flat['baseline'])} -> {_text(per_flat['reporting'])} "
                         f"({_pct(per_flat['change'])})")
        for kind, water in sorted(entry.get("water_m3_per_day", {}).items()):
            parts.append(f"{kind} {_text(water['baseline'], 3)} -> {_text(water['reporting'], 3)} m3/day")
        lines.append(f"    {flat}: " + "; ".join(parts))
    return lines


def _text(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _pct(value: float | None, sign: bool = True) -> str:
    return "-" if value is None else (f"{value:+.1%}" if sign else f"{value:.1%}")
