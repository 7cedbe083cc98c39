"""Compare our decoding with libmbus' normalised XML, record by record.

The reference telegrams come with libmbus' output (values normalised to
base units). Where libmbus names things differently from us, or is itself
debatable, the mapping lives here in tables, never in the decoder:

* quantity names map to our snake_case identifiers (``QUANTITIES``);
* libmbus reads only the first VIFE and ignores "date/time of ..." and
  "duration of ..." extensions, so it prints e.g. a date-time as a
  temperature; for those records we compare everything but the value
  (``LIBMBUS_IGNORES_VIFE``);
* libmbus reads every integer as signed; flags, counters and identifiers
  are unsigned for us, so a negative reference is compared modulo 2^bits;
* libmbus prints an invalid date (IV bit, day 0, month 0) as a date string
  such as ``2000-00-00`` or ``1900-01-00T00:00:00Z``; we return no value
  and flag the record invalid;
* libmbus converts month/year durations to seconds with an average month;
  we keep them in months/years (no exact base value), value not compared;
* libmbus turns BCD digits A..F into numbers (DD B4 EB DD -> 1311041.3 W);
  such a field is an error display of the meter, we flag the record
  invalid and give no value, so the value is not compared.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path

from drivers.mbus.datafield import DataCoding
from drivers.mbus.records import DataRecord, RecordFunction
from drivers.mbus.telegram import Telegram

REPO = Path(__file__).resolve().parents[2]
ENV_VAR = "RETROFIT_MBUS_TESTDATA"


def testdata_dir() -> Path:
    """Where the reference telegrams are: in the repository (tests/data/mbus,
    with libmbus' licence), unless the environment names another set."""
    configured = os.environ.get(ENV_VAR)
    if configured:
        return Path(configured)
    return REPO / "tests" / "data" / "mbus"


def missing_testdata_message(root: Path) -> str:
    return (
        f"M-Bus reference telegrams not found at {root} (need frames/ and bad/): "
        f"set {ENV_VAR} to the directory holding them"
    )


FUNCTIONS: dict[str, RecordFunction] = {
    "Instantaneous value": RecordFunction.INSTANTANEOUS,
    "Actual value": RecordFunction.INSTANTANEOUS,  # fixed data structure
    "Historic value": RecordFunction.INSTANTANEOUS,  # fixed data, storage 1
    "Maximum value": RecordFunction.MAXIMUM,
    "Minimum value": RecordFunction.MINIMUM,
    "Value during error state": RecordFunction.ERROR_STATE,
    "Manufacturer specific": RecordFunction.MANUFACTURER_DATA,
    "More records follow": RecordFunction.MORE_RECORDS_FOLLOW,
}

# Quantities libmbus calls "Reserved" that EN 13757-3:2013 has since defined.
_DEFINED_SINCE = frozenset(
    {
        "unknown",
        "remote_control",
        "tariff_start",
        "time_point_second",
        "operator_specific_data",
        "rf_level",
        "daylight_saving",
        "listening_window",
        "remaining_battery_life",
        "meter_stop_count",
        "manufacturer_protocol_container",
        "reactive_energy",
        "relative_humidity",
        "energy",
        "storage_interval",
        "tariff_period",
    }
)

QUANTITIES: dict[str, frozenset[str]] = {
    name: frozenset(ours)
    for name, ours in {
        "Energy": {"energy"},
        "Volume": {"volume"},
        "Mass": {"mass"},
        "On time": {"on_time"},
        "Operating time": {"operating_time"},
        "Power": {"power"},
        "Volume flow": {"volume_flow"},
        "Mass flow": {"mass_flow"},
        "Flow temperature": {"flow_temperature"},
        "Return temperature": {"return_temperature"},
        "Temperature difference": {"temperature_difference"},
        "External temperature": {"external_temperature"},
        "Pressure": {"pressure"},
        "Time point (date)": {"time_point"},
        "Time point (date & time)": {"time_point"},
        "H.C.A.": {"hca"},
        "Reserved": _DEFINED_SINCE,
        # Older libmbus printed "Averaging Duration" for actuality duration too.
        "Averaging Duration": {"averaging_duration", "actuality_duration"},
        "Actuality Duration": {"actuality_duration"},
        "Fabrication No": {"fabrication_number"},
        "(Enhanced) Identification": {"enhanced_identification"},
        "Enhanced identification": {"enhanced_identification"},
        "Bus Address": {"bus_address"},
        "Any VIF": {"any"},
        "Manufacturer specific": {"manufacturer_specific"},
        "Credit": {"credit"},
        "Debit": {"debit"},
        "Access Number (transmission count)": {"access_number"},
        # libmbus used "Device type" for both medium and model/version.
        "Device type": {"medium", "model_version"},
        "Medium": {"medium"},
        "Manufacturer": {"manufacturer"},
        "Parameter set identification": {"parameter_set_id"},
        "Model / Version": {"model_version"},
        "Hardware version": {"hardware_version"},
        "Firmware version": {"firmware_version"},
        "Software version": {"software_version"},
        "Customer location": {"customer_location"},
        "Customer": {"customer"},
        "Access Code User": {"access_code_user"},
        "Access Code Operator": {"access_code_operator"},
        "Access Code System Operator": {"access_code_system_operator"},
        "Access Code Developer": {"access_code_developer"},
        "Password": {"password"},
        "Error flags": {"error_flags"},
        "Error mask": {"error_mask"},
        "Digital Output": {"digital_output"},
        "Digital Input": {"digital_input"},
        "Baudrate": {"baud_rate"},
        "Response delay time": {"response_delay"},
        "Retry": {"retry"},
        "First storage # for cyclic storage": {"first_storage_number"},
        "Last storage # for cyclic storage": {"last_storage_number"},
        "Size of storage block": {"storage_block_size"},
        # libmbus labels tariff duration (FD 0x31..0x33) "Storage interval".
        "Storage interval": {"storage_interval", "tariff_duration"},
        "Duration since last readout": {"duration_since_last_readout"},
        "Period of tariff": {"tariff_period"},
        "Dimensionless": {"dimensionless"},
        "Voltage": {"voltage"},
        "Current": {"current"},
        "Reset counter": {"reset_counter"},
        "Cumulation counter": {"cumulation_counter"},
        "Control signal": {"control_signal"},
        "Day of week": {"day_of_week"},
        "Week number": {"week_number"},
        "Time point of day change": {"time_point_day_change"},
        "State of parameter activation": {"parameter_activation_state"},
        "Special supplier information": {"special_supplier_information"},
        "Duration since last cumulation": {"duration_since_last_cumulation"},
        "Operating time battery": {"battery_operating_time"},
        "Date and time of battery change": {"battery_change_time"},
        "Cold / Warm Temperature Limit": {"temperature_limit"},
        "Cumul count max power": {"cumulated_max_power"},
    }.items()
}

MEDIA: dict[str, str] = {
    "Other": "other",
    "Oil": "oil",
    "Electricity": "electricity",
    "Gas": "gas",
    "Heat: Outlet": "heat_outlet",
    "Heat": "heat",  # fixed data structure
    "Steam": "steam",
    "Warm water (30-90°C)": "warm_water",
    "Hot water": "hot_water",  # fixed data structure
    "Water": "water",
    "Heat Cost Allocator": "heat_cost_allocator",
    "Compressed Air": "compressed_air",
    "Cooling load meter: Outlet": "cooling_outlet",
    "Cooling load meter: Inlet": "cooling_inlet",
    "Heat: Inlet": "heat_inlet",
    "Heat / Cooling load meter": "heat_cooling",
    "Bus/System": "bus_system_component",
    "Bus / System": "bus_system_component",
    "Unknown Medium": "unknown",
    "Hot water (>=90°C)": "hot_water",
    "Cold water": "cold_water",
    "Hot/Cold water meter": "dual_register_water",
    "Dual water": "dual_register_water",
    "Pressure": "pressure",
    "A/D Converter": "ad_converter",
    "Breaker: Electricity": "breaker_electricity",
    "Valve: Gas or Water": "valve",
}

# libmbus' normalised units -> (our base unit, factor from theirs to ours).
UNITS: dict[str, tuple[str, Decimal]] = {
    "Wh": ("Wh", Decimal(1)),
    "J": ("J", Decimal(1)),
    "m^3": ("m3", Decimal(1)),
    "kg": ("kg", Decimal(1)),
    "s": ("s", Decimal(1)),
    "W": ("W", Decimal(1)),
    "J/h": ("J/h", Decimal(1)),
    "m^3/h": ("m3/h", Decimal(1)),
    "m^3/min": ("m3/h", Decimal(60)),
    "m^3/s": ("m3/h", Decimal(3600)),
    "kg/h": ("kg/h", Decimal(1)),
    "°C": ("Cel", Decimal(1)),
    "K": ("K", Decimal(1)),
    "bar": ("bar", Decimal(1)),
    "V": ("V", Decimal(1)),
    "A": ("A", Decimal(1)),
}

# Units of the fixed data structure, which libmbus does not normalise.
FIXED_UNITS: dict[str, tuple[str, Decimal]] = {
    "Wh": ("Wh", Decimal(1)),
    "kWh": ("Wh", Decimal(10) ** 3),
    "MWh": ("Wh", Decimal(10) ** 6),
    "kJ": ("J", Decimal(10) ** 3),
    "MJ": ("J", Decimal(10) ** 6),
    "GJ": ("J", Decimal(10) ** 9),
    "W": ("W", Decimal(1)),
    "kW": ("W", Decimal(10) ** 3),
    "MW": ("W", Decimal(10) ** 6),
    "kJ/h": ("J/h", Decimal(10) ** 3),
    "MJ/h": ("J/h", Decimal(10) ** 6),
    "GJ/h": ("J/h", Decimal(10) ** 9),
    "ml": ("m3", Decimal(10) ** -6),
    "l": ("m3", Decimal(10) ** -3),
    "m^3": ("m3", Decimal(1)),
    "ml/h": ("m3/h", Decimal(10) ** -6),
    "l/h": ("m3/h", Decimal(10) ** -3),
    "m^3/h": ("m3/h", Decimal(1)),
}

# VIFEs after which libmbus' value is the raw number under the VIF's unit.
LIBMBUS_IGNORES_VIFE = ("date_time_of", "start_date_time_of", "duration_of")

HALF_LAST_DIGIT = Decimal("0.0000005")  # the XML prints 6 decimals
FLOAT32_RELATIVE = Decimal("2.4e-7")  # two float32 ulps, relative


@dataclass(frozen=True)
class ReferenceRecord:
    function: str
    storage: int
    tariff: int
    subunit: int
    unit: str
    quantity: str | None
    value: str | None


@dataclass(frozen=True)
class Reference:
    header: dict[str, str]
    records: tuple[ReferenceRecord, ...]


def _fix_mojibake(text: str | None) -> str | None:
    """The XML says ISO-8859-1 but holds UTF-8: "Â°C" is "°C"."""
    if text is None:
        return None
    try:
        return text.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return text


def load_reference(path: Path) -> Reference:
    root = ET.parse(path).getroot()  # noqa: S314 - libmbus's own test files, fetched and pinned
    slave = root.find("SlaveInformation")
    header = (
        {} if slave is None else {child.tag: _fix_mojibake(child.text) or "" for child in slave}
    )
    records = []
    for element in root.findall("DataRecord"):
        fields = {child.tag: _fix_mojibake(child.text) for child in element}
        records.append(
            ReferenceRecord(
                function=fields.get("Function") or "",
                storage=int(fields.get("StorageNumber") or 0),
                tariff=int(fields.get("Tariff") or 0),
                subunit=int(fields.get("Device") or 0),
                unit=fields.get("Unit") or "",
                quantity=fields.get("Quantity"),
                value=fields.get("Value"),
            )
        )
    return Reference(header, tuple(records))


def header_problems(telegram: Telegram, reference: Reference) -> list[str]:
    header = telegram.header
    expected = reference.header
    problems = []
    ours: dict[str, str | None] = {
        "Id": (header.identification or "").lstrip("0") or "0",
        "Manufacturer": header.manufacturer,
        "Version": None if header.version is None else str(header.version),
        "Medium": header.medium,
        "AccessNumber": None if header.access_number is None else str(header.access_number),
        "Status": None if header.status is None else f"{header.status:02X}",
        "Signature": None if header.signature is None else f"{header.signature:04X}",
    }
    for key, value in ours.items():
        if key not in expected:
            continue
        want = expected[key]
        if key == "Medium":
            want = MEDIA.get(want, f"<unmapped libmbus medium {want!r}>")
        if key == "Id":
            want = want.upper()
        if value != want:
            problems.append(f"header {key}: ours {value!r}, reference {want!r}")
    return problems


def record_problems(ours: DataRecord, ref: ReferenceRecord, fixed: bool) -> list[str]:
    where = f"record {ours.index}"
    problems = []
    if FUNCTIONS.get(ref.function) is not ours.function:
        problems.append(f"{where}: function {ours.function}, reference {ref.function!r}")
    expected_storage = 1 if ref.function == "Historic value" else ref.storage
    for name, mine, theirs in (
        ("storage", ours.storage, expected_storage),
        ("tariff", ours.tariff, ref.tariff),
        ("subunit", ours.subunit, ref.subunit),
    ):
        if mine != theirs:
            problems.append(f"{where}: {name} {mine}, reference {theirs}")
    if ours.function in (RecordFunction.MANUFACTURER_DATA, RecordFunction.MORE_RECORDS_FOLLOW):
        if _hex_words(ours.value) != _hex_words(ref.value):
            problems.append(f"{where}: manufacturer data {ours.value!r}, reference {ref.value!r}")
        return problems
    if fixed:
        problems += _fixed_value_problems(ours, ref, where)
        return problems
    if ref.unit == "-" and ref.quantity not in QUANTITIES:
        # Plain-text VIF: libmbus puts the text where the quantity goes.
        # A "per second" VIFE extends our unit ("ABC/s"); libmbus ignores it.
        text_unit = ours.unit if ours.unit == ref.quantity else ours.unit.rsplit("/", 1)[0]
        if ours.quantity != "plain_text" or text_unit != ref.quantity:
            problems.append(
                f"{where}: plain-text unit {ref.quantity!r}, ours {ours.quantity}/{ours.unit!r}"
            )
    else:
        allowed = QUANTITIES.get(ref.quantity or "")
        if allowed is None:
            problems.append(f"{where}: no mapping for libmbus quantity {ref.quantity!r}")
        elif ours.quantity not in allowed:
            problems.append(f"{where}: quantity {ours.quantity}, reference {ref.quantity!r}")
    problems += _value_problems(ours, ref, where)
    return problems


def _hex_words(value: object) -> list[str]:
    return str(value or "").upper().split()


def _value_problems(ours: DataRecord, ref: ReferenceRecord, where: str) -> list[str]:
    if any(note.startswith(LIBMBUS_IGNORES_VIFE) for note in ours.notes):
        return []
    if ours.unit in ("month", "a"):
        return []
    if ours.invalid and any(note.startswith("BCD field") for note in ours.notes):
        return []
    text = ref.value
    if ref.quantity in ("Time point (date)", "Time point (date & time)") or isinstance(
        ours.value, date
    ):
        return _date_problems(ours, text, where)
    if isinstance(ours.value, str) and ours.coding is DataCoding.TEXT:
        if (text or "").rstrip() != ours.value.rstrip():
            return [f"{where}: text {ours.value!r}, reference {text!r}"]
        return []
    if ours.coding is DataCoding.LVAR_BINARY and _is_hex_words(text):
        # libmbus prints long binary numbers as bytes, most significant first.
        words = (text or "").split()
        number = int("".join(words), 16)
        mine_int = int(ours.value) % (1 << (8 * len(words)))  # type: ignore[arg-type]
        if ours.base_value is not None and ours.base_value != ours.value:
            return [f"{where}: scaled binary {ours.value}, reference bytes {text}"]
        return [] if mine_int == number else [f"{where}: {ours.value!r}, reference {text}"]
    try:
        expected = Decimal(text or "")
    except InvalidOperation:
        return [f"{where}: reference value {text!r} is not a number, ours {ours.value!r}"]
    if ours.value is None:
        return [f"{where}: no value (notes {ours.notes}), reference {text}"]
    mine = ours.base_value if ours.base_value is not None else Decimal(ours.value)
    unit, factor = UNITS.get(ref.unit, (ours.base_unit, Decimal(1)))
    if ours.base_value is not None and unit != ours.base_unit:
        return [f"{where}: base unit {ours.base_unit}, reference {ref.unit!r}"]
    expected *= factor
    if expected < 0 <= mine and isinstance(ours.value, int) and not ours.value < 0:
        expected += Decimal(2) ** (8 * _data_length(ours))
    tolerance = HALF_LAST_DIGIT * factor
    if ours.coding is DataCoding.REAL32:
        tolerance += abs(expected) * FLOAT32_RELATIVE
    tolerance += abs(expected) * Decimal("1e-15")  # libmbus computes in double
    if abs(mine - expected) > tolerance:
        return [f"{where}: value {mine} {ours.base_unit}, reference {text} {ref.unit}"]
    return []


def _is_hex_words(text: str | None) -> bool:
    words = (text or "").split()
    return len(words) > 1 and all(
        len(word) == 2 and all(c in "0123456789ABCDEFabcdef" for c in word) for word in words
    )


def _data_length(record: DataRecord) -> int:
    lengths = {
        DataCoding.INT8: 1,
        DataCoding.INT16: 2,
        DataCoding.INT24: 3,
        DataCoding.INT32: 4,
        DataCoding.INT48: 6,
        DataCoding.INT64: 8,
    }
    return lengths.get(record.coding, 0)


def _date_problems(ours: DataRecord, text: str | None, where: str) -> list[str]:
    parsed = _parse_libmbus_date(text or "")
    if parsed is None:
        if ours.invalid and ours.value is None:
            return []
        return [f"{where}: reference date {text!r} is invalid, ours {ours.value!r} not flagged"]
    if ours.value != parsed:
        return [f"{where}: date {ours.value!r}, reference {text!r}"]
    return []


def _parse_libmbus_date(text: str) -> date | datetime | None:
    try:
        if "T" in text:
            return datetime.strptime(text.rstrip("Z"), "%Y-%m-%dT%H:%M:%S")
        return datetime.strptime(text, "%Y-%m-%d").date()
    except ValueError:
        return None


def _fixed_value_problems(ours: DataRecord, ref: ReferenceRecord, where: str) -> list[str]:
    scale = Decimal(1)
    unit = ref.unit
    first, _, rest = unit.partition(" ")
    if first.isdigit() and rest:
        scale, unit = Decimal(first), rest
    known = FIXED_UNITS.get(unit)
    if known is None:
        return [f"{where}: no mapping for fixed-structure unit {ref.unit!r}"]
    base_unit, factor = known
    expected = Decimal(ref.value or "0") * scale * factor
    if ours.base_unit != base_unit or ours.base_value != expected:
        return [f"{where}: {ours.base_value} {ours.base_unit}, reference {ref.value} {ref.unit}"]
    return []
