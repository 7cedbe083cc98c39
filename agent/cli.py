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
    from structlog.typing import FilteringBoundLogger as BoundLogger

    from agent.config import LoadedConfig
    from agent.remote_config import RemoteControl
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
    _config_parser(commands)

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
    if args.command == "config":
        return _config_command(args)
    from drivers import registry

    tool = next(tool for tool in registry.tools() if tool.name == args.command)
    return tool.run(args)


def _check(path: Path) -> int:
    from agent.commission import load_warnings
    from agent.config import load_config, summarise

    loaded = load_config(path)
    _check_files(loaded)
    print("\n".join(summarise(loaded)))
    print("\n".join(load_warnings(loaded.config, loaded.catalogue)))
    for warning in loaded.warnings:
        print(f"warning: {warning}")
    if loaded.config.remote_config.enabled:
        from agent.remote_config import describe

        print("\n".join(describe(loaded)))
    return EX_OK


def _check_files(loaded: LoadedConfig) -> None:
    """The files `run` reads at start, read now; ConfigError lists every problem."""
    from agent.config import check_files

    problems: list[str] = []
    if loaded.config.remote_config.enabled:
        # cryptography is imported only where remote configuration is on.
        from agent.remote_config import load_public_key

        try:
            load_public_key(loaded)
        except ConfigError as exc:
            problems.extend(exc.problems)
    try:
        check_files(loaded)
    except ConfigError as exc:
        problems.extend(exc.problems)
    if problems:
        raise ConfigError(problems)


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
        from agent.config import load_config

        step("config")
        local = load_config(path)
        _check_files(local)
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
        os.execv(sys.executable, argv)  # noqa: S606 - this very program again, argument by argument
    except OSError as exc:
        log.error("agent.execute_again_failed", error=str(exc),  # noqa: TRY400 - the reason is in the line
                  exit_code=EX_ALREADY_RUNNING)
    return EX_ALREADY_RUNNING


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
    from drivers.profile import SITE_PROFILE_DIR, load_catalogue

    bus = _bus_from_config(args)
    args.catalogue = load_catalogue([SITE_PROFILE_DIR])  # for the profile a scan suggests per device
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



if __name__ == "__main__":
    sys.exit(main())
