"""M-Bus commissioning: probe a meter, scan a line, estimate a line's load,
and `retrofit-agent mbus decode`.

Only reading commands are sent (SND_NKE, selection, REQ_UD2): nothing here
changes a meter. The link and the decoder are imported when a verb runs,
not when the command line is built.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING

from drivers.core.cli import Progress, parse_ranges
from drivers.core.device import DeviceConfig
from drivers.core.durations import parse_duration
from drivers.core.errors import UsageError
from drivers.core.ports import check_serial_port, refused_settings
from drivers.core.protocol import BusLoad
from drivers.mbus.config import MbusBus
from drivers.mbus.profile import MbusProfile

if TYPE_CHECKING:
    from drivers.mbus.link import MbusLink
    from drivers.mbus.records import DataRecord
    from drivers.mbus.telegram import Telegram, TelegramHeader

# M-Bus (EN 13757-2): 11 bits per character (start, 8 data, parity, stop).
# A readout is SND_NKE (5 characters) and its E5, or a secondary-address
# selection (17) and its E5, then REQ_UD2 (5) and a long frame: 9 characters
# of frame, 12 of the variable data header and the records. A record is
# assumed to be 6 characters (DIF, VIF, 4 data bytes), one per profile point;
# a profile that takes every record is assumed to get 12.
BITS_PER_CHAR = 11
RECORD_CHARS = 6
ALL_RECORDS = 12


def readout_s(baudrate: int, points: int, secondary: bool) -> float:
    """Wire time of one readout of one telegram, as the module's comment counts it."""
    chars = (17 if secondary else 5) + 1 + 5 + 9 + 12 + RECORD_CHARS * points
    return chars * BITS_PER_CHAR / baudrate



def bus_load(bus: MbusBus, devices: Sequence[tuple[DeviceConfig, MbusProfile]]) -> BusLoad:
    """An M-Bus readout's length depends on what the meter sends, so this is
    an estimate: one telegram holding the profile's records."""
    busy = per_hour = worst = 0.0
    for device, profile in devices:
        points = ALL_RECORDS if profile.all_records else len(profile.points)
        readout = readout_s(bus.baudrate, points, isinstance(device.address, str))
        busy += readout / device.interval
        per_hour += 2 * 3600 / device.interval
        worst = max(worst, readout)
    return BusLoad(bus.id, busy, per_hour, worst,
                   "M-Bus, estimated: one telegram of the profile's records, more take longer")


def check_bus(bus: MbusBus) -> None:
    """Fail at once, with the reason, when the line's port cannot be opened."""
    check_serial_port(bus.port, bus.baudrate, bus.parity)


def open_link(bus: MbusBus, retries: int) -> MbusLink:
    from drivers.mbus.link import MbusLink

    return MbusLink(bus.port, bus.baudrate, bus.parity, bus.timeout, retries=retries)


def scan_primary(link: MbusLink, addresses: Iterable[int]) -> Iterator[tuple[int, TelegramHeader | None]]:
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


def probe(telegrams: list[Telegram], profile: MbusProfile) -> tuple[list[MbusProbeRow], list[DataRecord]]:
    """The profile's points as the daemon would map this readout, each with
    its record; and the records no point took."""
    from drivers.mbus.points import point_values

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


def probe_meter(bus: MbusBus, address: int | str, profile: MbusProfile) -> bool:
    """`probe`: read one meter once and print each point beside its record."""
    check_bus(bus)
    link = open_link(bus, bus.retries)
    try:
        with refused_settings(bus.port, f"{bus.baudrate} 8{bus.parity}1"):
            telegrams = link.read(address)
    finally:
        link.close()
    rows, unused = probe(telegrams, profile)
    where = f"secondary address {address}" if isinstance(address, str) else f"address {address}"
    line = bus.port if bus.id == "probe" else f"{bus.id} ({bus.port})"  # "probe": given on the command line
    print(f"{profile.name} at {where} on {line}: {describe_meter(telegrams[0].header)}; "
          f"{len(telegrams)} telegram(s)")
    print(format_mbus_probe(rows, unused))
    return bool(rows) and all(row.value is not None for row in rows)


def scan_line(args: argparse.Namespace, bus: MbusBus) -> bool:
    """`scan`: every meter on the line, by primary address or by a secondary-address search."""
    try:
        max_time = parse_duration(args.max_time)
    except ValueError as exc:
        raise UsageError(f"--max-time: {exc}") from None
    if args.max_selections < 1:
        raise UsageError("--max-selections must be at least 1")
    addresses = parse_ranges(args.addresses or "0-250", 0, 250)
    check_bus(bus)
    link = open_link(bus, retries=0)
    progress = Progress(sys.stderr)
    line = f"{bus.port} ({bus.baudrate} 8{bus.parity}1)"
    try:
        with refused_settings(bus.port, f"{bus.baudrate} 8{bus.parity}1"):
            return _search(args, link, line, progress, addresses, max_time)
    finally:
        progress.clear()
        link.close()


def _search(args: argparse.Namespace, link: MbusLink, line: str, progress: Progress, addresses: list[int],
            max_time: float) -> bool:
    """Print the meters found on the line; True when any was found and the search was complete."""
    found = 0
    if args.secondary:
        search = SecondarySearch(link, max_selections=args.max_selections, max_seconds=max_time)
        print(f"searching {line} by secondary address (at most {args.max_selections} selections, "
              f"{args.max_time}) ...", flush=True)
        for pattern, header in search.run():
            if header is not None:
                found += 1
                progress.clear()
                print(f"  {describe_meter(header)}", flush=True)
            progress.update(f"selection {search.selections} ({pattern}), {found} found, "
                            f"{search.collisions} collision(s)")
        progress.clear()
        for identification in search.unresolved:
            print(f"  {identification}: several answers at once (meters sharing this number, or noise)")
        if search.stopped:
            print(f"{found} meter(s) found; search incomplete: {search.stopped}")
            return False
    else:
        print(f"scanning {line}, primary addresses {addresses[0]}..{addresses[-1]} "
              f"({link.timeout:.2f} s per silent address) ...", flush=True)
        for done, (address, header) in enumerate(scan_primary(link, addresses), 1):
            if header is not None:
                found += 1
                progress.clear()
                print(f"  address {address:3}: {describe_meter(header)}", flush=True)
            progress.update(f"address {address} ({done}/{len(addresses)}), {found} found")
        progress.clear()
    print(f"{found} meter(s) found")
    return bool(found)


