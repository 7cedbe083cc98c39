"""EN 13757-3 data records: DIF, DIFE, VIF, VIFE and the data field.

A variable data structure is a run of records, each
``DIF [DIFE...] VIF [VIFE...] data``. This module walks that run and turns
every record into a frozen ``DataRecord`` with exact values.

Two kinds of trouble are kept apart on purpose:

* the structure is broken (a record ends before its data, more than ten
  DIFEs, a length byte pointing past the end): the telegram cannot be
  trusted, DecodeError;
* the content is odd (a reserved VIF, an invalid date, a BCD error digit,
  a meter-reported error VIFE): the record is kept, flagged ``unknown`` or
  ``invalid``, and the rest of the telegram still decodes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum

from drivers.core.errors import DecodeError
from drivers.mbus import datafield
from drivers.mbus.datafield import EXACT, DataCoding, Invalid
from drivers.mbus.vif import (
    UNKNOWN,
    VIF_ANY,
    VIF_FB_EXTENSION,
    VIF_FD_EXTENSION,
    VIF_MANUFACTURER,
    VIF_PLAIN_TEXT,
    VIFE_EXTENSION_TABLE,
    VIFE_MANUFACTURER,
    ValueKind,
    ValueMeaning,
    apply_extension,
    combinable_extension,
    fb_meaning,
    fd_meaning,
    primary_meaning,
    second_table_extension,
)

MAX_DIFES = 10
MAX_VIFES = 10

DIF_MANUFACTURER_DATA = 0x0F
DIF_MORE_RECORDS_FOLLOW = 0x1F
DIF_IDLE_FILLER = 0x2F
EXTENSION_BIT = 0x80

RecordValue = Decimal | int | str | date | datetime | None


class RecordFunction(StrEnum):
    """Function field of the DIF, plus the two manufacturer-data specials."""

    INSTANTANEOUS = "instantaneous"
    MAXIMUM = "maximum"
    MINIMUM = "minimum"
    ERROR_STATE = "error_state"
    MANUFACTURER_DATA = "manufacturer_data"  # DIF 0x0F: rest of the telegram
    MORE_RECORDS_FOLLOW = "more_records_follow"  # DIF 0x1F: same, next telegram has more


_FUNCTIONS = (
    RecordFunction.INSTANTANEOUS,
    RecordFunction.MAXIMUM,
    RecordFunction.MINIMUM,
    RecordFunction.ERROR_STATE,
)


@dataclass(frozen=True)
class DataRecord:
    """One decoded record.

    ``value`` is in ``unit``; ``base_value`` is the same value in
    ``base_unit`` (Wh, J, m3, kg, W, J/h, m3/h, kg/h, Cel, K, bar, s, V, A)
    for scaled numbers, None otherwise. ``step`` is what one count of the
    transmitted integer or BCD number is worth in ``base_unit`` (the
    record's resolution); None for a real32 value, whose step is relative,
    and for anything not a scaled number. ``raw`` is the record's bytes as
    spaced hex. ``notes`` name the VIFEs that qualify the value ("per_h",
    "error:data_overflow", "lower_limit_value") and why a record is invalid.
    """

    index: int
    function: RecordFunction
    storage: int
    tariff: int
    subunit: int
    quantity: str
    value: RecordValue
    unit: str
    base_value: Decimal | None
    base_unit: str
    coding: DataCoding
    raw: str
    unknown: bool = False
    invalid: bool = False
    notes: tuple[str, ...] = ()
    step: Decimal | None = None


@dataclass(frozen=True)
class RecordBlock:
    """All records of one telegram and what its special DIFs said.

    ``undecoded`` is what a lenient decode could not read, from the first
    record that broke, and ``problem`` says why; both empty otherwise.
    """

    records: tuple[DataRecord, ...]
    more_records_follow: bool
    manufacturer_data: bytes
    undecoded: bytes = b""
    problem: str | None = None


@dataclass(frozen=True)
class _Header:
    """DIF/DIFE and VIF/VIFE of one record, before its data is read."""

    function: RecordFunction
    storage: int
    tariff: int
    subunit: int
    data_field: int
    vif: int
    vifes: tuple[int, ...]
    plain_text_unit: str | None


class _Reader:
    """A cursor over the record bytes that raises DecodeError at the end."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.record_index = 0

    def at_end(self) -> bool:
        return self.pos >= len(self.data)

    def byte(self, what: str) -> int:
        if self.pos >= len(self.data):
            raise DecodeError(
                f"record {self.record_index}: premature end of data, {what} missing "
                f"at byte {self.pos} of {len(self.data)}"
            )
        value = self.data[self.pos]
        self.pos += 1
        return value

    def take(self, count: int, what: str) -> bytes:
        left = len(self.data) - self.pos
        if count > left:
            raise DecodeError(
                f"record {self.record_index}: premature end of data, {what} needs "
                f"{count} bytes but only {left} are left"
            )
        chunk = self.data[self.pos : self.pos + count]
        self.pos += count
        return chunk


def decode_records(data: bytes, msb_first: bool = False, lenient: bool = False) -> RecordBlock:
    """Decode the variable data records that follow a telegram's header.

    ``msb_first`` is for CI 0x76 telegrams, whose multi-byte fields arrive
    most significant byte first. ``lenient`` keeps the records before one
    that breaks and returns the rest as ``undecoded`` instead of raising:
    for a wireless telegram, whose bytes its CRCs or its decryption check
    already vouch for, a manufacturer's odd tail should not cost the
    standard records in front of it.
    """
    reader = _Reader(bytes(data))
    records: list[DataRecord] = []
    more_follow = False
    manufacturer_data = b""
    while not reader.at_end():
        start = reader.pos
        reader.record_index = len(records)
        try:
            dif = reader.byte("DIF")
            if dif == DIF_IDLE_FILLER:
                continue
            if dif in (DIF_MANUFACTURER_DATA, DIF_MORE_RECORDS_FOLLOW):
                manufacturer_data = reader.take(len(reader.data) - reader.pos, "manufacturer data")
                more_follow = dif == DIF_MORE_RECORDS_FOLLOW
                records.append(_manufacturer_record(len(records), dif, manufacturer_data))
                break
            if dif & 0x0F == 0x0F:
                raise DecodeError(
                    f"record {len(records)}: special DIF 0x{dif:02X} is reserved or a master "
                    "request (global readout) and cannot occur in a meter's answer"
                )
            header = _read_header(reader, dif, msb_first)
            records.append(_read_record(reader, len(records), start, header, msb_first))
        except DecodeError as exc:
            if not lenient:
                raise
            return RecordBlock(tuple(records), more_follow, manufacturer_data, reader.data[start:], str(exc))
    return RecordBlock(tuple(records), more_follow, manufacturer_data)


@dataclass(frozen=True)
class RecordLayout:
    """Where each record's header (DIF..VIFE) and data lie, without their meaning.

    ``headers`` and ``data`` pair up record by record; idle fillers are
    left out and ``tail`` is the manufacturer-data DIF (0x0F/0x1F) and all
    after it. A compact frame (EN 13757-3, CI 0x79) is a full frame with
    its headers taken out, so this is what builds one and rebuilds one.
    """

    headers: tuple[bytes, ...]
    data: tuple[bytes, ...]
    tail: bytes

    @property
    def format(self) -> bytes:
        """The headers run together: what a compact frame's format signature is the CRC of."""
        return b"".join(self.headers)


def record_layout(data: bytes) -> RecordLayout:
    """Split a run of records into headers and data fields; DecodeError as decode_records."""
    reader = _Reader(bytes(data))
    headers: list[bytes] = []
    fields: list[bytes] = []
    tail = b""
    while not reader.at_end():
        start = reader.pos
        reader.record_index = len(headers)
        dif = reader.byte("DIF")
        if dif == DIF_IDLE_FILLER:
            continue
        if dif in (DIF_MANUFACTURER_DATA, DIF_MORE_RECORDS_FOLLOW):
            tail = reader.data[start:]
            break
        if dif & 0x0F == 0x0F:
            raise DecodeError(f"record {len(headers)}: special DIF 0x{dif:02X} is reserved")
        header = _read_header(reader, dif, False)
        header_end = reader.pos
        _read_data_field(reader, header.data_field)
        headers.append(reader.data[start:header_end])
        fields.append(reader.data[header_end : reader.pos])
    return RecordLayout(tuple(headers), tuple(fields), tail)


def _manufacturer_record(index: int, dif: int, payload: bytes) -> DataRecord:
    function = (
        RecordFunction.MORE_RECORDS_FOLLOW
        if dif == DIF_MORE_RECORDS_FOLLOW
        else RecordFunction.MANUFACTURER_DATA
    )
    return DataRecord(
        index=index,
        function=function,
        storage=0,
        tariff=0,
        subunit=0,
        quantity="manufacturer_data",
        value=payload.hex(" ").upper() if payload else None,
        unit="",
        base_value=None,
        base_unit="",
        coding=DataCoding.MANUFACTURER,
        raw=bytes([dif]).hex().upper() + (" " + payload.hex(" ").upper() if payload else ""),
    )


def _read_header(reader: _Reader, dif: int, msb_first: bool) -> _Header:
    storage = (dif >> 6) & 0x01
    tariff = 0
    subunit = 0
    extension = dif & EXTENSION_BIT
    dife_count = 0
    while extension:
        dife = reader.byte("DIFE")
        if dife_count == MAX_DIFES:
            raise DecodeError(f"record {reader.record_index}: more than {MAX_DIFES} DIFEs")
        storage |= (dife & 0x0F) << (1 + 4 * dife_count)
        tariff |= ((dife >> 4) & 0x03) << (2 * dife_count)
        subunit |= ((dife >> 6) & 0x01) << dife_count
        dife_count += 1
        extension = dife & EXTENSION_BIT
    vif = reader.byte("VIF")
    plain_text_unit = None
    vifes: list[int] = []
    if vif & 0x7F == VIF_PLAIN_TEXT:
        if vif & EXTENSION_BIT and _vifes_come_first(reader.data, reader.pos):
            vifes = _read_vifes(reader)
        plain_text_unit = _read_plain_text(reader, msb_first)
        if vif & EXTENSION_BIT and not vifes:
            vifes = _read_vifes(reader)
    elif vif & EXTENSION_BIT:
        vifes = _read_vifes(reader)
    return _Header(
        function=_FUNCTIONS[(dif >> 4) & 0x03],
        storage=storage,
        tariff=tariff,
        subunit=subunit,
        data_field=dif & 0x0F,
        vif=vif,
        vifes=tuple(vifes),
        plain_text_unit=plain_text_unit,
    )


def _read_vifes(reader: _Reader) -> list[int]:
    vifes: list[int] = []
    while True:
        vife = reader.byte("VIFE")
        if len(vifes) == MAX_VIFES:
            raise DecodeError(f"record {reader.record_index}: more than {MAX_VIFES} VIFEs")
        vifes.append(vife)
        if not vife & EXTENSION_BIT:
            return vifes


def _read_plain_text(reader: _Reader, msb_first: bool) -> str:
    length = reader.byte("plain-text VIF length")
    chars = reader.take(length, "plain-text VIF")
    return (chars if msb_first else chars[::-1]).decode("latin-1")


def _printable_text_at(data: bytes, pos: int) -> bool:
    """Is there a length byte at ``pos`` followed by that much printable ASCII?"""
    if pos >= len(data):
        return False
    end = pos + 1 + data[pos]
    return end <= len(data) and all(0x20 <= byte < 0x7F for byte in data[pos + 1 : end])


def _vifes_come_first(data: bytes, pos: int) -> bool:
    """Where does a plain-text VIF (0xFC) put its VIFEs: before or after the text?

    EN 13757-3 places the VIFEs right after the VIF and the length byte and
    text after them; some meters (Elvaco CMa10/11) send the text first and
    the VIFEs after it. The two layouts are told apart by which one yields a
    length byte followed by printable ASCII; the standard's order wins a tie.
    """
    end = pos
    while end < len(data) and data[end] & EXTENSION_BIT and end - pos < MAX_VIFES:
        end += 1
    standard = _printable_text_at(data, end + 1)
    text_first = _printable_text_at(data, pos)
    return standard or not text_first


@dataclass(frozen=True)
class _Meaning:
    """A ValueMeaning with everything the VIFEs added to it."""

    value: ValueMeaning
    notes: tuple[str, ...]
    additive_offset: Decimal | None  # in the value's unit
    invalid: bool
    unknown: bool


def _interpret_vib(header: _Header) -> _Meaning:
    """Resolve VIF and VIFEs into one meaning (tables, corrections, notes)."""
    code = header.vif & 0x7F
    vifes = list(header.vifes)
    notes: list[str] = []
    unknown = False
    if code in (VIF_FB_EXTENSION, VIF_FD_EXTENSION):
        if not vifes:
            note = f"extension VIF 0x{header.vif:02X} without VIFE"
            return _Meaning(UNKNOWN, (note,), None, False, True)
        table_code = vifes.pop(0)
        lookup = fb_meaning if code == VIF_FB_EXTENSION else fd_meaning
        meaning = lookup(table_code)
        if not meaning.known:
            notes.append(
                f"reserved_{'fb' if code == VIF_FB_EXTENSION else 'fd'}_vife_0x{table_code:02x}"
            )
    elif code == VIF_PLAIN_TEXT:
        text_unit = header.plain_text_unit or ""
        meaning = ValueMeaning("plain_text", text_unit, 0, text_unit)
    elif code == VIF_MANUFACTURER:
        # Every VIFE after a manufacturer VIF is the manufacturer's own.
        meaning = primary_meaning(code)
        if vifes:
            notes.append("manufacturer_specific_vife " + bytes(vifes).hex())
        vifes = []
    elif code == VIF_ANY:
        meaning = primary_meaning(code)
    else:
        meaning = primary_meaning(code)
        if not meaning.known:
            notes.append(f"reserved_vif_0x{header.vif:02x}")
    unknown = not meaning.known
    additive_exponent: int | None = None
    invalid = False
    second_table = False
    for position, vife in enumerate(vifes):
        if second_table:
            extension = second_table_extension(vife)
            second_table = False
        elif vife & 0x7F == VIFE_EXTENSION_TABLE:
            second_table = True
            continue
        elif vife & 0x7F == VIFE_MANUFACTURER:
            rest = bytes(vifes[position + 1 :])
            notes.append("manufacturer_specific_vife" + (f" {rest.hex()}" if rest else ""))
            break
        else:
            extension = combinable_extension(vife)
        notes.append(extension.note)
        if not extension.known:
            unknown = True
            continue
        invalid = invalid or extension.error
        if extension.additive_exponent is not None:
            additive_exponent = extension.additive_exponent
        meaning = apply_extension(meaning, extension)
    additive = None
    if additive_exponent is not None:
        # "10^(nn-3) unit of VIF": taken as the VIF's base unit (Wh, m3, ...),
        # as libmbus does, then expressed in the unit the value is given in.
        additive = EXACT.divide(EXACT.scaleb(Decimal(1), additive_exponent), meaning.to_base)
    return _Meaning(meaning, tuple(notes), additive, invalid, unknown)


def _read_data_field(reader: _Reader, data_field: int) -> tuple[DataCoding, bytes]:
    fixed = datafield.FIXED_CODINGS.get(data_field)
    if fixed is not None:
        coding, length = fixed
        return coding, reader.take(length, f"{coding.value} data")
    # 0xD: variable length; the LVAR byte says what and how long.
    lvar = reader.byte("LVAR length")
    if lvar <= 0xBF:
        return DataCoding.TEXT, reader.take(lvar, "LVAR text")
    if lvar <= 0xCF:
        return DataCoding.LVAR_BCD, reader.take(lvar - 0xC0, "LVAR BCD")
    if lvar <= 0xDF:
        # Negative BCD: keep the sign by marking the top nibble F, as fixed BCD does.
        digits = reader.take(lvar - 0xD0, "LVAR negative BCD")
        return DataCoding.LVAR_BCD, digits + b"\xf0" if digits else digits
    if lvar <= 0xEF:
        return DataCoding.LVAR_BINARY, reader.take(lvar - 0xE0, "LVAR binary")
    if lvar <= 0xF4:
        return DataCoding.LVAR_BINARY, reader.take(4 * (lvar - 0xEC), "LVAR binary")
    if lvar == 0xF5:
        return DataCoding.LVAR_BINARY, reader.take(48, "LVAR binary")
    if lvar == 0xF6:
        return DataCoding.LVAR_BINARY, reader.take(64, "LVAR binary")
    raise DecodeError(
        f"record {reader.record_index}: LVAR byte 0x{lvar:02X} is reserved, "
        "the record length is unknown"
    )


def _read_record(
    reader: _Reader, index: int, start: int, header: _Header, msb_first: bool
) -> DataRecord:
    meaning = _interpret_vib(header)
    coding, field = _read_data_field(reader, header.data_field)
    if msb_first and coding != DataCoding.TEXT:
        field = field[::-1]
    value, invalid_reason = _value(coding, field, meaning)
    notes = meaning.notes + ((invalid_reason,) if invalid_reason else ())
    unknown = meaning.unknown
    quantity = "unknown" if unknown else meaning.value.quantity
    unit = "" if unknown else meaning.value.unit
    base_unit = "" if unknown else meaning.value.base_unit
    base_value = step = None
    if (
        isinstance(value, Decimal)
        and not unknown
        and meaning.value.kind is ValueKind.SCALED
        and base_unit
    ):
        base_value = EXACT.multiply(value, meaning.value.to_base)
        if coding is not DataCoding.REAL32:
            step = EXACT.multiply(EXACT.scaleb(Decimal(1), meaning.value.exponent), meaning.value.to_base)
    return DataRecord(
        index=index,
        function=header.function,
        storage=header.storage,
        tariff=header.tariff,
        subunit=header.subunit,
        quantity=quantity,
        value=value,
        unit=unit,
        base_value=base_value,
        base_unit=base_unit,
        coding=coding,
        raw=reader.data[start : reader.pos].hex(" ").upper(),
        unknown=unknown,
        invalid=meaning.invalid or invalid_reason is not None,
        notes=notes,
        step=step,
    )


def _value(coding: DataCoding, field: bytes, meaning: _Meaning) -> tuple[RecordValue, str | None]:
    """The record's value, or None with the reason it is invalid."""
    kind = meaning.value.kind if not meaning.unknown else ValueKind.NUMBER
    if coding in (DataCoding.NONE, DataCoding.SELECTION):
        return None, None
    if coding is DataCoding.TEXT:
        return datafield.text(field), None
    if kind is ValueKind.DATE or kind is ValueKind.DATE_TIME:
        decoded = _date_value(coding, field)
        if decoded is not None:
            if isinstance(decoded, Invalid):
                return None, decoded.reason
            return decoded, None
    number: int | Decimal | Invalid
    if coding in datafield.BCD_CODINGS:
        number = datafield.bcd(field)
    elif coding is DataCoding.REAL32:
        number = datafield.real32(field)
    elif kind in (ValueKind.SCALED, ValueKind.NUMBER):
        number = datafield.signed_int(field)
        if field and number == -(1 << (8 * len(field) - 1)):
            # 0x80..00, the most negative number: what meters send for a value
            # they do not have (a set-date value before the first set date).
            return None, f"{len(field) * 8}-bit value 0x80{'00' * (len(field) - 1)}: the meter's 'no value' marker"
    else:
        number = datafield.unsigned_int(field)
    if isinstance(number, Invalid):
        return None, number.reason
    if kind is not ValueKind.SCALED:
        return number, None
    return _scale(number, meaning), None


def _date_value(coding: DataCoding, field: bytes) -> date | datetime | Invalid | None:
    if coding is DataCoding.INT16:
        return datafield.date_g(field)
    if coding is DataCoding.INT32:
        return datafield.date_time_f(field)
    if coding is DataCoding.INT48:
        return datafield.date_time_i(field)
    return None  # some other coding: read it as a number


def _scale(number: int | Decimal, meaning: _Meaning) -> Decimal:
    """Apply 10^exponent and an additive correction, exactly."""
    value = EXACT.scaleb(Decimal(number), meaning.value.exponent)
    if meaning.additive_offset is not None:
        value = EXACT.add(value, meaning.additive_offset)
    if value == value.to_integral_value() and value.adjusted() < 30:
        value = value.quantize(Decimal(1), context=EXACT)
    return value
