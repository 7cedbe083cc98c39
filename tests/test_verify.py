"""The platform's verification step, piece by piece, on hand-made readings.

Daily energy at local midnights (DST days of 23 and 25 hours), the quality
flags handled and listed, coverage, completeness by event, the clock
corrections, the IMGW weather file, the ASHRAE Guideline 14 statistics and
the exact 15-minute energies. Expected values are worked out here by hand
from the readings each test makes, never taken from the code under test.
"""

from __future__ import annotations

import datetime as dt
import math
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from drivers.core.errors import RetrofitError
from simulators import counters, imgw, intervals, verify
from simulators.platform_store import PlatformStore, Received, StoredReading

WARSAW = ZoneInfo("Europe/Warsaw")
HOUR = 3600.0


def local(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> float:
    return dt.datetime(year, month, day, hour, minute, tzinfo=WARSAW).timestamp()


def rows_every(start: float, end: float, step: float, rate_per_h: Decimal, base: Decimal = Decimal(1000),
               quality: dict[float, str] | None = None) -> list[counters.Row]:
    """A counter rising at ``rate_per_h`` kWh an hour, read every ``step`` seconds."""
    out = []
    t, i = start, 0
    while t <= end:
        value = base + rate_per_h * Decimal(str((t - start) / HOUR))
        out.append(counters.Row(t, value, (quality or {}).get(t, "ok"), i))
        t += step
        i += 1
    return out


def days_between(first: float, last: float) -> list[verify.LocalDay]:
    return verify.local_days(first, last, WARSAW)


# ---------------------------------------------------------------- local days, DST

def test_local_days_are_23_and_25_hours_at_the_clock_changes() -> None:
    spring = {d.date: d.hours for d in days_between(local(2025, 3, 29, 12), local(2025, 3, 31, 12))}
    autumn = {d.date: d.hours for d in days_between(local(2025, 10, 25, 12), local(2025, 10, 27, 12))}
    assert spring == {"2025-03-29": 24, "2025-03-30": 23, "2025-03-31": 24}
    assert autumn == {"2025-10-25": 24, "2025-10-26": 25, "2025-10-27": 24}


def test_daily_energy_counts_the_hours_each_local_day_really_has() -> None:
    # 1 kWh an hour, read every 20 minutes: a day's energy is its length in hours.
    rows = rows_every(local(2025, 10, 24, 20), local(2025, 10, 28, 4), 1200, Decimal(1))
    series = counters.build_series(rows)
    days = days_between(local(2025, 10, 25), local(2025, 10, 27, 12))
    energy = verify.daily_energy(series, days, WARSAW)
    assert {d: round(e.kwh or -1, 9) for d, e in energy.items()} == {
        "2025-10-25": 24.0, "2025-10-26": 25.0, "2025-10-27": 24.0}
    assert all(e.coverage == 1.0 and e.status == "ok" for e in energy.values())


def test_a_midnight_between_two_readings_is_interpolated_between_them() -> None:
    # Readings at 22:30 and 01:30: 3 kWh between them, 1.5 before midnight.
    rows = [counters.Row(local(2025, 1, 9, 22, 30), Decimal(0)),
            counters.Row(local(2025, 1, 10, 1, 30), Decimal(3)),
            counters.Row(local(2025, 1, 10, 12, 0), Decimal(6)),
            counters.Row(local(2025, 1, 10, 22, 0), Decimal(10)),
            counters.Row(local(2025, 1, 11, 2, 0), Decimal(18))]
    energy = verify.daily_energy(counters.build_series(rows), days_between(local(2025, 1, 10), local(2025, 1, 10, 12)),
                                 WARSAW)
    # end of day: 10 + 8 x (2/4) = 14; start: 1.5 -> 12.5
    assert energy["2025-01-10"].kwh == pytest.approx(12.5)


# ---------------------------------------------------------------- flags, handled and listed

def test_a_reset_makes_its_day_missing_and_is_listed_with_its_flag() -> None:
    rows = rows_every(local(2025, 2, 1, 22), local(2025, 2, 4, 2), HOUR, Decimal(2))
    reset_at = local(2025, 2, 3, 10)
    cut = next(i for i, r in enumerate(rows) if r.t == reset_at)
    # The meter is reset to 0 at 10:00 and counts on from there; the agent flags the first reading.
    base = rows[cut].value
    assert base is not None
    rows = rows[:cut] + [counters.Row(r.t, (r.value or Decimal(0)) - base,
                                      "counter_backwards" if r.t == reset_at else "ok", r.id) for r in rows[cut:]]
    series = counters.build_series(rows)
    energy = verify.daily_energy(series, days_between(local(2025, 2, 2), local(2025, 2, 3, 12)), WARSAW)
    assert energy["2025-02-02"].kwh == pytest.approx(48.0)
    reset_day = energy["2025-02-03"]
    assert reset_day.status == "missing" and reset_day.kwh is None
    assert any("breaks inside the day" in r for r in reset_day.reasons)
    assert [f["what"] for f in reset_day.flags] == ["break"]
    assert reset_day.flags[0]["quality"] == "counter_backwards" and reset_day.flags[0]["at"].startswith("2025-02-03T10:00")


def test_garbage_is_left_out_and_the_day_keeps_its_energy() -> None:
    rows = rows_every(local(2025, 2, 1, 22), local(2025, 2, 3, 2), HOUR, Decimal(2))
    garbage_at = local(2025, 2, 2, 13)
    rows = [counters.Row(r.t, Decimal(7), "counter_backwards", r.id) if r.t == garbage_at else r for r in rows]
    energy = verify.daily_energy(counters.build_series(rows), days_between(local(2025, 2, 2), local(2025, 2, 2, 12)),
                                 WARSAW)
    day = energy["2025-02-02"]
    assert day.kwh == pytest.approx(48.0)
    assert [(f["what"], f["quality"]) for f in day.flags] == [("dropped", "counter_backwards")]


def test_a_rollover_counts_the_width_and_a_swap_starts_a_new_series() -> None:
    # A uint16 counter of whole kWh at 65530 rising 1 kWh an hour: it wraps in the afternoon of the 2nd.
    start = local(2025, 2, 1, 18)
    rows = []
    for k in range(60):
        raw = (65_510 + k) % 65_536
        quality = "counter_rollover" if k > 0 and raw < (65_510 + k - 1) % 65_536 else "ok"
        rows.append(counters.Row(start + k * HOUR, Decimal(raw), quality, k))
    swap_at = start + 40 * HOUR  # 2025-02-03 10:00: a new meter from 0
    rows = rows[:40] + [counters.Row(r.t, Decimal(r.id - 40), "meter_swap" if r.t == swap_at else "ok", r.id)
                        for r in rows[40:]]
    series = counters.build_series(rows)
    energy = verify.daily_energy(series, days_between(local(2025, 2, 2), local(2025, 2, 3, 12)), WARSAW)
    assert energy["2025-02-02"].kwh == pytest.approx(24.0)
    assert [f["what"] for f in energy["2025-02-02"].flags] == ["rollover"]
    assert "65536" in energy["2025-02-02"].flags[0]["handled"]
    assert energy["2025-02-03"].status == "missing"
    assert [f["quality"] for f in energy["2025-02-03"].flags] == ["meter_swap"]


def test_a_day_the_gateway_did_not_watch_is_missing_but_its_neighbours_are_not() -> None:
    rows = rows_every(local(2025, 2, 1, 20), local(2025, 2, 5, 4), HOUR, Decimal(1))
    off = (local(2025, 2, 3), local(2025, 2, 4))
    rows = [r for r in rows if not off[0] <= r.t < off[1]]  # powered off from midnight to midnight
    energy = verify.daily_energy(counters.build_series(rows), days_between(local(2025, 2, 2), local(2025, 2, 4, 12)),
                                 WARSAW)
    assert energy["2025-02-03"].status == "missing" and energy["2025-02-03"].coverage == 0.0
    assert any("not a measured day" in r for r in energy["2025-02-03"].reasons)
    # The counter's rise over the outage is kept whole: the days around it are exact.
    assert energy["2025-02-02"].kwh == pytest.approx(24.0) and energy["2025-02-04"].kwh == pytest.approx(24.0)
    assert energy["2025-02-02"].coverage == pytest.approx(23 / 24) and energy["2025-02-04"].coverage == 1.0


# ---------------------------------------------------------------- the platform's side of the payload contract

def reading(stream: str, rid: int, ts_s: float, value: str, quality: str = "ok", point: str = "energy_heat"
            ) -> StoredReading:
    return StoredReading(stream, rid, "heat-a", point, Decimal(value), "kWh", int(ts_s * 1000), quality)


def test_completeness_explains_every_missing_id_by_its_event() -> None:
    base = local(2025, 2, 1, 12)
    received = Received(
        readings=[reading("s1", i, base + i * 60, str(100 + i)) for i in (1, 2, 3, 8, 9, 13, 14, 15)]
        + [reading("s2", i, base + 3600 + i, "200") for i in (1, 2, 3)],
        events=[{"stream": "s1", "type": "evicted", "first_id": 4, "last_id": 5, "count": 2},
                {"stream": "s1", "type": "corrupt", "first_id": 6, "last_id": 6, "count": 1},
                {"stream": "s2", "type": "salvaged", "from_stream": "s1", "from_first_id": 10, "from_last_id": 11,
                 "first_id": 1, "last_id": 2},
                {"stream": "s2", "type": "lost", "from_stream": "s1", "from_first_id": 12, "from_last_id": 12},
                {"stream": "s2", "type": "unclean_stop", "last_id": 3, "last_ts": int(base * 1000) + 7_200_000,
                 "may_have_lost_s": 60.0},
                {"stream": "s2", "type": "dropped", "count": 40, "first_ts": int(base * 1000),
                 "last_ts": int(base * 1000) + 600_000, "reason": "disk"}])
    report = verify.completeness(received, WARSAW, verify.TimeMap())
    s1 = report["streams"]["s1"]
    assert s1["explained"] == {"evicted": 2, "corrupt": 1, "salvaged": 2, "lost": 1}
    assert s1["unexplained"] == 1 and s1["unexplained_ranges"] == [[7, 7]]  # id 7: nothing says where it went
    assert report["streams"]["s2"]["unexplained"] == 0
    windows = {w["type"]: w for w in report["windows"]}
    assert windows["unclean_stop"]["from"] == "2025-02-01T14:00:00+01:00"
    assert windows["unclean_stop"]["to"] == "2025-02-01T14:01:00+01:00"
    assert windows["dropped"]["count"] == 40


def test_clock_corrections_apply_once_and_unsynced_readings_wait_for_theirs() -> None:
    wrong = local(2025, 2, 1, 12) - 86_400 * 30  # a clock a month behind before NTP
    add_ms = 86_400 * 30 * 1000
    received = Received(
        readings=[reading("s", 1, wrong, "10", "clock_unsynced"), reading("s", 2, wrong + 60, "11", "clock_unsynced"),
                  reading("s", 3, local(2025, 2, 1, 12, 5), "12", "clock_unsynced+restamped"),
                  reading("s", 4, wrong + 600, "13", "clock_unsynced")],
        events=[{"stream": "s", "type": "clock_corrected", "first_id": 1, "last_id": 3, "add_ms": add_ms}])
    prepared = verify.prepare(received, verify.TimeMap())
    rows = prepared.rows[("heat-a", "energy_heat")]
    assert [(r.id, r.t) for r in rows] == [(1, local(2025, 2, 1, 12)), (2, local(2025, 2, 1, 12, 1)),
                                           (3, local(2025, 2, 1, 12, 5))]
    assert prepared.corrected == 2
    assert [h["id"] for h in prepared.held] == [4]  # no event for it yet: held, not used


def test_a_salvaged_reading_that_came_under_both_streams_counts_once() -> None:
    t = local(2025, 2, 1, 12)
    received = Received(readings=[reading("old", 7, t, "10.5"), reading("new", 1, t, "10.5"),
                                  reading("new", 2, t + 60, "10.6")])
    prepared = verify.prepare(received, verify.TimeMap())
    assert [r.value for r in prepared.rows[("heat-a", "energy_heat")]] == [Decimal("10.5"), Decimal("10.6")]
    assert prepared.salvaged_copies == 1


def test_the_store_keeps_one_reading_per_stream_and_id_and_its_digits(tmp_path: Path) -> None:
    store = PlatformStore(tmp_path / "platform.db")
    batch = [{"id": 1, "device": "pv", "point": "energy_produced", "value": 12345.678, "unit": "kWh",
              "ts": 1_750_000_000_000, "quality": "ok"},
             {"id": 2, "device": "pv", "point": "energy_produced", "value": 0.1, "unit": "kWh",
              "ts": 1_750_000_060_000, "quality": "ok"}]
    assert store.add_readings("s", "gw", "site", batch) == 0
    assert store.add_readings("s", "gw", "site", batch[1:]) == 1  # at least once: a batch came again
    store.add_events("s", [{"type": "evicted", "first_id": 9, "last_id": 9}])
    store.add_events("s", [{"type": "evicted", "first_id": 9, "last_id": 9}])
    store.close()
    received = verify_load(tmp_path / "platform.db")
    assert [r.value for r in received.readings] == [Decimal("12345.678"), Decimal("0.1")]
    assert received.streams["s"]["duplicates"] == 1
    assert len(received.events) == 1


def verify_load(path: Path) -> Received:
    from simulators.platform_store import load

    return load(path)


def test_a_store_that_is_not_one_is_refused_clearly(tmp_path: Path) -> None:
    (tmp_path / "x.db").write_text("not sqlite")
    with pytest.raises(RetrofitError, match="not a platform store"):
        verify_load(tmp_path / "x.db")
    with pytest.raises(RetrofitError, match="no platform store there"):
        verify_load(tmp_path / "missing.db")


# ---------------------------------------------------------------- weather: IMGW daily files

def k_d_row(code: str, name: str, day: dt.date, mean: str, status: str = "") -> str:
    # k_d layout: code, name, year, month, day, TMAX, st, TMIN, st, STD, st, TMNG, st, SMDB, st, kind, PKSN, st
    return (f'{code},"{name}",{day.year},{day.month:02d},{day.day:02d},8.1,,1.2,,{mean},{status},-0.4,,0.0,,"",0,\r\n')


def test_imgw_daily_means_by_station_code_or_name_in_its_own_encoding(tmp_path: Path) -> None:
    lines = [k_d_row("252200150", "WARSZAWA-BIELANY", dt.date(2025, 1, d), f"{d - 3}.5") for d in (1, 2, 3)]
    lines.append(k_d_row("252200150", "WARSZAWA-BIELANY", dt.date(2025, 1, 4), "0.0", "8"))  # no measurement
    lines.append(k_d_row("250180590", "KRAKÓW-BALICE", dt.date(2025, 1, 1), "9.9"))
    path = tmp_path / "k_d_01_2025.csv"
    path.write_bytes("".join(lines).encode("cp1250"))
    by_name = imgw.daily_means(path, "Warszawa-Bielany")
    assert by_name == {"2025-01-01": -2.5, "2025-01-02": -1.5, "2025-01-03": 0.5, "2025-01-04": None}
    assert imgw.daily_means(path, "250180590") == {"2025-01-01": 9.9}
    assert imgw.daily_means(path, "Kraków-Balice") == {"2025-01-01": 9.9}  # the ó read as Windows-1250


def test_imgw_term_files_carry_the_mean_elsewhere(tmp_path: Path) -> None:
    # s_d_t: code, name, year, month, day, NOS, st, FWS, st, TEMP, st, ... (23 fields)
    row = '352200375,"WARSZAWA-OKĘCIE",2025,02,01,6.1,,3.2,,-4.3,' + ",".join([""] * 13) + "\n"
    path = tmp_path / "s_d_t_02_2025.csv"
    path.write_bytes(row.encode("cp1250"))
    assert imgw.daily_means(path, "352200375") == {"2025-02-01": -4.3}


def test_imgw_files_that_do_not_fit_say_what_is_wrong(tmp_path: Path) -> None:
    path = tmp_path / "k_d_2025.csv"
    path.write_text('252200150,"WARSZAWA",2025,01,01,8.1\n')
    with pytest.raises(RetrofitError, match=r"k_d_2025.csv:1: 6 fields; an IMGW k_d row has 18"):
        imgw.daily_means(path, "WARSZAWA")
    path.write_bytes(k_d_row("252200150", "WARSZAWA-BIELANY", dt.date(2025, 1, 1), "1.0").encode("cp1250"))
    with pytest.raises(RetrofitError, match="no rows for station 'GDAŃSK'; stations in the file: 252200150"):
        imgw.daily_means(path, "GDAŃSK")
    with pytest.raises(RetrofitError, match="not an IMGW daily file name"):
        imgw.layout_of(tmp_path / "weather.csv")


# ---------------------------------------------------------------- ASHRAE Guideline 14 statistics

def test_fit_statistics_follow_guideline_14_by_hand() -> None:
    observed = [10.0, 12.0, 11.0, 13.0, 9.0, 11.0]
    predicted = [11.0, 11.0, 11.0, 12.0, 10.0, 11.0]
    # residuals -1, 1, 0, 1, -1, 0; mean 11; n - p = 4
    fit = verify.fit_statistics(observed, predicted, parameters=2)
    assert fit.cvrmse == pytest.approx(math.sqrt(4 / 4) / 11)
    assert fit.nmbe == pytest.approx(0.0)
    # lag-1: (-1)(1) + (1)(0) + 0(1) + 1(-1) + (-1)(0) = -2 over 4: negative, counted as 0
    assert fit.rho == 0.0 and fit.n_effective == 6


def test_autocorrelated_residuals_count_as_fewer_points() -> None:
    residuals = [1.0, 1.0, 1.0, -1.0, -1.0, -1.0, 1.0, 1.0, 1.0, -1.0, -1.0, -1.0]
    observed = [100 + r for r in residuals]
    fit = verify.fit_statistics(observed, [100.0] * 12, parameters=1)
    rho = (1 + 1 - 1 + 1 + 1 - 1 + 1 + 1 - 1 + 1 + 1) / 12  # sum of r[i-1] r[i] over sum r^2
    assert fit.rho == pytest.approx(rho)
    assert fit.n_effective == pytest.approx(12 * (1 - rho) / (1 + rho))


def test_fractional_savings_uncertainty_by_hand() -> None:
    fit = verify.FitStatistics(n=365, p=4, mean=500.0, cvrmse=0.05, nmbe=0.0, rho=0.0, n_effective=365.0)
    t = 1.6490  # Student's t, 90 % two-sided, 361 degrees of freedom (tables: 1.645 at infinity)
    expected = 1.26 * t * 0.05 * math.sqrt((365 / 365) * (1 + 2 / 365) / 180) / 0.30
    assert verify.savings_uncertainty(fit, 180, 0.30) == pytest.approx(expected, rel=1e-3)
    assert verify.t_quantile(0.90, 1e9) == pytest.approx(1.6449, abs=1e-4)


# ---------------------------------------------------------------- 15-minute energy

def quarter_rows(day_start: float, values: list[str], offset: float = 0.0, quality: dict[int, str] | None = None
                 ) -> list[counters.Row]:
    return [counters.Row(day_start + k * 900 + offset, Decimal(v), (quality or {}).get(k, "ok"), k)
            for k, v in enumerate(values)]


def test_96_periods_add_up_to_the_register_delta_to_the_last_digit() -> None:
    start = local(2025, 6, 21)
    # A register in 0.001 kWh steps with uneven rises (as float sums would not keep them exact).
    steps = [Decimal("0.1") * (k % 7) + Decimal("0.003") for k in range(96)]
    values = [Decimal("12345.678")]
    for step in steps:
        values.append(values[-1] + step)
    rows = quarter_rows(start, [str(v) for v in values], offset=1.5)
    periods = intervals.intervals(rows, start, start + 86_400)
    assert len(periods) == 96 and all(p.kwh is not None and not p.flags for p in periods)
    assert [p.kwh for p in periods] == steps
    assert sum((p.kwh for p in periods if p.kwh is not None), Decimal(0)) == values[-1] - values[0]
    assert intervals.day_delta(rows, start, start + 86_400) == values[-1] - values[0]


def test_a_reading_further_than_2_s_from_its_boundary_is_flagged_and_none_within_half_a_period_is_missing() -> None:
    start = local(2025, 6, 21, 12)
    rows = [counters.Row(start + 1.9, Decimal("1.000")), counters.Row(start + 900 + 2.5, Decimal("2.000")),
            counters.Row(start + 1800 - 1.0, Decimal("3.500")), counters.Row(start + 3600 + 600, Decimal(5))]
    periods = intervals.intervals(rows, start, start + 3600)
    assert periods[0].kwh == Decimal("1.000") and periods[0].flags == ("off_boundary:end:+2.5s",)
    assert periods[1].kwh == Decimal("1.500") and periods[1].flags == ("off_boundary:start:+2.5s",)
    # 2700 s has no reading within 450 s; 3600 neither (the next is 600 s after it)
    assert [p.kwh for p in periods[2:]] == [None, None]
    assert periods[2].flags == ("missing_boundary_reading",)


def test_a_rollover_inside_a_period_adds_the_width_and_a_reset_leaves_it_unknown() -> None:
    start = local(2025, 6, 21, 12)
    rows = [counters.Row(start, Decimal("65535.5")), counters.Row(start + 450, Decimal("0.25"), "counter_rollover"),
            counters.Row(start + 900, Decimal("1.0")), counters.Row(start + 1350, Decimal("0.5"), "counter_backwards"),
            counters.Row(start + 1800, Decimal("0.75"))]
    periods = intervals.intervals(rows, start, start + 1800)
    assert periods[0].kwh == Decimal("1.5") and "counter_rollover" in periods[0].flags  # 65536 - 65535.5 + 1.0
    assert periods[1].kwh is None and periods[1].flags == ("series_break:counter_backwards",)


def test_self_consumption_and_self_sufficiency_of_a_pv_day() -> None:
    start = local(2025, 6, 21)
    n = 96
    imported = [str(Decimal(100) + Decimal("0.2") * k) for k in range(n + 1)]  # 19.2 kWh
    exported = [str(Decimal(50) + Decimal("0.1") * k) for k in range(n + 1)]  # 9.6 kWh
    produced = [str(Decimal(7000) + Decimal("0.25") * k) for k in range(n + 1)]  # 24 kWh
    day = intervals.pv_day({"import": quarter_rows(start, imported), "export": quarter_rows(start, exported),
                            "production": quarter_rows(start, produced)}, start, start + 86_400)
    assert day["totals_kwh"] == {"import": "19.2", "export": "9.6", "production": "24.00"}
    assert all(day["sums_equal_register_delta"].values())
    assert day["self_consumed_kwh"] == "14.40"  # 24 - 9.6
    assert day["self_consumption_rate"] == pytest.approx(14.4 / 24)
    assert day["self_sufficiency"] == pytest.approx(14.4 / (19.2 + 14.4))
