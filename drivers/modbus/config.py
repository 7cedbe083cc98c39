"""The config records of Modbus buses, and what a Modbus address may be."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from drivers.core.durations import Duration
from drivers.core.fields import Host, Identifier, NonEmpty, Port
from drivers.modbus.plan import LinkCost

Baudrate = Literal[1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200]


@dataclass(frozen=True, kw_only=True)
class ModbusRtuBus:
    id: Identifier
    type: Literal["modbus-rtu"]
    port: NonEmpty
    baudrate: Baudrate = 9600
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8
    timeout: Duration = 1.0

    def describe(self) -> str:
        return f"{self.port} {self.baudrate} {self.bytesize}{self.parity}{self.stopbits}"


@dataclass(frozen=True, kw_only=True)
class ModbusTcpBus:
    id: Identifier
    type: Literal["modbus-tcp"]
    host: Host
    port: Port = 502
    # "rtu": an RTU-over-TCP serial server (raw RTU frames inside TCP).
    framing: Literal["socket", "rtu"] = "socket"
    timeout: Duration = 3.0

    def describe(self) -> str:
        return f"{self.host}:{self.port}"


ModbusBus = ModbusRtuBus | ModbusTcpBus


def link_cost(bus: ModbusBus) -> LinkCost:
    """What a request costs on the bus's line (the read planner's cost model)."""
    if isinstance(bus, ModbusRtuBus):
        return LinkCost.rtu(bus.baudrate, bus.parity, bus.stopbits)
    return LinkCost.tcp()


def check_address(address: object) -> str | None:
    """A unit id is 1..247 (0 is broadcast, 248..255 reserved)."""
    if isinstance(address, int) and not isinstance(address, bool) and 1 <= address <= 247:
        return None
    return f"a Modbus unit id is 1..247 (got {address!r})"
