"""Radio meters' profiles as data: every bundled profile's test telegrams give
its expected values, the vectors catch a wrong record or unit, and a
choosing profile (oms-auto) picks a profile from the telegram header."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from pathlib import Path

import pytest

from drivers.core.errors import ProfileError
from drivers.core.protocol import Readout
from drivers.mbus.points import point_values
from drivers.mbus.profile import MbusDetect, MbusPoint, MbusProfile
from drivers.mbus.telegram import medium_name
from drivers.profile import load_catalogue, load_profile_file
from drivers.wmbus.decode import decode_wmbus
from drivers.wmbus.keys import KeyRing
from drivers.wmbus.reader import RadioListener, RadioMeter
from drivers.wmbus.received import Received
from simulators.wmbus_meter import MeterKind, RadioMeterSpec, SimulatedRadioMeter

CATALOGUE = load_catalogue()
RADIO = [p for p in (CATALOGUE.get(n) for n in CATALOGUE.names()) if isinstance(p, MbusProfile) and p.detect]


def _mbus(name: str) -> MbusProfile:
    profile = CATALOGUE.get(name)
    assert isinstance(profile, MbusProfile)
    return profile


AUTO = _mbus("oms-auto")


def run_vectors(profile: MbusProfile) -> list[str]:
    """Mismatches between the profile's values for its test telegrams and the values they must give."""
    problems = []
    for index, vector in enumerate(profile.tests):
        result = decode_wmbus(bytes.fromhex(vector.radio))
        if result.error is not None:
            problems.append(f"vector {index}: {result.error}")
            continue
        got = {name: value for name, value, _, _ in point_values(profile, result.records)}
        for name, expected in vector.expect.items():
            if got.get(name) != expected:
                problems.append(f"vector {index}: {name} = {got.get(name)!r}, expected {expected!r}")
    return problems


def test_the_oms_profiles_detect_and_carry_test_telegrams() -> None:
    assert {p.name for p in RADIO} >= {"oms-water", "oms-heat", "oms-hca"}


@pytest.mark.parametrize("profile", RADIO, ids=lambda p: p.name)
def test_profile_test_telegrams(profile: MbusProfile) -> None:
    assert profile.tests, f"{profile.name} carries no test telegrams"
    covered = {name for vector in profile.tests for name in vector.expect}
    assert covered == {p.name for p in profile.points}, "every point is checked by a telegram"
    assert run_vectors(profile) == []


def _mutations(point: MbusPoint) -> list[dict[str, int | str]]:
    wrong_unit = {"kWh": "Wh", "m3": "l", "m3/h": "l/h", "W": "kW", "Cel": "K", "s": "min"}.get(point.unit or "")
    changes: list[dict[str, int | str]] = [{"storage": point.storage + 1}]
    if wrong_unit is not None:
        changes.append({"unit": wrong_unit})
    return changes


@pytest.mark.parametrize("profile", RADIO, ids=lambda p: p.name)
def test_a_wrong_record_or_unit_is_caught_by_the_test_telegrams(profile: MbusProfile) -> None:
    """Each point taken from another storage (a set-date value for the current
    one) or sent in another unit must fail the profile's vectors."""
    escaped = []
    for index, point in enumerate(profile.points):
        for change in _mutations(point):
            points = list(profile.points)
            points[index] = dataclasses.replace(point, **change)  # type: ignore[arg-type]
            if not run_vectors(dataclasses.replace(profile, points=tuple(points))):
                escaped.append(f"{point.name} {change}")
    assert escaped == []


@pytest.mark.parametrize("profile", RADIO, ids=lambda p: p.name)
def test_oms_auto_picks_each_profile_for_its_own_test_telegrams(profile: MbusProfile) -> None:
    for vector in profile.tests:
        address = decode_wmbus(bytes.fromhex(vector.radio)).link
        assert address is not None
        header = address.address
        chosen = AUTO.choose(header.manufacturer, header.version, medium_name(header.device_type))
        assert chosen is not None and chosen.name == profile.name


def test_oms_auto_declares_every_candidates_points_for_the_config() -> None:
    """`points`, `max_rate` and `intervals` of a device on oms-auto may name any candidate's point."""
    assert [p.name for p in AUTO.candidates][:3] == ["oms-water", "oms-heat", "oms-hca"]
    assert {"apator-water", "apator-e-itn", "kamstrup-multical21", "kamstrup-multical-heat", "diehl-sharky",
            "apator-amiplus"} <= {p.name for p in AUTO.candidates}
    declared = {p.name for p in AUTO.points}
    assert declared == {p.name for candidate in AUTO.candidates for p in candidate.points}
    assert {"volume", "energy_heat", "hca_units", "meter_datetime"} <= declared


def test_a_vendors_profile_wins_over_the_generic_one_for_its_meters() -> None:
    generic = _mbus("oms-water")
    vendor = dataclasses.replace(generic, name="apa-water", detect=(
        MbusDetect(device_types=("water",), manufacturers=("APA",), versions=(0x10,)),))
    chooser = dataclasses.replace(AUTO, candidates=(generic, vendor))
    assert chooser.choose("APA", 0x10, "water") is vendor
    assert chooser.choose("APA", 0x11, "water") is generic  # another version: the generic one
    assert chooser.choose("KAM", 0x10, "water") is generic
    assert chooser.choose("APA", 0x10, "gas") is None


class _Receiver:
    where = "test receiver"
    garbled = 0

    def __init__(self, telegrams: list[bytes]) -> None:
        self._telegrams = [Received(t, rssi_dbm=-70.0) for t in telegrams]

    def read(self, timeout: float) -> list[Received]:
        out, self._telegrams = self._telegrams, []
        return out

    def close(self) -> None:
        pass


class _Clock:
    def stamp(self) -> tuple[int, int | None]:
        return 1_700_000_000_000, None


def test_a_radio_meter_on_oms_auto_reads_as_on_its_named_profile_and_a_misfit_is_one_event() -> None:
    hca = SimulatedRadioMeter(RadioMeterSpec(40000001, MeterKind.HCA, security_mode=0), seed=3)
    water = SimulatedRadioMeter(RadioMeterSpec(40000002, MeterKind.WATER, security_mode=0), seed=3)
    telegrams = [m.transmit(900, datetime(2025, 3, 1, 12, n))[0] for n in range(2) for m in (hca, water)]
    hca_profile = _mbus("oms-hca")
    only_hca = dataclasses.replace(AUTO, candidates=(hca_profile,))
    named = RadioMeter("hca", "40000001", 900, hca_profile)
    meters = {"40000001": RadioMeter("hca", "40000001", 900, AUTO),
              "40000002": RadioMeter("water", "40000002", 900, only_hca)}
    assert set(meters["40000001"].points) >= {"hca_units", "volume", "energy_heat", "rssi"}
    listener = RadioListener(_Receiver(telegrams), meters, KeyRing())
    heard = [listener.receive(0.1, _Clock()) for _ in range(4)]
    readouts: dict[str, list[Readout]] = {"hca": [], "water": []}
    for h in heard:
        assert h is not None and h.readout is not None and h.device_id is not None
        readouts[h.device_id].append(h.readout)
    expected = named.readout(decode_wmbus(telegrams[0]), Received(telegrams[0], rssi_dbm=-70.0),
                             1_700_000_000_000, None)
    assert readouts["hca"][0].answers == expected.answers and readouts["hca"][0].error is None
    misfits = readouts["water"]
    assert all(r.answers == [] and r.error is not None for r in misfits)
    assert [event for r in misfits for event, _ in r.notes] == ["wmbus.no_profile"]
    assert "water" in str(misfits[0].error) and "oms-hca" in str(misfits[0].error)


def test_a_choosing_profile_must_name_profiles_that_detect(tmp_path: Path) -> None:
    for name, choose in (("loop", "[loop]"), ("plain", "[mbus]")):
        (tmp_path / f"{name}.yaml").write_text(f"name: {name}\nprotocol: mbus\nmanufacturer: x\nmodel: x\n"
                                              f"source: x\nchoose_from: {choose}\n")
    catalogue = load_catalogue([tmp_path])
    for name in ("loop", "plain"):
        with pytest.raises(ProfileError, match="must be an M-Bus profile with a detect block"):
            catalogue.get(name)
    assert isinstance(load_profile_file(tmp_path / "loop.yaml"), MbusProfile)
