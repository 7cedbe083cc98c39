"""A telegram as a receiver hands it over: bytes from the L-field, plus radio facts."""

from __future__ import annotations

from dataclasses import dataclass

from drivers.wmbus.link import FrameFormat


@dataclass(frozen=True)
class Received:
    """One telegram from a stick or an SDR.

    ``telegram`` starts at the L-field, with block CRCs or without (as the
    receiver delivered it: ``parse_link`` finds out). ``rssi_dbm`` is the
    receiver's signal strength where it reports one; ``mode`` the radio
    mode it names (T1, C1, S1); ``frame_format`` is set when the receiver
    knows it (C1 format B).
    """

    telegram: bytes
    rssi_dbm: float | None = None
    mode: str | None = None
    frame_format: FrameFormat | None = None
    receiver_timestamp: int | None = None
