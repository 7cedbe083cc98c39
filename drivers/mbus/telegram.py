"""EN 13757-3 application layer: the CI field, the fixed header, the telegram.

A meter's RSP_UD carries, after the link layer, a CI byte that says how the
rest is laid out. This module reads the header for each supported CI and
hands the records to ``records.decode_records``; everything else (an
application error reply, a CI we do not implement) is a DecodeError that
says which.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from drivers.core.errors import DecodeError
from drivers.mbus import datafield
from drivers.mbus.datafield import EXACT, DataCoding
from drivers.mbus.frame import LongFrame, parse_frame
from drivers.mbus.records import DataRecord, RecordFunction, decode_records

CI_APPLICATION_ERROR = 0x70
CI_ALARM = 0x71
CI_VARIABLE_LONG = 0x72  # 12-byte header, LSB first
CI_FIXED = 0x73
CI_VARIABLE_LONG_MSB = 0x76  # 12-byte header, MSB first (mode 2)
CI_FIXED_MSB = 0x77
CI_VARIABLE_NO_HEADER = 0x78
CI_VARIABLE_SHORT = 0x7A  # 4-byte header: access number, status, signature

APPLICATION_ERRORS: dict[int, str] = {
    0x00: "unspecified error",
    0x01: "unimplemented CI field",
    0x02: "buffer too long, truncated",
    0x03: "too many records",
    0x04: "premature end of record",
    0x05: "more than 10 DIFEs",
    0x06: "more than 10 VIFEs",
    0x07: "reserved",
    0x08: "application busy",
    0x09: "too many readouts",
}

# Medium byte of the variable data header (EN 13757-3 Table 3 and
# amendments), as stable identifiers.
MEDIA: dict[int, str] = {
    0x00: "other",
    0x01: "oil",
    0x02: "electricity",
    0x03: "gas",
    0x04: "heat_outlet",
    0x05: "steam",
    0x06: "warm_water",
    0x07: "water",
    0x08: "heat_cost_allocator",
    0x09: "compressed_air",
    0x0A: "cooling_outlet",
    0x0B: "cooling_inlet",
    0x0C: "heat_inlet",
    0x0D: "heat_cooling",
    0x0E: "bus_system_component",
    0x0F: "unknown",
    0x14: "calorific_value",
    0x15: "hot_water",
    0x16: "cold_water",
    0x17: "dual_register_water",
    0x18: "pressure",
    0x19: "ad_converter",
    0x1A: "smoke_detector",
    0x1B: "room_sensor",
    0x1C: "gas_detector",
    0x20: "breaker_electricity",
    0x21: "valve",
    0x25: "customer_unit",
    0x28: "waste_water",
    0x29: "garbage",
    0x2A: "carbon_dioxide",
    0x31: "communication_controller",
    0x32: "unidirectional_repeater",
    0x33: "bidirectional_repeater",
    0x36: "radio_converter_system_side",
    0x37: "radio_converter_meter_side",
}

# Medium of the fixed data structure: four bits, an older list (EN 1434-3).
FIXED_MEDIA: dict[int, str] = {
    0x0: "other",
    0x1: "oil",
    0x2: "electricity",
    0x3: "gas",
    0x4: "heat",
    0x5: "steam",
    0x6: "hot_water",
    0x7: "water",
    0x8: "heat_cost_allocator",
    0xA: "gas_mode_2",
    0xB: "heat_mode_2",
    0xC: "hot_water_mode_2",
    0xD: "water_mode_2",
    0xE: "heat_cost_allocator_mode_2",
}


def medium_name(code: int) -> str:
    return MEDIA.get(code, "reserved")


def manufacturer_code(value: int) -> str:
    """Three letters packed five bits each (EN 62056-21 flag id), A = 1."""
    return "".join(chr(64 + ((value >> shift) & 0x1F)) for shift in (10, 5, 0))


@dataclass(frozen=True)
class TelegramHeader:
    """Fixed header of a telegram; fields a short header lacks are None.

    ``identification`` is the 8-digit BCD id as text: meters do put hex
    digits there (libmbus prints them as such), so it is not an int.
    """

    ci: int
    identification: str | None
    manufacturer: str | None
    version: int | None
    medium: str | None
    medium_code: int | None
    access_number: int | None
    status: int | None
    signature: int | None


@dataclass(frozen=True)
class Telegram:
    """A decoded RSP_UD: header, records and the manufacturer-data tail."""

    header: TelegramHeader
    records: tuple[DataRecord, ...]
    more_records_follow: bool = False
    manufacturer_data: bytes = b""


def decode_telegram(frame: bytes) -> Telegram:
    """Decode one long frame (68 L L 68 ... 16) as a meter's answer.

    Link-layer faults raise FrameError, application-layer ones DecodeError.
    """
    parsed = parse_frame(frame)
    if not isinstance(parsed, LongFrame):
        raise DecodeError(f"expected a long frame with user data, got a {type(parsed).__name__}")
    return decode_user_data(parsed.ci, parsed.data)


def decode_user_data(ci: int, data: bytes) -> Telegram:
    """Decode the application layer: the CI byte and what follows it."""
    data = bytes(data)
    if ci == CI_APPLICATION_ERROR:
        raise DecodeError(_application_error(data))
    if ci in (CI_VARIABLE_LONG, CI_VARIABLE_LONG_MSB):
        msb_first = ci == CI_VARIABLE_LONG_MSB
        header = _long_header(ci, data, msb_first)
        return _with_records(header, data[12:], msb_first)
    if ci == CI_VARIABLE_SHORT:
        header = _short_header(ci, data)
        return _with_records(header, data[4:], False)
    if ci == CI_VARIABLE_NO_HEADER:
        header = TelegramHeader(ci, None, None, None, None, None, None, None, None)
        return _with_records(header, data, False)
    if ci in (CI_FIXED, CI_FIXED_MSB):
        return _fixed_structure(ci, data, msb_first=ci == CI_FIXED_MSB)
    raise DecodeError(
        f"CI field 0x{ci:02X} is not a meter response this decoder implements "
        "(supported: 0x72, 0x76, 0x78, 0x7A variable data; 0x73, 0x77 fixed data)"
    )


def _application_error(data: bytes) -> str:
    if not data:
        return "meter answered with an application error (CI 0x70), no error code given"
    code = data[0]
    reason = APPLICATION_ERRORS.get(code, "reserved error code")
    return f"meter answered with an application error (CI 0x70): {reason} (0x{code:02X})"


def _need(data: bytes, length: int, what: str) -> None:
    if len(data) < length:
        raise DecodeError(f"{what} needs {length} bytes, the telegram has only {len(data)}")


def _long_header(ci: int, data: bytes, msb_first: bool) -> TelegramHeader:
    _need(data, 12, f"variable data header (CI 0x{ci:02X})")

    def field(start: int, length: int) -> bytes:
        chunk = data[start : start + length]
        return chunk[::-1] if msb_first else chunk

    manufacturer = int.from_bytes(field(4, 2), "little")
    medium = data[7]
    return TelegramHeader(
        ci=ci,
        identification=datafield.bcd_digits(field(0, 4)),
        manufacturer=manufacturer_code(manufacturer),
        version=data[6],
        medium=medium_name(medium),
        medium_code=medium,
        access_number=data[8],
        status=data[9],
        signature=int.from_bytes(field(10, 2), "little"),
    )


def _short_header(ci: int, data: bytes) -> TelegramHeader:
    _need(data, 4, f"short data header (CI 0x{ci:02X})")
    return TelegramHeader(
        ci=ci,
        identification=None,
        manufacturer=None,
        version=None,
        medium=None,
        medium_code=None,
        access_number=data[0],
        status=data[1],
        signature=int.from_bytes(data[2:4], "little"),
    )


def _with_records(header: TelegramHeader, body: bytes, msb_first: bool) -> Telegram:
    block = decode_records(body, msb_first=msb_first)
    return Telegram(header, block.records, block.more_records_follow, block.manufacturer_data)


# --- Fixed data structure (CI 0x73 / 0x77) ------------------------------------

# Unit codes of the fixed structure's two counters (EN 1434-3): quantity,
# value unit, exponent, base unit, factor to base.
_FIXED_UNITS: dict[int, tuple[str, str, int, str, int]] = {}


def _fixed_units() -> None:
    families = (
        (0x02, "energy", (("Wh", 0), ("kWh", 3), ("MWh", 6)), "Wh", 0, 9),
        (0x0B, "energy", (("kJ", 3), ("MJ", 6), ("GJ", 9)), "J", 3, 9),
        (0x14, "power", (("W", 0), ("kW", 3), ("MW", 6)), "W", 0, 9),
        (0x1D, "power", (("kJ/h", 3), ("MJ/h", 6), ("GJ/h", 9)), "J/h", 3, 9),
        (0x26, "volume", (("m3", 0),), "m3", -6, 9),
        (0x2F, "volume_flow", (("m3/h", 0),), "m3/h", -6, 9),
    )
    for first, quantity, units, base, first_power, count in families:
        for offset in range(count):
            power = first_power + offset
            unit, unit_power = units[0]
            for symbol, symbol_power in units:
                if symbol_power <= power:
                    unit, unit_power = symbol, symbol_power
            _FIXED_UNITS[first + offset] = (quantity, unit, power - unit_power, base, unit_power)
    _FIXED_UNITS[0x38] = ("temperature", "Cel", -3, "Cel", 0)


_fixed_units()
FIXED_UNIT_TIME = 0x00  # h,m,s
FIXED_UNIT_DATE = 0x01  # D,M,Y
FIXED_UNIT_HCA = 0x39
FIXED_UNIT_SAME_HISTORIC = 0x3E
FIXED_UNIT_NONE = 0x3F


def _fixed_structure(ci: int, data: bytes, msb_first: bool) -> Telegram:
    """Fixed data structure: id, access no, status, medium/units, two counters.

    Status bit 7 says the counters are binary (else BCD); bit 6 says they are
    historic values (else actual). Historic values are storage number 1.
    """
    _need(data, 16, f"fixed data structure (CI 0x{ci:02X})")

    def field(start: int, length: int) -> bytes:
        chunk = data[start : start + length]
        return chunk[::-1] if msb_first else chunk

    status = data[5]
    medium_units = field(6, 2)
    medium = ((medium_units[1] & 0xC0) >> 4) | ((medium_units[0] & 0xC0) >> 6)
    header = TelegramHeader(
        ci=ci,
        identification=datafield.bcd_digits(field(0, 4)),
        manufacturer=None,
        version=None,
        medium=FIXED_MEDIA.get(medium, "reserved"),
        medium_code=medium,
        access_number=data[4],
        status=status,
        signature=None,
    )
    binary = bool(status & 0x80)
    storage = 1 if status & 0x40 else 0
    first_unit = medium_units[0] & 0x3F
    second_unit = medium_units[1] & 0x3F
    if second_unit == FIXED_UNIT_SAME_HISTORIC:
        second_unit, second_storage = first_unit, 1
    else:
        second_storage = storage
    records = (
        _fixed_counter(0, field(8, 4), first_unit, binary, storage),
        _fixed_counter(1, field(12, 4), second_unit, binary, second_storage),
    )
    return Telegram(header, records)


def _fixed_counter(
    index: int, field: bytes, unit_code: int, binary: bool, storage: int
) -> DataRecord:
    coding = DataCoding.INT32 if binary else DataCoding.BCD8
    number = datafield.unsigned_int(field) if binary else datafield.bcd(field)
    invalid = isinstance(number, datafield.Invalid)
    notes: tuple[str, ...] = (number.reason,) if isinstance(number, datafield.Invalid) else ()
    quantity, unit, base_unit = "unknown", "", ""
    value: Decimal | int | None = None if isinstance(number, datafield.Invalid) else number
    base_value = None
    unknown = False
    described = _FIXED_UNITS.get(unit_code)
    if described is not None:
        quantity, unit, exponent, base_unit, base_power = described
        if isinstance(number, int):
            value = EXACT.scaleb(Decimal(number), exponent)
            if value == value.to_integral_value():
                value = value.quantize(Decimal(1), context=EXACT)
            base_value = EXACT.scaleb(value, base_power)
    elif unit_code == FIXED_UNIT_HCA:
        quantity = "hca"
    elif unit_code == FIXED_UNIT_TIME:
        quantity = "time_hms"
    elif unit_code == FIXED_UNIT_DATE:
        quantity = "date_dmy"
    elif unit_code == FIXED_UNIT_NONE:
        quantity = "dimensionless"
    else:
        unknown = True
        notes += (f"reserved_fixed_unit_0x{unit_code:02x}",)
    return DataRecord(
        index=index,
        function=RecordFunction.INSTANTANEOUS,
        storage=storage,
        tariff=0,
        subunit=0,
        quantity=quantity,
        value=value,
        unit=unit,
        base_value=base_value,
        base_unit=base_unit,
        coding=coding,
        raw=field.hex(" ").upper(),
        unknown=unknown,
        invalid=invalid,
        notes=notes,
    )
