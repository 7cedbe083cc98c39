"""probe, scan and the bus-load estimate of check, against simulated meters."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from drivers.profile import load_catalogue
from simulators.meters import SimulatedDevice
from simulators.modbus_server import ModbusRtuServer, ModbusTcpServer
from simulators.pty import PtyPair
from tests.support import REPO, require_binary
from tests.test_check import GOOD
from tests.test_e2e import ROOM_VALUES, SDM630_VALUES, FixedModel

pytestmark = pytest.mark.timeout(90)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.cli", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=80)


def test_probe_shows_values_units_and_raw_registers() -> None:
    catalogue = load_catalogue()
    server = ModbusTcpServer({1: SimulatedDevice(catalogue.get("eastron-sdm630"), FixedModel(SDM630_VALUES))}).start()
    try:
        result = cli("probe", "--host", "127.0.0.1", "--port", str(server.port), "--address", "1",
                     "--profile", "eastron-sdm630")
    finally:
        server.stop()
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()[2:]}
    assert rows["voltage_l1"][1:5] == ["230.1", "V", "4366", "199A"]  # IEEE 754 of 230.1, high word first
    assert rows["energy_active_import"][1:3] == ["12345.6", "kWh"]
    assert server.stats.write_attempts == 0


def test_scan_finds_the_units_on_a_serial_line_and_its_settings(tmp_path: Path) -> None:
    require_binary("socat")
    catalogue = load_catalogue()
    with PtyPair(tmp_path / "tty.meter", tmp_path / "tty.agent") as line:
        server = ModbusRtuServer({
            3: SimulatedDevice(catalogue.get("xy-md02"), FixedModel(ROOM_VALUES)),
            7: SimulatedDevice(catalogue.get("xy-md02"), FixedModel(ROOM_VALUES), holes=(("holding", 0, 1),)),
        }, str(line.meter_end), baudrate=19200).start()
        try:
            # A pty takes no parity (EINVAL) and ignores the baud rate, so only
            # the unit ids are really searched here.
            result = cli("scan", "--serial", str(line.agent_end), "--addresses", "1-8", "--baudrates", "19200",
                         "--parities", "N", "--timeout", "0.15")
        finally:
            server.stop()
    assert result.returncode == 0, result.stderr
    found = [line for line in result.stdout.splitlines() if "answers" in line]
    assert [int(line.split()[1]) for line in found] == [3, 7]
    assert "(registers)" in found[0]
    assert "exception 02" in found[1], "a device refusing the register still proves it is there"
    assert server.stats.write_attempts == 0


def test_check_estimates_bus_load_and_warns_when_a_bus_cannot_keep_up(tmp_path: Path) -> None:
    path = tmp_path / "busy.yaml"
    lines = GOOD.splitlines()
    devices = [f"  - {{id: m{i}, bus: rs485-1, address: {i}, profile: eastron-sdm630, interval: 1s}}"
               for i in range(2, 12)]
    path.write_text("\n".join(lines + devices) + "\n")
    result = cli("check", "--config", str(path))
    assert result.returncode == 0, result.stderr
    warning = next(line for line in result.stdout.splitlines() if line.startswith("warning: bus rs485-1"))
    assert "cannot keep its schedule" in warning
    assert any(line.startswith("bus plant-room:") for line in result.stdout.splitlines())
