"""Buffer files of schema 1 (one row per reading) become schema 2 in place.

A gateway updated in the field keeps its buffer: the same stream, the same
next id, every reading still waiting, the reports not yet acknowledged, and
the counter and meter state. One transaction: a power cut during the
migration leaves the old file as it was, and the next start migrates again.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable

from agent import chunks
from agent.schema import KIND_CODE, ROW_READINGS, SCHEMA_VERSION, crc, schema_statements, series_crc, stored_row


def from_v1(conn: sqlite3.Connection) -> None:
    tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")}
    conn.execute("BEGIN IMMEDIATE")
    try:
        for name in ("meta", "series", "readings", "events", "counters", "meters", "unsynced_sent"):
            if name in tables:
                conn.execute(f"ALTER TABLE {name} RENAME TO v1_{name}")
        for statement in schema_statements():
            conn.execute(statement)
        meta = dict(conn.execute("SELECT key, value FROM v1_meta")) if "meta" in tables else {}
        acked = int(meta.get("acked_through", "0") or 0)
        kept = {"stream": meta.get("stream"), "next_id": meta.get("next_id"), "acked_through": str(acked),
                "schema": str(SCHEMA_VERSION), "mono_boot": meta.get("mono_boot")}
        if "counters" in tables:
            kept["counters"] = json.dumps(
                [list(r) for r in conn.execute("SELECT device, point, value, ts FROM v1_counters")])
        if "meters" in tables:
            kept["meters"] = json.dumps(dict(conn.execute("SELECT device, meter FROM v1_meters")), sort_keys=True)
        conn.executemany("INSERT INTO meta (key, value, crc) VALUES (?, ?, ?)",
                         [(k, v, crc(k, v)) for k, v in kept.items() if v is not None])
        kinds: dict[int, int] = {}
        if "series" in tables:
            for sid, device, point, unit, kind, meter in conn.execute(
                    "SELECT id, device, point, unit, kind, meter FROM v1_series").fetchall():
                conn.execute("INSERT INTO series (id, device, point, unit, kind, meter, attrs, crc) "
                             "VALUES (?, ?, ?, ?, ?, ?, '', ?)",
                             (sid, device, point, unit, kind, meter,
                              series_crc(sid, device, point, unit, kind, meter, "")))
                kinds[sid] = KIND_CODE.get(kind, 1)
        if "events" in tables:
            conn.executemany("INSERT INTO events (seq, body, crc) VALUES (?, ?, ?)",
                             [(seq, body, crc(body)) for seq, body in conn.execute("SELECT seq, body FROM v1_events")])
        if "readings" in tables:
            _pack_readings(conn, acked, kinds, ROW_READINGS, stored_row)
        for name in ("meta", "series", "readings", "events", "counters", "meters", "unsynced_sent"):
            if name in tables:
                conn.execute(f"DROP TABLE v1_{name}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _pack_readings(conn: sqlite3.Connection, acked: int, kinds: dict[int, int], row_readings: int,
                   stored_row: Callable[..., tuple[object, ...]]) -> None:
    """Waiting readings, in id order, as rows of consecutive ids of one kind."""
    run: list[tuple[int, int, int, chunks.Value, str, int | None]] = []

    def store() -> None:
        if not run:
            return
        first_id = run[0][0]
        body = chunks.encode([r[1] for r in run], [r[2] for r in run], [r[3] for r in run],
                             [r[4] for r in run], [r[5] for r in run])
        stamps = [r[2] for r in run]
        mono = int(any(r[5] is not None for r in run))
        kind = kinds.get(run[0][1], 1)
        row = stored_row(first_id, len(run), kind, min(stamps), max(stamps), mono, acked, 0, body)
        conn.execute("INSERT INTO batches (first_id, count, kind, ts_min, ts_max, mono, acked, spool, zlib, body, crc) "
                     "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
        run.clear()

    cursor = conn.execute("SELECT id, series, ts, value, quality, mono FROM v1_readings WHERE id > ? ORDER BY id",
                          (acked,))
    for row in cursor:
        if run and (row[0] != run[-1][0] + 1 or kinds.get(row[1], 1) != kinds.get(run[0][1], 1)
                    or len(run) >= min(row_readings, chunks.MAX_READINGS)):
            store()
        run.append(row)
    store()
