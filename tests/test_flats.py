"""Flat by flat (simulators/flats.py through verify.py): each flat's share of
the building's allocator units, its units per heating degree day before and
after the retrofit, its water per day.

The platform's store is built here from chosen numbers: three flats sharing
the space heat 20/30/50 %, a heat-loss coefficient that drops by 35 % at the
retrofit, 2 HCA units per kWh, hourly readings; the expected figures follow
from those choices by hand, not from the code under test. How the flats'
telegrams reach the platform is tests/test_building_radio.py's."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml

from simulators import flats, platform_store, verify
from simulators.building import run_building
from simulators.building_config import parse_building_config
from simulators.platform import PlatformIngest
from simulators.platform_store import Received, StoredReading
from tests.support import AgentProcess, Broker, free_port, require_binary, wait_until

ZONE = ZoneInfo("Europe/Warsaw")
FIRST = dt.date(2025, 1, 10)
DAYS = 10  # 2025-01-10 .. 2025-01-19
RETROFIT = "2025-01-15"
SHARES = {"flat-01": Decimal("0.2"), "flat-02": Decimal("0.3"), "flat-03": Decimal("0.5")}
COLD = {"baseline": Decimal("0.1"), "reporting": Decimal("0.12")}  # m3 per day, every flat
HOT = Decimal("0.05")
UNITS_PER_KWH = 2
BASE_C = 15.5


def _temperature(day: dt.date) -> Decimal:
    return Decimal(-2) + Decimal((day - FIRST).days % 4)  # -2, -1, 0, 1, -2, ...


def _space_kwh(day: dt.date) -> Decimal:
    coefficient = Decimal(100) if day.isoformat() < RETROFIT else Decimal(65)  # kWh per degree day
    return coefficient * (Decimal(BASE_C) - _temperature(day))


def _received(missing_day: str | None = None) -> Received:
    """Hourly readings of the heat meter and the flats' meters, ids in order."""
    readings: list[StoredReading] = []
    totals: dict[tuple[str, str], Decimal] = {}

    def add(device: str, point: str, unit: str, ts: int, value: Decimal) -> None:
        readings.append(StoredReading("s1", len(readings) + 1, device, point, value, unit, ts, "ok"))

    for n in range(DAYS + 1):
        day = FIRST + dt.timedelta(days=n)
        period = "baseline" if day.isoformat() < RETROFIT else "reporting"
        for hour in range(24):
            ts = int(dt.datetime(day.year, day.month, day.day, hour, tzinfo=ZONE).timestamp() * 1000)
            add("heat-a", "energy_heat", "kWh", ts, totals.setdefault(("heat-a", ""), Decimal(0)))
            for flat, share in SHARES.items():
                if not (flat == "flat-03" and day.isoformat() == missing_day and hour > 0):
                    add(f"{flat}-hca", "hca_units", "HCA", ts, totals.setdefault((flat, "hca"), Decimal(0)))
                add(f"{flat}-cold", "volume", "m3", ts, totals.setdefault((flat, "cold"), Decimal(0)))
                add(f"{flat}-hot", "volume", "m3", ts, totals.setdefault((flat, "hot"), Decimal(0)))
                totals[(flat, "hca")] += share * _space_kwh(day) * UNITS_PER_KWH / 24
                totals[(flat, "cold")] += COLD[period] / 24
                totals[(flat, "hot")] += HOT / 24
            totals[("heat-a", "")] += _space_kwh(day) / 24
    return Received(readings=readings)


def _report(received: Received) -> dict:
    weather = {(FIRST + dt.timedelta(days=n)).isoformat(): float(_temperature(FIRST + dt.timedelta(days=n)))
               for n in range(DAYS + 1)}
    options = verify.VerifyOptions(retrofit=RETROFIT, timezone="Europe/Warsaw", weather=weather,
                                   weather_source="test", reporting_days=5)
    return verify.verify(received, None, options)


def test_each_flats_share_and_weather_corrected_change_are_the_buildings_split() -> None:
    section = _report(_received())["flats"]
    assert section["allocators"] == 3
    assert section["building"]["complete_days"] == {"baseline": 5, "reporting": 5}
    for flat, share in SHARES.items():
        entry = section["flats"][flat]
        assert entry["share"]["baseline"] == pytest.approx(float(share), abs=1e-6)
        assert entry["share"]["reporting"] == pytest.approx(float(share), abs=1e-6)
        per = entry["units_per_degree_day"]
        assert per["baseline"] == pytest.approx(float(share) * 100 * UNITS_PER_KWH, rel=1e-6)
        assert per["reporting"] == pytest.approx(float(share) * 65 * UNITS_PER_KWH, rel=1e-6)
        assert per["change"] == pytest.approx(-0.35, abs=1e-6)
        water = entry["water_m3_per_day"]
        assert water["cold"]["baseline"] == pytest.approx(0.1, abs=1e-6)
        assert water["cold"]["change"] == pytest.approx(0.2, abs=1e-5)
        assert water["hot"]["change"] == pytest.approx(0.0, abs=1e-5)
    assert section["building"]["units_per_degree_day"]["change"] == pytest.approx(-0.35, abs=1e-6)


def test_a_day_one_allocator_missed_is_left_out_for_every_flat_and_shares_still_add_up() -> None:
    section = _report(_received(missing_day="2025-01-12"))["flats"]
    assert section["building"]["complete_days"] == {"baseline": 4, "reporting": 5}
    assert section["flats"]["flat-03"]["days_ok"]["hca"] == 9
    assert section["flats"]["flat-01"]["days_ok"]["hca"] == 10
    shares = [entry["share"]["baseline"] for entry in section["flats"].values()]
    assert sum(shares) == pytest.approx(1.0, abs=1e-5)
    assert section["flats"]["flat-03"]["units_per_degree_day"]["change"] == pytest.approx(-0.35, abs=1e-6)


def test_the_report_text_has_a_line_per_flat() -> None:
    text = verify.render(_report(_received()))
    assert "flats: 3 allocator(s)" in text
    assert "flat-02: share 30.0%; units/degree day 60.00 -> 39.00 (-35.0%)" in text


def test_the_simulated_buildings_metadata_names_the_flats_meters_and_their_true_shares() -> None:
    meta = {"apartments": {"meters": {"flat-01-hca": {"kind": "heat_cost_allocator", "share": 0.25},
                                      "flat-01-cold": {"kind": "water"}}}}
    found = flats.flat_meters([("flat-01-hca", "hca_units"), ("flat-01-cold", "volume"),
                               ("flat-02-hca", "hca_units"), ("flat-01-hca", "rssi")], meta)
    assert [(m.device, m.kind, m.true_share) for m in found] == [("flat-01-cold", "cold", None),
                                                                  ("flat-01-hca", "hca", 0.25)]


@pytest.mark.long(10)
@pytest.mark.timeout(120)
def test_a_simulated_blocks_flats_through_the_agent_and_the_platform_are_verified_flat_by_flat(
        tmp_path: Path) -> None:
    """The whole way: the building's allocators and water meters on a simulated
    stick, the real agent, Mosquitto, the platform's store, verify. Each flat's
    share comes out as the simulator's true share, and every flat's space
    heating per degree day falls with the building's 35 % lower heat loss."""
    require_binary("socat")
    day = 86_400
    config = parse_building_config({
        # Two simulated days a second, the physics in 15-minute steps.
        "building": {"name": "flats", "seed": 5, "start": "2025-01-12T00:00:00Z", "acceleration": 2 * day,
                     "step": "15m", "weather": {"mean": -2.0, "daily_sd": 2.0},
                     "retrofit": {"at": "2025-01-18T00:00:00Z", "heat_loss_reduction": 0.35}},
        "output": str(tmp_path / "out"),
        "buses": [{"id": "plant", "type": "modbus-tcp", "port": free_port()},
                  {"id": "radio", "type": "wmbus", "stick": "im871a", "pty": str(tmp_path / "ttyR")}],
        "devices": [{"id": "heat-a", "bus": "plant", "address": 20, "profile": "sim-heat-meter", "model": "heat",
                     "heat_loss": 1800, "dhw_kwh_per_day": 90, "interval": 0.05, "points": ["energy_heat"]}],
        "apartments": {"count": 4, "bus": "radio", "heat_meter": "heat-a", "interval": "6h"}}, tmp_path)
    with Broker(tmp_path / "broker") as broker:
        handle = run_building(config)
        try:
            ingest = PlatformIngest(port=broker.port, meta_path=handle.meta_path, store=tmp_path / "platform.db")
            ingest.start()
            try:
                agent_yaml = tmp_path / "agent.yaml"
                agent_yaml.write_text(yaml.safe_dump(handle.agent_config(broker.port, tmp_path / "buffer.db")))
                end_ms = handle.building.wall_time(handle.building.physics.start + 13 * day) * 1000
                with AgentProcess(agent_yaml, tmp_path / "agent.log"):
                    wait_until(lambda: sum(1 for r in ingest.readings() if r["point"] == "hca_units"
                                           and r["ts"] >= end_ms) >= 4, 60, "every allocator past day 13")
            finally:
                ingest.stop()
        finally:
            handle.stop()
    meta = json.loads(handle.meta_path.read_text())
    section = verify.verify(platform_store.load(tmp_path / "platform.db"), meta)["flats"]
    assert section["allocators"] == 4
    complete = section["building"]["complete_days"]
    assert complete["baseline"] >= 4 and complete["reporting"] >= 5
    building_change = section["building"]["units_per_degree_day"]["change"]
    assert -0.40 < building_change < -0.30
    for flat, entry in section["flats"].items():
        share = entry["share"]
        assert share["reporting"] == pytest.approx(share["true"], abs=0.005), flat
        assert entry["units_per_degree_day"]["change"] == pytest.approx(building_change, abs=0.02), flat
        assert entry["water_m3_per_day"]["cold"]["baseline"] > 0 and entry["water_m3_per_day"]["hot"]["reporting"] > 0
