"""Wireless M-Bus link layer: block CRCs of formats A and B, the header, repeats."""

from __future__ import annotations

from datetime import datetime

import pytest

from drivers.core.errors import FrameError
from drivers.wmbus.crc import crc16_en13757
from drivers.wmbus.link import FrameFormat, RepeatFilter, add_crcs, format_a_length, parse_link
from simulators.wmbus_meter import MeterKind, RadioMeterSpec, SimulatedRadioMeter

# OMS Vol.2 Annex N N.2.1 without its CRCs (tests/data/wmbus/spec-examples.json).
ANNEX_N_21 = bytes.fromhex(
    "2E449315785634123303 7A2A0020255923 C95AAA26D1B2E7493B013EC4A6F6"
    "D3529B520EDFF0EA6DEFC99D6D69EBF3".replace(" ", "")
)


def test_crc_is_the_en13757_crc16() -> None:
    # The catalogued check value of CRC-16/EN-13757 over "123456789".
    assert crc16_en13757(b"123456789") == 0xC2B7


def test_header_fields_of_a_published_telegram() -> None:
    frame = parse_link(ANNEX_N_21)
    assert frame.c_field == 0x44
    assert frame.message_type == "SND_NR"
    assert frame.address.manufacturer == "ELS"
    assert frame.address.identification == "12345678"
    assert frame.address.version == 0x33
    assert frame.address.device_type == 0x03
    assert frame.address.medium == "gas"
    assert frame.ci == 0x7A
    assert frame.frame_format is None  # delivered without CRCs


@pytest.mark.parametrize("frame_format", list(FrameFormat))
@pytest.mark.parametrize("length", [10, 11, 25, 26, 27, 42, 120, 124, 125, 126, 200, 251])
def test_crcs_added_are_found_checked_and_stripped(frame_format: FrameFormat, length: int) -> None:
    body = bytes([0x44, 0x93, 0x15]) + bytes(range(6)) + bytes((7 * i) & 0xFF for i in range(length - 9))
    telegram = bytes([len(body)]) + body
    if frame_format is FrameFormat.B and len(body) + 4 > 255:
        pytest.skip("too long for format B")
    on_air = add_crcs(telegram, frame_format)
    assert len(on_air) > len(telegram)
    frame = parse_link(on_air)
    assert frame.frame_format is frame_format
    assert bytes([len(body)]) + bytes([frame.c_field]) + frame.address.raw + frame.payload == telegram


def test_format_a_length_counts_a_crc_per_block() -> None:
    # L=0x2E: 10 header bytes + 37 more in 3 blocks (16, 16, 5): 47 + 4 CRCs... + 1 L
    assert format_a_length(0x2E) == 0x2E + 1 + 2 * 4


@pytest.mark.parametrize("frame_format", list(FrameFormat))
def test_a_flipped_bit_is_a_crc_error_naming_the_block(frame_format: FrameFormat) -> None:
    on_air = bytearray(add_crcs(ANNEX_N_21, frame_format))
    on_air[30] ^= 0x04
    with pytest.raises(FrameError, match="CRC error"):
        parse_link(bytes(on_air), frame_format)


def test_a_damaged_crc_telegram_is_not_taken_for_one_without_crcs() -> None:
    # It once was: a format A telegram whose last block failed its CRC fell
    # through to "no CRCs, trailing bytes ignored" and decoded as garbage.
    on_air = bytearray(add_crcs(ANNEX_N_21, FrameFormat.A))
    on_air[-1] ^= 0x01
    with pytest.raises(FrameError, match="block 4 CRC error"):
        parse_link(bytes(on_air))


def test_a_truncated_telegram_is_named_as_such() -> None:
    with pytest.raises(FrameError, match="shorter than its L-field"):
        parse_link(ANNEX_N_21[:-3])


def test_bytes_after_the_l_field_are_ignored_and_counted() -> None:
    frame = parse_link(ANNEX_N_21 + b"\xc4")  # a receiver's RSSI byte
    assert frame.trailing == 1
    assert frame.payload == ANNEX_N_21[10:]


def test_too_short_to_have_a_ci_field() -> None:
    with pytest.raises(FrameError, match="at least 11 bytes"):
        parse_link(bytes.fromhex("0944931578563412330300"[:20]))


def _meter(security: int = 0) -> SimulatedRadioMeter:
    return SimulatedRadioMeter(RadioMeterSpec(12345678, MeterKind.WATER, "KAM"), seed=1)


def test_repeat_filter_drops_the_same_telegram_once_and_lets_the_next_through() -> None:
    meter = _meter()
    first, _ = meter.transmit(60, datetime(2025, 1, 1))
    second, _ = meter.transmit(60, datetime(2025, 1, 1, 0, 1))
    repeats = RepeatFilter()
    assert not repeats.is_repeat(parse_link(first), now=0.0)
    assert repeats.is_repeat(parse_link(first), now=0.5)  # relayed by a repeater
    assert not repeats.is_repeat(parse_link(second), now=60.0)
    assert repeats.dropped == 1


def test_repeat_filter_ignores_the_hop_count_a_repeater_sets() -> None:
    meter = _meter()
    telegram, _ = meter.transmit(60, datetime(2025, 1, 1))
    relayed = bytearray(telegram)
    relayed[13] |= 0x01  # TPL configuration field, low byte: hop count H
    repeats = RepeatFilter()
    assert not repeats.is_repeat(parse_link(telegram), now=0.0)
    assert repeats.is_repeat(parse_link(bytes(relayed)), now=1.0)


def test_repeat_filter_forgets_after_its_window() -> None:
    telegram, _ = _meter().transmit(60, datetime(2025, 1, 1))
    repeats = RepeatFilter(window_s=30.0)
    assert not repeats.is_repeat(parse_link(telegram), now=0.0)
    assert not repeats.is_repeat(parse_link(telegram), now=31.0)  # access number wrapped, say


def test_repeat_filter_memory_is_bounded() -> None:
    meter = _meter()
    repeats = RepeatFilter(capacity=8)
    telegrams = [meter.transmit(60, datetime(2025, 1, 1))[0] for _ in range(20)]
    for t, telegram in enumerate(telegrams):
        repeats.is_repeat(parse_link(telegram), now=float(t))
    assert len(repeats) == 8
    assert not repeats.is_repeat(parse_link(telegrams[0]), now=21.0)  # forgotten, oldest first
    assert repeats.is_repeat(parse_link(telegrams[-1]), now=21.0)
