"""drivers/mbus/points.py: records of a telegram -> a profile's points, their
values and their resolution, in the point's unit."""

from __future__ import annotations

from decimal import Decimal

import pytest

from drivers.mbus.points import PointStep, point_steps, point_values
from drivers.mbus.profile import MbusProfile
from drivers.mbus.records import DataRecord, decode_records
from drivers.profile import load_catalogue

pytestmark = pytest.mark.timeout(30)

def _mbus_profile(name: str) -> MbusProfile:
    profile = load_catalogue().get(name)
    assert isinstance(profile, MbusProfile)
    return profile


HEAT = _mbus_profile("mbus-heat")


def records(hex_records: str) -> tuple[DataRecord, ...]:
    return decode_records(bytes.fromhex(hex_records.replace(" ", ""))).records


def test_each_points_step_is_the_vifs_in_the_points_unit() -> None:
    got = point_steps(HEAT, records(
        "04 0E 10270000"  # energy, int32, in MJ (10^6 J): the point is in kWh
        " 04 14 10270000"  # volume, int32, in 10^-2 m3
        " 05 2B 0000C03F"  # power, real32, in W
        " 02 5A 2301"  # flow temperature, int16, in 0.1 Cel
        " 0A 5E 5302"  # return temperature, BCD, in 0.1 Cel
    ))
    assert {name: step.resolution() for name, step in got.items()} == {
        "energy_heat": {"step": 1_000_000 / 3_600_000},  # one MJ in kWh
        "volume": {"step": 0.01},
        "power_heat": {"float": "float32"},
        "temperature_supply": {"step": 0.1},
        "temperature_return": {"step": 0.1},
    }
    assert [step.wraps_at for step in got.values()] == [None, None, None, None, Decimal("1000.0")]  # 4 BCD digits


def test_a_bcd_counter_wraps_after_its_last_digit() -> None:
    got = point_steps(HEAT, records("0C 06 99999999"  # energy, 8 BCD digits, in kWh
                                    " 0C 14 12345678"))  # volume, 8 BCD digits, in 10^-2 m3
    assert got["energy_heat"] == PointStep(Decimal(1), Decimal(100_000_000))
    assert got["volume"] == PointStep(Decimal("0.01"), Decimal(1_000_000))


def test_a_point_without_a_usable_record_has_no_resolution() -> None:
    telegram = records(
        "0A 5A FFFF"  # flow temperature, BCD with non-decimal digits: invalid
        " 04 06 0A000000"  # energy in kWh
    )
    assert point_steps(HEAT, telegram) == {"energy_heat": PointStep(Decimal(1))}
    assert [(name, value) for name, value, _, _ in point_values(HEAT, telegram)] == [
        ("energy_heat", 10), ("temperature_supply", None)]
