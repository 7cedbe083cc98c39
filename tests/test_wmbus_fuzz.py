"""Property-based tests: whatever the air or a serial port delivers, only DecodeError escapes.

decode_wmbus itself never raises (its result carries the error); the layers
under it raise DecodeError and nothing else, for random bytes and for real
telegrams with bytes flipped, inserted or cut.
"""

from __future__ import annotations

from datetime import datetime

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.core.errors import ConfigError, DecodeError
from drivers.wmbus import KeyRing, decode_wmbus, parse_key_lines, parse_link
from drivers.wmbus.amb8465 import AmberDecoder
from drivers.wmbus.compact import FormatBook
from drivers.wmbus.im871a import HciDecoder
from drivers.wmbus.link import FrameFormat, add_crcs
from drivers.wmbus.sdr import parse_line
from drivers.wmbus.transport import unwrap
from simulators.wmbus_meter import MeterKind, RadioMeterSpec, SimulatedRadioMeter, generate_keys

SETTINGS = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KEYS = generate_keys(8, seed=5)


def _seeds() -> list[tuple[bytes, KeyRing]]:
    out = []
    for index, (kind, security, ell, long_header) in enumerate(
        [(MeterKind.WATER, 0, False, False), (MeterKind.HEAT, 5, False, True),
         (MeterKind.HCA, 7, False, False), (MeterKind.HEAT, 7, False, True),
         (MeterKind.WATER, 0, True, False)]
    ):
        spec = RadioMeterSpec(50_000_000 + index, kind, security_mode=security, ell_encryption=ell,
                              key=KEYS[index] if security or ell else None, long_header=long_header)
        telegram, _ = SimulatedRadioMeter(spec, seed=index).transmit(60, datetime(2025, 1, 1))
        keys = KeyRing({spec.id_text: KEYS[index]})
        out += [(telegram, keys), (add_crcs(telegram, FrameFormat.A), keys),
                (add_crcs(telegram, FrameFormat.B), keys)]
    return out


SEEDS = _seeds()


def _layers(data: bytes, keys: KeyRing) -> None:
    try:
        unwrap(parse_link(data), keys)
    except DecodeError:
        pass


@SETTINGS
@given(st.binary(max_size=300))
def test_random_bytes(data: bytes) -> None:
    decode_wmbus(data, KeyRing())
    _layers(data, KeyRing())


@st.composite
def mutated(draw: st.DrawFn) -> tuple[bytes, KeyRing]:
    telegram, keys = draw(st.sampled_from(SEEDS))
    data = bytearray(telegram)
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["flip", "set", "cut", "insert", "length"]))
        position = draw(st.integers(0, max(0, len(data) - 1)))
        if action == "flip" and data:
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif action == "set" and data:
            data[position] = draw(st.integers(0, 255))
        elif action == "cut":
            del data[position:]
        elif action == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=8))
        elif action == "length" and data:
            data[0] = len(data) - 1  # keep the L-field consistent, so deeper layers are reached
    return bytes(data), keys


@SETTINGS
@given(mutated())
def test_mutated_real_telegrams(case: tuple[bytes, KeyRing]) -> None:
    data, keys = case
    result = decode_wmbus(data, keys)
    assert result.error is not None or result.security.state.value in (
        "none", "decrypted", "no_key", "wrong_key", "unsupported")
    if not result.security.readable:
        assert result.records == ()
    _layers(data, keys)


@SETTINGS
@given(st.lists(st.binary(max_size=40), max_size=20))
def test_stick_decoders_take_any_byte_stream(chunks: list[bytes]) -> None:
    hci, amber = HciDecoder(), AmberDecoder()
    for chunk in chunks:
        hci.feed(chunk)
        amber.feed(chunk)
    assert hci.pending <= sum(map(len, chunks)) and amber.pending <= sum(map(len, chunks))


@SETTINGS
@given(st.text(max_size=200))
def test_input_lines_raise_only_decode_error(line: str) -> None:
    try:
        parse_line(line)
    except DecodeError:
        pass


@SETTINGS
@given(st.lists(st.text(max_size=80), max_size=10))
def test_key_files_raise_only_config_error(lines: list[str]) -> None:
    try:
        parse_key_lines(lines)
    except ConfigError:
        pass


def _with_payload(header: str, payload: bytes) -> bytes:
    body = bytes.fromhex(header) + payload
    return bytes([len(body) & 0xFF]) + body


# Headers that reach the manufacturer hooks and the compact-frame path:
# Apator AT-WMBUS-16-2 (APA, version 5, water, CI 7A then 2F2F 0F), E-ITN
# (APA, version 4, HCA, CI A0 / B6), the legacy APT M-field, a compact frame.
HOOK_HEADERS = ["4401060100004105077A2A0000002F2F0F", "440106010000420408A0",
                "440106010000420408B6", "441486010000420408A0", "44A51101000045000479"]


@SETTINGS
@given(st.sampled_from(HOOK_HEADERS), st.binary(max_size=200))
def test_random_payloads_behind_vendor_and_compact_headers_never_escape(header: str, payload: bytes) -> None:
    result = decode_wmbus(_with_payload(header, payload), KeyRing())
    assert result.error is None or not result.records  # an error never comes with values
    for record in result.records:
        assert record.quantity


def _compact_pair() -> tuple[bytes, bytes]:
    """A heat meter's full frame and the format signature its compact frames carry."""
    meter = SimulatedRadioMeter(RadioMeterSpec(50_000_100, MeterKind.HEAT, compact_every=2), seed=1)
    full, _ = meter.transmit(60, datetime(2025, 1, 1))
    compact, truth = meter.transmit(60, datetime(2025, 1, 1, 0, 1))
    assert truth.compact and compact[10] == 0x7B
    return full, compact[15:17]  # L C M A | 7B ACC ST CF CF | signature


FULL, SIGNATURE = _compact_pair()


@SETTINGS
@given(st.binary(max_size=120))
def test_random_values_in_a_compact_frame_of_a_known_format_never_escape(values: bytes) -> None:
    book = FormatBook()
    assert decode_wmbus(FULL, KeyRing(), None, book).error is None
    result = decode_wmbus(_with_payload("4443040100105001047B2B000000", SIGNATURE + values), KeyRing(), None, book)
    assert not result.awaiting_format  # the format is known: its CRC decides
    assert result.error is None or not result.records
