"""Link layer: frame parsing, building, checksums and the "how many bytes more" answer."""

from __future__ import annotations

import pytest

from drivers.core.errors import FrameError
from drivers.mbus import frame
from drivers.mbus.frame import (
    LongFrame,
    ShortFrame,
    SingleChar,
    build_application_reset,
    build_req_ud2,
    build_select_secondary,
    build_snd_nke,
    bytes_needed,
    checksum,
    encode_secondary_address,
    frame_length,
    is_rsp_ud,
    parse_frame,
    split_frame,
)


@pytest.mark.parametrize(
    ("built", "expected"),
    [
        (build_snd_nke(1), "10 40 01 41 16"),
        (build_snd_nke(0xFE), "10 40 FE 3E 16"),
        (build_req_ud2(5), "10 5B 05 60 16"),
        (build_req_ud2(5, fcb=True), "10 7B 05 80 16"),
        (build_req_ud2(0xFD), "10 5B FD 58 16"),
        (build_application_reset(1), "68 03 03 68 53 01 50 A4 16"),
        (build_application_reset(1, 0x10), "68 04 04 68 53 01 50 10 B4 16"),
        (
            build_select_secondary("12345678"),
            "68 0B 0B 68 53 FD 52 78 56 34 12 FF FF FF FF B2 16",
        ),
        (
            build_select_secondary("1234FFFF", manufacturer=0x4024, version=1, medium=7),
            "68 0B 0B 68 53 FD 52 FF FF 34 12 24 40 01 07 52 16",
        ),
    ],
)
def test_requests_on_the_wire(built: bytes, expected: str) -> None:
    assert built == bytes.fromhex(expected)
    parse_frame(built)  # every request we build is a valid frame


@pytest.mark.parametrize(
    "parsed",
    [
        SingleChar(),
        ShortFrame(0x5B, 1),
        ShortFrame(0x40, 250),
        LongFrame(0x53, 0xFD, 0x52),
        LongFrame(0x08, 1, 0x72, bytes(range(12))),
        LongFrame(0x08, 0xFE, 0x72, bytes(252)),
    ],
)
def test_round_trip(parsed: frame.Frame) -> None:
    wire = parsed.to_bytes()
    assert parse_frame(wire) == parsed
    assert bytes_needed(wire) == 0
    assert frame_length(wire) == len(wire)


def test_control_frame_flag() -> None:
    assert LongFrame(0x53, 1, 0x50).is_control_frame
    assert not LongFrame(0x08, 1, 0x72, b"\x00").is_control_frame


def test_checksum_is_sum_modulo_256() -> None:
    assert checksum(b"") == 0
    assert checksum(bytes([0xFF, 0x02])) == 0x01
    assert checksum(bytes([0x08, 0x01, 0x72])) == 0x7B


@pytest.mark.parametrize(
    ("wire", "reason"),
    [
        ("", "empty"),
        ("10 5B 01 5D 16", "checksum"),
        ("10 5B 01 5C 17", "stop byte"),
        ("10 5B 01 5C", "truncated"),
        ("10 5B 01 5C 16 00", "trailing"),
        ("68 03 04 68 53 01 50 A4 16", "length fields differ"),
        ("68 03 03 69 53 01 50 A4 16", "second start byte"),
        ("68 02 02 68 53 01 A4 16", "at least 3"),
        ("68 00 00 68 08 16", "at least 3"),
        ("68 03 03 68 53 01 50 A5 16", "checksum"),
        ("68 04 04 68 53 01 50 A4 16", "truncated"),
        ("41 42", "start byte"),
        ("E5 E5", "trailing"),
    ],
)
def test_malformed_frames(wire: str, reason: str) -> None:
    with pytest.raises(FrameError, match=reason):
        parse_frame(bytes.fromhex(wire))


@pytest.mark.parametrize(
    ("received", "needed"),
    [
        ("", 1),
        ("E5", 0),
        ("10", 4),
        ("10 5B 01", 2),
        ("68", 3),
        ("68 1E", 34),
        ("68 1E 1E 68", 32),
        ("68 03 03 68 53 01 50", 2),
        ("68 03 03 68 53 01 50 A4 16", 0),
        ("68 03 03 68 53 01 50 A4 16 E5", 0),
    ],
)
def test_bytes_needed(received: str, needed: int) -> None:
    assert bytes_needed(bytes.fromhex(received)) == needed


@pytest.mark.parametrize("received", ["00", "68 01", "68 05 06", "68 05 05 00"])
def test_bytes_needed_rejects_impossible_starts(received: str) -> None:
    with pytest.raises(FrameError):
        bytes_needed(bytes.fromhex(received))


def test_split_frame_cuts_one_frame_off_a_buffer() -> None:
    buffer = build_req_ud2(1) + b"\xe5" + build_snd_nke(2)[:3]
    first = split_frame(buffer)
    assert first is not None
    parsed, rest = first
    assert parsed == ShortFrame(0x5B, 1)
    second = split_frame(rest)
    assert second is not None and second[0] == SingleChar()
    assert split_frame(second[1]) is None


@pytest.mark.parametrize("address", [-1, 251, 0xFC, 256])
def test_unusable_addresses(address: int) -> None:
    with pytest.raises(FrameError, match="address"):
        build_req_ud2(address)


@pytest.mark.parametrize("address", [0, 1, 250, 0xFD, 0xFE, 0xFF])
def test_usable_addresses(address: int) -> None:
    assert parse_frame(build_req_ud2(address)) == ShortFrame(0x5B, address)


@pytest.mark.parametrize("ident", ["1234567", "123456789", "1234567A", "12 45678", ""])
def test_secondary_address_must_be_8_digits_or_f(ident: str) -> None:
    with pytest.raises(FrameError, match="secondary address"):
        encode_secondary_address(ident)


def test_secondary_address_fields() -> None:
    with pytest.raises(FrameError, match="manufacturer"):
        encode_secondary_address("12345678", manufacturer=0x10000)
    with pytest.raises(FrameError, match="medium"):
        encode_secondary_address("12345678", medium=256)
    assert encode_secondary_address("ffffffff") == b"\xff" * 8


def test_long_frame_data_limit() -> None:
    with pytest.raises(FrameError, match="at most 252"):
        LongFrame(0x08, 1, 0x72, bytes(253)).to_bytes()
    with pytest.raises(FrameError, match="control"):
        ShortFrame(0x100, 1).to_bytes()


# EN 13757-2: a meter answers RSP_UD, C = 08h, with its ACD (20h) and DFC
# (10h) bits set or not; every frame a master sends has PRM (40h) set.
@pytest.mark.parametrize(("control", "from_a_meter"), [
    (0x08, True), (0x18, True), (0x28, True), (0x38, True),
    (0x53, False), (0x73, False),  # SND_UD (a selection, an application reset): a second master or an echo
    (0x5B, False), (0x7B, False),  # REQ_UD2, either FCB
    (0x40, False), (0x00, False), (0x09, False), (0x88, False), (0x48, False),
])
def test_only_a_meters_rsp_ud_control_field_is_an_answer(control: int, from_a_meter: bool) -> None:
    assert is_rsp_ud(control) is from_a_meter
