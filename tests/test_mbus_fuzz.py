"""Property tests: whatever arrives on the wire, only DecodeError comes out.

A bus worker must be able to catch one exception type for "this telegram is
unusable" and move on; an IndexError or a decimal.InvalidOperation escaping
from the decoder would take the worker down instead.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.core.errors import DecodeError
from drivers.mbus.decode_json import parse_hex, telegram_json
from drivers.mbus.frame import LongFrame, bytes_needed, parse_frame
from drivers.mbus.records import decode_records
from drivers.mbus.telegram import decode_telegram, decode_user_data
from tests.mbus_support.libmbus_reference import missing_testdata_message
from tests.mbus_support.libmbus_reference import testdata_dir as reference_dir

SETTINGS = settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _reference_frames() -> list[bytes]:
    root = reference_dir()
    paths = sorted((root / "frames").glob("*.hex")) + sorted((root / "bad").glob("*.hex"))
    frames = []
    for path in paths:
        try:
            frames.append(parse_hex(Path(path).read_text(encoding="ascii")))
        except DecodeError:
            continue  # bad/ holds one file that is not even hex
    return frames


FRAMES = _reference_frames()


def test_reference_frames_are_there() -> None:
    if not FRAMES:
        pytest.fail(missing_testdata_message(reference_dir()))


def _only_decode_errors(data: bytes) -> None:
    try:
        bytes_needed(data)
    except DecodeError:
        pass
    try:
        parse_frame(data)
    except DecodeError:
        pass
    try:
        telegram_json(decode_telegram(data))
    except DecodeError:
        pass


def _application_only(ci: int, data: bytes) -> None:
    try:
        telegram_json(decode_user_data(ci, data))
    except DecodeError:
        pass
    try:
        decode_records(data)
    except DecodeError:
        pass


@SETTINGS
@given(st.binary(max_size=300))
def test_random_bytes(data: bytes) -> None:
    _only_decode_errors(data)


@SETTINGS
@given(st.sampled_from([0x72, 0x76, 0x78, 0x7A, 0x73, 0x77, 0x70]), st.binary(max_size=260))
def test_random_application_data(ci: int, data: bytes) -> None:
    _application_only(ci, data)
    # Wrapped in a valid long frame, so the link layer lets it through.
    if len(data) <= 252:
        _only_decode_errors(LongFrame(0x08, 1, ci, data).to_bytes())


def _mutations() -> st.SearchStrategy[bytes]:
    if not FRAMES:
        return st.just(b"")
    frame = st.sampled_from(FRAMES)

    def flip(data: bytes, position: int, value: int) -> bytes:
        if not data:
            return data
        i = position % len(data)
        return data[:i] + bytes([value]) + data[i + 1 :]

    def truncate(data: bytes, position: int, _value: int) -> bytes:
        return data[: position % (len(data) + 1)]

    def insert(data: bytes, position: int, value: int) -> bytes:
        i = position % (len(data) + 1)
        return data[:i] + bytes([value]) + data[i:]

    operation = st.sampled_from([flip, truncate, insert])
    step = st.tuples(operation, st.integers(0, 1000), st.integers(0, 255))

    def apply(data: bytes, steps: list) -> bytes:
        for function, position, value in steps:
            data = function(data, position, value)
        return data

    return st.builds(apply, frame, st.lists(step, min_size=1, max_size=4))


@SETTINGS
@given(_mutations())
def test_mutated_reference_frames(data: bytes) -> None:
    _only_decode_errors(data)
    # Mutate the application layer behind an intact link layer too.
    if len(data) > 7 and data[0] == 0x68:
        body = data[6:-2][:252]
        if body:
            _only_decode_errors(LongFrame(0x08, 1, data[6], body[1:]).to_bytes())


@SETTINGS
@given(st.text(max_size=80))
def test_parse_hex_on_any_text(text: str) -> None:
    try:
        parse_hex(text)
    except DecodeError:
        pass
