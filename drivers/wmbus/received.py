"""A telegram as a receiver hands it over: bytes from the L-field, plus radio facts."""

from __future__ import annotations

from dataclasses import dataclass

from drivers.wmbus.link import FrameFormat


@dataclass(frozen=True)
class Received:
    """One telegram from a stick or an SDR.

    ``telegram`` starts at the L-field, with block CRCs or without (as the
    receiver delivered it: ``parse_link`` finds out). ``rssi_dbm`` is the
    receiver's signal strength where it reports it in dBm (the sticks,
    calibrated by their maker); ``level`` is an SDR decoder's own signal
    figure, which is not dBm (rtl_wmbus: an uncalibrated magnitude;
    rtl_433: dB below the ADC's full scale, gain-dependent), with
    ``level_scale`` saying which: good for comparing meters heard by the
    same SDR, never with a stick's RSSI, never sent as the ``rssi`` point.
    ``mode`` the radio
    mode it names (T1, C1, S1); ``frame_format`` is set when the receiver
    knows it (C1 format B). ``crcs`` is False when the receiver is known to
    have removed the block CRCs (the sticks do, rtl_433 does): then nothing
    in the telegram is taken for a CRC, which a telegram's last two bytes
    would pass for by chance once in 65,536 (and lose two bytes).
    """

    telegram: bytes
    rssi_dbm: float | None = None
    mode: str | None = None
    frame_format: FrameFormat | None = None
    receiver_timestamp: int | None = None
    level: float | None = None
    level_scale: str | None = None
    crcs: bool | None = None
