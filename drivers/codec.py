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
from typing import Literal

RegisterType = Literal[
    "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64"
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

REGISTER_TYPES: tuple[str, ...] = tuple(_LAYOUT)
WORD_ORDERS: tuple[str, ...] = ("ABCD", "CDAB", "BADC", "DCBA")

Number = int | float
Decoder = Callable[[Sequence[int]], Number]


def register_count(kind: str) -> int:
    """How many 16-bit registers a value of this type occupies."""
    return _LAYOUT[kind][1]


def _to_bytes(registers: Sequence[int], order: str) -> bytes:
    """Reorder wire registers into one big-endian byte string."""
    words = list(registers)
    if order in ("CDAB", "DCBA"):
        words.reverse()
    raw = b"".join(w.to_bytes(2, "big") for w in words)
    if order in ("BADC", "DCBA"):
        raw = bytes(b for i in range(0, len(raw), 2) for b in (raw[i + 1], raw[i]))
    return raw


def _from_bytes(raw: bytes, order: str) -> list[int]:
    """Inverse of :func:`_to_bytes`: the registers a device would put on the wire."""
    if order in ("BADC", "DCBA"):
        raw = bytes(b for i in range(0, len(raw), 2) for b in (raw[i + 1], raw[i]))
    words = [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]
    if order in ("CDAB", "DCBA"):
        words.reverse()
    return words


def shortest_float32(value: float) -> float:
    """The float with the fewest digits that is still the same float32.

    A float32 of 230.1 widens to 230.10000610351562; sending that would claim
    precision the meter never had. Returns e.g. 230.1.
    """
    if value != value or value in (float("inf"), float("-inf")):
        return value
    packed = struct.pack(">f", value)
    for digits in range(6, 10):
        candidate = float(f"{value:.{digits}g}")
        if struct.pack(">f", candidate) == packed:
            return candidate
    return value


def make_decoder(
    kind: str, order: str = "ABCD", scale: Decimal | None = None, offset: Decimal | None = None
) -> Decoder:
    """Build the function that turns this point's registers into its value.

    Integers are scaled in exact decimal arithmetic, so 231 x 0.1 is 23.1 and
    not 23.100000000000001; floats keep only the digits their width carries.
    """
    fmt, count = _LAYOUT[kind]
    unpack = struct.Struct(fmt).unpack
    is_float = kind.startswith("float")
    scaled = (scale is not None and scale != 1) or (offset is not None and offset != 0)
    scale_ = scale if scale is not None else Decimal(1)
    offset_ = offset if offset is not None else Decimal(0)

    if order == "ABCD" and count == 1:
        def raw_value(registers: Sequence[int]) -> Number:
            return unpack(registers[0].to_bytes(2, "big"))[0]
    else:
        def raw_value(registers: Sequence[int]) -> Number:
            return unpack(_to_bytes(registers, order))[0]

    if is_float:
        narrow = shortest_float32 if kind == "float32" else (lambda v: v)
        if not scaled:
            return lambda registers: narrow(raw_value(registers))
        return lambda registers: float(
            Decimal(repr(narrow(raw_value(registers)))) * scale_ + offset_
        )
    if not scaled:
        return raw_value

    def decode_scaled(registers: Sequence[int]) -> Number:
        exact = Decimal(raw_value(registers)) * scale_ + offset_
        return int(exact) if exact == exact.to_integral_value() else float(exact)

    return decode_scaled


def encode(value: Number, kind: str, order: str = "ABCD") -> list[int]:
    """The registers a meter serves for ``value`` (used by simulators and tests)."""
    fmt, _ = _LAYOUT[kind]
    if not kind.startswith("float"):
        value = int(value)
    return _from_bytes(struct.pack(fmt, value), order)
