"""probe, scan and the bus-load estimate of check, against simulated meters."""

from __future__ import annotations

import io
import os
import pty
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from drivers.core.cli import Progress
from drivers.profile import load_catalogue
from simulators.meters import SimulatedDevice
from simulators.modbus_server import ModbusRtuServer, ModbusTcpServer
from simulators.pty import PtyPair
from tests.support import REPO, free_port, require_binary
from tests.test_check import GOOD
from tests.test_e2e import ROOM_VALUES, SDM630_VALUES, FixedModel

pytestmark = pytest.mark.timeout(90)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.cli", *args], check=False, capture_output=True, text=True,
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


# --- issue 15 item 11: scan ---------------------------------------------------------------

def test_scan_on_a_port_that_does_not_exist_says_so(tmp_path: Path) -> None:
    """It said `0 device(s) found` after trying every unit on a port that was not there."""
    for args, said in [
        (("--serial", str(tmp_path / "ttyUSB9"), "--addresses", "1-3"), "no such port"),
        (("--mbus", "--serial", str(tmp_path / "ttyUSB9"), "--addresses", "1-3"), "no such port"),
        (("--host", "127.0.0.1", "--port", str(free_port()), "--addresses", "1-3"), "connection refused"),
        (("--serial", "/dev/null", "--addresses", "1-3"), "/dev/null is not a serial port"),
        (("--mbus", "--serial", f"socket://127.0.0.1:{free_port()}", "--addresses", "1-3"), "connection refused"),
    ]:
        result = cli("scan", *args)
        assert result.returncode == 69, (args, result.stdout, result.stderr)
        assert "device(s) found" not in result.stdout and "meter(s) found" not in result.stdout
        assert result.stderr.count("\n") == 1 and said in result.stderr, result.stderr
        assert "Traceback" not in result.stderr


def test_scan_on_a_pty_skips_the_parity_it_refuses_and_scans_the_rest(tmp_path: Path) -> None:
    """A pty takes parity N only: the E half of the default N,E search is skipped, not an error."""
    require_binary("socat")
    catalogue = load_catalogue()
    with PtyPair(tmp_path / "tty.meter", tmp_path / "tty.agent") as line:
        server = ModbusRtuServer({4: SimulatedDevice(catalogue.get("xy-md02"), FixedModel(ROOM_VALUES))},
                                 str(line.meter_end), baudrate=9600).start()
        try:
            result = cli("scan", "--serial", str(line.agent_end), "--addresses", "3-5", "--baudrates", "9600",
                         "--timeout", "0.15")
        finally:
            server.stop()
    assert result.returncode == 0, result.stderr
    assert f"skipping {line.agent_end} 9600 8E1: the port refuses these settings" in result.stdout
    assert [ln.split()[1] for ln in result.stdout.splitlines() if "answers" in ln] == ["4"]


def _run_on_a_terminal(*args: str) -> tuple[int, str]:
    """The command with a real pty as its stdout and stderr, as over SSH."""
    controller, terminal = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "agent.cli", *args], stdout=terminal, stderr=terminal,
                            cwd=REPO)
    os.close(terminal)
    output = b""
    while True:
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # EIO: the command exited and closed the terminal
            break
        if not chunk:
            break
        output += chunk
    os.close(controller)
    return proc.wait(timeout=60), output.decode(errors="replace")


def test_scan_shows_its_progress_on_a_terminal() -> None:
    """A default scan ran 2 minutes without a sign of life."""
    catalogue = load_catalogue()
    server = ModbusTcpServer({2: SimulatedDevice(catalogue.get("xy-md02"), FixedModel(ROOM_VALUES))}).start()
    try:
        code, output = _run_on_a_terminal("scan", "--host", "127.0.0.1", "--port", str(server.port),
                                          "--addresses", "1-6", "--timeout", "0.1")
    finally:
        server.stop()
    assert code == 0, output
    for done in range(1, 7):
        assert f"unit {done} ({done}/6) at tcp://127.0.0.1:{server.port}" in output, output
    assert "\x1b[K" in output, "the progress line is rewritten in place"
    assert "unit   2 answers (registers)" in output
    assert "at most 1 s" in output, "the header says how long the scan can take"


def test_progress_away_from_a_terminal_is_a_line_now_and_then() -> None:
    now = [0.0]
    stream = io.StringIO()
    progress = Progress(stream, every_s=10.0, clock=lambda: now[0])
    for step in range(1, 31):
        now[0] = step * 1.0
        progress.update(f"unit {step}")
    progress.clear()
    assert stream.getvalue().splitlines() == ["  ... unit 10", "  ... unit 20", "  ... unit 30"]


class GatewayWithoutTargets:
    """A Modbus TCP -> RTU gateway: unit 4 is on its serial side (and refuses
    register 0 with exception 02, which still proves it is there); for any
    other unit the gateway answers exception 11, target failed to respond."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.function_codes: list[int] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def start(self) -> GatewayWithoutTargets:
        self._thread.start()
        return self

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                while len(header := _read_exactly(conn, 7)) == 7:
                    transaction, _protocol, length, unit = struct.unpack(">HHHB", header)
                    pdu = _read_exactly(conn, length - 1)
                    self.function_codes.append(pdu[0])
                    code = 0x02 if unit == 4 else 0x0B
                    conn.sendall(struct.pack(">HHHBBB", transaction, 0, 3, unit, pdu[0] | 0x80, code))

    def stop(self) -> None:
        self.sock.close()


def _read_exactly(conn: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = conn.recv(count - len(data))
        if not chunk:
            break
        data += chunk
    return data


def test_a_gateways_target_failed_to_respond_is_no_device() -> None:
    gateway = GatewayWithoutTargets().start()
    try:
        result = cli("scan", "--host", "127.0.0.1", "--port", str(gateway.port), "--addresses", "1-6")
    finally:
        gateway.stop()
    assert result.returncode == 0, result.stderr
    assert [ln.split()[1] for ln in result.stdout.splitlines() if "answers" in ln] == ["4"]
    assert "exception 02" in result.stdout
    assert set(gateway.function_codes) == {3}, "a scan only reads"


def test_bad_scan_and_probe_arguments_are_one_line_and_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text(GOOD)
    for args, said in [
        (("scan", "--host", "127.0.0.1", "--addresses", "1-300"), "outside 1..247"),
        (("scan", "--host", "127.0.0.1", "--addresses", "one"), "cannot read 'one'"),
        (("scan", "--config", str(config), "--bus", "rs485-2"), "no bus 'rs485-2' (did you mean 'rs485-1'?)"),
        (("scan", "--secondary", "--host", "127.0.0.1"), "add --mbus"),
        (("scan", "--mbus"), "--serial PORT"),
        (("scan", "--host", "127.0.0.1", "--register", "70000"), "0..65535"),
        (("scan", "--mbus", "--serial", "/dev/null", "--secondary", "--max-time", "soon"), "--max-time"),
        (("probe", "--config", str(config), "--device", "elec-mian"), "(did you mean 'elec-main'?)"),
        (("probe", "--host", "127.0.0.1", "--address", "300", "--profile", "eastron-sdm630"), "1..247"),
        (("probe", "--host", "127.0.0.1", "--address", "1"), "--profile"),
        (("probe", "--host", "127.0.0.1", "--address", "1", "--profile", "SDM630"), "(did you mean 'eastron-sdm630'?)"),
    ]:
        result = cli(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.count("\n") == 1 and said in result.stderr, (args, result.stderr)
