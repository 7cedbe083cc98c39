#!/usr/bin/env python3
"""Write the man page of `retrofit-agent` or `retrofit-sim` from its argparse
definition, so the page cannot drift from the command line it documents.

    python3 scripts/manpage.py retrofit-agent --version 0.1.0 > retrofit-agent.1

Imports the command's module (agent.cli or simulators.cli) from sys.path,
calls its build_parser() and walks the parser, its subcommands and theirs.
Argparse keeps subcommands in private attributes (_actions, _choices_actions);
they have been stable since Python 2.7, and a change shows as a failing test
(tests/test_deb.py). Default paths that point into the tree the module was
imported from are written as the installed location (--installed-at), so a
build directory never leaks into the page. Only the standard library: the
package build runs it with the system python3.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import os
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Page:
    """What argparse cannot say: where the command lives and its files."""

    module: str
    summary: str
    files: list[tuple[str, str]] = field(default_factory=list)
    see_also: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


PAGES = {
    "retrofit-agent": Page(
        module="agent.cli",
        summary="read building meters and forward every reading to the city platform",
        files=[
            ("/etc/retrofit-agent/config.yaml", ("the configuration (default of --config for run, check and "
             "status); the Debian package installs the example here once and never overwrites it")),
            ("/etc/retrofit-agent/profiles/", "device profiles added or overridden on this site"),
            ("/var/lib/retrofit-agent/buffer.db", ("the durable buffer: every reading, with its id, until the "
             "platform acknowledged it; kept across upgrades, removed only by a purge")),
            ("/run/retrofit-agent/", "the status snapshot that the status command reads"),
            ("/usr/share/retrofit-agent/configs/example.yaml", ("the example of the installed version, to "
             "compare a configuration with after an upgrade")),
            ("/usr/share/doc/retrofit-agent/", "operations guide, configuration reference, payload contract"),
        ],
        see_also=["retrofit-sim(1)", "systemctl(1)", "journalctl(1)", "systemd.exec(5)"],
        notes=[("The service runs `retrofit-agent run` as the user retrofit-agent under the hardened "
               "unit retrofit-agent.service; its logs: journalctl -u retrofit-agent -o cat.")],
    ),
    "retrofit-sim": Page(
        module="simulators.cli",
        summary="simulated meters, a simulated building and a simulated platform",
        see_also=["retrofit-agent(1)", "mosquitto(8)"],
        notes=[("The simulators only serve loopback or the addresses given to them; they are for "
               "commissioning practice, demos and tests, not for a live building.")],
    ),
}


def roff(text: str) -> str:
    """Escape text for a roff line: backslashes, minus signs (options must
    copy and paste as ASCII '-'), and a leading '.' or "'" that roff would
    take for a request."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return re.sub(r"^([.'])", r"\\&\1", text, flags=re.MULTILINE)


def prose(text: str) -> str:
    """A docstring's paragraph: `code` spans in bold, the rest as is."""
    parts = text.split("`")
    return "".join(bold(part) if index % 2 else roff(part) for index, part in enumerate(parts))


def bold(text: str) -> str:
    return f"\\fB{roff(text)}\\fR"


def italic(text: str) -> str:
    return f"\\fI{roff(text)}\\fR"


def _metavar(action: argparse.Action) -> str:
    if action.metavar is not None:
        return str(action.metavar if isinstance(action.metavar, str) else " ".join(action.metavar))
    if action.choices is not None and not isinstance(action, argparse._SubParsersAction):
        return "{" + ",".join(str(c) for c in action.choices) + "}"
    return action.dest.upper() if action.option_strings else action.dest


def invocation(action: argparse.Action) -> str:
    """`--config CONFIG`, `-h, --help`, `[NAME]` in roff."""
    meta = _metavar(action)
    if action.nargs == 0:
        value = ""
    elif action.nargs == "?":
        value = f"[{italic(meta)}]"
    elif action.nargs in ("*", "+"):
        value = f"{italic(meta)} ..."
    else:
        value = italic(meta)
    if not action.option_strings:
        return value
    names = ", ".join(bold(option) for option in action.option_strings)
    return f"{names} {value}".rstrip()


def _help(action: argparse.Action, installed: tuple[str, str] | None) -> str:
    text = (action.help or "").replace("%(default)s", str(action.default)).replace("%%", "%")
    default = action.default
    # Plain values only: a parsed default (a (host, port) tuple) reads badly.
    shown = isinstance(default, (str, int, float, Path)) and not isinstance(default, bool) \
        and default != argparse.SUPPRESS and action.nargs != 0
    if shown and "default" not in text:
        text = f"{text} (default: {default})".strip()
    if installed is not None:
        text = text.replace(*installed)
    return text


@dataclass
class Command:
    words: list[str]
    parser: argparse.ArgumentParser
    help: str


def commands(parser: argparse.ArgumentParser, words: list[str], help_text: str = "") -> Iterator[Command]:
    """The parser and every subcommand under it, depth first, in definition order."""
    yield Command(words, parser, help_text)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            for name, sub in action.choices.items():
                yield from commands(sub, [*words, name], helps.get(name, ""))


def _arguments(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions
            if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))
            and a.help != argparse.SUPPRESS]


def _synopsis(command: Command) -> str:
    parts = [bold(" ".join(command.words))]
    for action in _arguments(command.parser):
        text = invocation(action)
        parts.append(text if action.required or not action.option_strings else f"[{text}]")
    if any(isinstance(a, argparse._SubParsersAction) for a in command.parser._actions):
        parts.append(italic("COMMAND") + " ...")
    return " ".join(parts)


def _options(actions: Iterable[argparse.Action], installed: tuple[str, str] | None) -> list[str]:
    lines = []
    for action in actions:
        lines += [".TP", invocation(action), roff(_help(action, installed))]
    return lines


def render(name: str, version: str, date: str, installed_at: str | None = None) -> str:
    page = PAGES[name]
    module = importlib.import_module(page.module)
    parser: argparse.ArgumentParser = module.build_parser()
    installed = None
    if installed_at is not None:
        # The directory that holds the imported packages (agent/, simulators/).
        imported_from = str(Path(module.__file__ or "").resolve().parents[1])
        installed = (imported_from, installed_at)
    tree = list(commands(parser, [name]))
    top, subcommands = tree[0], tree[1:]
    description = parser.description or ""
    if page.module in sys.modules and (sys.modules[page.module].__doc__ or "").strip():
        # The module docstring says more than its first line (exit codes ...).
        description = (sys.modules[page.module].__doc__ or "").strip()

    out = [
        f'.TH {name.upper()} 1 "{date}" "{name} {version}" "User Commands"',
        ".SH NAME",
        f"{roff(name)} \\- {roff(page.summary)}",
        ".SH SYNOPSIS",
    ]
    for command in subcommands:
        if not any(isinstance(a, argparse._SubParsersAction) for a in command.parser._actions):
            out += [".br", _synopsis(command)]
    out += [".br", f"{bold(name)} {bold('--version')}"]
    out += [".SH DESCRIPTION"]
    for paragraph in re.split(r"\n\s*\n", description):
        out += [".PP", prose(" ".join(paragraph.split()))]
    if top.parser.epilog:
        out += [".PP", prose(" ".join(top.parser.epilog.split()))]
    out += [".SH OPTIONS", *_options(_arguments(top.parser), installed)]
    out += [".TP", invocation(next(a for a in top.parser._actions if isinstance(a, argparse._HelpAction))),
            "print a summary of the options and exit (also after any command)"]
    out += [".SH COMMANDS"]
    for command in subcommands:
        out += [f'.SS "{roff(" ".join(command.words))}"']
        if command.help:
            out += [roff(command.help[0].upper() + command.help[1:]) + "."]
        out += _options(_arguments(command.parser), installed)
    if page.notes:
        out += [".SH NOTES"]
        for note in page.notes:
            out += [".PP", prose(note)]
    if page.files:
        out += [".SH FILES"]
        for path, what in page.files:
            out += [".TP", italic(path), roff(what)]
    if page.see_also:
        refs = [re.fullmatch(r"(.+)\((\d\w*)\)", ref) for ref in page.see_also]
        out += [".SH SEE ALSO", ",\n".join(f"{bold(m.group(1))}({m.group(2)})" for m in refs if m)]
    return "\n".join(out) + "\n"


def _date() -> str:
    # Reproducible builds: dpkg-buildpackage exports the changelog's date.
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", "0")) or None
    moment = datetime.datetime.fromtimestamp(epoch, datetime.UTC) if epoch else datetime.datetime.now(datetime.UTC)
    return moment.strftime("%Y-%m-%d")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=sorted(PAGES))
    parser.add_argument("--version", required=True, help="the version the page documents")
    parser.add_argument("--installed-at", metavar="DIR",
                        help="where the imported tree is installed (e.g. /usr/lib/retrofit-agent)")
    parser.add_argument("-o", "--output", type=Path, help="write here instead of stdout")
    args = parser.parse_args(argv)
    text = render(args.command, args.version, _date(), args.installed_at)
    if args.output:
        args.output.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
