"""`retrofit-agent scan --wmbus`: every radio meter the receiver hears, for commissioning.

Listens for ``--seconds`` and prints one line per meter as it is first
heard, then a table: identification, manufacturer, device type, version,
radio mode, RSSI, security mode and whether it opened, whether the key
file has a key for it, and the profile that fits its device type. Keys are
used to try the telegrams and never printed. Nothing is sent but the
stick's own receive mode.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from drivers.core.errors import BusError, ProfileError, UsageError
from drivers.core.ports import check_serial_port
from drivers.mbus.profile import MbusProfile
from drivers.wmbus.compact import KNOWN_FORMATS, FormatBook
from drivers.wmbus.config import AnyWmbusBus, WmbusSdrBus
from drivers.wmbus.decode import WmbusResult, decode_wmbus
from drivers.wmbus.keys import KeyRing, load_bus_keys, load_key_file
from drivers.wmbus.link import RepeatFilter
from drivers.wmbus.received import Received
from drivers.wmbus.stick import CommandReceiver, Receiver, SerialStick

# The bundled profile that fits a device type (EN 13757-4 / OMS medium), for the scan's suggestion.
PROFILE_BY_MEDIUM = {
    "water": "oms-water", "warm_water": "oms-water", "hot_water": "oms-water", "cold_water": "oms-water",
    "heat": "oms-heat", "heat_outlet": "oms-heat", "heat_inlet": "oms-heat",
    "heat_cost_allocator": "oms-hca",
}


def suggested_profile(medium: str) -> str:
    """The profile for a device type: an OMS one where the records are standard, else every record."""
    return PROFILE_BY_MEDIUM.get(medium, "mbus")


class _Catalogue(Protocol):
    def get(self, name: str) -> object: ...


def profile_chooser(catalogue: _Catalogue | None) -> Callable[[str, int, str], str]:
    """Per meter header, the profile `oms-auto` would take (a vendor's first), else the table's.

    The catalogue is the caller's (bundled and site profiles): this package
    may not load it.
    """
    auto: object = None
    if catalogue is not None:
        try:
            auto = catalogue.get("oms-auto")
        except (ProfileError, KeyError):  # a site copy that does not load: the scan suggests by device type
            auto = None

    def choose(manufacturer: str, version: int, medium: str) -> str:
        if isinstance(auto, MbusProfile):
            chosen = auto.choose(manufacturer, version, medium)
            if chosen is not None:
                return chosen.name
        return suggested_profile(medium)

    return choose


@dataclass
class HeardMeter:
    identification: str
    manufacturer: str
    medium: str
    version: int
    mode: str
    security_mode: int | None
    state: str
    key: bool
    telegrams: int = 0
    rssi_dbm: float | None = None
    level: float | None = None  # an SDR's own figure, not dBm: shown with a ~
    error: str | None = None
    profile: str = ""

    def row(self) -> list[str]:
        rssi = (f"{self.rssi_dbm:.0f}" if self.rssi_dbm is not None
                else f"~{self.level:.0f}" if self.level is not None else "-")
        security = "none" if not self.security_mode else f"mode {self.security_mode}"
        return [self.identification, self.manufacturer, self.medium, str(self.version), self.mode.upper(), rssi,
                security, self.state, "yes" if self.key else "no", self.profile or suggested_profile(self.medium),
                str(self.telegrams)]


HEADINGS = ["meter", "manuf.", "device type", "ver", "mode", "RSSI", "security", "state", "key", "profile",
            "telegrams"]


def open_receiver(bus: AnyWmbusBus) -> Receiver:
    if isinstance(bus, WmbusSdrBus):
        return CommandReceiver(bus.command)
    check_serial_port(bus.port, bus.serial_baudrate, "N")
    try:
        return SerialStick(bus.stick, bus.port, bus.serial_baudrate, bus.modes)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def heard_meter(result: WmbusResult, received: Received, mode: str, keys: KeyRing) -> HeardMeter | None:
    """What one decoded telegram says of its meter; None when its link layer was unreadable."""
    if result.link is None:
        return None
    meter = result.meter or result.link.address
    return HeardMeter(meter.identification, meter.manufacturer, meter.medium, meter.version,
                      received.mode or mode, result.security.mode, result.security.state.value,
                      meter.identification in keys, rssi_dbm=received.rssi_dbm, level=received.level,
                      error=result.error)


def scan_radio(args: argparse.Namespace, bus: AnyWmbusBus) -> bool:
    seconds = float(getattr(args, "seconds", 60.0))
    if seconds <= 0:
        raise UsageError("--seconds must be more than 0")
    keys_file = getattr(args, "keys", None)
    keys = load_key_file(keys_file) if keys_file is not None else load_bus_keys(bus.keys_file)
    receiver = open_receiver(bus)
    mode = "/".join(sorted(bus.modes))
    repeats = RepeatFilter()
    formats = FormatBook(KNOWN_FORMATS)
    choose = profile_chooser(getattr(args, "catalogue", None))
    meters: dict[str, HeardMeter] = {}
    broken = 0
    print(f"listening on {bus.describe()} for {seconds:g} s ({len(keys)} key(s) to try) ...", flush=True)
    deadline = time.monotonic() + seconds
    try:
        while (left := deadline - time.monotonic()) > 0:
            for received in receiver.read(min(left, 1.0)):
                result = decode_wmbus(received.telegram, keys, received.frame_format, formats, received.crcs)
                heard = heard_meter(result, received, mode, keys)
                if heard is None or result.link is None:
                    broken += 1
                    continue
                if repeats.is_repeat(result.link, time.monotonic()):
                    continue
                heard.profile = choose(heard.manufacturer, heard.version, heard.medium)
                known = meters.get(heard.identification)
                heard.telegrams = (known.telegrams if known else 0) + 1
                meters[heard.identification] = heard
                if known is None:
                    print(f"  heard {heard.identification} {heard.manufacturer} {heard.medium} "
                          f"({heard.state})", flush=True)
    except BusError as exc:
        print(f"retrofit-agent scan: {exc}", file=sys.stderr)
    finally:
        receiver.close()
    print(_table([m.row() for m in sorted(meters.values(), key=lambda m: m.identification)]))
    no_key = [m.identification for m in meters.values() if m.state == "no_key"]
    print(f"{len(meters)} meter(s) heard in {seconds:g} s; {repeats.dropped} repeat(s) dropped, "
          f"{broken + receiver.garbled} garbled telegram(s)")
    if any(m.rssi_dbm is None and m.level is not None for m in meters.values()):
        print("RSSI ~N: the SDR decoder's own signal level, not dBm: compare meters with it, not with a stick's")
    if no_key:
        print(f"{len(no_key)} encrypted meter(s) without a key: {', '.join(sorted(no_key))} "
              "(add them to the key file: meter id;32 hex digits)")
    return bool(meters)


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(HEADINGS)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
             for row in [HEADINGS, *rows]]
    return "\n".join(lines)
