"""Every bundled profile's test vectors, and proof that the vectors catch a
wrong type, word order or scale."""

from __future__ import annotations

import dataclasses
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from drivers.modbus.codec import registers_to_bytes
from drivers.modbus.plan import ReadRequest
from drivers.modbus.profile import ModbusPoint
from drivers.modbus.profile import ModbusProfile as Profile
from drivers.modbus.values import AnswerDecoder, with_exponent_registers
from drivers.profile import bundled_profile_texts, load_catalogue

CATALOGUE = load_catalogue()
MODBUS = [p for p in (CATALOGUE.get(n) for n in CATALOGUE.names()) if isinstance(p, Profile)]


def run_vectors(profile: Profile) -> list[str]:
    """Mismatches between the profile's decoding and its test vectors.

    Each block of a vector is served as one answer through the decoding the
    bus worker uses (drivers/modbus/values.py), scale registers included."""
    problems = []
    for index, vector in enumerate(profile.tests):
        decoder = AnswerDecoder(profile.points)
        answers = []
        for table, blocks in vector.registers.items():
            for start, words in blocks.items():
                inside = tuple(p for p in with_exponent_registers(profile.points)
                               if p.table == table and start <= p.address and p.end <= start + len(words))
                answers.append((ReadRequest(table, start, len(words), inside), registers_to_bytes(words)))
        decoder.take_exponents(answers)
        got = {point.name: value for request, answer in answers for point, value in decoder.values(request, answer)}
        for name, expected in vector.expect.items():
            if name not in got:
                problems.append(f"vector {index}: {name} is not inside any block of registers")
            elif got[name] != (expected if isinstance(expected, str) else pytest.approx(expected, rel=1e-9, abs=1e-12)):
                problems.append(f"vector {index}: {name} = {got[name]!r}, expected {expected!r}")
    return problems


@pytest.mark.parametrize("profile", MODBUS, ids=[p.name for p in MODBUS])
def test_profile_vectors(profile: Profile) -> None:
    assert profile.tests, f"{profile.name} carries no test vectors"
    assert run_vectors(profile) == []
    assert {n for v in profile.tests for n in v.expect} <= {p.name for p in profile.points}


def _mutated(profile: Profile, name: str, **change: Any) -> Profile:
    points = tuple(dataclasses.replace(p, **change) if p.name == name else p for p in profile.points)
    return dataclasses.replace(profile, points=points)


@pytest.mark.parametrize(("profile_name", "point", "change"), [
    ("eastron-sdm630", "voltage_l1", {"order": "CDAB"}),
    ("eastron-sdm630", "energy_active_import", {"type": "uint32"}),
    ("xy-md02", "temperature", {"scale": Decimal(1)}),
    ("xy-md02", "humidity", {"type": "uint16", "scale": Decimal("0.01")}),
])
def test_a_wrong_type_order_or_scale_is_caught_by_the_vectors(profile_name: str, point: str,
                                                              change: dict[str, object]) -> None:
    profile = CATALOGUE.get(profile_name)
    assert isinstance(profile, Profile)
    assert run_vectors(_mutated(profile, point, **change)) != []


def test_a_site_profile_overrides_and_a_broken_one_is_reported(tmp_path: Path) -> None:
    (tmp_path / "xy-md02.yaml").write_text(
        "name: xy-md02\nmanufacturer: site\nmodel: patched\nsource: site file\n"
        "points:\n  temperature: {table: holding, address: 0, type: int16, scale: 0.1, unit: Cel, kind: gauge}\n")
    (tmp_path / "broken.yaml").write_text("name: broken\npoints: [\n")
    catalogue = load_catalogue([tmp_path])
    site = catalogue.get("xy-md02")
    assert isinstance(site, Profile) and site.model == "patched"
    assert isinstance(site.points[0], ModbusPoint) and site.points[0].table == "holding"
    assert len(catalogue.problems) == 1 and "broken.yaml" in catalogue.problems[0]
    assert "eastron-sdm630" in catalogue


_OTHER_TYPE = {"float32": "int32", "int32": "float32", "uint32": "float32", "int16": "uint16", "uint16": "int16",
               "float64": "int64", "int64": "float64", "uint64": "float64"}


def _mutations(profile: Profile) -> list[tuple[str, str, dict[str, object]]]:
    """For every point the vectors cover: a tenfold scale, another word order
    and another type of the same width (where the change can show at all)."""
    covered = {name for vector in profile.tests for name in vector.expect}
    out: list[tuple[str, str, dict[str, object]]] = []
    for point in profile.points:
        if point.name not in covered or point.type in ("string", "bits"):
            continue
        out.append(("scale", point.name, {"scale": point.scale * 10}))
        if point.count > 1:
            out.append(("order", point.name, {"order": "CDAB" if point.order != "CDAB" else "ABCD"}))
        out.append(("type", point.name, {"type": _OTHER_TYPE[point.type]}))
    return out


@pytest.mark.parametrize("profile", MODBUS, ids=[p.name for p in MODBUS])
def test_every_profile_catches_a_wrong_scale_order_or_type(profile: Profile) -> None:
    """Every mutation of a covered point must fail the vectors, except a
    signedness change on a 16-bit value that is never negative (no vector
    can tell int16 from uint16 below 32768: a voltage, a CO2 level)."""
    survivors = [(kind, name) for kind, name, change in _mutations(profile)
                 if not run_vectors(_mutated(profile, name, **change))]
    blind = [(kind, name) for kind, name in survivors
             if kind == "type" and {profile.point(name).type, _OTHER_TYPE[profile.point(name).type]} == {"int16", "uint16"}]
    assert [s for s in survivors if s not in blind] == []


def test_bundled_profiles_are_found_by_their_file_names_and_parsed_only_when_asked_for() -> None:
    catalogue = load_catalogue()
    assert catalogue.profiles == {}, "nothing is parsed before a profile is asked for"
    for filename in bundled_profile_texts():
        assert catalogue.get(filename.removesuffix(".yaml")).name == filename.removesuffix(".yaml")
    assert set(catalogue.profiles) == set(catalogue.names())
