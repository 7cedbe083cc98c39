"""Wired M-Bus (EN 13757-2/-3), as the agent's registry knows it.

Light on purpose: the config record and the profile type are all a gateway
loads until an M-Bus line is opened; the link and the telegram decoder
(about 1 MB on a Pi) come with it.
"""

from __future__ import annotations

from collections.abc import Sequence

from drivers.core.device import DeviceConfig
from drivers.core.durations import format_duration
from drivers.core.protocol import BusLoad, BusProtocol, Polled
from drivers.mbus import config
from drivers.mbus.cli import MbusCommissioning
from drivers.mbus.config import MbusBus
from drivers.mbus.profile import MbusProfile


class MbusProtocol(BusProtocol[MbusBus, MbusProfile]):
    name = "mbus"
    title = "M-Bus"
    buses = (MbusBus,)
    profile = MbusProfile
    takes = ("mbus",)
    commissioning = MbusCommissioning()

    def check_address(self, address: object) -> str | None:
        return config.check_address(address)

    def open(self, bus: MbusBus, devices: Sequence[tuple[DeviceConfig, MbusProfile]]) -> Polled:
        from drivers.mbus.link import MbusLink
        from drivers.mbus.reader import MbusDevice

        link = MbusLink(bus.port, bus.baudrate, bus.parity, bus.timeout, bus.retries)
        return Polled(link, [MbusDevice(link, device.id, device.address, device.interval, profile)
                             for device, profile in devices])

    def load(self, bus: MbusBus, devices: Sequence[tuple[DeviceConfig, MbusProfile]]) -> BusLoad:
        from drivers.mbus.commission import bus_load

        return bus_load(bus, devices)

    def notes(self, bus: MbusBus, device: DeviceConfig, profile: MbusProfile) -> list[str]:
        if profile.choose_from:
            return [(f"warning: device {device.id}: profile {profile.name} chooses per radio telegram; a wired "
                     "meter is not chosen for (every candidate's point is tried): name the meter's profile")]
        if profile.min_interval and device.interval < profile.min_interval:
            return [(f"warning: device {device.id} every {format_duration(device.interval)}: {profile.name} meters "
                     f"allow a read every {format_duration(profile.min_interval)} at most (battery); the meter may "
                     "stop answering or drain its battery")]
        return []

    def point_names(self, device: DeviceConfig, profile: MbusProfile) -> tuple[str, ...]:
        return device.points or (("every record",) if profile.all_records else tuple(p.name for p in profile.points))

    def show_profile(self, profile: MbusProfile) -> list[str]:
        if profile.choose_from:
            return [(f"no points of its own: per radio meter, the profile among {', '.join(profile.choose_from)} "
                     "whose detect block fits the telegram header (manufacturer, version, device type) best")]
        lines = [f"{'point':26} {'quantity':24} {'storage':>7} {'tariff':>6} {'subunit':>7} {'unit':5} kind"]
        lines += [f"{mp.name:26} {mp.quantity:24} {mp.storage:>7} {mp.tariff:>6} {mp.subunit:>7} "
                  f"{mp.unit or '(sent)':5} {mp.kind}  {mp.description}"
                  + (f" [{mp.function}]" if mp.function != "instantaneous" else "")
                  + (f" [{', '.join(mp.qualifiers)}]" if mp.qualifiers else "") for mp in profile.points]
        if profile.all_records:
            lines.append("(every record of the telegram becomes a point, in its base unit; the points above are "
                         "the counters it knows by name)")
        return lines


PROTOCOL = MbusProtocol()
