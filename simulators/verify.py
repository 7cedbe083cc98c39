"""`retrofit-sim verify`: the platform's verification step, on what it stored.

From the readings `retrofit-sim platform --store FILE` kept, it makes what
an energy office needs to defend a saving (docs/savings.md):

1. **Daily energy** of every counter (heat, electricity) and of the building,
   from the counter's value at each *local* midnight (Europe/Warsaw by
   default; zoneinfo, so a day is 23 or 25 hours at a clock change),
   interpolated between the readings on either side of it. Each day has its
   coverage (the share of it the gateway watched the counter) and the flags
   met on it, handled as the payload contract says (simulators/counters.py)
   and listed, never repaired in silence.
2. **Completeness** of every stream: each missing id explained by an event
   (evicted, corrupt, lost, salvaged) or counted unexplained, and the
   windows in which readings that never had an id may be missing
   (dropped, unclean_stop).
3. **Outdoor temperature**, the day's mean: from the simulated building's
   weather (its ground truth) or from a CSV in the layout of IMGW's public
   daily data (simulators/imgw.py).
4. **The saving**, with the reference implementation of the CalTRACK daily
   method, OpenDSM (an optional extra: ``pip install .[platform]``): its
   data-sufficiency verdict, the baseline model, the avoided energy over the
   reporting period, and the statistics of ASHRAE Guideline 14 (CV(RMSE),
   NMBE, the fractional savings uncertainty at 90 % confidence).

The report is a JSON file and a PNG (baseline model vs measured daily use;
the plot needs matplotlib, and is skipped with a word when it is missing).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from drivers.core.errors import RetrofitError
from simulators import counters, flats
from simulators.platform_store import Received

REPORT_SCHEMA = "retrofit-sim/verify/1"
ENERGY_UNITS = {"Wh": Decimal("0.001"), "kWh": Decimal(1), "MWh": Decimal(1000)}
HOUR = 3600.0
# Readings further apart than this are not "watching" the counter: the time
# between them is not coverage (the energy across it is still known).
MAX_GAP_S = 12 * HOUR
# A day counts as measured when the gateway watched at least this share of it
# (CalTRACK 2.2.2.1 treats a day with more than half its data missing as missing).
MIN_DAY_COVERAGE = 0.5
CONFIDENCE = 0.90


# ---------------------------------------------------------------- time

@dataclass(frozen=True)
class TimeMap:
    """Wall clock (the readings' ts) -> the building's time: a simulated
    building runs ``acceleration`` times faster from ``wall0`` on."""

    wall0: float = 0.0
    sim0: float = 0.0
    acceleration: float = 1.0

    @classmethod
    def of(cls, meta: Mapping[str, Any] | None) -> TimeMap:
        if not meta:
            return cls()
        return cls(meta["wall_start_ms"] / 1000, float(meta["sim_start"]), float(meta["acceleration"]))

    def __call__(self, ts_ms: int) -> float:
        return self.sim0 + (ts_ms / 1000 - self.wall0) * self.acceleration


@dataclass(frozen=True)
class LocalDay:
    date: str
    start: float
    end: float

    @property
    def hours(self) -> float:
        return (self.end - self.start) / HOUR


def local_days(first: float, last: float, zone: ZoneInfo) -> list[LocalDay]:
    """Every local day that touches [first, last], DST-correct."""
    day = dt.datetime.fromtimestamp(first, zone).date()
    end = dt.datetime.fromtimestamp(last, zone).date()
    out = []
    while day <= end:
        following = day + dt.timedelta(days=1)
        out.append(LocalDay(day.isoformat(), _midnight(day, zone), _midnight(following, zone)))
        day = following
    return out


def _midnight(day: dt.date, zone: ZoneInfo) -> float:
    return dt.datetime(day.year, day.month, day.day, tzinfo=zone).timestamp()


def _local(t: float, zone: ZoneInfo) -> str:
    return dt.datetime.fromtimestamp(t, zone).isoformat(timespec="seconds")


# ---------------------------------------------------------------- readings -> series

@dataclass
class Prepared:
    """Counter rows per series in the building's time, and what was left out."""

    rows: dict[tuple[str, str], list[counters.Row]] = field(default_factory=dict)
    units: dict[tuple[str, str], str] = field(default_factory=dict)
    held: list[dict[str, Any]] = field(default_factory=list)  # clock_unsynced without a correction
    corrected: int = 0  # readings whose ts a clock_corrected event moved
    salvaged_copies: int = 0  # readings that came twice, once per stream (a salvaged buffer)
    before_start: int = 0
    removed: int = 0  # readings of the days dropped on purpose (drop_days)


def prepare(received: Received, time_map: TimeMap, meta: Mapping[str, Any] | None = None,
            drop: Iterable[LocalDay] = (), units: Mapping[str, Decimal] = ENERGY_UNITS) -> Prepared:
    """Apply the clock corrections, leave out salvaged copies and readings of
    an earlier run, map ts to the building's time and group counters by series."""
    out = Prepared()
    corrections = [(e["stream"], int(e["first_id"]), int(e["last_id"]), int(e["add_ms"]))
                   for e in received.events if e.get("type") == "clock_corrected"]
    dropped = sorted((d.start, d.end) for d in drop)
    seen: set[tuple[str, str, int, Decimal | None]] = set()
    for reading in received.readings:
        factor = units.get(reading.unit)
        if factor is None:
            continue
        if meta and reading.ts < meta["wall_start_ms"]:
            out.before_start += 1
            continue
        ts = reading.ts
        flags = set(reading.quality.split("+"))
        if "clock_unsynced" in flags and "restamped" not in flags:
            add = next((a for s, f, la, a in corrections if s == reading.stream and f <= reading.id <= la), None)
            if add is None:
                out.held.append({"stream": reading.stream, "id": reading.id, "device": reading.device,
                                 "point": reading.point, "why": "clock_unsynced and no clock_corrected event "
                                 "for it yet: held, not used"})
                continue
            ts += add
            out.corrected += 1
        key = (reading.device, reading.point)
        identity = (reading.device, reading.point, ts, reading.value)
        if identity in seen:  # the same reading under another stream: a salvaged copy
            out.salvaged_copies += 1
            continue
        seen.add(identity)
        t = time_map(ts)
        if dropped and any(a <= t < b for a, b in dropped):
            out.removed += 1
            continue
        value = reading.value * factor if reading.value is not None else None
        out.rows.setdefault(key, []).append(counters.Row(t, value, reading.quality, reading.id, reading.stream))
        out.units[key] = reading.unit
    for rows in out.rows.values():
        rows.sort(key=lambda row: (row.t, row.stream, row.id))
    return out


# ---------------------------------------------------------------- daily energy

@dataclass
class DayEnergy:
    date: str
    kwh: float | None
    coverage: float
    status: str  # ok, missing
    reasons: list[str] = field(default_factory=list)
    flags: list[dict[str, str]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kwh": None if self.kwh is None else round(self.kwh, 4),
                               "coverage": round(self.coverage, 4), "status": self.status}
        if self.reasons:
            out["reasons"] = self.reasons
        if self.flags:
            out["flags"] = self.flags
        return out


def daily_energy(series: counters.Series, days: Sequence[LocalDay], zone: ZoneInfo,
                 max_gap: float = MAX_GAP_S) -> dict[str, DayEnergy]:
    """Each local day's energy: the counter at its end minus at its start.

    A midnight's value is interpolated between the readings on either side
    of it in one segment, when the nearer is within ``max_gap`` / 2. A day
    is ``ok`` when both midnights are known, in the same segment (no reset
    or swap inside the day), and the gateway watched at least half of it.
    """
    out: dict[str, DayEnergy] = {}
    notes_by_day: dict[str, list[counters.Note]] = {}
    for note in series.notes:
        notes_by_day.setdefault(dt.datetime.fromtimestamp(note.t, zone).date().isoformat(), []).append(note)
    for day in days:
        begin, finish = counters.at(series, day.start), counters.at(series, day.end)
        coverage = counters.covered(series, day.start, day.end, max_gap) / (day.end - day.start)
        reasons = []
        for name, boundary, moment in (("start", begin, day.start), ("end", finish, day.end)):
            if boundary is None:
                reasons.append(f"no series spans the {name} midnight ({_local(moment, zone)})")
            elif boundary.distance > max_gap / 2:
                reasons.append(f"the nearest reading to the {name} midnight is {boundary.distance / HOUR:.1f} h "
                               f"away (more than {max_gap / 2 / HOUR:g} h)")
        kwh = None
        if begin is not None and finish is not None and not reasons:
            if begin.segment != finish.segment:
                reasons.append("the series breaks inside the day (a reset or a meter swap): its energy is unknown")
            else:
                kwh = finish.value - begin.value
        if coverage < MIN_DAY_COVERAGE:
            reasons.append(f"the gateway watched {coverage:.0%} of the day (less than {MIN_DAY_COVERAGE:.0%}): "
                           "not a measured day")
        flags = [{"at": _local(n.t, zone), "quality": n.quality, "what": n.kind, "handled": n.detail}
                 for n in notes_by_day.get(day.date, ())]
        status = "ok" if kwh is not None and not reasons else "missing"
        out[day.date] = DayEnergy(day.date, kwh if status == "ok" else None, coverage, status, reasons, flags)
    return out


# ---------------------------------------------------------------- completeness

def completeness(received: Received, zone: ZoneInfo, time_map: TimeMap) -> dict[str, Any]:
    """Per stream: ids received, and every missing id explained by an event or not."""
    by_stream: dict[str, set[int]] = {}
    for reading in received.readings:
        by_stream.setdefault(reading.stream, set()).add(reading.id)
    explained: dict[str, list[tuple[int, int, str]]] = {}
    windows: list[dict[str, Any]] = []
    lost_after: dict[str, int] = {}
    for event in received.events:
        kind, stream = event.get("type"), str(event.get("stream"))
        if kind in ("evicted", "corrupt"):
            explained.setdefault(stream, []).append((int(event["first_id"]), int(event["last_id"]), str(kind)))
        elif kind in ("lost", "salvaged") and event.get("from_first_id") is not None:
            old = str(event.get("from_stream"))
            explained.setdefault(old, []).append((int(event["from_first_id"]), int(event["from_last_id"]),
                                                  str(kind)))
        elif kind == "lost" and event.get("after_id") is not None:
            lost_after[str(event.get("from_stream"))] = int(event["after_id"])
        if kind == "dropped":
            windows.append({"type": "dropped", "stream": stream, "count": event.get("count"),
                            "from": _local(time_map(int(event["first_ts"])), zone),
                            "to": _local(time_map(int(event["last_ts"])), zone), "reason": event.get("reason"),
                            "meaning": "readings held in memory were given up (the card refused writes): "
                                       "they never had ids"})
        elif kind == "unclean_stop" and event.get("last_ts") is not None:
            lost_s = float(event.get("may_have_lost_s") or 0)
            begin = int(event["last_ts"])
            windows.append({"type": "unclean_stop", "stream": stream, "last_id": event.get("last_id"),
                            "from": _local(time_map(begin), zone),
                            "to": _local(time_map(begin + int(lost_s * 1000)), zone),
                            "meaning": "the previous run ended without a clean stop: readings taken in this "
                                       "window may be lost (they never had ids)"})
    out: dict[str, Any] = {}
    for stream in sorted(set(by_stream) | set(explained)):
        ids = by_stream.get(stream, set())
        ranges = explained.get(stream, [])
        top = max([max(ids, default=0)] + [b for _, b, _ in ranges])
        if not top:
            continue
        first = min([min(ids, default=top)] + [a for a, _, _ in ranges])
        counts: dict[str, int] = {}
        unexplained: list[int] = []
        for i in range(first, top + 1):
            if i in ids:
                continue
            why = next((k for a, b, k in ranges if a <= i <= b), None)
            if why is None and stream in lost_after and i > lost_after[stream]:
                why = "lost"
            if why is None:
                unexplained.append(i)
            else:
                counts[why] = counts.get(why, 0) + 1
        span = top - first + 1
        info = received.streams.get(stream, {})
        out[stream] = {"gateway": info.get("gateway"), "first_id": first, "last_id": top, "received": len(ids),
                       "duplicates": info.get("duplicates", 0), "explained": counts,
                       "unexplained": len(unexplained), "unexplained_ranges": _ranges(unexplained)[:20],
                       "complete_pct": round(100.0 * len(ids) / span, 3),
                       "accounted_pct": round(100.0 * (span - len(unexplained)) / span, 3)}
    return {"streams": out, "windows": windows}


def _ranges(ids: Sequence[int]) -> list[list[int]]:
    out: list[list[int]] = []
    for i in ids:
        if out and out[-1][1] == i - 1:
            out[-1][1] = i
        else:
            out.append([i, i])
    return out


# ---------------------------------------------------------------- temperature

def simulated_temperatures(meta: Mapping[str, Any], days: Iterable[LocalDay]) -> dict[str, float]:
    """The day's mean outdoor temperature from the simulated building's weather
    (simulators/physics.py): the ground truth, as a weather service would report it."""
    from simulators import physics

    w = meta["weather"]
    weather = physics.Weather(int(w["seed"]), float(w["mean"]), float(w["daily_sd"]),
                              float(w["diurnal_amplitude"]), float(w["trend_per_day"]), float(w["start"]),
                              float(w.get("annual_amplitude", 0.0)), float(w.get("coldest_day", 20.0)))
    return {d.date: round(weather.daily_mean(d.start, d.end), 3) for d in days}


# ---------------------------------------------------------------- statistics (ASHRAE Guideline 14)

@dataclass(frozen=True)
class FitStatistics:
    n: int
    p: int
    mean: float
    cvrmse: float  # sqrt(sum (y - yhat)^2 / (n - p)) / mean(y)
    nmbe: float  # sum (y - yhat) / ((n - p) * mean(y))
    rho: float  # lag-1 autocorrelation of the residuals
    n_effective: float  # n (1 - rho) / (1 + rho)


def fit_statistics(observed: Sequence[float], predicted: Sequence[float], parameters: int,
                   consecutive: Sequence[bool] | None = None) -> FitStatistics:
    """The baseline model's goodness of fit, as ASHRAE Guideline 14-2014
    defines it (section 4.1.3 and Annex B): CV(RMSE) and NMBE with n - p
    degrees of freedom, and the lag-1 autocorrelation of the residuals that
    makes daily data count as fewer independent points. ``consecutive[i]``
    says whether point i follows point i - 1 by one day (a gap breaks the lag)."""
    n = len(observed)
    if n != len(predicted) or n <= parameters + 1:
        raise ValueError(f"need more than {parameters + 1} points, got {n}")
    residuals = [y - f for y, f in zip(observed, predicted, strict=True)]
    mean = sum(observed) / n
    dof = n - parameters
    cvrmse = math.sqrt(sum(r * r for r in residuals) / dof) / mean
    nmbe = sum(residuals) / (dof * mean)
    centred = [r - sum(residuals) / n for r in residuals]
    pairs = [(centred[i - 1], centred[i]) for i in range(1, n) if consecutive is None or consecutive[i]]
    denominator = sum(c * c for c in centred)
    rho = sum(a * b for a, b in pairs) / denominator if denominator and pairs else 0.0
    rho = min(max(rho, 0.0), 0.99)  # a negative lag correlation does not add points
    return FitStatistics(n, parameters, mean, cvrmse, nmbe, rho, n * (1 - rho) / (1 + rho))


def t_quantile(confidence: float, dof: float) -> float:
    """Two-sided Student's t at ``confidence`` with ``dof`` degrees of freedom."""
    from scipy import stats  # type: ignore[import-untyped]  # OpenDSM's dependency: the `platform` extra

    return float(stats.t.ppf(1 - (1 - confidence) / 2, max(dof, 1.0)))


def savings_uncertainty(fit: FitStatistics, reporting_points: int, fraction: float,
                        confidence: float = CONFIDENCE) -> float:
    """ASHRAE Guideline 14-2014, Annex B: the fractional savings uncertainty

        U = 1.26 t CV sqrt( (n / n') (1 + 2 / n') (1 / m) ) / F

    with CV the baseline CV(RMSE), n baseline points (n' effective), m
    reporting points, F the savings as a fraction of the baseline-predicted
    use, t at ``confidence`` with n' - p degrees of freedom. The saving is
    then F +- U x F: at 90 % confidence, the true saving lies in that band."""
    if not fraction:
        return math.inf
    t = t_quantile(confidence, fit.n_effective - fit.p)
    n, n_eff = fit.n, fit.n_effective
    return 1.26 * t * fit.cvrmse * math.sqrt((n / n_eff) * (1 + 2 / n_eff) / reporting_points) / abs(fraction)


# ---------------------------------------------------------------- the saving (OpenDSM)

def opendsm_available() -> str | None:
    """OpenDSM's version, or None when it cannot be imported (see opendsm_problem)."""
    return None if opendsm_problem() else str(getattr(__import__("opendsm"), "__version__", "?"))


def opendsm_problem() -> str | None:
    """Why OpenDSM cannot be used, or None. It imports matplotlib without
    declaring it, so the `platform` extra carries matplotlib too."""
    try:
        import opendsm  # noqa: F401
        from opendsm import eemeter  # noqa: F401
    except ImportError as exc:
        if getattr(exc, "name", None) == "opendsm":
            return "OpenDSM is not installed: pip install 'retrofit-agent[platform]'"
        return f"OpenDSM cannot be imported ({type(exc).__name__}: {exc}): pip install 'retrofit-agent[platform]'"
    return None


def daily_frame(days: Sequence[LocalDay], energy: Mapping[str, float | None], temperature: Mapping[str, float | None],
                zone: ZoneInfo) -> Any:
    """The table OpenDSM reads: a daily, timezone-aware index, the day's mean
    temperature in degrees Fahrenheit (the library's unit) and the observed
    use (NaN on a missing day)."""
    import pandas as pd

    index = pd.DatetimeIndex([pd.Timestamp(d.date).tz_localize(zone) for d in days], name="datetime")
    temps = [temperature.get(d.date) for d in days]
    return pd.DataFrame({"temperature": [t * 9 / 5 + 32 if t is not None else float("nan") for t in temps],
                         "observed": [energy.get(d.date) if energy.get(d.date) is not None else float("nan")
                                      for d in days]}, index=index)


def _warning_text(warning: Any) -> str:
    data = getattr(warning, "data", None) or {}
    shown = ", ".join(f"{k} {v}" for k, v in data.items() if not isinstance(v, list | dict))
    return f"{warning.qualified_name}: {warning.description}" + (f" ({shown})" if shown else "")


def caltrack_savings(baseline: Sequence[LocalDay], reporting: Sequence[LocalDay], energy: Mapping[str, float | None],
                     temperature: Mapping[str, float | None], zone: ZoneInfo) -> dict[str, Any]:
    """The CalTRACK daily model fitted by OpenDSM on the baseline, its
    sufficiency verdict, and the avoided energy over the reporting period."""
    import logging

    from opendsm import eemeter

    logging.getLogger("eemeter").setLevel(logging.ERROR)  # its warnings are in the report
    base_frame = daily_frame(baseline, energy, temperature, zone)
    report_frame = daily_frame(reporting, energy, temperature, zone)
    baseline_data = eemeter.DailyBaselineData(base_frame, is_electricity_data=False)
    reporting_data = eemeter.DailyReportingData(report_frame, is_electricity_data=False)
    observed_days = int(base_frame["observed"].notna().sum())
    reasons = [_warning_text(w) for w in baseline_data.disqualification] + \
        [f"reporting period: {_warning_text(w)}" for w in reporting_data.disqualification]
    out: dict[str, Any] = {
        "method": f"CalTRACK daily model, OpenDSM {opendsm_available()}",
        "baseline": _period(baseline, base_frame), "reporting": _period(reporting, report_frame),
        "sufficiency": {"verdict": "insufficient" if reasons else "sufficient", "reasons": reasons,
                        "baseline_coverage": round(observed_days / len(baseline), 4) if baseline else 0.0,
                        "warnings": [_warning_text(w) for w in baseline_data.warnings]},
    }
    if reasons:
        out["savings"] = None
        out["why_no_savings"] = ("CalTRACK data sufficiency is not met: no saving is stated (an energy office "
                                 "could not defend it)")
        return out
    model = eemeter.DailyModel().fit(baseline_data)
    fitted = model.predict(baseline_data)
    fitted = fitted[fitted["observed"].notna()]
    metrics = model.to_dict().get("info", {}).get("metrics", {})
    parameters = int(metrics.get("num_model_params") or 2)
    dates = [ts.date() for ts in fitted.index]
    consecutive = [i > 0 and (dates[i] - dates[i - 1]).days == 1 for i in range(len(dates))]
    fit = fit_statistics(fitted["observed"].tolist(), fitted["predicted"].tolist(), parameters, consecutive)
    result = model.predict(reporting_data)
    measured = result[result["observed"].notna()]
    avoided = float((measured["predicted"] - measured["observed"]).sum())
    counterfactual = float(measured["predicted"].sum())
    fraction = avoided / counterfactual if counterfactual else 0.0
    uncertainty = savings_uncertainty(fit, len(measured), fraction)
    out["model"] = {"parameters": parameters, "n": fit.n, "n_effective": round(fit.n_effective, 2),
                    "residual_autocorrelation": round(fit.rho, 4), "cvrmse": round(fit.cvrmse, 5),
                    "nmbe": round(fit.nmbe, 6), "opendsm_cvrmse_adj": metrics.get("cvrmse_adj"),
                    "splits": sorted(set(map(str, fitted.get("model_split", [])))),
                    "ashrae14_limits": {"cvrmse_daily_max": 0.25, "nmbe_max": 0.10,
                                        "met": fit.cvrmse <= 0.25 and abs(fit.nmbe) <= 0.10}}
    out["savings"] = {
        "reporting_days_measured": len(measured),
        "baseline_predicted_kwh": round(counterfactual, 3),
        "observed_kwh": round(float(measured["observed"].sum()), 3),
        "avoided_kwh": round(avoided, 3),
        "fraction": round(fraction, 6),
        "fsu_90": round(uncertainty, 6),
        "band_kwh": [round(avoided * (1 - uncertainty), 3), round(avoided * (1 + uncertainty), 3)],
        "band_fraction": [round(fraction * (1 - uncertainty), 6), round(fraction * (1 + uncertainty), 6)],
    }
    out["per_day"] = {ts.date().isoformat(): {"observed": _num(o), "predicted": _num(p), "temperature_c": _num(
        (t - 32) * 5 / 9)} for ts, o, p, t in zip(result.index, result["observed"], result["predicted"],
                                                  result["temperature"], strict=True)}
    out["per_day"].update({ts.date().isoformat(): {"observed": _num(o), "predicted": _num(p), "temperature_c": _num(
        (t - 32) * 5 / 9)} for ts, o, p, t in zip(fitted.index, fitted["observed"], fitted["predicted"],
                                                  fitted["temperature"], strict=True)})
    return out


def _num(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else round(number, 4)


def _period(days: Sequence[LocalDay], frame: Any) -> dict[str, Any]:
    return {"first": days[0].date if days else None, "last": days[-1].date if days else None, "days": len(days),
            "days_with_use": int(frame["observed"].notna().sum()),
            "days_with_temperature": int(frame["temperature"].notna().sum())}


# ---------------------------------------------------------------- the report

@dataclass
class VerifyOptions:
    meter: str | None = None  # device/point to model; default: the building's heat
    retrofit: str | None = None  # ISO date; default: the building's retrofit (meta.json)
    baseline_days: int = 365
    reporting_days: int | None = None  # default: every day after the retrofit with data
    drop_fraction: float = 0.0  # leave out this share of days at random (a gateway powered off)
    seed: int = 1
    timezone: str | None = None  # default: the building's, else Europe/Warsaw
    max_gap: float = MAX_GAP_S
    weather: Mapping[str, float | None] | None = None  # date -> mean degC from a weather file (simulators/imgw.py)
    weather_source: str = ""


def verify(received: Received, meta: Mapping[str, Any] | None, options: VerifyOptions | None = None
           ) -> dict[str, Any]:
    """The whole verification report, as plain data."""
    options = options or VerifyOptions()
    zone = ZoneInfo(options.timezone or (meta or {}).get("timezone") or "Europe/Warsaw")
    time_map = TimeMap.of(meta)
    report: dict[str, Any] = {"schema": REPORT_SCHEMA, "timezone": zone.key,
                              "time": "simulated (building metadata)" if meta else "wall clock",
                              "completeness": completeness(received, zone, time_map)}
    counter_readings = [r for r in received.readings if r.unit in ENERGY_UNITS]
    if not counter_readings:
        report["meters"] = {}
        report["note"] = "no energy counter readings stored yet"
        return report
    times = [time_map(r.ts) for r in counter_readings if not meta or r.ts >= meta["wall_start_ms"]]
    all_days = local_days(min(times), max(times), zone)
    drop = _days_to_drop(all_days, options) if options.drop_fraction else []
    prepared = prepare(received, time_map, meta, drop)
    report["left_out"] = {"held_clock_unsynced": prepared.held[:50], "held_count": len(prepared.held),
                          "clock_corrected": prepared.corrected, "salvaged_copies": prepared.salvaged_copies,
                          "before_start": prepared.before_start}
    if drop:
        report["dropped_days"] = {"fraction": options.drop_fraction, "seed": options.seed, "count": len(drop),
                                  "days": [d.date for d in drop], "readings_removed": prepared.removed,
                                  "meaning": "every reading of these local days left out, as if the gateway "
                                             "had been powered off from midnight to midnight"}
    meters: dict[str, Any] = {}
    daily: dict[str, dict[str, DayEnergy]] = {}
    for (device, point), rows in sorted(prepared.rows.items()):
        series = counters.build_series(rows)
        name = f"{device}/{point}"
        daily[name] = daily_energy(series, all_days, zone, options.max_gap)
        ok = [d for d in daily[name].values() if d.status == "ok"]
        meters[name] = {"device": device, "point": point, "unit": "kWh", "notes": series.counts(),
                        "days_ok": len(ok), "days": {k: v.as_json() for k, v in daily[name].items()}}
    report["meters"] = meters
    pv = pv_report(prepared, all_days, meta)
    if pv:
        report["pv"] = pv
    heat = sorted(n for n in daily if n.endswith("/energy_heat"))
    if heat:
        report["building"] = {"heat": _building(daily, heat, all_days)}
    target = options.meter or ("building/heat" if heat else next(iter(daily)))
    if target == "building/heat":
        energy = {d: v["kwh"] for d, v in report["building"]["heat"]["days"].items()}
    elif target in daily:
        energy = {d: v.kwh for d, v in daily[target].items()}
    else:
        raise RetrofitError(f"--meter {target}: no such counter series; there are: "
                            + ", ".join(["building/heat"] * bool(heat) + sorted(daily)))
    if options.weather is not None:
        temperature: dict[str, float | None] = dict(options.weather)
        source = options.weather_source
    elif meta and "weather" in meta:
        temperature = dict(simulated_temperatures(meta, all_days))
        source = "the simulated building's weather (simulators/physics.py), daily mean of local days"
    else:
        temperature, source = {}, "none"
    report["temperature"] = {"source": source,
                             "days": {d.date: temperature.get(d.date) for d in all_days}}
    report["analysed"] = target
    retrofit = options.retrofit or ((meta or {}).get("retrofit") or {}).get("at_iso")
    flats_section = _flats(received, time_map, meta, drop, all_days, zone, temperature, retrofit, options)
    if flats_section:
        report["flats"] = flats_section
    if retrofit is None:
        report["savings"] = {"why_no_savings": "no retrofit date (give --retrofit YYYY-MM-DD)"}
        return report
    retrofit_day = _retrofit_day(retrofit, zone)
    baseline = [d for d in all_days if d.date < retrofit_day][-options.baseline_days:]
    after = [d for d in all_days if d.date >= retrofit_day]
    if options.reporting_days is not None:
        after = after[:options.reporting_days]
    else:  # up to the last day with use measured
        measured = [i for i, d in enumerate(after) if energy.get(d.date) is not None]
        after = after[:measured[-1] + 1] if measured else []
    report["periods"] = {"retrofit": retrofit_day, "baseline_first": baseline[0].date if baseline else None,
                         "reporting_last": after[-1].date if after else None}
    problem = opendsm_problem()
    if problem is not None:
        report["savings"] = {"why_no_savings": problem}
        return report
    if not baseline or not after:
        report["savings"] = {"why_no_savings": "no days on one side of the retrofit yet"}
        return report
    report["savings"] = caltrack_savings(baseline, after, energy, temperature, zone)
    if meta and meta.get("local_days"):
        report["savings"]["true"] = true_saving(meta, report["savings"], heat if target == "building/heat"
                                                else [target])
    return report


PV_INTERVAL_DAYS = 14  # the report lists every 15-minute period of at most this many days


def pv_report(prepared: Prepared, days: Sequence[LocalDay], meta: Mapping[str, Any] | None) -> dict[str, Any]:
    """15-minute import, export and PV production per day (simulators/intervals.py),
    where a PV inverter and a bidirectional main meter were read."""
    from simulators import intervals

    producers = sorted(d for d, p in prepared.rows if p == "energy_produced")
    mains = [d for d, p in prepared.rows
             if p == "energy_active_export" and (d, "energy_active_import") in prepared.rows]
    devices = (meta or {}).get("devices", {})
    mains = sorted(d for d in mains if devices.get(d, {}).get("pv")) or sorted(mains)
    if not producers or not mains:
        return {}
    main, producer = mains[0], producers[0]
    series = {"import": prepared.rows[(main, "energy_active_import")],
              "export": prepared.rows[(main, "energy_active_export")],
              "production": prepared.rows[(producer, "energy_produced")]}
    out: dict[str, Any] = {"main_meter": main, "inverter": producer, "days": {}}
    for day in days:
        if not all(rows and rows[0].t <= day.start and rows[-1].t >= day.end for rows in series.values()):
            continue
        result = intervals.pv_day(series, day.start, day.end)
        if len(days) > PV_INTERVAL_DAYS:
            result.pop("intervals")
        out["days"][day.date] = result
    return out


# The flats' meters' units (simulators/flats.py): HCA units and water volume.
FLAT_UNITS = {"HCA": Decimal(1), "m3": Decimal(1)}


def _flats(received: Received, time_map: TimeMap, meta: Mapping[str, Any] | None, drop: Sequence[LocalDay],
           days: Sequence[LocalDay], zone: ZoneInfo, temperature: Mapping[str, float | None], retrofit: str | None,
           options: VerifyOptions) -> dict[str, Any]:
    """Each flat's allocator and water meters before and after the retrofit (simulators/flats.py)."""
    prepared = prepare(received, time_map, meta, drop, FLAT_UNITS)
    meters = flats.flat_meters(prepared.rows, meta)
    if not meters:
        return {}
    daily = {m.device: {d: v.kwh for d, v in daily_energy(counters.build_series(prepared.rows[(m.device, m.point)]),
                                                          days, zone, options.max_gap).items()}
             for m in meters}
    dates = [d.date for d in days]
    if retrofit is None:
        baseline, reporting = dates, []
    else:
        first = _retrofit_day(retrofit, zone)
        baseline = [d for d in dates if d < first][-options.baseline_days:]
        reporting = [d for d in dates if d >= first]
        if options.reporting_days is not None:
            reporting = reporting[:options.reporting_days]
    base_c = float((meta or {}).get("base_temperature", flats.BASE_TEMPERATURE_C))
    section = flats.report(meters, daily, flats.degree_days(temperature, base_c), baseline, reporting)
    section["base_temperature"] = base_c
    return section


def _retrofit_day(moment: str, zone: ZoneInfo) -> str:
    text = moment.replace("Z", "+00:00")
    if len(text) == 10:
        return text
    return dt.datetime.fromisoformat(text).astimezone(zone).date().isoformat()


def _days_to_drop(days: Sequence[LocalDay], options: VerifyOptions) -> list[LocalDay]:
    inner = list(days[1:-1])  # the first and last day are partial anyway
    count = round(options.drop_fraction * len(inner))
    return sorted(random.Random(options.seed).sample(inner, min(count, len(inner))), key=lambda d: d.start)


def _building(daily: Mapping[str, Mapping[str, DayEnergy]], names: Sequence[str],
              days: Sequence[LocalDay]) -> dict[str, Any]:
    """The building's heat per day: the sum of its heat meters on days all of them measured."""
    out: dict[str, Any] = {}
    for day in days:
        parts = [daily[n][day.date] for n in names]
        missing = [f"{n}: {'; '.join(p.reasons) or p.status}" for n, p in zip(names, parts, strict=True)
                   if p.status != "ok"]
        out[day.date] = {"kwh": None if missing else round(sum(p.kwh or 0.0 for p in parts), 4),
                         "coverage": round(min(p.coverage for p in parts), 4),
                         "status": "missing" if missing else "ok", **({"reasons": missing} if missing else {})}
    return {"meters": list(names), "days": out, "days_ok": sum(1 for v in out.values() if v["status"] == "ok")}


def true_saving(meta: Mapping[str, Any], savings: Mapping[str, Any], names: Sequence[str]) -> dict[str, Any]:
    """The simulator's exact avoided energy on the reporting days the model
    measured: counterfactual (no retrofit, same weather and occupants) minus actual."""
    devices = [n.split("/", 1)[0] for n in names]
    truth = {d["date"]: d for d in meta["local_days"]}
    per_day = savings.get("per_day") or {}
    reporting = savings.get("reporting") or {}
    used = [day for day, v in per_day.items() if v["observed"] is not None
            and reporting.get("first") and reporting["first"] <= day <= reporting["last"]]
    known = [day for day in used if day in truth]
    counterfactual = sum(truth[d]["counterfactual_kwh"].get(dev, 0.0) for d in known for dev in devices)
    actual = sum(truth[d]["energy_kwh"].get(dev, 0.0) for d in known for dev in devices)
    avoided = counterfactual - actual
    out: dict[str, Any] = {"days": len(known), "counterfactual_kwh": round(counterfactual, 3),
                           "actual_kwh": round(actual, 3), "avoided_kwh": round(avoided, 3),
                           "fraction": round(avoided / counterfactual, 6) if counterfactual else None}
    measured = savings.get("savings")
    if measured and avoided:
        out["measured_minus_true_relative"] = round((measured["avoided_kwh"] - avoided) / avoided, 6)
        low, high = sorted(measured["band_kwh"])
        out["true_inside_band"] = low <= avoided <= high
    return out


# ---------------------------------------------------------------- text, files, plot

def render(report: Mapping[str, Any]) -> str:
    """The summary a person reads (the demo prints it)."""
    lines = [f"verification ({report['time']}, days in {report['timezone']}):"]
    for stream, c in report["completeness"]["streams"].items():
        explained = ", ".join(f"{k} {v}" for k, v in c["explained"].items()) or "none"
        lines.append(f"  stream {stream[:8]}: ids {c['first_id']}..{c['last_id']}, received {c['received']}, "
                     f"explained missing: {explained}; unexplained {c['unexplained']}")
    for window in report["completeness"]["windows"]:
        lines.append(f"  {window['type']}: {window['from']} .. {window['to']}: {window['meaning']}")
    for name, meter in report.get("meters", {}).items():
        flagged = sum(1 for d in meter["days"].values() if d.get("flags"))
        notes = ", ".join(f"{k} {v}" for k, v in meter["notes"].items())
        lines.append(f"  {name}: {meter['days_ok']} of {len(meter['days'])} day(s) measured"
                     + (f"; {flagged} day(s) with flagged readings ({notes})" if flagged else ""))
    for date, day in (report.get("pv") or {}).get("days", {}).items():
        totals = day["totals_kwh"]
        if None in totals.values():
            lines.append(f"  PV {date}: 15-minute periods with a reading near both boundaries: {day['complete']} of "
                         f"{day['periods']} (the counters must be read within 7.5 min of each quarter-hour)")
            continue
        lines.append(f"  PV {date}: {day['periods']} periods, complete {day['complete']}; produced "
                     f"{totals['production']} kWh, exported {totals['export']}, imported {totals['import']}; "
                     f"self-consumption {day.get('self_consumption_rate') or 0:.1%}, self-sufficiency "
                     f"{day.get('self_sufficiency') or 0:.1%}; periods sum to the register deltas: "
                     f"{'yes' if all(day['sums_equal_register_delta'].values()) else 'NO'}")
    savings = report.get("savings") or {}
    if "sufficiency" in savings:
        s = savings["sufficiency"]
        base = savings["baseline"]
        lines.append(f"  {savings['method']} on {report.get('analysed')}: baseline {base['first']}..{base['last']} "
                     f"({base['days_with_use']} of {base['days']} days with use, coverage "
                     f"{s['baseline_coverage']:.1%}); data sufficiency: {s['verdict'].upper()}")
        for reason in s["reasons"]:
            lines.append(f"    reason: {reason}")
    result = savings.get("savings") if isinstance(savings.get("savings"), dict) else None
    if result:
        model = savings["model"]
        lines.append(f"  baseline model: CV(RMSE) {model['cvrmse']:.1%}, NMBE {model['nmbe']:+.2%} "
                     f"(ASHRAE 14 daily limits 25 % / 10 %: {'met' if model['ashrae14_limits']['met'] else 'NOT met'})")
        lines.append(f"  reporting {savings['reporting']['first']}..{savings['reporting']['last']} "
                     f"({result['reporting_days_measured']} days measured): avoided {result['avoided_kwh']:,.0f} kWh "
                     f"= {result['fraction']:.1%} of the baseline-predicted {result['baseline_predicted_kwh']:,.0f} "
                     f"kWh, +- {result['fsu_90']:.1%} of it at 90 % confidence "
                     f"({result['band_kwh'][0]:,.0f} .. {result['band_kwh'][1]:,.0f} kWh)")
        true = savings.get("true")
        if true:
            lines.append(f"  true (simulator): avoided {true['avoided_kwh']:,.0f} kWh = {true['fraction']:.1%}; "
                         f"measured is {true.get('measured_minus_true_relative', 0):+.2%} off, "
                         f"{'inside' if true.get('true_inside_band') else 'OUTSIDE'} the 90 % band")
    elif savings.get("why_no_savings"):
        lines.append(f"  saving: {savings['why_no_savings']}")
    if report.get("flats"):
        lines += flats.render(report["flats"])
    return "\n".join(lines)


def write_report(report: Mapping[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1, default=str))
    return path


def plot(report: Mapping[str, Any], path: Path) -> bool:
    """Baseline model vs measured daily use (PNG); False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    savings = report.get("savings") or {}
    per_day = savings.get("per_day") or {}
    figure, axis = plt.subplots(figsize=(10, 4.8))
    days = sorted(per_day)
    x = [dt.date.fromisoformat(d) for d in days]
    axis.plot(x, [per_day[d]["predicted"] for d in days], color="tab:orange", linewidth=1.2,  # type: ignore[arg-type]
              label="baseline model (CalTRACK daily, OpenDSM)")
    axis.scatter(x, [per_day[d]["observed"] for d in days], s=6, color="tab:blue",  # type: ignore[arg-type]
                 label="measured daily use")
    retrofit = (report.get("periods") or {}).get("retrofit")
    if retrofit:
        axis.axvline(dt.date.fromisoformat(retrofit), color="grey", linestyle=":",  # type: ignore[arg-type]
                     label="retrofit")
    result = savings.get("savings") if isinstance(savings.get("savings"), dict) else None
    title = f"{report.get('analysed')}: baseline model vs measured daily use"
    if result:
        title += f"; saving {result['fraction']:.1%} +- {result['fsu_90'] * result['fraction']:.1%} (90 %)"
    axis.set_title(title, fontsize="medium")
    axis.set_ylabel("kWh per day")
    axis.legend(fontsize="small")
    figure.autofmt_xdate()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


# ---------------------------------------------------------------- command line

def main_verify(store: Path, truth: Path | None, options: VerifyOptions, out: Path, plot_path: Path | None) -> int:
    """`retrofit-sim verify`: the report from a platform store."""
    from simulators.platform_store import load

    meta = None
    if truth is not None:
        meta_path = truth / "meta.json" if truth.is_dir() else truth
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as exc:
            raise RetrofitError(f"{meta_path}: cannot read the building's metadata: {exc}") from None
    report = verify(load(store), meta, options)
    path = write_report(report, out)
    print(render(report), flush=True)
    print(f"report written: {path}", flush=True)
    if plot_path is not None:
        if plot(report, plot_path):
            print(f"plot written: {plot_path}", flush=True)
        else:
            print("plot skipped: matplotlib is not installed (pip install 'retrofit-agent[demo]')", flush=True)
    return 0


def add_cli(commands: Any) -> None:
    """`retrofit-sim verify` (hooked into simulators/cli.py)."""
    from drivers.core.durations import parse_duration

    parser = commands.add_parser("verify", help="daily energy, completeness and the CalTRACK saving, from what "
                                                "`retrofit-sim platform --store` kept")
    parser.add_argument("--store", type=Path, required=True, help="the platform's store (platform --store FILE)")
    parser.add_argument("--truth", type=Path, metavar="META",
                        help="the building's meta.json (or its output directory): simulated time, weather, "
                             "retrofit date and the true saving")
    parser.add_argument("--meter", metavar="DEVICE/POINT",
                        help="the series to model (default: the building's heat, all heat meters together)")
    parser.add_argument("--retrofit", metavar="YYYY-MM-DD", help="the retrofit date (default: from --truth)")
    parser.add_argument("--baseline-days", type=int, default=365)
    parser.add_argument("--reporting-days", type=int, help="default: every day after the retrofit with use")
    parser.add_argument("--timezone", help="the days' time zone (default: the building's, else Europe/Warsaw)")
    parser.add_argument("--max-gap", type=parse_duration, default=MAX_GAP_S, metavar="DURATION",
                        help="readings further apart do not count as watching the counter (default 12h)")
    parser.add_argument("--weather-csv", type=Path, metavar="FILE",
                        help="daily mean temperatures from an IMGW daily file (k_d_*, s_d_*, k_d_t_*, s_d_t_*)")
    parser.add_argument("--station", help="the IMGW station (code or name) in --weather-csv")
    parser.add_argument("--drop-days", type=float, default=0.0, metavar="FRACTION",
                        help="leave out this share of days at random, as a gateway powered off would (a test "
                             "of the verdict)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("verify.json"), help="the JSON report")
    parser.add_argument("--plot", type=Path, metavar="FILE.png", help="baseline model vs measured (matplotlib)")

    def run(args: Any) -> int:
        weather, source = None, ""
        if args.weather_csv is not None:
            from simulators import imgw

            if not args.station:
                raise RetrofitError("--weather-csv needs --station (the IMGW station's code or name)")
            weather = imgw.daily_means(args.weather_csv, args.station)
            source = f"IMGW daily file {args.weather_csv.name}, station {args.station}"
        if not 0 <= args.drop_days < 1:
            raise RetrofitError(f"--drop-days {args.drop_days}: give a share between 0 and 1 (0.05 = 5 %)")
        options = VerifyOptions(meter=args.meter, retrofit=args.retrofit, baseline_days=args.baseline_days,
                                reporting_days=args.reporting_days, drop_fraction=args.drop_days, seed=args.seed,
                                timezone=args.timezone, max_gap=args.max_gap, weather=weather,
                                weather_source=source)
        return main_verify(args.store, args.truth, options, args.out, args.plot)

    parser.set_defaults(handler=run)
