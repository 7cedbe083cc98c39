"""Commissioning an M-Bus line: scan and probe through the real command line,
against simulated meters (and a line that answers garbage) on socat ptys."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Self

import pytest
import serial
import yaml

from drivers.mbus.commission import SecondarySearch
from drivers.mbus.link import MbusLink
from simulators.mbus_meter import HeatMeterState, MbusLineServer, SimulatedMbusMeter
from simulators.pty import PtyPair
from tests.support import REPO, require_binary
from tests.test_check import GOOD

pytestmark = pytest.mark.timeout(90)

# Reading commands only: SND_NKE (0x40), REQ_UD2 (0x5B/0x7B), a selection (0x53 with CI 0x52).
READING_CONTROLS = {0x40, 0x5B, 0x7B, 0x53}


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.cli", *args], check=False, capture_output=True, text=True, cwd=REPO,
                          timeout=timeout)


@contextmanager
def mbus_line(tmp_path: Path, meters: list[SimulatedMbusMeter]) -> Iterator[tuple[Path, MbusLineServer]]:
    require_binary("socat")
    with PtyPair(tmp_path / "tty.meter", tmp_path / "tty.agent") as line:
        server = MbusLineServer(meters, str(line.meter_end)).start()
        try:
            yield line.agent_end, server
        finally:
            server.stop()


def _control(frame: bytes) -> int:
    return frame[1] if frame[0] == 0x10 else frame[4]


def _record(code: str, value: int, size: int) -> str:
    """A record's bytes as the meter puts them on the wire: DIF VIF, then the value LSB first."""
    return " ".join([code[:2], code[2:]] + [f"{b:02X}" for b in value.to_bytes(size, "little", signed=True)])


# --- issue 15 item 11 ---------------------------------------------------------------------

def test_mbus_scan_with_the_default_parity_on_a_pty_is_one_line_not_a_termios_traceback(tmp_path: Path) -> None:
    with mbus_line(tmp_path, [SimulatedMbusMeter(5, "12345678")]) as (port, _server):
        secondary = cli("scan", "--mbus", "--serial", str(port), "--secondary")
        primary = cli("scan", "--mbus", "--serial", str(port), "--addresses", "1-3")
    for result in (secondary, primary):
        assert result.returncode == 69, result.stdout + result.stderr
        assert "Traceback" not in result.stderr and "termios" not in result.stderr
        assert result.stderr.count("\n") == 1
        assert f"{port} refuses 2400 8E1" in result.stderr and "--parity N" in result.stderr


def test_scan_of_an_mbus_bus_from_the_config_scans_it_as_mbus(tmp_path: Path) -> None:
    """`scan --config FILE --bus mbus-1` without --mbus ended in AttributeError: 'MbusBus' ... 'host'."""
    with mbus_line(tmp_path, [SimulatedMbusMeter(5, "12345678"), SimulatedMbusMeter(7, "87654321")]) as (port, _):
        config = yaml.safe_load(GOOD)
        config["buses"].append({"id": "mbus-1", "type": "mbus", "port": str(port), "parity": "N"})
        path = tmp_path / "agent.yaml"
        path.write_text(yaml.safe_dump(config))
        result = cli("scan", "--config", str(path), "--bus", "mbus-1", "--addresses", "1-8")
    assert result.returncode == 0, result.stdout + result.stderr
    found = [line.split() for line in result.stdout.splitlines() if line.startswith("  address")]
    assert [(words[1], words[3]) for words in found] == [("5:", "12345678,"), ("7:", "87654321,")]


# --- issue 20 item 11 ---------------------------------------------------------------------

class GarbageLine:
    """A line that answers every frame with bytes no M-Bus frame starts with,
    as meters heard at the wrong baud rate do. Counts the selections it got."""

    GARBAGE = bytes([0x3F, 0xC1, 0x00, 0xFF, 0x7E])

    def __init__(self, port: Path) -> None:
        self._serial = serial.Serial(str(port), timeout=0.05)
        self._stop = threading.Event()
        self.selections = 0
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._serial.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            chunk = self._serial.read(64)
            if chunk:
                self.selections += chunk.count(b"\x53\xFD\x52")
                self._serial.write(self.GARBAGE)


def test_secondary_scan_on_a_line_answering_garbage_stops_and_says_so(tmp_path: Path) -> None:
    """It walked all 10^8 addresses, one collision after another, without a word."""
    require_binary("socat")
    with PtyPair(tmp_path / "tty.meter", tmp_path / "tty.agent") as line, GarbageLine(line.meter_end) as garbage:
        result = cli("scan", "--mbus", "--serial", str(line.agent_end), "--parity", "N", "--secondary")
    assert result.returncode == 1, result.stdout + result.stderr
    last = result.stdout.splitlines()[-1]
    assert last.startswith("0 meter(s) found; search incomplete: every one of "), last
    assert "answered with garbage or by several meters at once" in last
    assert "another baud rate" in last
    assert 0 < garbage.selections <= 30, garbage.selections


def test_secondary_search_keeps_to_its_budget_of_selections(tmp_path: Path) -> None:
    # Two meters differing only in the last digits: a real search needs more than 5 selections.
    meters = [SimulatedMbusMeter(5, "12345678"), SimulatedMbusMeter(6, "12345699")]
    with mbus_line(tmp_path, meters) as (port, server):
        link = MbusLink(str(port), 2400, "N", retries=0)
        try:
            search = SecondarySearch(link, max_selections=5)
            outcomes = list(search.run())
        finally:
            link.close()
    selections = [f for f in server.requests if f[0] == 0x68 and _control(f) == 0x53]
    assert len(selections) == len(outcomes) == 5
    assert search.stopped == "stopped after 5 selections (--max-selections)"


# --- issue 15 item 12 ---------------------------------------------------------------------

def _rows(stdout: str) -> dict[str, list[str]]:
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("point")) + 1
    end = next((i for i, line in enumerate(lines) if line.startswith("records the profile")), len(lines))
    return {line.split()[0]: line.split() for line in lines[start:end]}


def test_probe_reads_an_mbus_meter_ad_hoc_with_each_point_and_its_record(tmp_path: Path) -> None:
    """`probe` refused M-Bus devices: a technician could not read a heat meter once on site."""
    meter = SimulatedMbusMeter(5, "12345678", state=HeatMeterState(power_w=9_000, supply_c=65.0, return_c=40.5))
    with mbus_line(tmp_path, [meter]) as (port, server):
        result = cli("probe", "--serial", str(port), "--parity", "N", "--address", "5", "--profile", "mbus-heat")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[0].startswith(f"mbus-heat at address 5 on {port}: ")
    assert "id 12345678" in result.stdout.splitlines()[0]
    rows = _rows(result.stdout)
    first, second = meter.served  # the readout's two telegrams, in the profile's units
    energy_wh = int(first["energy_heat"] * 1000)
    assert rows["energy_heat"][1:3] == [str(first["energy_heat"]), "kWh"]
    assert rows["energy_heat"][3:10] == _record("0403", energy_wh, 4).split() + ["="]
    assert rows["power_heat"][1:3] == ["9000", "W"]
    assert rows["temperature_supply"][1:3] == ["65", "Cel"]
    assert rows["temperature_supply"][3:7] == _record("025A", 650, 2).split()  # 0.1 Cel steps on the wire
    difference = second["temperature_difference"]
    assert isinstance(difference, Decimal)
    assert rows["temperature_difference"][1:3] == [str(difference.normalize()), "K"]
    assert rows["energy_heat_due_date"][1:3] == ["12000", "kWh"]
    assert "storage 1" in " ".join(rows["energy_heat_due_date"])
    assert "records the profile does not use:\n  1F = " in result.stdout
    assert {_control(f) for f in server.requests if f[0] != 0xE5} <= READING_CONTROLS


def test_probe_reads_an_mbus_device_of_the_config_by_secondary_address(tmp_path: Path) -> None:
    meters = [SimulatedMbusMeter(5, "12345678"), SimulatedMbusMeter(6, "23456789", manufacturer="KAM")]
    with mbus_line(tmp_path, meters) as (port, server):
        config = yaml.safe_load(GOOD)
        config["buses"].append({"id": "mbus-1", "type": "mbus", "port": str(port), "parity": "N"})
        config["devices"].append({"id": "heat-6", "bus": "mbus-1", "address": "23456789", "profile": "mbus-heat"})
        path = tmp_path / "agent.yaml"
        path.write_text(yaml.safe_dump(config))
        result = cli("probe", "--config", str(path), "--device", "heat-6")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "at secondary address 23456789 on mbus-1" in result.stdout
    assert "id 23456789, manufacturer KAM" in result.stdout
    assert set(_rows(result.stdout)) == {"energy_heat", "volume", "power_heat", "flow", "temperature_supply",
                                         "temperature_return", "temperature_difference", "energy_heat_due_date"}
    assert any(f[0] == 0x68 and _control(f) == 0x53 for f in server.requests), "read through a selection"


def test_probe_with_the_generic_profile_takes_every_record(tmp_path: Path) -> None:
    with mbus_line(tmp_path, [SimulatedMbusMeter(5, "12345678")]) as (port, _server):
        result = cli("probe", "--mbus", "--serial", str(port), "--parity", "N", "--address", "5")
    assert result.returncode == 0, result.stdout + result.stderr
    rows = _rows(result.stdout)
    assert rows["flow_temperature"][1:3] == ["70", "Cel"]
    assert rows["energy_s1"][1:3] == ["12000000", "Wh"]  # the base unit: the generic profile converts nothing


def test_probe_of_an_absent_mbus_meter_is_one_line(tmp_path: Path) -> None:
    with mbus_line(tmp_path, [SimulatedMbusMeter(5, "12345678")]) as (port, _server):
        result = cli("probe", "--mbus", "--serial", str(port), "--parity", "N", "--address", "9")
        secondary = cli("probe", "--mbus", "--serial", str(port), "--parity", "N", "--address", "99999999")
    for outcome in (result, secondary):
        assert outcome.returncode == 1, outcome.stdout + outcome.stderr
        assert outcome.stderr.count("\n") == 1 and "Traceback" not in outcome.stderr
    assert "no answer" in result.stderr


@pytest.mark.parametrize(("args", "said"), [
    (("--address", "251"), "0..250 or an 8-digit secondary address"),
    (("--address", "1234567"), "0..250 or an 8-digit secondary address"),
    (("--address", "5", "--profile", "eastron-sdm630"), "eastron-sdm630 is a Modbus profile"),
])
def test_bad_mbus_probe_arguments_are_one_line_and_exit_2(args: tuple[str, ...], said: str) -> None:
    result = cli("probe", "--mbus", "--serial", "/dev/null", *args)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and said in result.stderr, result.stderr
