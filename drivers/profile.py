"""Device profiles: what a meter model holds where, as data.

A profile is one YAML file per product (drivers/profiles/NAME.yaml). It names
the data sheet it was written from, the defaults shared by its points, each
point's register, encoding, scale, unit and kind, the device's quirks under
``workarounds``, and test vectors (raw registers -> expected values) that the
test suite runs. Bundled profiles ship as package data; a technician adds or
overrides one with a file in /etc/retrofit-agent/profiles/ or a configured
``profile_dirs`` entry.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal

from drivers.codec import (
    REGISTER_TYPES,
    WORD_ORDERS,
    BlockDecoder,
    Decoder,
    make_block_decoder,
    make_decoder,
    register_count,
)
from drivers.core.durations import Duration
from drivers.core.errors import ProfileError
from drivers.core.records import Invalid, Rule, dotted, validate
from drivers.core.yamlsource import YamlProblem, load_plain

SITE_PROFILE_DIR = Path("/etc/retrofit-agent/profiles")

Table = Literal["holding", "input"]
Kind = Literal["counter", "gauge"]


_record = dataclass(frozen=True, kw_only=True)
Address = Annotated[int, Rule(ge=0, le=0xFFFF)]


@_record
class ScaleRegister:
    """A register holding a power-of-ten exponent for other values (SunSpec's
    ``*_SF``): value = raw x 10^exponent x scale + offset. -32768 means the
    meter does not implement the value."""

    table: Table | None = None  # the point's own table when absent
    address: Address


@_record
class ModbusPoint:
    """One quantity a Modbus meter serves."""

    name: str
    table: Table
    address: Address
    type: Literal[REGISTER_TYPES]  # type: ignore[valid-type]
    order: Literal[WORD_ORDERS] = "ABCD"  # type: ignore[valid-type]
    length: Annotated[int, Rule(ge=1, le=125)] | None = None  # registers of a string
    bit: Annotated[int, Rule(ge=0, le=15)] | None = None  # one bit of a bits register
    scale: Decimal = Decimal(1)
    offset: Decimal = Decimal(0)
    scale_register: ScaleRegister | None = None
    # The raw integer a meter serves for "not implemented" (SunSpec: -32768
    # for int16, 65535 for uint16): such a reading is sent as invalid.
    missing: int | None = None
    # The smallest step the value takes, in its unit, when the data sheet
    # states it; otherwise derived from the type and scale (see meta()).
    resolution: Annotated[Decimal, Rule(gt=0)] | None = None
    unit: str
    kind: Kind
    description: str = ""
    # Read this point no more often than this (a device polled every 10 s
    # reads its energy counters every 15 min, aligned to :00, :15, ...); a
    # device's `intervals` entry in the config overrides it.
    interval: Duration | None = None

    def __post_init__(self) -> None:
        if (self.type == "string") != (self.length is not None):
            raise ValueError(f"point {self.name}: a string needs `length` (registers), and only a string has one")
        if self.bit is not None and self.type != "bits":
            raise ValueError(f"point {self.name}: `bit` belongs to type bits")
        textual = self.type in ("string", "bits")
        if textual and (self.scale != 1 or self.offset != 0 or self.scale_register is not None):
            raise ValueError(f"point {self.name}: a {self.type} value takes no scale or offset")
        if self.missing is not None and (textual or self.type.startswith("float")):
            raise ValueError(f"point {self.name}: `missing` is for integer types (a float meter sends NaN)")
        if self.type == "string" and self.kind == "counter":
            raise ValueError(f"point {self.name}: text cannot be a counter")

    @cached_property
    def count(self) -> int:
        return register_count(self.type, self.length)

    @property
    def end(self) -> int:
        """First register address after this point."""
        return self.address + self.count

    @property
    def scale_source(self) -> tuple[Table, int] | None:
        """(table, address) of the exponent register, if the value has one."""
        if self.scale_register is None:
            return None
        return self.scale_register.table or self.table, self.scale_register.address

    def decoder(self) -> Decoder:
        """Decodes this point's own registers (without a scale register's exponent)."""
        return make_decoder(self.type, self.order, self.scale, self.offset, self.length, self.bit, self.missing)

    def block_decoder(self) -> BlockDecoder:
        """Decodes this point out of a whole request's answer (the poll's hot path)."""
        return make_block_decoder(self.type, self.order, self.scale, self.offset, self.length, self.bit,
                                  self.missing)

    def resolution_meta(self) -> dict[str, float | str] | None:
        """What the platform is told about the value's step (the retained meta message)."""
        if self.resolution is not None:
            return {"step": float(self.resolution)}
        if self.type.startswith("float"):
            return {"float": self.type}  # the step is relative: 2**-23 of the value for float32
        if self.type in ("string", "bits") or self.scale_register is not None:
            return None
        return {"step": float(self.scale)}


@_record
class IdentityRegister:
    """Where a meter keeps its serial number, to notice a meter swap."""

    table: Table = "holding"
    address: Address
    type: Literal["uint16", "uint32", "uint64", "string"] = "uint32"
    order: Literal[WORD_ORDERS] = "ABCD"  # type: ignore[valid-type]
    length: Annotated[int, Rule(ge=1, le=125)] | None = None  # registers, for a string

    def __post_init__(self) -> None:
        if (self.type == "string") != (self.length is not None):
            raise ValueError("identity: a string needs `length` (registers), and only a string has one")

    @property
    def count(self) -> int:
        return register_count(self.type, self.length)

    def decoder(self) -> Decoder:
        return make_decoder(self.type, self.order, length=self.length)


@_record
class SerialDefaults:
    """The line settings a device leaves the factory with."""

    baudrate: Literal[1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200] = 9600
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1

    def describe(self) -> str:
        return f"{self.baudrate} 8{self.parity}{self.stopbits}"


@_record
class Workarounds:
    """Device quirks, kept together instead of sprinkled over the profile."""

    max_registers: Annotated[int, Rule(ge=1, le=125)] = 125
    pause_between_requests: Annotated[float, Rule(ge=0, le=5)] = 0.0
    # Register ranges [start, end) that answer with an exception: never read across.
    holes: tuple[tuple[Table, int, int], ...] = ()
    # Factory serial settings: `check` notes a bus that differs, `probe` uses them.
    serial: SerialDefaults | None = None


@_record
class TestVector:
    """Raw registers a real meter served -> the values the profile must give."""

    registers: dict[Table, dict[int, tuple[Annotated[int, Rule(ge=0, le=0xFFFF)], ...]]]
    expect: dict[str, float | int | str]


@_record
class Profile:
    name: str
    protocol: Literal["modbus"] = "modbus"
    manufacturer: str
    model: str
    source: str
    description: str = ""
    points: tuple[ModbusPoint, ...]
    workarounds: Workarounds = field(default_factory=Workarounds)
    identity: IdentityRegister | None = None
    tests: tuple[TestVector, ...] = ()
    origin: str = ""

    def __post_init__(self) -> None:
        if not self.points:
            raise ValueError("a profile needs at least one point")

    def point(self, name: str) -> ModbusPoint:
        for p in self.points:
            if p.name == name:
                return p
        raise KeyError(name)


@_record
class MbusPoint:
    """One quantity of an M-Bus meter: which record it is, in which unit it is sent."""

    name: str
    quantity: str  # as the decoder names it: energy, volume, power, volume_flow, flow_temperature, ...
    storage: Annotated[int, Rule(ge=0)] = 0  # 0: the current value; 1..: stored (due-date) values
    tariff: Annotated[int, Rule(ge=0)] = 0
    subunit: Annotated[int, Rule(ge=0)] = 0
    function: Literal["instantaneous", "maximum", "minimum", "error_state"] = "instantaneous"
    # The unit sent to the platform (the record is converted to it); absent:
    # the record's own base unit, as the meter sends it (Wh, J, m3, ...).
    unit: str | None = None
    kind: Kind
    description: str = ""


# What an every-record profile (``all_records``) makes of a record: the point
# is named after its quantity, and its storage, tariff and subunit when not 0;
# these quantities are counters, the others gauges.
RECORD_COUNTERS = ("energy", "volume", "mass")


def record_point_name(quantity: str, storage: int, tariff: int, subunit: int) -> str:
    """``energy``, ``energy_s1`` (due date), ``volume_t2``, ``energy_s1_u1`` ..."""
    return quantity + "".join(f"_{p}{n}" for p, n in (("s", storage), ("t", tariff), ("u", subunit)) if n)


@_record
class MbusProfile:
    """Maps the records of an M-Bus telegram to points; the meter's
    identification number comes from the telegram header."""

    name: str
    protocol: Literal["mbus"]
    manufacturer: str
    model: str
    source: str
    description: str = ""
    points: tuple[MbusPoint, ...] = ()
    # Every record becomes a point named after its quantity (and storage,
    # tariff, subunit when not 0), in its base unit: for meters without a profile.
    all_records: bool = False
    # Battery meters allow few reads: `check` warns below this interval.
    min_interval: Annotated[float, Rule(gt=0)] | None = None
    origin: str = ""

    workarounds: Workarounds = field(default_factory=Workarounds)
    identity: None = None

    def __post_init__(self) -> None:
        if not self.all_records:
            return
        # Here a point only declares a point every-record makes, so that it is
        # known before the first telegram: a counter's limits (its step and
        # BCD wrap), `max_rate` and `intervals` in the config.
        for point in self.points:
            name = record_point_name(point.quantity, point.storage, point.tariff, point.subunit)
            kind = "counter" if point.quantity in RECORD_COUNTERS else "gauge"
            if (point.name, point.kind, point.function, point.unit) != (name, kind, "instantaneous", None):
                raise ValueError(f"point {point.name}: with all_records a point names a record as every-record "
                                 f"does: name {name}, kind {kind}, no function, no unit (the meter's)")


AnyProfile = Profile | MbusProfile


def _read_yaml(text: str, origin: str) -> AnyProfile:
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
    try:
        return validate(MbusProfile if raw.get("protocol") == "mbus" else Profile, raw)
    except Invalid as exc:
        problems = "; ".join(f"{_point_path(p.loc, raw)}: {p.message}" for p in exc.problems)
        raise ProfileError(f"{origin}: {problems}") from None


def _point_path(loc: tuple[str | int, ...], raw: dict[str, object]) -> str:
    """points[3].type -> points.voltage_l1.type: as the file spells it."""
    points = raw.get("points")
    if len(loc) >= 2 and loc[0] == "points" and isinstance(loc[1], int) and isinstance(points, list):
        name = points[loc[1]].get("name") if isinstance(points[loc[1]], dict) else None
        if name is not None:
            return dotted(("points", str(name), *loc[2:]))
    return dotted(loc)


def load_profile_file(path: Path) -> AnyProfile:
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

    profiles: dict[str, AnyProfile] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    # Site files that could not be read, by the name their file gives
    # (profiles are named after their file): a device using that name must
    # not silently get the bundled profile the file meant to override.
    broken: dict[str, str] = field(default_factory=dict)
    pending: dict[str, Callable[[], AnyProfile]] = field(default_factory=dict)

    def get(self, name: str) -> AnyProfile:
        if name not in self.profiles and name in self.pending:
            profile = self.pending.pop(name)()
            if profile.name != name:
                raise ProfileError(f"{profile.origin}: the file of profile {name!r} names {profile.name!r}")
            self.profiles[name] = profile
        try:
            return self.profiles[name]
        except KeyError:
            raise ProfileError(f"unknown profile {name!r}; known: {', '.join(self.names())}") from None

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


def _bundled_reader(entry: Path) -> Callable[[], AnyProfile]:
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
