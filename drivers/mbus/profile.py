"""M-Bus device profiles: which record of a telegram is which point, as data.

An M-Bus meter describes its own records (quantity, unit, storage, tariff);
a profile only names the records it wants as points, in the unit the
platform gets. A profile with ``all_records`` takes every record (for
meters without a profile of their own). Wired and wireless M-Bus share it:
their application layer is the same EN 13757-3.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Literal

from drivers.core.readings import Kind
from drivers.core.records import Parse, Rule

MANUFACTURER = re.compile(r"[A-Z]{3}")


def parse_manufacturer(value: object) -> str:
    """The three letters of the M-field (EN 62056-21 flag id), as `wmbus decode` prints them."""
    if not isinstance(value, str) or not MANUFACTURER.fullmatch(value.upper()):
        raise ValueError(f"expected a manufacturer's three letters, e.g. APA, KAM (got {value!r})")
    return value.upper()


Manufacturer = Annotated[str, Parse(parse_manufacturer, {"type": "string", "pattern": "^[A-Za-z]{3}$"})]


@dataclass(frozen=True, kw_only=True)
class MbusDetect:
    """Which meters a profile fits, from the telegram header alone: every given field must match.

    ``device_types`` are the medium names `wmbus decode` and `scan` print
    (water, warm_water, heat_outlet, heat_cost_allocator, ...).
    """

    device_types: tuple[str, ...]
    manufacturers: tuple[Manufacturer, ...] = ()  # empty: any
    versions: tuple[Annotated[int, Rule(ge=0, le=255)], ...] = ()  # empty: any

    def matches(self, manufacturer: str, version: int, device_type: str) -> bool:
        return (device_type in self.device_types and (not self.manufacturers or manufacturer in self.manufacturers)
                and (not self.versions or version in self.versions))

    @property
    def specificity(self) -> int:
        """A vendor's profile (manufacturer, version) wins over a generic one for the same device type."""
        return 2 * bool(self.manufacturers) + bool(self.versions)


@dataclass(frozen=True, kw_only=True)
class MbusVector:
    """A radio telegram (hex from the L-field, unencrypted, block CRCs optional) -> the values the profile gives."""

    radio: str
    expect: dict[str, float | int]


@dataclass(frozen=True, kw_only=True)
class MbusPoint:
    """One quantity of an M-Bus meter: which record it is, in which unit it is sent."""

    name: str
    quantity: str  # as the decoder names it: energy, volume, power, volume_flow, flow_temperature, ...
    storage: Annotated[int, Rule(ge=0)] = 0  # 0: the current value; 1..: stored (due-date) values
    tariff: Annotated[int, Rule(ge=0)] = 0
    subunit: Annotated[int, Rule(ge=0)] = 0
    function: Literal["instantaneous", "maximum", "minimum", "error_state"] = "instantaneous"
    # VIFE qualifiers the record must carry, as the decoder names them
    # (accumulation_of_negative_contributions: exported energy; at_phase_l1:
    # a phase's voltage). A record qualified so is taken only by a point
    # that asks for it: an import point never picks up the export record.
    qualifiers: tuple[str, ...] = ()
    # The unit sent to the platform (the record is converted to it); absent:
    # the record's own base unit, as the meter sends it (Wh, J, m3, ...).
    unit: str | None = None
    kind: Kind
    description: str = ""


# What an every-record profile (``all_records``) makes of a record: the point
# is named after its quantity, and its storage, tariff and subunit when not 0;
# these quantities are counters, the others gauges.
RECORD_COUNTERS = ("energy", "volume", "mass", "hca")


def record_point_name(quantity: str, storage: int, tariff: int, subunit: int) -> str:
    """``energy``, ``energy_s1`` (due date), ``volume_t2``, ``energy_s1_u1`` ..."""
    return quantity + "".join(f"_{p}{n}" for p, n in (("s", storage), ("t", tariff), ("u", subunit)) if n)


@dataclass(frozen=True, kw_only=True)
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
    # The telegram headers this profile fits: how a profile that chooses
    # (``choose_from``) picks it for a meter.
    detect: tuple[MbusDetect, ...] = ()
    # Test telegrams and the values they must give (tests/test_wmbus_profiles.py runs them).
    tests: tuple[MbusVector, ...] = ()
    # A profile with no points of its own: per meter, the one of these whose
    # ``detect`` fits the telegram's header (manufacturer, version, device
    # type) best. Radio meters only: a wired one is read with a named profile.
    choose_from: tuple[str, ...] = ()
    # ``choose_from`` resolved by the catalogue (never written in a file).
    candidates: tuple[MbusProfile, ...] = field(default=(), metadata={"key": "(resolved)"}, compare=False)
    origin: str = ""

    def resolve(self, get: Callable[[str], object]) -> MbusProfile:
        """The catalogue's hook: the profiles ``choose_from`` names, looked up once."""
        if not self.choose_from or self.candidates:
            return self
        found: list[MbusProfile] = []
        for name in self.choose_from:
            profile = get(name)
            if not isinstance(profile, MbusProfile) or profile.choose_from or not profile.detect:
                raise ValueError(f"profile {self.name}: choose_from {name!r} must be an M-Bus profile with a detect "
                                 "block (and no choose_from of its own)")
            found.append(profile)
        # Its points: every candidate's (the first of a name), so that a device's
        # `points`, `max_rate` and `intervals` may name them before any telegram.
        points: dict[str, MbusPoint] = {}
        for candidate in found:
            for point in candidate.points:
                points.setdefault(point.name, point)
        return dataclasses.replace(self, candidates=tuple(found), points=tuple(points.values()))

    def choose(self, manufacturer: str, version: int, device_type: str) -> MbusProfile | None:
        """The candidate whose detect block fits this header most specifically (the first named on a tie)."""
        best: tuple[int, MbusProfile] | None = None
        for profile in self.candidates:
            for rule in profile.detect:
                if rule.matches(manufacturer, version, device_type) and (best is None or rule.specificity > best[0]):
                    best = (rule.specificity, profile)
        return None if best is None else best[1]

    def __post_init__(self) -> None:
        if self.choose_from and (self.points or self.all_records) and not self.candidates:
            raise ValueError("a profile with choose_from has no points of its own: the chosen profile's are used")
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

