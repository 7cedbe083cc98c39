"""The daemon as systemd sees it: sd_notify on a real unix datagram socket,
the watchdog, and `retrofit-agent status` from the snapshot file."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from drivers.profile import load_catalogue
from simulators.meters import SimulatedDevice
from simulators.modbus_server import ModbusTcpServer
from tests.support import REPO, AgentProcess, Broker, Subscriber, running, wait_until, write_config
from tests.test_e2e import ROOM_VALUES, FixedModel

pytestmark = pytest.mark.timeout(60)


class NotifySocket:
    """What systemd listens on: a unix datagram socket; we record every message."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []

    def collect(self, seconds: float, until: Callable[[], bool] | None = None) -> None:
        """Record messages for ``seconds``, or until ``until()`` holds (then
        it must hold within ``seconds``)."""
        deadline = time.monotonic() + seconds
        while not (until is not None and until()):
            if time.monotonic() >= deadline:
                if until is not None:
                    raise AssertionError(f"timed out after {seconds} s; messages: {self.messages}")
                return
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            self.messages.append((time.monotonic(), data.decode()))

    def times_of(self, field: str) -> list[float]:
        return [t for t, m in self.messages if field in m.split("\n")]

    def close(self) -> None:
        self.sock.close()


def _room_setup(tmp_path: Path, broker_port: int, **extra: object) -> tuple[ModbusTcpServer, Path]:
    server = ModbusTcpServer({10: SimulatedDevice(load_catalogue().get("xy-md02"), FixedModel(ROOM_VALUES))})
    config = write_config(
        tmp_path / "agent.yaml", broker_port=broker_port, buffer=tmp_path / "state" / "buffer.db",
        buses=[{"id": "gw", "type": "modbus-tcp", "host": "127.0.0.1", "port": server.port}],
        devices=[{"id": "room-101", "bus": "gw", "address": 10, "profile": "xy-md02", "interval": "1s"}],
    )
    if extra:
        data = yaml.safe_load(config.read_text())
        data.update(extra)
        config.write_text(yaml.safe_dump(data, sort_keys=False))
    return server, config


def test_ready_then_regular_watchdog(tmp_path: Path, broker: Broker) -> None:
    notify = NotifySocket(tmp_path / "notify.sock")
    server, config = _room_setup(tmp_path, broker.port)
    with running(server), AgentProcess(config, tmp_path / "agent.log",
                                       env={"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "2000000"}):
        notify.collect(15.0, until=lambda: len(notify.times_of("WATCHDOG=1")) >= 3)
    notify.collect(5.0, until=lambda: bool(notify.times_of("STOPPING=1")))
    notify.close()
    ready = notify.times_of("READY=1")
    watchdog = notify.times_of("WATCHDOG=1")
    assert len(ready) == 1
    assert len(watchdog) >= 3 and min(watchdog) > ready[0], "READY=1 comes first, then heartbeats"
    assert any(m.startswith("STATUS=") or "\nSTATUS=" in m for _, m in notify.messages)
    assert notify.times_of("STOPPING=1"), "systemd is told when the service stops"


@pytest.mark.long(11)
def test_watchdog_starves_when_a_worker_is_stuck(tmp_path: Path, broker: Broker) -> None:
    """A hung serial driver cannot be produced on this machine, so the bus
    worker is made to hang at a failpoint (agent/failpoints.py); everything
    else is real."""
    notify = NotifySocket(tmp_path / "notify.sock")
    server, config = _room_setup(tmp_path, broker.port, health={"stall_after": "3s",
                                                              "status_file": str(tmp_path / "status.json")})
    agent = AgentProcess(config, tmp_path / "agent.log", env={
        "NOTIFY_SOCKET": str(notify.path), "RETROFIT_FAILPOINTS": "stall-bus:gw"})
    with running(server), agent:
        # A window on purpose: what is proven is that no heartbeat comes once the worker is stuck.
        notify.collect(8.0)
        code = agent.stop()
    notify.close()
    ready = notify.times_of("READY=1")[0]
    watchdog = notify.times_of("WATCHDOG=1")
    stuck = [e for e in agent.events() if e.get("event") == "agent.worker_stuck"]
    assert code == 0
    assert len(stuck) == 1 and stuck[0]["workers"] == ["bus-gw"]
    assert watchdog, "fed while the worker was still within its allowance"
    assert max(watchdog) - ready < 5.0, "no WATCHDOG=1 once the worker is stuck"
    assert not any(t > ready + 5.0 for t in watchdog)


def test_status_shows_devices_uplink_and_buffer(tmp_path: Path, broker: Broker, subscriber: Subscriber) -> None:
    server, config = _room_setup(tmp_path, broker.port)

    def status() -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "agent.cli", "status", "--config", str(config)],
                              check=False, capture_output=True, text=True, cwd=REPO, timeout=30)
    with running(server), AgentProcess(config, tmp_path / "agent.log"):
        wait_until(lambda: len(subscriber.unique_readings()) >= 4, 20, "readings")
        wait_until(lambda: "room-101" in status().stdout and "last ack never" not in status().stdout, 20,
                   "a snapshot with the device and an ack")
        while_running = status()
    assert while_running.returncode == 0, while_running.stderr
    assert "retrofit-agent: running" in while_running.stdout
    assert "uplink: connected" in while_running.stdout
    row = next(line for line in while_running.stdout.splitlines() if line.startswith("room-101"))
    assert row.split()[1:3] == ["gw", "ok"]
    stopped = status()
    assert stopped.returncode == 3
    assert "retrofit-agent: stopped" in stopped.stdout
