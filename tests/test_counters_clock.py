"""Counter integrity and clock safety end to end: injected cases reach the
platform with the documented flag and their raw value; nothing else is flagged."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import yaml

from drivers.profile import load_catalogue
from simulators.meters import MeterModel, SimulatedDevice
from simulators.modbus_server import ModbusTcpServer
from tests.support import (
    AgentProcess,
    Broker,
    Subscriber,
    buffer_next_id,
    running,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.timeout(120)

# A heat meter of our own making: a 16-bit energy counter (wraps at 65536 kWh)
# and a power gauge, so rollover can be shown without waiting for 2**32.
HEAT_PROFILE = """\
name: test-heat-16bit
manufacturer: test
model: 16-bit counter
source: written for this test
points:
  energy_heat: {table: holding, address: 0, type: uint16, unit: kWh, kind: counter}
  power_heat:  {table: holding, address: 1, type: uint16, unit: W, kind: gauge}
"""


class ScriptedCounter(MeterModel):
    """Serves a scripted energy sequence, one value per poll, then keeps the last rising."""

    def __init__(self, script: list[int]) -> None:
        self.script = script
        self.n = -1
        self.lock = threading.Lock()

    def values(self, t: float) -> dict[str, float]:
        with self.lock:
            self.n += 1
            if self.n < len(self.script):
                energy = self.script[self.n]
            else:
                energy = self.script[-1] + (self.n - len(self.script) + 1)
            return {"energy_heat": energy % 65536, "power_heat": 1000}


def _heat_config(tmp_path: Path, port: int, broker_port: int, script_name: str) -> Path:
    profiles = tmp_path / "profiles"
    profiles.mkdir(exist_ok=True)
    (profiles / "test-heat-16bit.yaml").write_text(HEAT_PROFILE)
    config = write_config(
        tmp_path / f"{script_name}.yaml", broker_port=broker_port, buffer=tmp_path / f"{script_name}.db",
        buses=[{"id": "gw", "type": "modbus-tcp", "host": "127.0.0.1", "port": port}],
        devices=[{"id": "heat", "bus": "gw", "address": 1, "profile": "test-heat-16bit", "interval": "0.2s",
                  # at most 20,000 kWh per hour: 0.2 s allows about 1.1 kWh
                  "max_rate": {"energy_heat": 20_000}}],
    )
    data = yaml.safe_load(config.read_text())
    data["profile_dirs"] = [str(profiles)]
    config.write_text(yaml.safe_dump(data))
    return config


# Each case: the served sequence, and the flag expected at each position (None: "ok").
CASES = {
    "reset": ([100, 101, 102, 0, 1, 2, 3], [None, None, None, "counter_backwards", None, None, None]),
    "garbage-high": ([100, 101, 60_000, 102, 103], [None, None, "counter_jump", None, None]),
    "garbage-low": ([100, 101, 5, 102, 103], [None, None, "counter_backwards", None, None]),
    "rollover": ([65_533, 65_534, 65_535, 65_536, 65_537, 65_538], [None, None, None, "counter_rollover", None, None]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_injected_counter_case_arrives_flagged_with_its_raw_value(
        tmp_path: Path, broker: Broker, subscriber: Subscriber, case: str) -> None:
    script, flags = CASES[case]
    model = ScriptedCounter(script)
    profiles = tmp_path / "profiles"
    profiles.mkdir(exist_ok=True)
    (profiles / "test-heat-16bit.yaml").write_text(HEAT_PROFILE)
    device = SimulatedDevice(load_catalogue([profiles]).get("test-heat-16bit"), model)
    server = ModbusTcpServer({1: device})
    config = _heat_config(tmp_path, server.port, broker.port, case)
    with running(server), AgentProcess(config, tmp_path / f"{case}.log"):
        wait_until(lambda: len([r for r in subscriber.unique_readings().values()
                                if r["point"] == "energy_heat"]) >= len(script) + 3, 30, "the scripted polls")
    energy = [r for _, r in sorted(subscriber.unique_readings().items()) if r["point"] == "energy_heat"]
    served = [v % 65536 for v in script]
    assert [r["value"] for r in energy[: len(script)]] == served, "raw values are kept as served"
    expected = [f or "ok" for f in flags]
    assert [r["quality"] for r in energy[: len(script)]] == expected
    assert all(r["quality"] == "ok" for r in energy[len(script):]), "no false alarm afterwards"
    power = [r for r in subscriber.unique_readings().values() if r["point"] == "power_heat"]
    assert power and all(r["quality"] == "ok" for r in power)


@pytest.mark.long(10)
def test_a_clean_run_raises_no_false_alarm(tmp_path: Path, broker: Broker, subscriber: Subscriber) -> None:
    """Realistic meters (float32 energy that rises by less than its resolution
    per poll) at a fast poll: not one flag."""
    catalogue = load_catalogue()
    server = ModbusTcpServer({
        unit: SimulatedDevice(catalogue.get("eastron-sdm630")) for unit in (1, 2, 3)})
    config = write_config(
        tmp_path / "agent.yaml", broker_port=broker.port, buffer=tmp_path / "buffer.db",
        buses=[{"id": "gw", "type": "modbus-tcp", "host": "127.0.0.1", "port": server.port}],
        devices=[{"id": f"elec-{u}", "bus": "gw", "address": u, "profile": "eastron-sdm630", "interval": "0.1s",
                  "max_rate": {"energy_active_import": 50, "energy_active_export": 50}} for u in (1, 2, 3)],
    )
    with running(server), AgentProcess(config, tmp_path / "agent.log"):
        wait_until(lambda: len(subscriber.unique_readings()) >= 3000, 60, "3000 readings")
    flagged = [r for r in subscriber.unique_readings().values() if r["quality"] != "ok"]
    assert flagged == []


class TimedRoom(MeterModel):
    """Temperature counts polls; the wall time of every poll is the truth."""

    def __init__(self) -> None:
        self.n = 0
        self.served_at: dict[float, float] = {}
        self.lock = threading.Lock()

    def values(self, t: float) -> dict[str, float]:
        with self.lock:
            self.n += 1
            temperature = round((1000 + self.n) * 0.1, 1)
            self.served_at[temperature] = time.time() * 1000
            return {"temperature": temperature, "humidity": 50.0}


@pytest.mark.long(10)
def test_readings_before_ntp_are_restamped_exactly_once(tmp_path: Path) -> None:
    room = TimedRoom()
    server = ModbusTcpServer({10: SimulatedDevice(load_catalogue().get("xy-md02"), room)})
    broker = Broker(tmp_path / "broker")
    flag = tmp_path / "timesync" / "synchronized"
    flag.parent.mkdir()
    buffer = tmp_path / "buffer.db"
    config = write_config(
        tmp_path / "agent.yaml", broker_port=broker.port, buffer=buffer,
        buses=[{"id": "gw", "type": "modbus-tcp", "host": "127.0.0.1", "port": server.port}],
        devices=[{"id": "room", "bus": "gw", "address": 10, "profile": "xy-md02", "interval": "0.5s"}],
    )
    data = yaml.safe_load(config.read_text())
    data["health"].update(timesync_flag=str(flag), use_timedatectl=False)
    data["uplink"]["mqtt"]["inflight"] = 1
    config.write_text(yaml.safe_dump(data))
    # The gateway's clock is a day behind until NTP arrives (a Pi without RTC after boot).
    agent = AgentProcess(config, tmp_path / "agent.log", env={"RETROFIT_FAILPOINTS": "clock-skew-s=-86400"})
    with running(server), broker, Subscriber(broker.port, "buildings/#") as subscriber, agent:
        wait_until(lambda: len(subscriber.unique_readings()) >= 8, 20, "unsynchronised readings sent")
        # The broker stops acknowledging: one batch stays in flight, the next
        # polls wait in the buffer while NTP arrives.
        broker.pause()
        # Two commits after the pause: the first may go out (and stay
        # unacknowledged), the second then has to wait in the buffer.
        commits = {buffer_next_id(buffer)}

        def two_commits_since_pause() -> bool:
            commits.add(buffer_next_id(buffer))
            return len(commits) >= 3
        wait_until(two_commits_since_pause, 10, "polls committed behind the unacknowledged batch")
        flag.touch()
        wait_until(lambda: any(e.get("event") == "clock.restamped" for e in agent.events()), 10, "the restamp")
        broker.resume()
        wait_until(lambda: subscriber.payloads("/events") and len(subscriber.unique_readings()) >= 40, 30,
                   "corrections and the rest of the readings")

    corrections = [e for m in subscriber.payloads("/events") for e in m["events"] if e["type"] == "clock_corrected"]
    temperatures = {rid: r for rid, r in subscriber.unique_readings().items() if r["point"] == "temperature"}
    unsynced = {rid: r for rid, r in temperatures.items() if "clock_unsynced" in r["quality"]}
    restamped = {rid: r for rid, r in temperatures.items() if "restamped" in r["quality"]}
    assert unsynced and restamped and corrections
    for rid, reading in unsynced.items():
        covering = [c for c in corrections if c["first_id"] <= rid <= c["last_id"]]
        assert len(covering) == 1, f"reading {rid} sent before NTP must be corrected exactly once"
        assert abs(reading["ts"] + covering[0]["add_ms"] - room.served_at[reading["value"]]) < 1000
    for reading in restamped.values():
        # A correction may cover it too (it might have been in flight); the
        # platform applies corrections only to readings flagged clock_unsynced.
        assert abs(reading["ts"] - room.served_at[reading["value"]]) < 1000
    later = [r for r in temperatures.values() if r["quality"] == "ok"]
    assert later and all(abs(r["ts"] - room.served_at[r["value"]]) < 1000 for r in later)


def test_a_meter_swap_is_one_event_with_old_and_new_ids(tmp_path: Path, broker: Broker,
                                                        subscriber: Subscriber) -> None:
    """The SDM630's serial-number register changes (and its counters restart
    near zero): exactly one meter_swap event, the next counter readings start
    a new series flagged meter_swap, and readings carry the new meter id."""
    profile = load_catalogue().get("eastron-sdm630")
    values = {p.name: 100.0 for p in profile.points}
    values.update(energy_active_import=12345.6, energy_active_export=7.25)

    class Swappable(MeterModel):
        def values(self, t: float) -> dict[str, float]:
            return dict(values)

    device = SimulatedDevice(profile, Swappable(), serial=11112222)
    old_meter = ModbusTcpServer({1: device})
    config = write_config(
        tmp_path / "agent.yaml", broker_port=broker.port, buffer=tmp_path / "buffer.db",
        buses=[{"id": "gw", "type": "modbus-tcp", "host": "127.0.0.1", "port": old_meter.port}],
        devices=[{"id": "elec", "bus": "gw", "address": 1, "profile": "eastron-sdm630", "interval": "0.3s"}],
    )

    def new_meter_energy() -> list[dict]:
        return [r for r in subscriber.unique_readings().values()
                if r.get("meter") == "33334444" and r["point"] == "energy_active_import"]
    with running(old_meter), AgentProcess(config, tmp_path / "agent.log") as agent:
        wait_until(lambda: len(subscriber.unique_readings()) >= 30, 20, "readings from the first meter")
        # The technician swaps the meter: it is away for a moment, the new one starts near zero.
        old_meter.stop()
        wait_until(lambda: any(e.get("event") == "device.silent" for e in agent.events()), 10, "silence")
        device.serial = 33334444
        values.update(energy_active_import=0.5, energy_active_export=0.0)
        with running(ModbusTcpServer({1: device}, port=old_meter.port)):
            # A few polls of the new meter: the flag must be on its first reading only.
            wait_until(lambda: len(new_meter_energy()) >= 4 and subscriber.payloads("/events"), 20,
                       "readings of the new meter and the event")
            assert agent.stop() == 0  # before the new meter goes away
    swaps = [e for m in subscriber.payloads("/events") for e in m["events"] if e["type"] == "meter_swap"]
    assert swaps == [{"type": "meter_swap", "device": "elec", "old_meter": "11112222", "new_meter": "33334444",
                      "ts": swaps[0]["ts"]}]
    readings = [r for _, r in sorted(subscriber.unique_readings().items())]
    energy = [r for r in readings if r["point"] == "energy_active_import"]
    before = [r for r in energy if r["meter"] == "11112222"]
    after = [r for r in energy if r["meter"] == "33334444"]
    assert before and after
    assert [r["quality"] for r in before] == ["ok"] * len(before), [r["quality"] for r in before]
    assert after[0]["quality"] == "meter_swap" and after[0]["value"] == 0.5
    assert all(r["quality"] == "ok" for r in after[1:]), "one flag, then the new series is normal"


def test_clock_watch_asks_timedatectl_and_stops_asking_where_there_is_none(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.clock import ClockWatch

    no_timesyncd = tmp_path / "no-timesyncd" / "synchronized"  # neither flag nor its directory
    tools = tmp_path / "bin"
    tools.mkdir()
    calls = tmp_path / "calls"
    (tools / "timedatectl").write_text(f"#!/bin/sh\necho called >> {calls}\necho yes\n")
    (tools / "timedatectl").chmod(0o755)
    monkeypatch.setenv("PATH", str(tools))
    assert ClockWatch(no_timesyncd, cache_s=0).synchronised() is True

    (tools / "timedatectl").unlink()
    missing = ClockWatch(no_timesyncd, cache_s=0)
    assert [missing.synchronised() for _ in range(3)] == [None, None, None]
    assert missing.use_timedatectl is False, "a missing command is looked for once, not every call"
    assert calls.read_text().splitlines() == ["called"]
