"""Packed readings: a poll's readings as one compact block, column by column.

One SQLite row per reading cost a B-tree cell and about 25 bytes of page
space each, and the SD card pays for every page a commit touches. A chunk
holds the readings of one hand-over (a poll, or part of one) of one kind:
series numbers, time stamps as runs (a request's readings share their
stamp), values as one typed array where they allow it (most meters answer
float32), qualities only when one is not ``ok``. A stored row is chunks
laid end to end; its checksum is kept beside it (agent/buffer.py).

Pure code: bytes in, columns out. Little-endian on every host.
"""

from __future__ import annotations

import json
import struct
import sys
from array import array
from collections.abc import Sequence
from typing import cast

from drivers.core.errors import StorageError
from drivers.core.readings import Reading

Value = float | int | str | None

# flags
_SERIES_U32 = 0x01
_MONO = 0x02
_QUALITY = 0x04
_VALUES_MASK = 0x30
_F32, _F64, _I64, _JSON = 0x00, 0x10, 0x20, 0x30

_HEAD = struct.Struct("<IBHH")  # chunk bytes, flags, readings, stamp runs
_SWAP = sys.byteorder == "big"
MAX_READINGS = 0xFFFF
_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1


class ChunkError(StorageError):
    """Stored bytes that do not decode: corruption the checksum missed, or a bug."""


def _raw(typecode: str, items: Sequence[int] | Sequence[float]) -> bytes:
    packed = array(typecode, items)
    if _SWAP:
        packed.byteswap()
    return packed.tobytes()


def _unraw(typecode: str, data: bytes | memoryview, count: int, at: int) -> tuple[list, int]:  # type: ignore[type-arg]
    packed = array(typecode)
    end = at + count * packed.itemsize
    if end > len(data):
        raise ChunkError("chunk shorter than its columns")
    packed.frombytes(data[at:end])
    if _SWAP:
        packed.byteswap()
    return packed.tolist(), end


def _values(values: list[Value]) -> tuple[int, bytes]:
    if all(type(v) is float for v in values):
        floats = cast("list[float]", values)
        if array("f", floats).tolist() == floats:  # every one exact in float32 (NaN never is)
            return _F32, _raw("f", floats)
        return _F64, _raw("d", floats)
    if all(type(v) is int and _I64_MIN <= v <= _I64_MAX for v in values):
        return _I64, _raw("q", cast("list[int]", values))
    text = json.dumps(values, separators=(",", ":"), allow_nan=True).encode()
    return _JSON, struct.pack("<I", len(text)) + text


def encode(sids: Sequence[int], stamps: Sequence[int], values: list[Value], qualities: Sequence[str],
           monos: Sequence[int | None] | None = None) -> bytes:
    """Columns of up to MAX_READINGS readings -> one chunk."""
    count = len(sids)
    if not 0 < count <= MAX_READINGS:
        raise ValueError(f"a chunk holds 1..{MAX_READINGS} readings, not {count}")
    flags = _SERIES_U32 if max(sids) > 0xFFFF else 0
    # Stamp runs: consecutive readings with the same (ts, mono) share one entry.
    has_mono = monos is not None and any(m is not None for m in monos)
    run_ts: list[int] = []
    run_mono: list[int] = []
    run_len: list[int] = []
    last: tuple[int, int | None] | None = None
    for index in range(count):
        key = (stamps[index], monos[index] if has_mono else None)  # type: ignore[index]
        if key == last and run_len[-1] < 0xFFFF:
            run_len[-1] += 1
        else:
            run_ts.append(key[0])
            run_mono.append(-1 if key[1] is None else key[1])
            run_len.append(1)
            last = key
    if has_mono:
        flags |= _MONO
    mode, value_bytes = _values(values)
    flags |= mode
    parts = [b"", _raw("I" if flags & _SERIES_U32 else "H", sids), _raw("q", run_ts), _raw("H", run_len)]
    if has_mono:
        parts.append(_raw("q", run_mono))
    parts.append(value_bytes)
    if any(q != "ok" for q in qualities):
        flags |= _QUALITY
        distinct = sorted(set(qualities))
        index_of = {q: i for i, q in enumerate(distinct)}
        names = json.dumps(distinct, separators=(",", ":")).encode()
        parts += [struct.pack("<H", len(names)), names, _raw("B", [index_of[q] for q in qualities])]
    size = _HEAD.size + sum(len(p) for p in parts)
    parts[0] = _HEAD.pack(size, flags, count, len(run_ts))
    return b"".join(parts)


def encode_readings(sids: Sequence[int], readings: Sequence[Reading]) -> bytes:
    """A hand-over's readings (already given their series numbers) -> one chunk."""
    return encode(sids, [r.ts for r in readings], [r.value for r in readings], [r.quality for r in readings],
                  [r.mono for r in readings])


class Columns:
    """The decoded readings of one or more chunks, column by column."""

    __slots__ = ("monos", "qualities", "sids", "stamps", "values")

    def __init__(self) -> None:
        self.sids: list[int] = []
        self.stamps: list[int] = []
        self.values: list[Value] = []
        self.qualities: list[str] = []
        self.monos: list[int | None] = []

    def __len__(self) -> int:
        return len(self.sids)

    @property
    def has_mono(self) -> bool:
        return any(m is not None for m in self.monos)


def decode(body: bytes | memoryview, into: Columns | None = None) -> Columns:
    """Chunks laid end to end -> their readings in order."""
    out = into if into is not None else Columns()
    view = memoryview(body)
    at = 0
    try:
        while at < len(view):
            if at + _HEAD.size > len(view):
                raise ChunkError("a chunk header is cut short")
            size, flags, count, runs = _HEAD.unpack_from(view, at)
            end = at + size
            if size < _HEAD.size or end > len(view) or count == 0:
                raise ChunkError("a chunk's length does not fit its row")
            chunk = view[:end]
            pos = at + _HEAD.size
            sids, pos = _unraw("I" if flags & _SERIES_U32 else "H", chunk, count, pos)
            run_ts, pos = _unraw("q", chunk, runs, pos)
            run_len, pos = _unraw("H", chunk, runs, pos)
            if sum(run_len) != count:
                raise ChunkError("stamp runs do not add up to the readings")
            run_mono: list[int] = [-1] * runs
            if flags & _MONO:
                run_mono, pos = _unraw("q", chunk, runs, pos)
            mode = flags & _VALUES_MASK
            values: list[Value]
            if mode == _JSON:
                (length,) = struct.unpack_from("<I", chunk, pos)
                pos += 4
                values = json.loads(bytes(chunk[pos:pos + length]))
                pos += length
                if not isinstance(values, list) or len(values) != count:
                    raise ChunkError("a chunk's values do not match its readings")
            else:
                values, pos = _unraw({_F32: "f", _F64: "d", _I64: "q"}[mode], chunk, count, pos)
            if flags & _QUALITY:
                (length,) = struct.unpack_from("<H", chunk, pos)
                pos += 2
                names = json.loads(bytes(chunk[pos:pos + length]))
                pos += length
                indices, pos = _unraw("B", chunk, count, pos)
                qualities = [names[i] for i in indices]
            else:
                qualities = ["ok"] * count
            if pos != end:
                raise ChunkError("a chunk's columns do not fill it")
            out.sids += sids
            out.values += values
            out.qualities += qualities
            for ts, mono, length in zip(run_ts, run_mono, run_len, strict=True):
                out.stamps += [ts] * length
                out.monos += [None if mono < 0 else mono] * length
            at = end
    except (struct.error, ValueError, IndexError, TypeError, KeyError) as exc:
        raise ChunkError(f"a stored chunk does not decode: {exc}") from None
    return out


def encode_columns(columns: Columns, start: int = 0, stop: int | None = None) -> bytes:
    """Re-pack decoded readings (after a correction), MAX_READINGS per chunk."""
    stop = len(columns) if stop is None else stop
    parts = []
    for low in range(start, stop, MAX_READINGS):
        high = min(stop, low + MAX_READINGS)
        parts.append(encode(columns.sids[low:high], columns.stamps[low:high], columns.values[low:high],
                            columns.qualities[low:high], columns.monos[low:high]))
    return b"".join(parts)
