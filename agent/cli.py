"""`retrofit-agent`: the command line technicians and systemd use.

Exit codes: 0 success, 1 runtime failure, 2 usage error, 78 (EX_CONFIG) for
a bad configuration, so systemd's RestartPreventExitStatus=78 stops a crash
loop on a typo. A person never sees a Python traceback for bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from agent.errors import ConfigError, ProfileError, RetrofitError

EX_OK = 0
EX_FAILURE = 1
EX_USAGE = 2
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

    mbus = commands.add_parser("mbus", help="M-Bus tools")
    mbus_commands = mbus.add_subparsers(dest="mbus_command", required=True, metavar="ACTION")
    decode = mbus_commands.add_parser("decode", help="decode a telegram written as hex (file or -)")
    decode.add_argument("file", nargs="?", default="-")
    return parser


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


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "check":
        return _check(args.config)
    if args.command == "run":
        return _run(args.config, args.log_level)
    if args.command == "profiles":
        return _profiles(args.action, args.name, args.config)
    if args.command == "status":
        return _status(args.config, args.json)
    if args.command == "schema":
        from agent.config import Config

        print(json.dumps(Config.model_json_schema(), indent=2))
        return EX_OK
    if args.command == "mbus":
        return _mbus_decode(args.file)
    raise AssertionError(args.command)


def _check(path: Path) -> int:
    from agent.config import load_config, summarise

    loaded = load_config(path)
    print("\n".join(summarise(loaded)))
    return EX_OK


def _run(path: Path, log_level: str) -> int:
    from agent import logs
    from agent.app import Agent
    from agent.config import load_config

    logs.configure(log_level)
    loaded = load_config(path)
    return Agent(loaded).run()


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
    print(f"{'point':26} {'table':8} {'address':>7} {'type':8} {'order':5} {'scale':>7} {'unit':5} kind")
    for p in profile.points:
        print(f"{p.name:26} {p.table:8} {p.address:>#7x} {p.type:8} {p.order:5} {p.scale!s:>7} "
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
