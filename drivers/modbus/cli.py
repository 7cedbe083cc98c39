"""The command line's side of Modbus commissioning: its options, what an
address is, the bus a command line describes. Light, as the command line
is built at every start; the verbs themselves are commission.py, imported
when one runs.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from types import MappingProxyType

from drivers.core.errors import UsageError
from drivers.core.protocol import BusRecord, Commissioning, DeviceProfile
from drivers.modbus.config import ModbusBus, ModbusRtuBus, ModbusTcpBus
from drivers.modbus.profile import ModbusProfile, SerialDefaults


class ModbusCommissioning(Commissioning):
    flag = None  # a bus named without a protocol option is a Modbus bus
    address_help = "unit id 1..247"
    option_defaults = MappingProxyType({"baudrate": "9600 (Modbus)", "parity": "N (Modbus)", "port": "502 (Modbus TCP)",
                       "timeout": "scan 0.3 on TCP, 0.5 on serial; probe 0.5"})

    def add_arguments(self, verb: str, parser: argparse.ArgumentParser) -> None:
        if verb != "scan":
            return
        parser.add_argument("--baudrates", default=None,
                            help="serial: comma list to try (default 9600,19200,2400,4800,38400,115200)")
        parser.add_argument("--parities", default="N,E", help="serial: comma list to try (default N,E)")
        parser.add_argument("--table", choices=("holding", "input"), default="holding")
        parser.add_argument("--register", type=int, default=0, help="register to read (default 0)")

    def parse_address(self, text: str) -> int:
        if not text.isdigit() or not 1 <= int(text) <= 247:
            raise UsageError(f"--address {text!r}: expected a Modbus unit id 1..247")
        return int(text)

    def adhoc_bus(self, verb: str, args: argparse.Namespace, profile: DeviceProfile | None) -> ModbusBus:
        """The bus the command line describes; unset serial settings come
        from the profile's factory settings when it has them, else 9600 8N1."""
        serial = profile.workarounds.serial if isinstance(profile, ModbusProfile) else None
        timeout = 0.5 if verb == "probe" or args.serial else 0.3
        return adhoc_bus(args, serial, timeout)

    def with_timeout(self, bus: BusRecord, timeout: float) -> BusRecord:
        assert isinstance(bus, (ModbusRtuBus, ModbusTcpBus))
        return dataclasses.replace(bus, timeout=timeout)

    def probe(self, bus: BusRecord, address: int | str, profile: DeviceProfile, points: Sequence[str] | None) -> bool:
        from drivers.modbus.commission import probe_device

        if not isinstance(bus, (ModbusRtuBus, ModbusTcpBus)) or not isinstance(profile, ModbusProfile):
            raise UsageError(f"{profile.name} is a Modbus profile, but bus {bus.id} is not a Modbus bus")
        if not isinstance(address, int):
            raise UsageError(f"a Modbus unit id is 1..247 (got {address!r})")
        return probe_device(bus, address, profile, points)

    def scan(self, args: argparse.Namespace, bus: BusRecord | None) -> bool:
        from drivers.modbus.commission import scan_bus

        if bus is not None:
            assert isinstance(bus, (ModbusRtuBus, ModbusTcpBus))
            return scan_bus(args, bus, each_setting=False)
        return scan_bus(args, adhoc_bus(args, None, timeout=0.5 if args.serial else 0.3), each_setting=True)


def adhoc_bus(args: argparse.Namespace, serial: SerialDefaults | None, timeout: float) -> ModbusBus:
    if args.serial:
        return ModbusRtuBus(id="probe", type="modbus-rtu", port=args.serial,
                            baudrate=args.baudrate or (serial.baudrate if serial else 9600),
                            parity=args.parity or (serial.parity if serial else "N"),
                            stopbits=args.stopbits or (serial.stopbits if serial else 1),
                            timeout=args.timeout or timeout)
    if args.host:
        return ModbusTcpBus(id="probe", type="modbus-tcp", host=args.host, port=args.port or 502,
                            timeout=args.timeout or timeout)
    raise UsageError("say where: --serial PORT or --host HOST (or --config FILE with --device or --bus)")
