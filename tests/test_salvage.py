"""A damaged buffer file (issue 20, finding 10; issue 14): nothing changed is sent,
what can be read is sent again in the new stream, and every loss is reported.

Before: one corrupted byte moved the file aside in 69 of 80 cases, and a new
stream started with the 2,000 unsent readings never sent and no event
explaining the gap; in 11 of 37 bit flips the start-up check passed and
changed data was sent as is (1065.25 became 1.23e80, ``ok`` became ``oo``).
"""

from __future__ import annotations

import json
import random
import sqlite3
from contextlib import closing
from pathlib import Path

from agent.buffer import Buffer, pack
from drivers.core.readings import Reading

WAITING = 2000
SENT = 600


def _original(n: int) -> list[Reading]:
    """Readings whose values say which they are (device, point and value from the index)."""
    out = []
    for i in range(n):
        kind = "counter" if i % 5 == 0 else "gauge"
        out.append(Reading(f"meter-{i % 7}", f"point-{i % 11}", 1000.25 + i, "kWh", 1_700_000_000_000 + i * 10,
                           "ok", kind))
    return out


def _make(path: Path) -> tuple[str, dict[int, tuple[str, str, float]]]:
    """A closed buffer: SENT readings acknowledged, WAITING waiting; (stream, id -> reading)."""
    buffer = Buffer(path)
    readings = _original(SENT + WAITING)
    by_id: dict[int, tuple[str, str, float]] = {}
    for start in range(0, len(readings), 100):
        part = readings[start:start + 100]
        rows = pack(buffer, part)
        first, _last = buffer.commit(rows)  # type: ignore[misc]
        # Counters are numbered first within a commit: the same order pack() used.
        ordered = [r for r in part if r.kind == "counter"] + [r for r in part if r.kind != "counter"]
        for offset, reading in enumerate(ordered):
            by_id[first + offset] = (reading.device, reading.point, reading.value)  # type: ignore[assignment]
    buffer.commit(acked_through=SENT)
    stream = buffer.stream
    buffer.close()
    return stream, by_id


def _events(path: Path) -> list[dict[str, object]]:
    with closing(sqlite3.connect(path)) as conn:
        return [json.loads(b) for (b,) in conn.execute("SELECT body FROM events ORDER BY seq")]


def _judge(path: Path, stream: str, by_id: dict[int, tuple[str, str, float]]) -> dict[str, int]:
    """Open the damaged buffer as the agent would and read everything it would send.

    Every value sent must be the original reading of the id it claims (in the
    old stream directly, or through a ``salvaged`` event in a new one); every
    waiting reading not sent must be covered by a ``corrupt`` or ``lost`` event."""
    buffer = Buffer(path)
    reader = buffer.reader()
    rows = reader.batch_after(buffer.acked_through, 1_000_000)
    for low, high in reader.take_corrupt():
        buffer.drop_corrupt(low, high, 0)
    series = buffer.series()
    new_stream = buffer.stream != stream
    buffer.close()
    events = _events(path)
    old_id: dict[int, int] = {}
    for event in events:
        if event["type"] == "salvaged":
            assert event["from_stream"] in (stream, None)
            for offset in range(int(event["last_id"]) - int(event["first_id"]) + 1):  # type: ignore[call-overload]
                old_id[int(event["first_id"]) + offset] = int(event["from_first_id"]) + offset  # type: ignore[call-overload]
    sent = set()
    for rid, sid, _ts, value, quality in rows:
        original = old_id.get(rid, rid) if new_stream else rid
        device, point, *_ = series[sid]
        assert (device, point, value) == by_id[original], f"id {rid} (old {original}) carries something else"
        assert quality == "ok"
        sent.add(original)
    reported = {i for e in events if (e["type"] in ("corrupt", "lost") and "from_first_id" in e) or e["type"] == "corrupt"
                for i in range(int(e.get("from_first_id", e.get("first_id"))),  # type: ignore[call-overload]
                               int(e.get("from_last_id", e.get("last_id"))) + 1)}  # type: ignore[call-overload]
    unexplained = set(range(SENT + 1, SENT + WAITING + 1)) - sent - reported
    assert unexplained == set(), f"{len(unexplained)} waiting readings neither sent nor reported lost"
    return {"sent": len(sent), "reported": len(reported & set(range(SENT + 1, SENT + WAITING + 1))),
            "new_stream": int(new_stream)}


def test_a_damaged_schema_page_moves_the_file_aside_and_every_waiting_reading_is_salvaged(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    stream, by_id = _make(path)
    data = bytearray(path.read_bytes())
    data[100:160] = bytes(random.Random(1).randrange(256) for _ in range(60))  # page 1: the schema's b-tree
    path.write_bytes(bytes(data))
    figures = _judge(path, stream, by_id)
    assert figures == {"sent": WAITING, "reported": 0, "new_stream": 1}
    assert list(tmp_path.glob("buffer.db.corrupt-*")), "the damaged file is kept for forensics"
    salvaged = [e for e in _events(path) if e["type"] == "salvaged"]
    assert salvaged and all(int(str(e["from_first_id"])) > SENT for e in salvaged), "acknowledged readings stay sent"


def test_a_file_beyond_reading_is_reported_lost_not_silently_replaced(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    _make(path)
    path.write_bytes(bytes(random.Random(2).randrange(256) for _ in range(path.stat().st_size)))
    buffer = Buffer(path)
    assert buffer.info.moved_aside and buffer.next_id == 1
    buffer.close()
    lost = [e for e in _events(path) if e["type"] == "lost"]
    assert lost, "the loss of the old stream is reported"


def test_single_byte_damage_anywhere_never_sends_a_changed_value(tmp_path: Path) -> None:
    rng = random.Random(20261129)
    template = tmp_path / "template.db"
    stream, by_id = _make(template)
    pristine = template.read_bytes()
    outcomes = {"same stream": 0, "new stream": 0, "ids reported": 0}
    for trial in range(40):
        path = tmp_path / f"t{trial}" / "buffer.db"
        path.parent.mkdir()
        data = bytearray(pristine)
        at = rng.randrange(len(data))
        data[at] ^= 1 << rng.randrange(8)
        path.write_bytes(bytes(data))
        figures = _judge(path, stream, by_id)
        outcomes["new stream" if figures["new_stream"] else "same stream"] += 1
        outcomes["ids reported"] += figures["reported"]
    print("40 single-bit flips:", outcomes)
