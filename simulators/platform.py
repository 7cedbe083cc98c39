"""`retrofit-sim platform`: a simulated city-platform ingest.

It does what the platform team does with the payload contract
(docs/payload.md) and nothing more: subscribe, deduplicate on (stream, id),
prove completeness from the contiguous ids (a missing id is either inside an
``evicted`` range the gateway reported, or unexplained), count flagged
readings, turn counter readings into energy per day (never across a reset,
a swap or a suspicious reading; across a rollover with the register width),
and normalise heat by heating degree days before and after the retrofit.

Where it needs what a real platform would get from elsewhere, it reads the
building's metadata file (meta.json from `retrofit-sim building`): the
outdoor temperature as degree days per day (a weather service), the mapping
from wall time to the building's simulated time (the acceleration), the
retrofit date, and the simulator's true energy, to print beside what it
measured. Measured figures use only the forwarded readings.

In-process use:

    ingest = PlatformIngest(port=18830, meta_path=Path("/tmp/retrofit-building/meta.json")).start()
    report = ingest.report(); print(ingest.render(report))
    ingest.write_summary(Path("summary")); ingest.plot(Path("summary.png")); ingest.stop()
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import math
import threading
import traceback
import zlib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from drivers.core.errors import RetrofitError
from simulators.platform_store import PlatformStore

DAY_S = 86_400
# Two readings further apart than this are not joined: what the counter rose
# by between them is not spread over the days in between (they had no
# reading; a jump of any size would land on them as consumption). The
# series starts again at the later reading, and those days stay incomplete.
MAX_GAP_S = DAY_S
ENERGY_UNITS = {"Wh": 0.001, "kWh": 1.0, "MWh": 1000.0}
BREAK_FLAGS = {"counter_backwards", "counter_jump"}
SUMMARY_SCHEMA = "retrofit-sim/platform-summary/1"


# ---------------------------------------------------------------- counters -> energy per day

@dataclass
class CounterSeries:
    """One counter's readings turned into continuous segments of consumption.

    ``segments`` hold (simulated t, consumption since the segment began);
    between two segments the consumption is unknown (a reset, a swap, a
    reading flagged suspicious that the series then moved to).
    """

    segments: list[list[tuple[float, float]]] = field(default_factory=list)
    breaks: int = 0
    rollovers: int = 0
    dropped: int = 0  # suspicious readings the series did not move to (garbage)
    gaps: int = 0  # silences longer than MAX_GAP_S: the series starts again after each


def wrap_width(previous: float, value: float) -> float:
    """The register width a counter wrapped at: the smallest 2^16 or 2^32
    times a decimal resolution above the last value (the payload does not
    carry the register type; real counters wrap at these)."""
    candidates = sorted(2.0 ** bits * 10.0 ** exp for bits in (16, 32, 48, 64) for exp in range(-4, 4))
    for width in candidates:
        if width > previous and width - previous + value >= 0:
            return width
    return previous


def counter_series(readings: Iterable[tuple[float, float | None, str]], max_gap: float = MAX_GAP_S) -> CounterSeries:
    """Readings (t, value, quality) in time order -> segments, following the
    rules of docs/payload.md for each quality flag; a silence longer than
    ``max_gap`` ends a segment too (see MAX_GAP_S)."""
    series = CounterSeries()
    current: list[tuple[float, float]] | None = None
    prev: tuple[float, float] | None = None  # last accepted (t, raw value)
    unwrapped = 0.0  # consumption of the current segment at ``prev``
    candidate: tuple[float, float] | None = None
    last_t: float | None = None  # the last reading of any kind
    for t, value, quality in readings:
        if value is None:
            continue
        flags = set(quality.split("+"))
        gap = last_t is not None and t - last_t > max_gap
        last_t = t
        if prev is None or current is None or "meter_swap" in flags or gap:
            if gap:
                series.gaps += 1
            elif current is not None:
                series.breaks += 1
            current = [(t, 0.0)]
            series.segments.append(current)
            prev, unwrapped, candidate = (t, value), 0.0, None
            continue
        if flags & BREAK_FLAGS:
            if candidate is not None:
                series.dropped += 1
            candidate = (t, value)
            continue
        if "counter_rollover" in flags and value < prev[1]:
            unwrapped += wrap_width(prev[1], value) - prev[1] + value
            series.rollovers += 1
        elif candidate is not None and (value < prev[1] or (candidate[1] > prev[1] and value >= candidate[1])):
            # The series moved to the suspicious value: unknown consumption in between.
            series.breaks += 1
            current = [(candidate[0], 0.0)]
            series.segments.append(current)
            unwrapped = value - candidate[1]
        elif value >= prev[1]:
            if candidate is not None:
                series.dropped += 1
            unwrapped += value - prev[1]
        else:  # backwards without a flag (another agent version?): never count it
            series.breaks += 1
            current = [(t, 0.0)]
            series.segments.append(current)
            unwrapped = 0.0
        candidate = None
        prev = (t, value)
        current.append((t, unwrapped))
    return series


def daily_energy(series: CounterSeries) -> tuple[dict[int, float], dict[int, float]]:
    """Consumption per day (by day index t // 86400) and the seconds of each day
    that a segment covers; an increase between two readings is spread over
    the time between them, across midnight where it falls."""
    energy: dict[int, float] = {}
    covered: dict[int, float] = {}
    for segment in series.segments:
        for (t1, c1), (t2, c2) in itertools.pairwise(segment):
            if t2 <= t1:
                continue
            rate = (c2 - c1) / (t2 - t1)
            t = t1
            while t < t2:
                day = math.floor(t / DAY_S)
                end = min(t2, (day + 1) * DAY_S)
                energy[day] = energy.get(day, 0.0) + rate * (end - t)
                covered[day] = covered.get(day, 0.0) + (end - t)
                t = end
    return energy, covered


def _now_ms() -> int:
    return int(dt.datetime.now(dt.UTC).timestamp() * 1000)


def day_iso(day: int) -> str:
    return dt.datetime.fromtimestamp(day * DAY_S, dt.UTC).strftime("%Y-%m-%d")


# ---------------------------------------------------------------- the ingest

@dataclass
class StreamState:
    readings: dict[int, dict[str, Any]] = field(default_factory=dict)
    evicted: list[tuple[int, int]] = field(default_factory=list)
    duplicates: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)
    gateway: str = ""
    site: str = ""


class PlatformIngest:
    """Subscribes to ``{prefix}/#`` and keeps what the platform received."""

    def __init__(self, host: str = "127.0.0.1", port: int = 1883, topic_prefix: str = "buildings",
                 meta_path: Path | None = None, client_id: str = "retrofit-sim-platform",
                 store: Path | None = None) -> None:
        self.host, self.port, self.topic_prefix = host, port, topic_prefix
        self.meta_path = meta_path
        # What arrives is also written here, for `retrofit-sim verify` (simulators/platform_store.py).
        self.store = PlatformStore(store) if store is not None else None
        self.streams: dict[str, StreamState] = {}
        self.series_meta: dict[str, dict[str, Any]] = {}  # compact schema: stream -> meta message
        self.status: dict[str, dict[str, Any]] = {}
        self.fleet = Fleet()
        self.messages = 0
        self.undecodable = 0
        self.failure: str | None = None  # why a message could not be taken in (see check())
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        self._client.on_connect = lambda c, *_: c.subscribe(f"{topic_prefix}/#", qos=1)
        self._client.on_subscribe = lambda *_: self._subscribed.set()
        self._client.on_message = self._on_message

    # -- MQTT
    def start(self, timeout: float = 10.0) -> PlatformIngest:
        try:
            self._client.connect(self.host, self.port, keepalive=30)
        except OSError as exc:
            raise RetrofitError(f"platform: cannot connect to the broker {self.host}:{self.port}: {exc}") from None
        self._client.loop_start()
        if not self._subscribed.wait(timeout):
            self.stop()
            raise RetrofitError(f"platform: no subscription at {self.host}:{self.port} within {timeout:g} s")
        return self

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
        if self.store is not None:
            self.store.close()

    def _on_message(self, _client: mqtt.Client, _userdata: object, message: mqtt.MQTTMessage) -> None:
        # An exception here would end paho's network thread, and the platform
        # would stand still without a word: record it for check() instead.
        try:
            self.ingest(message.topic, bytes(message.payload))
        except Exception as exc:  # noqa: BLE001 - reported by check(), which ends the command
            self.failure = (f"{type(exc).__name__}: {exc} on {message.topic} "
                            f"({traceback.extract_tb(exc.__traceback__)[-1].line!s})")

    def check(self) -> None:
        """Raise when a message could not be taken in: the figures would be wrong from then on."""
        if self.failure is not None:
            raise RetrofitError(f"platform: the ingest stopped: {self.failure}")

    def ingest(self, topic: str, payload: bytes) -> None:
        """One MQTT message (also callable directly, e.g. from a recording)."""
        kind = topic.rsplit("/", 1)[-1]
        try:
            if payload[:1] == b"\x78":
                payload = zlib.decompress(payload)
            body = json.loads(payload) if payload else None
        except (ValueError, zlib.error):
            with self._lock:
                self.undecodable += 1
            return
        if not isinstance(body, dict):
            return
        with self._lock:
            if kind == "status":
                self.status[topic] = body
                if self.store is not None:
                    self.store.put_status(topic, body)
                self.fleet.status(topic, body, _now_ms())
            elif kind == "state" and topic.endswith("/config/state"):
                self.fleet.config_state(topic, body)
            elif kind == "meta" or topic.rsplit("/", 2)[-2:-1] == ["meta"]:  # .../meta and its parts .../meta/n
                self.series_meta[str(body.get("stream"))] = body
                if self.store is not None:
                    self.store.put_meta(str(body.get("stream")), body)
            elif kind == "events":
                self._events(body)
            elif kind == "readings":
                self.messages += 1
                self._readings(body)

    def _stream(self, body: Mapping[str, Any]) -> StreamState:
        state = self.streams.setdefault(str(body.get("stream")), StreamState())
        state.gateway, state.site = str(body.get("gateway", state.gateway)), str(body.get("site", state.site))
        return state

    def _readings(self, body: Mapping[str, Any]) -> None:
        if "groups" in body:
            from agent.payload import decode_compact

            meta = self.series_meta.get(str(body.get("stream")))
            if meta is None:
                self.undecodable += 1
                return
            readings = decode_compact(json.dumps(body).encode(), meta)
        else:
            readings = body.get("readings", [])
        state = self._stream(body)
        for reading in readings:
            if reading["id"] in state.readings:
                state.duplicates += 1
            else:
                state.readings[reading["id"]] = reading
        if self.store is not None:
            self.store.add_readings(str(body.get("stream")), state.gateway, state.site, readings)

    def _events(self, body: Mapping[str, Any]) -> None:
        state = self._stream(body)
        for event in body.get("events", []):
            if event in state.events:
                continue  # at least once: a report may come twice
            state.events.append(event)
            if event.get("type") in ("evicted", "corrupt"):  # ids of this stream, explained
                state.evicted.append((int(event["first_id"]), int(event["last_id"])))
            elif event.get("type") in ("lost", "salvaged") and event.get("from_first_id") is not None:
                # ids of an earlier stream (a damaged buffer): lost, or sent again under this one
                old = self.streams.setdefault(str(event.get("from_stream")), StreamState())
                old.evicted.append((int(event["from_first_id"]), int(event["from_last_id"])))
        if self.store is not None:
            self.store.add_events(str(body.get("stream")), body.get("events", []))

    # -- views
    def readings(self) -> list[dict[str, Any]]:
        with self._lock:
            return [r for state in self.streams.values() for r in state.readings.values()]

    def received(self) -> int:
        with self._lock:
            return sum(len(s.readings) for s in self.streams.values())

    def load_meta(self) -> dict[str, Any] | None:
        if self.meta_path is None:
            return None
        try:
            return json.loads(self.meta_path.read_text())
        except (OSError, ValueError):
            return None

    def report(self) -> dict[str, Any]:
        """Everything the summary says, as plain data."""
        meta = self.load_meta()
        with self._lock:
            streams = {sid: (dict(s.readings), list(s.evicted), s.duplicates, list(s.events))
                       for sid, s in self.streams.items()}
            status = {t: b.get("state") for t, b in self.status.items()}
            fleet = self.fleet.rows()
            messages, undecodable = self.messages, self.undecodable
        out: dict[str, Any] = {"schema": SUMMARY_SCHEMA, "messages": messages, "undecodable": undecodable,
                               "agents": status, "fleet": fleet, "streams": {}, "quality": {}, "readings": 0,
                               "duplicates": 0}
        quality: Counter[str] = Counter()
        everything: list[dict[str, Any]] = []
        for sid, (readings, evicted, duplicates, events) in streams.items():
            out["streams"][sid] = completeness(readings, evicted, duplicates)
            out["streams"][sid]["events"] = Counter(e.get("type", "?") for e in events)
            quality.update(r["quality"] for r in readings.values())
            everything.extend(readings.values())
            out["readings"] += len(readings)
            out["duplicates"] += duplicates
        out["quality"] = dict(sorted(quality.items()))
        latest: dict[str, dict[str, Any]] = {}
        for reading in sorted(everything, key=lambda r: r["id"]):
            latest.setdefault(reading["device"], {})[reading["point"]] = [reading["value"], reading["unit"]]
        out["latest"] = dict(sorted(latest.items()))
        out.update(energy_report(everything, meta))
        return out

    def render(self, report: Mapping[str, Any] | None = None) -> str:
        return render(report if report is not None else self.report())

    def fleet_rows(self) -> list[dict[str, Any]]:
        with self._lock:
            return self.fleet.rows()

    def write_summary(self, path: Path, report: Mapping[str, Any] | None = None) -> tuple[Path, Path]:
        """``path``.json and ``path``.txt (a .json or .txt suffix on ``path`` is replaced)."""
        report = report if report is not None else self.report()
        base = path.with_suffix("") if path.suffix in (".json", ".txt") else path
        json_path, text_path = base.with_name(base.name + ".json"), base.with_name(base.name + ".txt")
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report, indent=1, default=str))
        text_path.write_text(render(report) + "\n")
        return json_path, text_path

    def plot(self, path: Path, report: Mapping[str, Any] | None = None) -> bool:
        """A PNG of heat per degree day per day, before and after the retrofit;
        False when matplotlib is not installed (it is not a dependency)."""
        return plot(report if report is not None else self.report(), path)


def completeness(readings: Mapping[int, Any], evicted: Sequence[tuple[int, int]], duplicates: int) -> dict[str, Any]:
    if not readings:
        return {"received": 0, "duplicates": duplicates, "complete_pct": 0.0, "missing": 0, "unexplained": 0}
    first, last = min(readings), max(readings)
    missing = [i for i in range(first, last + 1) if i not in readings]
    unexplained = [i for i in missing if not any(a <= i <= b for a, b in evicted)]
    span = last - first + 1
    return {"first_id": first, "last_id": last, "received": len(readings), "duplicates": duplicates,
            "missing": len(missing), "missing_ranges": _ranges(missing)[:20],
            "evicted_ranges": [list(r) for r in evicted], "unexplained": len(unexplained),
            "unexplained_ranges": _ranges(unexplained)[:20],
            "complete_pct": round(100.0 * len(readings) / span, 3),
            "accounted_pct": round(100.0 * (span - len(unexplained)) / span, 3)}


def _ranges(ids: Sequence[int]) -> list[list[int]]:
    out: list[list[int]] = []
    for i in ids:
        if out and out[-1][1] == i - 1:
            out[-1][1] = i
        else:
            out.append([i, i])
    return out


# ---------------------------------------------------------------- the fleet

@dataclass
class GatewaySeen:
    """What the platform knows of one gateway, from its retained status."""

    site: str
    gateway: str
    state: str = "?"
    # online: since the agent's process started (its status's ts minus uptime);
    # offline: since the platform heard so (None: already offline when first heard).
    since_ms: int | None = None
    heard_ms: int = 0
    figures: dict[str, Any] = field(default_factory=dict)  # the last online status
    config_state: dict[str, Any] = field(default_factory=dict)  # the last config/state message


class Fleet:
    """Every gateway heard under the prefix, keyed by (site, gateway)."""

    def __init__(self) -> None:
        self.gateways: dict[tuple[str, str], GatewaySeen] = {}

    def _seen(self, topic: str) -> GatewaySeen | None:
        parts = topic.split("/")
        if len(parts) < 3:
            return None
        site, gateway = (parts[-4], parts[-3]) if parts[-2] == "config" else (parts[-3], parts[-2])
        return self.gateways.setdefault((site, gateway), GatewaySeen(site, gateway))

    def status(self, topic: str, body: Mapping[str, Any], received_ms: int) -> None:
        seen = self._seen(topic)
        if seen is None:
            return
        state = str(body.get("state", "?"))
        if state == "online":
            ts = int(body.get("ts") or received_ms)
            seen.since_ms = ts - int(float(body.get("uptime_s") or 0) * 1000)
            seen.figures = dict(body)
        elif state != seen.state:
            # A retained offline status heard first says nothing of when.
            seen.since_ms = received_ms if seen.state != "?" else None
        seen.state = state
        seen.heard_ms = received_ms

    def config_state(self, topic: str, body: Mapping[str, Any]) -> None:
        seen = self._seen(topic)
        if seen is not None:
            seen.config_state = dict(body)

    def rows(self) -> list[dict[str, Any]]:
        """One plain row per gateway, sorted by site and gateway."""
        return [fleet_row(seen) for _, seen in sorted(self.gateways.items())]


def fleet_row(seen: GatewaySeen) -> dict[str, Any]:
    figures = seen.figures
    config = figures.get("config") or {}
    buffer = figures.get("buffer") or {}
    devices = figures.get("devices") or {}
    by_state = figures.get("devices_by_state")  # a status trimmed to fit the broker's limit
    if isinstance(by_state, dict):
        silent_list = by_state.get("silent", [])
        silent: list[str] | int = silent_list if isinstance(silent_list, list) else int(silent_list or 0)
        total = sum(len(v) if isinstance(v, list) else int(v) for v in by_state.values())
    else:
        silent = sorted(name for name, d in devices.items() if d.get("state") == "silent")
        total = len(devices)
    depth = buffer.get("depth")
    oldest_ms = (int(figures["ts"]) - int(float(buffer.get("oldest_age_s") or 0) * 1000)
                 if depth and figures.get("ts") else None)
    synchronised = figures.get("clock_synchronised")
    result = seen.config_state
    return {
        "site": seen.site, "gateway": seen.gateway, "state": seen.state, "since_ms": seen.since_ms,
        "version": figures.get("version"), "config_sha256": config.get("sha256"),
        "config_source": config.get("source"), "pushed_version": config.get("pushed_version"),
        "profiles_sha256": (figures.get("profiles") or {}).get("sha256"),
        "buffer_depth": depth, "oldest_unsent_ms": oldest_ms,
        "clock": ("synchronised" if synchronised else "NOT synchronised" if synchronised is False
                  else "unknown" if "clock_synchronised" in figures else None),
        "devices": total, "silent": silent,
        "remote_result": ({"version": result.get("version"), "state": result.get("state"),
                           "reasons": result.get("reasons", [])} if result else None),
        "heard_ms": seen.heard_ms,
    }


def _clock_time(ms: int | None) -> str:
    if ms is None:
        return "?"
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%H:%M:%S")


def render_fleet(rows: Sequence[Mapping[str, Any]], now_ms: int | None = None) -> str:
    """The fleet as an operator reads it: one line per gateway."""
    import time

    now = now_ms if now_ms is not None else time.time_ns() // 1_000_000
    online = sum(1 for r in rows if r["state"] == "online")
    lines = [f"fleet: {len(rows)} gateway(s), {online} online, {len(rows) - online} offline or unknown",
             (f"{'site/gateway':28} {'state':7} {'since':8} {'version':14} {'config':18} {'buffer':>6} "
             f"{'oldest unsent':>13} {'clock':16} {'silent':>7}  remote config")]
    for row in rows:
        since = _clock_time(row["since_ms"]) if row["since_ms"] else ("before" if row["state"] != "?" else "?")
        source = f"pushed v{row['pushed_version']}" if row["config_source"] == "pushed" else "local"
        config = f"{(row['config_sha256'] or '?')[:8]} {source}" if row["config_sha256"] else "?"
        oldest = f"{(now - row['oldest_unsent_ms']) // 1000} s" if row["oldest_unsent_ms"] else "-"
        silent = row["silent"]
        silent_text = (f"{len(silent)}/{row['devices']}" if isinstance(silent, list) else f"{silent}/{row['devices']}")
        result = row["remote_result"]
        remote = f"v{result['version']} {result['state']}" if result else ""
        depth = row["buffer_depth"] if row["buffer_depth"] is not None else "?"
        lines.append(f"{row['site'] + '/' + row['gateway']:28.28} {row['state']:7} {since:8} "
                     f"{row['version'] or '?':14.14} {config:18} {depth!s:>6} {oldest:>13} "
                     f"{row['clock'] or '?':16} {silent_text:>7}  {remote}")
    return "\n".join(lines)


# ---------------------------------------------------------------- energy, degree days, saving

def _clock(meta: Mapping[str, Any] | None) -> tuple[float, float, float]:
    """(wall start s, simulated start s, acceleration): real time when no building is known."""
    if not meta:
        return 0.0, 0.0, 1.0
    return meta["wall_start_ms"] / 1000, float(meta["sim_start"]), float(meta["acceleration"])


def energy_report(readings: Sequence[Mapping[str, Any]], meta: Mapping[str, Any] | None) -> dict[str, Any]:
    """Energy per day of every counter. With the building's metadata, a
    reading stamped before the building started is none of its readings (an
    earlier run's, sent late from a buffer that outlived it): it is counted
    under ``before_start`` and left out, never placed on the building's days."""
    wall0, sim0, accel = _clock(meta)
    by_series: dict[tuple[str, str], list[tuple[float, float | None, str, int]]] = {}
    factors: dict[tuple[str, str], float] = {}
    before_start = 0
    for r in readings:
        factor = ENERGY_UNITS.get(r["unit"])
        if factor is None:
            continue
        if meta and r["ts"] < meta["wall_start_ms"]:
            before_start += 1
            continue
        key = (r["device"], r["point"])
        factors[key] = factor
        t = sim0 + (r["ts"] / 1000 - wall0) * accel
        by_series.setdefault(key, []).append((t, r["value"], r["quality"], r["id"]))
    meters: dict[str, Any] = {}
    complete_days: dict[str, set[int]] = {}
    for key, rows in sorted(by_series.items()):
        rows.sort(key=lambda row: (row[0], row[3]))
        series = counter_series((t, v, q) for t, v, q, _ in rows)
        energy, covered = daily_energy(series)
        full = {d for d, seconds in covered.items() if seconds >= DAY_S - 1e-6}
        name = f"{key[0]}/{key[1]}"
        complete_days[name] = full
        meters[name] = {
            "device": key[0], "point": key[1], "unit": "kWh", "breaks": series.breaks,
            "rollovers": series.rollovers, "dropped": series.dropped, "gaps": series.gaps,
            "days": {day_iso(d): round(energy[d] * factors[key], 6) for d in sorted(energy)},
            "complete_days": [day_iso(d) for d in sorted(full)],
        }
    out: dict[str, Any] = {"time": "simulated (building metadata)" if meta else "wall clock (UTC)",
                           "energy": meters, "before_start": before_start}
    if meta:
        out["heat"] = heat_saving(meters, complete_days, meta)
        out["building"] = {"name": meta.get("name"), "sim_now": meta.get("sim_now_iso"),
                           "retrofit": meta.get("retrofit"), "events": meta.get("events", [])}
    return out


def heat_saving(meters: Mapping[str, Any], complete_days: Mapping[str, set[int]],
                meta: Mapping[str, Any]) -> dict[str, Any]:
    """Heat per heating degree day before and after the retrofit, measured
    from the forwarded counters and true from the simulator, on the same days."""
    retrofit = meta.get("retrofit")
    days = {d["date"]: d for d in meta.get("days", [])}
    heat_devices = [d for d, info in meta.get("devices", {}).items() if info.get("model") == "heat"]
    results: dict[str, Any] = {}
    per_meter_days: dict[str, list[str]] = {}
    for device in heat_devices:
        name = f"{device}/energy_heat"
        if name not in meters:
            continue
        usable = [day_iso(d) for d in sorted(complete_days.get(name, ())) if day_iso(d) in days]
        per_meter_days[device] = usable
        results[device] = _saving(usable, {day: meters[name]["days"][day] for day in usable},
                                  {day: days[day]["energy_kwh"][device] for day in usable}, days, retrofit)
    if len(per_meter_days) > 1:
        common = sorted(set.intersection(*(set(v) for v in per_meter_days.values())))
        measured = {day: sum(meters[f"{d}/energy_heat"]["days"][day] for d in per_meter_days) for day in common}
        true = {day: sum(days[day]["energy_kwh"][d] for d in per_meter_days) for day in common}
        results["building"] = _saving(common, measured, true, days, retrofit)
    return results


def _saving(usable: Sequence[str], measured: Mapping[str, float], true: Mapping[str, float],
            days: Mapping[str, Mapping[str, Any]], retrofit: Mapping[str, Any] | None) -> dict[str, Any]:
    at = retrofit["at"] if retrofit else math.inf
    periods: dict[str, list[str]] = {"before": [], "after": []}
    for day in usable:
        start = days[day]["start"]
        if start + DAY_S <= at:
            periods["before"].append(day)
        elif start >= at:
            periods["after"].append(day)
    out: dict[str, Any] = {}
    for period, chosen in periods.items():
        hdd = sum(days[d]["hdd"] for d in chosen)
        kwh_m, kwh_t = sum(measured[d] for d in chosen), sum(true[d] for d in chosen)
        out[period] = {"days": len(chosen), "first": chosen[0] if chosen else None,
                       "last": chosen[-1] if chosen else None, "hdd": round(hdd, 3),
                       "kwh_measured": round(kwh_m, 3), "kwh_true": round(kwh_t, 3),
                       "kwh_per_hdd_measured": round(kwh_m / hdd, 4) if hdd else None,
                       "kwh_per_hdd_true": round(kwh_t / hdd, 4) if hdd else None}
    before, after = out["before"], out["after"]
    if before["kwh_per_hdd_measured"] and after["kwh_per_hdd_measured"] is not None:
        measured_saving = 1 - after["kwh_per_hdd_measured"] / before["kwh_per_hdd_measured"]
        true_saving = 1 - after["kwh_per_hdd_true"] / before["kwh_per_hdd_true"]
        out["saving_measured"] = round(measured_saving, 5)
        out["saving_true"] = round(true_saving, 5)
        out["saving_error_relative"] = (round(abs(measured_saving - true_saving) / abs(true_saving), 5)
                                        if true_saving else None)
    out["per_day"] = {d: {"kwh_measured": round(measured[d], 3), "kwh_true": round(true[d], 3),
                          "hdd": round(days[d]["hdd"], 3)} for d in usable}
    return out


# ---------------------------------------------------------------- text and plot

def render(report: Mapping[str, Any], max_days: int = 8) -> str:
    agents = ", ".join(f"{t.split('/')[-2]} {s}" for t, s in report.get("agents", {}).items()) or "no status yet"
    lines = [(f"platform: {agents}; {report['messages']} message(s), {report['readings']} reading(s), "
             f"duplicates {report['duplicates']}")]
    for sid, c in report["streams"].items():
        if not c["received"]:
            continue
        lines.append(f"stream {sid[:8]}: ids {c['first_id']}..{c['last_id']} complete {c['complete_pct']:.2f} %, "
                     f"missing {c['missing']} (evicted {c['missing'] - c['unexplained']}, "
                     f"unexplained {c['unexplained']}), accounted for {c['accounted_pct']:.2f} %")
    for device, points in report.get("latest", {}).items():
        shown = ", ".join(f"{p} {v} {u}" for p, (v, u) in list(points.items())[:5])
        lines.append(f"  {device:10} {shown}" + (f" (+{len(points) - 5} more)" if len(points) > 5 else ""))
    flagged = {q: n for q, n in report["quality"].items() if q != "ok"}
    lines.append("quality: ok " + str(report["quality"].get("ok", 0))
                 + "".join(f", {q} {n}" for q, n in flagged.items()))
    energy = {k: v for k, v in report.get("energy", {}).items() if any(x > 0 for x in v["days"].values())}
    if energy:
        all_days = sorted({d for v in energy.values() for d in v["days"]})[-max_days:]
        names = list(energy)
        lines.append(f"energy per day, kWh ({report.get('time')}; * = day fully covered):")
        lines.append(f"{'day':10} " + " ".join(f"{n:>26}" for n in names))
        for day in all_days:
            cells = []
            for n in names:
                value = energy[n]["days"].get(day)
                mark = "*" if day in energy[n]["complete_days"] else " "
                cells.append(f"{value:25.1f}{mark}" if value is not None else f"{'-':>26}")
            lines.append(f"{day:10} " + " ".join(cells))
        notes = [f"{n}: {v['breaks']} break(s), {v['rollovers']} rollover(s)"
                 + (f", {v['gaps']} silence(s) over a day (not spread)" if v.get("gaps") else "")
                 for n, v in energy.items() if v["breaks"] or v["rollovers"] or v.get("gaps")]
        if notes:
            lines.append("counter series: " + "; ".join(notes))
    if report.get("before_start"):
        lines.append(f"left out: {report['before_start']} counter reading(s) stamped before the building "
                     "started (an earlier run's, from the agent's buffer)")
    heat = report.get("heat") or {}
    building = report.get("building") or {}
    if building.get("retrofit"):
        lines.append(f"heat per heating degree day, retrofit {building['retrofit']['at_iso'][:10]} "
                     f"(heat-loss coefficient x{building['retrofit']['heat_loss_factor']:g}); simulated now "
                     f"{building.get('sim_now')}:")
    for name, result in heat.items():
        b, a = result["before"], result["after"]
        line = (f"  {name:10} before {b['days']} d {b['kwh_per_hdd_measured'] or 0:8.2f} kWh/HDD, "
                f"after {a['days']} d {a['kwh_per_hdd_measured'] or 0:8.2f} kWh/HDD")
        if "saving_measured" in result:
            line += (f"; saving measured {100 * result['saving_measured']:5.2f} % vs true "
                     f"{100 * result['saving_true']:5.2f} % "
                     f"(off by {100 * (result['saving_error_relative'] or 0):.2f} %"
                     " of the true saving)")
        else:
            line += "; saving: waiting for complete days on both sides"
        lines.append(line)
    if report.get("fleet"):
        lines.append(render_fleet(report["fleet"]))
    return "\n".join(lines)


def plot(report: Mapping[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    heat = report.get("heat") or {}
    figure, axis = plt.subplots(figsize=(9, 4.5))
    for name, result in heat.items():
        days = sorted(result["per_day"])
        if not days:
            continue
        x: list[Any] = [dt.date.fromisoformat(d) for d in days]  # matplotlib plots dates; its stubs say numbers
        axis.plot(x, [result["per_day"][d]["kwh_measured"] / max(result["per_day"][d]["hdd"], 1e-9) for d in days],
                  marker="o", label=f"{name} measured")
        axis.plot(x, [result["per_day"][d]["kwh_true"] / max(result["per_day"][d]["hdd"], 1e-9) for d in days],
                  linestyle="--", label=f"{name} true")
    retrofit = (report.get("building") or {}).get("retrofit")
    if retrofit:
        at: Any = dt.date.fromisoformat(retrofit["at_iso"][:10])
        axis.axvline(at, color="grey", linestyle=":", label="retrofit")
    axis.set_ylabel("kWh per heating degree day")
    axis.set_title("Heat per degree day before and after the retrofit")
    axis.legend(fontsize="small")
    figure.autofmt_xdate()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def main_platform(broker: tuple[str, int], topic_prefix: str, meta_path: Path | None, until: float | None,
                  summary: Path | None, plot_path: Path | None, interval: float = 2.0, store: Path | None = None,
                  fleet_only: bool = False) -> int:
    """`retrofit-sim platform`: live view until Ctrl-C (or ``until`` seconds), then the summary."""
    import signal
    import sys
    import time

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    ingest = PlatformIngest(broker[0], broker[1], topic_prefix, meta_path, store=store).start()
    interactive = sys.stdout.isatty()
    started = time.monotonic()
    try:
        while not stop.wait(interval):
            ingest.check()
            view = render_fleet(ingest.fleet_rows()) if fleet_only else ingest.render()
            print(("\x1b[2J\x1b[H" if interactive else "\n") + view, flush=True)
            if until is not None and time.monotonic() - started >= until:
                break
    finally:
        ingest.stop()
    ingest.check()
    report = ingest.report()
    print("\nsummary:\n" + (render_fleet(report["fleet"]) if fleet_only else render(report)), flush=True)
    if summary is not None:
        json_path, text_path = ingest.write_summary(summary, report)
        print(f"summary written: {json_path}, {text_path}", flush=True)
    if plot_path is not None:
        if ingest.plot(plot_path, report):
            print(f"plot written: {plot_path}", flush=True)
        else:
            print("plot skipped: matplotlib is not installed (pip install matplotlib)", flush=True)
    return 0


def add_cli(commands: Any) -> None:
    """`retrofit-sim platform` (hooked into simulators/cli.py)."""
    from drivers.core.durations import parse_duration

    def host_port(spec: str) -> tuple[str, int]:
        host, sep, port = spec.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(spec)
        return host.strip("[]") or "127.0.0.1", int(port)

    parser = commands.add_parser("platform", help="a simulated city platform: ingest, completeness, saving")
    parser.add_argument("--broker", type=host_port, default=("127.0.0.1", 18830), metavar="HOST:PORT")
    parser.add_argument("--topic-prefix", default="buildings")
    parser.add_argument("--truth", type=Path, metavar="META",
                        help="the building's meta.json (or its output directory): degree days, simulated "
                             "time, the true figures")
    parser.add_argument("--until", type=parse_duration, metavar="DURATION",
                        help="stop after this long (90, 2m; default: until Ctrl-C)")
    parser.add_argument("--summary", type=Path, metavar="FILE", help="write FILE.json and FILE.txt at the end")
    parser.add_argument("--plot", type=Path, metavar="FILE.png", help="write a plot (needs matplotlib)")
    parser.add_argument("--store", type=Path, metavar="FILE",
                        help="keep everything received in this SQLite file, for `retrofit-sim verify`")
    parser.add_argument("--fleet", action="store_true",
                        help="show only the fleet: every gateway heard, its version, config and health")

    def run(args: Any) -> int:
        truth = args.truth / "meta.json" if args.truth is not None and args.truth.is_dir() else args.truth
        return main_platform(args.broker, args.topic_prefix, truth, args.until, args.summary, args.plot,
                             store=args.store, fleet_only=args.fleet)

    parser.set_defaults(handler=run)
