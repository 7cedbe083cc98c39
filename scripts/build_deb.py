#!/usr/bin/env python3
"""The decisions scripts/build-deb takes, in one place that tests can call.

    build_deb.py build-depends ROOT     debian/control's Build-Depends, one line
    build_deb.py version ROOT           "<pyproject version> <Debian version>",
                                        after checking that every dependency in
                                        pyproject.toml is bundled or from Debian
    build_deb.py wheels ROOT WHEELS [--copy-to DIR]
                                        exit 0 if WHEELS holds every pinned
                                        wheel with its pinned hash (and copy
                                        them to DIR), 1 if one is missing

Only the standard library: build-deb runs it with the system python3 before
anything is installed.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import shutil
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

BUNDLED = Path("debian/bundled-requirements.txt")
SYSTEM = Path("debian/system-requirements.txt")
CONTROL = Path("debian/control")
# One Architecture: all package holds only while nothing compiled is bundled.
PURE_WHEEL = re.compile(r"-(py3|py2\.py3)-none-any\.whl$")


class PackagingError(Exception):
    """What stops the build, said so a person can act on it."""


@dataclass(frozen=True)
class Pin:
    name: str
    version: str
    hashes: frozenset[str]

    def wheel_prefix(self) -> str:
        # Wheel file names normalise the project name (PEP 427 / 491).
        return f"{re.sub(r'[-_.]+', '_', self.name).lower()}-{self.version}-"


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    return normalise(re.split(r"[\s<>=!~;\[(]", requirement.strip(), maxsplit=1)[0])


def _lines(path: Path) -> list[str]:
    joined = path.read_text().replace("\\\n", " ")
    stripped = (line.split("#", 1)[0].strip() for line in joined.splitlines())
    return [line for line in stripped if line]


def bundled_pins(root: Path) -> list[Pin]:
    pins = []
    for line in _lines(root / BUNDLED):
        match = re.match(r"([A-Za-z0-9_.-]+)==(\S+)", line)
        hashes = frozenset(re.findall(r"--hash=sha256:([0-9a-f]{64})", line))
        if not match or not hashes:
            raise PackagingError(f"{BUNDLED}: {line!r}: expected NAME==VERSION --hash=sha256:...")
        pins.append(Pin(match.group(1), match.group(2), hashes))
    return pins


def system_packages(root: Path) -> dict[str, str]:
    """pyproject name -> Debian package."""
    packages = {}
    for line in _lines(root / SYSTEM):
        fields = line.split()
        if len(fields) != 2:
            raise PackagingError(f"{SYSTEM}: {line!r}: expected NAME DEBIAN-PACKAGE")
        packages[normalise(fields[0])] = fields[1]
    return packages


def control_field(root: Path, name: str, paragraph: int) -> str:
    """A field of debian/control, continuation lines joined, comments dropped."""
    text = (root / CONTROL).read_text().split("\n\n")[paragraph]
    # Continuation lines start with a blank; dpkg allows '#' comment lines among them.
    match = re.search(rf"^{name}:(.*(?:\n[ \t#].*)*)", text, re.MULTILINE)
    if not match:
        raise PackagingError(f"{CONTROL}: no {name} field")
    parts = [line.strip() for line in match.group(1).splitlines() if not line.startswith("#")]
    return " ".join(p for p in parts if p).strip().rstrip(",")


def check_dependencies(root: Path) -> None:
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    bundled = {normalise(pin.name) for pin in bundled_pins(root)}
    system = system_packages(root)
    depends = {d.strip().split()[0] for d in control_field(root, "Depends", 1).split(",") if d.strip()}
    problems = [f"{dependency!r} in pyproject.toml is neither bundled ({BUNDLED}) nor taken from Debian ({SYSTEM})"
                for dependency in project["dependencies"] if requirement_name(dependency) not in bundled | set(system)]
    problems += [f"{package} (for {name}) is missing from Depends in {CONTROL}"
                 for name, package in system.items() if package not in depends]
    problems += [f"{name} is both bundled and taken from Debian" for name in sorted(bundled & set(system))]
    if problems:
        raise PackagingError("\n".join(problems))


def debian_version(version: str) -> str:
    """PEP 440 -> Debian, sorting the same: a pre-release sorts before its
    release with '~' (1.0rc1 -> 1.0~rc1); a development release before that
    with '~~' (1.0.dev2 -> 1.0~~dev2: a bare '~dev2' would sort after
    '~a1', since 'a' < 'd'), or with '~' after a pre- or post-release
    (1.0a1.dev1 -> 1.0~a1~dev1); a post-release or a local label sorts after
    its release in both."""
    match = re.fullmatch(r"(\d+(?:\.\d+)*)((?:a|b|rc)\d+)?(\.post\d+)?(\.dev\d+)?(\+[A-Za-z0-9.]+)?", version)
    if not match:
        raise PackagingError(f"pyproject.toml: version {version!r} is not a plain PEP 440 version")
    release, pre, post, dev, local = match.groups()
    development = ""
    if dev:
        development = ("~" if pre or post else "~~") + dev[1:]
    return release + (f"~{pre}" if pre else "") + (post or "") + development + (local or "")


def pinned_wheels(root: Path, wheels: Path) -> list[Path]:
    """The wheel file for every pin, each with a pinned hash. Raises
    FileNotFoundError naming the first pin that has none."""
    found = []
    for pin in bundled_pins(root):
        matching = [w for w in sorted(wheels.glob("*.whl")) if w.name.lower().startswith(pin.wheel_prefix())
                    and hashlib.sha256(w.read_bytes()).hexdigest() in pin.hashes]
        if not matching:
            raise FileNotFoundError(f"{pin.name}=={pin.version}")
        if not PURE_WHEEL.search(matching[0].name):
            raise PackagingError(f"{matching[0].name} is not pure Python: it cannot go into an "
                                 f"Architecture: all package")
        found.append(matching[0])
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("build-depends", "version"):
        commands.add_parser(name).add_argument("root", type=Path)
    wheels = commands.add_parser("wheels")
    wheels.add_argument("root", type=Path)
    wheels.add_argument("wheels", type=Path)
    wheels.add_argument("--copy-to", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "build-depends":
            print(control_field(args.root, "Build-Depends", 0))
        elif args.command == "version":
            check_dependencies(args.root)
            version = tomllib.loads((args.root / "pyproject.toml").read_text())["project"]["version"]
            print(version, debian_version(version))
        else:
            try:
                found = pinned_wheels(args.root, args.wheels)
            except FileNotFoundError as missing:
                print(f"not yet in {args.wheels}: {missing}", file=sys.stderr)
                return 1
            if args.copy_to:
                for wheel in found:
                    shutil.copy2(wheel, args.copy_to / wheel.name)
    except PackagingError as error:
        print(error, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
