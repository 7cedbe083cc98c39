"""Receiver framing: iM871A HCI, AMB8465 commands, SDR lines. Pure codecs, no I/O."""

from __future__ import annotations

import json
from datetime import datetime

import pytest

from drivers.core.errors import DecodeError, FrameError
from drivers.wmbus import amb8465, im871a, sdr
from simulators.wmbus_meter import (
    RadioMeterSpec,
    SimulatedRadioMeter,
    amb8465_frame,
    im871a_frame,
    rtl_wmbus_line,
)


def _telegrams(count: int) -> list[bytes]:
    meter = SimulatedRadioMeter(RadioMeterSpec(20000001, manufacturer="APA"), seed=4)
    return [meter.transmit(60, datetime(2025, 1, 1))[0] for _ in range(count)]


def test_crc16_x25_check_value() -> None:
    assert im871a.crc16_x25(b"123456789") == 0x906E


def test_im871a_stream_in_odd_chunks_with_garbage_between() -> None:
    telegrams = _telegrams(5)
    stream = b"\x00\x13" + b"\xa5".join(im871a_frame(t, rssi_dbm=-60.0, timestamp=i) for i, t in
                                        enumerate(telegrams))
    decoder = im871a.HciDecoder()
    messages = []
    for start in range(0, len(stream), 7):
        messages += decoder.feed(stream[start : start + 7])
    received = [im871a.to_received(m) for m in messages]
    assert [r.telegram for r in received if r] == telegrams
    assert all(r is not None and r.rssi_dbm is not None and abs(r.rssi_dbm + 60.0) < 1 for r in received)
    assert [m.timestamp for m in messages] == list(range(5))
    assert decoder.discarded == 2 + 4  # leading garbage, and the four stray 0xA5 between frames


def test_im871a_bad_crc_is_dropped_and_the_next_message_still_read() -> None:
    first, second = _telegrams(2)
    damaged = bytearray(im871a_frame(first))
    damaged[10] ^= 0x01
    decoder = im871a.HciDecoder()
    messages = decoder.feed(bytes(damaged) + im871a_frame(second))
    assert [im871a.to_received(m).telegram for m in messages] == [second]  # type: ignore[union-attr]
    assert decoder.crc_errors == 1


def test_im871a_set_config_selects_the_link_mode_in_volatile_memory() -> None:
    request = im871a.set_config_request(["c1", "t1"])
    (message,) = im871a.HciDecoder().feed(request)
    assert (message.endpoint, message.message_id) == (im871a.ENDPOINT_DEVMGMT, 0x03)
    assert message.payload[0] == 0x00  # not NVM
    assert message.payload[3] == 0x0A  # C1+T1
    assert im871a.HciDecoder().feed(im871a.set_config_request(["t1"]))[0].payload[3] == 0x03
    with pytest.raises(FrameError, match="cannot listen to"):
        im871a.set_config_request(["s1", "t1"])


def test_amb8465_set_mode_bytes_are_the_modules_own() -> None:
    # FF 04 01 <mode> <xor>: the sequences the module's manual and other receivers use.
    assert amb8465.set_mode_request(["t1"]) == bytes.fromhex("FF040108F2")
    assert amb8465.set_mode_request(["c1", "t1"]) == bytes.fromhex("FF040109F3")
    assert amb8465.set_mode_request(["s1"]) == bytes.fromhex("FF040103F9")


def test_amb8465_stream_with_rssi_and_a_bad_checksum() -> None:
    telegrams = _telegrams(3)
    frames = [amb8465_frame(t, rssi_dbm=-80.0) for t in telegrams]
    broken = bytearray(frames[1])
    broken[-1] ^= 0xFF
    decoder = amb8465.AmberDecoder(rssi=True)
    messages = decoder.feed(frames[0] + bytes(broken) + frames[2])
    received = [amb8465.to_received(m) for m in messages]
    assert [r.telegram for r in received if r] == [telegrams[0], telegrams[2]]
    assert received[0] is not None and received[0].rssi_dbm == -80.0
    assert decoder.checksum_errors >= 1


def test_amb8465_transparent_mode_counts_rssi_in_the_l_field() -> None:
    telegram = _telegrams(1)[0]
    wire = amb8465.transparent_telegram(telegram, rssi_raw=0x10)
    assert wire[0] == telegram[0] + 1 and wire[-1] == 0x10


def test_rtl_433_json_line() -> None:
    telegram = _telegrams(1)[0]
    line = json.dumps({"time": "2025-01-01 00:00:00", "model": "Wireless-MBus", "mode": "T",
                       "id": 20000001, "data": telegram.hex(), "rssi": -12.3})
    received = sdr.parse_line(line)
    assert received is not None and received.telegram == telegram
    assert received.mode == "T"
    # rtl_433's level is dB below full scale: kept as the SDR's level, never as dBm.
    assert received.rssi_dbm is None and received.level == -12.3 and "not dBm" in str(received.level_scale)
    assert sdr.parse_line(json.dumps({"model": "Acurite-Tower", "id": 1})) is None


def test_rtl_wmbus_line() -> None:
    telegram = _telegrams(1)[0]
    received = sdr.parse_line(rtl_wmbus_line(telegram, "C1", rssi=37))
    assert received is not None and received.telegram == telegram and received.mode == "C1"
    # rtl_wmbus's rssi field is an uncalibrated magnitude: the SDR's level, never dBm.
    assert received.rssi_dbm is None and received.level == 37.0 and "not dBm" in str(received.level_scale)
    with pytest.raises(DecodeError, match="CRC error"):
        sdr.parse_line(rtl_wmbus_line(telegram).replace(";1;1;", ";0;1;", 1))


@pytest.mark.parametrize(
    ("line", "message"),
    [("2E44 93 1G", "'G' is not a hex digit"), ("2E4", "odd number"), ("{not json", "not valid JSON")],
)
def test_bad_lines_say_what_is_wrong(line: str, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        sdr.parse_line(line)


def test_an_on_air_format_b_telegram_through_a_stick_decodes_to_its_truth() -> None:
    from drivers.wmbus import KeyRing, decode_wmbus
    from drivers.wmbus.link import FrameFormat
    from simulators.wmbus_meter import MeterKind, generate_keys, strip_to_crcless

    key = generate_keys(1, seed=8)[0]
    meter = SimulatedRadioMeter(RadioMeterSpec(20000002, MeterKind.HCA, security_mode=5, key=key,
                                                frame_format=FrameFormat.B, with_crcs=True), seed=8)
    on_air, truth = meter.transmit(60, datetime(2025, 1, 1))
    (message,) = im871a.HciDecoder().feed(im871a_frame(strip_to_crcless(meter, on_air)))
    received = im871a.to_received(message)
    assert received is not None
    result = decode_wmbus(received.telegram, KeyRing({"20000002": key}))
    assert [r.value for r in result.records if r.quantity == "hca"] == [truth.values["hca"], truth.values["hca@1"]]


def test_amb8465_settings_confirmation_carries_rssi_enable() -> None:
    decoder = amb8465.AmberDecoder(rssi=False)
    answer = decoder.feed(amb8465.get_confirmation(amb8465.RSSI_ENABLE, b"\x01"))[0]
    assert amb8465.setting(answer, amb8465.RSSI_ENABLE) == 1
    assert amb8465.setting(answer, amb8465.RSSI_ENABLE + 1) is None
    block = decoder.feed(amb8465.get_confirmation(60, bytes(range(20))))[0]  # 60..79: 69 is the tenth
    assert amb8465.setting(block, amb8465.RSSI_ENABLE) == 9
    mode = decoder.feed(amb8465.set_mode_request(["t1"]))[0]
    assert amb8465.setting(mode, amb8465.RSSI_ENABLE) is None
