"""`retrofit-agent status`: the running daemon's health, for a person over SSH.

The daemon writes a snapshot file every few seconds (atomically); this
module only reads and formats it, so it works without talking to the daemon
and shows the last known state when the daemon is down.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

STALE_AFTER_S = 15.0
SHORT = 12  # hex digits of a SHA-256 shown (agent/fingerprint.py)


def _ago(ms: int | None, now_ms: int) -> str:
    if not ms:
        return "never"
    seconds = max(0, (now_ms - ms) // 1000)
    if seconds < 120:
        return f"{seconds} s ago"
    if seconds < 7200:
        return f"{seconds // 60} min ago"
    return f"{seconds // 3600} h ago"


def _mapping(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def explain_clock(flag: Path, use_timedatectl: bool) -> str:
    """Why nothing on this machine tells whether the clock is synchronised,
    found the way the agent looks (agent/clock.py): the flag file
    systemd-timesyncd writes, then `timedatectl`."""
    if not use_timedatectl:
        asked = "timedatectl switched off (health.use_timedatectl: false)"
    elif shutil.which("timedatectl") is None:
        asked = "timedatectl not available"
    else:
        asked = "timedatectl gave no answer (no systemd?)"
    flag_state = f"no flag file {flag}" if not flag.exists() else f"flag file {flag} present"
    return f"{asked} and {flag_state}; readings carry the wall clock as it is, unflagged"


def render(snapshot: dict[str, Any], now_ms: int | None = None, clock_unknown: str = "") -> tuple[str, bool]:
    """The text for a person, and whether the daemon looks alive.
    ``clock_unknown`` says why the clock's state is unknown, when it is."""
    now = now_ms if now_ms is not None else time.time_ns() // 1_000_000
    age_s = (now - int(snapshot.get("ts", 0))) / 1000
    stopped = snapshot.get("state") == "stopped"
    alive = not stopped and age_s < STALE_AFTER_S
    head = "running" if alive else ("stopped" if stopped else f"NOT RUNNING? snapshot is {age_s:.0f} s old")
    uplink = _mapping(snapshot.get("uplink"))
    buffer = _mapping(snapshot.get("buffer"))
    clock = snapshot.get("clock_synchronised")
    if clock:
        clock_text = "synchronised"
    elif clock is False:
        clock_text = "NOT synchronised: readings are flagged and re-stamped once NTP has synchronised"
    else:
        clock_text = "unknown" + (f": {clock_unknown}" if clock_unknown else "")
    connected = bool(uplink.get("connected"))
    # An error from before the connection was made again is history, not news.
    last_error = "" if connected or not uplink.get("last_error") else f", last error: {uplink['last_error']}"
    lines = [
        f"retrofit-agent: {head} (up {float(snapshot.get('uptime_s', 0)):.0f} s)",
        (f"uplink: {'connected' if connected else 'DISCONNECTED'}, last ack "
         f"{_ago(uplink.get('last_ack_ms'), now)}, {uplink.get('readings_acked', 0)} readings acked, "
         f"{uplink.get('reconnects', 0)} reconnects{last_error}"),
        (f"buffer: {buffer.get('depth', 0)} waiting, oldest {float(buffer.get('oldest_age_s', 0)):.0f} s old, "
         f"{float(buffer.get('bytes', 0)) / 1e6:.1f} MB on disk, evicted {buffer.get('evicted_total', 0)}"
         + (", WRITES FAILING" if buffer.get("write_failing") else "")),
        f"clock: {clock_text}",
        *_running_lines(snapshot, now),
    ]
    if snapshot.get("stalled"):
        lines.append(f"STUCK: {', '.join(map(str, snapshot['stalled']))}")
    lines.append(f"{'device':16} {'bus':12} {'state':8} {'last good read':15} {'polls':>6} {'failures':>8}  last error")
    for name, value in _mapping(snapshot.get("devices")).items():
        device = _mapping(value)
        lines.append(
            f"{name:16} {device.get('bus', ''):12} {device.get('state', '?'):8} "
            f"{_ago(device.get('last_ok_ms'), now):15} {device.get('polls', 0):>6} {device.get('failures', 0):>8}  "
            f"{device.get('last_error', '') if device.get('state') != 'ok' else ''}")
    return "\n".join(lines), alive


def _running_lines(snapshot: dict[str, Any], now_ms: int) -> list[str]:
    """Which code, config and profiles run, and what remote configuration did last."""
    config = _mapping(snapshot.get("config"))
    if not config:
        return []  # a snapshot of an older version
    profiles = _mapping(snapshot.get("profiles"))
    pushed = config.get("pushed_version")
    source = f"pushed version {pushed}" if config.get("source") == "pushed" else "local"
    lines = [
        f"version: {snapshot.get('version', '?')}",
        f"config: {config.get('path', '?')} ({source}), sha256 {str(config.get('sha256', ''))[:SHORT]}",
        (f"profiles: {', '.join(map(str, profiles.get('names') or [])) or 'none'}, "
         f"sha256 {str(profiles.get('sha256', ''))[:SHORT]}"),
    ]
    remote = _mapping(config.get("remote"))
    if not remote.get("enabled"):
        return lines
    if remote.get("subscription_refused"):
        lines.append(f"remote config: the broker REFUSED the subscription ({remote['subscription_refused']}): "
                     "pushed configs never arrive; check its ACL")
    trying = _mapping(remote.get("trying"))
    if trying:
        lines.append(f"remote config: TRYING pushed version {trying.get('version')}: it must bring the uplink and "
                     f"every bus up within {float(trying.get('until_s', 0)):.0f} s, or the config before it returns")
    else:
        in_force = remote.get("in_force") or 0
        lines.append("remote config: on; " + (f"pushed version {in_force} in force" if in_force and pushed
                                              else "the local file in force"))
    last = _mapping(remote.get("last"))
    if last:
        reasons = "; ".join(map(str, last.get("reasons") or []))
        lines.append(f"  last: version {last.get('version')} {str(last.get('state', '?')).upper()} "
                     f"{_ago(last.get('ts'), now_ms)}" + (f": {reasons}" if reasons else ""))
    return lines


def read_snapshot(path: Path) -> dict[str, Any]:
    """The snapshot, checked against the shape :func:`render` reads; ValueError
    names the first value that does not fit (a file written by hand, by
    another version, or half by a full disk)."""
    try:
        snapshot = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError(f"not a status snapshot (not UTF-8 text at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"not a status snapshot (not JSON: {exc.msg}, line {exc.lineno})") from None
    problem = _misfit(snapshot, _SNAPSHOT, "")
    if problem or not isinstance(snapshot, dict):
        raise ValueError(f"not a status snapshot of this version ({problem or 'not a JSON object'})")
    return snapshot


_NUMBER = (int, float)
_OPTIONAL_INT = (int, type(None))
_OPTIONAL_TEXT = (str, type(None))
# key -> the types render() can format; a nested dict is a section, checked in turn.
_DEVICE: dict[str, Any] = {"bus": str, "state": str, "last_ok_ms": _OPTIONAL_INT, "polls": int,
                           "failures": int, "last_error": _OPTIONAL_TEXT}
_SNAPSHOT: dict[str, Any] = {
    "ts": _NUMBER, "uptime_s": _NUMBER, "state": str, "clock_synchronised": (bool, type(None)),
    "stalled": list,
    "uplink": {"connected": bool, "last_ack_ms": _OPTIONAL_INT, "readings_acked": int, "reconnects": int,
               "last_error": _OPTIONAL_TEXT},
    "buffer": {"depth": int, "oldest_age_s": _NUMBER, "bytes": int, "evicted_total": int,
               "write_failing": bool},
    "devices": {"*": _DEVICE},
    "version": str,
    "config": {"sha256": str, "path": str, "source": str, "pushed_version": _OPTIONAL_INT,
               "remote": {"enabled": bool, "in_force": int, "trying": (dict, type(None)),
                          "last": (dict, type(None)), "subscription_refused": _OPTIONAL_TEXT}},
    "profiles": {"names": list, "sha256": str},
}


def _misfit(value: Any, shape: dict[str, Any], where: str) -> str | None:
    """The first key whose value render() could not format (missing keys are fine)."""
    if not isinstance(value, dict):
        return f"{where or 'the top level'} is {_kind(value)}, not a mapping"
    for key, expected in (((k, shape["*"]) for k in value) if "*" in shape else shape.items()):
        if key not in value:
            continue
        path = f"{where}.{key}" if where else str(key)
        if isinstance(expected, dict):
            problem = _misfit(value[key], expected, path)
            if problem:
                return problem
        elif not _fits(value[key], expected if isinstance(expected, tuple) else (expected,)):
            return f"{path} is {_kind(value[key])}"
    if "stalled" in shape and any(not isinstance(name, str) for name in value.get("stalled", [])):
        return "stalled holds something other than names"
    return None


def _fits(value: Any, types: tuple[type, ...]) -> bool:
    if isinstance(value, bool):  # JSON's true is no count
        return bool in types
    return isinstance(value, types)


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "text", bool: "true/false", type(None): "null"}.get(
        type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__)
