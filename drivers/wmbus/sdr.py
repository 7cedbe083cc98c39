"""Lines from SDR receivers: rtl_433 JSON (``-F json``) and rtl_wmbus, and plain hex.

rtl_433 prints one JSON object per decoded signal; a wireless M-Bus one has
``"model": "Wireless-MBus"`` and the telegram, CRCs removed, as hex in
``"data"``. rtl_wmbus prints ``mode;crc_ok;3of6_ok;time;rssi;...;0xHEX``
lines whose last field is the telegram. Lines that carry no telegram (other
rtl_433 models, status lines) give None; a telegram line that is broken is
a DecodeError that says how.
"""

from __future__ import annotations

import json
import re

from drivers.core.errors import DecodeError
from drivers.wmbus.received import Received

_HEX = re.compile(r"[0-9A-Fa-f]+")
RTL_433_MODELS = ("Wireless-MBus", "Wireless-MBus-C", "Wireless-MBus-T")
# What an SDR decoder's signal figure is: neither is dBm (docs/wmbus.md).
RTL_433_LEVEL = "rtl_433 dB below full scale (not dBm)"
RTL_WMBUS_LEVEL = "rtl_wmbus uncalibrated magnitude (not dBm)"


def hex_telegram(text: str) -> bytes:
    """Bytes from hex, spaces optional, an optional 0x in front."""
    compact = "".join(text.split())
    if compact[:2].lower() == "0x":
        compact = compact[2:]
    if not compact:
        raise DecodeError("no hex digits on the line")
    if not _HEX.fullmatch(compact):
        bad = next(char for char in compact if char not in "0123456789abcdefABCDEF")
        raise DecodeError(f"{bad!r} is not a hex digit: a telegram is written as hex bytes")
    if len(compact) % 2:
        raise DecodeError(f"odd number of hex digits ({len(compact)}): a byte is two digits")
    return bytes.fromhex(compact)


def parse_rtl_433(line: str) -> Received | None:
    try:
        event = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DecodeError(f"not valid JSON (rtl_433 -F json line expected): {exc.msg}") from None
    if not isinstance(event, dict) or not str(event.get("model", "")).startswith("Wireless-MBus"):
        return None
    data = event.get("data")
    if not isinstance(data, str):
        raise DecodeError("rtl_433 Wireless-MBus event without a 'data' hex string")
    rssi = event.get("rssi")  # with -M level: dB relative to full scale, not dBm
    mode = event.get("mode")
    level = float(rssi) if isinstance(rssi, int | float) and not isinstance(rssi, bool) else None
    return Received(hex_telegram(data), mode=str(mode) if mode else None, level=level, crcs=False,
                    level_scale=RTL_433_LEVEL if level is not None else None)


def parse_rtl_wmbus(line: str) -> Received | None:
    fields = line.strip().split(";")
    if len(fields) < 3 or not fields[-1].strip().lower().startswith("0x"):
        return None
    mode = fields[0].strip() or None
    if fields[1].strip() == "0":
        raise DecodeError(f"rtl_wmbus reports a CRC error for this {mode or ''} telegram".replace("  ", " "))
    level: float | None = None  # rtl_wmbus's "rssi": the packet's magnitude, uncalibrated
    if len(fields) > 4:
        try:
            level = float(fields[4])
        except ValueError:
            level = None
    return Received(hex_telegram(fields[-1]), mode=mode, level=level,
                    level_scale=RTL_WMBUS_LEVEL if level is not None else None)


def parse_line(line: str) -> Received | None:
    """A telegram from one line of any supported shape; None for lines without one."""
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    if text.startswith("{"):
        return parse_rtl_433(text)
    if ";" in text:
        return parse_rtl_wmbus(text)
    return Received(hex_telegram(text))
