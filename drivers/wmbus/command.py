"""The core of ``retrofit-agent wmbus decode``: lines of telegrams in, JSON lines out.

One telegram per input line (hex from the L-field, spaces optional, with or
without block CRCs; rtl_433 JSON and rtl_wmbus lines work too), ``#`` lines
and empty lines skipped. Each telegram gives one JSON object on one line:
``line`` (its line number), ``header``, ``security``, ``records`` and, when
it could not be read to the end, ``error``. Keys never appear in the output.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from drivers.core.errors import ConfigError, DecodeError
from drivers.mbus.decode_json import telegram_to_json
from drivers.wmbus.compact import KNOWN_FORMATS, FormatBook
from drivers.wmbus.crypto import MeterKey
from drivers.wmbus.decode import WmbusResult, decode_wmbus
from drivers.wmbus.keys import EMPTY, KeyRing, load_key_file
from drivers.wmbus.received import Received
from drivers.wmbus.sdr import parse_line

MAX_HELD = 10_000  # compact frames held for a later full frame; beyond, they are printed as they come


def decode_lines(lines: Iterable[str], keys: KeyRing = EMPTY) -> Iterator[str]:
    """One JSON line per telegram, in input order, except for compact frames.

    A compact frame is read with the format of a full frame of the same
    kind. When no earlier line showed it, the compact frame is held and
    printed (with its own line number) as soon as a later line's full
    frame teaches its format, or at the end, with the error, if none does.
    """
    formats = FormatBook(KNOWN_FORMATS)
    held: list[tuple[int, Received]] = []
    for number, line in enumerate(lines, start=1):
        try:
            received = parse_line(line)
        except DecodeError as exc:
            yield json.dumps({"line": number, "error": str(exc)})
            continue
        if received is None:
            continue
        if is_wired_long_frame(received.telegram):
            yield _wired_line(number, received.telegram)
            continue
        taught = formats.taught
        result = decode_wmbus(received.telegram, keys, received.frame_format, formats, received.crcs)
        if result.awaiting_format and len(held) < MAX_HELD:
            held.append((number, received))
            continue
        yield _line(number, received, result)
        if held:
            formats.digest()
        if held and formats.taught != taught:
            still: list[tuple[int, Received]] = []
            for earlier, waiting in held:
                again = decode_wmbus(waiting.telegram, keys, waiting.frame_format, formats, waiting.crcs)
                if again.awaiting_format:
                    still.append((earlier, waiting))
                else:
                    yield _line(earlier, waiting, again)
            held = still
    for earlier, waiting in held:
        yield _line(earlier, waiting, decode_wmbus(waiting.telegram, keys, waiting.frame_format, formats, waiting.crcs))


def is_wired_long_frame(data: bytes) -> bool:
    """68 L L 68 ... checksum 16, whole and summing up: a wired M-Bus answer pasted here."""
    return (len(data) >= 9 and data[0] == 0x68 and data[3] == 0x68 and data[1] == data[2]
            and len(data) == data[1] + 6 and data[-1] == 0x16 and sum(data[4:-2]) & 0xFF == data[-2])


def _wired_line(number: int, frame: bytes) -> str:
    """A wired M-Bus long frame, decoded as `mbus decode` does, in this command's shape."""
    out: dict[str, object] = {"line": number, "wired": True}
    try:
        out.update(telegram_to_json(frame))
    except DecodeError as exc:
        out.update({"header": {}, "records": [], "error": f"wired M-Bus frame: {exc}"})
    out["security"] = {"mode": 0, "state": "none", "layer": None, "encrypted_bytes": 0,
                       "reason": "a wired M-Bus frame (68 L L 68 ... 16)"}
    return json.dumps(out, ensure_ascii=False)


def _line(number: int, received: Received, result: WmbusResult) -> str:
    out: dict[str, object] = {"line": number}
    out.update(result.to_json())
    if received.rssi_dbm is not None:
        out["rssi_dbm"] = received.rssi_dbm
    if received.level is not None:
        out["signal_level"] = {"value": received.level, "scale": received.level_scale}
    return json.dumps(out, ensure_ascii=False)


def keys_from_options(key_hex: str | None, key_file: Path | None) -> KeyRing:
    """``--key HEX`` (one key for every meter) or ``--keys FILE``; errors never echo a key."""
    if key_hex is not None and key_file is not None:
        raise ConfigError(["give --key or --keys, not both"])
    if key_hex is not None:
        try:
            return KeyRing.single(MeterKey.from_hex(key_hex))
        except ValueError as exc:
            raise ConfigError([f"--key: {exc}"]) from None
    if key_file is not None:
        return load_key_file(key_file)
    return EMPTY
