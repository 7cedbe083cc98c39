"""The buffer's id contract on real SQLite files."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from agent.buffer import Buffer, BufferReader, BufferWriter
from agent.errors import StorageError
from agent.readings import Reading

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


def test_a_new_file_is_a_new_stream(tmp_path: Path) -> None:
    first = Buffer(tmp_path / "a.db")
    second = Buffer(tmp_path / "b.db")
    assert first.stream != second.stream
    assert first.info.created and second.info.created


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
