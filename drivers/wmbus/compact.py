"""Compact frames (EN 13757-3, CI 0x79/0x7B/0x73): values without their headers.

A meter that sends the same records every time may leave their headers
out. A compact frame carries a format signature (the CRC-16 of the records'
DIF..VIFE bytes run together), the CRC-16 of the full frame it stands for,
and then the data fields alone. Only a format seen before gives them
meaning: the meter sends a full frame now and then (CI 0x78/0x7A/0x72),
whose headers are the format, and ``FormatBook.learn`` keeps it.

Rebuilding is checked twice: the signature must name a known format, and
the full frame rebuilt from it must have the CRC the meter sent. A format
that merely collides in its signature cannot slip values into the wrong
records. Formats a meter family is known to use can be given up front
(``FormatBook(known=...)``), so its compact frames decode from the first
one heard.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

from drivers.core.errors import DecodeError
from drivers.mbus.datafield import FIXED_CODINGS
from drivers.mbus.records import record_layout
from drivers.wmbus.crc import crc16_en13757

IDLE_FILLER = 0x2F

# Formats known up front (headers only, as hex): none yet.
KNOWN_FORMATS: tuple[bytes, ...] = ()


class UnknownFormat(DecodeError):
    """A compact frame whose format no full frame has shown yet."""

    def __init__(self, signature: int) -> None:
        self.signature = signature
        super().__init__(
            f"compact frame with format signature {signature:04X}, not seen yet in a full frame: "
            "its values are decoded once the meter has sent one full frame (it does so every "
            "few telegrams)"
        )


def signature_of(format_bytes: bytes) -> int:
    return crc16_en13757(format_bytes)


class FormatBook:
    """Compact-frame formats by signature: known ones, and what full frames taught.

    Bounded: at most ``capacity`` learnt formats, the least recently used
    forgotten first (a building has a handful of meter families). A full
    frame is only remembered (the latest per meter); its format is worked
    out when a compact frame asks for one not known yet, so that the many
    full frames of meters that never send compact ones cost nothing.
    """

    def __init__(self, known: Iterable[bytes] = (), capacity: int = 256) -> None:
        self._capacity = capacity
        self._formats: OrderedDict[int, tuple[tuple[bytes, int], ...]] = OrderedDict()
        self._known: dict[int, tuple[tuple[bytes, int], ...]] = {}
        self.taught = 0  # formats learnt that were new: a caller holding compact frames retries then
        self._unread: OrderedDict[str, bytes] = OrderedDict()  # latest full frame's records per meter
        for format_bytes in known:
            self._known[signature_of(format_bytes)] = _layout_of_format(format_bytes)

    def __len__(self) -> int:
        return len(self._formats)

    def remember(self, meter: str, records: bytes) -> None:
        """Keep a meter's latest full frame, to learn its format from when a compact frame needs it."""
        self._unread[meter] = records
        self._unread.move_to_end(meter)
        while len(self._unread) > self._capacity:
            self._unread.popitem(last=False)

    def digest(self) -> None:
        """Learn the formats of every full frame remembered since the last time."""
        while self._unread:
            _, records = self._unread.popitem(last=False)
            self.learn(records)

    def learn(self, records: bytes) -> int | None:
        """Keep the format of a full frame's records; its signature, None when it has none.

        A run with a variable-length field or manufacturer data cannot be
        sent compact and is not kept.
        """
        try:
            layout = record_layout(records)
        except DecodeError:
            return None
        if not layout.headers or layout.tail:
            return None
        shape = tuple((header, len(field)) for header, field in zip(layout.headers, layout.data, strict=True))
        if any(_is_variable(header) for header, _ in shape):
            return None
        signature = signature_of(layout.format)
        if signature not in self._formats and signature not in self._known:
            self.taught += 1
        self._formats[signature] = shape
        self._formats.move_to_end(signature)
        while len(self._formats) > self._capacity:
            self._formats.popitem(last=False)
        return signature

    def expand(self, data: bytes) -> bytes:
        """The full records a compact frame's application data stands for.

        ``data`` starts after the transport header (decrypted, with any
        leading 2F filler). Raises UnknownFormat, or DecodeError when the
        rebuilt frame is not the one the meter meant.
        """
        start = 0
        while start < len(data) and data[start] == IDLE_FILLER:
            start += 1
        if len(data) - start < 4:
            raise DecodeError("compact frame shorter than its format signature and frame CRC")
        signature = int.from_bytes(data[start : start + 2], "little")
        frame_crc = int.from_bytes(data[start + 2 : start + 4], "little")
        values = data[start + 4 :]
        shape = self._formats.get(signature) or self._known.get(signature)
        if shape is None and self._unread:
            self.digest()
            shape = self._formats.get(signature)
        if shape is None:
            raise UnknownFormat(signature)
        needed = sum(length for _, length in shape)
        if len(values) < needed:
            raise DecodeError(
                f"compact frame with format {signature:04X} has {len(values)} bytes of values, "
                f"its format needs {needed}"
            )
        rebuilt = bytearray()
        position = 0
        for header, length in shape:
            rebuilt += header + values[position : position + length]
            position += length
        if crc16_en13757(bytes(rebuilt)) != frame_crc:
            raise DecodeError(
                f"compact frame with format {signature:04X}: the rebuilt full frame's CRC is not "
                "the one the meter sent (a different format with the same signature)"
            )
        return bytes(rebuilt) + values[position:]


def _is_variable(header: bytes) -> bool:
    return header[0] & 0x0F not in FIXED_CODINGS


def _layout_of_format(format_bytes: bytes) -> tuple[tuple[bytes, int], ...]:
    """Split a bare format (headers only) into headers and their data lengths."""
    shape: list[tuple[bytes, int]] = []
    position = 0
    end = len(format_bytes)

    def extended(at: int) -> bool:
        if at >= end:
            raise ValueError(f"format {format_bytes.hex()} ends inside a record header")
        return bool(format_bytes[at] & 0x80)

    while position < end:
        start = position
        fixed = FIXED_CODINGS.get(format_bytes[position] & 0x0F)
        if fixed is None:
            raise ValueError(f"format {format_bytes.hex()} has a variable-length or special record")
        while extended(position):  # DIF, then DIFEs
            position += 1
        position += 1
        while extended(position):  # VIF, then VIFEs
            position += 1
        position += 1
        shape.append((format_bytes[start:position], fixed[1]))
    return tuple(shape)
