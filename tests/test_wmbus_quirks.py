"""What real receivers and meters do that the clean examples do not, found by
running real meters' telegrams through `wmbus decode`:

- a stick holding the key decrypts on its own and hands over the plain
  telegram with its header still saying "encrypted" (ELL AES-CTR, mode 7);
- a meter appends bytes after its last record that are no record (a
  manufacturer's tail without the 0x0F DIF, a stray CRC): the records in
  front of them were lost with the whole telegram.

The telegrams are the simulator's (simulators/wmbus_meter.py); the "stick
decrypted it" forms are made here with the standard's own construction."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal

from drivers.wmbus import KeyRing, SecurityState, decode_wmbus
from drivers.wmbus.crypto import DC_ENCRYPTION_FROM_METER, cbc_decrypt, ctr_crypt, kdf_a
from drivers.wmbus.keys import EMPTY
from simulators.wmbus_meter import MeterKind, RadioMeterSpec, SimulatedRadioMeter, generate_keys

KEY = generate_keys(1, seed=77)[0]
NOW = datetime(2026, 2, 3, 4, 5)


def _volume(records: object) -> Decimal | None:
    return next(r.base_value for r in records if r.quantity == "volume" and r.storage == 0)  # type: ignore[attr-defined]


def test_an_ell_telegram_the_stick_already_decrypted_is_read_without_a_key() -> None:
    meter = SimulatedRadioMeter(RadioMeterSpec(52_000_001, MeterKind.WATER, ell_encryption=True, key=KEY))
    telegram, truth = meter.transmit(60, NOW)
    # L C M(2) A(6) | 8D CC ACC SN(4) | CTR(CRC, CI, records)
    session = telegram[13:17]
    counter = telegram[2:10] + telegram[11:12] + session + bytes(3)
    plain = telegram[:17] + ctr_crypt(KEY, counter, telegram[17:])
    for keys in (KeyRing.single(KEY), KeyRing.single(generate_keys(1, seed=78)[0]), EMPTY):
        result = decode_wmbus(plain, keys)
        assert result.error is None
        assert result.security.state is SecurityState.DECRYPTED
        assert result.security.reason is not None and "receiver" in result.security.reason
        assert _volume(result.records) == truth.values["volume"]


def test_a_mode_7_telegram_the_stick_already_decrypted_is_read_without_a_key() -> None:
    meter = SimulatedRadioMeter(RadioMeterSpec(52_000_002, MeterKind.HEAT, security_mode=7, key=KEY))
    counter = meter.message_counter.to_bytes(4, "little")
    telegram, truth = meter.transmit(60, NOW)
    # L C M(2) A(6) | AFL 90 len ... | 7A ACC ST CF(2) CFE | encrypted blocks
    tpl = 10 + 2 + telegram[11]
    body = tpl + 6
    kenc = kdf_a(KEY, DC_ENCRYPTION_FROM_METER, counter, telegram[4:8])
    plain = telegram[:body] + cbc_decrypt(kenc, bytes(16), telegram[body:])
    assert plain[body : body + 2] == b"\x2f\x2f"
    result = decode_wmbus(plain, EMPTY)
    assert result.error is None
    assert result.security.state is SecurityState.DECRYPTED and result.security.mode == 7
    energy = next(r for r in result.records if r.quantity == "energy" and r.storage == 0)
    assert energy.base_value == truth.values["energy"]


def test_bytes_after_the_last_record_that_are_no_record_keep_the_records_before_them() -> None:
    meter = SimulatedRadioMeter(RadioMeterSpec(52_000_003, MeterKind.WATER))
    telegram, truth = meter.transmit(60, NOW)
    for tail in (b"\xdd\x2f", b"\x04\x13\x01", b"\x0d\x13\x05\x01"):
        longer = bytes([telegram[0] + len(tail)]) + telegram[1:] + tail
        result = decode_wmbus(longer)
        assert result.error is None, tail
        assert _volume(result.records) == truth.values["volume"]
        assert len(result.records) == 6
        assert any(f"last {len(tail)} byte(s)" in note for note in result.notes), result.notes


def test_a_telegram_whose_first_record_is_already_broken_is_an_error_with_no_records() -> None:
    meter = SimulatedRadioMeter(RadioMeterSpec(52_000_004, MeterKind.WATER))
    telegram, _ = meter.transmit(60, NOW)
    body = telegram[1:15] + b"\x04\x13\x01"  # C M A, CI 7A and its four bytes, a cut record
    broken = bytes([len(body)]) + body
    result = decode_wmbus(broken)
    assert result.records == ()
    assert result.error is not None and "int32" in result.error


def test_a_telegram_a_byte_or_two_short_of_its_l_field_is_read_as_far_as_it_goes() -> None:
    # A receiver that counts its RSSI byte in the L-field and strips the
    # byte hands over telegrams one byte "short"; they were all errors.
    meter = SimulatedRadioMeter(RadioMeterSpec(52_000_005, MeterKind.WATER, security_mode=5, key=KEY))
    telegram, truth = meter.transmit(60, NOW)
    for short in (1, 2):
        claimed = bytes([telegram[0] + short]) + telegram[1:]
        result = decode_wmbus(claimed, KeyRing.single(KEY))
        assert result.error is None
        assert _volume(result.records) == truth.values["volume"]
        assert any(f"{short} byte(s) shorter" in note for note in result.notes)
    three_short = bytes([telegram[0] + 3]) + telegram[1:]
    result = decode_wmbus(three_short, KeyRing.single(KEY))
    assert result.records == () and result.error is not None and "shorter than its L-field" in result.error


# A water meter's telegram from the simulated building (tests/test_flats.py's,
# seed 5: meter 40000005, its generated key below), CRC-less as a stick hands
# it over, whose last two bytes happen to be a valid format B CRC of the rest.
LOOKS_LIKE_FORMAT_B = bytes.fromhex(
    "3e4493440500004001077a57003005753f58d9d9500f50c54a3029f3b402912c0d849ea0876aba78ef69573a3a14a854dac8b86b"
    "dfa7b9766c8810df8c6467")
ITS_KEY = "74d37ff136eac13f553223a63841460d"


def test_a_sticks_telegram_whose_last_bytes_pass_for_a_format_b_crc_is_not_cut_short() -> None:
    # From the stick (CRCs removed) it lost two bytes as "a format B CRC" and
    # failed: "3 encrypted blocks (48 bytes), the telegram has 46 bytes".
    from drivers.wmbus import MeterKey, im871a
    from drivers.wmbus.link import FrameFormat, parse_link

    assert parse_link(LOOKS_LIKE_FORMAT_B).frame_format is FrameFormat.B  # the ambiguity, without knowledge
    decoder = im871a.HciDecoder()
    (message,) = decoder.feed(im871a.telegram_indication(LOOKS_LIKE_FORMAT_B, rssi_raw=100, timestamp=0))
    received = im871a.to_received(message)
    assert received is not None and received.crcs is False
    result = decode_wmbus(received.telegram, KeyRing.single(MeterKey.from_hex(ITS_KEY)), received.frame_format,
                          crcs=received.crcs)
    assert result.error is None and result.security.state is SecurityState.DECRYPTED  # its 2F2F check held
    # the simulator's water meter layout, whole: volume, flow, set-date volume and date, clock, error flags
    assert [(r.quantity, r.storage) for r in result.records] == [
        ("volume", 0), ("volume_flow", 0), ("volume", 1), ("time_point", 1), ("time_point", 0), ("error_flags", 0)]
    assert next(r.value for r in result.records if r.quantity == "time_point" and r.storage == 1) == date(2024, 5, 31)
