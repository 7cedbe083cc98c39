"""Faults on real parts: garbled frames, a full disk, a corrupt buffer, a
refusing broker, a broker that never acknowledges, a long outage."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.buffer import inspect
from drivers.profile import load_catalogue
from simulators.meters import MeterModel, SimulatedDevice
from simulators.modbus_server import FaultPlan, ModbusRtuServer, ModbusTcpServer
from simulators.pty import PtyPair
from tests.support import (
    AgentProcess,
    Broker,
    Subscriber,
    committed_through,
    free_port,
    require_binary,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.timeout(120)


class CountingModel(MeterModel):
    """Every read serves new values (base + n), and every value served is recorded.

    Integers below 2**24 are exact in float32 and in int16 x 0.1 the agent
    sees n / 10, so each value the agent forwards can be checked against
    what the meter really served.
    """

    def __init__(self, points: list[str], scale: float = 1.0) -> None:
        self.points = points
        self.scale = scale
        self.n = 0
        self.served: dict[str, set[float]] = {p: set() for p in points}
        self.lock = threading.Lock()

    def values(self, t: float) -> dict[str, float]:
        with self.lock:
            self.n += 1
            out = {p: round((1000 + 10 * i + self.n) * self.scale, 1) for i, p in enumerate(self.points)}
            for point, value in out.items():
                self.served[point].add(value)
            return out


def sdm_counting() -> tuple[SimulatedDevice, CountingModel]:
    profile = load_catalogue().get("eastron-sdm630")
    model = CountingModel([p.name for p in profile.points])
    return SimulatedDevice(profile, model), model


def test_garbled_rtu_frames_never_become_values(tmp_path: Path, broker: Broker, subscriber: Subscriber) -> None:
    require_binary("socat")
    device, model = sdm_counting()
    faults = FaultPlan({"crc": 0.1, "garbage": 0.1, "partial": 0.1, "silent": 0.05, "busy": 0.05}, seed=7)
    with PtyPair(tmp_path / "tty.meter", tmp_path / "tty.agent") as line:
        server = ModbusRtuServer({1: device}, str(line.meter_end), faults=faults).start()
        config = write_config(
            tmp_path / "agent.yaml", broker_port=broker.port, buffer=tmp_path / "buffer.db",
            buses=[{"id": "rs485", "type": "modbus-rtu", "port": str(line.agent_end), "timeout": "0.3s"}],
            devices=[{"id": "elec", "bus": "rs485", "address": 1, "profile": "eastron-sdm630", "interval": "0.5s"}],
        )
        agent = AgentProcess(config, tmp_path / "agent.log").start()
        try:
            wait_until(lambda: len(subscriber.unique_readings()) >= 120 and sum(faults.injected.values()) >= 10,
                       60, "readings through a noisy line")
        finally:
            assert agent.stop() == 0
            server.stop()
    readings = subscriber.unique_readings()
    altered = [r for r in readings.values() if r["value"] not in model.served[r["point"]]]
    assert altered == [], f"values that the meter never served: {altered[:5]}"
    assert set(range(1, max(readings) + 1)) == set(readings)
    assert "Traceback" not in agent.log.read_text()
    print("faults injected:", faults.injected, "readings:", len(readings))


def test_long_outage_with_a_small_buffer_evicts_gauges_and_reports_every_run(tmp_path: Path) -> None:
    units, models = {}, []
    for unit in range(1, 9):
        device, model = sdm_counting()
        units[unit] = device
        models.append(model)
    server = ModbusTcpServer(units).start()
    broker = Broker(tmp_path / "broker")  # down for the whole polling phase
    buffer = tmp_path / "buffer.db"
    config = write_config(
        tmp_path / "agent.yaml", broker_port=broker.port, buffer=buffer,
        buses=[{"id": "gw", "type": "modbus-tcp", "host": "127.0.0.1", "port": server.port}],
        devices=[{"id": f"elec-{u}", "bus": "gw", "address": u, "profile": "eastron-sdm630", "interval": "0.1s"}
                 for u in units],
    )
    text = config.read_text().replace(f"path: {buffer}", f"path: {buffer}\n  max_size_mb: 0.06")
    config.write_text(text)
    agent = AgentProcess(config, tmp_path / "agent.log").start()
    rss: list[int] = []
    subscriber = None
    try:
        def evicted_enough() -> bool:
            assert agent.proc is not None
            rss.append(_rss_kb(agent.proc.pid))
            return sum(1 for e in agent.events() if e.get("event") == "buffer.evicting") >= 3
        wait_until(evicted_enough, 60, "several evictions", interval=0.5)
        broker.start()
        subscriber = Subscriber(broker.port, "buildings/#").start()

        def all_accounted() -> bool:
            total = committed_through(config)
            missing = set(range(1, total - 200)) - set(subscriber.unique_readings())
            return total > 0 and _explained(missing, _evictions(subscriber))
        wait_until(all_accounted, 60, "every id delivered or explained by an eviction report")
    finally:
        code = agent.stop()
        if subscriber:
            subscriber.stop()
        broker.stop()
        server.stop()
    assert code == 0
    reports = _evictions(subscriber)
    received = set(subscriber.unique_readings())
    missing = set(range(1, max(received) + 1)) - received
    assert reports, "the cap must have forced evictions"
    assert all(r["kinds"] == ["gauge"] for r in reports), "gauges go first"
    assert sum(r["count"] for r in reports) == len(missing), "each missing reading is counted in a report"
    # Counters are kept while gauges can go: every counter value the meters
    # served reached the platform, poll after poll, with no hole.
    readings = subscriber.unique_readings().values()
    for unit, model in zip(units, models, strict=True):
        for point in ("energy_active_import", "energy_active_export"):
            seen = sorted(r["value"] for r in readings if r["device"] == f"elec-{unit}" and r["point"] == point)
            assert seen and seen == sorted(model.served[point])[: len(seen)], f"elec-{unit} {point} lost a poll"
    events = [e for e in agent.events() if e.get("event") == "buffer.evicting"]
    assert all(e["reason"] == "max_size" for e in events)
    steady = rss[len(rss) // 3:]
    print(f"RSS during the outage: min {min(steady)} kB, max {max(steady)} kB; evicted {len(missing)} readings")
    assert max(steady) - min(steady) < 20_000, "memory must stay flat however long the outage"


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _next_id(buffer: Path) -> int:
    """Read once the agent stopped (a running agent holds the buffer locked)."""
    return inspect(buffer).next_id


def _evictions(subscriber: Subscriber) -> list[dict]:
    return [e for message in subscriber.payloads("/events") for e in message["events"] if e["type"] == "evicted"]


def _explained(missing: set[int], reports: list[dict]) -> bool:
    """Every missing id lies in a reported range, and the counts add up."""
    inside = all(any(r["first_id"] <= i <= r["last_id"] for r in reports) for i in missing)
    return inside and sum(r["count"] for r in reports) >= len(missing)


def _fill(path: Path) -> None:
    """Write until the filesystem has not one byte left."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (65536, 4096, 1):
            chunk = b"\0" * size
            try:
                while True:
                    os.write(fd, chunk)
            except OSError:
                continue
    finally:
        os.close(fd)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real full filesystem: a 2 MB tmpfs (needs root; CI runs as root)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("CI runs as root and must run the full-disk test")
        pytest.skip("mounting a small tmpfs needs root")
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
                            capture_output=True, text=True, timeout=10)
    if result.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"cannot mount a tmpfs: {result.stderr}")
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, timeout=10)


def test_disk_full_holds_readings_in_memory_and_writes_them_when_space_returns(
        tmp_path: Path, small_disk: Path, broker: Broker, subscriber: Subscriber) -> None:
    device, model = sdm_counting()
    server = ModbusTcpServer({1: device}).start()
    buffer = small_disk / "buffer.db"
    config = write_config(
        tmp_path / "agent.yaml", broker_port=broker.port, buffer=buffer,
        buses=[{"id": "gw", "type": "modbus-tcp", "host": "127.0.0.1", "port": server.port}],
        devices=[{"id": "elec", "bus": "gw", "address": 1, "profile": "eastron-sdm630", "interval": "0.2s"}],
    )
    agent = AgentProcess(config, tmp_path / "agent.log").start()
    filler = small_disk / "filler"
    try:
        wait_until(lambda: len(subscriber.unique_readings()) >= 20, 20, "readings before the disk fills")
        _fill(filler)
        wait_until(lambda: any(e.get("event") == "buffer.write_failed" for e in agent.events()), 20,
                   "the agent to notice the full disk")
        time.sleep(2.0)  # polling goes on meanwhile
        filler.unlink()
        wait_until(lambda: any(e.get("event") == "buffer.write_resumed" for e in agent.events()), 20,
                   "writing to resume")
        wait_until(lambda: committed_through(config) > 0 and set(range(1, committed_through(config) + 1))
                   <= set(subscriber.unique_readings()), 30, "the catch-up")
    finally:
        assert agent.stop() == 0
        server.stop()
    events = [e["event"] for e in agent.events()]
    assert events.count("buffer.write_failed") == 1, "one event per state change"
    readings = subscriber.unique_readings()
    # No poll was lost while the disk was full: voltage_l1 values are the counting
    # model's, each poll once, and the served sequence has no hole.
    seen = sorted(r["value"] for r in readings.values() if r["point"] == "voltage_l1")
    served = sorted(model.served["voltage_l1"])
    assert seen == served[: len(seen)], "a poll taken while the disk was full went missing"
    assert len(served) - len(seen) <= 3  # at most the polls of the last flush before stop


def test_a_corrupt_buffer_is_moved_aside_and_a_new_stream_starts(tmp_path: Path, broker: Broker,
                                                                 subscriber: Subscriber) -> None:
    buffer = tmp_path / "buffer.db"
    buffer.write_bytes(b"SQLite format 3\0" + os.urandom(8192))
    device, _ = sdm_counting()
    server = ModbusTcpServer({1: device}).start()
    config = write_config(
        tmp_path / "agent.yaml", broker_port=broker.port, buffer=buffer,
        buses=[{"id": "gw", "type": "modbus-tcp", "host": "127.0.0.1", "port": server.port}],
        devices=[{"id": "elec", "bus": "gw", "address": 1, "profile": "eastron-sdm630", "interval": "1s"}],
    )
    agent = AgentProcess(config, tmp_path / "agent.log").start()
    try:
        wait_until(lambda: len(subscriber.unique_readings()) >= 10, 20, "readings into the new buffer")
    finally:
        assert agent.stop() == 0
        server.stop()
    moved = [e for e in agent.events() if e.get("event") == "buffer.corrupt_moved_aside"]
    assert len(moved) == 1
    assert Path(moved[0]["moved_to"]).exists()
    assert min(subscriber.unique_readings()) == 1


def test_refused_credentials_are_one_clear_event_and_polling_goes_on(tmp_path: Path) -> None:
    passwords = tmp_path / "passwd"
    passwords.write_text("gw:not-a-real-hash\n")
    broker = Broker(tmp_path / "broker", extra_conf=f"allow_anonymous false\npassword_file {passwords}\n")
    broker.start()  # the later "allow_anonymous false" overrides the default line
    secret = tmp_path / "secret"
    secret.write_text("wrong\n")
    device, _ = sdm_counting()
    server = ModbusTcpServer({1: device}).start()
    buffer = tmp_path / "buffer.db"
    config = write_config(
        tmp_path / "agent.yaml", broker_port=broker.port, buffer=buffer,
        buses=[{"id": "gw", "type": "modbus-tcp", "host": "127.0.0.1", "port": server.port}],
        devices=[{"id": "elec", "bus": "gw", "address": 1, "profile": "eastron-sdm630", "interval": "0.5s"}],
        mqtt_extra={"username": "gw", "password_file": str(secret)},
    )
    agent = AgentProcess(config, tmp_path / "agent.log").start()
    try:
        wait_until(lambda: committed_through(config) > 40, 20, "polling without a broker")
        time.sleep(3)
    finally:
        assert agent.stop() == 0
        server.stop()
        broker.stop()
    failed = [e for e in agent.events() if e.get("event") == "uplink.connect_failed"]
    assert len(failed) == 1
    assert "refused" in failed[0]["error"].lower() or "not authorised" in failed[0]["error"].lower()
    assert "wrong" not in agent.log.read_text(), "the password must never be logged"


class SilentBroker:
    """Accepts MQTT connections and CONNACKs them, then never acknowledges a
    PUBLISH: a broker that swallows messages. A real socket, a real protocol
    peer; mosquitto cannot be made to behave this badly."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(0.5)
        acked = False
        with conn:
            while not self._stop.is_set():
                try:
                    data = conn.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not data:
                    return
                if not acked and data[0] >> 4 == 1:  # CONNECT
                    conn.sendall(struct.pack("!BBBB", 0x20, 2, 0, 0))
                    acked = True

    def stop(self) -> None:
        self._stop.set()
        self.sock.close()


def test_a_broker_that_never_acknowledges_is_dropped_and_retried(tmp_path: Path) -> None:
    silent = SilentBroker()
    device, _ = sdm_counting()
    server = ModbusTcpServer({1: device}).start()
    buffer = tmp_path / "buffer.db"
    config = write_config(
        tmp_path / "agent.yaml", broker_port=silent.port, buffer=buffer,
        buses=[{"id": "gw", "type": "modbus-tcp", "host": "127.0.0.1", "port": server.port}],
        devices=[{"id": "elec", "bus": "gw", "address": 1, "profile": "eastron-sdm630", "interval": "0.5s"}],
        mqtt_extra={"ack_timeout": "2s"},
    )
    agent = AgentProcess(config, tmp_path / "agent.log").start()
    try:
        wait_until(lambda: silent.connections >= 2, 30, "a second connection after the ack timeout")
    finally:
        assert agent.stop() == 0
        server.stop()
        silent.stop()
    events = [e["event"] for e in agent.events()]
    assert "uplink.ack_timeout" in events
    kept = inspect(buffer).waiting_ids()
    assert kept == set(range(1, _next_id(buffer))), "nothing unacknowledged may leave the buffer"
    assert free_port()  # the machine still has ports: no leaked listener storm


def test_an_unplugged_serial_adapter_and_a_closed_socket_recover_within_an_interval(
        tmp_path: Path, broker: Broker, subscriber: Subscriber) -> None:
    """The pty pair vanishes (a USB adapter pulled) and comes back under the
    same name; a TCP meter's socket closes and its server returns on the
    same port. Each device goes silent once, comes back once, and polling on
    the other bus never stops."""
    require_binary("socat")
    catalogue = load_catalogue()
    room = catalogue.get("xy-md02")
    line = PtyPair(tmp_path / "tty.meter", tmp_path / "tty.agent").start()
    rtu = ModbusRtuServer({3: SimulatedDevice(room, CountingModel(["temperature", "humidity"], 0.1))},
                          str(line.meter_end)).start()
    tcp = ModbusTcpServer({10: SimulatedDevice(room, CountingModel(["temperature", "humidity"], 0.1))}).start()
    tcp_port = tcp.port
    config = write_config(
        tmp_path / "agent.yaml", broker_port=broker.port, buffer=tmp_path / "buffer.db",
        buses=[{"id": "rs485", "type": "modbus-rtu", "port": str(line.agent_end), "timeout": "0.3s"},
               {"id": "gw", "type": "modbus-tcp", "host": "127.0.0.1", "port": tcp_port, "timeout": "0.5s"}],
        devices=[{"id": "serial-room", "bus": "rs485", "address": 3, "profile": "xy-md02", "interval": "0.5s"},
                 {"id": "tcp-room", "bus": "gw", "address": 10, "profile": "xy-md02", "interval": "0.5s"}],
    )
    agent = AgentProcess(config, tmp_path / "agent.log").start()

    def count(device: str) -> int:
        return sum(1 for r in subscriber.unique_readings().values() if r["device"] == device)

    def events(name: str) -> list[str]:
        return [e["device"] for e in agent.events() if e.get("event") == name]
    try:
        wait_until(lambda: count("serial-room") >= 4 and count("tcp-room") >= 4, 20, "both devices read")
        rtu.stop()
        line.stop()  # the adapter is pulled: its device node disappears
        wait_until(lambda: "serial-room" in events("device.silent"), 10, "the serial device silent")
        tcp_before = count("tcp-room")
        time.sleep(2.0)
        assert count("tcp-room") >= tcp_before + 4, "the other bus kept polling"
        line = PtyPair(tmp_path / "tty.meter", tmp_path / "tty.agent").start()  # plugged back in
        rtu = ModbusRtuServer({3: SimulatedDevice(room, CountingModel(["temperature", "humidity"], 0.1))},
                              str(line.meter_end)).start()
        wait_until(lambda: "serial-room" in events("device.back"), 10, "the serial device back")

        tcp.stop()  # the meter's socket closes
        wait_until(lambda: "tcp-room" in events("device.silent"), 10, "the TCP device silent")
        tcp = ModbusTcpServer({10: SimulatedDevice(room, CountingModel(["temperature", "humidity"], 0.1))},
                              port=tcp_port).start()
        wait_until(lambda: "tcp-room" in events("device.back"), 10, "the TCP device back")
    finally:
        code = agent.stop()
        rtu.stop()
        line.stop()
        tcp.stop()
    assert code == 0
    assert events("device.silent").count("serial-room") == 1
    assert events("device.back").count("serial-room") == 1
    assert events("device.silent").count("tcp-room") == 1
    ids = set(subscriber.unique_readings())
    assert ids == set(range(1, max(ids) + 1))
