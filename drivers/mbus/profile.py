"""M-Bus device profiles: which record of a telegram is which point, as data.

An M-Bus meter describes its own records (quantity, unit, storage, tariff);
a profile only names the records it wants as points, in the unit the
platform gets. A profile with ``all_records`` takes every record (for
meters without a profile of their own). Wired and wireless M-Bus share it:
their application layer is the same EN 13757-3.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from drivers.core.readings import Kind
from drivers.core.records import Rule


@dataclass(frozen=True, kw_only=True)
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
    origin: str = ""

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

