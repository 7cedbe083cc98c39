"""M-Bus records -> the points of a profile, in the units the platform gets.

Pure code. Unit conversion happens here and only here, in exact decimal
arithmetic: a heat meter reporting GJ, MWh or Wh all arrive as kWh.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal

from drivers.core.protocol import Resolution
from drivers.mbus.datafield import DataCoding
from drivers.mbus.profile import RECORD_COUNTERS, MbusPoint, MbusProfile, record_point_name
from drivers.mbus.records import DataRecord

# (base unit of the record, unit wanted) -> factor
_CONVERT: dict[tuple[str, str], Decimal] = {
    ("Wh", "kWh"): Decimal("0.001"),
    ("Wh", "MWh"): Decimal("0.000001"),
    ("J", "kWh"): Decimal(1) / Decimal(3_600_000),
    ("J", "Wh"): Decimal(1) / Decimal(3600),
    ("J", "GJ"): Decimal("1e-9"),
    ("Wh", "GJ"): Decimal("0.0000036"),
    ("J/h", "W"): Decimal(1) / Decimal(3600),
    ("W", "kW"): Decimal("0.001"),
    ("s", "min"): Decimal(1) / Decimal(60),
    ("s", "h"): Decimal(1) / Decimal(3600),
    ("s", "d"): Decimal(1) / Decimal(86400),
}


def convert(value: Decimal, base_unit: str, unit: str) -> Decimal | None:
    if base_unit == unit:
        return value
    factor = _CONVERT.get((base_unit, unit))
    return None if factor is None else value * factor


def _number(value: Decimal) -> float | int:
    return int(value) if value == value.to_integral_value() and abs(value) < 2**53 else float(value)


# Dimensionless counts a meter reports as a plain number (a heat cost
# allocator's HCA units): their value is the number, with no unit.
# Their unit, as the platform gets it (the record itself has none).
COUNT_QUANTITIES = {"hca": "HCA"}


# The meter's own dates and times (VIF 6C type G, 6D type F or I): the
# meter's date-time and the set (due) date. A point's value is a number, so
# such a point is the seconds since 1970-01-01 00:00 *of the meter's clock as
# it reads*, no time zone applied: meters keep local time (some without
# summer time), and only the platform knows the site's zone to compare it
# with the reading's `ts`. A set date is its day at 00:00. Only a profile's
# named points take them; an every-record profile leaves them out.
DATE_QUANTITIES = {"time_point": "s"}  # VIF 6C (a date), 6D (a date-time): the decoder's name for both
_EPOCH = datetime(1970, 1, 1)


def _base_unit(record: DataRecord) -> str:
    return record.base_unit or COUNT_QUANTITIES.get(record.quantity) or DATE_QUANTITIES.get(record.quantity, "")


def _clock_seconds(record: DataRecord) -> Decimal | None:
    """A date or date-time record as the seconds its reading shows since 1970 (no zone)."""
    value = record.value
    if record.quantity not in DATE_QUANTITIES or not isinstance(value, date):
        return None
    moment = value if isinstance(value, datetime) else datetime.combine(value, time())
    if moment.tzinfo is not None:
        moment = moment.replace(tzinfo=None)
    return Decimal((moment - _EPOCH) // timedelta(seconds=1))


def _numeric(record: DataRecord) -> Decimal | None:
    """A record's value in its base unit; a dimensionless count as itself."""
    if record.base_value is not None:
        return record.base_value
    if record.quantity in COUNT_QUANTITIES and isinstance(record.value, int) and not isinstance(record.value, bool):
        return Decimal(record.value)
    return None


# Record notes that make a record a different value of the same quantity
# (energy exported, not imported; one phase's voltage): a point takes such a
# record only when it names the qualifier.
DISTINGUISHING = frozenset({
    "accumulation_of_negative_contributions", "accumulation_of_absolute_values", "at_neutral",
    "at_phase_l1", "at_phase_l2", "at_phase_l3", "between_phases_l1_l2", "between_phases_l2_l3",
    "between_phases_l3_l1", "direction_to_meter", "direction_from_meter", "delta_between_import_and_export",
    "lower_limit_value", "upper_limit_value", "future_value",
})


def _matches(point: MbusPoint, record: DataRecord) -> bool:
    if not (record.quantity == point.quantity and record.storage == point.storage
            and record.tariff == point.tariff and record.subunit == point.subunit
            and record.function.value == point.function):
        return False
    notes = set(record.notes)
    return set(point.qualifiers) <= notes and not (notes & DISTINGUISHING) - set(point.qualifiers)




def _chosen(profile: MbusProfile, records: Iterable[DataRecord]) -> list[tuple[str, DataRecord, str, str]]:
    """(point, record, unit, kind) for every profile point the telegram holds.

    The first matching record wins (meters repeat some quantities with other
    VIFE qualifiers). A profile with ``all_records`` takes every
    instantaneous scaled record, named after its quantity, in its base unit.
    """
    records = [r for r in records if not r.unknown]
    out: list[tuple[str, DataRecord, str, str]] = []
    if profile.all_records:
        seen: set[str] = set()
        for r in records:
            if _numeric(r) is None or r.function.value != "instantaneous":
                continue
            name = record_point_name(r.quantity, r.storage, r.tariff, r.subunit)
            if name in seen:
                continue
            seen.add(name)
            out.append((name, r, _base_unit(r), "counter" if r.quantity in RECORD_COUNTERS else "gauge"))
        return out
    for point in profile.points:
        record = next((r for r in records if _matches(point, r)), None)
        if record is not None:
            out.append((point.name, record, point.unit or _base_unit(record), point.kind))
    return out


def point_values(profile: MbusProfile, records: Iterable[DataRecord]) -> list[tuple[str, float | int | None, str, str]]:
    """(point, value, unit, kind) for every profile point the telegram holds;
    an invalid record, or one whose unit cannot be converted, gives None."""
    out: list[tuple[str, float | int | None, str, str]] = []
    for name, record, unit, kind in _chosen(profile, records):
        value = None
        number = _numeric(record)
        if number is None:
            number = _clock_seconds(record)
        if not record.invalid and number is not None:
            converted = convert(number, _base_unit(record), unit)
            value = None if converted is None else _number(converted)
        out.append((name, value, unit, kind))
    return out


_BCD_DIGITS = {DataCoding.BCD2: 2, DataCoding.BCD4: 4, DataCoding.BCD6: 6, DataCoding.BCD8: 8, DataCoding.BCD12: 12}


@dataclass(frozen=True)
class PointStep:
    """A point's granularity as its meter sends it, in the point's unit."""

    step: Decimal | None  # one count of the sent number; None for real32, whose step is relative
    wraps_at: Decimal | None = None  # where a BCD register starts again from 0 (10^digits counts)

    def resolution(self) -> Resolution:
        """The retained meta message's form (docs/payload.md)."""
        if self.step is None:
            return {"float": "float32"}  # IEEE 754 single, as a Modbus float32
        return {"step": float(self.step)}


def point_steps(profile: MbusProfile, records: Iterable[DataRecord]) -> dict[str, PointStep]:
    """What one step of each point's value is worth, and where a BCD counter
    wraps, in the point's unit, as the meter's VIF and data field say. Points
    whose record gives neither (invalid, not a number) are left out."""
    out: dict[str, PointStep] = {}
    for name, record, unit, _kind in _chosen(profile, records):
        if record.invalid or _numeric(record) is None:
            continue
        digits = _BCD_DIGITS.get(record.coding)
        if record.base_value is None:  # a dimensionless count: one unit per step
            out[name] = PointStep(Decimal(1), Decimal(10)**digits if digits else None)
        elif record.coding is DataCoding.REAL32:
            out[name] = PointStep(None)
        elif record.step is not None and (step := convert(record.step, record.base_unit, unit)) is not None:
            out[name] = PointStep(step, step * 10**digits if digits else None)
    return out
