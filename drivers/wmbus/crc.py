"""CRC-16 of EN 13757 (polynomial 0x3D65, initial 0, result complemented).

The wireless link layer protects every block with it, the extended link
layer protects its encrypted payload with it, and the compact frame's format
signature is one. Table-driven: it runs for every block of every telegram.
"""

from __future__ import annotations

POLYNOMIAL = 0x3D65


def _table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ POLYNOMIAL) if crc & 0x8000 else crc << 1
        table.append(crc & 0xFFFF)
    return tuple(table)


_TABLE = _table()


def crc16_en13757(data: bytes) -> int:
    """The CRC as an int; on the wire it goes most significant byte first."""
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ _TABLE[(crc >> 8) ^ byte]
    return crc ^ 0xFFFF


def crc_bytes(data: bytes) -> bytes:
    """The two CRC bytes as they follow a block on the wire."""
    return crc16_en13757(data).to_bytes(2, "big")
