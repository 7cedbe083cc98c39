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

from drivers.core.errors import DecodeError, FrameError
from drivers.mbus.frame import frame_length
from drivers.mbus.records import DataRecord, RecordValue
from drivers.mbus.telegram import Telegram, TelegramHeader, decode_telegram

JsonScalar = str | int | bool | None

_HEX_DIGITS = re.compile(r"[0-9A-Fa-f]+")
# What dumps put between bytes: spaces, '|' columns, ':' (Wireshark), ',' (C arrays).
_SEPARATORS = re.compile(r"[\s|:,]+")


def parse_hex(text: str) -> bytes:
    """Bytes from hex as tools and logs print it: pairs separated by spaces
    ("68 1E 1E 68"), or not ("681E1E68"), or by '|', ':' or ','; a "0x"
    before a number, and '#' comments to the end of a line, are allowed."""
    out = bytearray()
    for number, line in enumerate(text.splitlines(), 1):
        for token in _SEPARATORS.split(line.split("#", 1)[0]):
            digits = token[2:] if token[:2] in ("0x", "0X") else token
            if not token:
                continue
            if not _HEX_DIGITS.fullmatch(digits):
                raise DecodeError(f"line {number}: {token[:20]!r} is not hex: expected bytes like '68 1F 1F 68' "
                                  "or '681F1F68'")
            if len(digits) % 2:
                raise DecodeError(f"line {number}: {token[:20]!r} has an odd number of hex digits: "
                                  "a byte is two digits")
            out += bytes.fromhex(digits)
    if not out:
        raise DecodeError("no hex bytes found: the input is empty")
    return bytes(out)


def split_frames(data: bytes) -> list[bytes]:
    """The frames one after another in ``data`` (a dump of several
    telegrams, one per line or run together), cut where each frame's own
    length field says it ends."""
    frames: list[bytes] = []
    while data:
        where = f"telegram {len(frames) + 1}"
        try:
            length = frame_length(data)
        except FrameError as exc:
            raise FrameError(f"{where}: {exc}") from None
        if length is None or length > len(data):
            raise FrameError(f"{where} is cut short: {len(data)} byte(s), "
                             f"{length if length is not None else 'at least 9'} needed")
        frames.append(data[:length])
        data = data[length:]
    return frames


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


def telegrams_to_json(text: str) -> dict[str, object] | list[dict[str, object]]:
    """What ``mbus decode`` prints for a hex dump: one telegram's dict, or a
    list of them when the dump holds several (a multi-telegram readout)."""
    frames = split_frames(parse_hex(text))
    if len(frames) == 1:
        return telegram_to_json(frames[0])
    decoded = []
    for number, frame in enumerate(frames, 1):
        try:
            decoded.append(telegram_to_json(frame))
        except DecodeError as exc:
            raise type(exc)(f"telegram {number}: {exc}") from None
    return decoded
