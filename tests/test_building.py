"""The simulated building: reproducible, physically consistent, faults as configured.

Most of these run the building on a fake wall clock, so simulated time is
exactly where the test puts it; one test serves it on real sockets and ptys.
"""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.config import load_config
from drivers.core.errors import RetrofitError
from simulators import physics
from simulators.building import Building, BuildingDevice, BuildingPhysics, agent_config, run_building
from simulators.building_config import load_building_config, parse_building_config
from simulators.groundtruth import GroundTruth, GroundTruthWriter
from tests.support import REPO, free_port, require_binary, wait_until

pytestmark = pytest.mark.timeout(60)

DAY = 86_400
H_A, DHW_A, REDUCTION = 1800.0, 90.0, 0.35


def building_dict(seed: int = 11, faults: list[dict[str, Any]] | None = None, tcp_port: int = 1502,
                  pty: str = "ttyB1") -> dict[str, Any]:
    return {
        "building": {"name": "test-block", "seed": seed, "start": "2025-01-12T21:00:00Z", "acceleration": 8640,
                     "step": "60s", "base_temperature": 15.5,
                     "retrofit": {"at": "2025-01-15T00:00:00Z", "heat_loss_reduction": REDUCTION}},
        "output": "out",
        "buses": [{"id": "plant", "type": "modbus-tcp", "port": tcp_port},
                  {"id": "line", "type": "modbus-rtu", "pty": pty, "baudrate": 9600}],
        "devices": [
            {"id": "heat-a", "bus": "plant", "address": 20, "profile": "sim-heat-meter", "model": "heat",
             "heat_loss": H_A, "dhw_kwh_per_day": DHW_A, "energy_start": 1000.5},
            {"id": "elec", "bus": "plant", "address": 1, "profile": "eastron-sdm630", "model": "electricity",
             "annual_kwh": 50000, "energy_start": 2000},
            {"id": "room", "bus": "line", "address": 11, "profile": "xy-md02", "model": "room"},
        ],
        "faults": faults or [],
    }


def config_of(tmp_path: Path, **kwargs: Any) -> Any:
    return parse_building_config(building_dict(**kwargs), tmp_path)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def at_sim(building: Building, clock: FakeClock, sim: float) -> None:
    """Move the fake wall clock to the moment simulated time is ``sim``."""
    clock.now = building.wall_time(sim)


def served(building: Building, clock: FakeClock, device: str, sim: float) -> dict[str, Any]:
    at_sim(building, clock, sim)
    t = building.now()
    return building.devices[device].served_values(t)


# ---------------------------------------------------------------- reproducibility

def test_same_seed_same_building_other_seed_other_building(tmp_path: Path) -> None:
    samples = [3600 * k + 1800 for k in range(0, 24 * 4, 5)]

    def trace(seed: int) -> list[Any]:
        ph = BuildingPhysics(config_of(tmp_path, seed=seed))
        out = []
        for offset in samples:
            ph.advance_to(ph.start + offset)
            out.append((ph.counters(), {d: ph.values(d) for d in ("heat-a", "elec", "room")}))
        return out + [[d.as_json() for d in ph.days]]

    assert trace(11) == trace(11)
    assert trace(11) != trace(12)


def test_same_seed_same_ground_truth_file(tmp_path: Path) -> None:
    """Polled at the same (fake) wall times, two buildings write byte-identical ground truth."""
    def record(where: Path) -> bytes:
        clock = FakeClock()
        building = Building(config_of(tmp_path, seed=5, faults=[
            {"at": "20h", "fault": "counter_reset", "device": "elec"},
            {"at": "30h", "fault": "meter_swap", "device": "heat-a"}]), clock)
        building.truth = GroundTruthWriter(where)
        for step in range(200):
            clock.now = building.wall_start + step * 0.7
            for device in building.devices.values():
                assert isinstance(device, BuildingDevice)  # this building has no M-Bus line
                device.registers("holding", 0, 18)
                device.registers("input", 0, 0x4C)
        building.truth.close()
        return where.read_bytes()

    first, second = record(tmp_path / "a.jsonl"), record(tmp_path / "b.jsonl")
    assert first == second and len(first) > 10_000


# ---------------------------------------------------------------- physics

def test_counters_integrate_power_exactly_and_only_rise(tmp_path: Path) -> None:
    ph = BuildingPhysics(config_of(tmp_path))
    zone_state = ph.heat["heat-a"][1]
    elec_state = ph.elec["elec"][1]
    for _ in range(3 * 24 * 60):
        e0, v0, p, q = zone_state.energy_j, zone_state.volume_lsph, zone_state.power_w, zone_state.flow_lph
        ee0, ep = elec_state.energy_j, elec_state.power_w
        ph.advance_to(ph.t + ph.dt)
        assert zone_state.energy_j - e0 == p * ph.dt  # joules, exact
        assert zone_state.volume_lsph - v0 == q * ph.dt
        assert elec_state.energy_j - ee0 == ep * ph.dt
        assert p >= 0 and q >= 0 and ep >= 0


def test_served_counters_follow_served_power(tmp_path: Path) -> None:
    """What the meter shows: the energy register grows by the power it shows,
    to one register step, and never falls."""
    clock = FakeClock()
    building = Building(config_of(tmp_path), clock)
    start = building.physics.start
    previous = served(building, clock, "heat-a", start + 30)  # mid-step: clear of float rounding at the edges
    integral_wh = Fraction(0)
    for k in range(1, 2 * 24 * 60):
        now = served(building, clock, "heat-a", start + k * 60 + 30)
        integral_wh += Fraction(previous["power_heat"]) * 60 / 3600
        assert now["energy_heat"] >= previous["energy_heat"]
        assert now["volume"] >= previous["volume"]
        previous = now
    shown_wh = (Fraction(str(previous["energy_heat"])) - Fraction("1000.5")) * 1000
    assert abs(shown_wh - integral_wh) <= 1  # one register step (1 Wh)


def test_supply_above_return_and_power_matches_flow_and_delta_t(tmp_path: Path) -> None:
    clock = FakeClock()
    building = Building(config_of(tmp_path), clock)
    checked = 0
    for k in range(4 * 24 * 4):
        v = served(building, clock, "heat-a", building.physics.start + k * 900)
        if v["power_heat"] <= 0:
            continue
        checked += 1
        assert v["temperature_supply"] > v["temperature_return"]
        assert math.isclose(v["temperature_difference"], v["temperature_supply"] - v["temperature_return"],
                            abs_tol=0.011)
        from_flow = physics.RHO_C_J_PER_M3_K * v["flow"] / 3600 * v["temperature_difference"]
        assert math.isclose(from_flow, v["power_heat"], rel_tol=0.005), v
    assert checked > 300


def test_retrofit_lowers_heat_loss_by_the_configured_share(tmp_path: Path) -> None:
    ph = BuildingPhysics(config_of(tmp_path))
    retrofit = ph.retrofit
    assert retrofit is not None
    assert ph.heat_loss("heat-a", retrofit.at - 60) == H_A
    assert math.isclose(ph.heat_loss("heat-a", retrofit.at), H_A * (1 - REDUCTION))
    ph.advance_to(ph.start + 6 * DAY)
    for day in ph.days:
        figures = day.as_json()
        h = H_A * (1 - REDUCTION) if day.start >= retrofit.at else H_A
        # Space heat per degree day is H x 24 h, exactly the degree-day model (W rounding aside).
        assert math.isclose(figures["space_heat_kwh"]["heat-a"], h * 24 / 1000 * figures["hdd"], rel_tol=1e-3)
        assert math.isclose(figures["energy_kwh"]["heat-a"] - figures["space_heat_kwh"]["heat-a"], DHW_A,
                            rel_tol=1e-3)


def test_rooms_follow_heating_and_occupancy(tmp_path: Path) -> None:
    clock = FakeClock()
    building = Building(config_of(tmp_path), clock)
    start = building.physics.start + 3 * 3600  # midnight
    day = [served(building, clock, "room", start + DAY + h * 3600)["temperature"] for h in range(24)]
    assert all(17.0 <= t <= 23.5 for t in day), day
    assert max(day[18:22]) > min(day[3:6]) + 0.5  # warmer in the occupied evening than after the night setback


# ---------------------------------------------------------------- counter faults

def test_rollover_wraps_at_the_scheduled_moment(tmp_path: Path) -> None:
    clock = FakeClock()
    building = Building(config_of(tmp_path, faults=[
        {"at": "30h", "fault": "rollover", "device": "heat-a", "point": "energy_heat"}]), clock)
    at = building.physics.start + 30 * 3600
    width = 2**32 * 0.001
    before = served(building, clock, "heat-a", at - 60)["energy_heat"]
    after = served(building, clock, "heat-a", at + 60)["energy_heat"]
    assert width - 50 < before < width
    assert 0 <= after < 50
    assert building.events[0]["fault"] == "rollover"


def test_counter_reset_and_meter_swap(tmp_path: Path) -> None:
    clock = FakeClock()
    building = Building(config_of(tmp_path, faults=[
        {"at": "10h", "fault": "counter_reset", "device": "elec", "point": "energy_active_import"},
        {"at": "2025-01-13T12:00:00Z", "fault": "meter_swap", "device": "heat-a"}]), clock)
    start = building.physics.start
    elec_before = served(building, clock, "elec", start + 10 * 3600 - 60)["energy_active_import"]
    elec_after = served(building, clock, "elec", start + 10 * 3600 + 120)["energy_active_import"]
    assert elec_before > 2000 and 0 < elec_after < 2
    swap = building.physics.snap(building.physics.start + 15 * 3600)
    old = served(building, clock, "heat-a", swap - 60)
    new = served(building, clock, "heat-a", swap + 60)
    assert old["energy_heat"] > 1000 and 0 <= new["energy_heat"] < 5 and new["volume"] < 1
    assert old["serial_number"] != new["serial_number"]
    swap_event = next(e for e in building.events if e["fault"] == "meter_swap")
    assert swap_event["new_serial"] == new["serial_number"]


def test_config_errors_name_the_problem(tmp_path: Path) -> None:
    broken = building_dict(faults=[{"at": "1h", "fault": "offline", "device": "nope"}])
    broken["devices"][1]["bus"] = "attic"
    with pytest.raises(RetrofitError) as error:
        parse_building_config(broken, tmp_path, "b.yaml")
    message = str(error.value)
    assert "unknown bus 'attic'" in message and "faults[0] (offline): device" in message
    assert "for: how long" in message
    bad_type = copy.deepcopy(building_dict())
    bad_type["devices"][0]["model"] = "fridge"
    with pytest.raises(RetrofitError, match=r"b\.yaml: devices\[0\]: unknown device model .fridge."):
        parse_building_config(bad_type, tmp_path, "b.yaml")


def with_mbus(tmp_path: Path, **device: Any) -> dict[str, Any]:
    raw = building_dict()
    raw["buses"].append({"id": "mbus", "type": "mbus", "pty": str(tmp_path / "ttyM1")})
    raw["devices"].append({"id": "heat-m", "bus": "mbus", "address": 5, "profile": "mbus-heat", "model": "heat",
                           "heat_loss": 900.0, "energy_start": 1234.5678, "volume_start": 10.0, **device})
    return raw


def test_an_mbus_heat_meter_serves_the_buildings_counters_in_whole_units(tmp_path: Path) -> None:
    clock = FakeClock()
    building = Building(parse_building_config(with_mbus(tmp_path), tmp_path), clock)
    start = building.physics.start
    for hours in (1, 7, 30):
        v = served(building, clock, "heat-m", start + hours * 3600 + 30)
        true = building.physics.counters()
        # The meter sends whole Wh and whole litres: what it shows is the true
        # counter plus the start value, cut down to the unit.
        energy = Fraction(12345678, 10_000) + true["heat-m/energy_heat"]
        volume = 10 + true["heat-m/volume"]
        assert v["energy_heat"] == pytest.approx(math.floor(energy * 1000) / 1000, abs=1e-9)
        assert v["volume"] == pytest.approx(math.floor(volume * 1000) / 1000, abs=1e-9)
        assert v["energy_heat_due_date"] == pytest.approx(1234.567, abs=1e-9)
        assert v["temperature_supply"] > v["temperature_return"]
        # Each temperature is rounded to 0.1 K, their difference to 0.01 K.
        assert v["temperature_difference"] == pytest.approx(v["temperature_supply"] - v["temperature_return"],
                                                            abs=0.1 + 0.005)


def test_mbus_lines_take_heat_meters_with_mbus_profiles_and_no_counter_faults(tmp_path: Path) -> None:
    room = with_mbus(tmp_path)
    room["devices"][-1].update(model="room")
    for key in ("heat_loss", "energy_start", "volume_start"):
        del room["devices"][-1][key]
    with pytest.raises(RetrofitError, match=r"device heat-m: only heat meters are simulated on an M-Bus line"):
        parse_building_config(room, tmp_path)
    swap = with_mbus(tmp_path)
    swap["faults"] = [{"at": "1h", "fault": "meter_swap", "device": "heat-m"}]
    with pytest.raises(RetrofitError, match=r"heat-m is on an M-Bus line; counter faults are simulated on Modbus"):
        parse_building_config(swap, tmp_path)
    with pytest.raises(RetrofitError, match=r"profile sim-heat-meter is modbus, but bus mbus is an M-Bus line"):
        Building(parse_building_config(with_mbus(tmp_path, profile="sim-heat-meter"), tmp_path), FakeClock())


# ---------------------------------------------------------------- the example files

def test_example_building_and_its_agent_config_agree() -> None:
    building = load_building_config(REPO / "configs" / "sim-building.yaml")
    committed = yaml.safe_load((REPO / "configs" / "building-agent.yaml").read_text())
    made = agent_config(building, committed["uplink"]["mqtt"]["port"], Path(committed["buffer"]["path"]),
                        committed["gateway"]["id"])
    assert committed["buses"] == made["buses"]
    assert committed["devices"] == made["devices"]
    assert committed["gateway"] == made["gateway"]
    loaded = load_config(REPO / "configs" / "building-agent.yaml")  # the agent accepts it
    assert len(loaded.config.devices) == len(building.devices)


# ---------------------------------------------------------------- served on real parts

def test_building_serves_on_tcp_and_a_pty_and_records_what_it_served(tmp_path: Path) -> None:
    require_binary("socat")
    from drivers.modbus import link as modbus

    config = config_of(tmp_path, tcp_port=free_port(), pty=str(tmp_path / "ttyB1"), faults=[
        {"at": "5h", "fault": "bus_down", "bus": "plant", "for": "3h"}])
    handle = run_building(config)
    try:
        tcp = modbus.tcp_link("127.0.0.1", int(handle.endpoints["plant"].rpartition(":")[2]), 1.0)
        rtu = modbus.serial_link(str(tmp_path / "ttyB1"), 9600, "N", 1, 8, 0.5)
        heat = tcp.read("holding", 20, 0, 11)
        room = rtu.read("input", 11, 1, 2)
        assert len(heat) == 11 and len(room) == 2
        tcp.close()
        rtu.close()
        # The bus goes down 5 simulated hours in (2 s) and comes back 3 hours later.
        wait_until(lambda: any("bus_down_end" in line for line in handle.fault_log), 10, "the bus to come back")
    finally:
        handle.stop()
    truth = GroundTruth.load(handle.truth_path)
    assert truth.served_between("heat-a", "energy_heat", 0, 2**62)
    assert truth.served_between("room", "temperature", 0, 2**62)
    assert [e["event"] for e in truth.events] == ["bus_down", "bus_down_end"]
    meta = json.loads(handle.meta_path.read_text())
    assert meta["retrofit"]["heat_loss_factor"] == pytest.approx(1 - REDUCTION)
    assert meta["devices"]["heat-a"]["heat_loss_after_w_per_k"] == pytest.approx(H_A * (1 - REDUCTION))


def test_cli_building_runs_and_writes_an_agent_config(tmp_path: Path) -> None:
    require_binary("socat")
    raw = building_dict(tcp_port=free_port(), pty=str(tmp_path / "ttyB1"))
    raw["building"]["acceleration"] = 43200  # a simulated day in 2 s
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(raw))
    result = subprocess.run(
        [sys.executable, "-m", "simulators.cli", "building", "--config", str(tmp_path / "b.yaml"),
         "--duration", "5", "--agent-config", str(tmp_path / "agent.yaml")],
        check=False, capture_output=True, text=True, timeout=40, cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    assert "2025-01-13: outdoor" in result.stdout  # a simulated day went by and was reported
    assert load_config(tmp_path / "agent.yaml").config.devices[0].id == "heat-a"


# ---------------------------------------------------------------- M-Bus: bounds, noise, ground truth

def test_mbus_values_the_telegrams_cannot_carry_are_refused_by_the_check(tmp_path: Path) -> None:
    """A 9-digit serial is no M-Bus identification number (8 BCD digits), and
    energy past 2^31 Wh does not fit the telegram's 32-bit record: both broke
    the meter's telegrams at run time instead of failing the check."""
    with pytest.raises(RetrofitError, match=r"serial 123456789 does not fit an M-Bus identification number"):
        parse_building_config(with_mbus(tmp_path, serial=123_456_789), tmp_path)
    with pytest.raises(RetrofitError, match=r"energy_start 2.5e\+06 kWh is too large for an M-Bus meter"):
        parse_building_config(with_mbus(tmp_path, energy_start=2_500_000.0), tmp_path)
    with pytest.raises(RetrofitError, match=r"volume_start 3e\+06 m3 is too large"):
        parse_building_config(with_mbus(tmp_path, volume_start=3_000_000.0), tmp_path)
    busy = with_mbus(tmp_path)
    busy["faults"] = [{"at": "1h", "fault": "noisy", "bus": "mbus", "for": "1h", "rates": {"busy": 0.5}}]
    with pytest.raises(RetrofitError, match=r"busy is a Modbus exception response; an M-Bus meter has none"):
        parse_building_config(busy, tmp_path)
    # At the bounds, the meter's telegrams are built and read back.
    edge = parse_building_config(with_mbus(tmp_path, serial=99_999_999, energy_start=2_000_000.0,
                                           volume_start=2_000_000.0), tmp_path)
    clock = FakeClock()
    building = Building(edge, clock)
    v = served(building, clock, "heat-m", building.physics.start + 3600)
    assert 2_000_000 < v["energy_heat"] < 2_000_100 and v["volume"] >= 2_000_000
    assert building.devices["heat-m"].identification == "99999999"  # type: ignore[union-attr]


def test_the_ground_truth_holds_only_the_points_of_the_telegram_sent(tmp_path: Path) -> None:
    """Each REQ_UD2 gets one of the meter's two telegrams; the ground truth
    recorded the points of both each time, so a value the agent was never
    sent could prove a reading."""
    clock = FakeClock()
    building = Building(parse_building_config(with_mbus(tmp_path), tmp_path), clock)
    building.truth = GroundTruthWriter(tmp_path / "truth.jsonl")
    meter = building.devices["heat-m"]
    at_sim(building, clock, building.physics.start + 3600)
    first = meter.answer(True, 5)  # type: ignore[union-attr]
    second = meter.answer(False, 5)  # type: ignore[union-attr]
    assert first != second
    building.truth.close()
    lines = [json.loads(line) for line in (tmp_path / "truth.jsonl").read_text().splitlines()]
    assert [sorted(line["v"]) for line in lines] == [
        ["energy_heat", "flow", "power_heat", "volume"],
        ["energy_heat_due_date", "temperature_difference", "temperature_return", "temperature_supply"]]


def test_a_noisy_mbus_line_loses_and_garbles_answers(tmp_path: Path) -> None:
    """A ``noisy`` fault on an M-Bus bus was accepted by the check and did
    nothing: the line now loses answers, garbles them and breaks checksums."""
    require_binary("socat")
    import serial

    from drivers.core.errors import DecodeError
    from drivers.mbus.frame import bytes_needed, parse_frame

    raw = with_mbus(tmp_path)
    raw["building"]["acceleration"] = 86_400  # a simulated day a second
    raw["buses"] = [b for b in raw["buses"] if b["type"] == "mbus"]
    raw["devices"] = [d for d in raw["devices"] if d["bus"] == "mbus"]
    raw["faults"] = [{"at": "1h", "fault": "noisy", "bus": "mbus", "for": "30d",
                      "rates": {"silent": 0.3, "crc": 0.3, "garbage": 0.2, "partial": 0.2}}]
    handle = run_building(parse_building_config(raw, tmp_path))
    outcomes: dict[str, int] = {}
    try:
        # The simulated meter answers within milliseconds: 0.1 s of silence is a lost answer.
        line = serial.Serial(str(tmp_path / "ttyM1"), 2400, timeout=0.1)

        def read_answer() -> bytes:
            """A frame as long as its header says, or what came before the line went quiet."""
            answer = line.read(1)
            while answer:
                try:
                    need = bytes_needed(answer)
                except DecodeError:  # garbage: whatever else arrived with it
                    return answer + line.read(line.in_waiting)
                more = line.read(need) if need else b""
                if not more:
                    return answer
                answer += more
            return answer
        try:
            wait_until(lambda: handle._buses["mbus"].noisy, 5, "the noisy period")
            for n in range(40):
                line.reset_input_buffer()
                request = bytes([0x10, 0x5B | (0x20 if n % 2 else 0), 5])
                line.write(request + bytes([sum(request[1:]) & 0xFF, 0x16]))
                answer = read_answer()
                try:
                    parse_frame(answer)
                    kind = "ok"
                except DecodeError as exc:
                    kind = "silent" if not answer else "checksum" if "checksum" in str(exc) else "broken"
                outcomes[kind] = outcomes.get(kind, 0) + 1
        finally:
            line.close()
    finally:
        handle.stop()
    assert outcomes.get("silent", 0) > 3 and outcomes.get("checksum", 0) > 3 and outcomes.get("broken", 0) > 3, outcomes
    meta = json.loads(handle.meta_path.read_text())
    assert sum(meta["injected_noisy"]["mbus"].values()) >= 40 - outcomes.get("ok", 0)


# ---------------------------------------------------------------- local days, the true saving, PV (issue 19)

def year_dict(retrofit: bool = True, **building: Any) -> dict[str, Any]:
    raw = building_dict()
    raw["building"].update({"start": "2025-03-29T00:00:00Z", "step": "5m",
                            "weather": {"mean": 6.0, "annual_amplitude": 11.0}, **building})
    raw["building"]["retrofit"] = ({"at": "2025-03-30T12:00:00Z", "heat_loss_reduction": REDUCTION} if retrofit
                                   else None)
    raw["devices"][0]["daily_sd"] = 0.05
    return raw


def test_local_days_follow_the_clock_change_and_the_counterfactual_is_the_building_never_retrofitted(
        tmp_path: Path) -> None:
    retrofitted = BuildingPhysics(parse_building_config(year_dict(), tmp_path))
    never = BuildingPhysics(parse_building_config(year_dict(retrofit=False), tmp_path))
    for ph in (retrofitted, never):
        ph.advance_to(ph.start + 4 * DAY)
    # Europe/Warsaw: 30 March 2025 has 23 hours; the first local day starts at the first local midnight.
    assert [(d.date, (d.end - d.start) / 3600) for d in retrofitted.local_days] == [
        ("2025-03-30", 23.0), ("2025-03-31", 24.0), ("2025-04-01", 24.0)]
    for day, same in zip(retrofitted.local_days, never.local_days, strict=True):
        # Same weather, same occupants' scatter, H before the retrofit: the counterfactual, to the joule.
        assert day.counterfactual_j["heat-a"] == same.energy_j["heat-a"]
    day_after = retrofitted.local_days[1]
    avoided = day_after.counterfactual_j["heat-a"] - day_after.energy_j["heat-a"]
    assert 0 < avoided < REDUCTION * day_after.counterfactual_j["heat-a"]  # hot water is not saved


def test_the_seasonal_cycle_makes_winter_cold_and_summer_warm() -> None:
    weather = physics.Weather(3, 8.0, 0.0, 0.0, 0.0, 0.0, annual_amplitude_k=11.0, coldest_day=20)
    january, july = 1_737_331_200, 1_752_969_600  # 20 January and 20 July 2025, 00:00 UTC
    assert weather.outdoor(january) == pytest.approx(-3.0, abs=0.05)
    assert weather.outdoor(july) == pytest.approx(19.0, abs=0.2)


def pv_dict() -> dict[str, Any]:
    raw = building_dict()
    raw["building"].update({"start": "2025-06-21T00:00:00Z", "step": "60s"})
    raw["devices"][1].update({"pv": "roof", "export_start": 10.0})
    raw["devices"].append({"id": "roof", "bus": "plant", "address": 3, "profile": "sunspec-inverter-103",
                           "model": "pv", "peak": 40000, "energy_start": 500.0})
    return raw


def test_pv_produces_by_day_and_the_main_meter_imports_and_exports_what_the_load_leaves(tmp_path: Path) -> None:
    ph = BuildingPhysics(parse_building_config(pv_dict(), tmp_path))
    produced = imported = exported = 0
    pv_state, meter_state = ph.pv["roof"][1], ph.elec["elec"][1]
    for _ in range(24 * 60):
        hour, _ = physics.hour_and_weekend(ph.t)
        p0, i0, e0 = pv_state.energy_j, meter_state.energy_j, meter_state.export_j
        pv_w, net_w = pv_state.power_w, meter_state.power_w
        ph.advance_to(ph.t + 60)
        assert pv_state.energy_j - p0 == pv_w * 60
        assert (meter_state.energy_j - i0, meter_state.export_j - e0) == (max(0, net_w) * 60, max(0, -net_w) * 60)
        if hour in (0, 1, 23):
            assert pv_w == 0  # night in Warsaw
        produced, imported, exported = produced + pv_w * 60, imported + max(0, net_w) * 60, exported + max(0, -net_w) * 60
    assert produced > 0 and exported > 0 and imported > 0
    counters = ph.counters()
    assert counters["roof/energy_produced"] == Fraction(produced, physics.J_PER_KWH)
    assert counters["elec/energy_active_export"] == Fraction(exported, physics.J_PER_KWH)


def test_a_sunspec_inverter_is_served_with_its_scale_factors_and_decoded_as_the_agent_does(tmp_path: Path) -> None:
    from drivers.modbus.codec import registers_to_bytes
    from drivers.modbus.plan import ReadRequest
    from drivers.modbus.profile import ModbusProfile
    from drivers.modbus.values import AnswerDecoder, with_exponent_registers
    from drivers.profile import load_catalogue

    clock = FakeClock()
    building = Building(parse_building_config(pv_dict(), tmp_path), clock)
    at_sim(building, clock, building.physics.start + 11 * 3600 + 30)  # 11:00 UTC: midday sun
    device = building.devices["roof"]
    assert isinstance(device, BuildingDevice)
    profile = load_catalogue().get("sunspec-inverter-103")
    assert isinstance(profile, ModbusProfile)
    words = device.registers("holding", 40069, 125)
    assert isinstance(words, list)
    decoder = AnswerDecoder(profile.points)
    inside = tuple(p for p in with_exponent_registers(profile.points)
                   if p.address >= 40069 and p.end <= 40069 + 125)
    request = ReadRequest("holding", 40069, 125, inside)
    answer = registers_to_bytes(words)
    decoder.take_exponents([(request, answer)])
    got = {point.name: value for point, value in decoder.values(request, answer)}
    power = building.physics.pv["roof"][1].power_w
    assert power > 1000 and got["power_active"] == pytest.approx(power, rel=1e-3)
    assert got["sunspec_model_id"] == 103 and got["operating_state"] == 4
    assert got["energy_produced"] == pytest.approx(500 + building.physics.pv["roof"][1].energy_j / 3.6e6, abs=0.001)
    assert got["rated_power"] == 40000
    assert device.served_values(building.physics.t)["energy_produced"] == got["energy_produced"]


def test_agent_configs_made_for_a_building_commit_every_second_and_read_the_listed_points(tmp_path: Path) -> None:
    raw = pv_dict()
    raw["devices"][3]["points"] = ["energy_produced", "power_active"]
    made = agent_config(parse_building_config(raw, tmp_path), 1883, tmp_path / "b.db")
    assert made["buffer"]["flush_interval"] == "1s"
    assert [d.get("points") for d in made["devices"]] == [None, None, None, ["energy_produced", "power_active"]]
    (tmp_path / "agent.yaml").write_text(yaml.safe_dump(made))
    assert load_config(tmp_path / "agent.yaml").config.buffer.flush_interval == 1.0
