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
from drivers.wmbus.compact import KNOWN_FORMATS, FormatBook
from drivers.wmbus.crypto import MeterKey
from drivers.wmbus.decode import decode_wmbus
from drivers.wmbus.keys import EMPTY, KeyRing, load_key_file
from drivers.wmbus.sdr import parse_line


def decode_lines(lines: Iterable[str], keys: KeyRing = EMPTY) -> Iterator[str]:
    """A compact frame decodes when its format is known or an earlier line's full frame showed it."""
    formats = FormatBook(KNOWN_FORMATS)
    for number, line in enumerate(lines, start=1):
        try:
            received = parse_line(line)
        except DecodeError as exc:
            yield json.dumps({"line": number, "error": str(exc)})
            continue
        if received is None:
            continue
        result = decode_wmbus(received.telegram, keys, received.frame_format, formats)
        out: dict[str, object] = {"line": number}
        out.update(result.to_json())
        if received.rssi_dbm is not None:
            out["rssi_dbm"] = received.rssi_dbm
        if received.level is not None:
            out["signal_level"] = {"value": received.level, "scale": received.level_scale}
        yield json.dumps(out, ensure_ascii=False)


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
