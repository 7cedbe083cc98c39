"""The buffer's file format: its schema, row layout and checksums.

A leaf under agent/buffer.py: the buffer, its v1 migration (agent/migrate.py)
and the salvage of a damaged file (agent/salvage.py) all read and write these
rows, and none of them needs the others to know what a row is.
"""

from __future__ import annotations

import struct
import time
import zlib
from dataclasses import dataclass, field
from typing import NamedTuple

from agent import chunks

SCHEMA_VERSION = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL, crc INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS series (
    id INTEGER PRIMARY KEY,
    device TEXT NOT NULL,
    point TEXT NOT NULL,
    unit TEXT NOT NULL,
    kind TEXT NOT NULL,
    meter TEXT NOT NULL DEFAULT '',
    attrs TEXT NOT NULL DEFAULT '',  -- JSON: what the platform needs to read the series (resolution)
    crc INTEGER NOT NULL,
    UNIQUE (device, point, unit, kind, meter)
);
-- Readings, packed: the readings with ids first_id .. first_id + count - 1,
-- all of one kind (0 counter, 1 gauge), as chunks (agent/chunks.py).
CREATE TABLE IF NOT EXISTS batches (
    first_id INTEGER PRIMARY KEY,
    count INTEGER NOT NULL,
    kind INTEGER NOT NULL,
    ts_min INTEGER NOT NULL,
    ts_max INTEGER NOT NULL,
    mono INTEGER NOT NULL,  -- 1: some readings carry monotonic stamps (clock not yet trusted)
    acked INTEGER NOT NULL,  -- the acknowledged watermark when this row was stored
    spool INTEGER NOT NULL,  -- the highest spool record this commit covered (agent/spool.py)
    zlib INTEGER NOT NULL,  -- 1: the body is zlib-compressed
    body BLOB NOT NULL,
    crc INTEGER NOT NULL
);
-- Reports for the platform (evictions, meter swaps, clock corrections,
-- unclean stops), kept until the platform acknowledged them.
CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY AUTOINCREMENT, body TEXT NOT NULL, crc INTEGER NOT NULL);
"""



def schema_statements() -> list[str]:
    """The schema, one statement each (executescript would commit an open transaction)."""
    text = "\n".join(line.split("--")[0] for line in _SCHEMA.splitlines())
    return [statement.strip() for statement in text.split(";") if statement.strip()]


Row = tuple[int, int, int, float | int | str | None, str]  # id, series, ts, value, quality
Series = tuple[str, str, str, str, str]  # device, point, unit, kind, meter
IdRange = tuple[int, int]  # first id, last id, inclusive
Event = dict[str, object]
StoredEvent = tuple[int, str]  # seq, JSON body
CounterState = dict[tuple[str, str], tuple[float | int, int]]  # (device, point) -> (value, ts)

KIND_CODE = {"counter": 0, "gauge": 1}
KIND_NAME = {code: name for name, code in KIND_CODE.items()}

# A stored row holds about this many readings at most (whole chunks): small
# enough that a forwarder batch decodes little more than it sends, large
# enough that a commit at 300 readings/s is a handful of rows.
ROW_READINGS = 2048

def crc(*parts: object) -> int:
    """CRC-32 of the parts, each length-prefixed, so that ('ab','c') != ('a','bc')."""
    value = 0
    for part in parts:
        data = part if isinstance(part, (bytes, bytearray, memoryview)) else str(part).encode()
        value = zlib.crc32(struct.pack("<I", len(data)), value)
        value = zlib.crc32(data, value)
    return value


_ROW = "first_id, count, kind, ts_min, ts_max, mono, acked, spool, zlib, body, crc"
_ROW_VALUES = ", ".join("?" * len(_ROW.split(",")))


class StoredRow(NamedTuple):
    """One row of the batches table, as read."""

    first_id: int
    # Shadows tuple.count(), which nothing here calls: the column's name reads best.
    count: int  # type: ignore[assignment]
    kind: int
    ts_min: int
    ts_max: int
    mono: int
    acked: int
    spool: int
    zlib: int
    body: bytes
    crc: int

    @property
    def last_id(self) -> int:
        return self.first_id + self.count - 1

    def intact(self) -> bool:
        if not (all(type(v) is int for v in self[:9]) and type(self.body) is bytes and type(self.crc) is int):
            return False  # a damaged byte changed a column's type
        return self.crc == row_crc(*self[:-1])

    def columns(self) -> chunks.Columns:
        """The readings, decoded; ChunkError when they fail any check."""
        if not self.intact():
            raise chunks.ChunkError("the row fails its checksum")
        try:
            body = zlib.decompress(self.body) if self.zlib else self.body
        except zlib.error as exc:
            raise chunks.ChunkError(f"the row does not decompress: {exc}") from None
        columns = chunks.decode(body)
        if len(columns) != self.count:
            raise chunks.ChunkError("the row holds another number of readings than it says")
        return columns


def row_crc(first_id: int, count: int, kind: int, ts_min: int, ts_max: int, mono: int, acked: int, spool: int,
            compressed: int, body: bytes) -> int:
    return crc(struct.pack("<qqqqqqqqq", first_id, count, kind, ts_min, ts_max, mono, acked, spool, compressed),
               body)


def stored_row(first_id: int, count: int, kind: int, ts_min: int, ts_max: int, mono: int, acked: int,
               spool: int, raw: bytes) -> StoredRow:
    """A row ready to insert: compressed where that saves a tenth, checksummed."""
    packed = zlib.compress(raw, 6) if len(raw) > 64 else raw
    compressed = int(len(packed) <= len(raw) * 0.9)
    body = packed if compressed else raw
    return StoredRow(first_id, count, kind, ts_min, ts_max, mono, acked, spool, compressed, body,
                     row_crc(first_id, count, kind, ts_min, ts_max, mono, acked, spool, compressed, body))


def series_crc(sid: int, device: str | bytes, point: str | bytes, unit: str | bytes, kind: str | bytes,
               meter: str | bytes, attrs: str | bytes) -> int:
    return crc(sid, device, point, unit, kind, meter, attrs)


@dataclass
class NewRow:
    """Readings of one kind on their way into one stored row."""

    kind: int
    parts: list[bytes] = field(default_factory=list)
    count: int = 0
    ts_min: int = 2**62
    ts_max: int = -(2**62)
    mono: int = 0

    def add(self, chunk: bytes, count: int, ts_min: int, ts_max: int, mono: bool) -> None:
        self.parts.append(chunk)
        self.count += count
        self.ts_min = min(self.ts_min, ts_min)
        self.ts_max = max(self.ts_max, ts_max)
        self.mono |= int(mono)


def now_ms() -> int:
    return time.time_ns() // 1_000_000
