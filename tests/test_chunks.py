"""Packed readings (agent/chunks.py): lossless, and damage is an error, never a value."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent import chunks

FLOAT32 = st.floats(width=32, allow_nan=False)
VALUES = st.one_of(st.none(), FLOAT32, st.floats(allow_nan=False, allow_infinity=False),
                   st.integers(min_value=-(2**70), max_value=2**70), st.text(max_size=8))
QUALITIES = st.sampled_from(["ok", "ok", "ok", "invalid", "counter_jump", "clock_unsynced", "counter_backwards+restamped"])


@st.composite
def columns(draw: st.DrawFn) -> tuple[list[int], list[int], list[chunks.Value], list[str], list[int | None]]:
    n = draw(st.integers(min_value=1, max_value=300))
    sids = draw(st.lists(st.integers(min_value=1, max_value=draw(st.sampled_from([300, 2**20]))), min_size=n, max_size=n))
    base = draw(st.integers(min_value=0, max_value=2**45))
    stamps = [base + d for d in draw(st.lists(st.sampled_from([0, 0, 0, 5, 1000]), min_size=n, max_size=n))]
    kind = draw(st.sampled_from(["f32", "f64", "int", "mixed"]))
    element = {"f32": FLOAT32, "f64": st.floats(allow_nan=False), "int": st.integers(-(2**63), 2**63 - 1),
               "mixed": VALUES}[kind]
    values = draw(st.lists(element, min_size=n, max_size=n))
    qualities = draw(st.lists(QUALITIES, min_size=n, max_size=n))
    monos: list[int | None] = draw(st.one_of(st.just([None] * n),
                                             st.lists(st.integers(min_value=0, max_value=2**40), min_size=n, max_size=n)))
    return sids, stamps, values, qualities, monos


def _same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isinf(a):
        return a == b
    return type(a) is type(b) and a == b


@settings(max_examples=150, deadline=None)
@given(columns())
def test_a_chunk_gives_back_exactly_what_went_in(cols: tuple) -> None:
    sids, stamps, values, qualities, monos = cols
    decoded = chunks.decode(chunks.encode(sids, stamps, values, qualities, monos))
    assert decoded.sids == sids
    assert decoded.stamps == stamps
    assert decoded.qualities == qualities
    assert decoded.monos == monos
    assert all(_same(a, b) for a, b in zip(decoded.values, values, strict=True)), (decoded.values, values)


@settings(max_examples=150, deadline=None)
@given(columns(), st.data())
def test_damaged_bytes_are_a_chunk_error_or_decode_to_the_same_shape(cols: tuple, data: st.DataObject) -> None:
    """The stored checksum catches damage; decoding damaged bytes must still
    fail with the project's own error, never crash with another."""
    body = bytearray(chunks.encode(*cols))
    for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
        at = data.draw(st.integers(min_value=0, max_value=len(body) - 1))
        body[at] = data.draw(st.integers(min_value=0, max_value=255))
    cut = data.draw(st.integers(min_value=0, max_value=len(body)))
    for damaged in (bytes(body), bytes(body[:cut])):
        try:
            chunks.decode(damaged)
        except chunks.ChunkError:
            pass


def test_chunks_laid_end_to_end_decode_in_order() -> None:
    first = chunks.encode([1, 2], [10, 10], [1.5, 2.5], ["ok", "ok"])
    second = chunks.encode([3], [20], [7], ["invalid"], [55])
    decoded = chunks.decode(first + second)
    assert decoded.sids == [1, 2, 3]
    assert decoded.values == [1.5, 2.5, 7]
    assert decoded.monos == [None, None, 55]
    assert decoded.qualities == ["ok", "ok", "invalid"]


def test_float32_values_take_four_bytes_and_others_keep_their_precision() -> None:
    exact: list[chunks.Value] = [struct.unpack("<f", struct.pack("<f", 230.1))[0]] * 100
    assert len(chunks.encode(list(range(100)), [0] * 100, exact, ["ok"] * 100)) < 100 * 7
    precise: list[chunks.Value] = [230.1] * 100  # not exact in float32: stored as float64
    assert chunks.decode(chunks.encode(list(range(100)), [0] * 100, precise, ["ok"] * 100)).values == precise


def test_a_chunk_holds_at_most_its_limit() -> None:
    with pytest.raises(ValueError, match="a chunk holds"):
        chunks.encode([], [], [], [])
    n = chunks.MAX_READINGS + 1
    with pytest.raises(ValueError, match="a chunk holds"):
        chunks.encode([1] * n, [0] * n, [0.0] * n, ["ok"] * n)
