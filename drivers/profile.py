"""Device profiles as data: the catalogue every protocol's profiles live in.

A profile is one YAML file per product (drivers/profiles/NAME.yaml): the
data sheet it was written from, its points, its quirks and its test vectors.
What a point is depends on the protocol (a register, an M-Bus record), so
the file's ``protocol:`` picks the profile record of that protocol from the
registry. Bundled profiles ship as package data; a technician adds or
overrides one with a file in /etc/retrofit-agent/profiles/ or a configured
``profile_dirs`` entry.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from drivers import registry
from drivers.core.errors import ProfileError
from drivers.core.protocol import DeviceProfile
from drivers.core.records import Invalid, Problem, dotted, validate
from drivers.core.yamlsource import YamlProblem, load_plain

SITE_PROFILE_DIR = Path("/etc/retrofit-agent/profiles")

def _read_yaml(text: str, origin: str) -> DeviceProfile:
    try:
        raw = load_plain(text)
    except YamlProblem as problem:
        raise ProfileError(f"{origin}:{problem.line}: not a valid profile: {problem.message}") from None
    if not isinstance(raw, dict):
        raise ProfileError(f"{origin}: a profile is a mapping with name, points, ...")
    defaults = raw.pop("defaults", {}) or {}
    points_raw = raw.get("points")
    if isinstance(points_raw, dict):
        points = []
        for name, spec in points_raw.items():
            if not isinstance(spec, dict):
                raise ProfileError(f"{origin}: point {name!r} must be a mapping")
            points.append({**defaults, **spec, "name": name})
        raw["points"] = points
    raw.setdefault("origin", origin)
    types = registry.profile_types()
    protocol = raw.get("protocol", registry.DEFAULT_PROFILE_PROTOCOL)
    try:
        if not isinstance(protocol, str) or protocol not in types:
            choices = ", ".join(repr(name) for name in types)
            raise Invalid([Problem(("protocol",), "invalid", f"expected one of {choices} (got {protocol!r})")])
        profile: DeviceProfile = validate(types[protocol], raw)
    except Invalid as exc:
        problems = "; ".join(f"{_point_path(p.loc, raw)}: {p.message}" for p in exc.problems)
        raise ProfileError(f"{origin}: {problems}") from None
    return profile


def _point_path(loc: tuple[str | int, ...], raw: dict[str, object]) -> str:
    """points[3].type -> points.voltage_l1.type: as the file spells it."""
    points = raw.get("points")
    if len(loc) >= 2 and loc[0] == "points" and isinstance(loc[1], int) and isinstance(points, list):
        name = points[loc[1]].get("name") if isinstance(points[loc[1]], dict) else None
        if name is not None:
            return dotted(("points", str(name), *loc[2:]))
    return dotted(loc)


def load_profile_file(path: Path) -> DeviceProfile:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ProfileError(f"{path}: cannot read profile: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ProfileError(f"{path}: not UTF-8 text (byte {exc.start}); save the profile as UTF-8") from None
    return _read_yaml(text, str(path))


@dataclass
class Catalogue:
    """Every profile known to this agent, bundled first, site files overriding.

    A bundled profile is parsed when it is first asked for (its file is named
    after it): a gateway uses two or three of them, and parsing all costs
    about 1 MB of memory and 0.1 s at start-up."""

    profiles: dict[str, DeviceProfile] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    # Site files that could not be read, by the name their file gives
    # (profiles are named after their file): a device using that name must
    # not silently get the bundled profile the file meant to override.
    broken: dict[str, str] = field(default_factory=dict)
    pending: dict[str, Callable[[], DeviceProfile]] = field(default_factory=dict)
    _resolving: set[str] = field(default_factory=set)  # a profile referring back to itself ends here

    def get(self, name: str) -> DeviceProfile:
        if name not in self.profiles and name in self.pending:
            profile = self.pending.pop(name)()
            if profile.name != name:
                raise ProfileError(f"{profile.origin}: the file of profile {name!r} names {profile.name!r}")
            self.profiles[name] = profile
        try:
            profile = self.profiles[name]
        except KeyError:
            raise ProfileError(f"unknown profile {name!r}; known: {', '.join(self.names())}") from None
        # A profile that refers to others (an M-Bus profile's choose_from) gets them once, here.
        resolve = getattr(profile, "resolve", None)
        if callable(resolve) and name not in self._resolving:
            self._resolving.add(name)
            try:
                resolved: DeviceProfile = resolve(self.get)
            except ValueError as exc:
                raise ProfileError(f"{profile.origin}: {exc}") from None
            finally:
                self._resolving.discard(name)
            self.profiles[name] = profile = resolved
        return profile

    def __contains__(self, name: object) -> bool:
        return name in self.profiles or name in self.pending

    def names(self) -> list[str]:
        return sorted({*self.profiles, *self.pending})


def bundled_profile_texts() -> Mapping[str, str]:
    return {entry.name: entry.read_text(encoding="utf-8") for entry in _bundled_entries()}


# Installed as package data beside this module (pyproject.toml), never zipped.
# A plain path, not importlib.resources: that would import tempfile, shutil,
# bz2 and lzma, 1 MB of a gateway's memory for a directory listing.
BUNDLED_DIR = Path(__file__).resolve().parent / "profiles"


def _bundled_entries() -> list[Path]:
    return sorted(BUNDLED_DIR.glob("*.yaml"))


def _bundled_reader(entry: Path) -> Callable[[], DeviceProfile]:
    return lambda: _read_yaml(entry.read_text(encoding="utf-8"), f"bundled:{entry.name}")


def load_catalogue(extra_dirs: Iterable[Path] = ()) -> Catalogue:
    """Bundled profiles, then each directory in order; a later file wins.

    A broken site profile is reported, not fatal for the others: `check`
    prints the problem as a warning, and a device that uses it is an error.
    """
    catalogue = Catalogue()
    for entry in _bundled_entries():
        catalogue.pending[entry.name.removesuffix(".yaml")] = _bundled_reader(entry)
    for directory in extra_dirs:
        if not directory.is_dir():
            continue
        for path in sorted(directory.glob("*.yaml")):
            try:
                profile = load_profile_file(path)
            except ProfileError as exc:
                catalogue.problems.append(str(exc))
                catalogue.broken[path.stem] = str(exc)
                continue
            catalogue.profiles[profile.name] = profile
            catalogue.pending.pop(profile.name, None)
            catalogue.broken.pop(profile.name, None)
    return catalogue
