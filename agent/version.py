"""The version of the code that is running, for `--version`, logs and status.

An installed copy (pip, the Debian package, install.sh's venv) carries its
version in the distribution's metadata. A source checkout run without an
install (PYTHONPATH=.) has none: then pyproject.toml beside the code says
which release the checkout is working towards, marked as such so it is never
taken for a released build.

Looked up only when asked: importlib.metadata and tomllib pull in email,
zipfile, csv and more, which the daemon itself never needs.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

DISTRIBUTION = "retrofit-agent"
UNKNOWN = "unknown"


def version() -> str:
    from importlib import metadata

    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return checkout_version(Path(__file__).resolve().parents[1] / "pyproject.toml")


def checkout_version(pyproject: Path) -> str:
    import tomllib

    try:
        with pyproject.open("rb") as file:
            declared = tomllib.load(file)["project"]["version"]
    except (OSError, tomllib.TOMLDecodeError, KeyError, TypeError):
        return UNKNOWN
    if not isinstance(declared, str) or not declared:
        return UNKNOWN
    # A PEP 440 local label: sorts after the release it is based on, and says
    # where it came from.
    return f"{declared}{'.' if '+' in declared else '+'}checkout"


class VersionAction(argparse.Action):
    """`--version`: prints `PROG VERSION` and exits 0, like argparse's own
    action, but looks the version up only when the option is given."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 default: Any = argparse.SUPPRESS, help: str = "print the version and exit") -> None:
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        print(f"{parser.prog} {version()}")
        parser.exit()
