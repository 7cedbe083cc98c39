"""The building's apartments: radio meters whose numbers are the building's.

The flats' heat cost allocators and water meters send through the simulated
stick on a socat pty, in the building's accelerated time, to the real agent
(its own process) and a real Mosquitto: every telegram the stick delivered
arrives once, its values are the ground truth's, the allocators count more
in a cold spell than in mild weather, as the building's heat meter does.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
from collections import Counter
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from drivers.core.errors import RetrofitError
from simulators.building import Building, run_building
from simulators.building_config import parse_building_config
from simulators.building_radio import ApartmentRadio
from simulators.wmbus_meter import MeterKind
from simulators.wmbus_stick import Delivered
from tests.support import AgentProcess, Broker, Subscriber, free_port, require_binary, wait_until, write_config

pytestmark = pytest.mark.timeout(60)

DAY = 86_400
# The simulator's truth keys -> the points of the OMS profiles, written out
# here again (not imported) so the test checks the building's own mapping.
HCA_POINTS = {"hca": "hca_units", "hca@1": "hca_units_set_date"}
WATER_POINTS = {"volume": "volume", "volume_flow": "flow", "volume@1": "volume_set_date"}
CLOCK_POINTS = {"date@1": "set_date", "date_time": "meter_datetime"}


def building(tmp_path: Path, **apartments: Any) -> dict[str, Any]:
    return {
        # A day a second; a cold spell that turns mild (+5 K a day, little scatter).
        "building": {"name": "flats", "seed": 5, "start": "2025-01-12T00:00:00Z", "acceleration": DAY,
                     "step": "60s", "weather": {"mean": -6.0, "trend_per_day": 5.0, "daily_sd": 0.5}},
        "output": str(tmp_path / "out"),
        "buses": [{"id": "plant", "type": "modbus-tcp", "port": free_port()},
                  {"id": "radio", "type": "wmbus", "stick": "im871a", "pty": str(tmp_path / "ttyR")}],
        "devices": [{"id": "heat-a", "bus": "plant", "address": 20, "profile": "sim-heat-meter", "model": "heat",
                     "heat_loss": 1800, "dhw_kwh_per_day": 90, "interval": 0.1}],
        "apartments": {"count": 10, "bus": "radio", "heat_meter": "heat-a", "interval": "6h", **apartments},
    }


def _number(value: object) -> Decimal:
    return Decimal(str(value)).normalize()


def _clock(value: object) -> int:
    assert isinstance(value, dt.date)
    moment = value if isinstance(value, dt.datetime) else dt.datetime.combine(value, dt.time())
    return int((moment - dt.datetime(1970, 1, 1)).total_seconds())


def expected_readings(delivered: list[Delivered], devices: dict[str, str]) -> Counter[tuple[str, str, Decimal]]:
    out: Counter[tuple[str, str, Decimal]] = Counter()
    for item in delivered:
        truth = item.transmission.truth
        device = devices[truth.meter]
        points = HCA_POINTS if truth.kind is MeterKind.HCA else WATER_POINTS
        for key, point in points.items():
            out[(device, point, _number(truth.values[key]))] += 1
        for key, point in CLOCK_POINTS.items():
            out[(device, point, _number(_clock(truth.values[key])))] += 1
        out[(device, "rssi", _number(item.rssi_dbm))] += 1
    return out


def increments_by_half(readings: list[dict[str, Any]], device_prefix: str, point: str, middle_ms: float,
                       ) -> tuple[float, float]:
    """Each device's rise between consecutive readings, summed per half of the run."""
    series: dict[str, list[tuple[int, float]]] = {}
    for r in readings:
        if r["device"].startswith(device_prefix) and r["point"] == point:
            series.setdefault(r["device"], []).append((r["ts"], r["value"]))
    first = second = 0.0
    for points in series.values():
        points.sort()
        for (_, before), (ts, after) in itertools.pairwise(points):
            assert after >= before, f"{device_prefix}: {point} fell"
            if ts <= middle_ms:
                first += after - before
            else:
                second += after - before
    return first, second


def test_flats_send_the_buildings_numbers_through_the_stick_to_the_agent_complete_and_exact(
        tmp_path: Path, broker: Broker, subscriber: Subscriber) -> None:
    require_binary("socat")
    config = parse_building_config(building(tmp_path), tmp_path)
    handle = run_building(config)
    try:
        made = handle.agent_config(broker.port, tmp_path / "buffer.db")
        agent_yaml = write_config(tmp_path / "agent.yaml", broker_port=broker.port, buffer=tmp_path / "buffer.db",
                                  buses=made["buses"], devices=made["devices"])
        radio = next(b for b in made["buses"] if b["type"] == "wmbus")
        assert radio["keys_file"] == str(tmp_path / "out" / "wmbus-keys.csv")
        devices = {str(d["address"]): str(d["id"]) for d in made["devices"] if d["bus"] == "radio"}
        assert len(devices) == 30
        assert handle.radio is not None
        server = handle.radio.server
        assert server is not None
        with AgentProcess(agent_yaml, tmp_path / "agent.log"):
            wait_until(server.configured.is_set, 20, "the agent setting the stick's receive mode")
            listening = handle.building.now()
            wait_until(lambda: handle.building.now() >= listening + 4 * DAY, 20, "four simulated days")
            handle.stop()  # the meters fall silent; what they sent is fixed
            expected = expected_readings(server.delivered, devices)
            wait_until(lambda: len([r for r in subscriber.unique_readings().values()
                                    if r["device"].startswith("flat-")]) >= sum(expected.values()), 20,
                       f"{sum(expected.values())} flat readings at the subscriber")
    finally:
        handle.stop()
    readings = list(subscriber.unique_readings().values())
    flats = [r for r in readings if r["device"].startswith("flat-")]
    got = Counter((r["device"], r["point"], _number(r["value"])) for r in flats)
    assert got == expected
    assert {r["quality"] for r in flats} == {"ok"}
    # 30 meters every 6 h for four days: about 480 telegrams, each of them here.
    assert len(server.delivered) >= 300
    assert {d.transmission.truth.meter for d in server.delivered} == set(devices)

    # The ground truth holds every telegram sent (heard or not) with the values the agent forwarded.
    lines = [json.loads(line) for line in (tmp_path / "out" / "groundtruth.jsonl").read_text().splitlines()]
    sent = [line for line in lines if str(line.get("d", "")).startswith("flat-")]
    assert len(sent) == len(server.delivered) + len(server.dropped) + len(server.unheard)
    truth = Counter((line["d"], point, _number(value)) for line in sent for point, value in line["v"].items())
    assert Counter({k: n for k, n in got.items() if k[1] != "rssi"}) - truth == Counter()

    # A cold spell, then mild: the allocators count far more in the first half, as the heat meter does.
    stamps = [r["ts"] for r in flats]
    middle = (min(stamps) + max(stamps)) / 2
    hca_cold, hca_mild = increments_by_half(flats, "flat-", "hca_units", middle)
    heat_cold, heat_mild = increments_by_half(readings, "heat-a", "energy_heat", middle)
    water_cold, water_mild = increments_by_half(flats, "flat-", "volume", middle)
    print(f"\nflats: {len(server.delivered)} telegrams delivered ({len(server.unheard)} before the agent listened, "
          f"{len(server.dropped)} collided); HCA units cold/mild half {hca_cold:.0f}/{hca_mild:.0f}, "
          f"heat meter {heat_cold:.0f}/{heat_mild:.0f} kWh, water {water_cold:.2f}/{water_mild:.2f} m3")
    assert hca_cold > 1.5 * hca_mild and heat_cold > heat_mild
    assert water_cold > 0 and water_mild > 0  # water flows whatever the weather

    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    shares = [m["share"] for m in meta["apartments"]["meters"].values() if m["kind"] == "hca"]
    assert len(shares) == 10 and abs(sum(shares) - 1) < 1e-5
    keys = [line.split(";")[1] for line in radio_keys(Path(radio["keys_file"]))]
    assert len(keys) == 30
    text = (tmp_path / "agent.log").read_text() + (tmp_path / "agent.status.json").read_text()
    assert [k for k in keys if k in text or k.lower() in text] == []


def radio_keys(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line[:1].isdigit()]


def test_apartments_need_a_radio_bus_and_a_heat_meter(tmp_path: Path) -> None:
    raw = building(tmp_path, heat_meter="nope")
    raw["buses"] = raw["buses"][:1]
    raw["apartments"]["bus"] = "plant"
    with pytest.raises(RetrofitError) as error:
        parse_building_config(raw, tmp_path)
    message = str(error.value)
    assert "apartments.bus: 'plant' is no wmbus bus" in message
    assert "apartments.heat_meter: 'nope' is no heat meter; heat meters: heat-a" in message
    lonely = building(tmp_path)
    del lonely["apartments"]
    with pytest.raises(RetrofitError, match="bus radio: no meters transmit to it"):
        parse_building_config(lonely, tmp_path)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_the_allocators_together_count_the_heat_meters_space_heat_and_water_follows_the_day(tmp_path: Path) -> None:
    """No I/O: the building on a fake clock, each meter asked for its telegram at chosen moments."""
    config = parse_building_config(building(tmp_path, security_mode=7, hca_units_per_kwh=2.0), tmp_path)
    clock = FakeClock()
    house = Building(config, clock)
    radio = ApartmentRadio(house, config)
    allocators = [m for m in radio.meters if m.spec.kind is MeterKind.HCA]
    cold = [m for m in radio.meters if m.spec.kind is MeterKind.WATER]
    previous: dict[str, Decimal] = {}
    for day in range(1, 4):
        clock.now = house.wall_time(house.physics.start + day * DAY)
        values = {m.device: m.transmit(0, dt.datetime(2025, 1, 1))[1].values for m in radio.meters}
        space_kwh = Fraction(house.physics.heat["heat-a"][1].space_j, 3_600_000)
        counted = sum(int(values[m.device]["hca"]) - m.start_value for m in allocators)
        assert 2 * space_kwh - len(allocators) <= counted <= 2 * space_kwh  # each allocator cuts to whole units
        for meter in cold:
            volume = Decimal(values[meter.device]["volume"])
            assert volume >= previous.get(meter.device, Decimal(0))
            previous[meter.device] = volume
        clock_of_meters = {values[m.device]["date_time"] for m in radio.meters}
        assert clock_of_meters == {radio.local_clock(house.physics.start + day * DAY).replace(second=0)}
    litres = sum(float(previous[m.device]) * 1000 - m.start_value for m in cold)
    assert 0.5 * 3 * 110 * 10 < litres < 1.5 * 3 * 110 * 10  # about 110 l a flat a day
