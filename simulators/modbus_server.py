"""A small Modbus server for simulated meters: TCP (MBAP) and RTU (serial).

Written here rather than taken from pymodbus so that the simulator can do
what a faulty field device does (answer late, garble a CRC, refuse a range
with an exception) and so that the tests' meter is not the same code as the
agent's client. It answers function codes 03 and 04 only; anything else,
writes included, gets exception 01 and is counted in ``write_attempts``, so a
test can prove the agent never tried to change a meter.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import serial

READ_HOLDING = 3
READ_INPUT = 4
WRITE_CODES = frozenset({5, 6, 15, 16, 22, 23})

ILLEGAL_FUNCTION = 1
ILLEGAL_DATA_ADDRESS = 2
ILLEGAL_DATA_VALUE = 3


def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC_TABLE = _crc_table()


def crc16(data: bytes) -> bytes:
    """Modbus RTU CRC, low byte first as it goes on the wire."""
    crc = 0xFFFF
    for byte in data:
        crc = (crc >> 8) ^ _CRC_TABLE[(crc ^ byte) & 0xFF]
    return struct.pack("<H", crc)


FAULTS = ("silent", "crc", "garbage", "partial", "busy", "slow")


class FaultPlan:
    """Which request gets which fault: seeded, so a run can be repeated.

    ``rates`` maps a fault name to its probability per request; ``only``
    limits faults to some unit ids. ``active`` can switch the plan off and on
    (a device offline for a period).
    """

    def __init__(self, rates: Mapping[str, float], seed: int = 0, only: set[int] | None = None,
                 slow_s: float = 0.3) -> None:
        unknown = set(rates) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown fault(s) {sorted(unknown)}; known: {', '.join(FAULTS)}")
        import random

        self.rates = dict(rates)
        self.only = only
        self.slow_s = slow_s
        self.active = True
        self.injected: dict[str, int] = {}
        self._random = random.Random(seed)
        self._lock = threading.Lock()

    def pick(self, unit: int) -> str | None:
        if not self.active or (self.only is not None and unit not in self.only):
            return None
        with self._lock:
            roll = self._random.random()
            for fault, rate in self.rates.items():
                if roll < rate:
                    self.injected[fault] = self.injected.get(fault, 0) + 1
                    return fault
                roll -= rate
        return None

    def garble(self, adu: bytes, fault: str) -> bytes:
        with self._lock:
            if fault == "crc":
                return adu[:-1] + bytes([adu[-1] ^ 0x5A])
            if fault == "partial":
                return adu[: max(1, len(adu) // 2)]
            return bytes(self._random.randrange(256) for _ in range(len(adu)))


class Unit:
    """What one simulated device on a bus answers; subclasses hold the values."""

    def registers(self, table: str, start: int, count: int) -> list[int] | int:
        """Register values, or an exception code (int) to answer with."""
        raise NotImplementedError


@dataclass
class ServerStats:
    requests: int = 0
    write_attempts: int = 0
    exceptions: int = 0
    function_codes: set[int] = field(default_factory=set)


def answer_pdu(units: Mapping[int, Unit], unit_id: int, pdu: bytes, stats: ServerStats) -> bytes | None:
    """The response PDU for a request PDU, or None when no device answers."""
    unit = units.get(unit_id)
    if unit is None or not pdu:
        return None
    stats.requests += 1
    function = pdu[0]
    stats.function_codes.add(function)
    if function in WRITE_CODES:
        stats.write_attempts += 1
    if function not in (READ_HOLDING, READ_INPUT):
        stats.exceptions += 1
        return bytes([function | 0x80, ILLEGAL_FUNCTION])
    if len(pdu) != 5:
        stats.exceptions += 1
        return bytes([function | 0x80, ILLEGAL_DATA_VALUE])
    start, count = struct.unpack(">HH", pdu[1:5])
    if not 1 <= count <= 125:
        stats.exceptions += 1
        return bytes([function | 0x80, ILLEGAL_DATA_VALUE])
    table = "holding" if function == READ_HOLDING else "input"
    values = unit.registers(table, start, count)
    if isinstance(values, int):
        stats.exceptions += 1
        return bytes([function | 0x80, values])
    return bytes([function, 2 * count]) + b"".join(v.to_bytes(2, "big") for v in values)


class ModbusTcpServer:
    """Modbus TCP on a real socket; one thread per connection."""

    def __init__(self, units: Mapping[int, Unit], host: str = "127.0.0.1", port: int = 0,
                 faults: FaultPlan | None = None) -> None:
        self.units = units
        self.faults = faults
        self.stats = ServerStats()
        self._sock = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
        self._sock.settimeout(0.2)
        self.address = self._sock.getsockname()[:2]
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._conns: set[socket.socket] = set()
        self.response_delay = 0.0

    @property
    def port(self) -> int:
        return int(self.address[1])

    def start(self) -> ModbusTcpServer:
        thread = threading.Thread(target=self._accept_loop, name=f"sim-tcp-{self.port}", daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._conns.add(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(0.5)
        buffer = b""
        try:
            while not self._stop.is_set():
                try:
                    chunk = conn.recv(1024)
                except TimeoutError:
                    continue
                if not chunk:
                    return
                buffer += chunk
                while len(buffer) >= 7:
                    tid, pid, length = struct.unpack(">HHH", buffer[:6])
                    if len(buffer) < 6 + length:
                        break
                    unit_id, pdu = buffer[6], buffer[7 : 6 + length]
                    buffer = buffer[6 + length :]
                    fault = self.faults.pick(unit_id) if self.faults else None
                    if fault == "silent":
                        continue
                    reply = answer_pdu(self.units, unit_id, pdu, self.stats)
                    if reply is None:
                        continue
                    if fault == "busy":
                        reply = bytes([pdu[0] | 0x80, 6])
                    adu = struct.pack(">HHHB", tid, pid, len(reply) + 1, unit_id) + reply
                    if fault == "slow" and self.faults:
                        time.sleep(self.faults.slow_s)
                    elif fault in ("crc", "partial", "garbage") and self.faults:
                        adu = self.faults.garble(adu, fault)
                    if self.response_delay:
                        time.sleep(self.response_delay)
                    conn.sendall(adu)
        except OSError:
            return
        finally:
            self._conns.discard(conn)
            conn.close()

    def stop(self) -> None:
        """Close the listener for good before returning, so the port can be
        bound again at once (a meter that comes back on the same port)."""
        self._stop.set()
        try:
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes the accept loop
        except OSError:
            pass
        self._sock.close()
        for thread in self._threads:
            thread.join(timeout=2)
        for conn in list(self._conns):
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def read_burst(port: serial.Serial) -> bytes:
    """One byte (or b"" after the port's timeout of silence), then whatever else
    has arrived: a simulated device answers as soon as a request is whole."""
    chunk = port.read(1)
    if chunk:
        chunk += port.read(port.in_waiting)
    return chunk


class ModbusRtuServer:
    """Modbus RTU on a serial port (a socat pty in tests, a USB adapter on a bench).

    Bytes are paced at the line's baud rate when ``pace`` is set, so a poll
    over a pty takes as long as it would on a real RS-485 line.
    """

    def __init__(
        self,
        units: Mapping[int, Unit],
        port: str,
        baudrate: int = 9600,
        parity: str = "N",
        stopbits: int = 1,
        pace: bool = False,
        open_port: Callable[..., serial.Serial] = serial.Serial,
        faults: FaultPlan | None = None,
    ) -> None:
        self.units = units
        self.faults = faults
        self.stats = ServerStats()
        self.char_time = (1 + 8 + (0 if parity == "N" else 1) + stopbits) / baudrate
        self.pace = pace
        self._serial = open_port(port, baudrate=baudrate, parity=parity, stopbits=stopbits, timeout=0.05)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"sim-rtu-{port}", daemon=True)

    def start(self) -> ModbusRtuServer:
        self._thread.start()
        return self

    def _expected_length(self, frame: bytes) -> int | None:
        if len(frame) < 2:
            return None
        function = frame[1]
        if function in (1, 2, 3, 4, 5, 6):
            return 8
        if function in (15, 16):
            return 9 + frame[6] if len(frame) >= 7 else None
        return None

    def _loop(self) -> None:
        buffer = b""
        while not self._stop.is_set():
            try:
                chunk = read_burst(self._serial)
            except (serial.SerialException, OSError, TypeError):
                return  # port closed under us: the test is ending or a fault is simulated
            if not chunk:
                buffer = b""  # inter-frame silence: anything partial was noise
                continue
            buffer += chunk
            while True:
                need = self._expected_length(buffer)
                if need is None and len(buffer) < 256:
                    break
                if need is None or len(buffer) < need:
                    if need is None:
                        buffer = b""
                    break
                frame, buffer = buffer[:need], buffer[need:]
                if crc16(frame[:-2]) != frame[-2:]:
                    continue  # a real device stays silent on a bad CRC
                faults = self.faults
                fault = faults.pick(frame[0]) if faults else None
                if fault == "silent":
                    continue
                if self.pace and frame[0] in self.units:
                    # Wait out the wire time first, then read the meter: the
                    # values are those of the moment the answer arrives.
                    answer_chars = 5 + 2 * int.from_bytes(frame[4:6], "big") if frame[1] in (3, 4) else 5
                    time.sleep((len(frame) + answer_chars + 3.5) * self.char_time)
                reply = answer_pdu(self.units, frame[0], frame[1:-2], self.stats)
                if reply is None:
                    continue
                if fault == "busy":
                    reply = bytes([frame[1] | 0x80, 6])
                adu = bytes([frame[0]]) + reply
                adu += crc16(adu)
                if fault == "slow":
                    time.sleep(faults.slow_s if faults else 0.0)
                elif fault in ("crc", "partial", "garbage") and faults:
                    adu = faults.garble(adu, fault)
                try:
                    self._serial.write(adu)
                except (serial.SerialException, OSError):
                    return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._serial.close()
