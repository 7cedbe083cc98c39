"""Wireless M-Bus (EN 13757-4, OMS), pure code: link, transport, security, keys.

No I/O lives here. A receiver (a USB stick's framing, an SDR's output
lines) hands telegrams to ``decode_wmbus``; the keys come from a key file
(``load_key_file``). The application layer is the wired bus's EN 13757-3
decoder (drivers.mbus), so a record reads the same on either.
"""

from drivers.wmbus.crypto import MeterKey
from drivers.wmbus.decode import WmbusResult, decode_wmbus, result_to_json
from drivers.wmbus.keys import KeyRing, load_key_file, parse_key_lines
from drivers.wmbus.link import FrameFormat, LinkAddress, LinkFrame, RepeatFilter, parse_link
from drivers.wmbus.transport import Security, SecurityState

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
