"""Modbus I/O: the one module that calls pymodbus.

pymodbus changes its API in minor releases (``slave=`` became ``device_id=``,
the payload builder went away), so it is pinned to one version and kept
behind this small surface: open a link for a bus, read a register block,
close. There is deliberately no write here: the agent only reads meters,
and the only function codes it can send are 03 and 04.
"""

from __future__ import annotations

import logging
import os
from typing import Protocol

from pymodbus import FramerType
from pymodbus.client import ModbusSerialClient, ModbusTcpClient
from pymodbus.exceptions import ModbusException, ModbusIOException

from drivers.core.errors import BusError, ExceptionResponse
from drivers.profile import Table

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


class RegisterReader(Protocol):
    """What a bus worker needs from a Modbus link."""

    def read(self, table: Table, unit: int, start: int, count: int) -> list[int]: ...

    def close(self) -> None: ...


class PymodbusLink:
    """A read-only Modbus link over a pymodbus sync client (TCP or serial)."""

    def __init__(self, client: ModbusTcpClient | ModbusSerialClient, describe: str, serial: bool,
                 timeout: float) -> None:
        self._client = client
        self._describe = describe
        self._serial = serial
        self._timeout = timeout

    def read(self, table: Table, unit: int, start: int, count: int) -> list[int]:
        read = (
            self._client.read_holding_registers
            if table == "holding"
            else self._client.read_input_registers
        )
        try:
            if not self._client.connected and not self._client.connect():
                raise BusError(f"cannot open {self._describe}{self._why_not_open()}")
            response = read(start, count=count, device_id=unit)
        except ModbusIOException:
            # A timeout may leave a late reply in the pipe that would be taken
            # for the answer to the next request: start from a clean line.
            self._client.close()
            raise BusError(f"no answer from unit {unit} within {self._timeout:g} s on {self._describe}") from None
        except ModbusException as exc:
            self._client.close()
            raise BusError(f"no valid answer from unit {unit} on {self._describe}: {_short(exc)}") from None
        except OSError as exc:
            self._client.close()
            raise BusError(f"{self._describe}: {exc.strerror or exc}") from None
        if response.isError():
            code = int(getattr(response, "exception_code", 0))
            name = EXCEPTION_NAMES.get(code, "unknown exception")
            raise ExceptionResponse(
                f"unit {unit} answered exception {code:02d} ({name}) to a read of "
                f"{count} {table} register(s) at {start}",
                code,
            )
        registers = list(response.registers)
        if len(registers) < count:
            raise BusError(f"unit {unit} returned {len(registers)} of {count} registers")
        return registers[:count]

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
        return ": the port refused these settings"


def _short(exc: Exception) -> str:
    text = str(exc).replace("\n", " ").strip()
    return text[:160] if text else type(exc).__name__


def tcp_link(host: str, port: int, timeout: float, rtu_framing: bool = False) -> PymodbusLink:
    client = ModbusTcpClient(
        host,
        port=port,
        framer=FramerType.RTU if rtu_framing else FramerType.SOCKET,
        timeout=timeout,
        retries=0,
        reconnect_delay=0,
    )
    return PymodbusLink(client, f"tcp://{host}:{port}", serial=False, timeout=timeout)


def serial_link(
    port: str, baudrate: int, parity: str, stopbits: int, bytesize: int, timeout: float
) -> PymodbusLink:
    client = ModbusSerialClient(
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
    return PymodbusLink(client, f"{port} ({baudrate} {bytesize}{parity}{stopbits})", serial=True, timeout=timeout)
