"""What can still be read from a buffer file SQLite calls corrupt.

When the buffer fails SQLite's integrity check it is moved aside and a new
stream starts (agent/buffer.py). Its readings are not given up: the file and
its WAL are read page by page here, without SQLite, and every stored row
whose own CRC-32 still matches is taken into the new stream, with an event
that names the old stream and the old ids of what was taken (``salvaged``)
and of what could not be (``lost``). A damaged b-tree, schema or header
costs nothing but the pages that are damaged themselves: a row is found by
the shape of its record and proven by its checksum, never trusted on the
file's structure.

The SQLite file format is documented and stable (sqlite.org/fileformat.html);
only what the buffer's tables need of it is read: table and index leaf
pages, overflow chains, the WAL's frames.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from agent import chunks, logs
from agent.schema import KIND_NAME, Event, NewRow, Series, StoredRow, crc, now_ms, series_crc

if TYPE_CHECKING:
    from agent.buffer import Buffer

_TABLE_LEAF, _INDEX_LEAF = 0x0D, 0x0A
_WAL_MAGIC = (0x377F0682, 0x377F0683)
MAX_FILE = 2 << 30  # a buffer larger than this is not read whole into memory here


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = 0
    for i in range(8):
        if at + i >= len(data):
            raise IndexError("varint beyond the page")
        byte = data[at + i]
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            return value, at + i + 1
    if at + 8 >= len(data):
        raise IndexError("varint beyond the page")
    return (value << 8) | data[at + 8], at + 9


def _record(payload: bytes) -> list[object]:
    """An SQLite record's values (raises on anything malformed)."""
    header_size, at = _varint(payload, 0)
    if header_size > len(payload) or header_size < 1:
        raise ValueError("record header beyond the record")
    types = []
    while at < header_size:
        serial, at = _varint(payload, at)
        types.append(serial)
    values: list[object] = []
    at = header_size
    for serial in types:
        if serial == 0:
            values.append(None)
        elif 1 <= serial <= 6:
            size = (0, 1, 2, 3, 4, 6, 8)[serial]
            values.append(int.from_bytes(payload[at:at + size], "big", signed=True))
            at += size
        elif serial == 7:
            values.append(struct.unpack(">d", payload[at:at + 8])[0])
            at += 8
        elif serial in (8, 9):
            values.append(serial - 8)
        elif serial >= 12:
            size = (serial - 12) // 2
            raw = payload[at:at + size]
            if len(raw) != size:
                raise ValueError("value beyond the record")
            values.append(raw if serial % 2 == 0 else raw.decode("utf-8"))
            at += size
        else:
            raise ValueError("reserved serial type")
    if at > len(payload):
        raise ValueError("values beyond the record")
    return values


@dataclass
class Pages:
    """Page images by number: the file's, then the WAL's frames over them."""

    size: int
    images: dict[int, list[bytes]] = field(default_factory=dict)

    def add(self, number: int, image: bytes) -> None:
        self.images.setdefault(number, []).append(image)

    def latest(self, number: int) -> bytes | None:
        versions = self.images.get(number)
        return versions[-1] if versions else None


def _pages(path: Path) -> Pages | None:
    try:
        data = path.read_bytes()[:MAX_FILE]
    except OSError:
        return None
    size = int.from_bytes(data[16:18], "big") if len(data) >= 100 else 0
    size = 65536 if size == 1 else size
    wal = b""
    try:
        wal = Path(f"{path}-wal").read_bytes()[:MAX_FILE]
    except OSError:
        pass
    if size not in {512 << k for k in range(8)} and len(wal) >= 32:
        size = int.from_bytes(wal[8:12], "big")  # the WAL header says it too
    if size not in {512 << k for k in range(8)}:
        size = 1024  # this agent's own page size
    pages = Pages(size)
    for number in range(len(data) // size):
        pages.add(number + 1, data[number * size:(number + 1) * size])
    if len(wal) >= 32 and int.from_bytes(wal[0:4], "big") in _WAL_MAGIC:
        at = 32
        while at + 24 + size <= len(wal):
            number = int.from_bytes(wal[at:at + 4], "big")
            if number:
                pages.add(number, wal[at + 24:at + 24 + size])
            at += 24 + size
    return pages


def _cells(pages: Pages) -> Iterator[tuple[int | None, list[object]]]:
    """(rowid or None for an index entry, values) of every leaf cell that parses."""
    usable = pages.size
    for number, versions in pages.images.items():
        for image in versions:
            base = 100 if number == 1 else 0
            if len(image) < base + 8 or image[base] not in (_TABLE_LEAF, _INDEX_LEAF):
                continue
            table = image[base] == _TABLE_LEAF
            count = int.from_bytes(image[base + 3:base + 5], "big")
            for index in range(min(count, usable // 2)):
                try:
                    pointer = int.from_bytes(image[base + 8 + 2 * index:base + 10 + 2 * index], "big")
                    length, at = _varint(image, pointer)
                    rowid = None
                    if table:
                        rowid, at = _varint(image, at)
                    payload = _payload(pages, image, at, length, table)
                    if payload is not None:
                        yield rowid, _record(payload)
                except (IndexError, ValueError, UnicodeDecodeError, struct.error):
                    continue


def _payload(pages: Pages, image: bytes, at: int, length: int, table: bool) -> bytes | None:
    """A cell's payload, following its overflow chain (SQLite's local/overflow split)."""
    usable = pages.size
    max_local = usable - 35 if table else (usable - 12) * 64 // 255 - 23
    if length <= max_local:
        return image[at:at + length]
    min_local = (usable - 12) * 32 // 255 - 23
    local = min_local + (length - min_local) % (usable - 4)
    if local > max_local:
        local = min_local
    out = bytearray(image[at:at + local])
    following = int.from_bytes(image[at + local:at + local + 4], "big")
    seen = set()
    while len(out) < length and following and following not in seen:
        seen.add(following)
        page = pages.latest(following)
        if page is None:
            return None
        following = int.from_bytes(page[:4], "big")
        out += page[4:4 + min(usable - 4, length - len(out))]
    return bytes(out) if len(out) == length else None


@dataclass
class Found:
    meta: dict[str, str] = field(default_factory=dict)
    series: dict[int, Series] = field(default_factory=dict)
    rows: dict[int, object] = field(default_factory=dict)  # first_id -> StoredRow
    events: list[str] = field(default_factory=list)


def read(path: Path) -> Found:
    """Everything in the file (and its WAL) whose checksum proves it intact."""

    found = Found()
    pages = _pages(path)
    if pages is None:
        return found
    events: dict[str, None] = {}
    for rowid, values in _cells(pages):
        if rowid is None:
            if len(values) == 3 and all(isinstance(v, str) for v in values[:2]) and isinstance(values[2], int):
                key, value, check = values
                if check == crc(key, value):
                    found.meta[str(key)] = str(value)
            continue
        if len(values) == 11 and isinstance(values[9], bytes):
            row = StoredRow(rowid, *values[1:])  # type: ignore[arg-type]
            if row.intact():
                found.rows[rowid] = row
        elif len(values) == 8 and all(isinstance(v, str) for v in values[1:7]):
            device, point, unit, kind, meter, _attrs = values[1:7]
            if values[7] == series_crc(rowid, *values[1:7]):  # type: ignore[arg-type]
                found.series[rowid] = (device, point, unit, kind, meter)  # type: ignore[assignment]
        elif len(values) == 3 and isinstance(values[1], str) and values[2] == crc(values[1]):
            events[values[1]] = None
    found.events = list(events)
    return found


def recover_into(buffer: Buffer, moved_aside: str) -> None:
    """Take what can be read of the moved-aside file into the buffer's new stream."""

    log = logs.get("buffer")
    found = read(Path(moved_aside))
    old_stream = found.meta.get("stream")
    acked = max([int(found.meta.get("acked_through", "0") or 0)] +
                [getattr(r, "acked", 0) for r in found.rows.values()])
    next_id = max([int(found.meta.get("next_id", "1") or 1)] +
                  [getattr(r, "last_id", 0) + 1 for r in found.rows.values()])
    events: list[Event] = []
    taken: list[tuple[int, int, int]] = []  # old first, old last, count
    rows: list[NewRow] = []
    for first_id in sorted(found.rows):
        row = found.rows[first_id]
        if row.last_id <= acked:  # type: ignore[attr-defined]
            continue  # the platform has it
        try:
            columns = row.columns()  # type: ignore[attr-defined]
            keys = [found.series[sid] for sid in columns.sids]
        except (chunks.ChunkError, KeyError):
            continue  # its readings cannot be attributed: reported lost below
        columns.sids = [buffer.series_id(*key) for key in keys]
        if found.meta.get("mono_boot") != buffer.boot_id:
            columns.monos = [None] * len(columns)  # another boot's monotonic clock means nothing now
        new = NewRow(row.kind)  # type: ignore[attr-defined]
        new.add(chunks.encode_columns(columns), len(columns), min(columns.stamps), max(columns.stamps),
                columns.has_mono)
        rows.append(new)
        taken.append((row.first_id, row.last_id, row.count))  # type: ignore[attr-defined]
    ids = buffer.commit(rows) if rows else None
    now = now_ms()
    if ids is not None:
        new_first = ids[0]
        for old_first, old_last, count in taken:
            events.append({"type": "salvaged", "from_stream": old_stream, "from_first_id": old_first,
                           "from_last_id": old_last, "first_id": new_first, "last_id": new_first + count - 1,
                           "ts": now})
            new_first += count
    lost = _gaps(acked + 1, next_id - 1, [(a, b) for a, b, _ in taken])
    for low, high in lost:
        events.append({"type": "lost", "from_stream": old_stream, "from_first_id": low, "from_last_id": high,
                       "reason": "buffer file damaged", "ts": now})
    if old_stream is None or "next_id" not in found.meta:
        # Which stream it was, or how far its ids went, is gone with the damage:
        # the platform learns that readings after the last it has may be lost.
        events.append({"type": "lost", "from_stream": old_stream, "reason": "buffer file damaged beyond "
                       "reading its stream or its last id: readings not yet acknowledged may be lost",
                       "after_id": max([acked] + [b for _, b, _ in taken]), "ts": now})
    for body in found.events:  # reports the platform had not acknowledged, about the old stream
        try:
            event = json.loads(body)
        except ValueError:
            continue
        if isinstance(event, dict):
            events.append({**event, "from_stream": old_stream})
    counters = {(d, p): (v, t) for d, p, v, t in json.loads(found.meta.get("counters", "[]"))} \
        if _is_json(found.meta.get("counters")) else None
    meters = json.loads(found.meta["meters"]) if _is_json(found.meta.get("meters")) else None
    buffer.commit(events=events, counters=counters or None, meters=meters or None)
    log.error("buffer.salvaged", moved_to=moved_aside, old_stream=old_stream,
              readings=sum(c for _, _, c in taken), rows=len(taken),
              lost_ids=sum(b - a + 1 for a, b in lost), kinds=sorted({KIND_NAME.get(r.kind, "?") for r in rows}))


def _gaps(low: int, high: int, ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The parts of low..high no range covers."""
    out = []
    at = low
    for start, end in sorted(ranges):
        if start > at:
            out.append((at, min(high, start - 1)))
        at = max(at, end + 1)
    if at <= high:
        out.append((at, high))
    return [(a, b) for a, b in out if a <= b]


def _is_json(text: str | None) -> bool:
    if not text:
        return False
    try:
        json.loads(text)
    except ValueError:
        return False
    return True
