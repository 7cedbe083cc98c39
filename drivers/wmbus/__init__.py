"""Wireless M-Bus (EN 13757-4, OMS), pure code: link, transport, security, keys.

No I/O lives here. A receiver (a USB stick's framing, an SDR's output
lines) hands telegrams to ``decode_wmbus``; the keys come from a key file
(``load_key_file``). The application layer is the wired bus's EN 13757-3
decoder (drivers.mbus), so a record reads the same on either.

The names below load their module when first used: the agent registers this
package's command (tools.py) at every start, and must not load AES and the
decoder for it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from drivers.wmbus.crypto import MeterKey
    from drivers.wmbus.decode import WmbusResult, decode_wmbus, result_to_json
    from drivers.wmbus.keys import KeyRing, load_key_file, parse_key_lines
    from drivers.wmbus.link import FrameFormat, LinkAddress, LinkFrame, RepeatFilter, parse_link
    from drivers.wmbus.transport import Security, SecurityState

_HOME = {
    "MeterKey": "crypto",
    "WmbusResult": "decode", "decode_wmbus": "decode", "result_to_json": "decode",
    "KeyRing": "keys", "load_key_file": "keys", "parse_key_lines": "keys",
    "FrameFormat": "link", "LinkAddress": "link", "LinkFrame": "link", "RepeatFilter": "link", "parse_link": "link",
    "Security": "transport", "SecurityState": "transport",
}

__all__ = [
    "FrameFormat",
    "KeyRing",
    "LinkAddress",
    "LinkFrame",
    "MeterKey",
    "RepeatFilter",
    "Security",
    "SecurityState",
    "WmbusResult",
    "decode_wmbus",
    "load_key_file",
    "parse_key_lines",
    "parse_link",
    "result_to_json",
]


def __getattr__(name: str) -> object:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)
