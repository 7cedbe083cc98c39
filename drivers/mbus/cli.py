"""The command line's side of M-Bus commissioning: its options, what an
address is, the line a command line describes, and `mbus decode`. Light,
as the command line is built at every start; the verbs themselves are
commission.py, imported when one runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import MappingProxyType

from drivers.core.errors import DecodeError, InputUnreadable, UsageError
from drivers.core.protocol import BusRecord, Commissioning, DeviceProfile, Tool
from drivers.mbus.config import MbusBus
from drivers.mbus.profile import MbusProfile


class MbusCommissioning(Commissioning):
    flag = "--mbus"
    flag_help = "the line is M-Bus (implied by an M-Bus profile or bus)"
    default_profile = "mbus"
    address_help = "primary address 0..250 or 8-digit secondary address"
    option_defaults = MappingProxyType(
        {"baudrate": "2400 (M-Bus)", "parity": "E (M-Bus)", "timeout": "M-Bus: from the baud rate"})

    def add_arguments(self, verb: str, parser: argparse.ArgumentParser) -> None:
        if verb != "scan":
            return
        parser.add_argument("--secondary", action="store_true",
                            help="M-Bus: search by secondary address (wildcards)")
        parser.add_argument("--max-selections", type=int, default=5000,
                            help="M-Bus secondary search: give up after this many selections (default 5000)")
        parser.add_argument("--max-time", default="30m",
                            help="M-Bus secondary search: give up after this long (default 30m)")

    def check_arguments(self, verb: str, args: argparse.Namespace, chosen: bool) -> None:
        if verb == "scan" and args.secondary and not chosen:
            raise UsageError("--secondary is for M-Bus lines: add --mbus")

    def parse_address(self, text: str) -> int | str:
        if len(text) == 8 and text.isdigit():
            return text  # a secondary address
        if not text.isdigit() or not 0 <= int(text) <= 250:
            raise UsageError(f"--address {text!r}: expected an M-Bus primary address 0..250 or an 8-digit "
                             "secondary address")
        return int(text)

    def adhoc_bus(self, verb: str, args: argparse.Namespace, profile: DeviceProfile | None) -> MbusBus:
        """The M-Bus line the command line describes: a serial port, or a
        TCP-to-serial gateway (--host and --port, or --serial socket://HOST:PORT)."""
        if args.host:
            if not args.port:
                raise UsageError("an M-Bus line behind a TCP gateway needs --port as well as --host")
            port = f"socket://{args.host}:{args.port}"
        elif args.serial:
            port = args.serial
        else:
            raise UsageError("say where the M-Bus line is: --serial PORT (or socket://HOST:PORT), or --config "
                             "with --bus")
        return MbusBus(id="probe", type="mbus", port=port, baudrate=args.baudrate or 2400,
                       parity=args.parity or "E", timeout=args.timeout, retries=1)

    def with_timeout(self, bus: BusRecord, timeout: float) -> BusRecord:
        assert isinstance(bus, MbusBus)
        return dataclasses.replace(bus, timeout=timeout)

    def probe(self, bus: BusRecord, address: int | str, profile: DeviceProfile, points: Sequence[str] | None) -> bool:
        from drivers.mbus.commission import probe_meter

        if not isinstance(bus, MbusBus) or not isinstance(profile, MbusProfile):
            raise UsageError(f"{profile.name} is an M-Bus profile, but bus {bus.id} is not an M-Bus line")
        return probe_meter(bus, address, profile)

    def scan(self, args: argparse.Namespace, bus: BusRecord | None) -> bool:
        from drivers.mbus.commission import scan_line

        line = bus if bus is not None else self.adhoc_bus("scan", args, None)
        assert isinstance(line, MbusBus)
        return scan_line(args, line)

    def tools(self) -> Sequence[Tool]:
        return (Tool("mbus", "M-Bus tools", _decode_arguments, _decode),)


def _decode_arguments(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    mbus = commands.add_parser("mbus", help="M-Bus tools")
    actions = mbus.add_subparsers(dest="mbus_command", required=True, metavar="ACTION")
    decode = actions.add_parser(
        "decode", help="decode telegrams written as hex (file or -): '68 1F 1F 68 ..' or '681F1F68..', "
                       "one telegram per line; several print as a JSON list")
    decode.add_argument("file", nargs="?", default="-")


def _decode(args: argparse.Namespace) -> int:
    from drivers.mbus.decode_json import telegrams_to_json

    file = args.file
    try:
        text = sys.stdin.read() if file == "-" else Path(file).read_text(encoding="utf-8")
    except OSError as exc:
        raise InputUnreadable(f"cannot read {file}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise DecodeError(f"{file} is not text; expected hex bytes like '68 1F 1F 68 ...'") from None
    print(json.dumps(telegrams_to_json(text), indent=2, default=str))
    return os.EX_OK
