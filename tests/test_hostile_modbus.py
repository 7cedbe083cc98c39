"""A broken or hostile Modbus device never gets a value through the link.

Each case is a real pymodbus client (drivers/modbus/link.py) against a hostile
Modbus TCP server on a loopback socket (tests/hostile/modbus_tcp.py), or a
flooder on a socat pty. Every register of a broken answer is POISON, so a
value that got through would be visible.
"""

from __future__ import annotations

import os
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
import serial

from drivers.core.errors import BusError, ExceptionResponse, MismatchedReply
from drivers.modbus.link import PymodbusLink, serial_link, tcp_link
from drivers.modbus.profile import ModbusProfile as Profile
from drivers.profile import load_catalogue
from simulators.meters import SimulatedDevice
from simulators.modbus_server import ModbusRtuServer
from simulators.pty import PtyPair
from tests.hostile.modbus_tcp import HostileModbusTcp
from tests.support import require_binary, wait_until
from tests.test_e2e import ROOM_VALUES, FixedModel

pytestmark = pytest.mark.timeout(60)

UNIT = 7
TIMEOUT = 0.4


def room() -> SimulatedDevice:
    profile = load_catalogue().get("xy-md02")
    assert isinstance(profile, Profile)
    return SimulatedDevice(profile, FixedModel(ROOM_VALUES))


@pytest.fixture
def hostile(request: pytest.FixtureRequest) -> Iterator[tuple[HostileModbusTcp, PymodbusLink]]:
    server = HostileModbusTcp({UNIT: request.param, 1: "good"}, {1: room()}).start()
    link = tcp_link("127.0.0.1", server.port, TIMEOUT)
    try:
        yield server, link
    finally:
        link.close()
        server.stop()


ANSWERS_ANOTHER_QUESTION = [
    "other_read_function", "function_0x17", "echo_06", "more_registers", "fewer_registers",
    "byte_count_odd", "trailing_bytes", "exception_other_function",
]


@pytest.mark.parametrize("hostile", ANSWERS_ANOTHER_QUESTION, indirect=True)
@pytest.mark.parametrize("table", ["holding", "input"])
@pytest.mark.parametrize("count", [1, 2, 10])
def test_modbus_reply_answering_another_question_is_a_failed_request(
        hostile: tuple[HostileModbusTcp, PymodbusLink], table: str, count: int) -> None:
    """Issue 20, item 2: a reply with another function code (03 to an 04
    request, 0x17, an 06 echo), more or fewer registers than asked with a
    consistent byte count, an odd byte count or bytes after the registers was
    decoded and returned. Each is a MismatchedReply, never registers, and
    never an exception response the planner would act on."""
    _, link = hostile
    with pytest.raises(MismatchedReply) as caught:
        link.read(table, UNIT, 1, count)  # type: ignore[arg-type]
    assert not isinstance(caught.value, ExceptionResponse)
    message = str(caught.value)
    assert f"unit {UNIT}" in message and f"{count} {table} register" in message, message
    # The line is clean again for the next device on the same gateway.
    assert link.read("input", 1, 1, 2) == [231, 456]


@pytest.mark.parametrize("hostile", ["byte_count_high", "wrong_transaction", "transaction_zero", "wrong_unit",
                                     "wrong_protocol", "length_lie", "truncated", "garbage", "silent", "late",
                                     "close"], indirect=True)
def test_modbus_held_up_faults_stay_failed_requests(hostile: tuple[HostileModbusTcp, PymodbusLink]) -> None:
    """The review's 'held up' list: wrong transaction, unit and protocol ids,
    byte-count errors, truncations, garbage, silence, late answers. Each is
    a BusError that names the unit, and the gateway's good unit still reads."""
    _, link = hostile
    with pytest.raises(BusError) as caught:
        link.read("input", UNIT, 1, 2)
    assert f"unit {UNIT}" in str(caught.value), caught.value
    assert "Traceback" not in str(caught.value)
    assert link.read("input", 1, 1, 2) == [231, 456]


@pytest.mark.parametrize("hostile", ["silent"], indirect=True)
def test_modbus_silence_is_named_as_no_answer(hostile: tuple[HostileModbusTcp, PymodbusLink]) -> None:
    _, link = hostile
    with pytest.raises(BusError, match=rf"no answer from unit {UNIT} within 0.4 s"):
        link.read("input", UNIT, 1, 2)


@pytest.mark.parametrize("hostile", ["garbage", "wrong_protocol", "wrong_unit"], indirect=True)
def test_modbus_bytes_that_answer_nothing_are_not_called_silence(
        hostile: tuple[HostileModbusTcp, PymodbusLink]) -> None:
    """Bytes came, but none of them answered the request: the technician is
    told that (a wrong unit id behind a gateway, noise), not 'no answer'."""
    _, link = hostile
    with pytest.raises(BusError, match=r"byte\(s\) that do not answer"):
        link.read("input", UNIT, 1, 2)


@pytest.mark.parametrize("hostile", ["exception_codes"], indirect=True)
def test_modbus_every_exception_code_is_one_clear_error(hostile: tuple[HostileModbusTcp, PymodbusLink]) -> None:
    """Exception codes 0..255, documented or not: each one is an
    ExceptionResponse carrying its code, with a one-line message."""
    _, link = hostile
    for code in range(256):
        with pytest.raises(ExceptionResponse) as caught:
            link.read("holding", UNIT, 100, 1)
        assert caught.value.code == code
        assert f"exception {code:02d}" in str(caught.value)
        assert "\n" not in str(caught.value)


def test_modbus_gateway_closing_idle_connections_costs_no_poll() -> None:
    """Issue 20, item 5: a gateway that closes a connection idle for 0.3 s
    made the first request on the dead socket fail, so every poll after a
    pause was lost. The link reconnects and asks again at once, and counts it."""
    server = HostileModbusTcp({1: "good"}, {1: room()}, idle_close_s=0.3).start()
    link = tcp_link("127.0.0.1", server.port, TIMEOUT)
    try:
        for _ in range(3):
            assert link.read("input", 1, 1, 2) == [231, 456]
            wait_until(lambda: server.counters.idle_closes == server.counters.connections, 5,
                       "the gateway to close the idle connection")
        assert link.read("input", 1, 1, 2) == [231, 456]
        assert link.idle_reconnects == 3
        assert server.counters.connections == 4
    finally:
        link.close()
        server.stop()


def test_modbus_a_silent_device_is_not_asked_twice() -> None:
    """The reconnect-and-retry is for a connection the peer closed, not for a
    device that does not answer: that costs one timeout, as before."""
    server = HostileModbusTcp({7: "silent", 1: "good"}, {1: room()}).start()
    link = tcp_link("127.0.0.1", server.port, TIMEOUT)
    try:
        assert link.read("input", 1, 1, 2) == [231, 456]
        with pytest.raises(BusError):
            link.read("input", 7, 1, 2)
        assert server.counters.requests[7] == 1
        assert link.idle_reconnects == 0
    finally:
        link.close()
        server.stop()


def test_modbus_tcp_flood_is_bounded_and_the_connection_dropped() -> None:
    """Issue 20, item 8: a peer sending unsolicited bytes (here about 6 MB/s)
    grew the client's receive buffer for the whole timeout (33 -> 81 MB RSS).
    Now at most FLOOD_BYTES (plus one socket read) are held for one request;
    then the connection is dropped and the request fails, named as a flood."""
    server = HostileModbusTcp({1: "good"}, {1: room()}, flood_bytes_per_s=6_000_000).start()
    link = tcp_link("127.0.0.1", server.port, 1.0)
    tracemalloc.start()
    try:
        with pytest.raises(BusError, match="flood") as caught:
            link.read("input", 1, 1, 2)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        link.close()
    try:
        assert "unit 1" in str(caught.value)
        assert peak < 256 * 1024, f"{peak} bytes held while a peer flooded"
        assert link.floods == 1
        wait_until(lambda: server.counters.connections == 1 and not server._conns, 5,
                   "the flooded connection to be dropped")
    finally:
        server.stop()


class Flooder:
    """A device on a serial line that never stops talking."""

    def __init__(self, port: Path, data: bytes = b"\x55\xaa\x00\xff") -> None:
        # A write that blocks (nobody reads the line) gives up now and then, so
        # stop() ends the thread before it closes the port under a write.
        self._serial = serial.Serial(str(port), timeout=0.1, write_timeout=0.1)
        self._data = data * 1024
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="flooder")

    def start(self) -> Flooder:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._serial.write(self._data)
            except serial.SerialTimeoutException:
                continue  # the line is full: try again, or stop
            except (serial.SerialException, OSError):
                return
            time.sleep(0.001)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=3)
        self._serial.close()


def test_modbus_rtu_flood_on_serial_is_named_and_the_port_reopened(tmp_path: Path) -> None:
    """Issue 20, item 8, on RS-485: a babbling device is a failed request
    named as a flood (not a timeout), and the port is closed so the next
    request starts from a clean line."""
    require_binary("socat")
    with PtyPair(tmp_path / "tty.meter", tmp_path / "tty.agent") as line:
        flooder = Flooder(line.meter_end).start()
        link = serial_link(str(line.agent_end), 9600, "N", 1, 8, 0.5)
        try:
            with pytest.raises(BusError, match="flood"):
                link.read("input", 1, 1, 2)
            assert link.floods == 1
        finally:
            link.close()
            flooder.stop()


def test_modbus_rtu_port_in_use_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    """Issue 20, item 6: a second master on one RS-485 line is refused. The
    first link holds the port exclusively; the second is told it is busy."""
    require_binary("socat")
    with PtyPair(tmp_path / "tty.meter", tmp_path / "tty.agent") as line:
        server = ModbusRtuServer({1: room()}, str(line.meter_end)).start()
        first = serial_link(str(line.agent_end), 9600, "N", 1, 8, 0.5)
        second = serial_link(str(line.agent_end), 9600, "N", 1, 8, 0.5)
        try:
            assert first.read("input", 1, 1, 2) == [231, 456]
            with pytest.raises(BusError, match="in use by another process") as caught:
                second.read("input", 1, 1, 2)
            assert str(line.agent_end) in str(caught.value)
        finally:
            first.close()
            second.close()
            server.stop()


def test_modbus_serial_link_names_a_missing_port(tmp_path: Path) -> None:
    link = serial_link(str(tmp_path / "ttyUSB9"), 9600, "N", 1, 8, 0.2)
    with pytest.raises(BusError, match="does not exist"):
        link.read("input", 1, 1, 2)
    assert not os.path.exists(tmp_path / "ttyUSB9")
