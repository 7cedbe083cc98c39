"""Commissioning tools for a technician on site: probe, scan, bus load.

All of them only read: function codes 03 and 04, never a write.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from agent.config import Config, MbusBus, ModbusRtuBus, ModbusTcpBus
from drivers.core.errors import BusError, ExceptionResponse
from agent.worker import group_by_interval
from drivers import modbus
from drivers.mbus import TelegramHeader
from drivers.mbus_link import MbusLink
from drivers.codec import registers_to_bytes
from drivers.plan import LinkCost, ReadRequest, plan_requests
from drivers.profile import Catalogue, MbusProfile, Profile
from drivers.values import AnswerDecoder, with_exponent_registers


def link_cost(bus: ModbusRtuBus | ModbusTcpBus) -> LinkCost:
    if isinstance(bus, ModbusRtuBus):
        return LinkCost.rtu(bus.baudrate, bus.parity, bus.stopbits)
    return LinkCost.tcp()


def open_link(bus: ModbusRtuBus | ModbusTcpBus) -> modbus.PymodbusLink:
    if isinstance(bus, ModbusRtuBus):
        return modbus.serial_link(bus.port, bus.baudrate, bus.parity, bus.stopbits, bus.bytesize, bus.timeout)
    return modbus.tcp_link(bus.host, bus.port, bus.timeout, rtu_framing=bus.framing == "rtu")


@dataclass(frozen=True)
class ProbeRow:
    point: str
    value: object
    unit: str
    raw: tuple[int, ...]
    error: str = ""


def probe(link: modbus.RegisterReader, unit: int, profile: Profile, cost: LinkCost,
          points: Iterable[str] | None = None) -> list[ProbeRow]:
    """Read every point of one device once, keeping the raw registers."""
    wanted = set(points) if points is not None else None
    chosen = [p for p in profile.points if wanted is None or p.name in wanted]
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


@dataclass(frozen=True)
class Found:
    unit: int
    baudrate: int | None
    parity: str | None
    answer: str  # "registers" or "exception NN"


def scan_units(link: modbus.RegisterReader, units: Iterable[int], table: str, register: int) -> Iterator[tuple[int, str]]:
    """Unit ids that answer at all: with registers, or with an exception (which
    proves a device is there even if the register does not exist)."""
    for unit in units:
        try:
            link.read(table, unit, register, 1)  # type: ignore[arg-type]
            yield unit, "registers"
        except ExceptionResponse as exc:
            yield unit, f"exception {exc.code:02d}"
        except BusError:
            continue


@dataclass(frozen=True)
class BusLoad:
    bus: str
    busy_fraction: float  # wire time per second of schedule
    requests_per_hour: float
    worst_poll_s: float
    assumption: str = ""  # what an estimate rests on, where the wire time is not known exactly


# M-Bus (EN 13757-2): 11 bits per character (start, 8 data, parity, stop).
# A readout is SND_NKE (5 characters) and its E5, or a secondary-address
# selection (17) and its E5, then REQ_UD2 (5) and a long frame: 9 characters
# of frame, 12 of the variable data header and the records. A record is
# assumed to be 6 characters (DIF, VIF, 4 data bytes), one per profile point;
# a profile that takes every record is assumed to get 12.
MBUS_BITS_PER_CHAR = 11
MBUS_RECORD_CHARS = 6
MBUS_ALL_RECORDS = 12


def mbus_readout_s(baudrate: int, points: int, secondary: bool) -> float:
    """Wire time of one readout of one telegram, as the module's comment counts it."""
    chars = (17 if secondary else 5) + 1 + 5 + 9 + 12 + MBUS_RECORD_CHARS * points
    return chars * MBUS_BITS_PER_CHAR / baudrate


def bus_loads(config: Config, catalogue: Catalogue) -> list[BusLoad]:
    """Wire time each bus needs per second of schedule, from the request plans."""
    loads = []
    for bus in config.buses:
        if bus.type == "mbus":
            loads.append(_mbus_load(bus, config, catalogue))
            continue
        cost = link_cost(bus)
        busy = 0.0
        per_hour = 0.0
        worst = 0.0
        for device in config.devices_on(bus.id):
            profile = catalogue.get(device.profile)
            points = tuple(p for p in profile.points if device.points is None or p.name in device.points)
            for interval, members in group_by_interval(points, device.interval, device.intervals).items():
                plan = plan_requests(members, cost, profile.workarounds.max_registers, profile.workarounds.holes)
                poll = sum(cost.request_time(r.count) for r in plan)
                busy += poll / interval
                per_hour += len(plan) * 3600 / interval
                worst = max(worst, poll)
        loads.append(BusLoad(bus.id, busy, per_hour, worst))
    return loads


def _mbus_load(bus: MbusBus, config: Config, catalogue: Catalogue) -> BusLoad:
    """An M-Bus readout's length depends on what the meter sends, so this is
    an estimate: one telegram holding the profile's records."""
    busy = per_hour = worst = 0.0
    for device in config.devices_on(bus.id):
        profile = catalogue.get(device.profile)
        points = MBUS_ALL_RECORDS if isinstance(profile, MbusProfile) and profile.all_records else len(profile.points)
        readout = mbus_readout_s(bus.baudrate, points, isinstance(device.address, str))
        busy += readout / device.interval
        per_hour += 2 * 3600 / device.interval
        worst = max(worst, readout)
    return BusLoad(bus.id, busy, per_hour, worst,
                   "M-Bus, estimated: one telegram of the profile's records, more take longer")


def load_warnings(config: Config, catalogue: Catalogue) -> list[str]:
    lines = []
    for load in bus_loads(config, catalogue):
        percent = 100 * load.busy_fraction
        figures = f"{load.requests_per_hour:.0f} requests/h" + (f"; {load.assumption}" if load.assumption else "")
        note = f"bus {load.bus}: {'about ' if load.assumption else ''}{percent:.1f} % busy on the wire ({figures})"
        if load.busy_fraction >= 1.0:
            lines.append(f"warning: {note}: it cannot keep its schedule; lengthen intervals or split the bus")
        elif load.busy_fraction >= 0.7:
            lines.append(f"warning: {note}: little room left for retries and a silent meter's timeouts")
        else:
            lines.append(note)
    return lines


def sleep_between(seconds: float) -> None:
    if seconds > 0:
        time.sleep(seconds)


def mbus_scan_primary(link: MbusLink, addresses: Iterable[int]) -> Iterator[tuple[int, TelegramHeader]]:
    """Meters answering at primary addresses, with their telegram headers."""
    for address in addresses:
        telegram = link.probe_primary(address)
        if telegram is not None:
            yield address, telegram.header


def mbus_scan_secondary(link: MbusLink, prefix: str = "") -> Iterator[TelegramHeader]:
    """Every meter by secondary address: select with wildcards; where several
    meters answer at once, refine the pattern by one more digit."""
    if len(prefix) == 8:
        outcome, telegram = link.probe_secondary(prefix)
        if outcome == "one" and telegram is not None:
            yield telegram.header
        return
    outcome, telegram = link.probe_secondary(prefix + "F" * (8 - len(prefix)))
    if outcome == "none":
        return
    if outcome == "one" and telegram is not None:
        yield telegram.header
        return
    for digit in "0123456789":
        yield from mbus_scan_secondary(link, prefix + digit)


def describe_meter(header: TelegramHeader) -> str:
    return (f"id {header.identification}, manufacturer {header.manufacturer}, medium {header.medium}, "
            f"version {header.version}")
