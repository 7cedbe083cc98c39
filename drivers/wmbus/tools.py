"""`retrofit-agent wmbus decode`, registered with the agent's command line by
the protocol's commissioning (cli.py); the logic is drivers/wmbus/command.py,
imported when the command runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from drivers.core.protocol import Tool


def _arguments(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    wmbus = commands.add_parser("wmbus", help="wireless M-Bus tools")
    actions = wmbus.add_subparsers(dest="wmbus_command", required=True, metavar="ACTION")
    decode = actions.add_parser(
        "decode", help="decode telegrams, one hex telegram per line (file or -), to JSON lines")
    keys = decode.add_mutually_exclusive_group()
    keys.add_argument("--key", metavar="HEX",
                      help="one AES key for every meter (shows in shell history: prefer --keys)")
    keys.add_argument("--keys", type=Path, metavar="FILE", help="per-meter key file: meter id, key (docs/wmbus.md)")
    decode.add_argument("file", nargs="?", default="-")


def _decode(args: argparse.Namespace) -> int:
    from drivers.wmbus.command import decode_lines, keys_from_options

    keys = keys_from_options(args.key, args.keys)
    try:
        source = sys.stdin if args.file == "-" else open(args.file, encoding="utf-8")  # noqa: SIM115
    except OSError as exc:
        print(f"retrofit-agent: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return 1
    try:
        for line in decode_lines(source, keys):
            print(line, flush=True)
    except UnicodeDecodeError:
        print(f"retrofit-agent: {args.file} is not text; expected hex telegrams, one per line", file=sys.stderr)
        return 1
    finally:
        if source is not sys.stdin:
            source.close()
    return os.EX_OK


TOOLS = (Tool("wmbus", "wireless M-Bus tools", _arguments, _decode),)
