"""Real parts for tests: a Mosquitto broker, an MQTT subscriber, the agent process.

Nothing here is a mock. The broker is the real mosquitto binary on a free
loopback port, the subscriber a real paho client, the agent the real
command line in its own process (so signals, exit codes and stdout are the
ones systemd would see).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion

REPO = Path(__file__).resolve().parents[1]


def require_binary(name: str) -> str:
    """The path of a binary the tests need. In CI a missing one fails the run."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (apt-get install {name}); .ci/run installs it"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


class Broker:
    """A real Mosquitto on 127.0.0.1; can be stopped and started again on the same port."""

    def __init__(self, workdir: Path, port: int | None = None, extra_conf: str = "") -> None:
        self.binary = require_binary("mosquitto")
        self.port = port or free_port()
        self.workdir = workdir
        self.conf = workdir / "mosquitto.conf"
        self.extra_conf = extra_conf
        self._proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "mosquitto.log"

    def start(self) -> Broker:
        self.workdir.mkdir(parents=True, exist_ok=True)
        # As root, mosquitto would drop to its own user and lose access to the test's files.
        user = "user root\n" if os.geteuid() == 0 else ""
        self.conf.write_text(
            f"{user}listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
            f"max_inflight_messages 100\n{self.extra_conf}\n"
        )
        with self.log.open("ab") as log:
            self._proc = proc = subprocess.Popen([self.binary, "-c", str(self.conf)], stdout=log, stderr=log)
        wait_until(lambda: port_open(self.port) or proc.poll() is not None, 10, "mosquitto to listen")
        if self._proc.poll() is not None:
            raise AssertionError(f"mosquitto exited: {self.log.read_text()[-2000:]}")
        return self

    def pause(self) -> None:
        """SIGSTOP: connections stay open, nothing is acknowledged."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self._proc is not None
        self._proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGCONT)
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None


class Subscriber:
    """An independent platform: subscribes to everything under a prefix."""

    def __init__(self, port: int, topic: str = "#", client_id: str = "test-platform") -> None:
        self.port = port
        self.topic = topic
        self.messages: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        self._client.on_message = self._on_message
        self._client.on_connect = lambda c, *_: c.subscribe(self.topic, qos=1)
        self._client.on_subscribe = lambda *_: self._subscribed.set()

    def _on_message(self, _client: mqtt.Client, _userdata: object, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((message.topic, bytes(message.payload), bool(message.retain)))

    def start(self) -> Subscriber:
        self._client.connect("127.0.0.1", self.port, keepalive=30)
        self._client.loop_start()
        if not self._subscribed.wait(10):
            raise AssertionError("subscriber could not subscribe")
        return self

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def payloads(self, suffix: str) -> list[dict[str, Any]]:
        with self._lock:
            return [json.loads(p) for t, p, _ in self.messages if t.endswith(suffix)]

    def readings(self) -> list[dict[str, Any]]:
        """Every reading received, duplicates included, in arrival order."""
        return [r for batch in self.payloads("/readings") for r in batch["readings"]]

    def unique_readings(self) -> dict[int, dict[str, Any]]:
        return {r["id"]: r for r in self.readings()}


class AgentProcess:
    """`retrofit-agent run` in its own process, stdout captured to a file."""

    def __init__(self, config: Path, log: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.log = log
        self.env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> AgentProcess:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "agent.cli", "run", "--config", str(self.config)],
                stdout=out, stderr=subprocess.STDOUT, env=self.env, cwd=REPO,
            )
        return self

    def wait_started(self, timeout: float = 30.0) -> AgentProcess:
        """Until the agent logged agent.started (its signal handlers are in place)."""
        wait_until(lambda: any(e.get("event") == "agent.started" for e in self.events())
                   or (self.proc is not None and self.proc.poll() is not None), timeout, "the agent to start")
        return self

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                out.append({"event": "<non-json>", "line": line})
        return out

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"agent did not stop within {timeout} s after {signal.Signals(sig).name}") from None


def write_config(path: Path, *, broker_port: int, buffer: Path, buses: list[dict[str, Any]],
                 devices: list[dict[str, Any]], mqtt_extra: dict[str, Any] | None = None,
                 gateway: str = "gw-test", site: str = "test-site") -> Path:
    config = {
        "gateway": {"id": gateway, "site": site},
        "buffer": {"path": str(buffer)},
        "uplink": {"mqtt": {"host": "127.0.0.1", "port": broker_port, "topic_prefix": "buildings",
                            **(mqtt_extra or {})}},
        "buses": buses,
        "devices": devices,
        # Never the machine's /run/retrofit-agent/: a developer may run the service there.
        # Snapshots often: tests watch a running agent's buffer through it.
        "health": {"status_file": str(path.parent / f"{path.stem}.status.json"), "snapshot_interval": "0.5s"},
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def agent_status(config: Path) -> dict[str, Any]:
    """The running agent's status snapshot (written every few seconds; {} before the first).

    The buffer itself is locked while an agent runs: what it holds is seen
    here, or with agent.buffer.inspect once the agent stopped."""
    path = config.parent / f"{config.stem}.status.json"
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return {}


def committed_through(config: Path) -> int:
    """The highest id the running agent committed, from its status snapshot (0 before the first)."""
    buffer = agent_status(config).get("buffer") or {}
    return int(buffer.get("next_id", 1)) - 1
