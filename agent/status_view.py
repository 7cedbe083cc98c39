"""`retrofit-agent status`: the running daemon's health, for a person over SSH.

The daemon writes a snapshot file every few seconds (atomically); this
module only reads and formats it, so it works without talking to the daemon
and shows the last known state when the daemon is down.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

STALE_AFTER_S = 15.0


def _ago(ms: int | None, now_ms: int) -> str:
    if not ms:
        return "never"
    seconds = max(0, (now_ms - ms) // 1000)
    if seconds < 120:
        return f"{seconds} s ago"
    if seconds < 7200:
        return f"{seconds // 60} min ago"
    return f"{seconds // 3600} h ago"


def render(snapshot: dict[str, Any], now_ms: int | None = None) -> tuple[str, bool]:
    """The text for a person, and whether the daemon looks alive."""
    now = now_ms if now_ms is not None else time.time_ns() // 1_000_000
    age_s = (now - int(snapshot.get("ts", 0))) / 1000
    stopped = snapshot.get("state") == "stopped"
    alive = not stopped and age_s < STALE_AFTER_S
    head = "running" if alive else ("stopped" if stopped else f"NOT RUNNING? snapshot is {age_s:.0f} s old")
    uplink = snapshot.get("uplink", {})
    buffer = snapshot.get("buffer", {})
    clock = snapshot.get("clock_synchronised")
    lines = [
        f"retrofit-agent: {head} (up {snapshot.get('uptime_s', 0):.0f} s)",
        f"uplink: {'connected' if uplink.get('connected') else 'DISCONNECTED'}, last ack "
        f"{_ago(uplink.get('last_ack_ms'), now)}, {uplink.get('readings_acked', 0)} readings acked, "
        f"{uplink.get('reconnects', 0)} reconnects" + (f", last error: {uplink['last_error']}"
                                                        if uplink.get("last_error") else ""),
        f"buffer: {buffer.get('depth', 0)} waiting, oldest {buffer.get('oldest_age_s', 0):.0f} s old, "
        f"{buffer.get('bytes', 0) / 1e6:.1f} MB on disk, evicted {buffer.get('evicted_total', 0)}"
        + (", WRITES FAILING" if buffer.get("write_failing") else ""),
        f"clock: {'synchronised' if clock else ('NOT synchronised' if clock is False else 'unknown')}",
    ]
    if snapshot.get("stalled"):
        lines.append(f"STUCK: {', '.join(snapshot['stalled'])}")
    lines.append(f"{'device':16} {'bus':12} {'state':8} {'last good read':15} {'polls':>6} {'failures':>8}  last error")
    for name, device in snapshot.get("devices", {}).items():
        lines.append(
            f"{name:16} {device.get('bus', ''):12} {device.get('state', '?'):8} "
            f"{_ago(device.get('last_ok_ms'), now):15} {device.get('polls', 0):>6} {device.get('failures', 0):>8}  "
            f"{device.get('last_error', '') if device.get('state') != 'ok' else ''}")
    return "\n".join(lines), alive


def read_snapshot(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))
