"""`retrofit-agent`: the command line technicians and systemd use.

Exit codes: 0 success, 1 runtime failure, 2 usage error, 75 (EX_TEMPFAIL)
when another agent already runs on the same buffer, 78 (EX_CONFIG) for a bad
configuration, so systemd's RestartPreventExitStatus=78 stops a crash loop on
a typo. A person never sees a Python traceback for bad input.
"""

from __future__ import annotations

import argparse
import dataclasses
import faulthandler
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from drivers.core.errors import ConfigError, ProfileError, RetrofitError

if TYPE_CHECKING:
    from drivers.profile import SerialDefaults

EX_OK = 0
EX_FAILURE = 1
EX_USAGE = 2
EX_ALREADY_RUNNING = 75  # EX_TEMPFAIL: it may start once the other one stopped
EX_CONFIG = 78
DEFAULT_CONFIG = Path("/etc/retrofit-agent/config.yaml")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="retrofit-agent", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run the daemon in the foreground (systemd runs this)")
    run.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    run.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info")

    check = commands.add_parser("check", help="validate a config and summarise it")
    check.add_argument("--config", type=Path, default=DEFAULT_CONFIG)

    profiles = commands.add_parser("profiles", help="list or show device profiles")
    profiles.add_argument("action", choices=("list", "show"))
    profiles.add_argument("name", nargs="?")
    profiles.add_argument("--config", type=Path, help="also load the config's profile_dirs")

    status = commands.add_parser("status", help="show the running daemon's health")
    status.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    status.add_argument("--json", action="store_true", help="print the raw snapshot")

    commands.add_parser("schema", help="print the JSON Schema of the config (for editors)")

    probe = commands.add_parser("probe", help="read one device once and show values and raw registers")
    probe.add_argument("--config", type=Path, help="take bus settings and profile from this config")
    probe.add_argument("--device", help="device id in the config")
    _bus_arguments(probe)
    probe.add_argument("--address", type=int, help="unit id (without --config)")
    probe.add_argument("--profile", help="profile name (without --config)")

    scan = commands.add_parser("scan", help="find the unit ids that answer on a Modbus bus")
    _bus_arguments(scan)
    scan.add_argument("--bus", help="a bus id from --config instead of the settings below")
    scan.add_argument("--config", type=Path)
    scan.add_argument("--addresses", default="1-247", help="e.g. 1-247 or 1,2,10-20 (default 1-247)")
    scan.add_argument("--baudrates", default=None,
                      help="serial: comma list to try (default 9600,19200,2400,4800,38400,115200)")
    scan.add_argument("--parities", default="N,E", help="serial: comma list to try (default N,E)")
    scan.add_argument("--table", choices=("holding", "input"), default="holding")
    scan.add_argument("--register", type=int, default=0, help="register to read (default 0)")
    scan.add_argument("--mbus", action="store_true", help="the --serial port (or socket://host:port) is an M-Bus line")
    scan.add_argument("--secondary", action="store_true", help="M-Bus: search by secondary address (wildcards)")

    mbus = commands.add_parser("mbus", help="M-Bus tools")
    mbus_commands = mbus.add_subparsers(dest="mbus_command", required=True, metavar="ACTION")
    decode = mbus_commands.add_parser("decode", help="decode a telegram written as hex (file or -)")
    decode.add_argument("file", nargs="?", default="-")
    return parser


def _bus_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--serial", metavar="PORT", help="serial port, e.g. /dev/ttyUSB0")
    parser.add_argument("--baudrate", type=int, help="default 9600 (Modbus), 2400 (M-Bus)")
    parser.add_argument("--parity", choices=("N", "E", "O"), help="default N (Modbus), E (M-Bus)")
    parser.add_argument("--stopbits", type=int, choices=(1, 2), help="default 1")
    parser.add_argument("--host", help="Modbus TCP host")
    parser.add_argument("--port", type=int, default=502, help="Modbus TCP port")
    parser.add_argument("--timeout", type=float, default=0.5, help="seconds per request")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EX_CONFIG
    except RetrofitError as exc:
        print(f"retrofit-agent: {exc}", file=sys.stderr)
        return EX_FAILURE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `retrofit-agent check | head`: the reader left; say nothing more.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EX_OK


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "check":
        return _check(args.config)
    if args.command == "run":
        return _run(args.config, args.log_level)
    if args.command == "profiles":
        return _profiles(args.action, args.name, args.config)
    if args.command == "probe":
        return _probe(args)
    if args.command == "scan":
        return _scan(args)
    if args.command == "status":
        return _status(args.config, args.json)
    if args.command == "schema":
        from agent.config import config_schema

        print(json.dumps(config_schema(), indent=2))
        return EX_OK
    if args.command == "mbus":
        return _mbus_decode(args.file)
    raise AssertionError(args.command)


def _check(path: Path) -> int:
    from agent.commission import load_warnings
    from agent.config import check_files, load_config, summarise

    loaded = load_config(path)
    check_files(loaded)
    print("\n".join(summarise(loaded)))
    print("\n".join(load_warnings(loaded.config, loaded.catalogue)))
    for warning in loaded.warnings:
        print(f"warning: {warning}")
    return EX_OK


def _run(path: Path, log_level: str) -> int:
    # First thing, before the imports, the config and the buffer (a few
    # tenths of a second): a stop signal from here on is a clean stop.
    from agent import lifecycle

    stop = lifecycle.StopRequest().install()
    lifecycle.private_umask()  # before any file is made: the buffer, its WAL, the status file
    from agent import failpoints, logs

    # The watchdog's SIGABRT (and a crash) dump every thread's stack to the
    # journal before systemd restarts the service.
    faulthandler.enable(all_threads=True)
    logs.configure(log_level)
    log = logs.get("agent")

    def step(name: str) -> None:
        stop.check(name, failpoints.ACTIVE, lambda held: log.warning("failpoint.holding", step=held))

    try:
        step("imports")
        from agent.app import Agent
        from agent.config import check_files, load_config

        step("config")
        loaded = load_config(path)
        check_files(loaded)
        for warning in loaded.warnings:
            log.warning("config.warning", warning=warning)
        step("lock")
        try:  # before the buffer is opened; held until the process ends
            lock = lifecycle.BufferLock(loaded.config.buffer.path)
        except lifecycle.AlreadyRunning as exc:
            print(f"retrofit-agent: {exc}", file=sys.stderr)
            return EX_ALREADY_RUNNING
        agent = Agent(loaded, stop=stop)
    except lifecycle.StartupInterrupted as interrupted:
        log.info("agent.stopped", signal=stop.signal, during="start-up", step=interrupted.step)
        return EX_OK
    try:
        return agent.run()
    finally:
        lock.release()  # after the buffer is closed (the kernel would at exit anyway)


def _adhoc_bus(args: argparse.Namespace, serial: SerialDefaults | None = None):  # noqa: ANN202
    """The bus the command line describes; unset serial settings come from the
    profile's factory settings when it has them, else 9600 8N1."""
    from agent.config import ModbusRtuBus, ModbusTcpBus

    if args.serial:
        return ModbusRtuBus(id="probe", type="modbus-rtu", port=args.serial,
                            baudrate=args.baudrate or (serial.baudrate if serial else 9600),
                            parity=args.parity or (serial.parity if serial else "N"),
                            stopbits=args.stopbits or (serial.stopbits if serial else 1), timeout=args.timeout)
    if args.host:
        return ModbusTcpBus(id="probe", type="modbus-tcp", host=args.host, port=args.port, timeout=args.timeout)
    raise ConfigError(["give --config with --device, or --serial PORT / --host HOST"])


def _probe(args: argparse.Namespace) -> int:
    from agent.commission import format_probe, link_cost, open_link, probe
    from drivers.profile import SITE_PROFILE_DIR, load_catalogue

    if args.config:
        from agent.config import load_config

        loaded = load_config(args.config)
        device = next((d for d in loaded.config.devices if d.id == args.device), None)
        if device is None:
            known = ", ".join(d.id for d in loaded.config.devices)
            raise ConfigError([f"{args.config}: no device {args.device!r}; devices: {known}"])
        bus, unit, profile = loaded.config.bus(device.bus), device.address, loaded.catalogue.get(device.profile)
        points = device.points
    else:
        if args.address is None or not args.profile:
            raise ConfigError(["without --config, give --address and --profile"])
        profile, points = load_catalogue([SITE_PROFILE_DIR]).get(args.profile), None
        bus, unit = _adhoc_bus(args, profile.workarounds.serial), args.address
    if profile.protocol == "mbus":
        raise ConfigError([f"probe reads Modbus devices; {profile.name} is an M-Bus profile: use "
                           "`retrofit-agent scan --mbus` or `retrofit-agent mbus decode` on a captured telegram"])
    link = open_link(bus)
    try:
        rows = probe(link, unit, profile, link_cost(bus), points)
    finally:
        link.close()
    print(f"{profile.name} at unit {unit} on {bus.id}:")
    print(format_probe(rows))
    return EX_OK if all(not r.error for r in rows) else EX_FAILURE


def _parse_units(text: str, highest: int = 247) -> list[int]:
    units: list[int] = []
    for part in text.split(","):
        low, sep, high = part.strip().partition("-")
        try:
            first, last = int(low), int(high) if sep else int(low)
        except ValueError:
            raise ConfigError([f"--addresses: cannot read {part!r}; use e.g. 1-247 or 1,5,10-20"]) from None
        if not (1 <= first <= last <= highest):
            raise ConfigError([f"--addresses: {part!r} is outside 1..{highest}"])
        units.extend(range(first, last + 1))
    return units


def _scan_mbus(args: argparse.Namespace) -> int:
    from agent.commission import describe_meter, mbus_scan_primary, mbus_scan_secondary
    from drivers.mbus_link import MbusLink

    port, baudrate, parity = args.serial, args.baudrate or 2400, args.parity or "E"
    if args.config and args.bus:
        from agent.config import MbusBus, load_config

        bus = next((b for b in load_config(args.config).config.buses if b.id == args.bus), None)
        if not isinstance(bus, MbusBus):
            raise ConfigError([f"{args.config}: no M-Bus bus {args.bus!r}"])
        port, baudrate, parity = bus.port, bus.baudrate, bus.parity
    if not port:
        raise ConfigError(["M-Bus scan: give --serial PORT (or socket://host:port), or --config with --bus"])
    link = MbusLink(port, baudrate, parity, retries=0)
    found = 0
    try:
        if args.secondary:
            print(f"searching {port} ({baudrate} 8{parity}1) by secondary address ...", flush=True)
            for header in mbus_scan_secondary(link):
                found += 1
                print(f"  {describe_meter(header)}", flush=True)
        else:
            addresses = [a for a in _parse_units(args.addresses.replace("247", "250"), 250)]
            print(f"scanning {port} ({baudrate} 8{parity}1), primary addresses {addresses[0]}..{addresses[-1]} ...",
                  flush=True)
            for address, header in mbus_scan_primary(link, addresses):
                found += 1
                print(f"  address {address:3}: {describe_meter(header)}", flush=True)
    finally:
        link.close()
    print(f"{found} meter(s) found")
    return EX_OK if found else EX_FAILURE


def _scan(args: argparse.Namespace) -> int:
    from agent.commission import open_link, scan_units
    from agent.config import ModbusRtuBus, ModbusTcpBus

    if args.mbus:
        return _scan_mbus(args)
    units = _parse_units(args.addresses)
    if args.config and args.bus:
        from agent.config import load_config

        loaded = load_config(args.config)
        bus = next((b for b in loaded.config.buses if b.id == args.bus), None)
        if bus is None:
            raise ConfigError([f"{args.config}: no bus {args.bus!r}"])
        settings = [bus]
    else:
        bus = _adhoc_bus(args)
        settings = [bus]
        if isinstance(bus, ModbusRtuBus):
            rates = [int(r) for r in (args.baudrates or "9600,19200,2400,4800,38400,115200").split(",")]
            parities = [p.strip().upper() for p in args.parities.split(",")]
            settings = [dataclasses.replace(bus, baudrate=r, parity=p) for r in rates for p in parities]
    found = 0
    for candidate in settings:
        where = (f"{candidate.port} {candidate.baudrate} 8{candidate.parity}{candidate.stopbits}"
                 if isinstance(candidate, ModbusRtuBus) else
                 f"tcp://{candidate.host}:{candidate.port}" if isinstance(candidate, ModbusTcpBus) else "?")
        print(f"scanning {where}, units {units[0]}..{units[-1]} ...", flush=True)
        link = open_link(candidate)
        try:
            for unit, answer in scan_units(link, units, args.table, args.register):
                found += 1
                print(f"  unit {unit:3} answers ({answer}) at {where}", flush=True)
        finally:
            link.close()
    print(f"{found} device(s) found")
    return EX_OK if found else EX_FAILURE


def _status(config: Path, as_json: bool) -> int:
    from agent.config import load_config
    from agent.status_view import read_snapshot, render

    path = load_config(config).config.health.status_file
    assert path is not None
    try:
        snapshot = read_snapshot(path)
    except FileNotFoundError:
        print(f"retrofit-agent: no status at {path}: the agent has not run with this config yet", file=sys.stderr)
        return 3
    except (OSError, ValueError) as exc:
        print(f"retrofit-agent: cannot read {path}: {exc}", file=sys.stderr)
        return EX_FAILURE
    if as_json:
        print(json.dumps(snapshot, indent=2))
        return EX_OK
    text, alive = render(snapshot)
    print(text)
    return EX_OK if alive else 3


def _profiles(action: str, name: str | None, config: Path | None) -> int:
    from drivers.profile import SITE_PROFILE_DIR, load_catalogue

    if config is not None:
        from agent.config import load_config

        catalogue = load_config(config).catalogue
    else:
        catalogue = load_catalogue([SITE_PROFILE_DIR])
    for problem in catalogue.problems:
        print(f"warning: {problem}", file=sys.stderr)
    if action == "list":
        for profile_name in catalogue.names():
            profile = catalogue.get(profile_name)
            print(f"{profile_name:28} {profile.manufacturer} {profile.model} "
                  f"({len(profile.points)} points) [{profile.origin}]")
        return EX_OK
    if not name:
        raise ProfileError("profiles show needs a profile name; `retrofit-agent profiles list` shows them")
    profile = catalogue.get(name)
    print(f"{profile.name}: {profile.manufacturer} {profile.model}")
    print(f"source: {profile.source}")
    print(f"from: {profile.origin}")
    if profile.protocol == "mbus":
        print(f"{'point':26} {'quantity':24} {'storage':>7} {'tariff':>6} {'subunit':>7} {'unit':5} kind")
        for mp in profile.points:
            print(f"{mp.name:26} {mp.quantity:24} {mp.storage:>7} {mp.tariff:>6} {mp.subunit:>7} "
                  f"{mp.unit or '(sent)':5} "
                  f"{mp.kind}  {mp.description}")
        if profile.all_records:
            print("(every record of the telegram becomes a point, in its base unit; the points above are "
                  "the counters it knows by name)")
        return EX_OK
    quirks = profile.workarounds
    if quirks.serial:
        print(f"factory serial settings: {quirks.serial.describe()}")
    if profile.identity:
        ident = profile.identity
        print(f"identity: {ident.table} {ident.address:#x} {ident.type}"
              + (f" x{ident.length}" if ident.length else ""))
    print(f"at most {quirks.max_registers} registers per request"
          + "".join(f"; never across {t} {a:#x}..{b - 1:#x}" for t, a, b in quirks.holes)
          + (f"; {quirks.pause_between_requests:g} s between requests" if quirks.pause_between_requests else ""))
    print(f"{'point':26} {'table':8} {'address':>7} {'type':8} {'order':5} {'scale':>7} {'unit':5} kind")
    for p in profile.points:
        kind = p.type + (f"x{p.length}" if p.length else f":{p.bit}" if p.bit is not None else "")
        scale = f"{p.scale}e@{p.scale_register.address:#x}" if p.scale_register else str(p.scale)
        print(f"{p.name:26} {p.table:8} {p.address:>#7x} {kind:8} {p.order:5} {scale:>7} "
              f"{p.unit:5} {p.kind}  {p.description}")
    return EX_OK


def _mbus_decode(file: str) -> int:
    try:
        from drivers.mbus import parse_hex, telegram_to_json
    except ImportError:
        print("retrofit-agent: the M-Bus decoder is not available in this build", file=sys.stderr)
        return EX_FAILURE
    try:
        text = sys.stdin.read() if file == "-" else Path(file).read_text(encoding="utf-8")
    except OSError as exc:
        print(f"retrofit-agent: cannot read {file}: {exc.strerror}", file=sys.stderr)
        return EX_FAILURE
    except UnicodeDecodeError:
        print(f"retrofit-agent: {file} is not text; expected hex bytes like '68 1F 1F 68 ...'", file=sys.stderr)
        return EX_FAILURE
    print(json.dumps(telegram_to_json(parse_hex(text)), indent=2, default=str))
    return EX_OK


if __name__ == "__main__":
    sys.exit(main())
