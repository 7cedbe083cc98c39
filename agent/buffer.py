"""The durable buffer: every reading lives in SQLite until the broker acked it.

One thread (the :class:`BufferWriter`) owns the write connection; readings
arrive from the bus workers through a bounded queue and are committed one
transaction per flush interval, with deletions of acknowledged ranges folded
into the same transaction. The uplink reads through its own connection (WAL
lets a reader and the writer work at once).

Ids: per stream, strictly increasing, contiguous, never reused. They are
assigned from a counter stored in the file (``meta.next_id``) in the same
transaction as the rows, so neither deleting every row nor a restart can
bring an old id back (SQLite's rowid alone would reuse the largest id once
it is deleted). The stream id is a UUID made when the file is made.

When the buffer outgrows ``max_size_mb`` (a long outage), the oldest gauge
readings go first, then the oldest counters; each eviction is recorded as a
report in the ``events`` table and kept until the broker acknowledged it.

Acknowledged readings are not deleted at once: the highest id below which
everything is acknowledged (``meta.acked_through``) is written with the next
transaction, on the page that already holds ``next_id``, and readers skip
what lies below it. The rows themselves go in one sweep about once a minute,
so an SD card sees one small write per flush instead of a delete transaction
after every PUBACK.
"""

from __future__ import annotations

import json
import os
import queue
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from agent import logs
from drivers.core.errors import StorageError
from drivers.core.readings import Reading

SCHEMA_VERSION = "1"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS series (
    id INTEGER PRIMARY KEY,
    device TEXT NOT NULL,
    point TEXT NOT NULL,
    unit TEXT NOT NULL,
    kind TEXT NOT NULL,
    meter TEXT NOT NULL DEFAULT '',
    UNIQUE (device, point, unit, kind, meter)
);
CREATE TABLE IF NOT EXISTS readings (
    id INTEGER PRIMARY KEY,
    series INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    value,
    quality TEXT NOT NULL,
    mono INTEGER  -- monotonic ms, kept only while the wall clock is not trusted
);
-- Reports for the platform (evictions, meter swaps, clock corrections), kept
-- until the broker acknowledged them.
CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY AUTOINCREMENT, body TEXT NOT NULL);
-- The last accepted value of every counter, so integrity checks survive restarts.
CREATE TABLE IF NOT EXISTS counters (
    device TEXT NOT NULL, point TEXT NOT NULL, value NOT NULL, ts INTEGER NOT NULL,
    PRIMARY KEY (device, point)) WITHOUT ROWID;
-- The identification number each device last reported (meter swaps).
CREATE TABLE IF NOT EXISTS meters (device TEXT PRIMARY KEY, meter TEXT NOT NULL) WITHOUT ROWID;
-- Sent readings that were stamped before the clock was trusted: their
-- monotonic time, so a later correction can be reported to the platform.
CREATE TABLE IF NOT EXISTS unsynced_sent (id INTEGER PRIMARY KEY, ts INTEGER NOT NULL, mono INTEGER NOT NULL, boot TEXT NOT NULL);
"""

Row = tuple[int, int, int, float | int | str | None, str]  # id, series, ts, value, quality
Series = tuple[str, str, str, str, str]  # device, point, unit, kind, meter
IdRange = tuple[int, int]  # first id, last id, inclusive
Event = dict[str, object]
StoredEvent = tuple[int, str]  # seq, JSON body
CounterState = dict[tuple[str, str], tuple[float | int, int]]  # (device, point) -> (value, ts)

EVICT_CHUNK = 20_000
MAX_PER_TRANSACTION = 20_000
# Reports the broker acknowledged are forgotten promptly: they are rare, and
# a crash before would send them twice.
ACK_DELAY_S = 0.1
# An acknowledged id range waits for the next transaction of readings (at most
# this long) instead of costing a transaction of its own. A crash in between
# sends those readings once more, with the same ids: the platform drops the
# duplicates. At one poll per 10 s this halves the writes to the SD card.
ACK_HOLD_S = 30.0
COUNTER_PERSIST_S = 60.0
# Acknowledged rows are swept out once this many have gathered, or this often.
PURGE_ROWS = 50_000
PURGE_S = 60.0
# Page cache per connection: the writer appends and the reader streams, so a
# small cache does; SQLite's default (2 MB each) would be most of it idle RSS.
# A backlog drain fills both caches (start-up's quick_check fills one): 512
# KiB each grew RSS by 2.6 MB during a 1,000,000-reading drain, 128 by 1.0 MB,
# at the same drain rate.
CACHE_KIB = 128
# Every commit appends each page it changed to the WAL, and the kernel writes
# out every 4 KiB block those frames touch. A poll cycle changes a handful of
# pages (the last leaf, the tree above it, the meta row), so small pages write
# less per commit: measured with ./scripts/bench, 1 KiB pages cut the bytes
# written per reading from 76 to 47 at 300/s and from 341 to 216 at 60 points
# every 10 s; 512 and 2048 both did worse. Files made with another size keep it.
PAGE_BYTES = 1024
# Readers see only what lies above the acknowledged watermark.
_PENDING = "id > coalesce((SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'acked_through'), 0)"


def _connect(path: Path, synchronous: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10)
    conn.execute(f"PRAGMA page_size={PAGE_BYTES}")  # takes effect only on a new, empty file
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={'FULL' if synchronous == 'full' else 'NORMAL'}")
    conn.execute("PRAGMA busy_timeout=10000")
    conn.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
    return conn


def _delta_runs(rows: Iterable[tuple[int, int]]) -> list[tuple[int, int, int]]:
    """(id, delta) in id order -> runs of consecutive ids sharing one delta."""
    runs: list[tuple[int, int, int]] = []
    for rid, delta in rows:
        if runs and runs[-1][1] == rid - 1 and runs[-1][2] == delta:
            runs[-1] = (runs[-1][0], rid, delta)
        else:
            runs.append((rid, rid, delta))
    return runs


def _runs(ids: Sequence[int]) -> list[IdRange]:
    """Sorted ids -> runs of consecutive ids."""
    runs: list[IdRange] = []
    for rid in ids:
        if runs and runs[-1][1] == rid - 1:
            runs[-1] = (runs[-1][0], rid)
        else:
            runs.append((rid, rid))
    return runs


@dataclass(frozen=True)
class BufferInfo:
    stream: str
    next_id: int
    created: bool
    moved_aside: str | None = None


class Buffer:
    """The write side. Only the writer thread calls its mutating methods."""

    def __init__(self, path: Path, synchronous: str = "normal", max_bytes: int | None = None,
                 max_age_s: float | None = None) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        moved_aside = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                conn, existed = self._open(path, synchronous)
            except sqlite3.DatabaseError as exc:
                if isinstance(exc, sqlite3.OperationalError) and "unable to open" in str(exc):
                    raise
                moved_aside = _move_aside(path)
                logs.get("buffer").error("buffer.corrupt_moved_aside", path=str(path),
                                         moved_to=moved_aside, error=str(exc))
                conn, existed = self._open(path, synchronous)
            self._conn = conn
            meta = dict(conn.execute("SELECT key, value FROM meta"))
            if "stream" not in meta:
                conn.execute("BEGIN IMMEDIATE")
                conn.executemany(
                    "INSERT INTO meta (key, value) VALUES (?, ?)",
                    [("stream", str(uuid.uuid4())), ("next_id", "1"), ("schema", SCHEMA_VERSION)],
                )
                conn.execute("COMMIT")
                meta = dict(conn.execute("SELECT key, value FROM meta"))
            if "acked_through" not in meta:  # made by an agent that deleted at once
                conn.execute("INSERT INTO meta (key, value) VALUES ('acked_through', '0')")
                meta["acked_through"] = "0"
            self._page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
        except (sqlite3.Error, OSError) as exc:
            raise StorageError(f"cannot open buffer {path}: {exc}") from None
        self.info = BufferInfo(stream=meta["stream"], next_id=int(meta["next_id"]),
                               created=not existed, moved_aside=moved_aside)
        self._next_id = self.info.next_id
        self._acked_through = int(meta["acked_through"])
        self._purged_through = 0
        self._purged_at = time.monotonic()
        self._series = self._load_series()
        self.evicted_total = 0
        self.boot_id = boot_id()
        self._unsynced_pending = self._forget_other_boots(meta.get("mono_boot"))
        try:
            with self._transaction():
                self._purge()
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open buffer {path}: {exc}") from None

    @staticmethod
    def _open(path: Path, synchronous: str) -> tuple[sqlite3.Connection, bool]:
        existed = path.exists() and path.stat().st_size > 0
        conn = _connect(path, synchronous)
        try:
            check = conn.execute("PRAGMA quick_check(1)").fetchone()
            if check is None or check[0] != "ok":
                raise sqlite3.DatabaseError(f"integrity check: {check[0] if check else 'no answer'}")
            conn.executescript(_SCHEMA)
        except sqlite3.DatabaseError:
            conn.close()
            raise
        return conn, existed

    def _load_series(self) -> dict[tuple[str, str, str, str, str], int]:
        rows = self._conn.execute("SELECT id, device, point, unit, kind, meter FROM series")
        return {(d, p, u, k, m): i for i, d, p, u, k, m in rows}

    @property
    def stream(self) -> str:
        return self.info.stream

    @property
    def next_id(self) -> int:
        return self._next_id

    def _series_id(self, reading: Reading) -> int:
        key = (reading.device, reading.point, reading.unit, reading.kind, reading.meter)
        sid = self._series.get(key)
        if sid is None:
            cur = self._conn.execute(
                "INSERT INTO series (device, point, unit, kind, meter) VALUES (?, ?, ?, ?, ?)", key)
            sid = int(cur.lastrowid or 0)
            self._series[key] = sid
        return sid

    def commit(self, readings: Sequence[Reading], acked: Iterable[IdRange] = (),
               reported: Iterable[int] = (), events: Sequence[Event] = (),
               counters: CounterState | None = None, meters: dict[str, str] | None = None) -> IdRange | None:
        """One transaction: store readings and events, forget what the broker
        acknowledged, remember counter and meter state.

        Returns the id range given to the readings. On failure nothing is
        changed (ids included) and StorageError is raised.
        """
        first = self._next_id
        conn = self._conn
        purged, purged_at = self._purged_through, self._purged_at
        try:
            with self._transaction():
                watermark = self._advance_watermark(acked)
                conn.executemany("DELETE FROM events WHERE seq = ?", [(seq,) for seq in reported])
                conn.executemany("INSERT INTO events (body) VALUES (?)",
                                 [(json.dumps(e, separators=(",", ":")),) for e in events])
                if readings:
                    series = self._series_id
                    conn.executemany(
                        "INSERT INTO readings (id, series, ts, value, quality, mono) VALUES (?, ?, ?, ?, ?, ?)",
                        [(first + n, series(r), r.ts, r.value, r.quality, r.mono) for n, r in enumerate(readings)],
                    )
                    conn.execute("UPDATE meta SET value = ? WHERE key = 'next_id'", (str(first + len(readings)),))
                    if any(r.mono is not None for r in readings):
                        self._unsynced_pending = True
                if counters:
                    conn.executemany("INSERT OR REPLACE INTO counters (device, point, value, ts) VALUES (?, ?, ?, ?)",
                                     [(d, p, v, t) for (d, p), (v, t) in counters.items()])
                if meters:
                    conn.executemany("INSERT OR REPLACE INTO meters (device, meter) VALUES (?, ?)", meters.items())
                if watermark - purged >= PURGE_ROWS or (
                        watermark > purged and time.monotonic() - purged_at >= PURGE_S):
                    self._purge(watermark)
        except sqlite3.Error as exc:
            self._series = self._load_series()  # rows of the failed transaction are gone
            self._purged_through, self._purged_at = purged, purged_at
            raise StorageError(f"buffer {self.path}: {exc}") from None
        self._acked_through = watermark
        if not readings:
            return None
        self._next_id = first + len(readings)
        return first, self._next_id - 1

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

    def _advance_watermark(self, acked: Iterable[IdRange]) -> int:
        """Move ``acked_through`` over the acknowledged ranges that continue it.

        A range starting above the watermark continues it when no stored
        reading lies in between (evicted ids leave gaps); one acknowledged out
        of order is deleted at once instead. Returns the new watermark.
        """
        watermark = self._acked_through
        for low, high in sorted(acked):
            if high <= watermark:
                continue
            if low <= watermark + 1 or self._conn.execute(
                    "SELECT 1 FROM readings WHERE id > ? AND id < ? LIMIT 1", (watermark, low)).fetchone() is None:
                watermark = high
            else:
                self._delete(low, high)
        if watermark != self._acked_through:
            self._conn.execute("UPDATE meta SET value = ? WHERE key = 'acked_through'", (str(watermark),))
        return watermark

    def _delete(self, low: int, high: int) -> None:
        """Delete sent readings; remember the untrusted stamps among them."""
        if self._unsynced_pending:
            self._conn.execute(
                "INSERT OR IGNORE INTO unsynced_sent (id, ts, mono, boot) SELECT r.id, r.ts, r.mono, ? "
                "FROM readings r WHERE r.id BETWEEN ? AND ? AND r.mono IS NOT NULL",
                (self.boot_id, low, high))
        self._conn.execute("DELETE FROM readings WHERE id BETWEEN ? AND ?", (low, high))

    def _purge(self, watermark: int | None = None) -> None:
        """Sweep out the acknowledged readings below the watermark (inside a transaction)."""
        watermark = self._acked_through if watermark is None else watermark
        self._delete(self._purged_through + 1, watermark)
        self._purged_through = watermark
        self._purged_at = time.monotonic()

    def _forget_other_boots(self, stored_boot: str | None) -> bool:
        """Monotonic times of an earlier boot cannot be corrected any more:
        those readings keep their clock_unsynced flag for good."""
        conn = self._conn
        pending = conn.execute("SELECT 1 FROM readings WHERE mono IS NOT NULL LIMIT 1").fetchone() is not None
        if stored_boot == self.boot_id:
            return pending
        with self._transaction():
            conn.execute("UPDATE readings SET mono = NULL WHERE mono IS NOT NULL")
            conn.execute("DELETE FROM unsynced_sent")
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('mono_boot', ?)", (self.boot_id,))
        return False

    def counter_state(self) -> CounterState:
        rows = self._conn.execute("SELECT device, point, value, ts FROM counters")
        return {(d, p): (v, t) for d, p, v, t in rows}

    def meter_ids(self) -> dict[str, str]:
        return dict(self._conn.execute("SELECT device, meter FROM meters").fetchall())

    def restamp(self, boot_id: str, wall_minus_mono_ms: int, now_ms: int) -> tuple[int, list[Event]]:
        """The clock is trusted now: give readings of this boot stamped before
        it their true time (monotonic + offset).

        Readings still here are corrected in place and flagged ``restamped``.
        Every reading stamped untrusted in this boot, sent or not, is also
        covered by a ``clock_corrected`` event (id runs and the milliseconds
        to add), because a reading may have been published just before and
        be acknowledged later: the platform applies a correction only to a
        reading that arrived flagged ``clock_unsynced``, so each reading is
        corrected exactly once whichever version reached it.
        """
        conn = self._conn
        try:
            with self._transaction():
                rows = conn.execute(
                    "SELECT id, ts, mono FROM unsynced_sent WHERE boot = ? "
                    "UNION ALL SELECT id, ts, mono FROM readings WHERE mono IS NOT NULL ORDER BY 1",
                    (boot_id,)).fetchall()
                cur = conn.execute(
                    "UPDATE readings SET ts = mono + ?, quality = replace(quality, 'clock_unsynced', 'restamped'), "
                    "mono = NULL WHERE mono IS NOT NULL", (wall_minus_mono_ms,))
                fixed = cur.rowcount
                events: list[Event] = [
                    {"type": "clock_corrected", "first_id": first, "last_id": last, "add_ms": delta, "ts": now_ms}
                    for first, last, delta in _delta_runs(
                        (rid, mono + wall_minus_mono_ms - ts) for rid, ts, mono in rows)]
                conn.execute("DELETE FROM unsynced_sent")
                conn.executemany("INSERT INTO events (body) VALUES (?)",
                                 [(json.dumps(e, separators=(",", ":")),) for e in events])
        except sqlite3.Error as exc:
            raise StorageError(f"buffer {self.path}: restamp failed: {exc}") from None
        self._unsynced_pending = False
        return fixed, events

    def used_bytes(self) -> int:
        pages = self._conn.execute("PRAGMA page_count").fetchone()[0]
        free = self._conn.execute("PRAGMA freelist_count").fetchone()[0]
        return int(pages - free) * self._page_size

    def enforce_limits(self, now_ms: int) -> list[Event]:
        """Evict what the size cap and the age limit say must go; return the runs evicted."""
        evicted: list[Event] = []
        acked = self._acked_through
        try:
            if self.max_age_s is not None:
                cutoff = now_ms - int(self.max_age_s * 1000)
                while True:
                    rows = self._conn.execute(
                        "SELECT id, ts FROM readings WHERE id > ? ORDER BY id LIMIT ?", (acked, EVICT_CHUNK)).fetchall()
                    old = [rid for rid, ts in rows if ts < cutoff]
                    if not old:
                        break
                    evicted += self._evict(old, "max_age", now_ms)
                    if len(old) < len(rows):
                        break
            if self.max_bytes is not None:
                target = int(self.max_bytes * 0.9)
                used = self.used_bytes()
                if used > self.max_bytes and acked > self._purged_through:
                    with self._transaction():
                        self._purge()  # what was sent goes before anything is evicted
                    used = self.used_bytes()
                while used > self.max_bytes or (evicted and used > target):
                    span = self._conn.execute(
                        "SELECT max(id) - min(id) + 1 FROM readings WHERE id > ?", (acked,)).fetchone()[0] or 0
                    if not span:
                        break
                    per_reading = max(1, used // span)
                    wanted = max(1, min(EVICT_CHUNK, (used - target) // per_reading + 1))
                    ids = [r[0] for r in self._conn.execute(
                        "SELECT r.id FROM readings r JOIN series s ON s.id = r.series "
                        "WHERE s.kind = 'gauge' AND r.id > ? ORDER BY r.id LIMIT ?", (acked, wanted))]
                    kinds: tuple[str, ...] = ("gauge",)
                    if not ids:
                        ids = [r[0] for r in self._conn.execute(
                            "SELECT id FROM readings WHERE id > ? ORDER BY id LIMIT ?", (acked, wanted))]
                        kinds = ("counter", "gauge")
                    if not ids:
                        break
                    evicted += self._evict(ids, "max_size", now_ms, kinds)
                    used = self.used_bytes()
        except sqlite3.Error as exc:
            raise StorageError(f"buffer {self.path}: eviction failed: {exc}") from None
        return evicted

    def _evict(self, ids: list[int], reason: str, now_ms: int, kinds: tuple[str, ...] = ("counter", "gauge")
               ) -> list[Event]:
        """Delete these readings and record one report: every reading of these
        kinds with an id from first_id to last_id is gone (count of them)."""
        ids = sorted(ids)
        report: Event = {"type": "evicted", "first_id": ids[0], "last_id": ids[-1], "count": len(ids),
                         "kinds": list(kinds), "reason": reason, "ts": now_ms}
        with self._transaction():
            self._conn.executemany("DELETE FROM readings WHERE id BETWEEN ? AND ?", _runs(ids))
            self._conn.execute("INSERT INTO events (body) VALUES (?)", (json.dumps(report, separators=(",", ":")),))
        self.evicted_total += len(ids)
        return [report]

    def close(self) -> None:
        try:
            self._conn.close()
        except sqlite3.Error:
            pass


def boot_id() -> str:
    """The kernel's id of this boot: monotonic times compare only within one."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def _move_aside(path: Path) -> str:
    """Keep a corrupt buffer for forensics, out of the agent's way."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = f"{path}.corrupt-{stamp}"
    for suffix in ("", "-wal", "-shm"):
        source = Path(f"{path}{suffix}")
        if source.exists():
            os.replace(source, f"{target}{suffix}")
    return target


class BufferReader:
    """The read side, for the uplink and for health figures."""

    def __init__(self, path: Path) -> None:
        self._conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None,
                                     check_same_thread=False, timeout=10)
        self._conn.execute("PRAGMA busy_timeout=10000")
        self._conn.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
        self._series: dict[int, Series] = {}

    def batch_after(self, after_id: int, limit: int) -> list[Row]:
        """The next readings in id order; their series are in :meth:`series`."""
        rows = self._conn.execute(
            f"SELECT id, series, ts, value, quality FROM readings WHERE id > ? AND {_PENDING} ORDER BY id LIMIT ?",
            (after_id, limit),
        ).fetchall()
        if rows and any(row[1] not in self._series for row in rows):
            self._load_series()
        return rows

    def series(self) -> dict[int, Series]:
        """Series id -> (device, point, unit, kind, meter); a small table, cached."""
        return self._series

    def _load_series(self) -> None:
        self._series = {sid: (d, p, u, k, m) for sid, d, p, u, k, m in self._conn.execute(
            "SELECT id, device, point, unit, kind, meter FROM series")}

    def events_after(self, after_seq: int, limit: int) -> list[StoredEvent]:
        return self._conn.execute(
            "SELECT seq, body FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (after_seq, limit)).fetchall()

    def oldest(self) -> tuple[int, int] | None:
        """(id, ts) of the oldest reading still waiting, or None when empty."""
        row = self._conn.execute(f"SELECT id, ts FROM readings WHERE {_PENDING} ORDER BY id LIMIT 1").fetchone()
        return (int(row[0]), int(row[1])) if row else None

    def depth(self) -> int:
        """Readings waiting (an upper bound when acknowledged rows sit inside the span)."""
        row = self._conn.execute(f"SELECT max(id) - min(id) + 1 FROM readings WHERE {_PENDING}").fetchone()
        return int(row[0] or 0)

    def close(self) -> None:
        self._conn.close()


CommitListener = Callable[[IdRange | None], None]


class BufferWriter(threading.Thread):
    """Owns the buffer's write connection; one transaction per flush interval.

    Producers call :meth:`put` (bus workers, with a poll's readings),
    :meth:`ack` (the uplink, with an acknowledged id range) and
    :meth:`reported` (the uplink, with eviction reports the platform
    acknowledged). When the disk refuses a write, readings are kept in memory
    up to ``max_pending`` and the commit is retried; the state change is
    logged once, and once again when writing resumes.
    """

    def __init__(self, buffer: Buffer, on_commit: CommitListener, flush_interval: float = 1.0,
                 queue_size: int = 10_000, max_pending: int = 200_000, retry_s: float = 1.0) -> None:
        super().__init__(name="buffer-writer", daemon=True)
        self.buffer = buffer
        self._on_commit = on_commit
        self._flush_interval = flush_interval
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
        self._counters_due = 0.0
        self._urgent = threading.Event()

    def put(self, readings: list[Reading], counters: CounterState | None = None,
            meters: dict[str, str] | None = None, events: list[Event] | None = None) -> None:
        """A poll's readings, with the state and reports it produced."""
        self._queue.put(("r", (readings, counters, meters, events)))

    def restamp(self, wall_minus_mono_ms: int) -> None:
        """The wall clock is trusted from now on (see Buffer.restamp)."""
        self._queue.put(("t", wall_minus_mono_ms))
        self._urgent.set()

    def ack(self, id_range: IdRange) -> None:
        self._queue.put(("a", id_range))

    def reported(self, first_ids: list[int]) -> None:
        self._queue.put(("e", first_ids))

    def stop(self) -> None:
        self._queue.put(("stop", None))
        self._urgent.set()

    def run(self) -> None:
        pending: list[Reading] = []
        acked: list[IdRange] = []
        reported: list[int] = []
        counters: CounterState = {}
        meters: dict[str, str] = {}
        events: list[Event] = []
        restamp_offset: int | None = None
        deadline: float | None = None  # when the next transaction is due
        stopping = False
        while not stopping:
            self.last_progress = time.monotonic()
            try:
                if pending:
                    # Readings wait for their transaction: sleep until it is due
                    # (or until something urgent) and take everything queued
                    # meanwhile at once, one wake-up per flush, not per poll.
                    # Readings put meanwhile are due no sooner.
                    self._urgent.wait(min(1.0, max(0.0, deadline - time.monotonic())))  # type: ignore[operator]
                    self._urgent.clear()
                    kind, payload = self._queue.get_nowait()
                else:
                    wait = 0.5 if deadline is None else min(1.0, max(0.0, deadline - time.monotonic()))
                    kind, payload = self._queue.get(timeout=wait)
                while True:
                    now = time.monotonic()
                    if kind == "r":
                        batch, counter_changes, meter_changes, new_events = payload  # type: ignore[misc]
                        pending.extend(self._fix_stamps(batch))
                        if counter_changes:
                            counters.update(counter_changes)
                        if meter_changes:
                            meters.update(meter_changes)
                        if new_events:
                            events.extend(new_events)
                        due = now + self._flush_interval
                    elif kind == "t":
                        restamp_offset = int(payload)  # type: ignore[call-overload]
                        due = now
                    elif kind == "a":
                        acked.append(payload)  # type: ignore[arg-type]
                        due = now + ACK_HOLD_S
                    elif kind == "e":
                        reported.extend(payload)  # type: ignore[arg-type]
                        due = now + ACK_DELAY_S
                    else:
                        stopping, due = True, now
                    if len(pending) >= MAX_PER_TRANSACTION:
                        due = now
                    deadline = due if deadline is None else min(deadline, due)
                    kind, payload = self._queue.get_nowait()
            except queue.Empty:
                pass
            if deadline is None or (time.monotonic() < deadline and not stopping):
                continue
            # Counter baselines change with every poll; writing them once a
            # minute is enough (an older baseline only widens the first check).
            persist = counters if (stopping or time.monotonic() >= self._counters_due) else {}
            if self._flush(pending, acked, reported, persist, meters, events, restamp_offset):
                if persist:
                    counters = {}
                    self._counters_due = time.monotonic() + COUNTER_PERSIST_S
                pending, acked, reported, meters, events, restamp_offset = [], [], [], {}, [], None
                deadline = None
            else:
                deadline = time.monotonic() + self._retry_s
                if len(pending) > self._max_pending:
                    overflow = len(pending) - self._max_pending
                    pending = pending[overflow:]
                    self.dropped += overflow
                    self._log.error("buffer.memory_full_dropping", dropped=overflow, dropped_total=self.dropped)
                if stopping:
                    self._log.error("buffer.unsaved_at_stop", readings=len(pending))
            self.held_in_memory = len(pending)

    def _fix_stamps(self, readings: list[Reading]) -> list[Reading]:
        """Readings stamped just before the clock became trusted get the
        corrected time at once (they arrive after the restamp)."""
        if self._offset is None or all(r.mono is None for r in readings):
            return readings
        offset = self._offset
        return [r if r.mono is None else r._replace(ts=r.mono + offset, mono=None,
                                                     quality=r.quality.replace("clock_unsynced", "restamped"))
                for r in readings]

    def _flush(self, pending: list[Reading], acked: list[IdRange], reported: list[int], counters: CounterState,
               meters: dict[str, str], events: list[Event], restamp_offset: int | None) -> bool:
        try:
            ids = self.buffer.commit(pending, acked, reported, events, counters, meters)
            if restamp_offset is not None:
                fixed, corrections = self.buffer.restamp(self.buffer.boot_id, restamp_offset,
                                                         time.time_ns() // 1_000_000)
                self._offset = restamp_offset
                self._log.info("clock.restamped", in_buffer=fixed, already_sent_runs=len(corrections))
            evicted = self.buffer.enforce_limits(time.time_ns() // 1_000_000)
        except StorageError as exc:
            if self.failing_since is None:
                self.failing_since = time.monotonic()
                self._log.error("buffer.write_failed", error=str(exc), held_in_memory=len(pending))
            return False
        if self.failing_since is not None:
            self._log.info("buffer.write_resumed", after_s=round(time.monotonic() - self.failing_since, 1),
                           written=len(pending))
            self.failing_since = None
        if evicted:
            self._log.warning("buffer.evicting", readings=sum(int(e["count"]) for e in evicted),  # type: ignore[call-overload]
                              runs=len(evicted), reason=evicted[0]["reason"],
                              evicted_total=self.buffer.evicted_total,
                              first_id=evicted[0]["first_id"], last_id=evicted[-1]["last_id"])
        self.committed += len(pending)
        self._on_commit(ids)
        return True


def file_size(path: Path) -> int:
    """Bytes on disk of the buffer, its WAL and shared-memory files."""
    total = 0
    for suffix in ("", "-wal", "-shm"):
        try:
            total += os.stat(f"{path}{suffix}").st_size
        except OSError:
            pass
    return total
