"""M-Bus records -> the points of a profile, in the units the platform gets.

Pure code. Unit conversion happens here and only here, in exact decimal
arithmetic: a heat meter reporting GJ, MWh or Wh all arrive as kWh.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal

from drivers.mbus import DataRecord
from drivers.profile import MbusPoint, MbusProfile

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
}


def convert(value: Decimal, base_unit: str, unit: str) -> Decimal | None:
    if base_unit == unit:
        return value
    factor = _CONVERT.get((base_unit, unit))
    return None if factor is None else value * factor


def _number(value: Decimal) -> float | int:
    return int(value) if value == value.to_integral_value() and abs(value) < 2**53 else float(value)


def _matches(point: MbusPoint, record: DataRecord) -> bool:
    return (record.quantity == point.quantity and record.storage == point.storage
            and record.tariff == point.tariff and record.subunit == point.subunit
            and record.function.value == point.function)


def point_values(profile: MbusProfile, records: Iterable[DataRecord]) -> list[tuple[str, float | int | None, str, str]]:
    """(point, value, unit, kind) for every profile point the telegram holds.

    The first matching record wins (meters repeat some quantities with other
    VIFE qualifiers); an invalid record gives value None.
    """
    records = [r for r in records if not r.unknown]
    out: list[tuple[str, float | int | None, str, str]] = []
    if profile.all_records:
        seen: set[str] = set()
        for r in records:
            if r.base_value is None or r.function.value != "instantaneous":
                continue
            name = r.quantity + "".join(f"_{p}{n}" for p, n in (("s", r.storage), ("t", r.tariff), ("u", r.subunit)) if n)
            if name in seen:
                continue
            seen.add(name)
            out.append((name, None if r.invalid else _number(r.base_value), r.base_unit,
                        "counter" if r.quantity in ("energy", "volume", "mass") else "gauge"))
        return out
    for point in profile.points:
        record = next((r for r in records if _matches(point, r)), None)
        if record is None:
            continue
        value = None
        if not record.invalid and record.base_value is not None:
            converted = convert(record.base_value, record.base_unit, point.unit)
            value = None if converted is None else _number(converted)
        out.append((point.name, value, point.unit, point.kind))
    return out
