"""Wireless M-Bus (EN 13757-4, OMS), as the agent's registry knows it: a pushed source.

Light on purpose: the bus record is all a gateway loads until a receiver is
opened; the stick I/O, AES and the decoder come with ``open()``. Radio
meters' records are EN 13757-3 records, so their devices take the M-Bus
profiles (``takes``): ``mbus-heat``, the OMS water, heat and HCA profiles,
the every-record ``mbus``.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from pathlib import Path

from drivers.core.device import DeviceConfig
from drivers.core.errors import ConfigError
from drivers.core.protocol import BusLoad, BusProtocol, Pushed
from drivers.mbus.profile import MbusProfile
from drivers.mbus.protocol import PROTOCOL as MBUS
from drivers.wmbus import config
from drivers.wmbus.cli import WmbusCommissioning
from drivers.wmbus.config import AnyWmbusBus, WmbusBus, WmbusSdrBus


@cache
def _key_meters(path: Path | None, mtime: float | None) -> frozenset[str]:
    """The meters a key file has keys for (never the keys): for `check`'s notes."""
    from drivers.wmbus.keys import load_key_file

    return frozenset() if path is None else frozenset(load_key_file(path).meters())


def configured_key_meters(bus: AnyWmbusBus) -> tuple[Path | None, frozenset[str]]:
    """The bus's key file and the meters in it; ConfigError when it is unusable."""
    from drivers.wmbus.keys import key_file_for

    path = key_file_for(bus.keys_file)
    if path is None:
        return None, frozenset()
    try:
        mtime = path.stat().st_mtime
    except OSError:
        mtime = None
    return path, _key_meters(path, mtime)


class WmbusProtocol(BusProtocol[AnyWmbusBus, MbusProfile]):
    name = "wmbus"
    title = "wireless M-Bus"
    buses = (WmbusBus, WmbusSdrBus)
    profile = None  # radio meters take the M-Bus profiles
    takes = ("mbus",)
    commissioning = WmbusCommissioning()

    def check_address(self, address: object) -> str | None:
        return config.check_address(address)

    def open(self, bus: AnyWmbusBus, devices: Sequence[tuple[DeviceConfig, MbusProfile]]) -> Pushed:
        from drivers.wmbus.keys import load_bus_keys
        from drivers.wmbus.reader import RadioListener, RadioMeter
        from drivers.wmbus.stick import CommandReceiver, Receiver, SerialStick

        keys = load_bus_keys(bus.keys_file)
        receiver: Receiver
        if isinstance(bus, WmbusSdrBus):
            receiver = CommandReceiver(bus.command)
        else:
            try:
                receiver = SerialStick(bus.stick, bus.port, bus.serial_baudrate, bus.modes)
            except ValueError as exc:
                raise ConfigError([f"bus {bus.id}: {exc}"]) from None
        meters = {str(device.address).upper(): RadioMeter(device.id, str(device.address).upper(), device.interval,
                                                          profile, device.points)
                  for device, profile in devices}
        return Pushed(RadioListener(receiver, meters, keys), list(meters.values()))

    def load(self, bus: AnyWmbusBus, devices: Sequence[tuple[DeviceConfig, MbusProfile]]) -> BusLoad:
        per_hour = sum(3600.0 / device.interval for device, _ in devices)
        return BusLoad(bus.id, 0.0, per_hour, 0.0,
                       "a receiver only listens: telegrams per hour the meters are configured to send")

    def notes(self, bus: AnyWmbusBus, device: DeviceConfig, profile: MbusProfile) -> list[str]:
        path, meters = configured_key_meters(bus)
        meter = str(device.address).upper()
        if meter in meters:
            return []
        where = (f"has no key in {path}" if path is not None
                 else "has no key: no key file (credential wmbus-keys, or keys_file outside systemd)")
        return [(f"note: device {device.id} (meter {meter}) {where}; if it sends encrypted, its telegrams are "
                 "reported as wmbus.no_key, never read")]

    def point_names(self, device: DeviceConfig, profile: MbusProfile) -> tuple[str, ...]:
        names = MBUS.point_names(device, profile)  # a choosing profile's: its candidates' (resolved)
        return names if device.points else (*names, "rssi")

    def show_profile(self, profile: MbusProfile) -> list[str]:
        return MBUS.show_profile(profile)


PROTOCOL = WmbusProtocol()
