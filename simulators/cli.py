"""`retrofit-sim`: simulated meters for tests, demos and training."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from drivers.core.errors import RetrofitError
from drivers.profile import SITE_PROFILE_DIR, load_catalogue
from simulators.meters import SimulatedDevice, model_for
from simulators.modbus_server import ModbusRtuServer, ModbusTcpServer

if TYPE_CHECKING:
    from simulators.mbus_meter import SimulatedMbusMeter
from simulators.pty import PtyPair


def _device(spec: str) -> tuple[int, str]:
    unit, sep, profile = spec.partition("=")
    if not sep or not unit.isdigit() or not 1 <= int(unit) <= 247 or not profile:
        raise argparse.ArgumentTypeError(f"expected UNIT=PROFILE with UNIT 1..247, got {spec!r}")
    return int(unit), profile


def _host_port(spec: str) -> tuple[str, int]:
    host, sep, port = spec.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {spec!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def _parser() -> argparse.ArgumentParser:
    from agent.version import VersionAction

    parser = argparse.ArgumentParser(prog="retrofit-sim", description=__doc__)
    parser.add_argument("--version", action=VersionAction)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    modbus = commands.add_parser("modbus", help="serve simulated Modbus meters over TCP and/or serial")
    modbus.add_argument("--device", action="append", type=_device, required=True, metavar="UNIT=PROFILE",
                        help="a simulated device, e.g. 1=eastron-sdm630 (repeatable)")
    modbus.add_argument("--tcp", type=_host_port, metavar="HOST:PORT", help="serve Modbus TCP here")
    modbus.add_argument("--serial", type=Path, metavar="PATH", help="serve Modbus RTU on this serial port")
    modbus.add_argument("--pty", type=Path, metavar="LINK",
                        help="make a virtual serial line (socat) and print the end for the agent: LINK")
    modbus.add_argument("--baudrate", type=int, default=9600)
    modbus.add_argument("--parity", choices=("N", "E", "O"), default="N")
    modbus.add_argument("--pace", action="store_true", help="answer at the pace of the baud rate")
    modbus.add_argument("--seed", type=int, default=0)
    mbus = commands.add_parser("mbus", help="serve simulated M-Bus heat meters on a serial line")
    mbus.add_argument("--meter", action="append", required=True, metavar="PRIMARY=ID[:FILE.hex]",
                      help="a heat meter: primary address, 8-digit identification number, and optionally "
                           "recorded telegrams to replay (hex, one frame per line)")
    where = mbus.add_mutually_exclusive_group(required=True)
    where.add_argument("--serial", type=Path, metavar="PATH", help="serve on this serial port")
    where.add_argument("--pty", type=Path, metavar="LINK", help="make a virtual serial line and print the agent's end")
    mbus.add_argument("--baudrate", type=int, default=2400)
    demo = commands.add_parser("demo", help="meters + agent + Mosquitto + a live view of the platform side")
    configs = Path(__file__).resolve().parents[1] / "configs"
    demo.add_argument("--simple", action="store_true", help="three meters instead of the building")
    demo.add_argument("--config", type=Path, help="the agent's config (default: configs/building-agent.yaml, "
                                                  "or configs/demo.yaml with --simple)")
    demo.add_argument("--building", type=Path, default=configs / "sim-building.yaml")
    demo.add_argument("--out", type=Path, default=configs.parent / ".demo",
                      help="where the summary, the plot and the buffer go (default: .demo/)")
    demo.add_argument("--duration", type=float, help="stop after this many seconds (default: until Ctrl-C)")
    # `building`, `platform` and `verify` live in their own modules (issues 8, 19).
    from simulators import building, platform, verify, wmbus_stick

    building.add_cli(commands)
    platform.add_cli(commands)
    verify.add_cli(commands)
    wmbus_stick.add_cli(commands)
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The whole command line, for scripts/manpage.py (the package's man page)."""
    return _parser()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if getattr(args, "handler", None) is not None:
            return int(args.handler(args))
        if args.command == "mbus":
            return _mbus(args)
        if args.command == "demo":
            from simulators.demo import run_building_demo, run_demo

            configs = Path(__file__).resolve().parents[1] / "configs"
            if args.simple:
                return run_demo(args.config or configs / "demo.yaml", args.duration)
            return run_building_demo(args.building, args.config or configs / "building-agent.yaml",
                                     args.duration, args.out)
        return _modbus(args)
    except RetrofitError as exc:
        print(f"retrofit-sim: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"retrofit-sim: {exc}", file=sys.stderr)
        return 1


def _mbus_meter(spec: str) -> SimulatedMbusMeter:
    from drivers.mbus.decode_json import parse_hex
    from simulators.mbus_meter import SimulatedMbusMeter

    primary, sep, rest = spec.partition("=")
    identification, _, replay_file = rest.partition(":")
    if not sep or not primary.isdigit() or not 1 <= int(primary) <= 250 or len(identification) != 8 \
            or not identification.isdigit():
        raise RetrofitError(f"--meter {spec!r}: expected PRIMARY=ID (1..250 and 8 digits), e.g. 5=12345678")
    replay = None
    if replay_file:
        lines = [line for line in Path(replay_file).read_text().splitlines() if line.strip()]
        replay = [parse_hex(line) for line in lines]
    return SimulatedMbusMeter(int(primary), identification, replay=replay)


def _mbus(args: argparse.Namespace) -> int:
    from simulators.mbus_meter import MbusLineServer

    meters = [_mbus_meter(spec) for spec in args.meter]
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    pair = None
    port = args.serial
    if args.pty:
        pair = PtyPair(args.pty.with_name(args.pty.name + ".meter"), args.pty).start()
        port = pair.meter_end
    server = MbusLineServer(meters, str(port), args.baudrate).start()
    print(f"mbus on {args.pty or port} ({args.baudrate} baud; a pty takes parity N): "
          + ", ".join(f"{m.primary}={m.identification}" for m in meters), flush=True)
    try:
        stop.wait()
    finally:
        server.stop()
        if pair:
            pair.stop()
    return 0


def _modbus(args: argparse.Namespace) -> int:
    if not (args.tcp or args.serial or args.pty):
        print("retrofit-sim: give --tcp HOST:PORT, --serial PATH or --pty LINK", file=sys.stderr)
        return 2
    catalogue = load_catalogue([SITE_PROFILE_DIR])
    units = {}
    for index, (unit, profile_name) in enumerate(args.device):
        profile = catalogue.get(profile_name)
        units[unit] = SimulatedDevice(profile, model_for(profile, seed=args.seed + index))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    closers = []
    if args.tcp:
        server = ModbusTcpServer(units, *args.tcp).start()
        closers.append(server.stop)
        print(f"modbus-tcp on {args.tcp[0]}:{server.port}: units {sorted(units)}", flush=True)
    serial_port = args.serial
    if args.pty:
        pair = PtyPair(args.pty.with_name(args.pty.name + ".meter"), args.pty).start()
        closers.append(pair.stop)
        serial_port = pair.meter_end
    if serial_port:
        rtu = ModbusRtuServer(units, str(serial_port), args.baudrate, args.parity, pace=args.pace).start()
        closers.insert(0, rtu.stop)
        where = args.pty or serial_port
        print(f"modbus-rtu on {where} ({args.baudrate} 8{args.parity}1): units {sorted(units)}", flush=True)
    try:
        stop.wait()
    finally:
        for close in closers:
            close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
