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

from drivers.core.errors import (
    ConfigError,
    DecodeError,
    InputUnreadable,
    PortUnavailable,
    ProfileError,
    RetrofitError,
    UsageError,
    did_you_mean,
)

if TYPE_CHECKING:
    from drivers.core.protocol import BusRecord, Commissioning, DeviceProfile

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

    from drivers import registry

    probe = commands.add_parser("probe", help="read one device once: its values beside what it sent")
    probe.add_argument("--config", type=Path, metavar="FILE",
                       help=f"take the bus and profile of --device from this config (default with --device: "
                            f"{DEFAULT_CONFIG})")
    probe.add_argument("--device", help="device id in the config")
    _bus_arguments(probe)
    probe.add_argument("--address", help="without --config: the device's address on its bus ("
                       + "; ".join(f"{p.title}: {p.commissioning.address_help}" for p in _commissioned()) + ")")
    probe.add_argument("--profile", help="without --config: profile name"
                       + "".join(f" ({p.title} default: {p.commissioning.default_profile})"
                                 for p in _commissioned() if p.commissioning.default_profile))

    scan = commands.add_parser("scan", help="find the devices that answer on a bus")
    _bus_arguments(scan)
    scan.add_argument("--bus", help="a bus id from the config instead of the settings above")
    scan.add_argument("--config", type=Path, metavar="FILE",
                      help=f"the config --bus is in (default with --bus: {DEFAULT_CONFIG})")
    scan.add_argument("--addresses", help="e.g. 1-247 or 1,2,10-20 (default: every address the protocol has)")
    for protocol in _commissioned():
        for verb, verb_parser in (("probe", probe), ("scan", scan)):
            if protocol.commissioning.flag:
                verb_parser.add_argument(protocol.commissioning.flag, action="store_true",
                                         help=protocol.commissioning.flag_help)
            protocol.commissioning.add_arguments(verb, verb_parser)
    for tool in registry.tools():
        tool.add_arguments(commands)
    return parser


def _config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, metavar="FILE",
                        help=f"the agent's config (default {DEFAULT_CONFIG})")


def _bus_arguments(parser: argparse.ArgumentParser) -> None:
    def defaults(option: str, fallback: str = "") -> str:
        said = [p.commissioning.option_defaults[option] for p in _commissioned()
                if option in p.commissioning.option_defaults]
        return f"default {', '.join(said)}" if said else fallback

    parser.add_argument("--serial", metavar="PORT", help="serial port, e.g. /dev/ttyUSB0 (or socket://HOST:PORT where "
                                                         "the protocol takes a TCP-to-serial gateway)")
    parser.add_argument("--baudrate", type=int, help=defaults("baudrate"))
    parser.add_argument("--parity", choices=("N", "E", "O"), help=defaults("parity"))
    parser.add_argument("--stopbits", type=int, choices=(1, 2), help="default 1")
    parser.add_argument("--host", help="TCP host (a device, or a gateway to a serial line, with --port)")
    parser.add_argument("--port", type=int, help=f"TCP port ({defaults('port')})")
    parser.add_argument("--timeout", type=_seconds,
                        help=f"seconds to wait for an answer ({defaults('timeout')})")


def _commissioned() -> list[_Commissioned]:
    """The protocols with commissioning verbs, in the registry's order."""
    from drivers import registry

    return [_Commissioned(p.name, p.title, p.takes, p.commissioning) for p in registry.PROTOCOLS
            if p.commissioning is not None]


@dataclasses.dataclass(frozen=True)
class _Commissioned:
    name: str
    title: str
    takes: tuple[str, ...]
    commissioning: Commissioning


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
    if isinstance(exc, InputUnreadable):
        return EX_NOINPUT
    if isinstance(exc, PortUnavailable):
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
    from drivers import registry

    tool = next(tool for tool in registry.tools() if tool.name == args.command)
    return tool.run(args)


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


def _from_config(path: Path | None, kind: str, wanted: str, known: list[str]) -> NoReturn:
    """Say which ids the config has when the one asked for is not there."""
    raise UsageError(f"{path or DEFAULT_CONFIG} has no {kind} {wanted!r}{did_you_mean(wanted, known)}; "
                     f"{kind}s there: {', '.join(known) or 'none'}")


def _flagged(args: argparse.Namespace) -> list[_Commissioned]:
    """The protocols the command line names by their option (--mbus)."""
    return [p for p in _commissioned() if p.commissioning.flag and getattr(args, _dest(p.commissioning.flag))]


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def _of_bus(bus: BusRecord) -> _Commissioned:
    from drivers import registry

    protocol = registry.for_bus(bus)
    found = next((p for p in _commissioned() if p.name == protocol.name), None)
    if found is None:
        raise UsageError(f"bus {bus.id} is {bus.type}: that protocol has no probe or scan")
    return found


def _named(args: argparse.Namespace, bus: BusRecord | None) -> _Commissioned:
    """The protocol a command is about: its bus's, else the one its option
    names, else the one a bus without such an option is."""
    flagged = _flagged(args)
    if bus is not None:
        protocol = _of_bus(bus)
        for other in flagged:
            if other is not protocol and other.name != protocol.name:
                raise UsageError(f"{other.commissioning.flag}, but bus {bus.id} is {bus.type}")
        return protocol
    if flagged:
        return flagged[0]
    return next(p for p in _commissioned() if p.commissioning.flag is None)


def _check_arguments(verb: str, args: argparse.Namespace, chosen: _Commissioned) -> None:
    for protocol in _commissioned():
        protocol.commissioning.check_arguments(verb, args, protocol.name == chosen.name)


def _probe(args: argparse.Namespace) -> int:
    from drivers.profile import SITE_PROFILE_DIR, load_catalogue

    address: int | str
    points: tuple[str, ...] | None = None
    if args.device or args.config:
        from agent.config import load_config

        if not args.device:
            raise UsageError("with --config, name the device to read: --device ID")
        loaded = load_config(args.config or DEFAULT_CONFIG)
        device = next((d for d in loaded.config.devices if d.id == args.device), None)
        if device is None:
            _from_config(args.config, "device", args.device, [d.id for d in loaded.config.devices])
        bus: BusRecord = loaded.config.bus(device.bus)
        protocol = _named(args, bus)
        address, points = device.address, device.points
        profile: DeviceProfile = loaded.catalogue.get(device.profile)
    else:
        if args.address is None:
            flags = ", or ".join(str(p.commissioning.flag) for p in _commissioned() if p.commissioning.flag)
            raise UsageError(f"without --config, give --address (and --profile, or {flags})")
        flagged = _flagged(args)
        defaults = [p for p in flagged if p.commissioning.default_profile]
        profile_name = args.profile or (defaults[0].commissioning.default_profile if defaults else None)
        if profile_name is None:
            flags = ", or ".join(str(p.commissioning.flag) for p in _commissioned() if p.commissioning.default_profile)
            raise UsageError(f"without --config, give --profile (`retrofit-agent profiles list`), or {flags}")
        catalogue = load_catalogue([SITE_PROFILE_DIR])
        if profile_name not in catalogue:
            raise UsageError(f"--profile: unknown profile {profile_name!r}"
                             f"{did_you_mean(profile_name, catalogue.names())}; "
                             "`retrofit-agent profiles list` shows them")
        profile = catalogue.get(profile_name)
        protocol = next((p for p in _commissioned() if profile.protocol in p.takes), _named(args, None))
        for other in flagged:
            if other.name != protocol.name:
                raise UsageError(f"{other.commissioning.flag}, but {profile.name} is a {protocol.title} profile")
        address = protocol.commissioning.parse_address(args.address)
        bus = protocol.commissioning.adhoc_bus("probe", args, profile)
    ok = protocol.commissioning.probe(bus, address, profile, points)
    return EX_OK if ok else EX_FAILURE


def _bus_from_config(args: argparse.Namespace) -> BusRecord | None:
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


def _scan(args: argparse.Namespace) -> int:
    bus = _bus_from_config(args)
    protocol = _named(args, bus)
    if bus is not None and args.timeout:  # a scan may wait less per unit than polling does
        bus = protocol.commissioning.with_timeout(bus, args.timeout)
    _check_arguments("scan", args, protocol)
    return EX_OK if protocol.commissioning.scan(args, bus) else EX_FAILURE


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
    from drivers import registry
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
    protocol = registry.by_name(profile.protocol)
    if protocol is not None:
        print("\n".join(protocol.show_profile(profile)))
    return EX_OK


if __name__ == "__main__":
    sys.exit(main())
