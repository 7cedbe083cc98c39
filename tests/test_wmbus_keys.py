"""Key files and the key type: parsed strictly, never shown."""

from __future__ import annotations

import copy
import logging
import pickle
from pathlib import Path

import pytest

from drivers.core.errors import ConfigError
from drivers.wmbus import KeyRing, MeterKey, parse_key_lines
from drivers.wmbus.keys import credentials_key_file, load_key_file, permission_problem

KEY_A = "0102030405060708090A0B0C0D0E0F11"
KEY_B = "A1B2C3D4E5F60718293A4B5C6D7E8F90"


def test_vendor_shapes_parse() -> None:
    ring = parse_key_lines(
        [
            "\ufeff# delivered 2025-03-01",
            "Meter ID;AES Key",
            f"12345678;{KEY_A}",
            "",
            f"  1234 , {KEY_B.lower()}   # a short id is zero-padded",
            f"87654321\tELS\t{KEY_B}",
            f'"11112222","{KEY_A}"',
        ]
    )
    assert ring.meters() == ["00001234", "11112222", "12345678", "87654321"]
    assert ring.key_for("12345678") == MeterKey.from_hex(KEY_A)
    assert ring.key_for("00001234") == MeterKey.from_hex(KEY_B)
    assert ring.key_for("99999999") is None


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (f"12345678;{KEY_A[:-2]}", "has 30 characters"),
        (f"12345678;{KEY_A[:-1]}Z", "not hex digits"),
        (f"123456789;{KEY_A}", "not an identification number"),
        ("12345678", "expected a meter id and a key"),
    ],
)
def test_a_bad_line_names_file_and_line_and_never_the_key(line: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_key_lines(["meter;key", f"11111111;{KEY_B}", line], "keys.csv")
    text = str(caught.value)
    assert text.startswith("keys.csv:3: ")
    assert message in text
    assert KEY_A[:16] not in text and KEY_A[-16:-1] not in text
    assert KEY_B not in text


def test_every_bad_line_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_key_lines([f"1;{KEY_A[:4]}", f"2;{KEY_A[:5]}"], "k")
    assert [p.split(":")[1] for p in caught.value.problems] == ["1", "2"]


def test_one_meter_with_two_different_keys_is_refused() -> None:
    with pytest.raises(ConfigError, match="k:2: meter 12345678 already has a different key on line 1"):
        parse_key_lines([f"12345678;{KEY_A}", f"12345678;{KEY_B}"], "k")


def test_key_file_unreadable_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the key file"):
        load_key_file(tmp_path / "missing.csv")


def test_key_file_permissions_and_credentials(tmp_path: Path) -> None:
    path = tmp_path / "wmbus-keys"
    path.write_text(f"12345678;{KEY_A}\n")
    path.chmod(0o644)
    assert "chmod 600" in (permission_problem(path) or "")
    path.chmod(0o600)
    assert permission_problem(path) is None
    assert len(load_key_file(path)) == 1
    assert credentials_key_file({"CREDENTIALS_DIRECTORY": str(tmp_path)}) == path
    assert credentials_key_file({}) is None


def test_a_key_never_shows_itself(caplog: pytest.LogCaptureFixture) -> None:
    key = MeterKey.from_hex(KEY_A)
    ring = KeyRing({"12345678": key})
    shown = [repr(key), str(key), f"{key}", f"{key!r}", f"{key:>40}", repr([key]), repr(ring),
             repr({"k": key})]
    logging.getLogger("test").warning("key %s ring %r", key, ring)
    shown.append(caplog.text)
    for text in shown:
        assert KEY_A.lower() not in text.lower()
        assert bytes.fromhex(KEY_A).decode("latin-1") not in text
    assert key.fingerprint in repr(key)


def test_a_key_cannot_be_pickled_or_changed() -> None:
    key = MeterKey.from_hex(KEY_A)
    with pytest.raises(TypeError):
        pickle.dumps(key)
    with pytest.raises(TypeError):
        copy.copy(key)
    with pytest.raises(AttributeError):
        key._key = b"x" * 16


def test_a_bad_key_text_is_refused_without_echo() -> None:
    with pytest.raises(ValueError, match="hex digits") as caught:
        MeterKey.from_hex("0102030405060708090A0B0C0D0E0FXX")
    assert "0102" not in str(caught.value)
