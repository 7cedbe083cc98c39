"""Commissioning tools for a technician on site: probe, scan, bus load.

All of them only read: function codes 03 and 04, never a write.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TextIO

import serial

from agent.config import Config, MbusBus, ModbusRtuBus, ModbusTcpBus
from agent.worker import group_by_interval
from drivers import modbus
from drivers.codec import registers_to_bytes
from drivers.core.errors import BusError, ExceptionResponse
from drivers.mbus import DataRecord, Telegram, TelegramHeader
from drivers.mbus_link import MbusLink
from drivers.mbus_points import point_values
from drivers.plan import LinkCost, ReadRequest, plan_requests
from drivers.profile import Catalogue, MbusProfile, Profile
from drivers.values import AnswerDecoder, with_exponent_registers

try:  # POSIX: pyserial lets termios.error through when a port refuses settings
    from termios import error as TermiosError
except ImportError:  # pragma: no cover - not POSIX
    TermiosError = OSError  # type: ignore[assignment,misc]


class PortUnavailable(BusError):
    """The port or host cannot be used at all (missing, no permission,
    settings it refuses, nothing listening): not the same as a silent
    meter, and said at once instead of after a scan of empty answers."""

    port_unavailable = True  # the command line's exit code 69 (EX_UNAVAILABLE)

    def __init__(self, message: str, settings_refused: bool = False) -> None:
        self.settings_refused = settings_refused  # another baud rate or parity may still open
        super().__init__(message)


def check_serial_port(port: str, baudrate: int, parity: str, stopbits: int = 1, bytesize: int = 8) -> None:
    """Open and close ``port`` with these settings, or raise PortUnavailable
    saying why. A ``socket://host:port`` URL (a TCP-to-serial gateway) is
    checked by connecting to it."""
    if "://" in port:
        scheme, _, rest = port.partition("://")
        host, _, number = rest.split("/", 1)[0].rpartition(":")
        if scheme != "socket" or not host or not number.isdigit():
            raise PortUnavailable(f"{port}: expected a serial port (/dev/ttyUSB0) or socket://HOST:PORT")
        check_tcp(host, int(number), 2.0, what=port)
        return
    if not os.path.exists(port):
        raise PortUnavailable(f"{port}: no such port (USB adapter unplugged? `ls /dev/serial/by-id/` lists "
                              "the adapters present)")
    if not os.access(port, os.R_OK | os.W_OK):
        raise PortUnavailable(f"{port}: no permission to open it (is this user in the dialout group?)")
    if not _is_terminal(port):
        raise PortUnavailable(f"{port} is not a serial port")
    settings = f"{baudrate} {bytesize}{parity}{stopbits}"
    # A pty refuses parity (EINVAL), though not always on its first open.
    if os.path.realpath(port).startswith("/dev/pts/") and parity != "N":
        raise PortUnavailable(f"{port} refuses {settings}: it is a pty (a virtual serial line), which "
                              "takes parity N only: add --parity N", settings_refused=True)
    with refused_settings(port, settings):
        serial.Serial(port, baudrate=baudrate, parity=parity, stopbits=stopbits, bytesize=bytesize,
                      timeout=0).close()


@contextmanager
def refused_settings(port: str, settings: str) -> Iterator[None]:
    """A port that will not take these settings, as PortUnavailable: pyserial
    lets termios.error through, which is no OSError."""
    try:
        yield
    except (serial.SerialException, TermiosError, ValueError) as exc:
        raise PortUnavailable(f"{port} refuses {settings}: {_reason(exc)}", settings_refused=True) from None


def _is_terminal(port: str) -> bool:
    """A serial port is a terminal device; a plain file or /dev/null is not."""
    try:
        descriptor = os.open(port, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as exc:
        raise PortUnavailable(f"{port}: cannot open: {_reason(exc)}") from None
    try:
        return os.isatty(descriptor)
    finally:
        os.close(descriptor)


def check_tcp(host: str, port: int, timeout: float, what: str | None = None) -> None:
    """Connect once and close, or raise PortUnavailable saying why."""
    where = what or f"tcp://{host}:{port}"
    try:
        with socket.create_connection((host, port), timeout=max(timeout, 1.0)):
            pass
    except socket.gaierror:
        raise PortUnavailable(f"{where}: unknown host {host!r}") from None
    except ConnectionRefusedError:
        raise PortUnavailable(f"{where}: connection refused: nothing listens there (wrong port?)") from None
    except TimeoutError:
        raise PortUnavailable(f"{where}: no connection within {max(timeout, 1.0):g} s (host down or "
                              "filtered?)") from None
    except OSError as exc:
        raise PortUnavailable(f"{where}: {_reason(exc)}") from None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    if isinstance(exc, TermiosError) and len(exc.args) == 2:
        return str(exc.args[1])
    return str(exc) or type(exc).__name__


def check_bus(bus: ModbusRtuBus | ModbusTcpBus | MbusBus) -> None:
    """Fail at once, with the reason, when a bus's port cannot be opened."""
    if isinstance(bus, ModbusTcpBus):
        check_tcp(bus.host, bus.port, bus.timeout)
    elif isinstance(bus, ModbusRtuBus):
        check_serial_port(bus.port, bus.baudrate, bus.parity, bus.stopbits, bus.bytesize)
    else:
        check_serial_port(bus.port, bus.baudrate, bus.parity)


class Progress:
    """How far a long search is, for the person watching it. On a terminal
    one line is rewritten in place; elsewhere (a pipe, a log) a line every
    ``every_s`` seconds, so a scan of several minutes never looks hung."""

    def __init__(self, stream: TextIO, every_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._stream = stream
        self._tty = stream.isatty()
        self._every_s = every_s
        self._clock = clock
        self._last = clock()
        self._shown = False

    def update(self, text: str) -> None:
        if self._tty:
            self._stream.write("\r\x1b[K" + text)
            self._stream.flush()
            self._shown = True
        elif self._clock() - self._last >= self._every_s:
            self._last = self._clock()
            self._stream.write(f"  ... {text}\n")
            self._stream.flush()

    def clear(self) -> None:
        """Take the progress line away (before a result line, and at the end)."""
        if self._shown:
            self._stream.write("\r\x1b[K")
            self._stream.flush()
            self._shown = False


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


# A Modbus TCP gateway answers for a serial unit that is not there with
# exception 10 (path unavailable) or 11 (target failed to respond): absence.
GATEWAY_EXCEPTIONS = (10, 11)


def scan_units(link: modbus.RegisterReader, units: Iterable[int], table: str,
               register: int) -> Iterator[tuple[int, str | None]]:
    """Every unit with what it answered: "registers", "exception NN" (which
    proves a device is there even if the register does not exist), or None."""
    for unit in units:
        try:
            link.read(table, unit, register, 1)  # type: ignore[arg-type]
            yield unit, "registers"
        except ExceptionResponse as exc:
            yield unit, None if exc.code in GATEWAY_EXCEPTIONS else f"exception {exc.code:02d}"
        except BusError:
            yield unit, None


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


def mbus_scan_primary(link: MbusLink, addresses: Iterable[int]) -> Iterator[tuple[int, TelegramHeader | None]]:
    """Every primary address with the header of the meter answering there, or None."""
    for address in addresses:
        telegram = link.probe_primary(address)
        yield address, telegram.header if telegram is not None else None


@dataclass
class SecondarySearch:
    """Every meter on a line by secondary address: select with wildcards
    (``1234FFFF``); where several meters answer at once, refine by one more
    digit. Bounded: a line that answers garbage collides on every selection
    and would otherwise walk all 10^8 addresses, so the search stops after
    ``max_selections``, after ``max_seconds``, or once ``give_up_after``
    complete addresses (no wildcard left to refine) collided. ``stopped``
    says why it ended early; empty when it searched the whole space."""

    link: MbusLink
    max_selections: int = 5000
    max_seconds: float = 1800.0
    give_up_after: int = 10
    clock: Callable[[], float] = time.monotonic
    selections: int = 0
    collisions: int = 0
    unresolved: list[str] = field(default_factory=list)
    stopped: str = ""

    def run(self) -> Iterator[tuple[str, TelegramHeader | None]]:
        """Each selection's pattern, with the header of the one meter that
        answered it cleanly, else None."""
        started = self.clock()
        pending = [""]  # prefixes still to select, depth first
        while pending:
            if self.selections >= self.max_selections:
                self.stopped = f"stopped after {self.selections} selections (--max-selections)"
                return
            if self.clock() - started > self.max_seconds:
                self.stopped = f"stopped after {self.max_seconds:g} s (--max-time)"
                return
            prefix = pending.pop()
            pattern = prefix + "F" * (8 - len(prefix))
            outcome, telegram = self.link.probe_secondary(pattern)
            self.selections += 1
            if outcome == "one" and telegram is not None:
                yield pattern, telegram.header
                continue
            yield pattern, None
            if outcome == "none":
                continue
            self.collisions += 1
            if len(prefix) < 8:
                pending.extend(prefix + digit for digit in reversed("0123456789"))
                continue
            self.unresolved.append(prefix)
            if len(self.unresolved) >= self.give_up_after:
                self.stopped = self._why_giving_up()
                return

    def _why_giving_up(self) -> str:
        if self.collisions == self.selections:
            return (f"every one of {self.selections} selections was answered with garbage or by several "
                    "meters at once: the line is noisy, runs at another baud rate or parity, or is not an "
                    "M-Bus line")
        return (f"{len(self.unresolved)} complete addresses (e.g. {self.unresolved[0]}) were answered with "
                "garbage or by several meters: noise on the line, or meters sharing an identification "
                "number; read those by primary address")


@dataclass(frozen=True)
class MbusProbeRow:
    """A profile point and the record it came from (None: not in the telegrams)."""

    point: str
    value: float | int | None
    unit: str
    record: DataRecord | None


def mbus_probe(telegrams: list[Telegram], profile: MbusProfile) -> tuple[list[MbusProbeRow], list[DataRecord]]:
    """The profile's points as the daemon would map this readout, each with
    its record; and the records no point took."""
    records = [record for telegram in telegrams for record in telegram.records]
    taken: dict[str, MbusProbeRow] = {}
    for record in records:  # one record at a time: the first matching record wins, as when polling
        for name, value, unit, _kind in point_values(profile, [record]):
            taken.setdefault(name, MbusProbeRow(name, value, unit, record))
    # An every-record profile's points only name the counters a meter may
    # send: one it does not send is no missing point.
    rows = [taken.pop(p.name, MbusProbeRow(p.name, None, p.unit or "", None)) for p in profile.points
            if p.name in taken or not profile.all_records]
    rows += taken.values()  # a profile taking every record has no list of points
    used = {id(row.record) for row in rows}
    return rows, [record for record in records if id(record) not in used]


def describe_record(record: DataRecord) -> str:
    """A record as the meter sent it: its bytes, then what they say, with
    the quantity named as a profile's ``quantity:`` matches it."""
    value = format(record.value, "f") if isinstance(record.value, Decimal) else record.value
    said = " ".join(str(part) for part in (record.quantity, value, record.unit) if part not in (None, ""))
    qualifiers = [f"{name} {number}" for name, number in
                  (("storage", record.storage), ("tariff", record.tariff), ("subunit", record.subunit)) if number]
    if record.function.value != "instantaneous":
        qualifiers.append(record.function.value)
    return f"{record.raw} = {', '.join([said, *qualifiers, *record.notes])}"


def format_mbus_probe(rows: list[MbusProbeRow], unused: list[DataRecord]) -> str:
    lines = [f"{'point':26} {'value':>14} {'unit':6} record (bytes = as the meter sent it)"]
    for row in rows:
        value = "-" if row.value is None else str(row.value)
        record = describe_record(row.record) if row.record is not None else "not in the telegram"
        if row.record is not None and row.value is None:
            record += "  (invalid, or no conversion to this unit)"
        lines.append(f"{row.point:26} {value:>14} {row.unit:6} {record}")
    if unused:
        lines.append("records the profile does not use:")
        lines.extend(f"  {describe_record(record)}" for record in unused)
    return "\n".join(lines)


def describe_meter(header: TelegramHeader) -> str:
    return (f"id {header.identification}, manufacturer {header.manufacturer}, medium {header.medium}, "
            f"version {header.version}")
