"""Modbus RTU and Modbus TCP, as the agent's registry knows them.

Light on purpose: the config records and the profile type are all a
gateway loads until a Modbus bus is opened (pymodbus comes with the link).
"""

from __future__ import annotations

from collections.abc import Sequence

from drivers.core.device import DeviceConfig
from drivers.core.protocol import BusLoad, BusProtocol, Polled
from drivers.modbus import config
from drivers.modbus.cli import ModbusCommissioning
from drivers.modbus.config import ModbusBus, ModbusRtuBus, ModbusTcpBus, link_cost
from drivers.modbus.profile import ModbusProfile


class ModbusProtocol(BusProtocol[ModbusBus, ModbusProfile]):
    name = "modbus"
    title = "Modbus"
    buses = (ModbusRtuBus, ModbusTcpBus)
    profile = ModbusProfile
    takes = ("modbus",)
    commissioning = ModbusCommissioning()

    def check_address(self, address: object) -> str | None:
        return config.check_address(address)

    def open(self, bus: ModbusBus, devices: Sequence[tuple[DeviceConfig, ModbusProfile]]) -> Polled:
        from drivers.modbus.link import serial_link, tcp_link
        from drivers.modbus.reader import ModbusDevice

        if isinstance(bus, ModbusRtuBus):
            link = serial_link(bus.port, bus.baudrate, bus.parity, bus.stopbits, bus.bytesize, bus.timeout)
        else:
            link = tcp_link(bus.host, bus.port, bus.timeout, rtu_framing=bus.framing == "rtu")
        cost = link_cost(bus)
        readers = []
        for device, profile in devices:
            assert isinstance(device.address, int)  # config.check_address made sure
            readers.append(ModbusDevice(link, device.id, device.address, device.interval, profile,
                                        profile.chosen(device.points), cost, dict(device.intervals or {}),
                                        where=f"unit {device.address} on bus {bus.id}"))
        return Polled(link, readers)

    def load(self, bus: ModbusBus, devices: Sequence[tuple[DeviceConfig, ModbusProfile]]) -> BusLoad:
        from drivers.modbus.commission import bus_load

        return bus_load(bus, devices)

    def notes(self, bus: ModbusBus, device: DeviceConfig, profile: ModbusProfile) -> list[str]:
        factory = profile.workarounds.serial
        if factory and isinstance(bus, ModbusRtuBus) and (factory.baudrate, factory.parity, factory.stopbits) \
                != (bus.baudrate, bus.parity, bus.stopbits):
            return [(f"note: device {device.id}: {profile.name} leaves the factory at {factory.describe()}, "
                    f"bus {bus.id} runs {bus.baudrate} 8{bus.parity}{bus.stopbits}; right only if the "
                    "meter was set to the bus's settings")]
        return []

    def point_names(self, device: DeviceConfig, profile: ModbusProfile) -> tuple[str, ...]:
        return device.points or tuple(p.name for p in profile.points)

    def show_profile(self, profile: ModbusProfile) -> list[str]:
        quirks = profile.workarounds
        lines = []
        if quirks.serial:
            lines.append(f"factory serial settings: {quirks.serial.describe()}")
        if profile.identity:
            ident = profile.identity
            lines.append(f"identity: {ident.table} {ident.address:#x} {ident.type}"
                         + (f" x{ident.length}" if ident.length else ""))
        lines.append(f"at most {quirks.max_registers} registers per request"
                     + "".join(f"; never across {t} {a:#x}..{b - 1:#x}" for t, a, b in quirks.holes)
                     + (f"; {quirks.pause_between_requests:g} s between requests"
                        if quirks.pause_between_requests else ""))
        lines.append(f"{'point':26} {'table':8} {'address':>7} {'type':8} {'order':5} {'scale':>7} {'unit':5} kind")
        for p in profile.points:
            kind = p.type + (f"x{p.length}" if p.length else f":{p.bit}" if p.bit is not None else "")
            scale = f"{p.scale}e@{p.scale_register.address:#x}" if p.scale_register else str(p.scale)
            lines.append(f"{p.name:26} {p.table:8} {p.address:>#7x} {kind:8} {p.order:5} {scale:>7} "
                         f"{p.unit:5} {p.kind}  {p.description}")
        return lines


PROTOCOL = ModbusProtocol()
