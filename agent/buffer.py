"""The durable buffer: every reading lives in SQLite until the platform acknowledged it.

The promise (docs/payload.md): ids per stream are strictly increasing,
contiguous and never reused, and nothing leaves the gateway before it is
durable on the card, so a power cut can never make an id the platform has
seen be issued again.

How it is kept:

- Every commit is synced (WAL with ``synchronous=FULL``): when ``commit``
  returns, its readings and their ids survive a power cut, and only then
  does the forwarder see them. Ids come from ``meta.next_id``, written in
  the same transaction as the readings they number.
- The SD card pays per commit (the WAL page a commit touches is written
  again at every sync), so commits are few and full: the buffer writer
  gathers readings for up to ``flush_interval`` (or until a row's worth has
  gathered) and stores each kind's readings as packed rows (agent/chunks.py)
  instead of one row per reading.
- The connection holds SQLite's EXCLUSIVE lock, so the WAL index lives in
  the process's memory instead of a ``-shm`` file the kernel would write
  out again and again, and no second process can open the file meanwhile.
  The forwarder reads through the same connection, under a lock.
- Every stored row, series, report and meta value carries a CRC-32: SQLite
  has no page checksums, and a flipped bit on an SD card must become a
  reported gap, never a changed value (agent/salvage.py reads what it can
  of a file SQLite itself calls corrupt).
- A clean stop writes ``running = 0``; a start that finds ``running = 1``
  reports an ``unclean_stop`` naming the last durable id.

Acknowledged readings are hidden below a watermark (``acked_through``,
written with the next commit) and swept out in whole rows now and then, so
an acknowledgement costs no write of its own. When the buffer outgrows
``max_size_mb`` the oldest gauge rows go first, then the oldest counters;
each eviction is a report kept until the platform acknowledged it.
"""

from __future__ import annotations

import json
import os
import queue
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from agent import chunks, failpoints, logs
from agent import spool as spool_module
from agent.schema import (
    _ROW,
    _ROW_VALUES,
    KIND_CODE,
    ROW_READINGS,
    SCHEMA_VERSION,
    CounterState,
    Event,
    IdRange,
    NewRow,
    Row,
    Series,
    StoredEvent,
    StoredRow,
    crc,
    now_ms,
    schema_statements,
    series_crc,
    stored_row,
)
from agent.spool import Spool
from drivers.core.errors import StorageError
from drivers.core.readings import Reading

EVICT_ROWS = 256
# Reports the platform acknowledged are forgotten promptly: they are rare,
# and a crash before would send them twice.
ACK_DELAY_S = 0.1
# An acknowledged watermark waits for the next commit of readings (at most
# this long, or the flush interval when that is longer) instead of costing a
# commit of its own. A power cut in between
# sends those readings once more, with the same ids: the platform drops the
# duplicates.
ACK_HOLD_S = 60.0
COUNTER_PERSIST_S = 300.0
# Acknowledged rows are swept out once this many readings have gathered, or this often.
PURGE_READINGS = 50_000
PURGE_S = 600.0
# Page cache per connection (one connection now serves writer and forwarder).
CACHE_KIB = 256
# Every commit appends each page it changed to the WAL; small pages write
# less per commit (measured with ./scripts/bench: docs/performance.md).
PAGE_BYTES = 1024


def _runs(ids: Iterable[int]) -> list[IdRange]:
    """Sorted ids -> runs of consecutive ids."""
    runs: list[IdRange] = []
    for rid in ids:
        if runs and runs[-1][1] == rid - 1:
            runs[-1] = (runs[-1][0], rid)
        else:
            runs.append((rid, rid))
    return runs


def _delta_runs(rows: Iterable[tuple[int, int]]) -> list[tuple[int, int, int]]:
    """(id, delta) in id order -> runs of consecutive ids sharing one delta."""
    runs: list[tuple[int, int, int]] = []
    for rid, delta in rows:
        if runs and runs[-1][1] == rid - 1 and runs[-1][2] == delta:
            runs[-1] = (runs[-1][0], rid, delta)
        else:
            runs.append((rid, rid, delta))
    return runs


@dataclass(frozen=True)
class BufferInfo:
    stream: str
    next_id: int
    created: bool
    moved_aside: str | None = None
    unclean: bool = False  # the last run did not stop cleanly (a crash or a power cut)


class CorruptBuffer(StorageError):
    """The file fails a check SQLite or our checksums make: move it aside."""


class Buffer:
    """The file, its schema and every statement. Thread-safe: one lock around the connection."""

    def __init__(self, path: Path, max_bytes: int | None = None, max_age_s: float | None = None,
                 flush_interval_s: float | None = None) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self.lock = threading.RLock()
        self.evicted_total = 0
        self.boot_id = boot_id()
        self._log = logs.get("buffer")
        moved_aside = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                existed = self._open()
            except CorruptBuffer as exc:
                moved_aside = _move_aside(path)
                self._log.error("buffer.corrupt_moved_aside", path=str(path), moved_to=moved_aside, error=str(exc))
                existed = self._open()
        except (sqlite3.Error, OSError) as exc:
            raise StorageError(f"cannot open buffer {path}: {_why(exc)}") from None
        meta = self._meta
        unclean = existed and meta.get("running") == "1"
        # next_id and the watermark are written to meta only when rows go;
        # between those, the newest stored row carries them.
        last = self._conn.execute(
            "SELECT first_id + count, acked, spool FROM batches ORDER BY first_id DESC LIMIT 1").fetchone()
        self._next_id = max(int(meta["next_id"]), int(last[0]) if last else 0)
        self._acked_through = max(int(meta.get("acked_through", "0")), int(last[1]) if last else 0)
        self.spooled_through = max(int(meta.get("spooled_through", "0")), int(last[2]) if last else 0)
        self.info = BufferInfo(stream=meta["stream"], next_id=self._next_id, created=not existed,
                               moved_aside=moved_aside, unclean=unclean)
        self._purged_at = time.monotonic()
        self._purge_s = float(failpoints.value("buffer-purge-s") or PURGE_S)
        self._series: dict[Series, int] = {}
        self._series_by_id: dict[int, Series] = {}
        self._attrs: dict[int, str] = {}
        self._new_series: dict[int, tuple[Series, str]] = {}
        self._load_series()
        self._next_sid = max(self._series_by_id, default=0) + 1
        try:
            startup = [self._unclean_report()] if unclean else []
            with self._transaction():
                self._forget_other_boots()
                # Durable before the first reading of this run is read: a run
                # that dies before its first commit is still seen as unclean.
                self._put_meta("running", "1")
                if flush_interval_s is not None:
                    self._put_meta("flush_interval_s", str(float(flush_interval_s)))
                self._insert_events(startup)
                self._purge(self._acked_through)
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open buffer {path}: {_why(exc)}") from None
        if moved_aside is not None:
            from agent import salvage

            try:
                salvage.recover_into(self, moved_aside)
            except (StorageError, OSError, ValueError) as exc:
                # Nothing could be taken over: the old stream's unsent readings are
                # reported lost (the file stays for forensics) and this one starts.
                self._log.error("buffer.salvage_failed", moved_to=moved_aside, error=str(exc))
                self.commit(events=[{"type": "lost", "from_stream": None, "reason": f"buffer file damaged: {exc}",
                                     "file": moved_aside, "ts": now_ms()}])

    # -- opening ---------------------------------------------------------------------------------
    def _open(self) -> bool:
        """Open (or make) the file; raise CorruptBuffer when it cannot be trusted."""
        path = self.path
        existed = path.exists() and path.stat().st_size > 0
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=2)
        try:
            conn.execute(f"PRAGMA page_size={PAGE_BYTES}")  # takes effect only on a new, empty file
            # Before the first WAL access: the WAL index then lives in this
            # process's memory, not in a -shm file written out to the card.
            conn.execute("PRAGMA locking_mode=EXCLUSIVE")
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
            # Tests cut the power during checkpoints: they ask for many more of them.
            conn.execute(f"PRAGMA wal_autocheckpoint={int(failpoints.value('buffer-checkpoint-pages') or 1000)}")
            if mode is None or mode[0].lower() != "wal":
                raise sqlite3.OperationalError(f"cannot switch to WAL mode (got {mode})")
            try:
                check = conn.execute("PRAGMA quick_check(1)").fetchone()
            except sqlite3.DatabaseError as exc:
                if _locked(exc):
                    raise
                raise CorruptBuffer(f"integrity check failed: {exc}") from None
            if check is None or check[0] != "ok":
                raise CorruptBuffer(f"integrity check: {check[0] if check else 'no answer'}")
            self._conn = conn
            tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")}
            if "readings" in tables and "batches" not in tables:
                from agent import migrate

                migrate.from_v1(conn)
            for statement in schema_statements():
                conn.execute(statement)
            self._meta = self._load_meta()
            if "stream" not in self._meta:
                if existed and self._meta:
                    raise CorruptBuffer("the meta table has no stream id")
                with self._transaction():
                    for key, value in (("stream", str(uuid.uuid4())), ("next_id", "1"),
                                       ("schema", str(SCHEMA_VERSION)), ("acked_through", "0")):
                        self._put_meta(key, value)
                self._meta = self._load_meta()
                _sync_directory(path.parent)  # the new file's name survives a power cut too
            schema = int(self._meta.get("schema", "0") or 0)
            if schema > SCHEMA_VERSION:
                raise StorageError(f"buffer {path} was written by a newer retrofit-agent (buffer schema {schema}; "
                                   f"this version reads {SCHEMA_VERSION}): upgrade, or move the file away")
            self._page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
        except sqlite3.DatabaseError as exc:
            conn.close()
            if isinstance(exc, sqlite3.OperationalError) and (_locked(exc) or "unable to open" in str(exc)
                                                               or "readonly" in str(exc)
                                                               or "disk" in str(exc)):
                raise
            raise CorruptBuffer(str(exc)) from None
        except BaseException:
            conn.close()
            raise
        return existed

    def _load_meta(self) -> dict[str, str]:
        meta = {}
        # Read as bytes: a damaged byte may not be UTF-8 any more, and is caught by the checksum.
        for key, value, check in self._conn.execute("SELECT CAST(key AS BLOB), CAST(value AS BLOB), crc FROM meta"):
            if check != crc(key, value):
                raise CorruptBuffer(f"meta value {key!r} fails its checksum")
            meta[key.decode()] = value.decode()
        return meta

    def _put_meta(self, key: str, value: str) -> None:
        self._conn.execute("INSERT OR REPLACE INTO meta (key, value, crc) VALUES (?, ?, ?)",
                           (key, value, crc(key, value)))
        self._meta[key] = value

    def _load_series(self) -> None:
        for sid, *texts, check in self._conn.execute(
                "SELECT id, CAST(device AS BLOB), CAST(point AS BLOB), CAST(unit AS BLOB), CAST(kind AS BLOB), "
                "CAST(meter AS BLOB), CAST(attrs AS BLOB), crc FROM series"):
            if check != series_crc(sid, *texts):
                # Its readings cannot be attributed: they are reported as
                # corrupt when read, never sent under a wrong name.
                self._log.error("buffer.series_corrupt", series=sid)
                continue
            device, point, unit, kind, meter, attrs = (t.decode() for t in texts)
            key = (device, point, unit, kind, meter)
            self._series[key] = sid
            self._series_by_id[sid] = key
            self._attrs[sid] = attrs

    def _unclean_report(self) -> Event:
        last = self._conn.execute("SELECT first_id + count - 1, ts_max FROM batches ORDER BY first_id DESC LIMIT 1"
                                  ).fetchone()
        report: Event = {"type": "unclean_stop", "last_id": self._next_id - 1, "ts": now_ms()}
        if last is not None and last[0] == report["last_id"]:
            report["last_ts"] = int(last[1])
        previous = self._meta.get("flush_interval_s")
        if previous:
            report["may_have_lost_s"] = float(previous)
        self._log.warning("buffer.unclean_stop", last_id=report["last_id"],
                          may_have_lost_s=report.get("may_have_lost_s"))
        return report

    # -- properties ------------------------------------------------------------------------------
    @property
    def stream(self) -> str:
        return self.info.stream

    @property
    def next_id(self) -> int:
        return self._next_id

    @property
    def acked_through(self) -> int:
        return self._acked_through

    # -- series ----------------------------------------------------------------------------------
    def series_id(self, device: str, point: str, unit: str, kind: str, meter: str) -> int:
        """The series number of these readings; a new one is stored with the next commit."""
        key = (device, point, unit, kind, meter)
        sid = self._series.get(key)
        if sid is None:
            sid = self._next_sid
            self._next_sid += 1
            self._series[key] = sid
            self._new_series[sid] = (key, "")
        return sid

    def set_attrs(self, sid: int, attrs: str) -> None:
        """What the platform needs to read a series (e.g. its resolution), JSON."""
        if self._attrs.get(sid) == attrs:
            return
        key = self._new_series.get(sid, (self._series_by_id.get(sid), ""))[0]
        if key is None:
            return
        self._new_series[sid] = (key, attrs)

    def pending_series(self, sid: int) -> Series | None:
        """The key of a series given out but not yet stored."""
        entry = self._new_series.get(sid)
        return entry[0] if entry else None

    def series(self) -> dict[int, Series]:
        """Series number -> (device, point, unit, kind, meter), of committed rows."""
        return self._series_by_id

    def series_attrs(self) -> dict[int, str]:
        return self._attrs

    # -- writing (the writer thread) -------------------------------------------------------------
    def commit(self, rows: Sequence[NewRow] = (), acked_through: int | None = None,
               reported: Iterable[int] = (), events: Sequence[Event] = (),
               counters: CounterState | None = None, meters: dict[str, str] | None = None,
               spooled_through: int | None = None) -> IdRange | None:
        """One synced transaction: store rows and reports, move the acknowledged
        watermark, remember counter and meter state.

        Returns the id range given to the rows' readings. On failure nothing is
        changed (ids included) and StorageError is raised.
        """
        first = self._next_id
        conn = self._conn
        new_series = dict(self._new_series)
        try:
            with self.lock:
                with self._transaction():
                    for sid, ((device, point, unit, kind, meter), attrs) in new_series.items():
                        conn.execute(
                            "INSERT INTO series (id, device, point, unit, kind, meter, attrs, crc) "
                            "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET attrs = excluded.attrs, "
                            "crc = excluded.crc",
                            (sid, device, point, unit, kind, meter, attrs,
                             series_crc(sid, device, point, unit, kind, meter, attrs)))
                    next_id = first
                    watermark = self._acked_through
                    if acked_through is not None:
                        watermark = max(watermark, min(acked_through, first - 1))
                    spool = max(self.spooled_through, spooled_through or 0)
                    for row in rows:
                        if not row.count:
                            continue
                        self._insert_row(stored_row(next_id, row.count, row.kind, row.ts_min, row.ts_max, row.mono,
                                                    watermark, spool, b"".join(row.parts)))
                        next_id += row.count
                    if next_id == first:
                        # No row to carry them: meta does (rarely: acks wait for readings).
                        if watermark != self._acked_through:
                            self._put_meta("acked_through", str(watermark))
                        if spool != self.spooled_through:
                            self._put_meta("spooled_through", str(spool))
                    conn.executemany("DELETE FROM events WHERE seq = ?", [(seq,) for seq in reported])
                    self._insert_events(events)
                    if counters:
                        self._put_meta("counters", json.dumps([[d, p, v, t] for (d, p), (v, t) in counters.items()]))
                    if meters:
                        known = json.loads(self._meta.get("meters", "{}"))
                        known.update(meters)
                        self._put_meta("meters", json.dumps(known, sort_keys=True))
                # Before the lock goes: the forwarder reads rows under it, and must know their series.
                self._stored_series(new_series)
        except sqlite3.Error as exc:
            self._meta = self._load_meta_quietly()
            raise StorageError(f"buffer {self.path}: {_why(exc)}") from None
        self._acked_through = watermark
        self.spooled_through = spool
        if next_id == first:
            return None
        self._next_id = next_id
        return first, next_id - 1

    def _stored_series(self, new_series: dict[int, tuple[Series, str]]) -> None:
        """The series a commit stored, known from now on."""
        for sid, (key, attrs) in new_series.items():
            if self._new_series.get(sid) == (key, attrs):
                del self._new_series[sid]
            self._attrs[sid] = attrs
        if new_series:
            # Readers see a new dict: never one changing under their feet.
            self._series_by_id = {**self._series_by_id, **{sid: key for sid, (key, _) in new_series.items()}}

    def _load_meta_quietly(self) -> dict[str, str]:
        try:
            return self._load_meta()
        except (sqlite3.Error, StorageError):
            return self._meta

    def _insert_row(self, row: StoredRow) -> None:
        self._conn.execute(f"INSERT INTO batches ({_ROW}) VALUES ({_ROW_VALUES})", row)

    def _before_deleting_rows(self) -> None:
        """Rows are about to go: meta takes over what the newest row carried."""
        if self._meta.get("next_id") != str(self._next_id):
            self._put_meta("next_id", str(self._next_id))
        if self._meta.get("acked_through") != str(self._acked_through):
            self._put_meta("acked_through", str(self._acked_through))
        if self._meta.get("spooled_through", "0") != str(self.spooled_through):
            self._put_meta("spooled_through", str(self.spooled_through))

    def _insert_events(self, events: Sequence[Event]) -> None:
        bodies = [json.dumps(e, separators=(",", ":")) for e in events]
        self._conn.executemany("INSERT INTO events (body, crc) VALUES (?, ?)", [(b, crc(b)) for b in bodies])

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def maintain(self, now_ms_: int, force_purge: bool = False) -> list[Event]:
        """After a commit: sweep out what was acknowledged (now and then), and
        evict what the size cap and the age limit say must go. Returns the
        eviction reports (already stored)."""
        try:
            with self.lock:
                due = force_purge or time.monotonic() - self._purged_at >= self._purge_s or (
                    self._acked_through - self._purged_floor() >= PURGE_READINGS)
                if due:
                    with self._transaction():
                        self._purge(self._acked_through)
                return self._enforce_limits(now_ms_)
        except sqlite3.Error as exc:
            raise StorageError(f"buffer {self.path}: {_why(exc)}") from None

    def _purged_floor(self) -> int:
        row = self._conn.execute("SELECT first_id FROM batches ORDER BY first_id LIMIT 1").fetchone()
        return int(row[0]) - 1 if row else self._acked_through

    def _purge(self, watermark: int) -> None:
        """Delete whole rows the platform acknowledged (inside a transaction).

        Rows with monotonic stamps of this boot stay until the clock is
        trusted: the correction report covers sent readings too."""
        self._before_deleting_rows()
        self._conn.execute("DELETE FROM batches WHERE first_id <= ? AND first_id + count - 1 <= ? AND mono = 0",
                           (watermark, watermark))
        self._purged_at = time.monotonic()

    def _forget_other_boots(self) -> None:
        """Monotonic stamps of an earlier boot cannot be corrected any more:
        those readings keep their clock_unsynced flag for good."""
        if self._meta.get("mono_boot") == self.boot_id:
            return
        for row, columns in self._decoded("WHERE mono = 1"):
            columns.monos = [None] * len(columns)
            self._rewrite(row, columns)
        self._put_meta("mono_boot", self.boot_id)

    def _rows(self, where: str, args: tuple[object, ...] = (), limit: int = -1) -> list[StoredRow]:
        return [StoredRow(*r) for r in self._conn.execute(
            f"SELECT {_ROW} FROM batches {where} ORDER BY first_id LIMIT ?", (*args, limit))]

    def _decoded(self, where: str, args: tuple[object, ...] = ()) -> Iterator[tuple[StoredRow, chunks.Columns]]:
        for row in self._rows(where, args):
            try:
                yield row, row.columns()
            except chunks.ChunkError:
                continue  # reported when the forwarder reads it

    def _rewrite(self, row: StoredRow, columns: chunks.Columns) -> None:
        new = stored_row(row.first_id, row.count, row.kind, min(columns.stamps), max(columns.stamps),
                         int(columns.has_mono), row.acked, row.spool, chunks.encode_columns(columns))
        self._conn.execute(f"INSERT OR REPLACE INTO batches ({_ROW}) VALUES ({_ROW_VALUES})", new)

    def counter_state(self) -> CounterState:
        return {(d, p): (v, t) for d, p, v, t in json.loads(self._meta.get("counters", "[]"))}

    def meter_ids(self) -> dict[str, str]:
        return dict(json.loads(self._meta.get("meters", "{}")))

    def restamp(self, wall_minus_mono_ms: int, now_ms_: int) -> tuple[int, list[Event]]:
        """The clock is trusted now: give readings of this boot stamped before
        it their true time (monotonic + offset).

        Readings still waiting are corrected in place and flagged
        ``restamped``. Every reading stamped untrusted in this boot, sent or
        not, is also covered by a ``clock_corrected`` event (id runs and the
        milliseconds to add), because a reading may have been published just
        before and be acknowledged later: the platform applies a correction
        only to a reading that arrived flagged ``clock_unsynced``, so each
        reading is corrected exactly once whichever version reached it.
        """
        fixed = 0
        deltas: list[tuple[int, int]] = []
        try:
            with self.lock, self._transaction():
                for row, columns in self._decoded("WHERE mono = 1"):
                    first_id = row.first_id
                    for offset, (ts, mono) in enumerate(zip(columns.stamps, columns.monos, strict=True)):
                        if mono is None:
                            continue
                        deltas.append((first_id + offset, mono + wall_minus_mono_ms - ts))
                        columns.stamps[offset] = mono + wall_minus_mono_ms
                        columns.monos[offset] = None
                        columns.qualities[offset] = columns.qualities[offset].replace("clock_unsynced", "restamped")
                        if first_id + offset > self._acked_through:
                            fixed += 1
                    self._rewrite(row, columns)
                events: list[Event] = [
                    {"type": "clock_corrected", "first_id": first, "last_id": last, "add_ms": delta, "ts": now_ms_}
                    for first, last, delta in _delta_runs(deltas)]
                self._insert_events(events)
        except sqlite3.Error as exc:
            raise StorageError(f"buffer {self.path}: restamp failed: {_why(exc)}") from None
        return fixed, events

    def used_bytes(self) -> int:
        pages = self._conn.execute("PRAGMA page_count").fetchone()[0]
        free = self._conn.execute("PRAGMA freelist_count").fetchone()[0]
        return int(pages - free) * self._page_size

    def _enforce_limits(self, now_ms_: int) -> list[Event]:
        """Evict what the size cap and the age limit say must go; return the reports."""
        evicted: list[Event] = []
        acked = self._acked_through
        if self.max_age_s is not None:
            cutoff = now_ms_ - int(self.max_age_s * 1000)
            while True:
                rows = self._conn.execute(
                    "SELECT first_id, count FROM batches WHERE first_id + count - 1 > ? AND ts_max < ? "
                    "ORDER BY first_id LIMIT ?", (acked, cutoff, EVICT_ROWS)).fetchall()
                if not rows:
                    break
                evicted += self._evict(rows, "max_age", now_ms_, ("counter", "gauge"))
        if self.max_bytes is not None:
            target = int(self.max_bytes * 0.9)
            used = self.used_bytes()
            if used > self.max_bytes:
                with self._transaction():  # what was sent goes before anything is evicted
                    self._before_deleting_rows()
                    self._conn.execute("DELETE FROM batches WHERE first_id + count - 1 <= ?", (acked,))
                self._purged_at = time.monotonic()
                used = self.used_bytes()
            while used > self.max_bytes or (evicted and used > target):
                rows = self._conn.execute(
                    "SELECT first_id, count FROM batches WHERE kind = 1 AND first_id + count - 1 > ? "
                    "ORDER BY first_id LIMIT ?", (acked, self._rows_to_free(used - target))).fetchall()
                kinds: tuple[str, ...] = ("gauge",)
                if not rows:
                    rows = self._conn.execute(
                        "SELECT first_id, count FROM batches WHERE first_id + count - 1 > ? "
                        "ORDER BY first_id LIMIT ?", (acked, self._rows_to_free(used - target))).fetchall()
                    kinds = ("counter", "gauge")
                if not rows:
                    break
                evicted += self._evict(rows, "max_size", now_ms_, kinds)
                used = self.used_bytes()
        return evicted

    def _rows_to_free(self, excess: int) -> int:
        stats = self._conn.execute("SELECT count(*) FROM batches").fetchone()
        rows = max(1, int(stats[0] or 1))
        per_row = max(1, self.used_bytes() // rows)
        return max(1, min(EVICT_ROWS, excess // per_row + 1))

    def _evict(self, rows: list[tuple[int, int]], reason: str, now_ms_: int, kinds: tuple[str, ...]) -> list[Event]:
        """Delete these rows and record one report: every reading of these
        kinds with an id from first_id to last_id is gone (count of them)."""
        first = rows[0][0]
        last = rows[-1][0] + rows[-1][1] - 1
        count = sum(n for _, n in rows)
        report: Event = {"type": "evicted", "first_id": first, "last_id": last, "count": count,
                         "kinds": list(kinds), "reason": reason, "ts": now_ms_}
        with self._transaction():
            self._before_deleting_rows()
            self._conn.executemany("DELETE FROM batches WHERE first_id = ?", [(f,) for f, _ in rows])
            self._insert_events([report])
        self.evicted_total += count
        return [report]

    def drop_corrupt(self, first_id: int, last_id: int, now_ms_: int) -> Event:
        """A stored row failed its checksum: delete it and report its ids as lost."""
        report: Event = {"type": "corrupt", "first_id": first_id, "last_id": last_id,
                         "count": last_id - first_id + 1, "ts": now_ms_}
        try:
            with self.lock, self._transaction():
                self._before_deleting_rows()
                self._conn.execute("DELETE FROM batches WHERE first_id = ?", (first_id,))
                self._insert_events([report])
        except sqlite3.Error as exc:
            raise StorageError(f"buffer {self.path}: {_why(exc)}") from None
        return report

    def close(self, clean: bool = True) -> None:
        """Close; a clean stop is written down, so the next start knows nothing was lost."""
        try:
            with self.lock:
                with self._transaction():
                    self._before_deleting_rows()  # a watermark that waited for readings is kept too
                    if clean:
                        self._put_meta("running", "0")
                self._conn.close()
        except sqlite3.Error:
            try:
                self._conn.close()
            except sqlite3.Error:
                pass

    # -- reading (the forwarder, health figures) -------------------------------------------------
    def reader(self) -> BufferReader:
        return BufferReader(self)

    def stored_rows(self, after_id: int, limit: int) -> list[StoredRow]:
        """Stored rows holding ids above ``after_id``, in id order."""
        with self.lock:
            straddling = self._conn.execute(
                f"SELECT {_ROW} FROM batches WHERE first_id <= ? ORDER BY first_id DESC LIMIT 1",
                (after_id,)).fetchall()
            rows = self._rows("WHERE first_id > ?", (after_id,), limit)
        if straddling and StoredRow(*straddling[0]).last_id > after_id:
            rows.insert(0, StoredRow(*straddling[0]))
        return rows

    def events_after(self, after_seq: int, limit: int) -> list[StoredEvent]:
        with self.lock:
            rows = self._conn.execute(
                "SELECT seq, CAST(body AS BLOB), crc FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
                (after_seq, limit)).fetchall()
        good = []
        for seq, body, check in rows:
            if check == crc(body):
                good.append((seq, body.decode()))
            else:
                good.append((seq, json.dumps({"type": "corrupt_report", "seq": seq}, separators=(",", ":"))))
        return good

    def oldest(self, acked: int = 0) -> tuple[int, int] | None:
        """(id, ts) of the oldest reading still waiting, or None when none waits.

        ``acked``: a watermark the forwarder knows of and the buffer may not yet."""
        acked = max(acked, self._acked_through)
        with self.lock:
            row = self._conn.execute(
                "SELECT first_id, count, ts_min FROM batches WHERE first_id + count - 1 > ? ORDER BY first_id LIMIT 1",
                (acked,)).fetchone()
        if row is None:
            return None
        return max(int(row[0]), acked + 1), int(row[2])

    def depth(self, acked: int = 0) -> int:
        """Readings waiting (stored above the acknowledged watermark)."""
        acked = max(acked, self._acked_through)
        with self.lock:
            row = self._conn.execute(
                "SELECT sum(min(count, first_id + count - 1 - ?)) FROM batches WHERE first_id + count - 1 > ?",
                (acked, acked)).fetchone()
        return int(row[0] or 0)


class BufferReader:
    """The forwarder's view: readings above a cursor, decoded, checksums verified."""

    def __init__(self, buffer: Buffer) -> None:
        self._buffer = buffer
        self._cached: tuple[int, int, chunks.Columns] | None = None  # first_id, crc, decoded
        self.corrupt: list[IdRange] = []  # rows that failed their checksum, for the writer to report

    def batch_after(self, after_id: int, limit: int) -> list[Row]:
        """Up to ``limit`` readings with ids above ``after_id``, in id order."""
        out: list[Row] = []
        cursor = after_id
        while len(out) < limit:
            rows = self._buffer.stored_rows(cursor, 8)
            if not rows:
                break
            # After the rows: a commit publishes its series before its rows can be read.
            series = self._buffer.series()
            for row in rows:
                cursor = row.last_id
                columns = self._decode(row, series)
                if columns is None:
                    continue
                first_id = row.first_id
                start = max(0, after_id + 1 - first_id)
                stop = min(row.count, start + limit - len(out))
                out += zip(range(first_id + start, first_id + stop), columns.sids[start:stop],
                           columns.stamps[start:stop], columns.values[start:stop], columns.qualities[start:stop],
                           strict=True)
                if len(out) >= limit:
                    break
        return out

    def _decode(self, row: StoredRow, series: dict[int, Series]) -> chunks.Columns | None:
        cached = self._cached
        if cached is not None and cached[0] == row.first_id and cached[1] == row.crc:
            return cached[2]
        try:
            columns = row.columns()
            if any(sid not in series for sid in set(columns.sids)):
                raise chunks.ChunkError("readings of a series the buffer does not know (or whose record is damaged)")
        except chunks.ChunkError:
            self.corrupt.append((row.first_id, row.last_id))
            return None
        self._cached = (row.first_id, row.crc, columns)
        return columns

    def take_corrupt(self) -> list[IdRange]:
        found, self.corrupt = self.corrupt, []
        return found

    def series(self) -> dict[int, Series]:
        return self._buffer.series()

    def series_attrs(self) -> dict[int, str]:
        return self._buffer.series_attrs()

    def events_after(self, after_seq: int, limit: int) -> list[StoredEvent]:
        return self._buffer.events_after(after_seq, limit)

    def oldest(self, acked: int = 0) -> tuple[int, int] | None:
        return self._buffer.oldest(acked)

    def depth(self, acked: int = 0) -> int:
        return self._buffer.depth(acked)

    def close(self) -> None:
        self._cached = None



def boot_id() -> str:
    """The kernel's id of this boot: monotonic times compare only within one."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def _locked(exc: BaseException) -> bool:
    return "locked" in str(exc) or "busy" in str(exc)


def _why(exc: BaseException) -> str:
    if _locked(exc):
        return f"{exc} (another process holds the buffer: is a second agent running?)"
    return str(exc)


def _sync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _move_aside(path: Path) -> str:
    """Keep a corrupt buffer for forensics and salvage, out of the agent's way."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = f"{path}.corrupt-{stamp}"
    for suffix in ("", "-wal", "-shm"):
        source = Path(f"{path}{suffix}")
        if source.exists():
            os.replace(source, f"{target}{suffix}")
    _sync_directory(path.parent)
    return target


def file_size(path: Path) -> int:
    """Bytes on disk of the buffer, its WAL and shared-memory files."""
    total = 0
    for suffix in ("", "-wal", "-shm"):
        try:
            total += os.stat(f"{path}{suffix}").st_size
        except OSError:
            pass
    return total


def pack(buffer: Buffer, readings: Sequence[Reading]) -> list[NewRow]:
    """Readings -> rows ready to commit (tests, the bench and the writer)."""
    rows = {0: NewRow(0), 1: NewRow(1)}
    by_kind: dict[int, list[Reading]] = {0: [], 1: []}
    for reading in readings:
        by_kind[KIND_CODE.get(reading.kind, 1)].append(reading)
    for kind, members in by_kind.items():
        for low in range(0, len(members), chunks.MAX_READINGS):
            part = members[low:low + chunks.MAX_READINGS]
            sids = [buffer.series_id(r.device, r.point, r.unit, r.kind, r.meter) for r in part]
            stamps = [r.ts for r in part]
            rows[kind].add(chunks.encode_readings(sids, part), len(part), min(stamps), max(stamps),
                           any(r.mono is not None for r in part))
    return [row for row in rows.values() if row.count]


CommitListener = Callable[[IdRange | None], None]


# What a bus worker's put() hands the writer thread: readings, counter state,
# meter ids, events, resolutions.
_Put = tuple[list[Reading], "CounterState | None", "dict[str, str] | None", "list[Event] | None",
             "dict[tuple[str, str], Mapping[str, float | str]] | None"]


class BufferWriter(threading.Thread):
    """Owns every write to the buffer; one synced commit per flush.

    Producers call :meth:`put` (bus workers, with a poll's readings),
    :meth:`ack_through` (the forwarder, with the id below which everything
    is acknowledged) and :meth:`reported` (the forwarder, with reports the
    platform acknowledged). Readings wait in memory, packed, until their
    flush is due: ``flush_interval`` after the first of them arrived, or
    sooner once a row's worth has gathered. When the disk refuses a write,
    readings are kept in memory up to ``max_pending`` and the commit is
    retried; the state change is logged once, and once again when writing
    resumes. A reading gets exactly one id whatever fails after its commit.
    """

    def __init__(self, buffer: Buffer, on_commit: CommitListener, flush_interval: float = 1.0,
                 queue_size: int = 10_000, max_pending: int = 200_000, retry_s: float = 1.0,
                 flush_readings: int = ROW_READINGS, spool: Spool | None = None) -> None:
        super().__init__(name="buffer-writer", daemon=True)
        self.buffer = buffer
        self._spool = spool
        self._seq = buffer.spooled_through  # the last spool record numbered
        self._spooled_sids: set[int] = set()
        self._on_commit = on_commit
        self._flush_interval = flush_interval
        self._flush_readings = flush_readings
        self._queue: queue.Queue[tuple[str, object]] = queue.Queue(maxsize=queue_size)
        self._max_pending = max_pending
        self._retry_s = retry_s
        self._log = logs.get("buffer")
        self.committed = 0
        self.dropped = 0
        self.failing_since: float | None = None
        self.held_in_memory = 0
        self.last_progress = time.monotonic()
        self._offset: int | None = None  # wall - monotonic once the clock is trusted
        self._urgent = threading.Event()
        # pending, owned by the writer thread
        self._rows: dict[int, list[NewRow]] = {0: [], 1: []}
        self._pending_count = 0
        self._acked_through: int | None = None
        self._reported: list[int] = []
        self._events: list[Event] = []
        self._counters: CounterState = {}
        self._counters_due = 0.0
        self._meters: dict[str, str] = {}
        self._restamp: int | None = None
        self._corrupt: list[IdRange] = []
        self._dropped_since: list[int] = []  # count, first ts, last ts of readings dropped meanwhile
        self.recovered = 0
        self._written_while_failing = 0
        if spool is not None:
            self._recover(spool)

    # -- called from other threads ---------------------------------------------------------------
    def put(self, readings: list[Reading], counters: CounterState | None = None,
            meters: dict[str, str] | None = None, events: list[Event] | None = None,
            resolutions: dict[tuple[str, str], Mapping[str, float | str]] | None = None) -> None:
        """A poll's readings, with the state and reports it produced, and the
        resolution of each (device, point) among them whose series the platform
        is not told of yet (stored as the series' attrs)."""
        put: _Put = (readings, counters, meters, events, resolutions)
        self._queue.put(("r", put))

    def restamp(self, wall_minus_mono_ms: int) -> None:
        """The wall clock is trusted from now on (see Buffer.restamp)."""
        self._queue.put(("t", wall_minus_mono_ms))
        self._urgent.set()

    def ack_through(self, watermark: int) -> None:
        """Every id up to ``watermark`` is acknowledged (or was evicted)."""
        self._queue.put(("a", watermark))

    def reported(self, seqs: list[int]) -> None:
        self._queue.put(("e", seqs))

    def corrupt(self, id_range: IdRange) -> None:
        self._queue.put(("c", id_range))
        self._urgent.set()

    def stop(self) -> None:
        self._queue.put(("stop", None))
        self._urgent.set()

    # -- the thread ------------------------------------------------------------------------------
    def run(self) -> None:
        # Readings a crashed run left in the spool are committed first thing.
        deadline: float | None = time.monotonic() if self._pending_count else None  # when the next commit is due
        stopping = False
        while not stopping:
            self.last_progress = time.monotonic()
            wait = 0.5 if deadline is None else min(1.0, max(0.0, deadline - time.monotonic()))
            try:
                kind, payload = self._queue.get(timeout=wait)
                while True:
                    due = self._take(kind, payload)
                    if due is None:
                        stopping, due = True, time.monotonic()
                    deadline = due if deadline is None else min(deadline, due)
                    kind, payload = self._queue.get_nowait()
            except queue.Empty:
                pass
            if self._pending_count >= self._flush_readings:
                deadline = time.monotonic()
            if deadline is None or (time.monotonic() < deadline and not stopping):
                continue
            if self._flush(stopping):
                deadline = None
            else:
                deadline = time.monotonic() + self._retry_s
                if stopping and self._pending_count:
                    self._log.error("buffer.unsaved_at_stop", readings=self._pending_count)
            self.held_in_memory = self._pending_count

    def _take(self, kind: str, payload: object) -> float | None:
        """Take one message; return when the next commit is due for it (None: stop)."""
        now = time.monotonic()
        if kind == "r":
            readings, counters, meters, events, resolutions = cast("_Put", payload)
            if readings:
                self._pack(self._fix_stamps(readings), resolutions)
            if (events or meters) and self._spool is not None:
                self._append(spool_module.EXTRAS, json.dumps({"events": events or [], "meters": meters or {}}).encode())
            if counters:
                self._counters.update(counters)
            if meters:
                self._meters.update(meters)
            if events:
                self._events.extend(events)
            return now + self._flush_interval if (readings or events or meters) else now + COUNTER_PERSIST_S
        if kind == "t":
            self._restamp = int(payload)  # type: ignore[call-overload]
            return now
        if kind == "a":
            self._acked_through = max(self._acked_through or 0, int(payload))  # type: ignore[call-overload]
            # Rides with the next commit of readings; costs a commit of its own only when none come.
            return now + max(ACK_HOLD_S, self._flush_interval)
        if kind == "e":
            self._reported.extend(payload)  # type: ignore[arg-type]
            return now + ACK_DELAY_S
        if kind == "c":
            self._corrupt.append(payload)  # type: ignore[arg-type]
            return now
        return None

    def _pack(self, readings: list[Reading],
              resolutions: dict[tuple[str, str], Mapping[str, float | str]] | None = None) -> None:
        buffer = self.buffer
        for part_kind, members in _by_kind(readings):
            sids = [buffer.series_id(r.device, r.point, r.unit, r.kind, r.meter) for r in members]
            if resolutions:
                for reading, sid in zip(members, sids, strict=True):
                    if (resolution := resolutions.get((reading.device, reading.point))) is not None:
                        buffer.set_attrs(sid, json.dumps({"resolution": resolution}, sort_keys=True))
            stamps = [r.ts for r in members]
            mono = any(r.mono is not None for r in members)
            chunk = chunks.encode_readings(sids, members)
            if self._spool is not None:
                self._spool_series(sids)
                self._append(spool_module.READINGS, spool_module.readings_record(
                    part_kind, len(members), min(stamps), max(stamps), mono, chunk))
            self._add_chunk(part_kind, chunk, len(members), min(stamps), max(stamps), mono)

    def _add_chunk(self, kind: int, chunk: bytes, count: int, ts_min: int, ts_max: int, mono: bool) -> None:
        rows = self._rows[kind]
        if not rows or rows[-1].count >= ROW_READINGS:
            rows.append(NewRow(kind))
        rows[-1].add(chunk, count, ts_min, ts_max, mono)
        self._pending_count += count
        if self._pending_count > self._max_pending:
            self._drop_oldest()

    # -- the spool (agent/spool.py) --------------------------------------------------------------
    def _append(self, kind: int, payload: bytes) -> None:
        assert self._spool is not None
        self._seq += 1
        self._spool.append(self._seq, kind, payload)

    def _spool_series(self, sids: list[int]) -> None:
        """A series not yet in the file goes into the spool before readings that use it."""
        committed = self.buffer.series()
        for sid in set(sids) - self._spooled_sids:
            if sid in committed:
                continue
            key = self.buffer.pending_series(sid)
            if key is not None:
                self._append(spool_module.SERIES, json.dumps([sid, *key]).encode())
                self._spooled_sids.add(sid)

    def _recover(self, spool: Spool) -> None:
        """Readings a crashed run spooled and did not commit are taken up first."""
        buffer = self.buffer
        renumber: dict[int, int] = {}
        records = [r for r in spool.leftovers() if r.seq > buffer.spooled_through]
        for record in records:
            if record.type == spool_module.SERIES:
                old, device, point, unit, kind, meter = json.loads(record.payload)
                renumber[old] = buffer.series_id(device, point, unit, kind, meter)
            elif record.type == spool_module.READINGS:
                kind, count, ts_min, ts_max, mono, chunk = spool_module.parse_readings(record.payload)
                if renumber:
                    try:
                        columns = chunks.decode(chunk)
                    except chunks.ChunkError:
                        continue
                    columns.sids = [renumber.get(sid, sid) for sid in columns.sids]
                    chunk = chunks.encode_columns(columns)
                self._add_chunk(kind, chunk, count, ts_min, ts_max, mono)
                self.recovered += count
            elif record.type == spool_module.EXTRAS:
                extras = json.loads(record.payload)
                self._events.extend(extras.get("events", ()))
                self._meters.update(extras.get("meters", {}))
            self._seq = max(self._seq, record.seq)
        if records:
            self._log.warning("spool.recovered", readings=self.recovered, records=len(records),
                              meaning="a run before this one stopped without committing these; they are kept")
        spool.start(self._seq + 1)
        self._seq += 1
        self._spooled_sids = set()
        if self._pending_count or self._events or self._meters:
            # Into this run's spool too, until they are committed.
            for kind_rows in self._rows.values():
                for row in kind_rows:
                    for chunk in row.parts:
                        self._spool_series(list(set(chunks.decode(chunk).sids)))
                        self._append(spool_module.READINGS, spool_module.readings_record(
                            row.kind, len(chunks.decode(chunk)), row.ts_min, row.ts_max, bool(row.mono), chunk))
            if self._events or self._meters:
                self._append(spool_module.EXTRAS, json.dumps({"events": self._events, "meters": self._meters}).encode())

    def _drop_oldest(self) -> None:
        """Memory is bounded while the disk refuses: the oldest waiting readings go, and are reported."""
        while self._pending_count > self._max_pending:
            rows = self._rows[1] or self._rows[0]
            row = rows.pop(0)
            self._pending_count -= row.count
            self.dropped += row.count
            if self._dropped_since:
                self._dropped_since = [self._dropped_since[0] + row.count, min(self._dropped_since[1], row.ts_min),
                                       max(self._dropped_since[2], row.ts_max)]
            else:
                self._dropped_since = [row.count, row.ts_min, row.ts_max]
            self._log.error("buffer.memory_full_dropping", dropped=row.count, dropped_total=self.dropped)

    def _fix_stamps(self, readings: list[Reading]) -> list[Reading]:
        """Readings stamped just before the clock became trusted get the
        corrected time at once (they arrive after the restamp)."""
        if self._offset is None or all(r.mono is None for r in readings):
            return readings
        offset = self._offset
        return [r if r.mono is None else r._replace(ts=r.mono + offset, mono=None,
                                                     quality=r.quality.replace("clock_unsynced", "restamped"))
                for r in readings]

    def _flush(self, stopping: bool) -> bool:
        """Commit what waits; then the follow-up work, whose failure never re-commits."""
        now = now_ms()
        buffer = self.buffer
        events = list(self._events)
        if self._dropped_since:
            count, first_ts, last_ts = self._dropped_since
            events.append({"type": "dropped", "count": count, "first_ts": first_ts, "last_ts": last_ts,
                           "reason": "disk_refused_writes", "ts": now})
        counters = self._counters if (stopping or time.monotonic() >= self._counters_due) else {}
        rows = self._rows[0] + self._rows[1]
        try:
            ids = buffer.commit(rows, self._acked_through, self._reported, events, counters, self._meters,
                                spooled_through=self._seq)
        except StorageError as exc:
            self._failing(exc)
            return False
        # Committed: these readings have their ids, whatever happens next.
        if self._spool is not None:
            self._spool.reset()
            self._spooled_sids = set()
        written = self._pending_count
        self.committed += written
        self._rows = {0: [], 1: []}
        self._pending_count = 0
        self._reported, self._events, self._meters, self._dropped_since = [], [], {}, []
        if counters:
            self._counters = {}
            self._counters_due = time.monotonic() + COUNTER_PERSIST_S
        self._written_while_failing += written
        self._on_commit(ids)
        if not self._follow_up(now):
            return False
        if self.failing_since is not None:  # logged once the whole flush went through
            self._log.info("buffer.write_resumed", after_s=round(time.monotonic() - self.failing_since, 1),
                           written=self._written_while_failing)
            self.failing_since = None
        self._written_while_failing = 0
        return True

    def _failing(self, exc: StorageError) -> None:
        """The disk refused: one event when that starts, none per retry."""
        if self.failing_since is None:
            self.failing_since = time.monotonic()
            self._log.error("buffer.write_failed", error=str(exc), held_in_memory=self._pending_count)

    def _follow_up(self, now: int) -> bool:
        """Restamp, reports of corrupt rows, sweeping and eviction: each may fail on its own and is retried."""
        buffer = self.buffer
        try:
            if self._restamp is not None:
                fixed, corrections = buffer.restamp(self._restamp, now)
                self._offset = self._restamp
                self._restamp = None
                self._log.info("clock.restamped", in_buffer=fixed, correction_runs=len(corrections))
            while self._corrupt:
                low, high = self._corrupt[0]
                buffer.drop_corrupt(low, high, now)
                self._corrupt.pop(0)
                self._log.error("buffer.corrupt_row", first_id=low, last_id=high)
            evicted = buffer.maintain(now)
        except StorageError as exc:
            self._failing(exc)
            return False
        if evicted:
            self._log.warning("buffer.evicting", readings=sum(int(e["count"]) for e in evicted),  # type: ignore[call-overload]
                              runs=len(evicted), reason=evicted[0]["reason"],
                              evicted_total=buffer.evicted_total,
                              first_id=evicted[0]["first_id"], last_id=evicted[-1]["last_id"])
            self._on_commit(None)
        return True


def _by_kind(readings: list[Reading]) -> list[tuple[int, list[Reading]]]:
    """Split a hand-over by kind (rows hold one kind), in chunks a chunk can hold."""
    first = readings[0].kind
    if all(r.kind == first for r in readings) and len(readings) <= chunks.MAX_READINGS:
        return [(KIND_CODE.get(first, 1), readings)]
    groups: dict[int, list[Reading]] = {}
    for reading in readings:
        groups.setdefault(KIND_CODE.get(reading.kind, 1), []).append(reading)
    return [(kind, members[low:low + chunks.MAX_READINGS]) for kind, members in sorted(groups.items())
            for low in range(0, len(members), chunks.MAX_READINGS)]


@dataclass(frozen=True)
class Inspection:
    """What a stopped agent's buffer holds (tests, and a technician's look)."""

    stream: str
    next_id: int
    acked_through: int
    waiting: list[IdRange]  # stored id ranges above the acknowledged watermark
    events: list[Event]
    unclean: bool

    def waiting_ids(self) -> set[int]:
        return {i for low, high in self.waiting for i in range(low, high + 1)}


def inspect(path: Path) -> Inspection:
    """Read a buffer no agent holds, without changing a byte of it.

    SQLite needs to write a WAL index to read a WAL file, and the last
    connection to close checkpoints: so the file and its WAL are read from a
    copy. Raises StorageError while an agent holds the buffer."""
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory(prefix="retrofit-inspect-") as scratch:
        copy = Path(scratch) / "buffer.db"
        try:
            shutil.copyfile(path, copy)
            if Path(f"{path}-wal").exists():
                shutil.copyfile(f"{path}-wal", f"{copy}-wal")
        except OSError as exc:
            raise StorageError(f"cannot read buffer {path}: {exc}") from None
        return _inspect(copy)


def _inspect(path: Path) -> Inspection:
    try:
        conn = sqlite3.connect(path, timeout=0.5)
    except sqlite3.Error as exc:
        raise StorageError(f"cannot read buffer {path}: {_why(exc)}") from None
    try:
        meta = {k: v for k, v, _ in conn.execute("SELECT key, value, crc FROM meta")}
        last = conn.execute("SELECT first_id + count, acked FROM batches ORDER BY first_id DESC LIMIT 1").fetchone()
        next_id = max(int(meta.get("next_id", "1")), int(last[0]) if last else 0)
        acked = max(int(meta.get("acked_through", "0")), int(last[1]) if last else 0)
        waiting = [(max(f, acked + 1), f + n - 1) for f, n in conn.execute(
            "SELECT first_id, count FROM batches WHERE first_id + count - 1 > ? ORDER BY first_id", (acked,))]
        events = [json.loads(b) for (b,) in conn.execute("SELECT body FROM events ORDER BY seq")]
    except sqlite3.Error as exc:
        raise StorageError(f"cannot read buffer {path}: {_why(exc)}") from None
    finally:
        conn.close()
    return Inspection(stream=meta.get("stream", ""), next_id=next_id, acked_through=acked,
                      waiting=waiting, events=events, unclean=meta.get("running") == "1")
