"""Readings out of a buffer file SQLite calls corrupt (placeholder: reports the loss)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agent.buffer import Buffer


def recover_into(buffer: Buffer, moved_aside: str) -> None:
    buffer.commit(events=[{"type": "stream_lost", "file": moved_aside, "ts": buffer_now()}])


def buffer_now() -> int:
    import time

    return time.time_ns() // 1_000_000
