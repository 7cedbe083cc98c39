"""`retrofit-agent`: the command line technicians and systemd use.

Exit codes: 0 success; 1 the command ran but failed (a device did not
answer, a scan found nothing or stopped early); 2 a usage error; 3 `status`:
the daemon is not running; 75 (EX_TEMPFAIL) `run`: another agent already
runs on the same buffer; 65 (EX_DATAERR) the input is not what the command
reads (`mbus decode` of something that is not a telegram); 66 (EX_NOINPUT)
the input file cannot be read; 69 (EX_UNAVAILABLE) the port or host cannot
be opened at all; 78 (EX_CONFIG) a bad configuration, so systemd's
RestartPreventExitStatus=78 stops a crash loop on a typo. A person never
sees a Python traceback for bad input: every error is one line."""

from __future__ import annotations

import argparse
import dataclasses
import faulthandler
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from drivers.core.errors import ConfigError, DecodeError, ProfileError, RetrofitError, did_you_mean

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger as BoundLogger

    from agent.commission import Progress
    from agent.config import LoadedConfig, MbusBus, ModbusRtuBus, ModbusTcpBus
    from agent.remote_config import RemoteControl
    from drivers.mbus_link import MbusLink
    from drivers.profile import AnyProfile, SerialDefaults

EX_OK = 0
EX_FAILURE = 1
EX_USAGE = 2
EX_NOT_RUNNING = 3
EX_DATAERR = 65
EX_NOINPUT = 66
EX_UNAVAILABLE = 69
EX_ALREADY_RUNNING = 75  # EX_TEMPFAIL: it may start once the other one stopped
EX_CONFIG = 78
DEFAULT_CONFIG = Path("/etc/retrofit-agent/config.yaml")


class UsageError(RetrofitError):
    """The command line itself is wrong (missing or contradicting options)."""


def _parser() -> argparse.ArgumentParser:
    from agent.version import VersionAction

    parser = argparse.ArgumentParser(
        prog="retrofit-agent", description=__doc__.splitlines()[0],
        epilog=f"Commands that read a config take --config FILE; run, check and status default to "
               f"{DEFAULT_CONFIG}. 'retrofit-agent COMMAND --help' lists a command's options.")
    parser.add_argument("--version", action=VersionAction)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run the daemon in the foreground (systemd runs this)")
    _config_argument(run)
    run.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info")

    check = commands.add_parser("check", help="validate a config and summarise it")
    _config_argument(check)

    profiles = commands.add_parser("profiles", help="list or show device profiles")
    profiles.add_argument("action", choices=("list", "show"))
    profiles.add_argument("name", nargs="?")
    profiles.add_argument("--config", type=Path, metavar="FILE", help="also load the config's profile_dirs")

    status = commands.add_parser("status", help="show the running daemon's health")
    _config_argument(status)
    status.add_argument("--json", action="store_true", help="print the raw snapshot")

    commands.add_parser("schema", help="print the JSON Schema of the config (for editors)")
    _config_parser(commands)

    probe = commands.add_parser("probe", help="read one device once: values beside raw registers or M-Bus records")
    probe.add_argument("--config", type=Path, metavar="FILE",
                       help=f"take the bus and profile of --device from this config (default with --device: "
                            f"{DEFAULT_CONFIG})")
    probe.add_argument("--device", help="device id in the config")
    _bus_arguments(probe)
    probe.add_argument("--address", help="without --config: Modbus unit id; M-Bus primary address (0-250) or "
                                         "8-digit secondary address")
    probe.add_argument("--profile", help="without --config: profile name (M-Bus default: mbus, every record)")
    probe.add_argument("--mbus", action="store_true", help="the line is M-Bus (implied by an M-Bus profile)")

    scan = commands.add_parser("scan", help="find the devices that answer on a Modbus bus or an M-Bus line")
    _bus_arguments(scan)
    scan.add_argument("--bus", help="a bus id from the config instead of the settings above")
    scan.add_argument("--config", type=Path, metavar="FILE",
                      help=f"the config --bus is in (default with --bus: {DEFAULT_CONFIG})")
    scan.add_argument("--addresses", help="e.g. 1-247 or 1,2,10-20 (default 1-247; M-Bus primary: 0-250)")
    scan.add_argument("--baudrates", default=None,
                      help="serial: comma list to try (default 9600,19200,2400,4800,38400,115200)")
    scan.add_argument("--parities", default="N,E", help="serial: comma list to try (default N,E)")
    scan.add_argument("--table", choices=("holding", "input"), default="holding")
    scan.add_argument("--register", type=int, default=0, help="register to read (default 0)")
    scan.add_argument("--mbus", action="store_true", help="the --serial port (or socket://host:port) is an M-Bus line")
    scan.add_argument("--secondary", action="store_true", help="M-Bus: search by secondary address (wildcards)")
    scan.add_argument("--max-selections", type=int, default=5000,
                      help="M-Bus secondary search: give up after this many selections (default 5000)")
    scan.add_argument("--max-time", default="30m",
                      help="M-Bus secondary search: give up after this long (default 30m)")

    mbus = commands.add_parser("mbus", help="M-Bus tools")
    mbus_commands = mbus.add_subparsers(dest="mbus_command", required=True, metavar="ACTION")
    decode = mbus_commands.add_parser(
        "decode", help="decode telegrams written as hex (file or -): '68 1F 1F 68 ..' or '681F1F68..', "
                       "one telegram per line; several print as a JSON list")
    decode.add_argument("file", nargs="?", default="-")
    _wmbus_parser(commands)
    return parser


def _config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, metavar="FILE",
                        help=f"the agent's config (default {DEFAULT_CONFIG})")


def _bus_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--serial", metavar="PORT", help="serial port, e.g. /dev/ttyUSB0 (M-Bus also socket://HOST:PORT)")
    parser.add_argument("--baudrate", type=int, help="default 9600 (Modbus), 2400 (M-Bus)")
    parser.add_argument("--parity", choices=("N", "E", "O"), help="default N (Modbus), E (M-Bus)")
    parser.add_argument("--stopbits", type=int, choices=(1, 2), help="default 1")
    parser.add_argument("--host", help="Modbus TCP host (M-Bus: a TCP-to-serial gateway, with --port)")
    parser.add_argument("--port", type=int, help="TCP port (Modbus default 502)")
    parser.add_argument("--timeout", type=_seconds,
                        help="seconds to wait for an answer (default: scan 0.3 on TCP, 0.5 on serial; probe 0.5; "
                             "M-Bus from the baud rate)")


def _seconds(text: str) -> float:
    """A number of seconds for --timeout; argparse makes a refusal a usage error (exit 2)."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds <= 3600:
        raise argparse.ArgumentTypeError(f"expected seconds above 0 and at most 3600, e.g. 0.5 (got {text!r})")
    return seconds


def build_parser() -> argparse.ArgumentParser:
    """The whole command line, for scripts/manpage.py (the package's man page)."""
    return _parser()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EX_CONFIG
    except RetrofitError as exc:
        print(f"retrofit-agent {args.command}: {exc}", file=sys.stderr)
        return _exit_code(exc)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `retrofit-agent check | head`: the reader left; say nothing more.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EX_OK


def _exit_code(exc: RetrofitError) -> int:
    if isinstance(exc, UsageError):
        return EX_USAGE
    if isinstance(exc, DecodeError):
        return EX_DATAERR
    if getattr(exc, "port_unavailable", False):  # agent.commission.PortUnavailable, not imported for `run`
        return EX_UNAVAILABLE
    return EX_FAILURE


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
    if args.command == "wmbus":
        return _wmbus_decode(args)
    if args.command == "config":
        return _config_command(args)
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
    if loaded.config.remote_config.enabled:
        from agent.remote_config import describe

        print("\n".join(describe(loaded)))
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
        local = load_config(path)
        check_files(local)
        for warning in local.warnings:
            log.warning("config.warning", warning=warning)
        step("lock")
        try:  # before the buffer is opened; held until the process ends
            lock = lifecycle.BufferLock(local.config.buffer.path)
        except lifecycle.AlreadyRunning as exc:
            print(f"retrofit-agent: {exc}", file=sys.stderr)
            return EX_ALREADY_RUNNING
        # Under the lock: choosing moves remote configuration's ledger on (a
        # start counted, a trial rolled back), which a second agent refused
        # above must not do. A pushed config keeps the buffer, so the lock is its too.
        loaded, remote = _choose_config(local)
        try:
            agent = Agent(loaded, stop=stop, remote=remote)
        except RetrofitError as exc:
            if remote is None or remote.trying is None:
                raise
            # The config being tried cannot even start the agent: back to the one before, at once.
            remote.roll_back_now([f"the agent could not start under it: {exc}"])
            lock.release()
            return _execute_again(log, "roll back the pushed config")
    except lifecycle.StartupInterrupted as interrupted:
        log.info("agent.stopped", signal=stop.signal, during="start-up", step=interrupted.step)
        return EX_OK
    try:
        code = agent.run()
    finally:
        lock.release()  # after the buffer is closed (the kernel would at exit anyway)
    if agent.restart is not None and stop.signal is None:
        return _execute_again(log, agent.restart)
    return code


def _choose_config(local: LoadedConfig) -> tuple[LoadedConfig, RemoteControl | None]:
    """The local config, or with remote configuration on, the pushed one in force or being tried."""
    if not local.config.remote_config.enabled:
        return local, None
    from agent.remote_config import load_public_key, select

    selection = select(local, load_public_key(local))
    return selection.loaded, selection.control


def _execute_again(log: BoundLogger, why: str) -> int:
    """Start again under another config: the same process executes itself
    again, so the pid systemd watches (NotifyAccess=main) stays and a
    hand-started agent keeps running too; the buffer was closed as at any
    stop. Returns only when that fails: then exit 75, and systemd
    (Restart=on-failure) starts the agent again."""
    argv = [sys.executable, *sys.orig_argv[1:]]
    log.info("agent.executing_again", why=why, argv=argv)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execv(sys.executable, argv)
    except OSError as exc:
        log.error("agent.execute_again_failed", error=str(exc), exit_code=EX_ALREADY_RUNNING)
    return EX_ALREADY_RUNNING


def _adhoc_bus(args: argparse.Namespace, serial: SerialDefaults | None = None,
               timeout: float = 0.5) -> ModbusRtuBus | ModbusTcpBus:
    """The Modbus bus the command line describes; unset serial settings come
    from the profile's factory settings when it has them, else 9600 8N1."""
    from agent.config import ModbusRtuBus, ModbusTcpBus

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


def _adhoc_mbus_bus(args: argparse.Namespace) -> MbusBus:
    """The M-Bus line the command line describes: a serial port, or a
    TCP-to-serial gateway (--host and --port, or --serial socket://HOST:PORT)."""
    from agent.config import MbusBus

    if args.host:
        if not args.port:
            raise UsageError("an M-Bus line behind a TCP gateway needs --port as well as --host")
        port = f"socket://{args.host}:{args.port}"
    elif args.serial:
        port = args.serial
    else:
        raise UsageError("say where the M-Bus line is: --serial PORT (or socket://HOST:PORT), or --config with --bus")
    return MbusBus(id="probe", type="mbus", port=port, baudrate=args.baudrate or 2400,
                   parity=args.parity or "E", timeout=args.timeout, retries=1)


def _from_config(path: Path | None, kind: str, wanted: str, known: list[str]) -> NoReturn:
    """Say which ids the config has when the one asked for is not there."""
    raise UsageError(f"{path or DEFAULT_CONFIG} has no {kind} {wanted!r}{did_you_mean(wanted, known)}; "
                     f"{kind}s there: {', '.join(known) or 'none'}")


def _probe(args: argparse.Namespace) -> int:
    from drivers.profile import SITE_PROFILE_DIR, load_catalogue

    address: int | str
    if args.device or args.config:
        from agent.config import load_config

        if not args.device:
            raise UsageError("with --config, name the device to read: --device ID")
        loaded = load_config(args.config or DEFAULT_CONFIG)
        device = next((d for d in loaded.config.devices if d.id == args.device), None)
        if device is None:
            _from_config(args.config, "device", args.device, [d.id for d in loaded.config.devices])
        bus, address = loaded.config.bus(device.bus), device.address
        profile, points = loaded.catalogue.get(device.profile), device.points
    else:
        if args.address is None:
            raise UsageError("without --config, give --address (and --profile, or --mbus)")
        profile_name = args.profile or ("mbus" if args.mbus else None)
        if profile_name is None:
            raise UsageError("without --config, give --profile (`retrofit-agent profiles list`), or --mbus")
        catalogue = load_catalogue([SITE_PROFILE_DIR])
        if profile_name not in catalogue:
            raise UsageError(f"--profile: unknown profile {profile_name!r}{did_you_mean(profile_name, catalogue.names())}; "
                             "`retrofit-agent profiles list` shows them")
        profile, points = catalogue.get(profile_name), None
        if args.mbus and profile.protocol != "mbus":
            raise UsageError(f"--mbus, but {profile.name} is a Modbus profile")
        address = _parse_address(args.address, profile.protocol == "mbus")
        bus = (_adhoc_mbus_bus(args) if profile.protocol == "mbus"
               else _adhoc_bus(args, profile.workarounds.serial))
    if profile.protocol == "mbus":
        return _probe_mbus(bus, address, profile)  # type: ignore[arg-type]
    return _probe_modbus(bus, address, profile, points)  # type: ignore[arg-type]


def _parse_address(text: str, mbus: bool) -> int | str:
    if mbus and len(text) == 8 and text.isdigit():
        return text  # a secondary address
    highest = 250 if mbus else 247
    if not text.isdigit() or not (0 if mbus else 1) <= int(text) <= highest:
        what = ("an M-Bus primary address 0..250 or an 8-digit secondary address" if mbus
                else "a Modbus unit id 1..247")
        raise UsageError(f"--address {text!r}: expected {what}")
    return int(text)


def _probe_modbus(bus: ModbusRtuBus | ModbusTcpBus, unit: int, profile: AnyProfile,
                  points: tuple[str, ...] | None) -> int:
    from agent.commission import check_bus, format_probe, link_cost, open_link, probe
    from agent.config import MbusBus

    if isinstance(bus, MbusBus):
        raise UsageError(f"{profile.name} is a Modbus profile, but bus {bus.id} is an M-Bus line")
    check_bus(bus)
    link = open_link(bus)
    try:
        rows = probe(link, unit, profile, link_cost(bus), points)  # type: ignore[arg-type]
    finally:
        link.close()
    print(f"{profile.name} at unit {unit} on {bus.id}:")
    print(format_probe(rows))
    return EX_OK if all(not r.error for r in rows) else EX_FAILURE


def _probe_mbus(bus: MbusBus, address: int | str, profile: AnyProfile) -> int:
    from agent.commission import (
        check_bus,
        describe_meter,
        format_mbus_probe,
        mbus_probe,
        refused_settings,
    )
    from agent.config import MbusBus
    from drivers.mbus_link import MbusLink
    from drivers.profile import MbusProfile

    if not isinstance(bus, MbusBus) or not isinstance(profile, MbusProfile):
        raise UsageError(f"{profile.name} is an M-Bus profile, but bus {bus.id} is not an M-Bus line")
    check_bus(bus)
    link = MbusLink(bus.port, bus.baudrate, bus.parity, bus.timeout, retries=bus.retries)
    try:
        with refused_settings(bus.port, f"{bus.baudrate} 8{bus.parity}1"):
            telegrams = link.read(address)
    finally:
        link.close()
    rows, unused = mbus_probe(telegrams, profile)
    where = f"secondary address {address}" if isinstance(address, str) else f"address {address}"
    line = bus.port if bus.id == "probe" else f"{bus.id} ({bus.port})"  # "probe": given on the command line
    print(f"{profile.name} at {where} on {line}: {describe_meter(telegrams[0].header)}; {len(telegrams)} telegram(s)")
    print(format_mbus_probe(rows, unused))
    return EX_OK if rows and all(row.value is not None for row in rows) else EX_FAILURE


def _parse_units(text: str, lowest: int = 1, highest: int = 247) -> list[int]:
    units: list[int] = []
    for part in text.split(","):
        low, sep, high = part.strip().partition("-")
        try:
            first, last = int(low), int(high) if sep else int(low)
        except ValueError:
            raise UsageError(f"--addresses: cannot read {part!r}; use e.g. 1-247 or 1,5,10-20") from None
        if not (lowest <= first <= last <= highest):
            raise UsageError(f"--addresses: {part!r} is outside {lowest}..{highest}")
        units.extend(range(first, last + 1))
    return units


def _bus_from_config(args: argparse.Namespace) -> ModbusRtuBus | ModbusTcpBus | MbusBus | None:
    """The bus --bus names in the config, or None when scanning ad hoc."""
    if not args.bus:
        if args.config:
            raise UsageError("with --config, name the bus to scan: --bus ID")
        return None
    from agent.config import load_config

    buses = load_config(args.config or DEFAULT_CONFIG).config.buses
    bus = next((b for b in buses if b.id == args.bus), None)
    if bus is None:
        _from_config(args.config, "bus", args.bus, [b.id for b in buses])
    return bus


def _scan_mbus(args: argparse.Namespace, bus: MbusBus) -> int:
    from agent.commission import Progress, check_bus, refused_settings
    from agent.config import parse_duration
    from drivers.mbus_link import MbusLink

    try:
        max_time = parse_duration(args.max_time)
    except ValueError as exc:
        raise UsageError(f"--max-time: {exc}") from None
    if args.max_selections < 1:
        raise UsageError("--max-selections must be at least 1")
    addresses = _parse_units(args.addresses or "0-250", 0, 250)
    check_bus(bus)
    link = MbusLink(bus.port, bus.baudrate, bus.parity, bus.timeout, retries=0)
    progress = Progress(sys.stderr)
    line = f"{bus.port} ({bus.baudrate} 8{bus.parity}1)"
    try:
        with refused_settings(bus.port, f"{bus.baudrate} 8{bus.parity}1"):
            incomplete = _mbus_search(args, link, line, progress, addresses, max_time)
    finally:
        progress.clear()
        link.close()
    return EX_FAILURE if incomplete else EX_OK


def _mbus_search(args: argparse.Namespace, link: MbusLink, line: str, progress: Progress, addresses: list[int],
                 max_time: float) -> bool:
    """Print the meters found on the line; True when nothing was found or the search stopped early."""
    from agent.commission import SecondarySearch, describe_meter, mbus_scan_primary

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
            return True
    else:
        print(f"scanning {line}, primary addresses {addresses[0]}..{addresses[-1]} "
              f"({link.timeout:.2f} s per silent address) ...", flush=True)
        for done, (address, header) in enumerate(mbus_scan_primary(link, addresses), 1):
            if header is not None:
                found += 1
                progress.clear()
                print(f"  address {address:3}: {describe_meter(header)}", flush=True)
            progress.update(f"address {address} ({done}/{len(addresses)}), {found} found")
        progress.clear()
    print(f"{found} meter(s) found")
    return not found


def _scan(args: argparse.Namespace) -> int:
    from agent.config import MbusBus, ModbusRtuBus

    bus = _bus_from_config(args)
    if bus is not None and args.timeout:  # a scan may wait less per unit than polling does
        bus = dataclasses.replace(bus, timeout=args.timeout)
    if isinstance(bus, MbusBus) or (bus is None and args.mbus):
        return _scan_mbus(args, bus or _adhoc_mbus_bus(args))
    if args.mbus:
        raise UsageError(f"--mbus, but bus {args.bus} is {bus.type if bus else 'not M-Bus'}")
    if args.secondary:
        raise UsageError("--secondary is for M-Bus lines: add --mbus")
    units = _parse_units(args.addresses or "1-247")
    if not 0 <= args.register <= 0xFFFF:
        raise UsageError(f"--register {args.register}: a register address is 0..65535")
    if bus is not None:
        settings = [bus]
    else:
        bus = _adhoc_bus(args, timeout=0.5 if args.serial else 0.3)
        settings = [bus]
        if isinstance(bus, ModbusRtuBus):
            try:
                rates = [int(r) for r in (args.baudrates or "9600,19200,2400,4800,38400,115200").split(",")]
            except ValueError:
                raise UsageError(f"--baudrates: cannot read {args.baudrates!r}; use e.g. 9600,19200") from None
            parities = [p.strip().upper() for p in args.parities.split(",")]
            if bad := [p for p in parities if p not in ("N", "E", "O")]:
                raise UsageError(f"--parities: {', '.join(bad)} is not N, E or O")
            rates = [args.baudrate] if args.baudrate else rates
            parities = [args.parity] if args.parity else parities
            settings = [dataclasses.replace(bus, baudrate=r, parity=p) for r in rates for p in parities]
    return _scan_modbus(args, units, settings)


def _scan_modbus(args: argparse.Namespace, units: list[int], settings: list[ModbusRtuBus | ModbusTcpBus]) -> int:
    from agent.commission import PortUnavailable, Progress, check_bus, open_link, scan_units
    from agent.config import ModbusRtuBus

    progress = Progress(sys.stderr)
    found = opened = 0
    refused: list[str] = []
    for candidate in settings:
        where = (f"{candidate.port} {candidate.baudrate} 8{candidate.parity}{candidate.stopbits}"
                 if isinstance(candidate, ModbusRtuBus) else f"tcp://{candidate.host}:{candidate.port}")
        try:
            check_bus(candidate)
        except PortUnavailable as exc:
            if not exc.settings_refused:
                raise
            refused.append(str(exc))
            print(f"skipping {where}: the port refuses these settings", flush=True)
            continue
        opened += 1
        print(f"scanning {where}, units {units[0]}..{units[-1]} ({candidate.timeout:g} s per silent unit: "
              f"at most {len(units) * candidate.timeout:.0f} s) ...", flush=True)
        link = open_link(candidate)
        try:
            for done, (unit, answer) in enumerate(scan_units(link, units, args.table, args.register), 1):
                if answer is not None:
                    found += 1
                    progress.clear()
                    print(f"  unit {unit:3} answers ({answer}) at {where}", flush=True)
                progress.update(f"unit {unit} ({done}/{len(units)}) at {where}, {found} found")
        finally:
            progress.clear()
            link.close()
    if not opened:
        raise PortUnavailable(refused[0] if len(refused) == 1 else
                              f"the port refuses every setting tried ({len(refused)}): {refused[0]}")
    print(f"{found} device(s) found")
    return EX_OK if found else EX_FAILURE


def _status(config: Path, as_json: bool) -> int:
    from agent.config import load_config
    from agent.status_view import explain_clock, read_snapshot, render

    health = load_config(config).config.health
    path = health.status_file
    assert path is not None
    try:
        snapshot = read_snapshot(path)
    except FileNotFoundError:
        print(f"retrofit-agent status: no status at {path}: the agent has not run with this config yet",
              file=sys.stderr)
        return EX_NOT_RUNNING
    except (OSError, ValueError) as exc:
        print(f"retrofit-agent status: cannot read {path}: {exc}", file=sys.stderr)
        return EX_FAILURE
    if as_json:
        print(json.dumps(snapshot, indent=2))
        return EX_OK
    try:
        text, alive = render(snapshot, clock_unknown=explain_clock(health.timesync_flag, health.use_timedatectl))
    except (TypeError, ValueError, AttributeError) as exc:  # a file of the wrong shape, not a bug here
        print(f"retrofit-agent status: cannot read {path}: not an agent status snapshot ({exc})", file=sys.stderr)
        return EX_FAILURE
    print(text)
    return EX_OK if alive else EX_NOT_RUNNING


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
    from drivers.mbus.decode_json import telegrams_to_json

    try:
        text = sys.stdin.read() if file == "-" else Path(file).read_text(encoding="utf-8")
    except OSError as exc:
        print(f"retrofit-agent mbus: cannot read {file}: {exc.strerror}", file=sys.stderr)
        return EX_NOINPUT
    except UnicodeDecodeError:
        raise DecodeError(f"{file} is not text; expected hex bytes like '68 1F 1F 68 ...'") from None
    print(json.dumps(telegrams_to_json(text), indent=2, default=str))
    return EX_OK


# --- remote configuration, the platform's side: `retrofit-agent config keygen|sign|push` ---


def _config_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    config = commands.add_parser("config", help="remote configuration, for the platform: keys, signing, pushing")
    actions = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    keygen = actions.add_parser("keygen", help="make the platform's Ed25519 signing key (and KEY.pub for gateways)")
    keygen.add_argument("key", type=Path, metavar="KEY", help="the private key file to write (never overwritten)")
    sign = actions.add_parser("sign", help="sign a config for one gateway: prints (or writes) the document")
    sign.add_argument("file", type=Path, metavar="CONFIG.yaml")
    sign.add_argument("--key", type=Path, required=True, metavar="KEY", help="the platform's private key")
    sign.add_argument("--config-version", type=int, metavar="N",
                      help="the document's version, above every one pushed before (default: the Unix time now)")
    sign.add_argument("--gateway", help="default: gateway.id in the file")
    sign.add_argument("--site", help="default: gateway.site in the file")
    sign.add_argument("--out", type=Path, metavar="FILE", help="write the document here instead of stdout")
    sign.add_argument("--no-check", action="store_true",
                      help="sign without checking the config here (site profiles or files only the gateway has)")
    push = actions.add_parser("push", help="publish a signed document to the gateway's config/set topic")
    push.add_argument("document", type=Path, metavar="DOCUMENT.json")
    push.add_argument("--broker", required=True, metavar="HOST:PORT")
    push.add_argument("--topic-prefix", default="buildings")
    push.add_argument("--username")
    push.add_argument("--password-file", type=Path, metavar="FILE")
    push.add_argument("--ca-file", type=Path, metavar="FILE", help="TLS: the broker's CA certificate")
    push.add_argument("--no-retain", action="store_true",
                      help="not retained: a gateway offline now never gets it (default: retained)")
    push.add_argument("--wait", default="0", metavar="DURATION",
                      help="wait this long for the gateway's result (e.g. 6m: its confirm_within and a restart)")


def _config_command(args: argparse.Namespace) -> int:
    from agent import remote_config
    from agent.config import parse_duration

    if args.config_command == "keygen":
        public = remote_config.generate_keys(args.key)
        print(f"private key: {args.key} (keep it on the platform, 0600)")
        print(f"public key:  {public} (for each gateway: /etc/retrofit-agent/{remote_config.CREDENTIAL}, "
              "or remote_config.public_key_file)")
        return EX_OK
    if args.config_command == "sign":
        if args.config_version is not None and args.config_version < 1:
            raise UsageError("--config-version: a whole number from 1 up")
        payload, document = remote_config.sign_file(args.key, args.file, args.config_version, args.gateway,
                                                    args.site, check=not args.no_check)
        if args.out is None:
            sys.stdout.buffer.write(payload + b"\n")
        else:
            args.out.write_bytes(payload)
            print(f"signed version {document.version} for gateway {document.gateway} at site {document.site}: "
                  f"{args.out}")
        return EX_OK
    host, sep, port = args.broker.rpartition(":")
    if not sep or not port.isdigit():
        raise UsageError(f"--broker: expected HOST:PORT, got {args.broker!r}")
    try:
        wait = parse_duration(args.wait) if args.wait not in ("0", "") else 0.0
    except ValueError as exc:
        raise UsageError(f"--wait: {exc}") from None
    try:
        payload = args.document.read_bytes()
        password = args.password_file.read_text(encoding="utf-8").strip() if args.password_file else None
    except (OSError, UnicodeDecodeError) as exc:
        print(f"retrofit-agent config: cannot read {exc}", file=sys.stderr)
        return EX_NOINPUT
    try:
        document = remote_config.read_document(payload)
    except remote_config.Refusal as refusal:
        raise DecodeError(f"{args.document} is not a signed config document: {'; '.join(refusal.reasons)}") from None

    def progress(state: dict[str, object]) -> None:
        print(f"gateway {document.gateway}: version {state.get('version')} {state.get('state')}", flush=True)

    result = remote_config.push(payload, host.strip("[]") or "127.0.0.1", int(port), args.topic_prefix, wait,
                                retain=not args.no_retain, username=args.username, password=password,
                                ca_file=args.ca_file, progress=progress)
    print(f"pushed version {document.version} to {args.topic_prefix}/{document.site}/{document.gateway}/"
          f"{remote_config.SET_TOPIC}" + ("" if args.no_retain else " (retained)"))
    if wait <= 0:
        return EX_OK
    if result is None:
        print(f"no result from gateway {document.gateway} within {args.wait}", file=sys.stderr)
        return EX_FAILURE
    for reason in result.get("reasons") or []:
        print(f"  {reason}")
    return EX_OK if result.get("state") == "applied" else EX_FAILURE


# --- wireless M-Bus: `retrofit-agent wmbus decode` (the logic is drivers/wmbus/command.py) ---


def _wmbus_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    wmbus = commands.add_parser("wmbus", help="wireless M-Bus tools")
    actions = wmbus.add_subparsers(dest="wmbus_command", required=True, metavar="ACTION")
    decode = actions.add_parser(
        "decode", help="decode telegrams, one hex telegram per line (file or -), to JSON lines")
    keys = decode.add_mutually_exclusive_group()
    keys.add_argument("--key", metavar="HEX", help="one AES key for every meter (shows in shell history: prefer --keys)")
    keys.add_argument("--keys", type=Path, metavar="FILE", help="per-meter key file: meter id, key (docs/wmbus.md)")
    decode.add_argument("file", nargs="?", default="-")


def _wmbus_decode(args: argparse.Namespace) -> int:
    from drivers.wmbus.command import decode_lines, keys_from_options

    keys = keys_from_options(args.key, args.keys)
    try:
        source = sys.stdin if args.file == "-" else open(args.file, encoding="utf-8")  # noqa: SIM115
    except OSError as exc:
        print(f"retrofit-agent: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return EX_FAILURE
    try:
        for line in decode_lines(source, keys):
            print(line, flush=True)
    except UnicodeDecodeError:
        print(f"retrofit-agent: {args.file} is not text; expected hex telegrams, one per line", file=sys.stderr)
        return EX_FAILURE
    finally:
        if source is not sys.stdin:
            source.close()
    return EX_OK


if __name__ == "__main__":
    sys.exit(main())
