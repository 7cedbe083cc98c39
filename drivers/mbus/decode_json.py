"""Telegrams as JSON-ready dicts, and the .hex text format of captured frames.

This is what ``retrofit-agent mbus decode`` prints. Value encoding:

* Decimal values are JSON *strings* holding the exact decimal ("12.565"),
  so no float rounding creeps in between the meter and the reader;
* ints stay JSON numbers, dates and date-times are ISO 8601 strings
  (meter local time, no zone: M-Bus carries none);
* an absent or invalid value is null, with ``invalid`` true.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from decimal import Decimal

from drivers.core.errors import DecodeError
from drivers.mbus.records import DataRecord, RecordValue
from drivers.mbus.telegram import Telegram, TelegramHeader, decode_telegram

JsonScalar = str | int | bool | None

_HEX_BYTE = re.compile(r"[0-9A-Fa-f]{2}")


def parse_hex(text: str) -> bytes:
    """Bytes from space-separated hex pairs ("68 1E 1E 68 ..."), newlines allowed."""
    tokens = text.split()
    if not tokens:
        raise DecodeError("no hex bytes found: the input is empty")
    for position, token in enumerate(tokens):
        if not _HEX_BYTE.fullmatch(token):
            raise DecodeError(
                f"token {position + 1} ({token[:20]!r}) is not a hex byte: "
                "expected pairs of hex digits separated by spaces"
            )
    return bytes(int(token, 16) for token in tokens)


def _json_value(value: RecordValue) -> JsonScalar:
    if isinstance(value, Decimal):
        return format(value, "f")  # plain notation: "0.000000010", never "1.0E-8"
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


def header_to_json(header: TelegramHeader) -> dict[str, JsonScalar]:
    return {
        "ci": header.ci,
        "identification": header.identification,
        "manufacturer": header.manufacturer,
        "version": header.version,
        "medium": header.medium,
        "medium_code": header.medium_code,
        "access_number": header.access_number,
        "status": header.status,
        "signature": header.signature,
    }


def record_to_json(record: DataRecord) -> dict[str, JsonScalar | list[str]]:
    return {
        "index": record.index,
        "function": record.function.value,
        "storage": record.storage,
        "tariff": record.tariff,
        "subunit": record.subunit,
        "quantity": record.quantity,
        "value": _json_value(record.value),
        "unit": record.unit,
        "base_value": _json_value(record.base_value),
        "base_unit": record.base_unit,
        "step": _json_value(record.step),
        "coding": record.coding.value,
        "raw": record.raw,
        "unknown": record.unknown,
        "invalid": record.invalid,
        "notes": list(record.notes),
    }


def telegram_json(telegram: Telegram) -> dict[str, object]:
    header: dict[str, object] = dict(header_to_json(telegram.header))
    header["more_records_follow"] = telegram.more_records_follow
    header["manufacturer_data"] = telegram.manufacturer_data.hex(" ").upper()
    return {
        "header": header,
        "records": [record_to_json(record) for record in telegram.records],
    }


def telegram_to_json(data: bytes) -> dict[str, object]:
    """Decode one long frame into a JSON-serialisable dict (see module docstring)."""
    return telegram_json(decode_telegram(data))
