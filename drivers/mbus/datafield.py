"""EN 13757-3 data types: integers, BCD, real32, dates, variable length data.

Each function takes exactly the bytes of one data field (least significant
byte first, as the wire carries them) and returns a plain value. Bad content
(a BCD digit above 9, a date with month 13) is not a broken frame: it comes
back as ``Invalid`` so the record can be kept and flagged. Only impossible
structure raises DecodeError, and that is the record decoder's business.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Context, Decimal
from enum import StrEnum

# Wide enough for every integer a data field can hold (LVAR binary: 64 bytes).
EXACT = Context(prec=400)


class DataCoding(StrEnum):
    """The coding of a data field, from the DIF (and the LVAR byte)."""

    NONE = "none"
    INT8 = "int8"
    INT16 = "int16"
    INT24 = "int24"
    INT32 = "int32"
    INT48 = "int48"
    INT64 = "int64"
    REAL32 = "real32"
    BCD2 = "bcd2"
    BCD4 = "bcd4"
    BCD6 = "bcd6"
    BCD8 = "bcd8"
    BCD12 = "bcd12"
    SELECTION = "selection"
    TEXT = "text"
    LVAR_BCD = "lvar_bcd"
    LVAR_BINARY = "lvar_binary"
    LVAR_BYTES = "lvar_bytes"
    MANUFACTURER = "manufacturer"


# DIF data field (low nibble) -> coding and fixed length. 0xD and 0xF are
# variable and decided by the record decoder.
FIXED_CODINGS: dict[int, tuple[DataCoding, int]] = {
    0x0: (DataCoding.NONE, 0),
    0x1: (DataCoding.INT8, 1),
    0x2: (DataCoding.INT16, 2),
    0x3: (DataCoding.INT24, 3),
    0x4: (DataCoding.INT32, 4),
    0x5: (DataCoding.REAL32, 4),
    0x6: (DataCoding.INT48, 6),
    0x7: (DataCoding.INT64, 8),
    0x8: (DataCoding.SELECTION, 0),
    0x9: (DataCoding.BCD2, 1),
    0xA: (DataCoding.BCD4, 2),
    0xB: (DataCoding.BCD6, 3),
    0xC: (DataCoding.BCD8, 4),
    0xE: (DataCoding.BCD12, 6),
}

INTEGER_CODINGS = frozenset(
    {
        DataCoding.INT8,
        DataCoding.INT16,
        DataCoding.INT24,
        DataCoding.INT32,
        DataCoding.INT48,
        DataCoding.INT64,
        DataCoding.LVAR_BINARY,
    }
)
BCD_CODINGS = frozenset(
    {
        DataCoding.BCD2,
        DataCoding.BCD4,
        DataCoding.BCD6,
        DataCoding.BCD8,
        DataCoding.BCD12,
        DataCoding.LVAR_BCD,
    }
)


@dataclass(frozen=True)
class Invalid:
    """A data field whose content cannot be a value; ``reason`` says why."""

    reason: str


def signed_int(data: bytes) -> int:
    """Type B: two's complement, least significant byte first."""
    return int.from_bytes(data, "little", signed=True)


def unsigned_int(data: bytes) -> int:
    """Type C / D: unsigned binary, least significant byte first."""
    return int.from_bytes(data, "little", signed=False)


def bcd_digits(data: bytes) -> str:
    """The nibbles of a BCD field, most significant first, as hex characters."""
    return data[::-1].hex().upper()


def bcd(data: bytes) -> int | Invalid:
    """Type A: BCD, least significant byte first.

    A most significant nibble of F marks a negative number (EN 13757-3,
    annex on BCD). Any other nibble above 9 is an invalid value: meters use
    A..F digits to show errors on their display.
    """
    if not data:
        return Invalid("empty BCD field")
    digits = bcd_digits(data)
    sign = 1
    if digits[0] == "F":
        sign = -1
        digits = digits[1:]
    if not digits.isdigit():
        return Invalid(f"BCD field 0x{digits} holds a digit above 9")
    return sign * int(digits) if digits else 0


def real32(data: bytes) -> Decimal | Invalid:
    """Type H: IEEE 754 single precision, as the shortest decimal that round-trips.

    0.1 sent as a float arrives as Decimal('0.1'), never 0.100000001490116.
    """
    (number,) = struct.unpack("<f", data)
    if math.isnan(number) or math.isinf(number):
        return Invalid(f"real32 field is {number}")
    for digits in range(1, 10):
        text = f"{number:.{digits}g}"
        if struct.pack("<f", float(text)) == data:
            break
    value = Decimal(text)
    if value == value.to_integral_value() and value.adjusted() < 30:
        value = value.quantize(Decimal(1), context=EXACT)
    return value


def date_g(data: bytes) -> date | Invalid:
    """Type G (16 bit): day, month, year 0..99 (2000..2080, 1981..1999)."""
    day = data[0] & 0x1F
    month = data[1] & 0x0F
    year = ((data[0] & 0xE0) >> 5) | ((data[1] & 0xF0) >> 1)
    return _make_date(_full_year(year, 0), month, day, raw=data)


def date_time_f(data: bytes) -> datetime | Invalid:
    """Type F (32 bit): minute, hour, day, month, year; bit 7 of the minute = invalid."""
    if data[0] & 0x80:
        return Invalid("date-time type F marked invalid by the meter (IV bit)")
    minute = data[0] & 0x3F
    hour = data[1] & 0x1F
    century = (data[1] & 0x60) >> 5
    day = data[2] & 0x1F
    month = data[3] & 0x0F
    year = ((data[2] & 0xE0) >> 5) | ((data[3] & 0xF0) >> 1)
    the_date = _make_date(_full_year(year, century), month, day, raw=data)
    if isinstance(the_date, Invalid):
        return the_date
    return _make_time(the_date, hour, minute, 0, raw=data)


def date_time_i(data: bytes) -> datetime | Invalid:
    """Type I (48 bit): as type F plus seconds; bit 7 of the minute byte = invalid."""
    if data[1] & 0x80:
        return Invalid("date-time type I marked invalid by the meter (IV bit)")
    second = data[0] & 0x3F
    minute = data[1] & 0x3F
    hour = data[2] & 0x1F
    day = data[3] & 0x1F
    month = data[4] & 0x0F
    year = ((data[3] & 0xE0) >> 5) | ((data[4] & 0xF0) >> 1)
    the_date = _make_date(_full_year(year, 0), month, day, raw=data)
    if isinstance(the_date, Invalid):
        return the_date
    return _make_time(the_date, hour, minute, second, raw=data)


def _full_year(year: int, century: int) -> int:
    """Two-digit years: 81..99 are 1981..1999, 0..80 are 2000..2080.

    A non-zero hundred-year field (type F, EN 13757-3:2013) counts
    centuries from 1900 explicitly.
    """
    if century:
        return 1900 + 100 * century + year
    return 1900 + year if year > 80 else 2000 + year


def _make_date(year: int, month: int, day: int, raw: bytes) -> date | Invalid:
    try:
        return date(year, month, day)
    except ValueError:
        return Invalid(f"date field {raw.hex()} is not a calendar date ({year}-{month}-{day})")


def _make_time(
    the_date: date, hour: int, minute: int, second: int, raw: bytes
) -> datetime | Invalid:
    try:
        return datetime(the_date.year, the_date.month, the_date.day, hour, minute, second)
    except ValueError:
        return Invalid(f"date-time field {raw.hex()} has no valid time of day")


def text(data: bytes) -> str:
    """LVAR text: ASCII, sent last character first."""
    return data[::-1].decode("latin-1")
