"""Transport and security: the specifications' own examples, and every failure state."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from drivers.wmbus import KeyRing, MeterKey, SecurityState, decode_wmbus
from drivers.wmbus.crypto import DC_ENCRYPTION_FROM_METER, DC_MAC_FROM_METER, kdf_a
from simulators.wmbus_meter import MeterKind, RadioMeterSpec, SimulatedRadioMeter, generate_keys

EXAMPLES = json.loads((Path(__file__).parent / "data/wmbus/spec-examples.json").read_text())


def _telegram(example: dict[str, Any]) -> bytes:
    return bytes.fromhex(example["telegram"].replace(" ", ""))


def _keys(example: dict[str, Any]) -> KeyRing:
    return KeyRing.single(MeterKey.from_hex(example["key"]))


@pytest.mark.parametrize("example", EXAMPLES, ids=[e["name"] for e in EXAMPLES])
def test_published_example_decodes_to_the_documented_values(example: dict[str, Any]) -> None:
    result: dict[str, Any] = decode_wmbus(_telegram(example), _keys(example)).to_json()
    expected = example["expected"]
    header = result["header"]
    assert result.get("error") is None
    assert result["security"]["state"] == "decrypted"
    assert result["security"]["mode"] == expected["security_mode"]
    for name in ("identification", "manufacturer", "version", "medium_code", "access_number"):
        assert header[name] == expected[name], name
    for name, value in expected.get("link", {}).items():
        assert header["link"][name] == value, name
    got = [(r["quantity"], r["storage"], r) for r in result["records"]]
    assert len(got) == len(expected["records"])
    for (quantity, storage, record), want in zip(got, expected["records"], strict=True):
        assert (quantity, storage) == (want["quantity"], want["storage"])
        for field in ("value", "base_value", "base_unit"):
            if field in want:
                assert record[field] == want[field], (quantity, field)


def test_kdf_a_gives_the_session_keys_of_cen_tr_17167() -> None:
    master = MeterKey(bytes(range(16)))
    counter, meter_id = bytes.fromhex("B30A0000"), bytes.fromhex("78563412")
    enc = kdf_a(master, DC_ENCRYPTION_FROM_METER, counter, meter_id)
    mac = kdf_a(master, DC_MAC_FROM_METER, counter, meter_id)
    assert enc.hex().upper() == "ECCF39D475D730B8284FDFDC1995D52F"
    assert mac.hex().upper() == "C9CD19FF5A9AAD5A6BBDA13BD2C4C7AD"


@pytest.mark.parametrize("example", EXAMPLES, ids=[e["name"] for e in EXAMPLES])
def test_no_key_is_a_state_with_no_values(example: dict[str, Any]) -> None:
    result = decode_wmbus(_telegram(example), KeyRing())
    assert result.security.state is SecurityState.NO_KEY
    assert result.records == ()
    assert result.error is None
    assert result.meter is not None and result.meter.identification == example["expected"]["identification"]


@pytest.mark.parametrize("example", EXAMPLES, ids=[e["name"] for e in EXAMPLES])
def test_wrong_key_is_a_state_with_no_values(example: dict[str, Any]) -> None:
    wrong = KeyRing.single(MeterKey(bytes.fromhex(example["key"])[::-1]))
    result = decode_wmbus(_telegram(example), wrong)
    assert result.security.state is SecurityState.WRONG_KEY
    assert result.records == ()


def test_mode_7_with_a_tampered_ciphertext_fails_the_mac() -> None:
    example = next(e for e in EXAMPLES if "mode-7" in e["name"])
    telegram = bytearray(_telegram(example))
    telegram[-1] ^= 0x80
    result = decode_wmbus(bytes(telegram), _keys(example))
    assert result.security.state is SecurityState.WRONG_KEY
    assert result.security.reason == "AFL MAC does not match"
    assert result.records == ()


def test_keys_are_looked_up_by_the_meter_id_not_the_radio_adapter() -> None:
    example = next(e for e in EXAMPLES if "partial" in e["name"])
    key = MeterKey.from_hex(example["key"])
    by_adapter = decode_wmbus(_telegram(example), KeyRing({"11223344": key}))
    by_meter = decode_wmbus(_telegram(example), KeyRing({"55667788": key}))
    assert by_adapter.security.state is SecurityState.NO_KEY
    assert by_meter.security.state is SecurityState.DECRYPTED


def test_an_unimplemented_security_mode_is_unsupported_not_garbage() -> None:
    telegram = bytearray(bytes.fromhex(EXAMPLES[0]["telegram"].replace(" ", "")))
    telegram[14] = 0x0D  # configuration field high byte: mode 13 (AES-CCM)
    result = decode_wmbus(bytes(telegram), _keys(EXAMPLES[0]))
    assert result.security.state is SecurityState.UNSUPPORTED
    assert "mode 13" in (result.security.reason or "")
    assert result.records == ()


def _simulated(**spec: Any) -> tuple[bytes, Any, MeterKey]:
    key = generate_keys(1, seed=7)[0]
    meter = SimulatedRadioMeter(RadioMeterSpec(31415926, key=key, **spec), seed=2)
    telegram, truth = meter.transmit(600, datetime(2025, 2, 3, 4, 5))
    return telegram, truth, key


def test_ell_aes_ctr_decrypts_and_its_crc_tells_a_wrong_key() -> None:
    telegram, truth, key = _simulated(kind=MeterKind.HEAT, ell_encryption=True, manufacturer="KAM")
    good = decode_wmbus(telegram, KeyRing({"31415926": key}))
    assert good.security.state is SecurityState.DECRYPTED and good.security.layer == "ell"
    energy = next(r for r in good.records if r.quantity == "energy" and r.storage == 0)
    assert energy.base_value == truth.values["energy"]
    bad = decode_wmbus(telegram, KeyRing({"31415926": MeterKey(bytes(16))}))
    assert bad.security.state is SecurityState.WRONG_KEY
    assert bad.records == ()


def test_too_many_encrypted_blocks_announced_is_an_error_not_a_crash() -> None:
    telegram, _, key = _simulated(security_mode=5)
    broken = bytearray(telegram)
    broken[13] = 0xF0  # configuration low byte: 15 encrypted blocks
    result = decode_wmbus(bytes(broken), KeyRing.single(key))
    assert result.error is not None and "15 encrypted blocks" in result.error
    assert result.records == ()


def test_a_receiver_that_already_decrypted_is_recognised() -> None:
    # Some sticks decrypt with keys stored in them and leave the header as it was.
    example = EXAMPLES[0]
    decrypted = decode_wmbus(_telegram(example), _keys(example))
    assert decrypted.ok
    from drivers.wmbus.crypto import cbc_decrypt

    raw = _telegram(example)
    iv = raw[2:10] + bytes([raw[11]]) * 8
    plain = raw[:15] + cbc_decrypt(MeterKey.from_hex(example["key"]), iv, raw[15:])
    result = decode_wmbus(plain, KeyRing())
    assert result.security.state is SecurityState.DECRYPTED
    assert "already decrypted" in (result.security.reason or "")
    assert [r.value for r in result.records] == [r.value for r in decrypted.records]
