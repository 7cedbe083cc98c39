"""The durable buffer: every reading lives in SQLite until the broker acked it.

One thread (the :class:`BufferWriter`) owns the write connection; readings
arrive from the bus workers through a bounded queue and are committed one
transaction per drain, with deletions of acknowledged ranges folded into the
same transaction. The uplink reads through its own connection (WAL lets a
reader and the writer work at once).

Ids: per stream, strictly increasing, contiguous, never reused. They are
assigned from a counter stored in the file (``meta.next_id``) in the same
transaction as the rows, so neither deleting every row nor a restart can
bring an old id back (SQLite's rowid alone would reuse the largest id once
it is deleted). The stream id is a UUID made when the file is made.
"""

from __future__ import annotations

import os
import queue
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from agent import logs
from agent.errors import StorageError
from agent.readings import Reading

SCHEMA_VERSION = "1"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS series (
    id INTEGER PRIMARY KEY,
    device TEXT NOT NULL,
    point TEXT NOT NULL,
    unit TEXT NOT NULL,
    UNIQUE (device, point, unit)
);
CREATE TABLE IF NOT EXISTS readings (
    id INTEGER PRIMARY KEY,
    series INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    value,
    quality TEXT NOT NULL
);
"""

Row = tuple[int, str, str, str, int, float | int | str | None, str]  # id, device, point, unit, ts, value, quality
IdRange = tuple[int, int]  # first id, last id, inclusive


def _connect(path: Path, synchronous: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={'FULL' if synchronous == 'full' else 'NORMAL'}")
    conn.execute("PRAGMA busy_timeout=10000")
    return conn


@dataclass(frozen=True)
class BufferInfo:
    stream: str
    next_id: int
    created: bool


class Buffer:
    """The write side. Only the writer thread calls its mutating methods."""

    def __init__(self, path: Path, synchronous: str = "normal") -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            existed = path.exists() and path.stat().st_size > 0
            self._conn = _connect(path, synchronous)
            self._conn.executescript(_SCHEMA)
            meta = dict(self._conn.execute("SELECT key, value FROM meta"))
            if "stream" not in meta:
                self._conn.execute("BEGIN IMMEDIATE")
                self._conn.executemany(
                    "INSERT INTO meta (key, value) VALUES (?, ?)",
                    [("stream", str(uuid.uuid4())), ("next_id", "1"), ("schema", SCHEMA_VERSION)],
                )
                self._conn.execute("COMMIT")
                meta = dict(self._conn.execute("SELECT key, value FROM meta"))
        except (sqlite3.Error, OSError) as exc:
            raise StorageError(f"cannot open buffer {path}: {exc}") from None
        self.info = BufferInfo(stream=meta["stream"], next_id=int(meta["next_id"]), created=not existed)
        self._next_id = self.info.next_id
        self._series = self._load_series()

    def _load_series(self) -> dict[tuple[str, str, str], int]:
        rows = self._conn.execute("SELECT id, device, point, unit FROM series")
        return {(d, p, u): i for i, d, p, u in rows}

    @property
    def stream(self) -> str:
        return self.info.stream

    @property
    def next_id(self) -> int:
        return self._next_id

    def _series_id(self, device: str, point: str, unit: str) -> int:
        key = (device, point, unit)
        sid = self._series.get(key)
        if sid is None:
            cur = self._conn.execute(
                "INSERT INTO series (device, point, unit) VALUES (?, ?, ?)", key
            )
            sid = int(cur.lastrowid or 0)
            self._series[key] = sid
        return sid

    def commit(self, readings: Sequence[Reading], acked: Iterable[IdRange] = ()) -> IdRange | None:
        """Store readings and forget acknowledged ranges in one transaction.

        Returns the id range given to the readings. On failure nothing is
        changed (ids included) and StorageError is raised.
        """
        first = self._next_id
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for low, high in acked:
                    conn.execute("DELETE FROM readings WHERE id BETWEEN ? AND ?", (low, high))
                if readings:
                    rows = [
                        (first + n, self._series_id(r.device, r.point, r.unit), r.ts, r.value, r.quality)
                        for n, r in enumerate(readings)
                    ]
                    conn.executemany(
                        "INSERT INTO readings (id, series, ts, value, quality) VALUES (?, ?, ?, ?, ?)", rows
                    )
                    conn.execute(
                        "UPDATE meta SET value = ? WHERE key = 'next_id'", (str(first + len(readings)),)
                    )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                self._series = self._load_series()  # rows of the failed transaction are gone
                raise
        except sqlite3.Error as exc:
            raise StorageError(f"buffer {self.path}: {exc}") from None
        if not readings:
            return None
        self._next_id = first + len(readings)
        return first, self._next_id - 1

    def close(self) -> None:
        try:
            self._conn.close()
        except sqlite3.Error:
            pass


class BufferReader:
    """The read side, for the uplink and for health figures."""

    def __init__(self, path: Path) -> None:
        self._conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None,
                                     check_same_thread=False, timeout=10)
        self._conn.execute("PRAGMA busy_timeout=10000")

    def batch_after(self, after_id: int, limit: int) -> list[Row]:
        return self._conn.execute(
            "SELECT r.id, s.device, s.point, s.unit, r.ts, r.value, r.quality "
            "FROM readings r JOIN series s ON s.id = r.series "
            "WHERE r.id > ? ORDER BY r.id LIMIT ?",
            (after_id, limit),
        ).fetchall()

    def oldest(self) -> tuple[int, int] | None:
        """(id, ts) of the oldest reading still waiting, or None when empty."""
        row = self._conn.execute("SELECT id, ts FROM readings ORDER BY id LIMIT 1").fetchone()
        return (int(row[0]), int(row[1])) if row else None

    def depth(self) -> int:
        row = self._conn.execute("SELECT max(id) - min(id) + 1, count(*) FROM readings").fetchone()
        return int(row[1] or 0)

    def close(self) -> None:
        self._conn.close()


CommitListener = Callable[[IdRange | None], None]


class BufferWriter(threading.Thread):
    """Owns the buffer's write connection; one transaction per drain.

    Producers call :meth:`put` (bus workers, with a poll's readings) and
    :meth:`ack` (the uplink, with an acknowledged id range). When the disk
    refuses a write, readings are kept in memory up to ``max_pending`` and
    the commit is retried; the state change is logged once.
    """

    def __init__(self, buffer: Buffer, on_commit: CommitListener, queue_size: int = 10_000,
                 max_pending: int = 200_000, retry_s: float = 1.0) -> None:
        super().__init__(name="buffer-writer", daemon=True)
        self.buffer = buffer
        self._on_commit = on_commit
        self._queue: queue.Queue[tuple[str, object]] = queue.Queue(maxsize=queue_size)
        self._stop_event = threading.Event()
        self._max_pending = max_pending
        self._retry_s = retry_s
        self._log = logs.get("buffer")
        self.committed = 0
        self.dropped = 0
        self.failing_since: float | None = None
        self.last_progress = time.monotonic()

    def put(self, readings: list[Reading]) -> None:
        self._queue.put(("r", readings))

    def ack(self, id_range: IdRange) -> None:
        self._queue.put(("a", id_range))

    def stop(self) -> None:
        self._stop_event.set()
        self._queue.put(("stop", None))

    def run(self) -> None:
        pending: list[Reading] = []
        acked: list[IdRange] = []
        stopping = False
        while True:
            self.last_progress = time.monotonic()
            timeout = self._retry_s if (pending or acked) else 0.5
            items: list[tuple[str, object]] = []
            try:
                items.append(self._queue.get(timeout=timeout))
                while len(items) < 5000:
                    items.append(self._queue.get_nowait())
            except queue.Empty:
                pass
            for kind, payload in items:
                if kind == "r":
                    pending.extend(payload)  # type: ignore[arg-type]
                elif kind == "a":
                    acked.append(payload)  # type: ignore[arg-type]
                else:
                    stopping = True
            del items
            if pending or acked:
                if self._flush(pending, acked):
                    pending, acked = [], []
                elif len(pending) > self._max_pending:
                    overflow = len(pending) - self._max_pending
                    pending = pending[overflow:]
                    self.dropped += overflow
                    self._log.error("buffer.memory_overflow", dropped=overflow, dropped_total=self.dropped)
                elif stopping:
                    self._log.error("buffer.unsaved_at_stop", readings=len(pending))
            if stopping:
                return

    def _flush(self, pending: list[Reading], acked: list[IdRange]) -> bool:
        try:
            ids = self.buffer.commit(pending, acked)
        except StorageError as exc:
            if self.failing_since is None:
                self.failing_since = time.monotonic()
                self._log.error("buffer.write_failed", error=str(exc), held_in_memory=len(pending))
            return False
        if self.failing_since is not None:
            self._log.info("buffer.write_resumed", after_s=round(time.monotonic() - self.failing_since, 1),
                           written=len(pending))
            self.failing_since = None
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
