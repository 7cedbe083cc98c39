"""What the simulated platform received, kept in an SQLite file.

`retrofit-sim platform --store FILE` writes every reading, event, series
description and status it takes in here, as it arrives; `retrofit-sim
verify --store FILE` reads it back, later and in another process, as a
platform's verification job reads its database. Values are kept as the JSON
number text the gateway sent (``12345.678``), so exact decimal arithmetic on
them (simulators/intervals.py) starts from the digits on the wire, not from
a binary float.

Deduplication is the payload contract's: one row per (stream, id); a
reading that comes again (at-least-once delivery) only counts as a
duplicate. Events are kept once per (stream, body).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from drivers.core.errors import RetrofitError

SCHEMA = """
CREATE TABLE IF NOT EXISTS readings (
    stream TEXT NOT NULL, id INTEGER NOT NULL, device TEXT NOT NULL, point TEXT NOT NULL,
    value TEXT, unit TEXT NOT NULL, ts INTEGER NOT NULL, quality TEXT NOT NULL, meter TEXT,
    PRIMARY KEY (stream, id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (stream TEXT NOT NULL, body TEXT NOT NULL, UNIQUE (stream, body));
CREATE TABLE IF NOT EXISTS streams (stream TEXT PRIMARY KEY, gateway TEXT, site TEXT,
                                    duplicates INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS series_meta (stream TEXT PRIMARY KEY, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS status (topic TEXT PRIMARY KEY, body TEXT NOT NULL);
"""


def number_text(value: object) -> str | None:
    """The JSON text of a value as the gateway sent it (None for null)."""
    if value is None:
        return None
    return json.dumps(value)


def exact(text: str | None) -> Decimal | None:
    """A stored value as an exact decimal; None for null or a text point."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return Decimal(text)
    except InvalidOperation:
        return None


@dataclass(frozen=True)
class StoredReading:
    stream: str
    id: int
    device: str
    point: str
    value: Decimal | None
    unit: str
    ts: int
    quality: str
    meter: str | None = None


@dataclass
class Received:
    """Everything the platform stored, for the verification step."""

    readings: list[StoredReading] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)  # each with its "stream"
    streams: dict[str, dict[str, Any]] = field(default_factory=dict)  # gateway, site, duplicates


class PlatformStore:
    """One SQLite file; thread-safe (paho's network thread writes, a report reads)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.executescript(SCHEMA)
        except sqlite3.Error as exc:
            raise RetrofitError(f"platform store {path}: {exc}; give another --store file") from None
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def add_readings(self, stream: str, gateway: str, site: str, readings: Iterable[Mapping[str, Any]]) -> int:
        """Store one message's readings; returns how many were duplicates."""
        rows = [(stream, int(r["id"]), str(r["device"]), str(r["point"]), number_text(r.get("value")),
                 str(r.get("unit", "")), int(r["ts"]), str(r.get("quality", "ok")), r.get("meter"))
                for r in readings]
        with self._lock:
            self._conn.execute("BEGIN")
            before = self._conn.total_changes
            self._conn.executemany("INSERT OR IGNORE INTO readings VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
            duplicates = len(rows) - (self._conn.total_changes - before)
            self._conn.execute(
                "INSERT INTO streams (stream, gateway, site, duplicates) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (stream) DO UPDATE SET gateway = excluded.gateway, site = excluded.site, "
                "duplicates = duplicates + excluded.duplicates", (stream, gateway, site, duplicates))
            self._conn.execute("COMMIT")
        return duplicates

    def add_events(self, stream: str, events: Iterable[Mapping[str, Any]]) -> None:
        rows = [(stream, json.dumps(dict(e), sort_keys=True)) for e in events]
        with self._lock:
            self._conn.executemany("INSERT OR IGNORE INTO events VALUES (?, ?)", rows)

    def put_meta(self, stream: str, body: Mapping[str, Any]) -> None:
        with self._lock:
            self._conn.execute("INSERT OR REPLACE INTO series_meta VALUES (?, ?)", (stream, json.dumps(body)))

    def put_status(self, topic: str, body: Mapping[str, Any]) -> None:
        with self._lock:
            self._conn.execute("INSERT OR REPLACE INTO status VALUES (?, ?)", (topic, json.dumps(body)))

    def received(self) -> Received:
        with self._lock:
            rows = self._conn.execute("SELECT stream, id, device, point, value, unit, ts, quality, meter "
                                      "FROM readings ORDER BY stream, id").fetchall()
            events = self._conn.execute("SELECT stream, body FROM events ORDER BY rowid").fetchall()
            streams = self._conn.execute("SELECT stream, gateway, site, duplicates FROM streams").fetchall()
        out = Received()
        out.readings = [StoredReading(s, i, d, p, exact(v), u, ts, q, m) for s, i, d, p, v, u, ts, q, m in rows]
        out.events = [{**json.loads(body), "stream": stream} for stream, body in events]
        out.streams = {s: {"gateway": g, "site": site, "duplicates": dup} for s, g, site, dup in streams}
        return out


def load(path: Path) -> Received:
    """Open a store written by `retrofit-sim platform --store` (read it, change nothing)."""
    if not path.is_file():
        raise RetrofitError(f"{path}: no platform store there (made by retrofit-sim platform --store FILE)")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        conn.execute("SELECT 1 FROM readings LIMIT 1")
        conn.close()
    except sqlite3.Error as exc:
        raise RetrofitError(f"{path}: not a platform store ({exc})") from None
    store = PlatformStore.__new__(PlatformStore)
    store.path = path
    store._conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
    store._lock = threading.Lock()
    try:
        return store.received()
    finally:
        store.close()
