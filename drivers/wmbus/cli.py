"""The command line's side of wireless M-Bus commissioning: `scan --wmbus`,
and `wmbus decode` (tools.py). Light, as the command line is built at every
start; the scan itself is commission.py, imported when it runs.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from types import MappingProxyType

from drivers.core.errors import UsageError
from drivers.core.protocol import BusRecord, Commissioning, DeviceProfile, Tool
from drivers.wmbus.config import METER_ID, AnyWmbusBus, WmbusBus, WmbusSdrBus, parse_mode


class WmbusCommissioning(Commissioning):
    flag = "--wmbus"
    flag_help = "the bus is a wireless M-Bus receiver (a stick on --serial, or --sdr-command)"
    default_profile = None
    address_help = "the meter's 8-digit identification"
    option_defaults = MappingProxyType({"baudrate": "57600 (iM871A), 9600 (AMB8465)"})

    def add_arguments(self, verb: str, parser: argparse.ArgumentParser) -> None:
        if verb != "scan":
            return
        parser.add_argument("--stick", choices=("im871a", "amb8465"), default="im871a",
                            help="wireless M-Bus: the receiver stick on --serial (default im871a)")
        parser.add_argument("--sdr-command", metavar="COMMAND",
                            help="wireless M-Bus: an SDR decoder printing rtl_433 JSON or rtl_wmbus lines")
        parser.add_argument("--modes", default="t1",
                            help="wireless M-Bus: radio modes to listen to: t1, c1, t1,c1 or s1 (default t1)")
        parser.add_argument("--seconds", type=float, default=60.0,
                            help="wireless M-Bus: listen this long (default 60; meters send every 2-15 min)")
        parser.add_argument("--keys", type=Path, metavar="FILE",
                            help="wireless M-Bus: the key file to try (default: the bus's, or the credential)")

    def check_arguments(self, verb: str, args: argparse.Namespace, chosen: bool) -> None:
        if verb != "scan" or chosen:
            return
        if args.sdr_command or args.keys or args.modes != "t1" or args.seconds != 60.0 or args.stick != "im871a":
            raise UsageError("--stick, --sdr-command, --modes, --seconds and --keys are for wireless M-Bus: add "
                             "--wmbus")

    def parse_address(self, text: str) -> int | str:
        if not METER_ID.fullmatch(text):
            raise UsageError(f"--address {text!r}: expected a radio meter's 8-digit identification")
        return text.upper()

    def adhoc_bus(self, verb: str, args: argparse.Namespace, profile: DeviceProfile | None) -> AnyWmbusBus:
        modes = tuple(parse_mode(m.strip()) for m in str(getattr(args, "modes", "t1")).split(",") if m.strip())
        command = getattr(args, "sdr_command", None)
        try:
            if command:
                return WmbusSdrBus(id="scan", type="wmbus-sdr", command=command)
            if not args.serial:
                raise UsageError("say where the receiver is: --serial PORT (a stick), --sdr-command COMMAND, or "
                                 "--config with --bus")
            return WmbusBus(id="scan", type="wmbus", stick=getattr(args, "stick", "im871a"), port=args.serial,
                            baudrate=args.baudrate, modes=modes)
        except ValueError as exc:
            raise UsageError(str(exc)) from None

    def probe(self, bus: BusRecord, address: int | str, profile: DeviceProfile, points: Sequence[str] | None) -> bool:
        raise UsageError("a radio meter is not asked, it sends on its own: `retrofit-agent scan --wmbus --seconds N` "
                         "shows what each meter sends")

    def scan(self, args: argparse.Namespace, bus: BusRecord | None) -> bool:
        from drivers.wmbus.commission import scan_radio

        receiver = bus if bus is not None else self.adhoc_bus("scan", args, None)
        if not isinstance(receiver, WmbusBus | WmbusSdrBus):
            raise UsageError(f"bus {receiver.id} is not a wireless M-Bus receiver")
        return scan_radio(args, receiver)

    def tools(self) -> Sequence[Tool]:
        from drivers.wmbus.tools import TOOLS

        return TOOLS
