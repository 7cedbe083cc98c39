"""Modbus device profiles: which register holds which quantity, as data.

A profile is one YAML file per product (drivers/profiles/NAME.yaml). It names
the data sheet it was written from, the defaults shared by its points, each
point's register, encoding, scale, unit and kind, the device's quirks under
``workarounds``, and test vectors (raw registers -> expected values) that the
test suite runs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from functools import cached_property
from typing import Annotated, Literal

from drivers.core.durations import Duration
from drivers.core.readings import Kind
from drivers.core.records import Rule
from drivers.modbus.codec import (
    BlockDecoder,
    Decoder,
    RegisterType,
    WordOrder,
    make_block_decoder,
    make_decoder,
    register_count,
)

Table = Literal["holding", "input"]

Address = Annotated[int, Rule(ge=0, le=0xFFFF)]


@dataclass(frozen=True, kw_only=True)
class ScaleRegister:
    """A register holding a power-of-ten exponent for other values (SunSpec's
    ``*_SF``): value = raw x 10^exponent x scale + offset. -32768 means the
    meter does not implement the value."""

    table: Table | None = None  # the point's own table when absent
    address: Address


@dataclass(frozen=True, kw_only=True)
class ModbusPoint:
    """One quantity a Modbus meter serves."""

    name: str
    table: Table
    address: Address
    type: RegisterType
    order: WordOrder = "ABCD"
    length: Annotated[int, Rule(ge=1, le=125)] | None = None  # registers of a string
    bit: Annotated[int, Rule(ge=0, le=15)] | None = None  # one bit of a bits register
    scale: Decimal = Decimal(1)
    offset: Decimal = Decimal(0)
    scale_register: ScaleRegister | None = None
    # The raw integer a meter serves for "not implemented" (SunSpec: -32768
    # for int16, 65535 for uint16): such a reading is sent as invalid.
    missing: int | None = None
    # The smallest step the value takes, in its unit, when the data sheet
    # states it; otherwise derived from the type and scale (see meta()).
    resolution: Annotated[Decimal, Rule(gt=0)] | None = None
    unit: str
    kind: Kind
    description: str = ""
    # Read this point no more often than this (a device polled every 10 s
    # reads its energy counters every 15 min, aligned to :00, :15, ...); a
    # device's `intervals` entry in the config overrides it.
    interval: Duration | None = None

    def __post_init__(self) -> None:
        if (self.type == "string") != (self.length is not None):
            raise ValueError(f"point {self.name}: a string needs `length` (registers), and only a string has one")
        if self.bit is not None and self.type != "bits":
            raise ValueError(f"point {self.name}: `bit` belongs to type bits")
        textual = self.type in ("string", "bits")
        if textual and (self.scale != 1 or self.offset != 0 or self.scale_register is not None):
            raise ValueError(f"point {self.name}: a {self.type} value takes no scale or offset")
        if self.missing is not None and (textual or self.type.startswith("float")):
            raise ValueError(f"point {self.name}: `missing` is for integer types (a float meter sends NaN)")
        if self.type == "string" and self.kind == "counter":
            raise ValueError(f"point {self.name}: text cannot be a counter")

    @cached_property
    def count(self) -> int:
        return register_count(self.type, self.length)

    @property
    def end(self) -> int:
        """First register address after this point."""
        return self.address + self.count

    @property
    def scale_source(self) -> tuple[Table, int] | None:
        """(table, address) of the exponent register, if the value has one."""
        if self.scale_register is None:
            return None
        return self.scale_register.table or self.table, self.scale_register.address

    def decoder(self) -> Decoder:
        """Decodes this point's own registers (without a scale register's exponent)."""
        return make_decoder(self.type, self.order, self.scale, self.offset, self.length, self.bit, self.missing)

    def block_decoder(self) -> BlockDecoder:
        """Decodes this point out of a whole request's answer (the poll's hot path)."""
        return make_block_decoder(self.type, self.order, self.scale, self.offset, self.length, self.bit,
                                  self.missing)

    def resolution_meta(self) -> dict[str, float | str] | None:
        """What the platform is told about the value's step (the retained meta message)."""
        if self.resolution is not None:
            return {"step": float(self.resolution)}
        if self.type.startswith("float"):
            return {"float": self.type}  # the step is relative: 2**-23 of the value for float32
        if self.type in ("string", "bits") or self.scale_register is not None:
            return None
        return {"step": float(self.scale)}


@dataclass(frozen=True, kw_only=True)
class IdentityRegister:
    """Where a meter keeps its serial number, to notice a meter swap."""

    table: Table = "holding"
    address: Address
    type: Literal["uint16", "uint32", "uint64", "string"] = "uint32"
    order: WordOrder = "ABCD"
    length: Annotated[int, Rule(ge=1, le=125)] | None = None  # registers, for a string

    def __post_init__(self) -> None:
        if (self.type == "string") != (self.length is not None):
            raise ValueError("identity: a string needs `length` (registers), and only a string has one")

    @property
    def count(self) -> int:
        return register_count(self.type, self.length)

    def decoder(self) -> Decoder:
        return make_decoder(self.type, self.order, length=self.length)


@dataclass(frozen=True, kw_only=True)
class SerialDefaults:
    """The line settings a device leaves the factory with."""

    baudrate: Literal[1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200] = 9600
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1

    def describe(self) -> str:
        return f"{self.baudrate} 8{self.parity}{self.stopbits}"


@dataclass(frozen=True, kw_only=True)
class Workarounds:
    """Device quirks, kept together instead of sprinkled over the profile."""

    max_registers: Annotated[int, Rule(ge=1, le=125)] = 125
    pause_between_requests: Annotated[float, Rule(ge=0, le=5)] = 0.0
    # Register ranges [start, end) that answer with an exception: never read across.
    holes: tuple[tuple[Table, int, int], ...] = ()
    # Factory serial settings: `check` notes a bus that differs, `probe` uses them.
    serial: SerialDefaults | None = None


@dataclass(frozen=True, kw_only=True)
class TestVector:
    """Raw registers a real meter served -> the values the profile must give."""

    registers: dict[Table, dict[int, tuple[Annotated[int, Rule(ge=0, le=0xFFFF)], ...]]]
    expect: dict[str, float | int | str]


@dataclass(frozen=True, kw_only=True)
class ModbusProfile:
    name: str
    protocol: Literal["modbus"] = "modbus"
    manufacturer: str
    model: str
    source: str
    description: str = ""
    points: tuple[ModbusPoint, ...]
    workarounds: Workarounds = field(default_factory=Workarounds)
    identity: IdentityRegister | None = None
    tests: tuple[TestVector, ...] = ()
    origin: str = ""

    def __post_init__(self) -> None:
        if not self.points:
            raise ValueError("a profile needs at least one point")

    def chosen(self, names: Iterable[str] | None) -> tuple[ModbusPoint, ...]:
        """The points a device is read for: these names, or all of them."""
        wanted = set(names) if names is not None else None
        return tuple(p for p in self.points if wanted is None or p.name in wanted)

    def point(self, name: str) -> ModbusPoint:
        for p in self.points:
            if p.name == name:
                return p
        raise KeyError(name)

