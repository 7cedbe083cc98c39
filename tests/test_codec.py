"""Register codec: a table of known encodings, and encode-then-decode for every type and order."""

from __future__ import annotations

import math
import struct
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.modbus.codec import REGISTER_TYPES, WORD_ORDERS, encode, make_decoder, shortest_float32

# 0x01020304 as each order puts it on the wire (written out, not computed).
WIRE = {"ABCD": [0x0102, 0x0304], "CDAB": [0x0304, 0x0102], "BADC": [0x0201, 0x0403], "DCBA": [0x0403, 0x0201]}


@pytest.mark.parametrize("order", WORD_ORDERS)
def test_word_and_byte_orders_as_manuals_spell_them(order: str) -> None:
    assert make_decoder("uint32", order)(WIRE[order]) == 0x01020304
    assert encode(0x01020304, "uint32", order) == WIRE[order]


@pytest.mark.parametrize(("kind", "registers", "value"), [
    ("int16", [0xFF9C], -100),
    ("uint16", [0xFF9C], 65436),
    ("int32", [0xFFFF, 0xFFFE], -2),
    ("float32", [0x4366, 0x199A], 230.1),
    ("float64", [0x4028, 0xAE14, 0x7AE1, 0x47AE], 12.34),
    ("uint64", [0x0000, 0x0001, 0x0000, 0x0000], 2**32),
])
def test_known_encodings(kind: str, registers: list[int], value: float) -> None:
    assert make_decoder(kind)(registers) == value


def test_scale_is_exact_decimal_arithmetic() -> None:
    tenth = make_decoder("int16", "ABCD", Decimal("0.1"))
    assert tenth([231]) == 23.1 and tenth([3]) == 0.3  # not 0.30000000000000004
    assert make_decoder("uint16", "ABCD", Decimal("0.01"), Decimal(-40))([6543]) == 25.43


def _int_range(kind: str) -> st.SearchStrategy[int]:
    bits = int(kind.removeprefix("u").removeprefix("int"))
    return st.integers(0, 2**bits - 1) if kind.startswith("u") else st.integers(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)


@settings(max_examples=300, deadline=None)
@given(st.data(), st.sampled_from([k for k in REGISTER_TYPES if "int" in k]), st.sampled_from(WORD_ORDERS))
def test_integers_round_trip_for_every_type_and_order(data: st.DataObject, kind: str, order: str) -> None:
    value = data.draw(_int_range(kind))
    registers = encode(value, kind, order)
    assert all(0 <= r <= 0xFFFF for r in registers)
    assert make_decoder(kind, order)(registers) == value


@settings(max_examples=300, deadline=None)
@given(st.floats(width=32, allow_nan=False), st.sampled_from(WORD_ORDERS))
def test_float32_round_trips_bit_exact_and_shortest(value: float, order: str) -> None:
    decoded = make_decoder("float32", order)(encode(value, "float32", order))
    assert struct.pack(">f", decoded) == struct.pack(">f", value)
    assert len(repr(decoded)) <= len(repr(value)) or math.isinf(value)


@settings(max_examples=200, deadline=None)
@given(st.floats(allow_nan=False), st.sampled_from(WORD_ORDERS))
def test_float64_round_trips_bit_exact(value: float, order: str) -> None:
    assert make_decoder("float64", order)(encode(value, "float64", order)) == value


def test_shortest_float32_keeps_only_the_digits_a_float32_has() -> None:
    widened = struct.unpack(">f", struct.pack(">f", 230.1))[0]
    assert widened != 230.1 and shortest_float32(widened) == 230.1
