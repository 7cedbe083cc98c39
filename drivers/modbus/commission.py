"""Modbus commissioning: probe a device, scan a line, estimate a bus's load.

All of it only reads: function codes 03 and 04, never a write. pymodbus is
imported when a verb runs, not when the command line is built.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, cast

from drivers.core.cli import Progress, parse_ranges
from drivers.core.device import DeviceConfig
from drivers.core.errors import BusError, ExceptionResponse, PortUnavailable, UsageError
from drivers.core.ports import check_serial_port, check_tcp
from drivers.core.protocol import BusLoad
from drivers.modbus.codec import Value, registers_to_bytes
from drivers.modbus.config import Baudrate, ModbusBus, ModbusRtuBus, ModbusTcpBus, link_cost
from drivers.modbus.plan import LinkCost, ReadRequest, group_by_interval, plan_requests
from drivers.modbus.profile import ModbusProfile, Table
from drivers.modbus.values import AnswerDecoder, with_exponent_registers

if TYPE_CHECKING:
    from drivers.modbus.link import PymodbusLink, RegisterReader

# A Modbus TCP gateway answers for a serial unit that is not there with
# exception 10 (path unavailable) or 11 (target failed to respond): absence.
GATEWAY_EXCEPTIONS = (10, 11)


def open_link(bus: ModbusBus) -> PymodbusLink:
    from drivers.modbus.link import serial_link, tcp_link

    if isinstance(bus, ModbusRtuBus):
        return serial_link(bus.port, bus.baudrate, bus.parity, bus.stopbits, bus.bytesize, bus.timeout)
    return tcp_link(bus.host, bus.port, bus.timeout, rtu_framing=bus.framing == "rtu")


def check_bus(bus: ModbusBus) -> None:
    """Fail at once, with the reason, when a bus's port cannot be opened."""
    if isinstance(bus, ModbusTcpBus):
        check_tcp(bus.host, bus.port, bus.timeout)
    else:
        check_serial_port(bus.port, bus.baudrate, bus.parity, bus.stopbits, bus.bytesize)


@dataclass(frozen=True)
class ProbeRow:
    point: str
    value: Value | None
    unit: str
    raw: tuple[int, ...]
    error: str = ""


def probe(link: RegisterReader, unit: int, profile: ModbusProfile, cost: LinkCost,
          points: Iterable[str] | None = None) -> list[ProbeRow]:
    """Read every point of one device once, keeping the raw registers."""
    chosen = profile.chosen(points)
    order = {p.name: i for i, p in enumerate(chosen)}
    rows: list[ProbeRow] = []
    decoder = AnswerDecoder(chosen)
    answers: list[tuple[ReadRequest, list[int]]] = []
    for request in plan_requests(with_exponent_registers(chosen), cost, profile.workarounds.max_registers,
                                 profile.workarounds.holes):
        try:
            answers.append((request, link.read(request.table, unit, request.start, request.count)))
        except BusError as exc:
            rows.extend(ProbeRow(p.name, None, p.unit, (), str(exc)) for p in request.points if p.name in order)
    decoder.take_exponents((request, registers_to_bytes(registers)) for request, registers in answers)
    for request, registers in answers:
        for point, value in decoder.values(request, registers_to_bytes(registers)):
            raw = tuple(registers[point.address - request.start: point.end - request.start])
            rows.append(ProbeRow(point.name, value, point.unit, raw))
    return sorted(rows, key=lambda r: order[r.point])


def format_probe(rows: list[ProbeRow]) -> str:
    lines = [f"{'point':26} {'value':>14} {'unit':6} raw registers"]
    for row in rows:
        raw = " ".join(f"{w:04X}" for w in row.raw)
        value = "-" if row.value is None else str(row.value)
        lines.append(f"{row.point:26} {value:>14} {row.unit:6} {raw or row.error}")
    return "\n".join(lines)


def scan_units(link: RegisterReader, units: Iterable[int], table: Table,
               register: int) -> Iterator[tuple[int, str | None]]:
    """Every unit with what it answered: "registers", "exception NN" (which
    proves a device is there even if the register does not exist), or None."""
    for unit in units:
        try:
            link.read(table, unit, register, 1)
            yield unit, "registers"
        except ExceptionResponse as exc:
            yield unit, None if exc.code in GATEWAY_EXCEPTIONS else f"exception {exc.code:02d}"
        except BusError:
            yield unit, None


def bus_load(bus: ModbusBus, devices: Sequence[tuple[DeviceConfig, ModbusProfile]]) -> BusLoad:
    """Wire time per second of schedule, from the request plans."""
    cost = link_cost(bus)
    busy = per_hour = worst = 0.0
    for device, profile in devices:
        points = profile.chosen(device.points)
        for interval, members in group_by_interval(points, device.interval, device.intervals).items():
            plan = plan_requests(members, cost, profile.workarounds.max_registers, profile.workarounds.holes)
            poll = sum(cost.request_time(r.count) for r in plan)
            busy += poll / interval
            per_hour += len(plan) * 3600 / interval
            worst = max(worst, poll)
    return BusLoad(bus.id, busy, per_hour, worst)


def probe_device(bus: ModbusBus, unit: int, profile: ModbusProfile, points: Sequence[str] | None) -> bool:
    """`probe`: read one device once and print each point beside its raw registers."""
    check_bus(bus)
    link = open_link(bus)
    try:
        rows = probe(link, unit, profile, link_cost(bus), points)
    finally:
        link.close()
    print(f"{profile.name} at unit {unit} on {bus.id}:")
    print(format_probe(rows))
    return all(not r.error for r in rows)


def scan_bus(args: argparse.Namespace, bus: ModbusBus, each_setting: bool) -> bool:
    """`scan`: every unit that answers on the bus; with ``each_setting`` (a
    serial line the command line gave) at each baud rate and parity it lists."""
    units = parse_ranges(args.addresses or "1-247", 1, 247)
    if not 0 <= args.register <= 0xFFFF:
        raise UsageError(f"--register {args.register}: a register address is 0..65535")
    if not each_setting:
        return _scan(args, units, [bus])
    adhoc = bus
    settings: list[ModbusBus] = [adhoc]
    if isinstance(adhoc, ModbusRtuBus):
        try:
            rates = [int(r) for r in (args.baudrates or "9600,19200,2400,4800,38400,115200").split(",")]
        except ValueError:
            raise UsageError(f"--baudrates: cannot read {args.baudrates!r}; use e.g. 9600,19200") from None
        parities = [p.strip().upper() for p in args.parities.split(",")]
        if bad := [p for p in parities if p not in ("N", "E", "O")]:
            raise UsageError(f"--parities: {', '.join(bad)} is not N, E or O")
        rates = [args.baudrate] if args.baudrate else rates
        parities = [args.parity] if args.parity else parities
        # Any rate a device may run at is tried; the config's Literal is for configs.
        settings = [dataclasses.replace(adhoc, baudrate=cast("Baudrate", r), parity=p) for r in rates for p in parities]
    return _scan(args, units, settings)


def _scan(args: argparse.Namespace, units: list[int], settings: list[ModbusBus]) -> bool:
    progress = Progress(sys.stderr)
    found = opened = 0
    refused: list[str] = []
    table: Literal["holding", "input"] = args.table
    for candidate in settings:
        where = (f"{candidate.port} {candidate.baudrate} 8{candidate.parity}{candidate.stopbits}"
                 if isinstance(candidate, ModbusRtuBus) else f"tcp://{candidate.host}:{candidate.port}")
        try:
            check_bus(candidate)
        except PortUnavailable as exc:
            if not exc.settings_refused:
                raise
            refused.append(str(exc))
            print(f"skipping {where}: the port refuses these settings", flush=True)
            continue
        opened += 1
        print(f"scanning {where}, units {units[0]}..{units[-1]} ({candidate.timeout:g} s per silent unit: "
              f"at most {len(units) * candidate.timeout:.0f} s) ...", flush=True)
        link = open_link(candidate)
        try:
            for done, (unit, answer) in enumerate(scan_units(link, units, table, args.register), 1):
                if answer is not None:
                    found += 1
                    progress.clear()
                    print(f"  unit {unit:3} answers ({answer}) at {where}", flush=True)
                progress.update(f"unit {unit} ({done}/{len(units)}) at {where}, {found} found")
        finally:
            progress.clear()
            link.close()
    if not opened:
        raise PortUnavailable(refused[0] if len(refused) == 1 else
                              f"the port refuses every setting tried ({len(refused)}): {refused[0]}")
    print(f"{found} device(s) found")
    return bool(found)
