"""Register encodings: turn Modbus registers into numbers and back.

Pure code, no I/O. A decoder is chosen once per point (type, byte/word order,
scale, offset) and then applied to every reading, so the hot path does no
dispatch on strings. Orders are spelled as meter manuals spell them:

    ABCD  big endian, high word first (Modbus default)
    CDAB  low word first, bytes of each word big endian ("word swap")
    BADC  high word first, bytes of each word swapped ("byte swap")
    DCBA  little endian

For 64-bit types the same rule extends over four registers.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from decimal import Decimal
from operator import itemgetter
from typing import Literal

RegisterType = Literal[
    "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64", "string", "bits"
]
WordOrder = Literal["ABCD", "CDAB", "BADC", "DCBA"]

# struct format and register count for every numeric type.
_LAYOUT: dict[str, tuple[str, int]] = {
    "int16": (">h", 1),
    "uint16": (">H", 1),
    "int32": (">i", 2),
    "uint32": (">I", 2),
    "int64": (">q", 4),
    "uint64": (">Q", 4),
    "float32": (">f", 2),
    "float64": (">d", 4),
}

NUMERIC_TYPES: tuple[str, ...] = tuple(_LAYOUT)
# string: ASCII text over `length` registers (two characters each, first
# character in the high byte; BADC swaps them), NULs and spaces trimmed.
# bits: one register read as a bit field; with `bit` the 0/1 of that bit.
REGISTER_TYPES: tuple[str, ...] = (*NUMERIC_TYPES, "string", "bits")
WORD_ORDERS: tuple[str, ...] = ("ABCD", "CDAB", "BADC", "DCBA")

Value = int | float | str
Number = int | float
Decoder = Callable[[Sequence[int]], Value | None]
# Decodes a value from a whole request's answer: (answer as big-endian bytes, byte offset).
BlockDecoder = Callable[[bytes, int], Value | None]


def register_count(kind: str, length: int | None = None) -> int:
    """How many 16-bit registers a value of this type occupies."""
    if kind == "string":
        if not length:
            raise ValueError("a string needs its length in registers")
        return length
    if kind == "bits":
        return 1
    return _LAYOUT[kind][1]


def registers_to_bytes(registers: Sequence[int]) -> bytes:
    """A request's answer as the big-endian bytes it was on the wire."""
    return struct.pack(f">{len(registers)}H", *registers)


def _permutation(order: str, size: int) -> tuple[int, ...] | None:
    """Where each big-endian byte of a value sits in the wire bytes (None: in place)."""
    words = list(range(size // 2))
    if order in ("CDAB", "DCBA"):
        words.reverse()
    positions = [2 * w + b for w in words for b in (0, 1)]
    if order in ("BADC", "DCBA"):
        positions = [positions[i ^ 1] for i in range(size)]
    return None if positions == list(range(size)) else tuple(positions)


def _from_bytes(raw: bytes, order: str) -> list[int]:
    """The registers a device would put on the wire for this big-endian value."""
    perm = _permutation(order, len(raw))
    wire = bytearray(len(raw))
    for source, target in enumerate(perm or range(len(raw))):
        wire[target] = raw[source]
    return [int.from_bytes(wire[i : i + 2], "big") for i in range(0, len(wire), 2)]


_F32 = struct.Struct(">f")


def _shortest_from_bytes(packed: bytes) -> float:
    """The float with the fewest digits that is the float32 ``packed``."""
    value = _F32.unpack(packed)[0]
    for spec in (".6g", ".7g", ".8g"):
        candidate = float(format(value, spec))
        if _F32.pack(candidate) == packed:
            return candidate
    return value if value != value else float(format(value, ".9g"))  # 9 digits always suffice


def shortest_float32(value: float) -> float:
    """The float with the fewest digits that is still the same float32.

    A float32 of 230.1 widens to 230.10000610351562; sending that would claim
    precision the meter never had. Returns e.g. 230.1.
    """
    try:
        return _shortest_from_bytes(_F32.pack(value))
    except OverflowError:
        return value


def make_block_decoder(kind: str, order: str = "ABCD", scale: Decimal | None = None,
                       offset: Decimal | None = None, length: int | None = None,
                       bit: int | None = None, missing: int | None = None) -> BlockDecoder:
    """Build the function that takes this point's value out of a request's answer.

    Chosen once per point, applied to every reading: the hot path does no
    dispatch on strings. Integers are scaled in exact decimal arithmetic, so
    231 x 0.1 is 23.1 and not 23.100000000000001; floats keep only the digits
    their width carries. An integer equal to ``missing`` (a meter's "not
    implemented", e.g. SunSpec's 0x8000) decodes to None.
    """
    if kind == "string":
        return _string_decoder(order, register_count(kind, length))
    if kind == "bits":
        if bit is None:
            return lambda buf, at: (buf[at] << 8) | buf[at + 1]
        return lambda buf, at: (((buf[at] << 8) | buf[at + 1]) >> bit) & 1
    fmt, count = _LAYOUT[kind]
    size = 2 * count
    perm = _permutation(order, size)
    codec = struct.Struct(fmt)
    scaled = (scale is not None and scale != 1) or (offset is not None and offset != 0)
    scale_ = scale if scale is not None else Decimal(1)
    offset_ = offset if offset is not None else Decimal(0)

    if perm is None:
        def raw_bytes(buf: bytes, at: int) -> bytes:
            return buf[at : at + size]
    else:
        pick = itemgetter(*perm)

        def raw_bytes(buf: bytes, at: int) -> bytes:
            return bytes(pick(buf[at : at + size]))

    if kind == "float32":
        if not scaled:
            return lambda buf, at: _shortest_from_bytes(raw_bytes(buf, at))
        return lambda buf, at: float(Decimal(repr(_shortest_from_bytes(raw_bytes(buf, at)))) * scale_ + offset_)

    unpack = codec.unpack
    if perm is None:
        unpack_from = codec.unpack_from

        def present(buf: bytes, at: int) -> Number:
            number: Number = unpack_from(buf, at)[0]
            return number
    else:
        def present(buf: bytes, at: int) -> Number:
            number: Number = unpack(raw_bytes(buf, at))[0]
            return number

    raw_value: Callable[[bytes, int], Number | None] = present
    if missing is not None:
        def raw_value(buf: bytes, at: int) -> Number | None:
            value = present(buf, at)
            return None if value == missing else value

    if kind == "float64":
        if not scaled:
            return raw_value
        return lambda buf, at: float(Decimal(repr(raw_value(buf, at))) * scale_ + offset_)
    if not scaled:
        return raw_value

    def decode_scaled(buf: bytes, at: int) -> Number | None:
        raw = raw_value(buf, at)
        if raw is None:
            return None
        exact = Decimal(raw) * scale_ + offset_
        return int(exact) if exact == exact.to_integral_value() else float(exact)

    return decode_scaled


def _string_decoder(order: str, count: int) -> BlockDecoder:
    swap = order in ("BADC", "DCBA")
    size = 2 * count

    def decode(buf: bytes, at: int) -> str:
        raw = buf[at : at + size]
        if swap:
            raw = bytes(b for i in range(0, size, 2) for b in (raw[i + 1], raw[i]))
        return raw.decode("latin-1").strip("\x00 ")

    return decode


def make_decoder(kind: str, order: str = "ABCD", scale: Decimal | None = None, offset: Decimal | None = None,
                 length: int | None = None, bit: int | None = None, missing: int | None = None) -> Decoder:
    """The same decoding applied to a point's own registers (probe, tests, simulators)."""
    block = make_block_decoder(kind, order, scale, offset, length, bit, missing)
    return lambda registers: block(registers_to_bytes(registers), 0)


def encode(value: Value, kind: str, order: str = "ABCD", length: int | None = None) -> list[int]:
    """The registers a meter serves for ``value`` (used by simulators and tests)."""
    if kind == "string":
        size = 2 * register_count(kind, length)
        raw = str(value).encode("latin-1")[:size].ljust(size, b"\x00")
        if order in ("BADC", "DCBA"):
            raw = bytes(b for i in range(0, size, 2) for b in (raw[i + 1], raw[i]))
        return [int.from_bytes(raw[i : i + 2], "big") for i in range(0, size, 2)]
    if kind == "bits":
        return [int(value) & 0xFFFF]
    fmt, _ = _LAYOUT[kind]
    if not kind.startswith("float"):
        value = int(value)
    return _from_bytes(struct.pack(fmt, value), order)
