"""Compact frames (CI 0x79/0x7B/0x73): values without headers, read with the
format an earlier full frame showed, checked by the full frame's CRC.

The simulated meters build their compact frames from their own record list
(simulators/wmbus_meter.py), not with the decoder's code; the values are
the simulator's ground truth."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta
from decimal import Decimal

import pytest

from drivers.wmbus.compact import FormatBook
from drivers.wmbus.crc import crc16_en13757
from drivers.wmbus.decode import WmbusResult, decode_wmbus
from drivers.wmbus.keys import KeyRing
from simulators.wmbus_meter import MeterKind, RadioMeterSpec, SimulatedRadioMeter, generate_keys

KEY = generate_keys(1, seed=5)[0]
START = datetime(2026, 1, 10, 8, 0)
LAYERS = {
    "plain short header": {},
    "mode 5": {"security_mode": 5, "key": KEY},
    "mode 7, long header": {"security_mode": 7, "key": KEY, "long_header": True},
    "ELL AES-CTR (Kamstrup style)": {"ell_encryption": True, "key": KEY},
}


def _meter(kind: MeterKind = MeterKind.HEAT, every: int = 4, **spec: object) -> SimulatedRadioMeter:
    return SimulatedRadioMeter(RadioMeterSpec(41_000_007, kind, compact_every=every, **spec), seed=2)  # type: ignore[arg-type]


def _volume(result: WmbusResult) -> Decimal | None:
    return next(r.base_value for r in result.records if r.quantity == "volume" and r.storage == 0)


@pytest.mark.parametrize("layers", list(LAYERS))
def test_compact_frames_after_a_full_frame_give_the_meters_values(layers: str) -> None:
    meter = _meter(**LAYERS[layers])  # type: ignore[arg-type]
    book, keys = FormatBook(), KeyRing.single(KEY)
    compact = 0
    for step in range(9):
        telegram, truth = meter.transmit(120, START + timedelta(minutes=2 * step))
        result = decode_wmbus(telegram, keys, None, book)
        assert result.error is None, result.error
        compact += truth.compact
        assert _volume(result) == truth.values["volume"]
        energy = next(r for r in result.records if r.quantity == "energy" and r.storage == 0)
        assert energy.base_value == truth.values["energy"]
        temperature = next(r for r in result.records if r.quantity == "flow_temperature")
        assert temperature.value == truth.values["flow_temperature"]
    assert compact == 6, "two full frames and six compact ones were sent"


def test_a_compact_frame_before_any_full_frame_gives_no_values_and_says_why() -> None:
    meter = _meter(MeterKind.WATER)
    meter.transmit(120, START)  # the full frame, lost on air
    telegram, truth = meter.transmit(120, START + timedelta(minutes=2))
    assert truth.compact
    result = decode_wmbus(telegram, KeyRing.single(KEY), None, FormatBook())
    assert result.records == ()
    assert result.awaiting_format
    assert result.error is not None and "full frame" in result.error


def test_a_full_frame_of_one_meter_teaches_the_format_of_every_meter_of_its_kind() -> None:
    first, second = _meter(MeterKind.HCA), SimulatedRadioMeter(
        RadioMeterSpec(41_000_099, MeterKind.HCA, compact_every=4), seed=9)
    book = FormatBook()
    decode_wmbus(first.transmit(120, START)[0], formats=book)
    second.transmit(120, START)  # its own full frame is not heard
    telegram, truth = second.transmit(120, START + timedelta(minutes=2))
    result = decode_wmbus(telegram, formats=book)
    assert truth.compact and result.error is None
    units = next(r.value for r in result.records if r.quantity == "hca" and r.storage == 0)
    assert units == truth.values["hca"]


def test_a_compact_frame_whose_rebuilt_frame_fails_its_crc_gives_no_values() -> None:
    meter = _meter(MeterKind.WATER)
    book = FormatBook()
    decode_wmbus(meter.transmit(120, START)[0], formats=book)
    telegram = bytearray(meter.transmit(120, START + timedelta(minutes=2))[0])
    # CI 0x7B: access number, status, configuration (4 bytes), then the
    # signature (2) and the full frame's CRC (2): change the CRC.
    crc_at = 11 + 4 + 2
    telegram[crc_at] ^= 0x01
    result = decode_wmbus(bytes(telegram), formats=book)
    assert result.records == ()
    assert not result.awaiting_format
    assert result.error is not None and "CRC" in result.error


def test_a_format_the_meter_family_is_known_to_send_decodes_the_first_compact_frame() -> None:
    # The water meter's records: volume, flow, volume at set date, set date,
    # date-time, error flags (the simulator's list, written out by hand).
    water_format = bytes.fromhex("0413 023B 4413 426C 046D 02FD17")
    meter = _meter(MeterKind.WATER)
    meter.transmit(120, START)
    telegram, truth = meter.transmit(120, START + timedelta(minutes=2))
    result = decode_wmbus(telegram, formats=FormatBook(known=[water_format]))
    assert truth.compact and result.error is None
    assert _volume(result) == truth.values["volume"]
    assert crc16_en13757(water_format) == int.from_bytes(telegram[15:17], "little")


def test_the_format_book_forgets_the_oldest_format_beyond_its_capacity() -> None:
    book = FormatBook(capacity=2)
    for vif in (0x13, 0x14, 0x15):
        assert book.learn(bytes([0x04, vif]) + bytes(4)) is not None
    assert len(book) == 2


def test_a_full_frame_with_a_variable_length_record_teaches_no_format() -> None:
    book = FormatBook()
    assert book.learn(bytes.fromhex("0413 01000000 0D78 03 414243")) is None
    assert len(book) == 0


def test_wmbus_decode_reads_a_compact_frame_after_the_full_frame_on_an_earlier_line() -> None:
    meter = _meter(MeterKind.WATER, every=3, security_mode=5, key=KEY)
    lines, truths = [], []
    for step in range(3):
        telegram, truth = meter.transmit(120, START + timedelta(minutes=2 * step))
        lines.append(telegram.hex())
        truths.append(truth)
    done = subprocess.run([sys.executable, "-m", "agent.cli", "wmbus", "decode", "--key", KEY.secret().hex()],
                          input="\n".join(lines) + "\n", capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    outputs = [json.loads(line) for line in done.stdout.splitlines()]
    assert [t.compact for t in truths] == [False, True, True]
    for output, truth in zip(outputs, truths, strict=True):
        assert "error" not in output, output
        volume = next(r for r in output["records"] if r["quantity"] == "volume" and r["storage"] == 0)
        assert Decimal(volume["base_value"]) == truth.values["volume"]


def test_wmbus_decode_holds_a_compact_frame_until_a_later_line_shows_its_format() -> None:
    # A capture that starts mid-cycle: two compact frames, then the meter's
    # full frame; a fourth line is a compact frame of a kind never sent full.
    water = _meter(MeterKind.WATER, every=3)
    hca = _meter(MeterKind.HCA, every=3)
    sent = [water.transmit(120, START + timedelta(minutes=2 * step)) for step in range(4)]
    hca.transmit(120, START)
    orphan = hca.transmit(120, START + timedelta(minutes=2))
    lines = [sent[1], sent[2], sent[3], orphan]  # compact, compact, full, compact (no format ever)
    assert [truth.compact for _, truth in lines] == [True, True, False, True]
    done = subprocess.run([sys.executable, "-m", "agent.cli", "wmbus", "decode"],
                          input="\n".join(t.hex() for t, _ in lines) + "\n", capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    outputs = {o["line"]: o for o in map(json.loads, done.stdout.splitlines())}
    assert sorted(outputs) == [1, 2, 3, 4]
    for number in (1, 2, 3):
        volume = next(r for r in outputs[number]["records"] if r["quantity"] == "volume" and r["storage"] == 0)
        assert Decimal(volume["base_value"]) == lines[number - 1][1].values["volume"]
    assert outputs[4]["records"] == [] and "full frame" in outputs[4]["error"]
