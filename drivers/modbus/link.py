"""Modbus I/O: the one module that calls pymodbus.

pymodbus changes its API in minor releases (``slave=`` became ``device_id=``,
the payload builder went away), so it is pinned to one version and kept
behind this small surface: open a link for a bus, read a register block,
close. There is deliberately no write here: the agent only reads meters,
and the only function codes it can send are 03 and 04.

pymodbus 3.16.1 checks a reply's unit id and (Modbus TCP) transaction id,
skipping frames that carry others. It does not check that the reply answers
the question asked: a reply with another function code (03 to an 04, a 0x17,
an 06 echo) or with more registers than requested decodes as registers. So
every reply is checked here against its request (function, unit,
transaction, byte count and length) and a mismatch is a failed request,
never a value. pymodbus also buffers whatever arrives until its timeout, so
the clients below count the bytes of each answer and drop a connection whose
peer floods it.
"""

from __future__ import annotations

import logging
import os
import struct
from typing import Protocol

from pymodbus import FramerType
from pymodbus.client import ModbusSerialClient, ModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.pdu import ModbusPDU
from pymodbus.pdu.register_message import ReadHoldingRegistersResponse, ReadInputRegistersResponse

from drivers.core.errors import BusError, ExceptionResponse, MismatchedReply
from drivers.core.ports import port_in_use
from drivers.modbus.profile import Table

# pymodbus logs every timeout and retry itself; the bus worker reports state
# changes with counts instead, so its own chatter is kept out of the journal.
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}
READ_FUNCTION: dict[Table, int] = {"holding": 3, "input": 4}
FUNCTION_NAMES = {
    3: "read holding registers", 4: "read input registers", 6: "write single register",
    16: "write multiple registers", 23: "read/write multiple registers",
}

# The longest Modbus answer is 260 bytes (an MBAP header and a 253-byte
# PDU; an RTU frame is at most 256). Even a late answer in front of the
# right one stays far below this; more bytes for one request are a flood.
MAX_ADU_BYTES = 260
FLOOD_BYTES = 4 * MAX_ADU_BYTES


class RegisterReader(Protocol):
    """What a bus worker needs from a Modbus link."""

    idle_reconnects: int  # requests asked again at once on a new connection (the peer had closed the idle one)
    floods: int  # connections dropped because the peer sent far more than an answer

    def read(self, table: Table, unit: int, start: int, count: int) -> list[int]: ...

    def read_bytes(self, table: Table, unit: int, start: int, count: int) -> bytes: ...

    def close(self) -> None: ...


class _Flooded(Exception):
    """Raised from inside pymodbus's receive loop: the peer sends too much."""


class _PeerClosed(Exception):
    """A connection that was open before this request turned out closed by the peer."""


class _ReplyMeter:
    """Per-request figures of what arrived: the bytes counted, the first ones kept."""

    def __init__(self) -> None:
        self.sent = b""
        self.received = 0
        self.head = b""

    def start(self, request: bytes) -> None:
        self.sent, self.received, self.head = request, 0, b""

    def take(self, data: bytes) -> bytes:
        self.received += len(data)
        if len(self.head) < 16:
            self.head += data[: 16 - len(self.head)]
        if self.received > FLOOD_BYTES:
            raise _Flooded(self.received)
        return data


class _TcpClient(ModbusTcpClient):
    """pymodbus's TCP client, with what arrives for each request counted and bounded."""

    meter: _ReplyMeter

    def send(self, request: bytes, addr: tuple[str, int] | None = None) -> int:
        self.meter.start(request)
        return int(super().send(request, addr))

    def recv(self, size: int | None) -> bytes:
        return self.meter.take(super().recv(size))


class _SerialClient(ModbusSerialClient):
    """pymodbus's serial client, with what arrives for each request counted and bounded."""

    meter: _ReplyMeter

    def send(self, request: bytes, addr: tuple[str, int] | None = None) -> int:
        self.meter.start(request)
        return int(super().send(request, addr))

    def recv(self, size: int | None) -> bytes:
        return self.meter.take(super().recv(size))


class _StrictRegisters(ModbusPDU):
    """A read answer that keeps what pymodbus throws away: the byte count as
    sent and the number of data bytes that came with it. The registers stay
    the bytes they came as (big-endian words), which is what the decoders
    read: no list of ints made and packed again for every answer."""

    byte_count = -1
    data_bytes = -1
    raw = b""

    def decode(self, data: bytes) -> None:
        self.byte_count = data[0] if data else -1
        self.data_bytes = len(data) - 1
        if 0 <= self.byte_count == self.data_bytes and self.byte_count % 2 == 0:
            self.raw = bytes(data[1:])
        else:
            self.raw = b""  # a length that lies yields no register at all


class _StrictHolding(_StrictRegisters, ReadHoldingRegistersResponse):
    pass


class _StrictInput(_StrictRegisters, ReadInputRegistersResponse):
    pass


def _function(code: int) -> str:
    name = FUNCTION_NAMES.get(code)
    return f"function 0x{code:02X}" + (f" ({name})" if name else "")


class PymodbusLink:
    """A read-only Modbus link over a pymodbus sync client (TCP or serial)."""

    def __init__(self, client: _TcpClient | _SerialClient, describe: str, serial: bool,
                 timeout: float, transaction_ids: bool) -> None:
        self._client = client
        self._meter = client.meter = _ReplyMeter()
        self._describe = describe
        self._serial = serial
        self._timeout = timeout
        self._transaction_ids = transaction_ids
        for strict in (_StrictHolding, _StrictInput):
            client.register(strict)  # this client's decoder only
        self.idle_reconnects = 0
        self.floods = 0

    def read(self, table: Table, unit: int, start: int, count: int) -> list[int]:
        """The registers of a block, as numbers."""
        return list(struct.unpack(f">{count}H", self.read_bytes(table, unit, start, count)))

    def read_bytes(self, table: Table, unit: int, start: int, count: int) -> bytes:
        """The registers of a block as they came: big-endian words (the poll's hot path)."""
        try:
            response = self._ask(table, unit, start, count)
        except _PeerClosed:
            # Gateways close connections idle for 3-60 s; the request never
            # reached the device, so it is asked again at once, on a new one.
            self.idle_reconnects += 1
            try:
                response = self._ask(table, unit, start, count)
            except _PeerClosed:
                raise BusError(f"{self._describe} closed the connection at once, twice: "
                               f"no answer from unit {unit}") from None
        try:
            return self._registers(response, table, unit, start, count)
        except MismatchedReply:
            self._client.close()  # whatever else is in the pipe belongs to no request either
            raise

    def _ask(self, table: Table, unit: int, start: int, count: int) -> ModbusPDU:
        read = (
            self._client.read_holding_registers
            if table == "holding"
            else self._client.read_input_registers
        )
        reused = self._client.connected
        try:
            if not reused and not self._client.connect():
                raise BusError(f"cannot open {self._describe}{self._why_not_open()}")
            return read(start, count=count, device_id=unit)
        except _Flooded:
            self._client.close()
            self.floods += 1
            raise BusError(f"unit {unit} on {self._describe}: more than {FLOOD_BYTES} bytes arrived for one "
                           "answer (a device floods the line); connection dropped") from None
        except ModbusIOException:
            # A timeout may leave a late reply in the pipe that would be taken
            # for the answer to the next request: start from a clean line.
            self._client.close()
            raise self._no_valid_answer(unit) from None
        except (ConnectionException, OSError) as exc:
            self._client.close()
            if reused and not self._serial and self._meter.received == 0:
                raise _PeerClosed from None
            if isinstance(exc, OSError):
                raise BusError(f"{self._describe}: {exc.strerror or exc}") from None
            raise BusError(f"no answer from unit {unit} on {self._describe}: the connection was closed") from None
        except ModbusException as exc:
            self._client.close()
            raise BusError(f"no valid answer from unit {unit} on {self._describe}: {_short(exc)}") from None

    def _no_valid_answer(self, unit: int) -> BusError:
        received = self._meter.received
        if not received:
            return BusError(f"no answer from unit {unit} within {self._timeout:g} s on {self._describe}")
        return BusError(
            f"no valid answer from unit {unit} on {self._describe}: {received} byte(s) that do not answer "
            f"the request (another unit, transaction or protocol id, a length or CRC error, or noise; "
            f"first bytes {self._meter.head.hex(' ')})")

    def _registers(self, response: ModbusPDU, table: Table, unit: int, start: int, count: int) -> bytes:
        """The registers of a reply that answers exactly the request sent."""
        expected = READ_FUNCTION[table]

        def mismatch(kind: str, what: str) -> MismatchedReply:
            asked = f"a read of {count} {table} register(s) at {start} ({_function(expected)})"
            return MismatchedReply(f"unit {unit} on {self._describe} {what} to {asked}: not an answer to "
                                   "this request, ignored", kind)

        if response.dev_id != unit:
            raise mismatch("unit", f"sent an answer from unit {response.dev_id}")
        sent_tid = int.from_bytes(self._meter.sent[:2], "big")
        if self._transaction_ids and response.transaction_id != sent_tid:
            raise mismatch("transaction", f"answered transaction {response.transaction_id}, not {sent_tid},")
        if response.isError():
            code = int(response.exception_code)
            if response.function_code != expected | 0x80:
                raise mismatch("function",
                               f"answered exception {code:02d} for {_function(response.function_code & 0x7F)}")
            name = EXCEPTION_NAMES.get(code, "unknown exception")
            raise ExceptionResponse(
                f"unit {unit} answered exception {code:02d} ({name}) to a read of "
                f"{count} {table} register(s) at {start}",
                code,
            )
        if response.function_code != expected:
            raise mismatch("function", f"answered with {_function(response.function_code)}")
        if not isinstance(response, _StrictRegisters):
            raise mismatch("function", f"answered with an unexpected {type(response).__name__}")
        if response.byte_count != 2 * count or response.data_bytes != 2 * count:
            raise mismatch("length", f"answered with byte count {response.byte_count} and "
                                     f"{response.data_bytes} data byte(s) ({2 * count} expected)")
        return response.raw

    def close(self) -> None:
        self._client.close()

    def _why_not_open(self) -> str:
        """pymodbus only says 'not connected'; give the technician the reason."""
        if not self._serial:
            return ": connection refused or unreachable"
        port = self._client.comm_params.host
        if not os.path.exists(port):
            return ": the port does not exist (USB adapter unplugged?)"
        if not os.access(port, os.R_OK | os.W_OK):
            return ": no permission (is the user in the dialout group?)"
        if port_in_use(port):
            return (": the port is in use by another process (another retrofit-agent, or a terminal "
                    "program?); a line has one master")
        return ": the port refused these settings"


def _short(exc: Exception) -> str:
    text = str(exc).replace("\n", " ").strip()
    return text[:160] if text else type(exc).__name__


def tcp_link(host: str, port: int, timeout: float, rtu_framing: bool = False) -> PymodbusLink:
    client = _TcpClient(
        host,
        port=port,
        framer=FramerType.RTU if rtu_framing else FramerType.SOCKET,
        timeout=timeout,
        retries=0,
        reconnect_delay=0,
    )
    return PymodbusLink(client, f"tcp://{host}:{port}", serial=False, timeout=timeout,
                        transaction_ids=not rtu_framing)


def serial_link(
    port: str, baudrate: int, parity: str, stopbits: int, bytesize: int, timeout: float
) -> PymodbusLink:
    # pymodbus opens the port with pyserial's exclusive=True: a second master
    # on the same line (another agent started by hand) cannot open it.
    client = _SerialClient(
        port,
        framer=FramerType.RTU,
        baudrate=baudrate,
        parity=parity,
        stopbits=stopbits,
        bytesize=bytesize,
        timeout=timeout,
        retries=0,
        reconnect_delay=0,
    )
    return PymodbusLink(client, f"{port} ({baudrate} {bytesize}{parity}{stopbits})", serial=True,
                        timeout=timeout, transaction_ids=False)
