"""Three simulated M-Bus heat meters on one serial line (a socat pty), one of
them addressed by its secondary address: their values reach the broker in
kWh, m3, m3/h and Cel, equal to what the meters served."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from simulators.mbus_meter import (
    CI_RSP_VARIABLE,
    HeatMeterState,
    MbusLineServer,
    SimulatedMbusMeter,
    long_frame,
)
from simulators.pty import PtyPair
from tests.mbus_support.libmbus_reference import testdata_dir as reference_telegrams
from tests.support import (
    AgentProcess,
    Broker,
    Subscriber,
    require_binary,
    running,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.timeout(90)


def test_three_heat_meters_one_by_secondary_address(tmp_path: Path, broker: Broker, subscriber: Subscriber) -> None:
    require_binary("socat")
    meters = [
        SimulatedMbusMeter(5, "12345678", state=HeatMeterState(power_w=12_000, supply_c=70.0, return_c=45.0)),
        SimulatedMbusMeter(6, "23456789", manufacturer="KAM", state=HeatMeterState(power_w=4_500, supply_c=55.5,
                                                                                   return_c=38.2)),
        SimulatedMbusMeter(7, "34567890", manufacturer="LUG", state=HeatMeterState(power_w=0, supply_c=21.0,
                                                                                   return_c=21.0 - 0.5)),
    ]
    config = write_config(
        tmp_path / "agent.yaml", broker_port=broker.port, buffer=tmp_path / "buffer.db",
        # A pty takes no parity; a real M-Bus level converter runs 8E1 (the default).
        buses=[{"id": "mbus-1", "type": "mbus", "port": str(tmp_path / "tty.agent"), "baudrate": 2400,
                "parity": "N"}],
        devices=[
            {"id": "heat-5", "bus": "mbus-1", "address": 5, "profile": "mbus-heat", "interval": "1s"},
            {"id": "heat-6", "bus": "mbus-1", "address": "23456789", "profile": "mbus-heat", "interval": "1s"},
            {"id": "heat-7", "bus": "mbus-1", "address": 7, "profile": "mbus-heat", "interval": "1s"},
        ],
    )
    with (PtyPair(tmp_path / "tty.meter", tmp_path / "tty.agent") as line,
          running(MbusLineServer(meters, str(line.meter_end), baudrate=2400)) as server,
          AgentProcess(config, tmp_path / "agent.log")):
        wait_until(lambda: {r["device"] for r in subscriber.unique_readings().values()}
                   == {"heat-5", "heat-6", "heat-7"} and len(subscriber.unique_readings()) >= 60, 30,
                   "readings of all three meters")
    readings = subscriber.unique_readings()
    ids = sorted(readings)
    assert ids == list(range(1, ids[-1] + 1))
    units = {"energy_heat": "kWh", "volume": "m3", "power_heat": "W", "flow": "m3/h", "temperature_supply": "Cel",
             "temperature_return": "Cel", "temperature_difference": "K", "energy_heat_due_date": "kWh"}
    by_device = {"heat-5": meters[0], "heat-6": meters[1], "heat-7": meters[2]}
    for reading in readings.values():
        assert reading["unit"] == units[reading["point"]]
        served = {Decimal(str(s[reading["point"]])) for s in by_device[reading["device"]].served}
        assert Decimal(str(reading["value"])) in served, reading
        assert reading["meter"] == by_device[reading["device"]].identification
    # The simulated meters send energy in Wh, volume in litres, power in W, flow
    # in l/h, temperatures in 0.1 Cel and their difference in 0.01 K, all as
    # integers (simulators/mbus_meter.py); the profile's units are kWh, m3, W,
    # m3/h, Cel and K.
    steps = {"energy_heat": 0.001, "volume": 0.001, "power_heat": 1.0, "flow": 0.001, "temperature_supply": 0.1,
             "temperature_return": 0.1, "temperature_difference": 0.01, "energy_heat_due_date": 0.001}
    meta = subscriber.payloads("/meta")[-1]["series"].values()
    described = {(m["device"], m["point"]): m.get("resolution") for m in meta}
    assert described == {(device, point): {"step": step} for device in by_device for point, step in steps.items()}
    supply_6 = [r["value"] for r in readings.values() if r["device"] == "heat-6" and r["point"] == "temperature_supply"]
    assert supply_6 and set(supply_6) == {55.5}
    assert all(r["quality"] == "ok" for r in readings.values())
    selections = [f for f in server.requests if f[0] == 0x68 and f[6] == 0x52]
    assert selections, "heat-6 is read through a secondary-address selection"
    writes = [f for f in server.requests if f[0] == 0x68 and f[6] != 0x52]
    assert writes == [], "nothing but selections is ever sent as user data"


class WrappingMeter(SimulatedMbusMeter):
    """Energy on 8 BCD digits in kWh, 3 kWh more at every readout, passing 99,999,999."""

    def _telegrams(self, address: int) -> list[bytes]:
        kwh = (99_999_990 + 3 * len(self.served)) % 10**8
        self.served.append({"energy_heat": kwh})
        record = b"\x0C\x06" + bytes.fromhex(f"{kwh:08d}")[::-1]  # BCD, least significant byte first
        return [long_frame(address, CI_RSP_VARIABLE, self._header() + record)]


def test_a_bcd_counter_passing_its_last_digit_is_a_rollover_not_a_reset(
        tmp_path: Path, broker: Broker, subscriber: Subscriber) -> None:
    require_binary("socat")
    meter = WrappingMeter(5, "12345678")
    config = write_config(
        tmp_path / "agent.yaml", broker_port=broker.port, buffer=tmp_path / "buffer.db",
        buses=[{"id": "mbus-1", "type": "mbus", "port": str(tmp_path / "tty.agent"), "baudrate": 2400,
                "parity": "N"}],
        devices=[{"id": "heat-5", "bus": "mbus-1", "address": 5, "profile": "mbus-heat", "interval": "0.5s"}],
    )
    with (PtyPair(tmp_path / "tty.meter", tmp_path / "tty.agent") as line,
          running(MbusLineServer([meter], str(line.meter_end), baudrate=2400)),
          AgentProcess(config, tmp_path / "agent.log")):
        wait_until(lambda: sum(r["value"] < 100 for r in subscriber.unique_readings().values()) >= 2, 30,
                   "readings past the wrap")
    readings = sorted(subscriber.unique_readings().values(), key=lambda r: r["id"])
    flags = [(r["value"], r["quality"]) for r in readings if r["quality"] != "ok"]
    first_after = next(r["value"] for r in readings if r["value"] < 100)
    assert flags == [(first_after, "counter_rollover")]
    meta = subscriber.payloads("/meta")[-1]["series"].values()
    assert [m.get("resolution") for m in meta] == [{"step": 1.0}]


def _scan(*args: str) -> str:
    import subprocess
    import sys

    from tests.support import REPO
    result = subprocess.run([sys.executable, "-m", "agent.cli", "scan", "--mbus", *args], check=False,
                           capture_output=True,
                            text=True, cwd=REPO, timeout=80)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.long(15)
def test_scan_finds_every_meter_by_primary_and_by_secondary_address(tmp_path: Path) -> None:
    require_binary("socat")
    # Two ids share their first six digits, so the wildcard search must resolve a collision.
    meters = [SimulatedMbusMeter(5, "12345678"), SimulatedMbusMeter(6, "12345699", manufacturer="KAM"),
              SimulatedMbusMeter(17, "87654321", manufacturer="LUG")]
    with PtyPair(tmp_path / "tty.meter", tmp_path / "tty.agent") as line:
        server = MbusLineServer(meters, str(line.meter_end)).start()
        try:
            primary = _scan("--serial", str(line.agent_end), "--parity", "N", "--addresses", "1-20")
            secondary = _scan("--serial", str(line.agent_end), "--parity", "N", "--secondary")
        finally:
            server.stop()
    assert [line.split()[1] for line in primary.splitlines() if line.startswith("  address")] == ["5:", "6:", "17:"]
    assert "id 12345699, manufacturer KAM, medium heat_outlet" in primary  # medium 0x04: heat (outlet)
    found = sorted(line.split()[1].rstrip(",") for line in secondary.splitlines() if line.startswith("  id"))
    assert found == ["12345678", "12345699", "87654321"]


def test_mbus_decode_command_on_a_captured_frame_and_on_junk(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    from tests.support import REPO
    frame = reference_telegrams() / "frames" / "engelmann_sensostar2c.hex"
    if not frame.exists():
        pytest.fail(f"the reference telegrams are missing: {frame}")
    result = subprocess.run([sys.executable, "-m", "agent.cli", "mbus", "decode", str(frame)], check=False,
                           capture_output=True,
                            text=True, cwd=REPO, timeout=30)
    assert result.returncode == 0, result.stderr
    decoded = json.loads(result.stdout)
    assert decoded["header"]["identification"] == "10380010"
    energy = next(r for r in decoded["records"] if r["quantity"] == "energy" and r["storage"] == 0)
    # The meter's own unit is kept by the decoder (the profile converts to kWh).
    assert (energy["value"], energy["unit"], energy["base_unit"]) == ("0.8", "MWh", "Wh")
    assert float(energy["base_value"]) == 800_000
    junk = tmp_path / "junk.hex"
    junk.write_text("68 03 03 68 zz\n")
    bad = subprocess.run([sys.executable, "-m", "agent.cli", "mbus", "decode", str(junk)], check=False,
                           capture_output=True,
                         text=True, cwd=REPO, timeout=30)
    assert bad.returncode == 65  # EX_DATAERR: the input is not a telegram
    assert len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr


def test_replayed_real_telegrams_through_retrofit_sim(tmp_path: Path, broker: Broker, subscriber: Subscriber) -> None:
    """`retrofit-sim mbus` replays a real meter's telegram (Engelmann
    SensoStar 2C, 0.8 MWh) on a virtual line; the agent sends 800 kWh."""
    import subprocess
    import sys

    from tests.support import REPO
    require_binary("socat")
    frame = reference_telegrams() / "frames" / "engelmann_sensostar2c.hex"
    if not frame.exists():
        pytest.fail(f"the reference telegrams are missing: {frame}")
    link = tmp_path / "ttyM"
    sim = subprocess.Popen([sys.executable, "-m", "simulators.cli", "mbus", "--pty", str(link),
                            "--meter", f"3=10380010:{frame}"], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert sim.stdout is not None and "mbus on" in sim.stdout.readline()
        config = write_config(
            tmp_path / "agent.yaml", broker_port=broker.port, buffer=tmp_path / "buffer.db",
            buses=[{"id": "mbus-1", "type": "mbus", "port": str(link), "parity": "N"}],
            devices=[{"id": "heat", "bus": "mbus-1", "address": 3, "profile": "mbus-heat", "interval": "1s"}],
        )
        with AgentProcess(config, tmp_path / "agent.log"):
            wait_until(lambda: len(subscriber.unique_readings()) >= 8, 20, "the replayed meter's readings")
    finally:
        sim.terminate()
        sim.wait(10)
    values = {r["point"]: (r["value"], r["unit"]) for r in subscriber.unique_readings().values()}
    assert values["energy_heat"] == (800, "kWh")
    assert values["volume"] == (12.9, "m3")
    assert values["temperature_supply"] == (95, "Cel")
    assert {r["meter"] for r in subscriber.unique_readings().values()} == {"10380010"}
