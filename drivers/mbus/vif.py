"""EN 13757-3 value information: what a record measures, in which unit, at which scale.

A VIF code names a quantity and a decimal exponent ("energy, 10^(n-3) Wh").
The tables here turn a code into a ``ValueMeaning`` once, so record decoding
never branches on codes again. Units are SenML-style symbols; the value of a
record is given in a natural unit (kWh when the meter counts kWh) and can be
converted to the quantity's base unit (Wh) exactly, by a power of ten or a
time factor.

Tables: primary VIF (Table 10 of EN 13757-3), the 0xFB extension (Table 12),
the 0xFD extension (Table 14) and the combinable VIFE (Table 15), plus the
error codes a meter may put into a VIFE (Table 18).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from decimal import Decimal
from enum import StrEnum


class ValueKind(StrEnum):
    """How the data field of a record is to be read for this VIF."""

    SCALED = "scaled"  # a measured number: Decimal, scaled by the exponent
    COUNT = "count"  # an unsigned integer (counters, addresses): no unit
    NUMBER = "number"  # a signed integer of unknown meaning (manufacturer codes)
    IDENTIFIER = "identifier"  # serial or fabrication number: integer or text
    BITS = "bits"  # flags or inputs: unsigned integer
    DATE = "date"  # type G
    DATE_TIME = "date_time"  # type F (or I with 6 bytes)
    TEXT = "text"  # ASCII or raw bytes


@dataclass(frozen=True)
class ValueMeaning:
    """What a VIF (with its extensions) says about a record's value.

    ``value = raw * 10**exponent`` in ``unit``; ``value * to_base`` is the
    value in ``base_unit``. ``known`` is False for reserved codes.
    """

    quantity: str
    unit: str = ""
    exponent: int = 0
    base_unit: str = ""
    to_base: Decimal = Decimal(1)
    kind: ValueKind = ValueKind.SCALED
    known: bool = True


UNKNOWN = ValueMeaning("unknown", kind=ValueKind.NUMBER, known=False)

# Unit families: symbols with their factor to the base unit, as powers of ten.
_ENERGY_WH = (("Wh", 0), ("kWh", 3), ("MWh", 6))
_ENERGY_J = (("J", 0), ("kJ", 3), ("MJ", 6), ("GJ", 9))
_POWER_W = (("W", 0), ("kW", 3), ("MW", 6))
_POWER_JH = (("J/h", 0), ("GJ/h", 9))
_MASS = (("kg", 0), ("t", 3))


def _prefixed(
    quantity: str,
    family: tuple[tuple[str, int], ...],
    exponent: int,
    unit_power: int | None = None,
) -> ValueMeaning:
    """Pick the largest unit of the family that keeps the raw count whole.

    A meter counting 10^3 Wh reads in kWh; one counting 10^-3 Wh reads in
    Wh with three decimals. ``unit_power`` pins the unit where the table
    names one (0.1 MWh reads as MWh). The base unit is the family's first
    symbol.
    """
    base_unit = family[0][0]
    unit, power = family[0]
    for symbol, symbol_power in family:
        if symbol_power <= exponent or symbol_power == unit_power:
            unit, power = symbol, symbol_power
        if symbol_power == unit_power:
            break
    return ValueMeaning(
        quantity,
        unit,
        exponent - power,
        base_unit,
        Decimal(10) ** power,
    )


def _plain(quantity: str, unit: str, exponent: int = 0) -> ValueMeaning:
    return ValueMeaning(quantity, unit, exponent, unit)


_TIME_UNITS = (("s", 1), ("min", 60), ("h", 3600), ("d", 86400))
_TIME_UNITS_LONG = (("h", 3600), ("d", 86400), ("month", 0), ("a", 0))


def _duration(quantity: str, nn: int) -> ValueMeaning:
    """On time, averaging duration...: nn = 0 s, 1 min, 2 h, 3 d; base unit s."""
    unit, factor = _TIME_UNITS[nn]
    return ValueMeaning(quantity, unit, 0, "s", Decimal(factor))


def _duration_long(quantity: str, pp: int) -> ValueMeaning:
    """Battery operating time and the like: pp = 0 h, 1 d, 2 months, 3 years.

    Months and years have no fixed length in seconds: no base value.
    """
    unit, factor = _TIME_UNITS_LONG[pp]
    if factor:
        return ValueMeaning(quantity, unit, 0, "s", Decimal(factor))
    return ValueMeaning(quantity, unit, 0, unit)


def _count(quantity: str) -> ValueMeaning:
    return ValueMeaning(quantity, kind=ValueKind.COUNT)


def _bits(quantity: str) -> ValueMeaning:
    return ValueMeaning(quantity, kind=ValueKind.BITS)


def _ident(quantity: str) -> ValueMeaning:
    return ValueMeaning(quantity, kind=ValueKind.IDENTIFIER)


def _reserved() -> ValueMeaning:
    return UNKNOWN


def _primary_table() -> dict[int, ValueMeaning]:
    table: dict[int, ValueMeaning] = {}
    for n in range(8):
        table[0x00 + n] = _prefixed("energy", _ENERGY_WH, n - 3)
        table[0x08 + n] = _prefixed("energy", _ENERGY_J, n)
        table[0x10 + n] = _plain("volume", "m3", n - 6)
        table[0x18 + n] = _prefixed("mass", _MASS, n - 3)
        table[0x28 + n] = _prefixed("power", _POWER_W, n - 3)
        table[0x30 + n] = _prefixed("power", _POWER_JH, n)
        table[0x38 + n] = _plain("volume_flow", "m3/h", n - 6)
        table[0x40 + n] = ValueMeaning("volume_flow", "m3/min", n - 7, "m3/h", Decimal(60))
        table[0x48 + n] = ValueMeaning("volume_flow", "m3/s", n - 9, "m3/h", Decimal(3600))
        table[0x50 + n] = _plain("mass_flow", "kg/h", n - 3)
    for nn in range(4):
        table[0x20 + nn] = _duration("on_time", nn)
        table[0x24 + nn] = _duration("operating_time", nn)
        table[0x58 + nn] = _plain("flow_temperature", "Cel", nn - 3)
        table[0x5C + nn] = _plain("return_temperature", "Cel", nn - 3)
        table[0x60 + nn] = _plain("temperature_difference", "K", nn - 3)
        table[0x64 + nn] = _plain("external_temperature", "Cel", nn - 3)
        table[0x68 + nn] = _plain("pressure", "bar", nn - 3)
        table[0x70 + nn] = _duration("averaging_duration", nn)
        table[0x74 + nn] = _duration("actuality_duration", nn)
    table[0x6C] = ValueMeaning("time_point", kind=ValueKind.DATE)
    table[0x6D] = ValueMeaning("time_point", kind=ValueKind.DATE_TIME)
    table[0x6E] = _count("hca")  # units for heat cost allocators: dimensionless
    table[0x6F] = _reserved()
    table[0x78] = _ident("fabrication_number")
    table[0x79] = _ident("enhanced_identification")
    table[0x7A] = _count("bus_address")
    # 0x7B, 0x7C, 0x7D, 0x7E, 0x7F are handled by the record decoder (they
    # switch tables or carry text); these entries describe the plain case.
    table[0x7E] = ValueMeaning("any", kind=ValueKind.NUMBER)
    table[0x7F] = ValueMeaning("manufacturer_specific", kind=ValueKind.NUMBER)
    return table


def _fd_table() -> dict[int, ValueMeaning]:
    """Second extension table (VIF 0xFD): mostly administrative values."""
    table: dict[int, ValueMeaning] = {}
    for nn in range(4):
        table[0x00 + nn] = _plain("credit", "", nn - 3)
        table[0x04 + nn] = _plain("debit", "", nn - 3)
    names = {
        0x08: _count("access_number"),
        0x09: _count("medium"),
        0x0A: _count("manufacturer"),
        0x0B: _ident("parameter_set_id"),
        0x0C: _ident("model_version"),
        0x0D: _ident("hardware_version"),
        0x0E: _ident("firmware_version"),
        0x0F: _ident("software_version"),
        0x10: _ident("customer_location"),
        0x11: _ident("customer"),
        0x12: _ident("access_code_user"),
        0x13: _ident("access_code_operator"),
        0x14: _ident("access_code_system_operator"),
        0x15: _ident("access_code_developer"),
        0x16: _ident("password"),
        0x17: _bits("error_flags"),
        0x18: _bits("error_mask"),
        0x1A: _bits("digital_output"),
        0x1B: _bits("digital_input"),
        0x1C: _plain("baud_rate", "Bd"),
        0x1D: _plain("response_delay", "bit_times"),
        0x1E: _count("retry"),
        0x1F: _bits("remote_control"),
        0x20: _count("first_storage_number"),
        0x21: _count("last_storage_number"),
        0x22: _count("storage_block_size"),
        0x28: _plain("storage_interval", "month"),
        0x29: _plain("storage_interval", "a"),
        0x2A: _ident("operator_specific_data"),
        0x2B: _plain("time_point_second", "s"),
        0x30: ValueMeaning("tariff_start", kind=ValueKind.DATE_TIME),
        0x38: _plain("tariff_period", "month"),
        0x39: _plain("tariff_period", "a"),
        0x3A: _count("dimensionless"),
        0x60: _count("reset_counter"),
        0x61: _count("cumulation_counter"),
        0x62: _bits("control_signal"),
        0x63: _count("day_of_week"),
        0x64: _count("week_number"),
        0x65: _ident("time_point_day_change"),
        0x66: _bits("parameter_activation_state"),
        0x67: _ident("special_supplier_information"),
        0x70: ValueMeaning("battery_change_time", kind=ValueKind.DATE_TIME),
        0x71: _plain("rf_level", "dBm"),
        0x72: _ident("daylight_saving"),
        0x73: _ident("listening_window"),
        0x74: ValueMeaning("remaining_battery_life", "d", 0, "s", Decimal(86400)),
        0x75: _count("meter_stop_count"),
        0x76: _ident("manufacturer_protocol_container"),
    }
    table.update(names)
    for nn in range(4):
        table[0x24 + nn] = _duration("storage_interval", nn)
        table[0x2C + nn] = _duration("duration_since_last_readout", nn)
        table[0x34 + nn] = _duration("tariff_period", nn)
        table[0x68 + nn] = _duration_long("duration_since_last_cumulation", nn)
        table[0x6C + nn] = _duration_long("battery_operating_time", nn)
    for nn in range(1, 4):
        table[0x30 + nn] = _duration("tariff_duration", nn)
    for n in range(16):
        table[0x40 + n] = _plain("voltage", "V", n - 9)
        table[0x50 + n] = _plain("current", "A", n - 12)
    return table


def _fb_table() -> dict[int, ValueMeaning]:
    """First extension table (VIF 0xFB): large units and imperial units."""
    table: dict[int, ValueMeaning] = {}
    for n in range(2):
        table[0x00 + n] = _prefixed("energy", _ENERGY_WH, n - 1 + 6, 6)
        table[0x02 + n] = _plain("reactive_energy", "kvarh", n)
        table[0x08 + n] = _prefixed("energy", _ENERGY_J, n - 1 + 9, 9)
        table[0x10 + n] = _plain("volume", "m3", n + 2)
        table[0x18 + n] = _prefixed("mass", _MASS, n + 2 + 3, 3)
        table[0x1A + n] = _plain("relative_humidity", "%RH", n - 1)
        table[0x28 + n] = _prefixed("power", _POWER_W, n - 1 + 6, 6)
        table[0x30 + n] = _prefixed("power", _POWER_JH, n - 1 + 9, 9)
    for nn in range(4):
        table[0x0C + nn] = _plain("energy", "Mcal", nn - 1)
        table[0x58 + nn] = _plain("flow_temperature", "degF", nn - 3)
        table[0x5C + nn] = _plain("return_temperature", "degF", nn - 3)
        table[0x60 + nn] = _plain("temperature_difference", "degF", nn - 3)
        table[0x64 + nn] = _plain("external_temperature", "degF", nn - 3)
        table[0x70 + nn] = _plain("temperature_limit", "degF", nn - 3)
        table[0x74 + nn] = _plain("temperature_limit", "Cel", nn - 3)
    table[0x20] = _plain("volume", "ft3")
    table[0x21] = _plain("volume", "ft3", -1)
    # US gallons: EN 13757-3:2004 defined them, later editions reserve the codes.
    table[0x22] = _plain("volume", "gal", -1)
    table[0x23] = _plain("volume", "gal")
    table[0x24] = _plain("volume_flow", "gal/min", -3)
    table[0x25] = _plain("volume_flow", "gal/min")
    table[0x26] = _plain("volume_flow", "gal/h")
    for nnn in range(8):
        table[0x78 + nnn] = _prefixed("cumulated_max_power", _POWER_W, nnn - 3)
    return table


PRIMARY_VIF: dict[int, ValueMeaning] = _primary_table()
FB_VIF: dict[int, ValueMeaning] = _fb_table()
FD_VIF: dict[int, ValueMeaning] = _fd_table()

# VIF codes (extension bit cleared) that change how the record is read.
VIF_FB_EXTENSION = 0x7B
VIF_PLAIN_TEXT = 0x7C
VIF_FD_EXTENSION = 0x7D
VIF_ANY = 0x7E
VIF_MANUFACTURER = 0x7F


def primary_meaning(code: int) -> ValueMeaning:
    return PRIMARY_VIF.get(code & 0x7F, UNKNOWN)


def fb_meaning(code: int) -> ValueMeaning:
    return FB_VIF.get(code & 0x7F, UNKNOWN)


def fd_meaning(code: int) -> ValueMeaning:
    return FD_VIF.get(code & 0x7F, UNKNOWN)


# --- Combinable (orthogonal) VIFE, Table 15 -----------------------------------

# Error codes a meter reports in a VIFE 0x00..0x1F of a response (Table 18).
RECORD_ERRORS: dict[int, str] = {
    0x00: "none",
    0x01: "too_many_difes",
    0x02: "storage_number_not_implemented",
    0x03: "unit_number_not_implemented",
    0x04: "tariff_number_not_implemented",
    0x05: "function_not_implemented",
    0x06: "data_class_not_implemented",
    0x07: "data_size_not_implemented",
    0x0B: "too_many_vifes",
    0x0C: "illegal_vif_group",
    0x0D: "illegal_vif_exponent",
    0x0E: "vif_dif_mismatch",
    0x0F: "unimplemented_action",
    0x15: "no_data_available",
    0x16: "data_overflow",
    0x17: "data_underflow",
    0x18: "data_error",
    0x1C: "premature_end_of_record",
}

_PER_UNIT: dict[int, str] = {
    0x20: "s",
    0x21: "min",
    0x22: "h",
    0x23: "d",
    0x24: "wk",
    0x25: "mo",
    0x26: "a",
}

_ANNOTATIONS: dict[int, str] = {
    0x27: "per_revolution",
    0x28: "increment_per_input_pulse_channel_0",
    0x29: "increment_per_input_pulse_channel_1",
    0x2A: "increment_per_output_pulse_channel_0",
    0x2B: "increment_per_output_pulse_channel_1",
    0x2C: "per_litre",
    0x2D: "per_m3",
    0x2E: "per_kg",
    0x2F: "per_kelvin",
    0x30: "per_kwh",
    0x31: "per_gj",
    0x32: "per_kw",
    0x33: "per_kelvin_litre",
    0x34: "per_volt",
    0x35: "per_ampere",
    0x36: "multiplied_by_s",
    0x37: "multiplied_by_s_per_volt",
    0x38: "multiplied_by_s_per_ampere",
    0x39: "start_date_time_of",
    0x3A: "uncorrected_unit",
    0x3B: "accumulation_of_positive_contributions",
    0x3C: "accumulation_of_negative_contributions",
    0x3D: "non_metric_unit",
    0x3E: "value_at_base_conditions",  # a gas meter's volume converted to base conditions
    0x3F: "obis_declaration",
    0x40: "lower_limit_value",
    0x48: "upper_limit_value",
    0x41: "number_of_lower_limit_exceeds",
    0x49: "number_of_upper_limit_exceeds",
    0x7E: "future_value",
}
for _code in range(0x40, 0x50):
    if _code & 0x02:
        _limit = "upper" if _code & 0x08 else "lower"
        _first = "last" if _code & 0x04 else "first"
        _edge = "end" if _code & 0x01 else "begin"
        _ANNOTATIONS[_code] = f"date_time_of_{_edge}_of_{_first}_{_limit}_limit_exceed"
for _code in range(0x50, 0x60):
    _limit = "upper" if _code & 0x08 else "lower"
    _first = "last" if _code & 0x04 else "first"
    _ANNOTATIONS[_code] = (
        f"duration_of_{_first}_{_limit}_limit_exceed_{_TIME_UNITS[_code & 0x03][0]}"
    )
for _code in range(0x60, 0x68):
    _first = "last" if _code & 0x04 else "first"
    _ANNOTATIONS[_code] = f"duration_of_{_first}_{_TIME_UNITS[_code & 0x03][0]}"
for _code in (0x6A, 0x6B, 0x6E, 0x6F):
    _first = "last" if _code & 0x04 else "first"
    _edge = "end" if _code & 0x01 else "begin"
    _ANNOTATIONS[_code] = f"date_time_of_{_edge}_of_{_first}"

VIFE_MANUFACTURER = 0x7F  # the following VIFEs and the data are manufacturer specific
VIFE_EXTENSION_TABLE = 0x7C  # EN 13757-3:2018: the next VIFE is from the second combinable table

# The second combinable table (after 0x7C/0xFC): where an electricity value
# was measured, which direction a value counts.
_SECOND_TABLE: dict[int, str] = {
    0x01: "at_phase_l1",
    0x02: "at_phase_l2",
    0x03: "at_phase_l3",
    0x04: "at_neutral",
    0x05: "between_phases_l1_l2",
    0x06: "between_phases_l2_l3",
    0x07: "between_phases_l3_l1",
    0x08: "at_quadrant_q1",
    0x09: "at_quadrant_q2",
    0x0A: "at_quadrant_q3",
    0x0B: "at_quadrant_q4",
    0x0C: "delta_between_import_and_export",
    0x10: "accumulation_of_absolute_values",
    0x11: "direction_to_meter",
    0x12: "direction_from_meter",
}


@dataclass(frozen=True)
class Extension:
    """The effect of one combinable VIFE on a record."""

    note: str
    exponent_shift: int = 0
    additive_exponent: int | None = None  # offset 10^x in the VIF's base unit
    per: str = ""  # "h" for "per hour": appended to the unit
    error: bool = False
    known: bool = True
    # Set when the VIFE turns the value into something else: the date of an
    # event ("date/time of last upper limit exceed") or a duration (s..d).
    becomes: ValueMeaning | None = None


def combinable_extension(code: int) -> Extension:
    """Interpret one combinable VIFE (extension bit ignored)."""
    code &= 0x7F
    if code < 0x20:
        name = RECORD_ERRORS.get(code)
        if name is None:
            return Extension(f"reserved_error_code_0x{code:02x}", error=True, known=False)
        return Extension(f"error:{name}", error=code != 0x00)
    if code in _PER_UNIT:
        return Extension(f"per_{_PER_UNIT[code]}", per=_PER_UNIT[code])
    if 0x70 <= code <= 0x77:
        shift = (code & 0x07) - 6
        return Extension(f"multiplicative_correction_1e{shift}", exponent_shift=shift)
    if 0x78 <= code <= 0x7B:
        power = (code & 0x03) - 3
        return Extension(f"additive_correction_1e{power}", additive_exponent=power)
    if code == 0x7D:
        return Extension("multiplicative_correction_1e3", exponent_shift=3)
    if code == VIFE_MANUFACTURER:
        return Extension("manufacturer_specific_vife")
    note = _ANNOTATIONS.get(code)
    if note is None:
        return Extension(f"reserved_vife_0x{code:02x}", known=False)
    if note.startswith(("date_time_of", "start_date_time_of")):
        return Extension(note, becomes=ValueMeaning("", kind=ValueKind.DATE_TIME))
    if note.startswith("duration_of"):
        unit, factor = _TIME_UNITS[code & 0x03]
        return Extension(note, becomes=ValueMeaning("", unit, 0, "s", Decimal(factor)))
    return Extension(note)


def second_table_extension(code: int) -> Extension:
    """A VIFE of the second combinable table (it follows 0x7C/0xFC)."""
    code &= 0x7F
    note = _SECOND_TABLE.get(code)
    if note is None:
        return Extension(f"reserved_second_table_vife_0x{code:02x}", known=False)
    return Extension(note)


def apply_extension(meaning: ValueMeaning, extension: Extension) -> ValueMeaning:
    """Fold a combinable VIFE into the meaning: scale, unit or kind change.

    The quantity stays the VIF's: "flow temperature" with "date/time of" is
    still about the flow temperature, its value is the date of the event.
    """
    if extension.becomes is not None:
        meaning = replace(extension.becomes, quantity=meaning.quantity)
    if extension.exponent_shift:
        meaning = replace(meaning, exponent=meaning.exponent + extension.exponent_shift)
    if extension.per:
        meaning = replace(
            meaning,
            unit=f"{meaning.unit}/{extension.per}" if meaning.unit else f"1/{extension.per}",
            base_unit=(
                f"{meaning.base_unit}/{extension.per}"
                if meaning.base_unit
                else f"1/{extension.per}"
            ),
        )
    return meaning
