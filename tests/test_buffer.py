"""The buffer's id contract on real SQLite files."""

from __future__ import annotations

import json
import sqlite3
import threading
from contextlib import closing
from pathlib import Path

import pytest

from agent import buffer as buffer_module
from agent.buffer import Buffer, BufferWriter, pack
from agent.schema import StoredRow
from drivers.core.errors import StorageError
from drivers.core.readings import Reading

pytestmark = pytest.mark.timeout(60)


def readings(n: int, device: str = "d1", kind: str = "counter") -> list[Reading]:
    return [Reading(device, "energy_active_import", 100.0 + i, "kWh", 1_700_000_000_000 + i, kind=kind)
            for i in range(n)]


def commit(buffer: Buffer, items: list[Reading], **kwargs: object) -> tuple[int, int] | None:
    return buffer.commit(pack(buffer, items), **kwargs)  # type: ignore[arg-type]


def ids(buffer: Buffer, after: int = 0) -> list[int]:
    return [row[0] for row in buffer.reader().batch_after(after, 1_000_000)]


def stored(path: Path) -> list[tuple[int, int]]:
    """(first id, count) of every stored row, read with a connection of its own (the agent is closed)."""
    with closing(sqlite3.connect(path)) as conn:
        return [(f, n) for f, n in conn.execute("SELECT first_id, count FROM batches ORDER BY first_id")]


def events(path: Path) -> list[dict[str, object]]:
    with closing(sqlite3.connect(path)) as conn:
        return [json.loads(body) for (body,) in conn.execute("SELECT body FROM events ORDER BY seq")]


def test_ids_are_contiguous_and_survive_emptying_and_reopening(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    buffer = Buffer(path)
    assert commit(buffer, readings(3)) == (1, 3)
    assert commit(buffer, readings(2)) == (4, 5)
    assert buffer.commit(acked_through=5) is None
    buffer.maintain(0, force_purge=True)  # every row sent and swept out
    assert commit(buffer, readings(1)) == (6, 6)
    buffer.commit(acked_through=6)
    buffer.maintain(0, force_purge=True)
    stream = buffer.stream
    buffer.close()
    assert stored(path) == []

    reopened = Buffer(path)
    assert reopened.stream == stream
    assert reopened.info.created is False
    assert reopened.info.unclean is False
    # SQLite alone would hand out rowid 1 again for an empty table.
    assert commit(reopened, readings(2)) == (7, 8)
    assert ids(reopened) == [7, 8]
    reopened.close()


def test_acknowledged_readings_are_hidden_at_once_and_swept_out_later(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    buffer = Buffer(path)
    commit(buffer, readings(4))
    commit(buffer, readings(6))
    buffer.commit(acked_through=3)
    reader = buffer.reader()
    assert [row[0] for row in reader.batch_after(buffer.acked_through, 100)] == list(range(4, 11))
    assert buffer.oldest() is not None and buffer.oldest()[0] == 4  # type: ignore[index]
    assert buffer.depth() == 7
    buffer.maintain(0)
    buffer.close()
    assert stored(path) == [(1, 4), (5, 6)], "no delete per acknowledgement: rows stay until the sweep"

    reopened = Buffer(path)  # opening sweeps out what was acknowledged in whole rows
    assert reopened.acked_through == 3, "the watermark survives a restart"
    reopened.commit(acked_through=4)
    reopened.maintain(0, force_purge=True)
    assert reopened.depth() == 6
    reopened.close()
    assert stored(path) == [(5, 6)]


def test_a_full_buffer_sweeps_out_sent_readings_before_evicting_any(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    buffer = Buffer(path, max_bytes=10**9)
    commit(buffer, readings(20_000, "sent", kind="gauge"))
    commit(buffer, readings(20_000, "waiting", kind="gauge"))
    buffer.commit(acked_through=20_000)
    buffer.max_bytes = buffer.used_bytes() - 1  # just over the cap, with half of it already sent
    assert buffer.maintain(now_ms_=1_700_000_100_000) == []
    assert buffer.evicted_total == 0
    assert ids(buffer, buffer.acked_through) == list(range(20_001, 40_001))
    buffer.close()


def test_eviction_takes_gauges_first_and_reports_every_id(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    buffer = Buffer(path, max_bytes=10**9)
    for _ in range(20):
        commit(buffer, readings(500, "meter", kind="counter") + readings(500, "room", kind="gauge"))
    buffer.max_bytes = buffer.used_bytes() * 7 // 10  # the gauges (half) are enough to free
    reports = buffer.maintain(now_ms_=1_700_000_100_000)
    left = set(ids(buffer))
    gone = set(range(1, 20_001)) - left
    assert gone, "something had to go"
    assert all(row[1] for row in buffer.reader().batch_after(0, 100_000))
    series = buffer.series()
    kinds_left = {series[row[1]][3] for row in buffer.reader().batch_after(0, 100_000)}
    assert "counter" in kinds_left, "counters are kept while gauges can go"
    explained = {i for r in reports for i in range(int(r["first_id"]), int(r["last_id"]) + 1)}  # type: ignore[call-overload]
    assert gone <= explained
    assert sum(int(r["count"]) for r in reports) == len(gone)  # type: ignore[call-overload]
    assert all(r["kinds"] == ["gauge"] for r in reports)
    buffer.close()


def test_a_new_file_is_a_new_stream(tmp_path: Path) -> None:
    first = Buffer(tmp_path / "a.db")
    second = Buffer(tmp_path / "b.db")
    assert first.stream != second.stream
    assert first.info.created and second.info.created
    first.close()
    second.close()


def test_a_second_process_cannot_open_a_buffer_in_use(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    buffer = Buffer(path)
    commit(buffer, readings(2))
    with pytest.raises(sqlite3.OperationalError, match="locked"), closing(sqlite3.connect(path, timeout=0.2)) as conn:
        conn.execute("SELECT count(*) FROM batches").fetchone()
    buffer.close()
    assert stored(path) == [(1, 2)]


def _page_size(path: Path) -> int:
    with closing(sqlite3.connect(path)) as conn:
        return int(conn.execute("PRAGMA page_size").fetchone()[0])


def test_a_new_file_uses_small_pages_and_an_older_file_keeps_its_own(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fresh = Buffer(tmp_path / "new.db")
    commit(fresh, readings(2))
    fresh.close()
    assert _page_size(tmp_path / "new.db") == 1024

    older = tmp_path / "older.db"
    with monkeypatch.context() as patch:  # as versions before 1 KiB pages made the file
        patch.setattr(buffer_module, "PAGE_BYTES", 4096)
        made = Buffer(older)
        commit(made, readings(3))
        stream = made.stream
        made.close()
    reopened = Buffer(older)
    assert reopened.stream == stream
    assert commit(reopened, readings(1)) == (4, 4)
    assert ids(reopened) == [1, 2, 3, 4]
    reopened.close()
    assert _page_size(older) == 4096


def test_a_failed_commit_changes_nothing_and_uses_no_ids(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    buffer = Buffer(path)
    commit(buffer, readings(2))
    # A real SQLite refusal, raised inside the transaction (through the
    # buffer's own connection: it holds the file's exclusive lock).
    buffer._conn.execute("CREATE TRIGGER refuse BEFORE INSERT ON batches WHEN NEW.count = 7 "
                         "BEGIN SELECT RAISE(ABORT, 'refused'); END")
    bad = readings(7, "d2")
    with pytest.raises(StorageError):
        commit(buffer, bad, acked_through=1)
    assert ids(buffer, 0) == [1, 2], "the acknowledgement in the failed transaction is undone too"
    assert buffer.acked_through == 0
    assert commit(buffer, readings(1)) == (3, 3)
    row = buffer.reader().batch_after(2, 10)[0]
    assert buffer.series()[row[1]][:3] == ("d1", "energy_active_import", "kWh")
    buffer.close()
    reopened = Buffer(path)
    assert reopened.next_id == 4
    reopened.close()


def test_rows_carry_what_was_read(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    buffer = Buffer(path)
    commit(buffer, [Reading("elec", "voltage_l1", 230.1, "V", 1234, "ok"),
                    Reading("room", "temperature", None, "Cel", 1235, "invalid"),
                    Reading("heat", "fabrication_no", "A1B2", "", 1236, "ok"),
                    Reading("heat", "energy", 12_345_678_901, "Wh", 1236, "counter_jump", kind="counter"),
                    Reading("elec", "frequency", 50.0, "Hz", 1237, "ok")])
    rows = buffer.reader().batch_after(0, 10)
    series = buffer.series()
    got = {series[r[1]][:2]: (r[2], r[3], r[4]) for r in rows}
    assert got == {("elec", "voltage_l1"): (1234, 230.1, "ok"),
                   ("room", "temperature"): (1235, None, "invalid"),
                   ("heat", "fabrication_no"): (1236, "A1B2", "ok"),
                   ("heat", "energy"): (1236, 12_345_678_901, "counter_jump"),
                   ("elec", "frequency"): (1237, 50.0, "ok")}
    assert type(got[("heat", "energy")][1]) is int and type(got[("elec", "frequency")][1]) is float
    assert sorted(r[0] for r in rows) == [1, 2, 3, 4, 5]
    first = min(rows)
    assert buffer.oldest() == (1, first[2])
    assert series[first[1]][3] == "counter", "a commit numbers its counters first (rows hold one kind)"
    assert buffer.depth() == 5
    buffer.close()


def test_writer_commits_puts_and_acks_from_other_threads(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    committed: list[tuple[int, int] | None] = []
    done = threading.Event()

    def on_commit(id_range: tuple[int, int] | None) -> None:
        committed.append(id_range)
        if id_range and id_range[1] >= 1000:
            done.set()

    buffer = Buffer(path)
    writer = BufferWriter(buffer, on_commit, flush_interval=0.2)
    writer.start()
    def produce(device: str) -> None:
        for _ in range(25):
            writer.put(readings(10, device))

    producers = [threading.Thread(target=produce, args=(f"d{k}",)) for k in range(4)]
    for thread in producers:
        thread.start()
    for thread in producers:
        thread.join()
    assert done.wait(10)
    writer.ack_through(500)
    writer.stop()
    writer.join(5)
    assert ids(buffer, buffer.acked_through) == list(range(501, 1001))
    assert writer.committed == 1000
    assert sorted(i for r in committed if r for i in range(r[0], r[1] + 1)) == list(range(1, 1001))
    buffer.close()


def test_a_reading_gets_one_id_when_the_disk_fills_right_after_its_commit(tmp_path: Path) -> None:
    """Issue 20, finding 1: eviction failing with 'database or disk is full'
    right after the commit made the writer commit the same readings again
    under new ids (5 readings became 10 rows)."""
    path = tmp_path / "b.db"
    buffer = Buffer(path, max_bytes=10**9)
    # The eviction's DELETE fails as a full disk would make it fail; the commit itself succeeds.
    buffer._conn.execute("CREATE TRIGGER full BEFORE DELETE ON batches "
                         "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END")
    buffer.max_bytes = 1  # every flush must now evict, and the eviction fails
    seen: list[tuple[int, int] | None] = []
    writer = BufferWriter(buffer, seen.append, flush_interval=0.05, retry_s=0.05)
    writer.start()
    writer.put(readings(5))
    deadline = threading.Event()
    deadline.wait(1.0)  # several retries of the failing eviction happen meanwhile (retry_s 0.05)
    writer.stop()
    writer.join(5)
    assert writer.committed == 5
    assert buffer.next_id == 6, "five readings, five ids"
    assert ids(buffer) == [1, 2, 3, 4, 5]
    buffer.close()


def test_an_unclean_stop_is_reported_with_the_last_durable_id(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    buffer = Buffer(path, flush_interval_s=30)
    commit(buffer, readings(3))
    buffer.close(clean=False)  # as a crash or a power cut leaves it: running = 1
    again = Buffer(path, flush_interval_s=30)
    assert again.info.unclean
    again.close()
    reports = [e for e in events(path) if e["type"] == "unclean_stop"]
    assert len(reports) == 1
    assert reports[0]["last_id"] == 3 and reports[0]["may_have_lost_s"] == 30.0
    assert reports[0]["last_ts"] == 1_700_000_000_002
    clean = Buffer(path)
    assert not clean.info.unclean, "a clean stop is not reported"
    clean.close()
    assert len([e for e in events(path) if e["type"] == "unclean_stop"]) == 1


def _flip_inside_row(path: Path, marker: bytes) -> None:
    """Change one byte of a stored row's body in the file itself (the agent is closed)."""
    data = bytearray(path.read_bytes())
    at = data.find(marker)
    assert at >= 0, "the marker is in the file"
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_stored_row_that_fails_its_checksum_is_reported_and_never_sent(tmp_path: Path) -> None:
    """Issue 20, finding 10: bit flips that SQLite's quick_check passed were
    sent as changed data (1065.25 became 1.23e80)."""
    path = tmp_path / "b.db"
    buffer = Buffer(path)
    good = [Reading("a", "p", 1.5, "W", 1_700_000_000_000)]
    odd = [Reading("b", "p", 1065.25, "W", 1_700_000_000_001, kind="counter")]
    commit(buffer, good)
    commit(buffer, odd)
    commit(buffer, good)
    buffer._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    buffer.close()
    import struct
    _flip_inside_row(path, struct.pack("<f", 1065.25))

    reopened = Buffer(path)
    reader = reopened.reader()
    rows = reader.batch_after(0, 10)
    assert [r[0] for r in rows] == [1, 3]
    assert all(r[3] == 1.5 for r in rows), "no value from the damaged row"
    assert reader.take_corrupt() == [(2, 2)]
    reopened.drop_corrupt(2, 2, 1_700_000_000_100)
    reopened.close()
    reports = [e for e in events(path) if e["type"] == "corrupt"]
    assert [(r["first_id"], r["last_id"], r["count"]) for r in reports] == [(2, 2, 1)]


def test_rows_committed_while_the_forwarder_reads_are_sent_not_taken_for_corrupt(tmp_path: Path) -> None:
    """A commit with a new series landing between the forwarder's look at the
    series and its read of the rows: the rows were reported corrupt and
    never sent (a loaded 2-core machine lost a meter's first 40 readings)."""
    buffer = Buffer(tmp_path / "b.db")
    reader = buffer.reader()
    commit(buffer, [Reading("a", "p", 1.5, "W", 1_700_000_000_000)])
    rows_of = buffer.stored_rows

    def rows_after_a_commit(after_id: int, limit: int) -> list[StoredRow]:
        buffer.stored_rows = rows_of  # type: ignore[method-assign]  # once
        commit(buffer, [Reading("b", "q", 2.5, "kWh", 1_700_000_000_001, kind="counter")])
        return rows_of(after_id, limit)

    buffer.stored_rows = rows_after_a_commit  # type: ignore[method-assign]
    rows = reader.batch_after(0, 10)
    assert [(r[0], r[3]) for r in rows] == [(1, 1.5), (2, 2.5)]
    assert reader.take_corrupt() == []
    buffer.close()


def test_a_buffer_of_schema_1_keeps_its_stream_ids_and_waiting_readings(tmp_path: Path) -> None:
    """A gateway updated in the field: the old one-row-per-reading file is migrated in place."""
    path = tmp_path / "old.db"
    with closing(sqlite3.connect(path)) as conn:  # the schema 1 layout, written as version 0.1 wrote it
        conn.executescript("""
            CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
            CREATE TABLE series (id INTEGER PRIMARY KEY, device TEXT NOT NULL, point TEXT NOT NULL,
                unit TEXT NOT NULL, kind TEXT NOT NULL, meter TEXT NOT NULL DEFAULT '',
                UNIQUE (device, point, unit, kind, meter));
            CREATE TABLE readings (id INTEGER PRIMARY KEY, series INTEGER NOT NULL, ts INTEGER NOT NULL,
                value, quality TEXT NOT NULL, mono INTEGER);
            CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, body TEXT NOT NULL);
            CREATE TABLE counters (device TEXT NOT NULL, point TEXT NOT NULL, value NOT NULL, ts INTEGER NOT NULL,
                PRIMARY KEY (device, point)) WITHOUT ROWID;
            CREATE TABLE meters (device TEXT PRIMARY KEY, meter TEXT NOT NULL) WITHOUT ROWID;
            CREATE TABLE unsynced_sent (id INTEGER PRIMARY KEY, ts INTEGER NOT NULL, mono INTEGER NOT NULL,
                boot TEXT NOT NULL);
            INSERT INTO meta VALUES ('stream', '11111111-2222-3333-4444-555555555555'), ('next_id', '41'),
                ('schema', '1'), ('acked_through', '30');
            INSERT INTO series VALUES (1, 'heat', 'energy', 'kWh', 'counter', '12345678'),
                (2, 'room', 'temperature', 'Cel', 'gauge', '');
            INSERT INTO events (body) VALUES ('{"type":"evicted","first_id":5,"last_id":9}');
            INSERT INTO counters VALUES ('heat', 'energy', 1234.5, 1700000000000);
            INSERT INTO meters VALUES ('heat', '12345678');
        """)
        conn.executemany("INSERT INTO readings VALUES (?, ?, ?, ?, ?, NULL)",
                         [(i, 1 if i % 2 else 2, 1_700_000_000_000 + i, float(i), "ok") for i in range(25, 41)
                          if i != 35])  # 35 was acknowledged out of order and deleted
        conn.commit()
    buffer = Buffer(path)
    assert buffer.stream == "11111111-2222-3333-4444-555555555555"
    assert buffer.next_id == 41 and buffer.acked_through == 30
    rows = buffer.reader().batch_after(buffer.acked_through, 100)
    series = buffer.series()
    assert [(r[0], series[r[1]][:2], r[3]) for r in rows] == [
        (i, ("heat", "energy") if i % 2 else ("room", "temperature"), float(i)) for i in range(31, 41) if i != 35]
    assert buffer.counter_state() == {("heat", "energy"): (1234.5, 1_700_000_000_000)}
    assert buffer.meter_ids() == {"heat": "12345678"}
    assert commit(buffer, readings(1)) == (41, 41)
    buffer.close()
    assert events(path)[0] == {"type": "evicted", "first_id": 5, "last_id": 9}


def test_a_buffer_from_a_newer_version_is_refused_not_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    buffer = Buffer(path)
    buffer._put_meta("schema", "9")
    buffer.close()
    with pytest.raises(StorageError, match="newer retrofit-agent"):
        Buffer(path)
    assert path.exists() and not list(tmp_path.glob("*.corrupt-*"))
