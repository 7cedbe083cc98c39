"""The benchmark suite: CPU, memory, disk writes and uplink bytes per reading.

Starts simulated meters, Mosquitto, the agent (and a naive baseline,
tests/bench/naive.py) as separate processes and measures them from outside,
through /proc of each process, at steady state. An independent MQTT
subscriber in this process counts what was delivered, deduplicated by
(stream, id). Prints a table and writes JSON. Asserts nothing about speed:
figures are for people (docs/performance.md), never a pass/fail test.

    python tests/bench/run.py            # about 7 minutes
    python tests/bench/run.py --quick    # about 2 minutes, smaller drain, shorter windows
    ./scripts/bench [--quick] [--out FILE]

Scenarios (each bounded in time; every child dies with the harness):
  load-300     10 meters x 30 points every 1 s (300 readings/s): agent, then naive
  load-30x10   30 SDM630 x 10 points every 1 s, one request per meter (300 readings/s, 30 requests/s):
               the agent alone; per-request overhead dominates here
  pi-load      6 meters x 10 points every 10 s (a building, 6 readings/s): agent, then naive
  compact      pi-load with uplink.mqtt.encoding: compact (skipped while the agent rejects the key)
  drain        a buffer pre-filled with 1,000,000 readings, delivered while load-300 polling runs
  startup      time from exec to READY=1 on a real NOTIFY_SOCKET; import time of agent.cli / agent.app
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import platform
import random
import re
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))

import paho.mqtt.client as mqtt  # noqa: E402
import yaml  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from tests.support import free_port  # noqa: E402
from tests.support import wait_until as wait_for  # noqa: E402

PROFILE_DIR = HERE / "profiles"
PREFIX = "bench"
SITE = "bench-site"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PI_POINTS, PI_INTERVAL_S = 60, 10.0  # the building the projections are for
PI_READINGS_PER_DAY = PI_POINTS * 86_400 / PI_INTERVAL_S
TARGETS = {  # issue 9, "Done when"
    "cpu_us_per_reading_300": 20.0,
    "rss_mb_300": 35.0,
    "rss_mb_drain_max": 35.0,
    "disk_bytes_per_reading": 100.0,
    "drain_readings_per_s": 100_000.0,
    "compact_bytes_per_reading": 25.0,
    "cpu_us_per_reading_30x10": 20.0,  # issue 16, "Done when"
    "rss_mb_30x10": 33.0,
}
LOAD_300 = [(unit, "bench-meter-30") for unit in range(1, 11)]  # 10 x 30 points
PI_LOAD = [(unit, "eastron-sdm630") for unit in range(21, 27)]  # 6 x 10 points
LOAD_30X10 = [(unit, "eastron-sdm630") for unit in range(31, 61)]  # 30 x 10 points, one request each


# -- processes ---------------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_parent() -> None:
    """Children get SIGTERM when the harness dies, however it dies (PR_SET_PDEATHSIG)."""
    _libc.prctl(1, signal.SIGTERM, 0, 0, 0)


def spawn(args: list[str], *, env: dict[str, str] | None = None, stdout: Any = subprocess.PIPE,
          ) -> subprocess.Popen[bytes]:
    return subprocess.Popen(args, stdout=stdout, stderr=subprocess.STDOUT, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
                            preexec_fn=_die_with_parent)  # noqa: PLW1509 - one prctl() call, no lock taken


def stop(proc: subprocess.Popen[bytes] | None, timeout: float = 10.0) -> int | None:
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


class LineReader(threading.Thread):
    """Keeps a child's stdout lines (a pipe: log lines never count as disk writes)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        super().__init__(daemon=True)
        self.proc = proc
        self.lines: list[str] = []
        self.start()

    def run(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.lines.append(raw.decode(errors="replace").rstrip())

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in list(self.lines):
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(event, dict):
                out.append(event)
        return out

    def has(self, text: str) -> bool:
        return any(text in line for line in list(self.lines))

    def tail(self, n: int = 15) -> str:
        return "\n".join(self.lines[-n:])


@contextmanager
def mosquitto(workdir: Path) -> Iterator[int]:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    port = free_port()
    conf = workdir / "mosquitto.conf"
    user = "user root\n" if os.geteuid() == 0 else ""
    # No queue limit towards the subscriber: during the drain it must never
    # drop what the agent was acknowledged for.
    conf.write_text(f"{user}listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                    "max_inflight_messages 100\nmax_queued_messages 0\nmax_queued_bytes 0\n"
                    "log_dest none\n")
    proc = spawn([binary, "-c", str(conf)], stdout=subprocess.DEVNULL)
    try:
        wait_for(lambda: _port_open(port) or proc.poll() is not None, 10, "mosquitto")
        if proc.poll() is not None:
            raise RuntimeError("mosquitto exited at start")
        yield port
    finally:
        stop(proc)


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


@contextmanager
def simulator(devices: list[tuple[int, str]], duration: float) -> Iterator[int]:
    args = [sys.executable, str(HERE / "sim.py"), "--duration", str(duration)]
    for unit, profile in devices:
        args += ["--device", f"{unit}={profile}"]
    proc = spawn(args)
    lines = LineReader(proc)
    try:
        found = wait_for(lambda: next((ln for ln in lines.lines if ln.startswith("port=")), None)
                         or proc.poll() is not None, 30, "the simulator")
        if proc.poll() is not None:
            raise RuntimeError(f"simulator exited:\n{lines.tail()}")
        yield int(str(found).split("=")[1])
    finally:
        stop(proc)


# -- measuring from outside --------------------------------------------------------------

@dataclass(frozen=True)
class ProcSample:
    at: float  # monotonic
    cpu_ticks: int  # utime + stime, whole process
    cpu_ns: int  # sum of per-thread schedstat run time (finer; threads that ended are missing)
    rss_kb: int
    write_bytes: int


def proc_sample(pid: int) -> ProcSample:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rfind(")") + 2:].split()
    ticks = int(fields[11]) + int(fields[12])
    cpu_ns = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                cpu_ns += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                pass
    except OSError:
        pass
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    write_bytes = 0
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            write_bytes = int(line.split()[1])
    return ProcSample(time.monotonic(), ticks, cpu_ns, rss, write_bytes)


class RssSampler(threading.Thread):
    """VmRSS every ``every`` seconds, until stopped."""

    def __init__(self, pid: int, every: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.pid, self.every = pid, every
        self.samples: list[tuple[float, int]] = []
        self._halt = threading.Event()
        self.start()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        self.samples.append((time.monotonic(), int(line.split()[1])))
            except OSError:
                return
            self._halt.wait(self.every)

    def finish(self, since: float = 0.0) -> list[int]:
        """The samples taken at or after ``since`` (monotonic)."""
        self._halt.set()
        self.join(2)
        return [kb for at, kb in self.samples if at >= since]


def wal_checkpoints(db: Path) -> int | None:
    """The WAL header's checkpoint sequence number: it grows by one at each WAL reset."""
    try:
        with open(f"{db}-wal", "rb") as wal:
            header = wal.read(32)
    except OSError:
        return None
    return int.from_bytes(header[12:16], "big") if len(header) == 32 else None


def _varint_len(n: int) -> int:
    return 1 if n < 128 else 2 if n < 16_384 else 3 if n < 2_097_152 else 4


def publish_wire_bytes(topic: str, payload_len: int) -> int:
    """Bytes of an MQTT 3.1.1 QoS 1 PUBLISH on the wire (fixed header, topic, packet id, payload)."""
    remaining = 2 + len(topic.encode()) + 2 + payload_len
    return 1 + _varint_len(remaining) + remaining


@dataclass
class Tally:
    """What the platform received from one gateway."""

    messages: int = 0
    payload_bytes: int = 0
    wire_bytes: int = 0  # PUBLISH packets as the agent sent them (+ 4 bytes of PUBACK each)
    readings_received: int = 0  # duplicates included
    undecoded_messages: int = 0
    other_messages: int = 0  # status, events, metadata
    other_payload_bytes: int = 0
    status_payload_bytes_last: int = 0  # the retained status message, refreshed every status_interval
    ids: dict[str, set[int]] = field(default_factory=dict)  # stream -> ids
    below: dict[str, tuple[int, int]] = field(default_factory=dict)  # stream -> (limit, unique ids <= limit)
    # (stream, id) -> what the reading was, for gateways whose ids must never be reused (power cuts)
    fingerprints: dict[tuple[str, int], int] | None = None
    conflicts: int = 0  # ids that arrived with two different readings

    @property
    def unique(self) -> int:
        return sum(len(s) for s in self.ids.values())


def _compact_decoder() -> Callable[[bytes, dict[str, Any]], list[dict[str, Any]]] | None:
    """The platform side of the compact schema, from the agent (agent.payload.decode_compact), if built."""
    try:
        from agent import payload
    except ImportError:
        return None
    function = getattr(payload, "decode_compact", None)
    return function if callable(function) else None


class Platform:
    """An independent MQTT subscriber: counts readings per gateway, deduplicated by (stream, id)."""

    def __init__(self, port: int) -> None:
        self.tallies: dict[str, Tally] = {}
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._decode_compact = _compact_decoder()
        self._meta: dict[str, dict[str, Any]] = {}  # gateway -> its retained meta message (compact schema)
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-platform")
        self._client.max_inflight_messages_set(100)
        self._client.on_connect = lambda c, *_: c.subscribe(f"{PREFIX}/#", qos=1)
        self._client.on_subscribe = lambda *_: self._subscribed.set()
        self._client.on_message = self._on_message
        self._client.connect("127.0.0.1", port, keepalive=60)
        self._client.loop_start()
        if not self._subscribed.wait(10):
            raise RuntimeError("the benchmark's subscriber could not subscribe")

    def tally(self, gateway: str) -> Tally:
        with self._lock:
            return self.tallies.setdefault(gateway, Tally())

    def watch_below(self, gateway: str, stream: str, limit: int) -> None:
        with self._lock:
            tally = self.tallies.setdefault(gateway, Tally())
            tally.below[stream] = (limit, 0)

    def snapshot(self, gateway: str) -> dict[str, int]:
        with self._lock:
            t = self.tallies.setdefault(gateway, Tally())
            return {"messages": t.messages, "payload_bytes": t.payload_bytes, "wire_bytes": t.wire_bytes,
                    "readings_received": t.readings_received, "unique": t.unique,
                    "undecoded_messages": t.undecoded_messages}

    def below(self, gateway: str, stream: str) -> int:
        with self._lock:
            return self.tallies.setdefault(gateway, Tally()).below.get(stream, (0, 0))[1]

    def _on_message(self, _client: mqtt.Client, _userdata: object, message: mqtt.MQTTMessage) -> None:
        parts = message.topic.split("/")
        if len(parts) < 4:
            return
        gateway, leaf, raw = parts[2], parts[-1], message.payload
        stream, ids, decoded = "", [], True
        if leaf == "meta":
            try:
                self._meta[gateway] = json.loads(raw)
            except ValueError:
                pass
        elif leaf == "readings":
            try:
                body = json.loads(raw)
                stream = body["stream"]
                ids = [r["id"] for r in body["readings"]]
                if gateway.startswith("agent-cut"):
                    self._fingerprint(gateway, stream, body["readings"])
            except (ValueError, KeyError, TypeError, UnicodeDecodeError):
                decoded = False
                meta = self._meta.get(gateway)
                if self._decode_compact is not None and meta is not None:
                    try:
                        ids = [r["id"] for r in self._decode_compact(bytes(raw), meta)]
                        stream, decoded = str(meta.get("stream", "")), True
                    except Exception:  # noqa: BLE001 - an unknown encoding is counted, not fatal
                        decoded = False
        with self._lock:
            t = self.tallies.setdefault(gateway, Tally())
            if leaf != "readings":
                t.other_messages += 1
                t.other_payload_bytes += len(raw)
                if leaf == "status":
                    t.status_payload_bytes_last = len(raw)
                return
            t.messages += 1
            t.payload_bytes += len(raw)
            t.wire_bytes += publish_wire_bytes(message.topic, len(raw)) + 4
            if not decoded:
                t.undecoded_messages += 1
                return
            t.readings_received += len(ids)
            seen = t.ids.setdefault(stream, set())
            watch = t.below.get(stream)
            if watch is None:
                seen.update(ids)
                return
            limit, count = watch
            for rid in ids:
                if rid not in seen:
                    seen.add(rid)
                    if rid <= limit:
                        count += 1
            t.below[stream] = (limit, count)

    def _fingerprint(self, gateway: str, stream: str, readings: list[dict[str, Any]]) -> None:
        with self._lock:
            t = self.tallies.setdefault(gateway, Tally())
            if t.fingerprints is None:
                t.fingerprints = {}
            for r in readings:
                mark = hash((r["device"], r["point"], r["ts"], repr(r["value"])))
                if t.fingerprints.setdefault((stream, r["id"]), mark) != mark:
                    t.conflicts += 1

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


# -- the systems under test ----------------------------------------------------------------

def status_path(workdir: Path, name: str) -> Path:
    """Where an agent's status snapshot goes: RAM, as in service (/run), so
    that only the buffer's writes count as disk writes."""
    shm = Path("/dev/shm")
    run_dir = (shm if shm.is_dir() else workdir) / f"{workdir.name}-run"
    run_dir.mkdir(exist_ok=True)
    return run_dir / f"{name}.status.json"


def agent_config(workdir: Path, name: str, broker_port: int, sim_port: int,
                 devices: list[tuple[int, str]], interval: float, buffer: Path | None = None,
                 mqtt_extra: dict[str, Any] | None = None, extra_buffer: dict[str, Any] | None = None) -> Path:
    buffer_section: dict[str, Any] = {"path": str(buffer or workdir / f"{name}.db"), **(extra_buffer or {})}
    if os.environ.get("RETROFIT_BENCH_FLUSH"):  # to measure other flush intervals than the default
        buffer_section["flush_interval"] = os.environ["RETROFIT_BENCH_FLUSH"]
    config = {
        "gateway": {"id": name, "site": SITE},
        "buffer": buffer_section,
        "uplink": {"mqtt": {"host": "127.0.0.1", "port": broker_port, "topic_prefix": PREFIX,
                            **(mqtt_extra or {})}},
        "buses": [{"id": "gw-tcp", "type": "modbus-tcp", "host": "127.0.0.1", "port": sim_port}],
        "devices": [{"id": f"meter-{unit:02d}", "bus": "gw-tcp", "address": unit, "profile": profile,
                     "interval": interval} for unit, profile in devices],
        "profile_dirs": [str(PROFILE_DIR)],
        # As in service: the status snapshot lives in RAM (/run), not on the disk measured.
        "health": {"status_file": str(status_path(workdir, name))},
    }
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def config_accepted(config: Path) -> tuple[bool, str]:
    done = subprocess.run([sys.executable, "-m", "agent.cli", "check", "--config", str(config)],
                          capture_output=True, text=True, cwd=REPO, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    return done.returncode == 0, (done.stdout + done.stderr).strip()


def start_agent(config: Path, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], LineReader]:
    proc = spawn([sys.executable, "-m", "agent.cli", "run", "--config", str(config)], env=env)
    return proc, LineReader(proc)


def wait_started(proc: subprocess.Popen[bytes], lines: LineReader, what: str, timeout: float = 60) -> None:
    wait_for(lambda: lines.has('"agent.started"') or proc.poll() is not None, timeout, f"{what} to start")
    if proc.poll() is not None:
        raise RuntimeError(f"{what} exited with {proc.returncode}:\n{lines.tail()}")


def start_naive(name: str, broker_port: int, sim_port: int, devices: list[tuple[int, str]],
                interval: float, workdir: Path, duration: float) -> tuple[subprocess.Popen[bytes], LineReader]:
    args = [sys.executable, str(HERE / "naive.py"), "--sim-port", str(sim_port), "--broker-port",
            str(broker_port), "--interval", str(interval), "--db", str(workdir / f"{name}.db"),
            "--topic", f"{PREFIX}/{SITE}/{name}/readings", "--duration", str(duration)]
    for unit, profile in devices:
        args += ["--device", f"{unit}={profile}"]
    proc = spawn(args)
    lines = LineReader(proc)
    wait_for(lambda: lines.has("naive.started") or proc.poll() is not None, 60, "the naive baseline")
    if proc.poll() is not None:
        raise RuntimeError(f"naive baseline exited:\n{lines.tail()}")
    return proc, lines


def _acked_from_status(path: Path) -> int | None:
    try:
        return int(json.loads(path.read_text())["uplink"]["readings_acked"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _status_ts(path: Path) -> int | None:
    try:
        return int(json.loads(path.read_text())["ts"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _next_id_from_status(path: Path) -> int | None:
    try:
        return int(json.loads(path.read_text())["buffer"]["next_id"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def after_burst(platform_: Platform, gateway: str, timeout: float, quiet: float = 0.2) -> None:
    """Return just after a burst of deliveries ended, so a window holds whole poll cycles."""
    deadline = time.monotonic() + timeout
    last = platform_.snapshot(gateway)["unique"]
    changed = False
    quiet_since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.01)
        now_unique = platform_.snapshot(gateway)["unique"]
        if now_unique != last:
            last, changed, quiet_since = now_unique, True, time.monotonic()
        elif changed and time.monotonic() - quiet_since >= quiet:
            return


def steady_state(proc: subprocess.Popen[bytes], platform_: Platform, gateway: str, warmup: float,
                 window: float, db: Path, status_file: Path | None = None, cycle: float = 1.0) -> dict[str, Any]:
    """Measure one running process over about ``window`` seconds after ``warmup``.

    Both ends of the window sit just after a burst of deliveries, so the
    window holds whole poll cycles (a 15 s window of 1 s batches would
    otherwise count 15 or 16 of them).
    """
    time.sleep(warmup)  # a measurement window, not a wait: the figures are per second of it
    after_burst(platform_, gateway, cycle + 3)
    if proc.poll() is not None:
        raise RuntimeError(f"{gateway} exited during warm-up")
    acked0 = _acked_from_status(status_file) if status_file else None
    ckpt0 = wal_checkpoints(db)
    s0, p0 = proc_sample(proc.pid), platform_.snapshot(gateway)
    rss = RssSampler(proc.pid)
    time.sleep(max(0.0, window - cycle / 2))  # the window itself; its ends are synchronised below
    after_burst(platform_, gateway, cycle + 3)
    s1, p1 = proc_sample(proc.pid), platform_.snapshot(gateway)
    rss_kb = rss.finish()
    ckpt1 = wal_checkpoints(db)
    acked1 = _acked_from_status(status_file) if status_file else None
    seconds = s1.at - s0.at
    delivered = p1["unique"] - p0["unique"]
    if p1["undecoded_messages"] > p0["undecoded_messages"] and acked0 is not None and acked1 is not None:
        delivered = acked1 - acked0  # an encoding this harness cannot read: the agent's own count
    if delivered <= 0:  # a figure per reading of no readings would read as a great result
        raise RuntimeError(f"{gateway}: no reading delivered in the {seconds:.0f} s window")
    cpu_s = (s1.cpu_ticks - s0.cpu_ticks) / CLK_TCK
    cpu_ns_s = (s1.cpu_ns - s0.cpu_ns) / 1e9
    per = delivered
    return {
        "window_s": round(seconds, 1),
        "delivered": delivered,
        "delivered_per_s": round(delivered / seconds, 1),
        "acked_by_agent": (acked1 - acked0) if acked0 is not None and acked1 is not None else None,
        "cpu_s": round(cpu_s, 3),
        "cpu_us_per_reading": round(cpu_s * 1e6 / per, 1),
        "cpu_us_per_reading_schedstat": round(cpu_ns_s * 1e6 / per, 1),
        "cpu_percent": round(100 * cpu_s / seconds, 2),
        "cpu_percent_schedstat": round(100 * cpu_ns_s / seconds, 2),
        "rss_mb_mean": round(statistics.fmean(rss_kb) / 1024, 1) if rss_kb else None,
        "rss_mb_max": round(max(rss_kb) / 1024, 1) if rss_kb else None,
        "write_bytes": s1.write_bytes - s0.write_bytes,
        "disk_bytes_per_reading": round((s1.write_bytes - s0.write_bytes) / per, 1),
        "wal_checkpoints_in_window": (ckpt1 - ckpt0) if ckpt0 is not None and ckpt1 is not None else None,
        "messages": p1["messages"] - p0["messages"],
        "readings_per_message": round(delivered / max(1, p1["messages"] - p0["messages"]), 1),
        "uplink_payload_bytes_per_reading": round((p1["payload_bytes"] - p0["payload_bytes"]) / per, 1),
        "uplink_wire_bytes_per_reading": round((p1["wire_bytes"] - p0["wire_bytes"]) / per, 1),
        "duplicates": (p1["readings_received"] - p0["readings_received"]) - delivered,
    }


def project(result: dict[str, Any]) -> None:
    """MB per day written and MB per month sent, for a building of 60 points every 10 s."""
    result["disk_mb_per_day_building"] = round(result["disk_bytes_per_reading"] * PI_READINGS_PER_DAY / 1e6, 1)
    result["uplink_mb_per_month_building"] = round(
        result["uplink_wire_bytes_per_reading"] * PI_READINGS_PER_DAY * 30 / 1e6, 1)


# -- scenarios ---------------------------------------------------------------------------------

@dataclass
class Bench:
    workdir: Path
    broker_port: int
    sim_port: int
    platform: Platform
    quick: bool
    py_spy: Path | None
    results: dict[str, Any] = field(default_factory=dict)

    def say(self, text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)

    def profile(self, pid: int, name: str, seconds: float) -> subprocess.Popen[bytes] | None:
        """py-spy on a running process (only with --py-spy: it perturbs the figures).

        Runs at most ``seconds``; :meth:`end_profile` stops it earlier."""
        if self.py_spy is None:
            return None
        binary = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        self.py_spy.mkdir(parents=True, exist_ok=True)
        return spawn([binary, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "1000",
                      "--nonblocking", "--threads", "--format", "raw",
                      "-o", str(self.py_spy / f"{name}.collapsed")], stdout=subprocess.DEVNULL)

    @staticmethod
    def end_profile(spy: subprocess.Popen[bytes] | None) -> None:
        if spy is None:
            return
        if spy.poll() is None:
            spy.send_signal(signal.SIGINT)  # py-spy writes what it has on SIGINT
        try:
            spy.wait(timeout=30)
        except subprocess.TimeoutExpired:
            spy.kill()

    def agent_steady(self, name: str, devices: list[tuple[int, str]], interval: float, warmup: float,
                     window: float, mqtt_extra: dict[str, Any] | None = None,
                     extra_buffer: dict[str, Any] | None = None) -> dict[str, Any]:
        config = agent_config(self.workdir, name, self.broker_port, self.sim_port, devices, interval,
                              mqtt_extra=mqtt_extra, extra_buffer=extra_buffer)
        proc, lines = start_agent(config)
        try:
            wait_started(proc, lines, name)
            spy = self.profile(proc.pid, name, warmup + window + 2 * interval + 10)
            result = steady_state(proc, self.platform, name, warmup, window, self.workdir / f"{name}.db",
                                  status_path(self.workdir, name), cycle=interval)
            self.end_profile(spy)
        finally:
            result_code = stop(proc)
        result["exit_code"] = result_code
        errors = [e for e in lines.events() if e.get("level") in ("warning", "error")]
        result["warnings"] = [e.get("event") for e in errors][:10]
        return result

    def naive_steady(self, name: str, devices: list[tuple[int, str]], interval: float, warmup: float,
                     window: float) -> dict[str, Any]:
        proc, _lines = start_naive(name, self.broker_port, self.sim_port, devices, interval, self.workdir,
                                   duration=warmup + window + 60)
        try:
            result = steady_state(proc, self.platform, name, warmup, window, self.workdir / f"{name}.db",
                                  cycle=interval)
        finally:
            stop(proc)
        return result

    def load_300(self) -> None:
        warmup, window = (4.0, 15.0) if self.quick else (6.0, 45.0)
        self.say(f"load-300: agent, 10 meters x 30 points every 1 s, {window:.0f} s window")
        agent = self.agent_steady("agent-300", LOAD_300, 1.0, warmup, window)
        self.say(f"load-300: naive baseline, {window:.0f} s window")
        naive = self.naive_steady("naive-300", LOAD_300, 1.0, warmup, window)
        self.results["load_300"] = {"agent": agent, "naive": naive}

    def load_30x10(self) -> None:
        warmup, window = (4.0, 15.0) if self.quick else (6.0, 45.0)
        self.say(f"load-30x10: agent, 30 SDM630 x 10 points every 1 s, {window:.0f} s window")
        self.results["load_30x10"] = {"agent": self.agent_steady("agent-30x10", LOAD_30X10, 1.0, warmup, window)}

    def pi_load(self) -> None:
        # The agent commits every two minutes at this pace: the window holds several commits.
        warmup, window = (2.0, 245.0) if self.quick else (4.0, 725.0)
        window = float(os.environ.get("RETROFIT_BENCH_PI_WINDOW", window))
        self.say(f"pi-load: agent, 6 meters x 10 points every 10 s, {window:.0f} s window")
        agent = self.agent_steady("agent-pi", PI_LOAD, PI_INTERVAL_S, warmup, window)
        project(agent)
        status_bytes = self.platform.tally("agent-pi").status_payload_bytes_last
        agent["status_message_bytes"] = status_bytes
        agent["status_mb_per_month_at_60s"] = round(status_bytes * 30 * 86_400 / 60 / 1e6, 1)
        window = 20.0 if self.quick else 60.0  # the naive baseline writes per reading: a short window does
        self.say(f"pi-load: naive baseline, {window:.0f} s window")
        naive = self.naive_steady("naive-pi", PI_LOAD, PI_INTERVAL_S, warmup, window)
        project(naive)
        self.results["pi_load"] = {"agent": agent, "naive": naive}

    def compact(self) -> None:
        """pi-load with the compact uplink encoding, plain and zlib-compressed, once the agent has them."""
        variants = {"compact": {"encoding": "compact"},
                    "compact-zlib": {"encoding": "compact", "compression": "zlib"}}
        warmup, window = (2.0, 10.0) if self.quick else (4.0, 40.0)
        results: dict[str, Any] = {}
        for label, extra in variants.items():
            if self.quick and label != "compact":
                continue  # --quick: the plain compact encoding only
            name = f"agent-{label}"
            # Messages of 10 s of readings (a gateway's default sends two minutes' worth, which
            # compresses better): the figure is the conservative one, in a short window.
            flush = {"flush_interval": "10s"}
            config = agent_config(self.workdir, name, self.broker_port, self.sim_port, PI_LOAD, PI_INTERVAL_S,
                                  mqtt_extra=extra, extra_buffer=flush)
            accepted, message = config_accepted(config)
            if not accepted:
                keys = ", ".join(f"uplink.mqtt.{k}: {v}" for k, v in extra.items())
                self.say(f"{label}: skipped, the agent rejects {keys}")
                results[label] = {"skipped": f"the agent rejects {keys}", "check_output": message.splitlines()[:3]}
                continue
            self.say(f"{label}: agent at pi-load with {extra}, {window:.0f} s window")
            result = self.agent_steady(name, PI_LOAD, PI_INTERVAL_S, warmup, window, mqtt_extra=extra,
                                       extra_buffer=flush)
            project(result)
            tally = self.platform.tally(name)
            result["metadata_and_status_messages"] = tally.other_messages
            result["metadata_and_status_payload_bytes"] = tally.other_payload_bytes
            result["counted_by"] = "subscriber" if tally.undecoded_messages == 0 else "agent status file"
            results[label] = result
        self.results["compact"] = results

    def drain(self) -> None:
        total = 200_000 if self.quick else 1_000_000
        bound = 90.0 if self.quick else 240.0
        name = "agent-drain"
        db = self.workdir / f"{name}.db"
        self.say(f"drain: pre-filling {total:,} readings into {db.name}")
        started = time.monotonic()
        stream = prefill(db, total)
        prefill_s = time.monotonic() - started
        self.say(f"drain: pre-filled in {prefill_s:.1f} s ({db.stat().st_size / 1e6:.0f} MB); "
                 f"starting the agent with load-300 polling, bound {bound:.0f} s")
        self.platform.watch_below(name, stream, total)
        config = agent_config(self.workdir, name, self.broker_port, self.sim_port, LOAD_300, 1.0, buffer=db)
        spawned = time.monotonic()
        proc, lines = start_agent(config)
        rss = RssSampler(proc.pid, every=0.2)
        result: dict[str, Any] = {"readings": total, "prefill_s": round(prefill_s, 1),
                                  "buffer_file_mb": round(db.stat().st_size / 1e6, 1)}
        ready = time.monotonic() + bound
        try:
            wait_started(proc, lines, name, timeout=bound)
            ready = time.monotonic()
            s0 = proc_sample(proc.pid)
            spy = self.profile(proc.pid, name, bound)
            progress: list[tuple[float, int]] = []
            deadline = ready + bound
            done_at = None
            while time.monotonic() < deadline and proc.poll() is None:
                delivered = self.platform.below(name, stream)
                progress.append((time.monotonic() - ready, delivered))
                if delivered >= total:
                    done_at = time.monotonic()
                    break
                time.sleep(0.1)
            s1 = proc_sample(proc.pid)
            self.end_profile(spy)
            # The status file is rewritten every 2 s: the id counter from a snapshot taken after the drain.
            drained_ms = time.time() * 1000
            status = status_path(self.workdir, name)
            wait_for(lambda: (_status_ts(status) or 0) > drained_ms, 10, "a status snapshot after the drain")
            next_id = _next_id_from_status(status)
        finally:
            rss_kb = rss.finish(since=ready)
            code = stop(proc)
        delivered = self.platform.below(name, stream)
        snapshot = self.platform.snapshot(name)
        seconds = (done_at or time.monotonic()) - ready
        first = next((t for t, n in progress if n > 0), None)
        result.update({
            "complete": done_at is not None,
            "delivered": delivered,
            "start_to_ready_s": round(ready - spawned, 2),
            "first_delivery_s": round(first, 2) if first is not None else None,
            "drain_s": round(seconds, 1),
            "readings_per_s": round(delivered / seconds) if seconds > 0 else None,
            # Live readings queue behind the backlog (ids are sent in order): most are
            # committed during the drain and delivered after it.
            # (the status file is written every 2 s: for a short drain the ids
            # already delivered may say more than the file)
            "live_readings_committed": max((next_id - total - 1) if next_id else 0, snapshot["unique"] - delivered),
            "live_readings_delivered": snapshot["unique"] - delivered,
            "cpu_us_per_reading": round((s1.cpu_ticks - s0.cpu_ticks) / CLK_TCK * 1e6 / max(1, delivered), 2),
            "rss_mb_start": round(rss_kb[0] / 1024, 1) if rss_kb else None,  # at agent.started
            "rss_mb_max": round(max(rss_kb) / 1024, 1) if rss_kb else None,
            "rss_mb_end": round(rss_kb[-1] / 1024, 1) if rss_kb else None,
            "rss_mb_samples": [round(kb / 1024, 1) for kb in rss_kb[:: max(1, len(rss_kb) // 40)]],
            "messages": snapshot["messages"],
            "duplicates": snapshot["readings_received"] - snapshot["unique"],
            "exit_code": code,
            "progress": [(round(t, 1), n) for t, n in progress[:: max(1, len(progress) // 40)]],
        })
        self.results["drain"] = result

    def power_cut(self) -> None:
        """Syncs per hour counted by a file system that sees every one, then power cuts.

        The buffer lives on tests/powercut/fs.py (FUSE): it counts every
        fsync/fdatasync and, on a cut, forgets what was not synced. First the
        building's pace and 300 readings/s, each for a window; then cuts at
        random moments at 300/s, each a SIGKILL, the cut (the spool in RAM
        emptied too) and a restart: ids seen twice with different readings
        (must be 0), and the restart's time to its first delivery."""
        from tests.powercut import PowerCutMount, fuse_problem

        problem = fuse_problem()
        if problem:
            self.results["power_cut"] = {"skipped": problem}
            return
        mount = PowerCutMount(self.workdir / "card", self.workdir / "card-fs.log").start()
        ram = self.workdir / "ram"
        ram.mkdir(exist_ok=True)
        result: dict[str, Any] = {}
        try:
            for label, devices, interval, window in (
                    ("building", PI_LOAD, PI_INTERVAL_S, 125.0 if self.quick else 605.0),
                    ("load_300", LOAD_300, 1.0, 30.0 if self.quick else 90.0)):
                name = f"agent-cut-{label}"
                config = agent_config(self.workdir, name, self.broker_port, self.sim_port, devices, interval,
                                      buffer=mount.mountpoint / f"{name}.db", extra_buffer={"spool_dir": str(ram)})
                self.say(f"power-cut: syncs at {label} pace, {window:.0f} s on the counting file system")
                proc, lines = start_agent(config)
                try:
                    wait_started(proc, lines, name)
                    time.sleep(4.0)  # past start-up's own syncs: the window holds steady state only
                    before = mount.figures()
                    began = time.monotonic()
                    time.sleep(window)  # the measurement window
                    after = mount.figures()
                    seconds = time.monotonic() - began
                finally:
                    stop(proc)
                result[f"{label}_fsyncs_per_hour"] = round((after["fsyncs"] - before["fsyncs"]) * 3600 / seconds)
            cuts = 5 if self.quick else 12
            name = "agent-cuts"
            config = agent_config(self.workdir, name, self.broker_port, self.sim_port, LOAD_300, 1.0,
                                  buffer=mount.mountpoint / f"{name}.db", extra_buffer={"spool_dir": str(ram)})
            rng = random.Random(14)
            recover: list[float] = []
            self.say(f"power-cut: {cuts} cuts at random moments at 300 readings/s")
            for _ in range(cuts):
                proc, lines = start_agent(config)
                started = time.monotonic()
                wait_started(proc, lines, name)
                seen = self.platform.snapshot(name)["unique"]
                wait_for(lambda: self.platform.snapshot(name)["unique"] > seen, 60, "a delivery after the restart")  # noqa: B023
                recover.append(time.monotonic() - started)
                time.sleep(rng.uniform(2.0, 12.0))  # the moment of the cut, at random
                proc.kill()
                proc.wait()
                mount.cut()
                for spooled in ram.glob("*"):
                    spooled.unlink()
            tally = self.platform.tally(name)
            result.update({"cuts": cuts, "readings_delivered": self.platform.snapshot(name)["unique"],
                           "ids_with_two_readings": tally.conflicts,
                           "restart_to_first_delivery_s_median": round(statistics.median(recover), 2)})
        finally:
            mount.stop()
        self.results["power_cut"] = result

    def startup(self) -> None:
        repeats = 1 if self.quick else 3
        self.say(f"startup: READY=1 on a real NOTIFY_SOCKET, {repeats} start(s); import times")
        config = agent_config(self.workdir, "agent-start", self.broker_port, self.sim_port, PI_LOAD,
                              PI_INTERVAL_S)
        times = []
        for attempt in range(repeats):
            path = self.workdir / f"notify-{attempt}.sock"
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.bind(str(path))
            sock.settimeout(1.0)
            began = time.monotonic()
            proc, lines = start_agent(config, env={"NOTIFY_SOCKET": str(path)})
            ready = None
            try:
                while ready is None and time.monotonic() - began < 60 and proc.poll() is None:
                    try:
                        message = sock.recv(4096).decode(errors="replace")
                    except TimeoutError:
                        continue
                    if "READY=1" in message.split("\n"):
                        ready = time.monotonic() - began
            finally:
                stop(proc)
                sock.close()
                path.unlink(missing_ok=True)
            if ready is None:
                raise RuntimeError(f"no READY=1 from the agent:\n{lines.tail()}")
            times.append(ready)
        self.results["startup"] = {"ready_s": [round(t, 3) for t in times],
                                   "ready_s_median": round(statistics.median(times), 3),
                                   "imports": import_times(repeats=3 if self.quick else 7)}


def prefill(db: Path, total: int) -> str:
    """A buffer file with ``total`` readings, written through the agent's own Buffer.commit."""
    from agent.buffer import Buffer, pack
    from drivers.core.readings import Reading
    from drivers.profile import load_catalogue
    from simulators.meters import modbus_profile

    catalogue = load_catalogue([PROFILE_DIR])
    series = [(f"meter-{unit:02d}", p.name, p.unit, p.kind) for unit, name in LOAD_300
              for p in modbus_profile(catalogue.get(name)).points]
    buffer = Buffer(db, max_bytes=None)
    ts0 = time.time_ns() // 1_000_000 - total // len(series) * 1000
    chunk = 20_000
    made = 0
    try:
        while made < total:
            n = min(chunk, total - made)
            readings = []
            for k in range(made, made + n):
                device, point, unit, kind = series[k % len(series)]
                readings.append(Reading(device, point, 100.0 + (k % 997) * 0.125, unit,
                                        ts0 + (k // len(series)) * 1000, "ok", kind))
            buffer.commit(pack(buffer, readings))
            made += n
        stream = buffer.stream
    finally:
        buffer.close()
    return stream  # closing checkpointed the WAL into the file


def import_times(repeats: int) -> dict[str, Any]:
    """`python -X importtime` of agent.cli and agent.app, and plain wall time minus a bare interpreter."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out: dict[str, Any] = {}

    def wall(code: str) -> float:
        samples = []
        for _ in range(repeats):
            began = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=REPO)
            samples.append(time.perf_counter() - began)
        return statistics.median(samples)

    bare = wall("pass")
    out["interpreter_s"] = round(bare, 3)
    for module in ("agent.cli", "agent.app"):
        done = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {module}"],
                              capture_output=True, text=True, env=env, cwd=REPO, check=True)
        rows = []
        for line in done.stderr.splitlines():
            match = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( +)(\S+)", line)
            if match:
                rows.append((int(match[1]), int(match[2]), len(match[3]) - 1, match[4]))
        mine = next((r for r in rows if r[3] == module), None)
        top = sorted((r for r in rows if r[2] <= 1), key=lambda r: -r[1])[:8]
        out[module] = {
            "importtime_cumulative_ms": round(mine[1] / 1000, 1) if mine else None,
            "wall_s_minus_interpreter": round(wall(f"import {module}") - bare, 3),
            "heaviest_top_level_ms": {name: round(cum / 1000, 1) for _s, cum, _d, name in top},
        }
    return out


# -- output ------------------------------------------------------------------------------------

def machine() -> dict[str, Any]:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=REPO).stdout.strip()
    # Others edit agent/ and drivers/ while a run happens: say what was measured.
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "agent", "drivers"], capture_output=True,
                           text=True, cwd=REPO).stdout.split("\n")
    mosquitto_version = subprocess.run([shutil.which("mosquitto") or "mosquitto", "-h"], capture_output=True,
                                       text=True).stdout.splitlines()[:1]
    import paho.mqtt
    import pymodbus

    return {
        "nproc": os.cpu_count(), "cpu_model": model, "python": platform.python_version(),
        "kernel": platform.release(), "sqlite": sqlite3.sqlite_version,
        "mosquitto": mosquitto_version[0] if mosquitto_version else "?",
        "paho_mqtt": paho.mqtt.__version__, "pymodbus": pymodbus.__version__,
        "commit": commit, "uncommitted_changes": [line[3:] for line in dirty if line.strip()],
        "clk_tck": CLK_TCK,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _ratio(agent: Any, naive: Any) -> str:
    if not isinstance(agent, (int, float)) or not isinstance(naive, (int, float)) or not agent:
        return "-"
    return f"{naive / agent:.1f}x"


def _verdict(value: Any, target: float | None, higher_is_better: bool = False) -> str:
    if target is None or not isinstance(value, (int, float)):
        return ""
    ok = value >= target if higher_is_better else value <= target
    return "ok" if ok else "MISS"


def table(results: dict[str, Any]) -> str:
    rows: list[tuple[str, str, str, str, str, str]] = []

    def row(label: str, agent: Any, naive: Any = None, target: str = "", verdict: str = "",
            digits: int = 1, ratio: bool = True) -> None:
        rows.append((label, _fmt(agent, digits), _fmt(naive, digits),
                     _ratio(agent, naive) if ratio and naive is not None else "", target, verdict))

    m = results["machine"]
    load = results.get("load_300")
    if load:
        a, n = load["agent"], load["naive"]
        row("300/s: delivered readings/s", a["delivered_per_s"], n["delivered_per_s"], ratio=False)
        row("300/s: CPU us per delivered reading", a["cpu_us_per_reading"], n["cpu_us_per_reading"], "<= 20",
            _verdict(a["cpu_us_per_reading"], TARGETS["cpu_us_per_reading_300"]))
        row("300/s: CPU % of one core", a["cpu_percent"], n["cpu_percent"])
        row("300/s: RSS MB (max in window)", a["rss_mb_max"], n["rss_mb_max"], "<= 35",
            _verdict(a["rss_mb_max"], TARGETS["rss_mb_300"]))
        row("300/s: disk bytes written per reading", a["disk_bytes_per_reading"], n["disk_bytes_per_reading"],
            "<= 100", _verdict(a["disk_bytes_per_reading"], TARGETS["disk_bytes_per_reading"]))
        row("300/s: uplink payload bytes per reading", a["uplink_payload_bytes_per_reading"],
            n["uplink_payload_bytes_per_reading"])
        row("300/s: readings per MQTT message", a["readings_per_message"], n["readings_per_message"],
            ratio=False)
    many = results.get("load_30x10")
    if many:
        a = many["agent"]
        row("30 x 10 pts/1 s: delivered readings/s", a["delivered_per_s"], ratio=False)
        row("30 x 10 pts/1 s: CPU us per reading", a["cpu_us_per_reading"], None, "<= 20",
            _verdict(a["cpu_us_per_reading"], TARGETS["cpu_us_per_reading_30x10"]))
        row("30 x 10 pts/1 s: CPU us per reading (schedstat)", a["cpu_us_per_reading_schedstat"])
        row("30 x 10 pts/1 s: RSS MB (max in window)", a["rss_mb_max"], None, "<= 33",
            _verdict(a["rss_mb_max"], TARGETS["rss_mb_30x10"]))
    pi = results.get("pi_load")
    if pi:
        a, n = pi["agent"], pi["naive"]
        row("60 pts/10 s: idle CPU % of one core", a["cpu_percent"], n["cpu_percent"], digits=2)
        row("60 pts/10 s: CPU us per reading", a["cpu_us_per_reading"], n["cpu_us_per_reading"])
        row("60 pts/10 s: RSS MB (max)", a["rss_mb_max"], n["rss_mb_max"])
        row("60 pts/10 s: disk bytes written per reading", a["disk_bytes_per_reading"],
            n["disk_bytes_per_reading"], "<= 100", _verdict(a["disk_bytes_per_reading"],
                                                             TARGETS["disk_bytes_per_reading"]))
        row("60 pts/10 s: projected disk MB/day", a["disk_mb_per_day_building"], n["disk_mb_per_day_building"])
        row("60 pts/10 s: uplink payload bytes/reading", a["uplink_payload_bytes_per_reading"],
            n["uplink_payload_bytes_per_reading"])
        row("60 pts/10 s: uplink wire bytes/reading", a["uplink_wire_bytes_per_reading"],
            n["uplink_wire_bytes_per_reading"])
        row("60 pts/10 s: projected uplink MB/month", a["uplink_mb_per_month_building"],
            n["uplink_mb_per_month_building"])
        row("status message every 60 s: MB/month", a.get("status_mb_per_month_at_60s"))
    for label, compact in (results.get("compact") or {}).items():
        if "skipped" in compact:
            rows.append((f"{label}: payload bytes per reading", "skipped", "", "", "<= 25", "not built yet"))
        else:
            row(f"{label} (60 pts/10 s): payload bytes/reading", compact["uplink_payload_bytes_per_reading"],
                None, "<= 25", _verdict(compact["uplink_payload_bytes_per_reading"],
                                        TARGETS["compact_bytes_per_reading"]))
            row(f"{label}: projected uplink MB/month", compact["uplink_mb_per_month_building"])
    drain = results.get("drain")
    if drain:
        label = f"drain {drain['readings']:,}: readings/s"
        row(label, drain["readings_per_s"], None, ">= 100,000",
            _verdict(drain["readings_per_s"], TARGETS["drain_readings_per_s"], higher_is_better=True), digits=0)
        row("drain: seconds" + ("" if drain["complete"] else " (NOT complete)"), drain["drain_s"])
        row("drain: RSS MB start / max / end",
            f"{_fmt(drain['rss_mb_start'])} / {_fmt(drain['rss_mb_max'])} / {_fmt(drain['rss_mb_end'])}",
            None, "<= 35, flat", _verdict(drain["rss_mb_max"], TARGETS["rss_mb_drain_max"]))
        row("drain: live readings committed meanwhile", drain["live_readings_committed"])
    cut = results.get("power_cut")
    if cut and "skipped" not in cut:
        row("fsyncs per hour, 60 pts/10 s", cut["building_fsyncs_per_hour"], digits=0)
        row("fsyncs per hour, 300 readings/s", cut["load_300_fsyncs_per_hour"], digits=0)
        row(f"power cuts at 300/s: ids carrying two readings ({cut['cuts']} cuts)", cut["ids_with_two_readings"],
            None, "0", _verdict(cut["ids_with_two_readings"], 0), digits=0)
        row("power cut: restart to first delivery, s (median)", cut["restart_to_first_delivery_s_median"], digits=2)
    elif cut:
        rows.append(("power cuts", "skipped", "", "", "", cut["skipped"]))
    start = results.get("startup")
    if start:
        row("start-up to READY=1, s (median)", start["ready_s_median"], digits=3)
        for module in ("agent.cli", "agent.app"):
            imp = start["imports"][module]
            row(f"import {module}: -X importtime ms", imp["importtime_cumulative_ms"])
            row(f"import {module}: wall s over bare python", imp["wall_s_minus_interpreter"], digits=3)
    header = ("figure", "agent", "naive", "naive/agent", "target", "")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(6)]
    lines = [
        f"machine: {m['nproc']} CPU(s), {m['cpu_model']}, Python {m['python']}, SQLite {m['sqlite']}, "
        f"{m['mosquitto']}, paho-mqtt {m['paho_mqtt']}, pymodbus {m['pymodbus']}, commit {m['commit']}"
        + (f" + uncommitted {', '.join(m['uncommitted_changes'])}" if m["uncommitted_changes"] else ""),
        "| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    for r in rows:
        lines.append("| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w)
                                         for i, (c, w) in enumerate(zip(r, widths, strict=True))) + " |")
    return "\n".join(lines)


SCENARIOS = ("load-300", "load-30x10", "pi-load", "compact", "drain", "power-cut", "startup")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter windows, a 200,000-reading drain, no zlib variant (~2 min)")
    parser.add_argument("--out", type=Path, default=HERE / "results.json", help="JSON results (default: %(default)s)")
    parser.add_argument("--only", action="append", choices=SCENARIOS, help="run only these scenarios (repeatable)")
    parser.add_argument("--workdir", type=Path, help="where buffers live (default: a new directory under "
                        "$BENCH_TMPDIR or /var/tmp; a disk, not tmpfs, so write_bytes counts)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--py-spy", type=Path, metavar="DIR",
                        help="also record py-spy profiles (collapsed stacks) into DIR; perturbs the figures")
    args = parser.parse_args(argv)
    chosen = args.only or list(SCENARIOS)
    base = Path(os.environ.get("BENCH_TMPDIR", "/var/tmp"))
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="retrofit-bench-", dir=base))
    workdir.mkdir(parents=True, exist_ok=True)
    # As installed (the Debian package byte-compiles on install): a module
    # compiled at every start, when the shell sets PYTHONDONTWRITEBYTECODE,
    # would add its compiler's memory to the agent's RSS.
    subprocess.run([sys.executable, "-m", "compileall", "-q", "agent", "drivers", "simulators"], cwd=REPO,
                   check=False, env={k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"})
    results: dict[str, Any] = {"machine": machine(), "quick": args.quick, "scenarios": chosen}
    began = time.monotonic()
    m = results["machine"]
    print(f"machine: nproc {m['nproc']}, {m['cpu_model']}, Python {m['python']}; work dir {workdir}",
          file=sys.stderr, flush=True)
    all_devices = LOAD_300 + PI_LOAD + LOAD_30X10
    bench: Bench | None = None
    try:
        # The simulator's own end is only a safety net (it is stopped when the
        # bench ends): 900 s ended it in the middle of a full run once pi-load
        # grew to 725 s, and every later scenario then measured nothing.
        with mosquitto(workdir) as broker_port, simulator(all_devices, duration=4 * 3600) as sim_port:
            bench = Bench(workdir, broker_port, sim_port, Platform(broker_port), args.quick, args.py_spy)
            bench.results = results
            steps: dict[str, Callable[[], None]] = {
                "load-300": bench.load_300, "load-30x10": bench.load_30x10, "pi-load": bench.pi_load,
                "compact": bench.compact, "power-cut": bench.power_cut,
                "drain": bench.drain, "startup": bench.startup,
            }
            for name in SCENARIOS:
                if name in chosen:
                    try:
                        steps[name]()
                    except Exception as exc:  # noqa: BLE001 - one broken scenario must not hide the others
                        bench.say(f"{name}: FAILED: {exc}")
                        results.setdefault("failed", {})[name] = str(exc)
            bench.platform.close()
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
            shutil.rmtree(status_path(workdir, "x").parent, ignore_errors=True)
    results["total_s"] = round(time.monotonic() - began, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(table(results))
    print(f"\n{results['total_s']:.0f} s; JSON: {args.out}")
    if results.get("failed"):
        print(f"failed scenarios: {', '.join(results['failed'])}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
