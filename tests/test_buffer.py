"""The buffer's id contract on real SQLite files."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from agent import buffer as buffer_module
from agent.buffer import Buffer, BufferReader, BufferWriter
from drivers.core.errors import StorageError
from drivers.core.readings import Reading

pytestmark = pytest.mark.timeout(30)


def readings(n: int, device: str = "d1") -> list[Reading]:
    return [Reading(device, "energy_active_import", 100.0 + i, "kWh", 1_700_000_000_000 + i) for i in range(n)]


def test_ids_are_contiguous_and_survive_emptying_and_reopening(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    buffer = Buffer(path)
    assert buffer.commit(readings(3)) == (1, 3)
    assert buffer.commit(readings(2)) == (4, 5)
    assert buffer.commit([], acked=[(1, 5)]) is None  # every row sent and deleted
    assert buffer.commit(readings(1)) == (6, 6)
    assert buffer.commit([], acked=[(6, 6)]) is None
    stream = buffer.stream
    buffer.close()

    reopened = Buffer(path)
    assert reopened.stream == stream
    assert reopened.info.created is False
    # SQLite alone would hand out rowid 1 again for an empty table.
    assert reopened.commit(readings(2)) == (7, 8)
    reader = BufferReader(path)
    assert [row[0] for row in reader.batch_after(0, 100)] == [7, 8]
    reader.close()


def _stored_ids(path: Path) -> list[int]:
    with sqlite3.connect(path) as conn:
        return [row[0] for row in conn.execute("SELECT id FROM readings ORDER BY id")]


def test_acknowledged_readings_are_hidden_at_once_and_swept_out_later(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A smaller sweep threshold than the default, so the test needs few rows
    # (a constant of the code under test, not a stand-in for SQLite).
    monkeypatch.setattr(buffer_module, "PURGE_ROWS", 6)
    path = tmp_path / "b.db"
    buffer = Buffer(path)
    reader = BufferReader(path)
    buffer.commit(readings(10))
    buffer.commit([], acked=[(1, 3)])
    assert [row[0] for row in reader.batch_after(0, 100)] == list(range(4, 11))
    assert reader.oldest() is not None and reader.oldest()[0] == 4
    assert reader.depth() == 7
    assert _stored_ids(path) == list(range(1, 11)), "the rows stay until the sweep: no delete per ack"

    buffer.commit([], acked=[(7, 8)])  # out of order: 4..6 still wait, so 7..8 go at once
    assert [row[0] for row in reader.batch_after(0, 100)] == [4, 5, 6, 9, 10]
    assert 7 not in _stored_ids(path)

    buffer.commit(readings(1), acked=[(4, 6)])  # continues the watermark over the gap to 9
    assert [row[0] for row in reader.batch_after(0, 100)] == [9, 10, 11]
    assert _stored_ids(path) == [9, 10, 11], "six acknowledged rows were swept out"
    buffer.close()

    reopened = Buffer(path)
    assert [row[0] for row in reader.batch_after(0, 100)] == [9, 10, 11]
    reopened.commit([], acked=[(9, 9)])
    reopened.close()
    assert [row[0] for row in reader.batch_after(0, 100)] == [10, 11], "the watermark survives a restart"
    Buffer(path).close()
    assert _stored_ids(path) == [10, 11], "opening the buffer sweeps out what was acknowledged"
    reader.close()


def test_a_full_buffer_sweeps_out_sent_readings_before_evicting_any(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    buffer = Buffer(path, max_bytes=10**9)
    buffer.commit(readings(20_000, "sent") + readings(20_000, "waiting"))
    buffer.commit([], acked=[(1, 20_000)])
    buffer.max_bytes = buffer.used_bytes() - 1  # just over the cap, with half of it already sent
    assert buffer.enforce_limits(now_ms=1_700_000_100_000) == []
    assert buffer.evicted_total == 0
    assert _stored_ids(path) == list(range(20_001, 40_001))
    buffer.close()


def test_a_new_file_is_a_new_stream(tmp_path: Path) -> None:
    first = Buffer(tmp_path / "a.db")
    second = Buffer(tmp_path / "b.db")
    assert first.stream != second.stream
    assert first.info.created and second.info.created


def _page_size(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("PRAGMA page_size").fetchone()[0])


def test_a_new_file_uses_small_pages_and_an_older_file_keeps_its_own(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fresh = Buffer(tmp_path / "new.db")
    fresh.commit(readings(2))
    fresh.close()
    assert _page_size(tmp_path / "new.db") == 1024

    older = tmp_path / "older.db"
    with monkeypatch.context() as patch:  # as versions before 1 KiB pages made the file
        patch.setattr(buffer_module, "PAGE_BYTES", 4096)
        made = Buffer(older)
        made.commit(readings(3))
        stream = made.stream
        made.close()
    reopened = Buffer(older)
    assert reopened.stream == stream
    assert reopened.commit(readings(1)) == (4, 4)
    reader = BufferReader(older)
    assert [row[0] for row in reader.batch_after(0, 10)] == [1, 2, 3, 4]
    reader.close()
    reopened.close()
    assert _page_size(older) == 4096


def test_a_failed_commit_changes_nothing_and_uses_no_ids(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    buffer = Buffer(path)
    buffer.commit(readings(2))
    with sqlite3.connect(path) as conn:  # a real SQLite refusal, raised inside the transaction
        conn.execute("CREATE TRIGGER refuse BEFORE INSERT ON readings WHEN NEW.value = 999 "
                     "BEGIN SELECT RAISE(ABORT, 'refused'); END")
    bad = [Reading("d1", "p", 1.0, "W", 1), Reading("d2", "new-point", 999, "W", 1)]
    with pytest.raises(StorageError):
        buffer.commit(bad, acked=[(1, 1)])
    reader = BufferReader(path)
    assert [row[0] for row in reader.batch_after(0, 10)] == [1, 2], "the ack in the failed transaction is undone too"
    assert buffer.commit(readings(1)) == (3, 3)
    row = reader.batch_after(2, 10)[0]
    assert reader.series()[row[1]][:3] == ("d1", "energy_active_import", "kWh")
    reader.close()


def test_rows_carry_what_was_read(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    buffer = Buffer(path)
    buffer.commit([Reading("elec", "voltage_l1", 230.1, "V", 1234, "ok"),
                   Reading("room", "temperature", None, "Cel", 1235, "invalid")])
    reader = BufferReader(path)
    rows = reader.batch_after(0, 10)
    assert [(r[0], r[2], r[3], r[4]) for r in rows] == [(1, 1234, 230.1, "ok"), (2, 1235, None, "invalid")]
    assert [reader.series()[r[1]] for r in rows] == [("elec", "voltage_l1", "V", "gauge", ""),
                                                     ("room", "temperature", "Cel", "gauge", "")]
    assert reader.oldest() == (1, 1234)
    assert reader.depth() == 2
    reader.close()


def test_writer_commits_puts_and_acks_from_other_threads(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    committed: list[tuple[int, int] | None] = []
    done = threading.Event()

    def on_commit(ids: tuple[int, int] | None) -> None:
        committed.append(ids)
        if ids and ids[1] >= 1000:
            done.set()

    writer = BufferWriter(Buffer(path), on_commit)
    writer.start()
    producers = [threading.Thread(target=lambda d=f"d{k}": [writer.put(readings(10, d)) for _ in range(25)])
                 for k in range(4)]
    for thread in producers:
        thread.start()
    for thread in producers:
        thread.join()
    assert done.wait(10)
    writer.ack((1, 500))
    writer.stop()
    writer.join(5)
    reader = BufferReader(path)
    ids = [row[0] for row in reader.batch_after(0, 10_000)]
    assert ids == list(range(501, 1001))
    assert writer.committed == 1000
    reader.close()
