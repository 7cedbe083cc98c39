"""The spool: readings waiting for their commit, kept where a crash cannot take them.

The buffer writer commits once per flush interval (two minutes by default)
because every commit costs the SD card a sync. Until then a poll's readings
live in the agent's memory, and a crash (the OOM killer, the watchdog, a
bug) would lose them. So each hand-over is also appended, packed as it will
be stored, to a file in RAM (``/run/retrofit-agent/`` under systemd, which
keeps it across a restart of the service; ``/dev/shm`` otherwise). Appending
to tmpfs costs no write to the card and no sync. A power cut takes the spool
with it: then the readings of the last flush interval are lost, as
docs/payload.md says, and the buffer reports an unclean stop.

After a commit the spool is emptied. A start finds it empty after a clean
stop; after a crash it holds what the dead process had not committed, and
the writer commits that first. Every record carries a sequence number and
the commit stores the highest one it covers, so a crash between a commit
and the emptying never stores a reading twice.

Format: records ``<length u32><crc32 u32><seq u64><type u8><payload>``; a
torn or damaged record ends the file (nothing after it is trusted).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from agent import logs

_RECORD = struct.Struct("<IIQB")
HEADER, SERIES, READINGS, EXTRAS = b"H"[0], b"S"[0], b"R"[0], b"E"[0]
_READINGS = struct.Struct("<BIqqB")  # kind, count, ts_min, ts_max, mono
MAX_RECORD = 64 << 20


@dataclass(frozen=True)
class Record:
    seq: int
    type: int
    payload: bytes


def path_for(directory: Path, buffer: Path) -> Path:
    """One spool per buffer file (tests run many agents side by side)."""
    digest = hashlib.sha256(str(buffer.absolute()).encode()).hexdigest()[:16]
    return directory / f"retrofit-agent-{digest}.spool"


class Spool:
    def __init__(self, path: Path, stream: str) -> None:
        self.path = path
        self.stream = stream
        self._fd: int | None = None
        self._log = logs.get("spool")
        self.failing = False

    # -- start-up --------------------------------------------------------------------------------
    def leftovers(self) -> list[Record]:
        """What a process before this one appended and did not commit (its own stream only)."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as exc:
            self._log.warning("spool.unreadable", path=str(self.path), error=str(exc))
            return []
        records = list(_parse(data))
        if not records:
            return []
        head = records[0]
        if head.type != HEADER or json.loads(head.payload).get("stream") != self.stream:
            # Another buffer's readings (the file was replaced): their series
            # numbers mean nothing here.
            self._log.warning("spool.other_stream", path=str(self.path), records=len(records) - 1)
            return []
        return records[1:]

    def start(self, seq: int) -> None:
        """Begin this process's spool (the leftovers were taken)."""
        self.reset()
        self.append(seq, HEADER, json.dumps({"stream": self.stream, "version": 1}).encode())

    # -- appending -------------------------------------------------------------------------------
    def append(self, seq: int, kind: int, payload: bytes) -> None:
        """Append one record; a failure is logged once and the spool given up
        until the next commit (the readings are still in memory)."""
        if self.failing:
            return
        record = _RECORD.pack(len(payload), zlib.crc32(payload), seq, kind) + payload
        try:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
            os.write(self._fd, record)
        except OSError as exc:
            self.failing = True
            self._log.warning("spool.write_failed", path=str(self.path), error=str(exc),
                              meaning="a crash before the next commit would lose the readings since the last one")

    def reset(self) -> None:
        """Everything spooled is committed: start empty."""
        try:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
            os.ftruncate(self._fd, 0)
            self.failing = False
        except OSError as exc:
            self.failing = True
            self._log.warning("spool.write_failed", path=str(self.path), error=str(exc))

    def close(self, remove: bool) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if remove:
            try:
                self.path.unlink()
            except OSError:
                pass


def readings_record(kind: int, count: int, ts_min: int, ts_max: int, mono: bool, chunk: bytes) -> bytes:
    return _READINGS.pack(kind, count, ts_min, ts_max, int(mono)) + chunk


def parse_readings(payload: bytes) -> tuple[int, int, int, int, bool, bytes]:
    kind, count, ts_min, ts_max, mono = _READINGS.unpack_from(payload)
    return kind, count, ts_min, ts_max, bool(mono), payload[_READINGS.size:]


def _parse(data: bytes) -> list[Record]:
    out = []
    at = 0
    while at + _RECORD.size <= len(data):
        length, check, seq, kind = _RECORD.unpack_from(data, at)
        start = at + _RECORD.size
        payload = data[start:start + length]
        if length > MAX_RECORD or len(payload) != length or zlib.crc32(payload) != check:
            break  # torn by the crash: nothing after it is trusted
        out.append(Record(seq, kind, payload))
        at = start + length
    return out
