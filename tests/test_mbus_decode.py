"""Application-layer decoding: real telegrams against libmbus, and tables of edge cases.

Every frames/*.hex under the reference directory is its own test case and
is compared record by record with its .norm.xml (see
tests/mbus_support/libmbus_reference.py for how names and libmbus quirks
are mapped). Every bad/*.hex must be refused with a DecodeError or decode
to a telegram that says plainly why it is incomplete.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from drivers.core.errors import DecodeError, FrameError
from drivers.mbus.datafield import DataCoding
from drivers.mbus.decode_json import parse_hex, split_frames, telegram_to_json
from drivers.mbus.frame import LongFrame
from drivers.mbus.records import DataRecord, RecordFunction, decode_records
from drivers.mbus.telegram import decode_telegram, decode_user_data, manufacturer_code
from tests.mbus_support.libmbus_reference import (
    header_problems,
    load_reference,
    missing_testdata_message,
    record_problems,
)
from tests.mbus_support.libmbus_reference import (
    testdata_dir as reference_dir,
)
from tests.support import REPO

TESTDATA = reference_dir()


def _files(kind: str) -> list[object]:
    folder = TESTDATA / kind
    if not folder.is_dir():
        return [pytest.param(None, id=f"{kind}-missing")]
    paths = sorted(folder.glob("*.hex"))
    if not paths:
        return [pytest.param(None, id=f"{kind}-empty")]
    return [pytest.param(path, id=path.stem) for path in paths]


def _require(path: Path | None) -> Path:
    if path is None:
        pytest.fail(missing_testdata_message(TESTDATA))
    return path


@pytest.mark.parametrize("path", _files("frames"))
def test_reference_frame_matches_libmbus(path: Path | None) -> None:
    path = _require(path)
    telegram = decode_telegram(parse_hex(path.read_text(encoding="ascii")))
    json.dumps(telegram_to_json(parse_hex(path.read_text(encoding="ascii"))))
    reference_path = path.with_suffix(".norm.xml")
    if not reference_path.exists():
        return  # no reference: decoding without error is the check
    reference = load_reference(reference_path)
    problems = header_problems(telegram, reference)
    if len(telegram.records) != len(reference.records):
        problems.append(f"{len(telegram.records)} records, reference has {len(reference.records)}")
    fixed = telegram.header.ci in (0x73, 0x77)
    for ours, theirs in zip(telegram.records, reference.records, strict=False):
        problems += record_problems(ours, theirs, fixed)
    assert not problems, f"{path.name}:\n" + "\n".join(problems)


@pytest.mark.parametrize("path", _files("bad"))
def test_bad_frame_is_refused_or_flagged(path: Path | None) -> None:
    path = _require(path)
    try:
        telegram = decode_telegram(parse_hex(path.read_text(encoding="ascii")))
    except DecodeError as error:
        message = str(error)
        assert message and "\n" not in message
        return
    # A structurally valid telegram that carries no readings: it must say so.
    assert telegram.more_records_follow or not any(
        record.function != RecordFunction.MANUFACTURER_DATA for record in telegram.records
    ), f"{path.name} decoded without any flag"
    assert not [r for r in telegram.records if r.quantity != "manufacturer_data"]


# --- Header and CI ------------------------------------------------------------------


def _long_header(ident: bytes = b"\x78\x56\x34\x12") -> bytes:
    return ident + b"\x24\x40\x01\x07\x55\x00\x00\x00"


def test_long_header_fields() -> None:
    telegram = decode_user_data(0x72, _long_header() + b"\x04\x13\x01\x00\x00\x00")
    header = telegram.header
    assert header.identification == "12345678"
    assert header.manufacturer == "PAD"
    assert (header.version, header.medium, header.access_number) == (1, "water", 0x55)
    assert (header.status, header.signature) == (0, 0)
    assert telegram.records[0].value == Decimal("0.001")


def test_msb_first_header_and_data() -> None:
    header = b"\x12\x34\x56\x78\x40\x24\x01\x07\x55\x00\x00\x00"
    telegram = decode_user_data(0x76, header + b"\x02\x13\x01\x00")
    assert telegram.header.identification == "12345678"
    assert telegram.header.manufacturer == "PAD"
    assert telegram.records[0].value == Decimal("0.256")


def test_short_header_has_no_identity() -> None:
    telegram = decode_user_data(0x7A, b"\x10\x00\x00\x00" + b"\x01\x13\x05")
    assert telegram.header.identification is None
    assert telegram.header.access_number == 0x10
    assert telegram.records[0].value == Decimal("0.005")


@pytest.mark.parametrize(
    ("ci", "data", "reason"),
    [
        (0x70, b"\x08", "application busy"),
        (0x70, b"", "no error code"),
        (0x51, b"\x00", "0x51"),
        (0x72, b"\x00\x01", "header"),
        (0x73, b"\x00" * 10, "fixed data"),
    ],
)
def test_unusable_application_layer_is_a_decode_error(ci: int, data: bytes, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        decode_user_data(ci, data)


def test_short_frame_is_not_a_telegram() -> None:
    with pytest.raises(DecodeError, match="long frame"):
        decode_telegram(bytes.fromhex("105B015C16"))


@pytest.mark.parametrize(
    ("value", "letters"),
    [(0x4024, "PAD"), (0x2C2D, "KAM"), (0x0441, "ABA"), (0x6A7A, "ZSZ")],
)
def test_manufacturer_letters(value: int, letters: str) -> None:
    assert manufacturer_code(value) == letters


def test_fixed_data_structure() -> None:
    data = bytes.fromhex("93929190 10 00 0569 31650000 69000000".replace(" ", ""))
    telegram = decode_user_data(0x73, data)
    assert telegram.header.identification == "90919293"
    assert telegram.header.medium == "heat"
    energy, volume = telegram.records
    assert (energy.quantity, energy.value, energy.unit) == ("energy", Decimal(6531), "kWh")
    assert energy.base_value == Decimal(6531000)
    assert (volume.quantity, volume.value, volume.unit) == ("volume", Decimal("0.069"), "m3")


# --- Records: DIF/DIFE ---------------------------------------------------------------


def _one(record_bytes: bytes) -> DataRecord:
    block = decode_records(record_bytes)
    assert len(block.records) == 1
    return block.records[0]


@pytest.mark.parametrize(
    ("raw", "function", "storage", "tariff", "subunit"),
    [
        ("0413 00000000", RecordFunction.INSTANTANEOUS, 0, 0, 0),
        ("1413 00000000", RecordFunction.MAXIMUM, 0, 0, 0),
        ("2413 00000000", RecordFunction.MINIMUM, 0, 0, 0),
        ("3413 00000000", RecordFunction.ERROR_STATE, 0, 0, 0),
        ("4413 00000000", RecordFunction.INSTANTANEOUS, 1, 0, 0),
        ("8401 13 00000000", RecordFunction.INSTANTANEOUS, 2, 0, 0),
        ("C4 8F 0F 13 00000000", RecordFunction.INSTANTANEOUS, 511, 0, 0),
        ("84 10 13 00000000", RecordFunction.INSTANTANEOUS, 0, 1, 0),
        ("84 B0 40 13 00000000", RecordFunction.INSTANTANEOUS, 0, 3, 2),
        ("84 40 13 00000000", RecordFunction.INSTANTANEOUS, 0, 0, 1),
    ],
)
def test_dif_and_dife_fields(
    raw: str, function: RecordFunction, storage: int, tariff: int, subunit: int
) -> None:
    record = _one(bytes.fromhex(raw.replace(" ", "")))
    assert (record.function, record.storage, record.tariff, record.subunit) == (
        function,
        storage,
        tariff,
        subunit,
    )


def test_too_many_difes_and_vifes() -> None:
    with pytest.raises(DecodeError, match="more than 10 DIFEs"):
        decode_records(bytes([0x84] + [0x80] * 10 + [0x00, 0x13, 0, 0, 0, 0]))
    decode_records(bytes([0x84] + [0x80] * 9 + [0x00, 0x13, 0, 0, 0, 0]))
    with pytest.raises(DecodeError, match="more than 10 VIFEs"):
        decode_records(bytes([0x04, 0x93] + [0xA2] * 10 + [0x22, 0, 0, 0, 0]))


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("84", "DIFE"),
        ("04", "VIF"),
        ("0493", "VIFE"),
        ("041301", "needs 4 bytes"),
        ("0D13", "LVAR"),
        ("0D1305414243", "LVAR text"),
        ("0DFD0BF8", "reserved"),
        ("3F", "special DIF"),
        ("0CFC05414243", "plain-text"),
    ],
)
def test_truncated_or_impossible_records(raw: str, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        decode_records(bytes.fromhex(raw))


def test_special_functions() -> None:
    block = decode_records(bytes.fromhex("2F 2F 0413 01000000 2F 1F AABB".replace(" ", "")))
    assert [r.function for r in block.records] == [
        RecordFunction.INSTANTANEOUS,
        RecordFunction.MORE_RECORDS_FOLLOW,
    ]
    assert block.more_records_follow
    assert block.manufacturer_data == b"\xaa\xbb"
    assert block.records[1].value == "AA BB"
    manufacturer = decode_records(bytes.fromhex("0F01"))
    assert not manufacturer.more_records_follow
    assert manufacturer.records[0].function is RecordFunction.MANUFACTURER_DATA


# --- VIF scaling ----------------------------------------------------------------------

VIF_CASES = [
    # raw record, quantity, value, unit, base value, base unit
    ("0403 39300000", "energy", Decimal(12345), "Wh", Decimal(12345), "Wh"),
    ("0400 39300000", "energy", Decimal("12.345"), "Wh", Decimal("12.345"), "Wh"),
    ("0406 39300000", "energy", Decimal(12345), "kWh", Decimal(12345000), "Wh"),
    ("0407 39300000", "energy", Decimal(123450), "kWh", Decimal(123450000), "Wh"),
    ("040E 39300000", "energy", Decimal(12345), "MJ", Decimal(12345000000), "J"),
    ("0413 39300000", "volume", Decimal("12.345"), "m3", Decimal("12.345"), "m3"),
    ("0410 39300000", "volume", Decimal("0.012345"), "m3", Decimal("0.012345"), "m3"),
    ("041E 39300000", "mass", Decimal(12345), "t", Decimal(12345000), "kg"),
    ("0422 0A000000", "on_time", Decimal(10), "h", Decimal(36000), "s"),
    ("0427 02000000", "operating_time", Decimal(2), "d", Decimal(172800), "s"),
    ("042B 39300000", "power", Decimal(12345), "W", Decimal(12345), "W"),
    ("042E 39300000", "power", Decimal(12345), "kW", Decimal(12345000), "W"),
    ("0433 39300000", "power", Decimal(12345000), "J/h", Decimal(12345000), "J/h"),
    ("043B 39300000", "volume_flow", Decimal("12.345"), "m3/h", Decimal("12.345"), "m3/h"),
    ("0446 0A000000", "volume_flow", Decimal("1.0"), "m3/min", Decimal("60.0"), "m3/h"),
    ("044E 0A000000", "volume_flow", Decimal("0.010"), "m3/s", Decimal("36.000"), "m3/h"),
    ("0453 0A000000", "mass_flow", Decimal(10), "kg/h", Decimal(10), "kg/h"),
    ("025A 2301", "flow_temperature", Decimal("29.1"), "Cel", Decimal("29.1"), "Cel"),
    ("025E 2301", "return_temperature", Decimal("29.1"), "Cel", Decimal("29.1"), "Cel"),
    ("0261 FEFF", "temperature_difference", Decimal("-0.02"), "K", Decimal("-0.02"), "K"),
    ("0265 E803", "external_temperature", Decimal("10.00"), "Cel", Decimal("10.00"), "Cel"),
    ("0268 E803", "pressure", Decimal("1.000"), "bar", Decimal("1.000"), "bar"),
    ("0271 0700", "averaging_duration", Decimal(7), "min", Decimal(420), "s"),
    ("0274 0400", "actuality_duration", Decimal(4), "s", Decimal(4), "s"),
    ("0A5A 5302", "flow_temperature", Decimal("25.3"), "Cel", Decimal("25.3"), "Cel"),
    ("0B2E 123456", "power", Decimal(563412), "kW", Decimal(563412000), "W"),
    ("0E03 123456789012", "energy", Decimal(129078563412), "Wh", Decimal(129078563412), "Wh"),
    ("05 2B CDCCCC3D", "power", Decimal("0.1"), "W", Decimal("0.1"), "W"),
    ("05 3E F5B84E40", "volume_flow", Decimal("3.230039"), "m3/h", Decimal("3.230039"), "m3/h"),
    ("05 2E 0000C03F", "power", Decimal("1.5"), "kW", Decimal("1500.0"), "W"),
]


@pytest.mark.parametrize(("raw", "quantity", "value", "unit", "base_value", "base_unit"), VIF_CASES)
def test_vif_scaling(
    raw: str, quantity: str, value: Decimal, unit: str, base_value: Decimal, base_unit: str
) -> None:
    record = _one(bytes.fromhex(raw.replace(" ", "")))
    assert (record.quantity, record.unit, record.base_unit) == (quantity, unit, base_unit)
    assert isinstance(record.value, Decimal)
    assert record.value == value
    assert record.base_value == base_value
    assert not record.unknown and not record.invalid


# What one count of the transmitted number is worth, from the VIF's exponent
# (EN 13757-3 table 12), in the record's base unit.
STEP_CASES = [
    ("04 03 01000000", Decimal(1), "Wh"),  # energy 10^0 Wh
    ("04 06 01000000", Decimal(1000), "Wh"),  # energy 10^3 Wh
    ("04 0E 01000000", Decimal(1_000_000), "J"),  # energy 10^6 J
    ("04 13 01000000", Decimal("0.001"), "m3"),  # volume 10^-3 m3
    ("02 5A 2301", Decimal("0.1"), "Cel"),  # flow temperature 10^-1
    ("02 61 FEFF", Decimal("0.01"), "K"),  # temperature difference 10^-2
    ("0A 5A 5302", Decimal("0.1"), "Cel"),  # the same in BCD
    ("0E 03 123456789012", Decimal(1), "Wh"),  # 12-digit BCD energy
    ("04 46 0A000000", Decimal(6), "m3/h"),  # 10^-1 m3 per minute
    ("05 2E 0000C03F", None, "W"),  # real32: the step is relative to the value
]


@pytest.mark.parametrize(("raw", "step", "base_unit"), STEP_CASES)
def test_a_records_step_comes_from_its_vif(raw: str, step: Decimal | None, base_unit: str) -> None:
    record = _one(bytes.fromhex(raw.replace(" ", "")))
    assert (record.step, record.base_unit) == (step, base_unit)


def test_real32_is_the_shortest_decimal() -> None:
    record = _one(bytes.fromhex("052BCDCCCC3D"))
    assert str(record.value) == "0.1"
    assert _one(bytes.fromhex("052B0000C07F")).invalid  # NaN


@pytest.mark.parametrize(
    ("raw", "quantity", "value", "unit"),
    [
        ("0C78 78563412", "fabrication_number", 12345678, ""),
        ("0C79 78563412", "enhanced_identification", 12345678, ""),
        ("017A 05", "bus_address", 5, ""),
        ("026E 0A00", "hca", 10, ""),
        ("02FD08 FF00", "access_number", 255, ""),
        ("01FD09 07", "medium", 7, ""),
        ("02FD17 0080", "error_flags", 0x8000, ""),
        ("01FD1B 02", "digital_input", 2, ""),
        ("01FD1A 01", "digital_output", 1, ""),
        ("02FD1C 6009", "baud_rate", Decimal(2400), "Bd"),
        ("01FD1E 03", "retry", 3, ""),
        ("02FD60 0300", "reset_counter", 3, ""),
        ("02FD61 0400", "cumulation_counter", 4, ""),
        ("02FD48 EA08", "voltage", Decimal("228.2"), "V"),
        ("02FD59 E803", "current", Decimal("1.000"), "A"),
        ("02FD02 0A00", "credit", Decimal("1.0"), ""),
        ("02FD0E 0200", "firmware_version", 2, ""),
        ("0DFD0B 06 353332445652", "parameter_set_id", "RVD235", ""),
        ("02FD74 6400", "remaining_battery_life", Decimal(100), "d"),
        ("02FD6D 0500", "battery_operating_time", Decimal(5), "d"),
        ("04FB00 0A000000", "energy", Decimal("1.0"), "MWh"),
        ("04FB01 0A000000", "energy", Decimal(10), "MWh"),
        ("04FB09 0A000000", "energy", Decimal(10), "GJ"),
        ("04FB10 0A000000", "volume", Decimal(1000), "m3"),
        ("04FB18 0A000000", "mass", Decimal(1000), "t"),
        ("04FB21 0A000000", "volume", Decimal("1.0"), "ft3"),
        ("04FB28 0A000000", "power", Decimal("1.0"), "MW"),
        ("04FB31 0A000000", "power", Decimal(10), "GJ/h"),
        ("02FB5A E803", "flow_temperature", Decimal("100.0"), "degF"),
        ("02FB75 E803", "temperature_limit", Decimal("10.00"), "Cel"),
    ],
)
def test_extension_tables(raw: str, quantity: str, value: object, unit: str) -> None:
    record = _one(bytes.fromhex(raw.replace(" ", "")))
    assert (record.quantity, record.value, record.unit) == (quantity, value, unit)
    assert type(record.value) is type(value)
    assert not record.unknown


def test_fb_fd_base_values() -> None:
    assert _one(bytes.fromhex("04FB000A000000")).base_value == Decimal(1000000)
    assert _one(bytes.fromhex("04FB090A000000")).base_value == Decimal(10**10)
    assert _one(bytes.fromhex("02FD74 6400".replace(" ", ""))).base_value == Decimal(8640000)


@pytest.mark.parametrize(
    ("raw", "value", "notes"),
    [
        ("04 93 70 0A000000", Decimal("0.000000010"), ()),  # 10^-6
        ("04 93 76 0A000000", Decimal("0.010"), ()),  # 10^0
        ("04 93 77 0A000000", Decimal("0.10"), ()),  # 10^1
        ("04 93 7D 0A000000", Decimal(10), ()),  # 10^3
        ("04 93 FD 74 0A000000", Decimal("0.10"), ()),  # 10^3 then 10^-2
        ("04 93 7B 0A000000", Decimal("0.010"), ()),  # + 10^0 m3 ... see below
    ],
)
def test_correction_vifes(raw: str, value: Decimal, notes: tuple[str, ...]) -> None:
    record = _one(bytes.fromhex(raw.replace(" ", "")))
    if "7B" in raw.split():
        # Additive constant 10^(nn-3) in the VIF's base unit: 0.010 m3 + 1 m3.
        assert record.value == Decimal("1.010")
    else:
        assert record.value == value
    assert not record.unknown and not record.invalid


def test_plain_text_vif_with_correction() -> None:
    record = _one(bytes.fromhex("02FC034852257 4D411".replace(" ", "")))
    assert (record.quantity, record.unit, record.value) == ("plain_text", "%RH", Decimal("45.64"))


@pytest.mark.parametrize(
    ("raw", "note", "unit"),
    [
        ("04 AB 22 0A000000", "per_h", "W/h"),
        ("04 93 3B 0A000000", "accumulation_of_positive_contributions", "m3"),
        ("04 BE 50 0A000000", "duration_of_first_lower_limit_exceed_s", "s"),
        ("04 BE 48 0A000000", "upper_limit_value", "m3/h"),
    ],
)
def test_combinable_vifes(raw: str, note: str, unit: str) -> None:
    record = _one(bytes.fromhex(raw.replace(" ", "")))
    assert note in record.notes
    assert record.unit == unit
    assert not record.unknown


def test_date_time_of_vife_reads_a_date() -> None:
    record = _one(bytes.fromhex("94 10 DA 6F 32147A18".replace(" ", "")))
    assert record.quantity == "flow_temperature"
    assert record.value == datetime(2011, 8, 26, 20, 50)


@pytest.mark.parametrize(
    ("raw", "note"),
    [
        ("04 93 15 0A000000", "error:no_data_available"),
        ("04 93 18 0A000000", "error:data_error"),
    ],
)
def test_error_vifes_flag_the_record(raw: str, note: str) -> None:
    record = _one(bytes.fromhex(raw.replace(" ", "")))
    assert record.invalid and note in record.notes
    assert record.value == Decimal("0.010")


@pytest.mark.parametrize(
    "raw",
    [
        "02 6F 0100",  # reserved primary VIF
        "02 FD 7C 0100",  # reserved FD code
        "02 FB 40 0100",  # reserved FB code
        "02 93 FC 00 0100",  # reserved code of the second combinable VIFE table
        "02 7B 0100",  # extension VIF without its VIFE
    ],
)
def test_unknown_codes_give_one_flagged_record(raw: str) -> None:
    record = _one(bytes.fromhex(raw.replace(" ", "")))
    assert record.unknown
    assert record.quantity == "unknown"
    assert record.value == 1
    assert record.raw == bytes.fromhex(raw).hex(" ").upper()


def test_a_gas_meters_volume_at_base_conditions_is_a_known_volume() -> None:
    # EN 13757-3:2018 combinable VIFE 0x3E, value at base conditions (it was
    # taken for a reserved code and the gas meter's total came out unknown)
    record = _one(bytes.fromhex("0C933E84278406"))
    assert not record.unknown
    assert record.quantity == "volume" and record.base_value == Decimal("6842.784")
    assert record.notes == ("value_at_base_conditions",)


def test_a_vife_of_the_second_combinable_table_names_the_phase() -> None:
    # VIF FD, VIFE 48 (volts in 0.1 V steps, extension bit set), then FC 02: at phase L2
    record = _one(bytes.fromhex("02FDC8FC02E608"))
    assert not record.unknown
    assert record.notes == ("at_phase_l2",)
    assert record.quantity == "voltage" and record.value == Decimal("227.8")  # 0x08E6 = 2278 steps of 0.1 V


def test_manufacturer_specific_vif_and_vife() -> None:
    record = _one(bytes.fromhex("02 7F 10B5".replace(" ", "")))
    assert (record.quantity, record.value) == ("manufacturer_specific", -19184)
    record = _one(bytes.fromhex("02 93 FF 05 0A00".replace(" ", "")))
    assert record.quantity == "volume" and record.value == Decimal("0.010")
    assert any(note.startswith("manufacturer_specific_vife") for note in record.notes)


# --- Data types ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "value", "invalid"),
    [
        ("09 13 12", Decimal("0.012"), False),
        ("0A 13 3412", Decimal("1.234"), False),
        ("0B 13 563412", Decimal("123.456"), False),
        ("0C 13 78563412", Decimal("12345.678"), False),
        ("0E 13 123456789012", Decimal("129078563.412"), False),
        ("0A 13 34F2", Decimal("-0.234"), False),  # F in the top nibble: negative
        ("0C 13 785634F2", Decimal("-2345.678"), False),
        ("0A 13 3A12", None, True),  # digit A
        ("0A 13 34E1", None, True),
        ("0D 13 C2 3412", Decimal("1.234"), False),  # LVAR positive BCD
        ("0D 13 D2 3412", Decimal("-1.234"), False),  # LVAR negative BCD
    ],
)
def test_bcd(raw: str, value: Decimal | None, invalid: bool) -> None:
    record = _one(bytes.fromhex(raw.replace(" ", "")))
    assert record.value == value
    assert record.invalid is invalid


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("01 13 FF", Decimal("-0.001")),
        ("03 13 FFFF7F", Decimal("8388.607")),
        ("06 13 010000000080", Decimal("-140737488355.327")),
        ("07 03 0100000000000000", Decimal(1)),
        ("0D 13 E3 010203", Decimal("197.121")),  # LVAR binary
    ],
)
def test_integers(raw: str, value: Decimal) -> None:
    assert _one(bytes.fromhex(raw.replace(" ", ""))).value == value


@pytest.mark.parametrize(
    ("raw", "value", "invalid"),
    [
        ("02 6C 1F1C", date(2008, 12, 31), False),  # type G
        ("02 6C 0000", None, True),  # day 0 month 0
        ("02 6C FFFF", None, True),
        ("02 6C 3F0C", None, True),  # day 31 in a month without it? 31 Dec year 1 -> valid
        ("04 6D 2B0CE917", datetime(2015, 7, 9, 12, 43), False),  # type F
        ("04 6D A10CE917", None, True),  # IV bit
        ("04 6D 2B19E917", None, True),  # hour 25
        ("06 6D 1E2B0CE91700", datetime(2015, 7, 9, 12, 43, 30), False),  # type I
        ("06 6D 1EAB0CE91700", None, True),  # type I IV bit
    ],
)
def test_dates(raw: str, value: date | None, invalid: bool) -> None:
    raw_bytes = bytes.fromhex(raw.replace(" ", ""))
    if raw == "02 6C 3F0C":
        # 0x3F: day 31, year bits 1; 0x0C: month 12 -> 2001-12-31, valid.
        value, invalid = date(2001, 12, 31), False
    record = _one(raw_bytes)
    assert record.value == value
    assert record.invalid is invalid
    assert record.quantity == "time_point"


def test_text_lvar_is_reversed() -> None:
    record = _one(bytes.fromhex("0DFD11 04 44434241".replace(" ", "")))
    assert (record.quantity, record.value, record.coding) == ("customer", "ABCD", DataCoding.TEXT)


def test_selection_for_readout_has_no_value() -> None:
    record = _one(bytes.fromhex("0813"))
    assert record.value is None and record.coding is DataCoding.SELECTION


# --- JSON ------------------------------------------------------------------------------


def _frame(ci: int, data: bytes) -> bytes:
    return LongFrame(0x08, 1, ci, data).to_bytes()


def test_telegram_to_json_is_serialisable() -> None:
    body = _long_header() + bytes.fromhex("0413 39300000 046D 2B0CE917 0DFD11 024241 1F 01")
    result = telegram_to_json(_frame(0x72, body))
    text = json.dumps(result)
    assert json.loads(text) == result
    assert result["header"]["identification"] == "12345678"  # type: ignore[index]
    assert result["header"]["more_records_follow"] is True  # type: ignore[index]
    records = result["records"]
    assert isinstance(records, list)
    assert records[0]["value"] == "12.345"
    assert records[0]["raw"] == "04 13 39 30 00 00"
    assert records[1]["value"] == "2015-07-09T12:43:00"
    assert records[2]["value"] == "AB"
    assert set(records[0]) >= {
        "index",
        "function",
        "storage",
        "tariff",
        "subunit",
        "quantity",
        "value",
        "unit",
        "raw",
    }


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("68 03 03 68", b"\x68\x03\x03\x68"),
        ("e5\n", b"\xe5"),
        ("10 5b\n01 5C 16\n", bytes.fromhex("105b015c16")),
        ("  0a  ", b"\x0a"),
        # Issue 15 item 14: the forms tools and logs print.
        ("6803", b"\x68\x03"),
        ("68030368\r\n", b"\x68\x03\x03\x68"),
        ("68 0x03", b"\x68\x03"),
        ("0x68,0x03,0X03", b"\x68\x03\x03"),
        ("68,03", b"\x68\x03"),
        ("68|03|03|68", b"\x68\x03\x03\x68"),
        ("68:03:03:68", b"\x68\x03\x03\x68"),
        ("# captured 2025-01-12 21:00 at heat-5\n68 03 # start, L\n03 68\n", b"\x68\x03\x03\x68"),
    ],
)
def test_parse_hex(text: str, expected: bytes) -> None:
    assert parse_hex(text) == expected


@pytest.mark.parametrize("text", ["", "   \n", "D 04", "680", "zz", "68 G1", "0x", "# only a comment\n",
                                  "68 03 - 03"])
def test_parse_hex_rejects_junk(text: str) -> None:
    with pytest.raises(DecodeError):
        parse_hex(text)


def test_parse_hex_names_the_line_of_a_bad_token() -> None:
    with pytest.raises(DecodeError, match=r"line 2: '6Z' is not hex"):
        parse_hex("68 03\n6Z 68\n")
    with pytest.raises(DecodeError, match=r"line 1: '680' has an odd number of hex digits"):
        parse_hex("680 3")


def test_split_frames_cuts_at_each_frames_own_length() -> None:
    first, second = _frame(0x72, _long_header()), _frame(0x72, _long_header() + bytes.fromhex("04133930 0000"))
    assert split_frames(first + second + b"\xe5") == [first, second, b"\xe5"]
    with pytest.raises(FrameError, match="telegram 2 is cut short"):
        split_frames(first + second[:-3])
    with pytest.raises(FrameError, match="telegram 2: unexpected start byte 0x3F"):
        split_frames(first + b"\x3f\x00")


def _decode_cli(text: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.cli", "mbus", "decode", "-"], check=False, input=text,
                          capture_output=True, text=True, cwd=REPO, timeout=30)


def test_mbus_decode_reads_hex_without_spaces_as_logs_print_it() -> None:
    spaced = (TESTDATA / "frames" / "engelmann_sensostar2c.hex").read_text(encoding="ascii")
    reference = _decode_cli(spaced)
    assert reference.returncode == 0, reference.stderr
    for text in ("".join(spaced.split()), "|".join(spaced.split()), ":".join(spaced.split()).lower(),
                 ", ".join(f"0x{b}" for b in spaced.split()), f"# heat meter, cellar\n{spaced} # end\n"):
        result = _decode_cli(text)
        assert result.returncode == 0, (text[:40], result.stderr)
        assert json.loads(result.stdout) == json.loads(reference.stdout)


def test_mbus_decode_reads_several_telegrams_one_per_line() -> None:
    names = ("engelmann_sensostar2c", "EDC")
    texts = [(TESTDATA / "frames" / f"{name}.hex").read_text(encoding="ascii").strip() for name in names]
    result = _decode_cli("\n".join("".join(text.split()) for text in texts) + "\n")
    assert result.returncode == 0, result.stderr
    decoded = json.loads(result.stdout)
    singles = [json.loads(_decode_cli(text).stdout) for text in texts]
    assert decoded == singles
    assert decoded[0]["header"]["identification"] == "10380010"


def test_mbus_decode_of_a_missing_file_is_one_line_and_exit_66(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "agent.cli", "mbus", "decode", str(tmp_path / "absent.hex")],
                            check=False, capture_output=True, text=True, cwd=REPO, timeout=30)
    assert result.returncode == 66
    assert result.stderr == f"retrofit-agent mbus: cannot read {tmp_path / 'absent.hex'}: No such file or directory\n"


@pytest.mark.parametrize(("text", "said"), [
    ("not hex at all", "line 1: 'not' is not hex"),
    ("68939368", "telegram 1 is cut short"),
    ("", "no hex bytes found"),
])
def test_mbus_decode_of_junk_is_one_line_and_exit_65(text: str, said: str) -> None:
    result = _decode_cli(text)
    assert result.returncode == 65, result.stdout + result.stderr
    assert result.stderr.count("\n") == 1 and said in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_frame_errors_surface_through_the_decoder() -> None:
    good = _frame(0x72, _long_header())
    broken = good[:-2] + bytes([(good[-2] + 1) & 0xFF]) + good[-1:]
    with pytest.raises(FrameError, match="checksum"):
        decode_telegram(broken)


def test_the_most_negative_binary_value_is_the_meters_no_value_marker_not_a_reading() -> None:
    # A new meter's set-date volume before its first set date: 0x80000000,
    # which read as a number is -2,147,483.648 m3 (meters and their
    # maintainers use it as "no value"); it was published as a valid volume.
    record = _one(bytes.fromhex("4413 00000080"))
    assert record.invalid and record.value is None and record.base_value is None
    assert any("no value" in note for note in record.notes)
    # one more than the marker is a real (if odd) number
    assert _one(bytes.fromhex("4413 01000080")).value == Decimal("-2147483.647")
    assert _one(bytes.fromhex("025B 0080")).invalid  # 16 bits: -32768 Cel is no temperature either
