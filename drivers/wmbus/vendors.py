"""Manufacturer-specific payloads: one small hook per meter family.

Two meter families common in Polish blocks put their values where
EN 13757-3 has no records for them:

* Apator AT-WMBUS-16-2 on water meters (manufacturer APA, version 0x05,
  water or warm water): after the 2F2F check the telegram is one
  manufacturer-data record (DIF 0x0F) holding 4 bytes of date and 3 of
  fault flags, then a run of registers, each an id byte and a content of a
  length the id fixes, ended by 0xFF filler. Register 0x10 is the total
  volume in litres (4 bytes, least significant first).
* Apator E-ITN 30.51 / 30.6 heat cost allocators (APA, version 0x04,
  device type heat cost allocator): CI 0xA0 (or 0xB6 with a header of its
  own in front) and 16 bytes that start A0 A1: the previous season's and
  the current season's HCA units (2 bytes each), the meter's date (day,
  month, year packed in 16 bits) and the previous and current season's
  average room temperature (a whole degree and 256ths).

The E-ITN layout is as Apator's data sheet I-PL-021-2016 describes it. The
AT-WMBUS-16-2's register lengths are not published by Apator: they are those
observed in field telegrams (the open-source wmbusmeters project's analysis
of them was read to learn them; no code of it is used), and a register of
unknown length stops the walk rather than guess. A hook turns the bytes into ordinary records (the standard
decoder's quantity names, a note naming the layout), so that a profile maps
them like any other record. A hook that does not find what it expects
gives no record and a note saying why: never a guessed value.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import date
from decimal import Decimal

from drivers.mbus.datafield import DataCoding
from drivers.mbus.records import DataRecord, RecordFunction
from drivers.wmbus.link import LinkAddress

APATOR = "APA"
APATOR_LEGACY = 0x8614  # M-field some older E-ITN allocators send (not a valid letter code)

AT_WMBUS_16_2 = "apator-at-wmbus-16-2"
E_ITN = "apator-e-itn"

# AT-WMBUS-16-2 register id -> content length in bytes. Registers whose
# length is not known stop the walk (the total may lie beyond them).
_REGISTER_LENGTHS: dict[int, int] = {
    0x00: 4, 0x01: 3, 0x10: 4, 0x11: 2, 0x40: 6, 0x41: 2, 0x42: 4, 0x43: 2, 0x44: 3,
    0x71: 9, 0x72: 13, 0x73: 17, 0x75: 25, 0x7B: 49,
    0x80: 10, 0x81: 10, 0x82: 10, 0x83: 10, 0x84: 10, 0x86: 10, 0x87: 10,
    0x85: 11, 0x88: 11, 0x8F: 11, 0x8A: 9, 0x8B: 6, 0x8C: 6, 0x8E: 7,
    0xA0: 4, 0xA1: 4, 0xA2: 1, 0xA3: 7, 0xA4: 4, 0xA5: 1, 0xA6: 3, 0xA7: 2, 0xA8: 2, 0xA9: 1,
    0xAA: 2, 0xAB: 2, 0xAC: 2, 0xAD: 2, 0xAF: 1,
    0xB0: 5, 0xB1: 8, 0xB2: 16, 0xB3: 8, 0xB4: 2, 0xB5: 16,
    0xD0: 3, 0xD3: 3, 0xF0: 4,
}
_REGISTER_LENGTHS.update(dict.fromkeys(range(182, 200), 3))
_TOTAL_VOLUME = 0x10
_HEADER = 7  # after the 0x0F DIF: date (4) and fault flags (3)
_END = 0xFF

_E_ITN_LENGTH = 16


@dataclass(frozen=True)
class VendorData:
    """What a hook made of a telegram: records, and a note for the technician."""

    records: tuple[DataRecord, ...]
    note: str


Hook = Callable[[int, bytes, bytes], VendorData | None]


def vendor_data(meter: LinkAddress, ci: int, application: bytes, manufacturer_data: bytes,
                first_index: int) -> VendorData | None:
    """The records a meter family's own layout holds; None when no hook is for this meter."""
    hook = _hook_for(meter)
    if hook is None:
        return None
    found = hook(ci, application, manufacturer_data)
    if found is None:
        return None
    records = tuple(_renumber(record, first_index + n) for n, record in enumerate(found.records))
    return VendorData(records, found.note)


def _hook_for(meter: LinkAddress) -> Hook | None:
    manufacturer = meter.manufacturer
    legacy = int.from_bytes(meter.raw[0:2], "little") == APATOR_LEGACY
    if manufacturer == APATOR and meter.version == 0x05 and meter.device_type in (0x06, 0x07):
        return _at_wmbus_16_2
    if (manufacturer == APATOR or legacy) and meter.version == 0x04 and meter.device_type == 0x08:
        return _e_itn
    return None


# --- Apator AT-WMBUS-16-2 -------------------------------------------------------------


def _at_wmbus_16_2(ci: int, application: bytes, manufacturer_data: bytes) -> VendorData | None:
    if not manufacturer_data:
        return None  # a telegram with standard records only: nothing of the vendor's
    position = _HEADER
    while position < len(manufacturer_data):
        register = manufacturer_data[position]
        if register == _END:
            break
        length = _REGISTER_LENGTHS.get(register)
        if length is None:
            return VendorData((), f"{AT_WMBUS_16_2}: register 0x{register:02X} of unknown length before the "
                                  "total volume; the telegram's values are not read")
        content = manufacturer_data[position + 1 : position + 1 + length]
        if len(content) < length:
            break
        if register == _TOTAL_VOLUME:
            litres = int.from_bytes(content, "little")
            volume = Decimal(litres).scaleb(-3)
            raw = manufacturer_data[position : position + 1 + length].hex(" ").upper()
            record = DataRecord(index=0, function=RecordFunction.INSTANTANEOUS, storage=0, tariff=0, subunit=0,
                                quantity="volume", value=volume, unit="m3", base_value=volume, base_unit="m3",
                                coding=DataCoding.INT32, raw=raw, notes=(f"vendor_layout:{AT_WMBUS_16_2}",),
                                step=Decimal("0.001"))
            return VendorData((record,), f"{AT_WMBUS_16_2}: total volume from register 0x10")
        position += 1 + length
    return VendorData((), f"{AT_WMBUS_16_2}: no total volume register (0x10) in this telegram")


# --- Apator E-ITN 30.51 / 30.6 ------------------------------------------------------------


def _e_itn(ci: int, application: bytes, manufacturer_data: bytes) -> VendorData | None:
    if ci == 0xA0:
        content = bytes([ci]) + application
    elif ci == 0xB6 and application:
        content = application[application[0] + 1 :]
    else:
        return None
    if len(content) != _E_ITN_LENGTH or content[:2] != b"\xa0\xa1":
        return VendorData((), f"{E_ITN}: {len(content)} bytes not starting A0 A1 where 16 starting A0 A1 "
                              "were expected; the telegram's values are not read")
    note = (f"vendor_layout:{E_ITN}",)
    previous = int.from_bytes(content[4:6], "little")
    current = int.from_bytes(content[8:10], "little")
    records = [
        _count("hca", current, content[8:10], note, storage=0),
        _count("hca", previous, content[4:6], note, storage=1),
        _temperature(content[14], content[15], content[14:16], note, storage=0),
        _temperature(content[12], content[13], content[12:14], note, storage=1),
    ]
    today = _packed_date(int.from_bytes(content[10:12], "little"))
    if today is not None:
        records.append(DataRecord(index=0, function=RecordFunction.INSTANTANEOUS, storage=0, tariff=0, subunit=0,
                                  quantity="time_point", value=today, unit="", base_value=None, base_unit="",
                                  coding=DataCoding.INT16, raw=content[10:12].hex(" ").upper(), notes=note))
    return VendorData(tuple(records), f"{E_ITN}: current and previous season's units and room temperatures")


def _count(quantity: str, value: int, raw: bytes, notes: tuple[str, ...], storage: int) -> DataRecord:
    return DataRecord(index=0, function=RecordFunction.INSTANTANEOUS, storage=storage, tariff=0, subunit=0,
                      quantity=quantity, value=value, unit="", base_value=None, base_unit="",
                      coding=DataCoding.INT16, raw=raw.hex(" ").upper(), notes=notes)


def _temperature(fraction: int, whole: int, raw: bytes, notes: tuple[str, ...], storage: int) -> DataRecord:
    """A season's average room temperature: whole degrees and 256ths (exact in decimal)."""
    value = Decimal(whole) + Decimal(fraction) / Decimal(256)
    return DataRecord(index=0, function=RecordFunction.INSTANTANEOUS, storage=storage, tariff=0, subunit=0,
                      quantity="room_temperature", value=value, unit="Cel", base_value=value, base_unit="Cel",
                      coding=DataCoding.INT16, raw=raw.hex(" ").upper(), notes=notes + ("season_average",),
                      step=Decimal(1) / Decimal(256))


def _packed_date(word: int) -> date | None:
    """Day (5 bits), month (4), year since 2000 (5), from the least significant bit up; 0: none."""
    if word == 0:
        return None
    try:
        return date(2000 + ((word >> 9) & 0x1F), (word >> 5) & 0x0F, word & 0x1F)
    except ValueError:
        return None


def _renumber(record: DataRecord, index: int) -> DataRecord:
    return replace(record, index=index)
