"""Manufacturer-specific layouts (drivers/wmbus/vendors.py) and VIFE
qualifiers in profiles: a value is read only where the layout says it is,
and an exported or per-phase record never stands in for another.

Telegrams are built here by hand from the layouts; the values are chosen
for the test."""

from __future__ import annotations

from decimal import Decimal

from drivers.mbus.points import point_values
from drivers.mbus.profile import MbusProfile
from drivers.profile import load_catalogue
from drivers.wmbus.decode import decode_wmbus

CATALOGUE = load_catalogue()


def _profile(name: str) -> MbusProfile:
    profile = CATALOGUE.get(name)
    assert isinstance(profile, MbusProfile)
    return profile


def _apator(registers: str, ident: str = "01000041") -> bytes:
    """An AT-WMBUS-16-2 telegram (APA, version 5, water): 0F, date, faults, then the registers."""
    body = bytes.fromhex("440106" + ident + "05077A2A000000" + "2F2F" + "0F" + "11223344" + "000000" + registers)
    return bytes([len(body)]) + body


def test_the_apator_total_is_register_0x10_in_litres_after_the_registers_before_it() -> None:
    result = decode_wmbus(_apator("43D204" + "10" + "40E20100" + "A001020304" + "FFFF"))
    volume = [r for r in result.records if r.quantity == "volume"]
    assert [r.base_value for r in volume] == [Decimal("123.456")]
    assert result.error is None


def test_an_apator_register_of_unknown_length_before_the_total_gives_no_value_and_says_so() -> None:
    # 0xE7 is no register whose length is known: what follows cannot be found.
    result = decode_wmbus(_apator("E70102" + "10" + "40E20100" + "FFFF"))
    assert not [r for r in result.records if r.quantity == "volume"]
    assert any("0xE7" in note and "unknown length" in note for note in result.notes)
    values = {name: value for name, value, _, _ in point_values(_profile("apator-water"), result.records)}
    assert values == {}


def test_an_apator_telegram_without_the_total_register_gives_no_value() -> None:
    result = decode_wmbus(_apator("43D204" + "FFFF"))
    assert not [r for r in result.records if r.quantity == "volume"]
    assert any("no total volume register" in note for note in result.notes)


def test_another_manufacturers_manufacturer_data_is_not_read_as_apators() -> None:
    telegram = bytearray(_apator("10" + "40E20100" + "FFFF"))
    telegram[2:4] = bytes.fromhex("2D2C")  # KAM, not APA
    result = decode_wmbus(bytes(telegram))
    assert not [r for r in result.records if r.quantity == "volume"]


def test_an_e_itn_frame_of_the_wrong_length_is_an_error_with_no_values() -> None:
    body = bytes.fromhex("440106010000420408A0A10000D2040000410130")  # cut short
    result = decode_wmbus(bytes([len(body)]) + body)
    assert result.records == ()
    assert result.error is not None and "16" in result.error


def test_an_export_record_before_the_import_one_is_never_taken_for_the_import() -> None:
    # Export (VIF 83 3C) first, then import (VIF 03), then one phase voltage.
    body = bytes.fromhex("4401060100004602027A050000000E833C8000000000000E03504069150000"
                         "0AFDC9FC023602")
    result = decode_wmbus(bytes([len(body)]) + body)
    values = {name: value for name, value, _, _ in point_values(_profile("apator-amiplus"), result.records)}
    assert values["energy_import"] == 15694.05
    assert values["energy_export"] == 0.08
    assert values["voltage_l2"] == 236
    assert "voltage_l1" not in values and "voltage_l3" not in values


def test_profiles_show_tells_an_export_point_from_an_import_one() -> None:
    # Without its qualifier the two rows read the same (energy, storage 0, tariff 0).
    import subprocess
    import sys

    shown = subprocess.run([sys.executable, "-m", "agent.cli", "profiles", "show", "apator-amiplus"],
                           capture_output=True, text=True, timeout=60, check=True).stdout
    rows = {line.split()[0]: line for line in shown.splitlines() if line.startswith(("energy_", "power_"))}
    assert rows["energy_export"].endswith("[accumulation_of_negative_contributions]")
    assert "[" not in rows["energy_import"]
    assert rows["power_import_max"].endswith("[maximum]")
