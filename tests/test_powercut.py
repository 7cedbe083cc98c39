"""Power cuts: the buffer on a file system that forgets what was not synced.

Issue 14. A power cut is not a crash: what the kernel had not written to
the card is gone too. The agent is killed at random moments (while polling,
during checkpoints and sweeps, while draining a backlog, while evicting,
with the broker up and down), everything not synced is thrown away
(tests/powercut/fs.py), and the agent starts again on what is left. An
independent platform with a persistent session records what arrives.

The contract checked, with each ``synchronous`` setting the config accepts:
- no (stream, id) ever carries two different readings: after every cut the
  buffer's next id lies above every id the platform has seen;
- every id missing at the platform is covered by a report (evicted);
- every reading durable before a cut is delivered (the final stream is
  complete up to the last id committed);
- every value is one the meter served.
"""

from __future__ import annotations

import json
import random
import signal
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.buffer import inspect
from drivers.profile import load_catalogue
from simulators.meters import SimulatedDevice
from simulators.modbus_server import ModbusTcpServer
from tests.powercut import PowerCutMount, fuse_problem
from tests.support import AgentProcess, Broker, agent_status, wait_until, write_config
from tests.test_faults import CountingModel

pytestmark = pytest.mark.timeout(280)

# Cuts per synchronous setting: 50 (issue 14 asks at least 50 with each
# setting). Each agent lives 0.25 to 1.25 s, committing every 0.25 s,
# checkpointing every 40 pages and sweeping every 0.5 s, so the random cuts
# land at many points of its life (while it starts and recovers the buffer,
# polls, commits, checkpoints, sweeps, evicts, drains) in every phase of the
# broker below: about five in six after new durable commits, the rest in
# start-up.
CUTS = 50
# The broker is up, then away for a stretch (a backlog builds, and the cap,
# the smallest the config accepts, evicts), back (a drain), then flapping.
OUTAGE = range(10, 28)
FLAPPING_FROM = 38


class Platform:
    """Persistent session, QoS 1: what the broker accepted while this was away
    is queued for it, so only the agent can lose or renumber a reading."""

    def __init__(self, port: int, name: str) -> None:
        self.readings: dict[tuple[str, int], list[dict[str, Any]]] = {}
        self.events: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name, clean_session=False)
        self.client.reconnect_delay_set(0.1, 1)  # type: ignore[arg-type]  # paho takes float seconds; says int
        self.client.on_connect = lambda c, *_: c.subscribe([("buildings/+/+/readings", 1),
                                                            ("buildings/+/+/events", 1)])
        self.client.on_message = self._on_message
        self.port = port

    def _on_message(self, _c: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        body = json.loads(message.payload)
        with self.lock:
            if message.topic.endswith("/events"):
                self.events.extend({**e, "stream": body["stream"]} for e in body["events"])
                return
            for reading in body["readings"]:
                seen = self.readings.setdefault((body["stream"], reading["id"]), [])
                if reading not in seen:
                    seen.append(reading)

    def start(self) -> Platform:
        self.client.connect("127.0.0.1", self.port, keepalive=5)
        self.client.loop_start()
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def ids(self, stream: str) -> set[int]:
        with self.lock:
            return {i for s, i in self.readings if s == stream}

    def highest(self) -> int:
        with self.lock:
            return max((i for _, i in self.readings), default=0)


@pytest.mark.long(43)
@pytest.mark.parametrize("synchronous", ["full", "normal"])
def test_power_cuts_never_renumber_lose_or_alter_a_durable_reading(tmp_path: Path, synchronous: str) -> None:
    problem = fuse_problem()
    assert problem is None, f"this test needs a FUSE file system: {problem}"
    rng = random.Random(f"power-{synchronous}")
    catalogue = load_catalogue()
    sdm, room = catalogue.get("eastron-sdm630"), catalogue.get("xy-md02")
    models = {f"elec-{u}": CountingModel([p.name for p in sdm.points]) for u in range(1, 7)}
    models["room"] = CountingModel([p.name for p in room.points], scale=0.1)
    units = {u: SimulatedDevice(sdm, models[f"elec-{u}"]) for u in range(1, 7)}
    units[10] = SimulatedDevice(room, models["room"])
    server = ModbusTcpServer(units).start()
    card = PowerCutMount(tmp_path / "card", tmp_path / "fs.log").start()
    broker = Broker(tmp_path / "broker", extra_conf=(
        f"persistence true\npersistence_location {tmp_path / 'broker'}/\nmax_queued_messages 1000000\n"
        "autosave_interval 1\n"))
    broker.start()
    platform = Platform(broker.port, f"power-{synchronous}").start()
    buffer = tmp_path / "card" / "state" / "buffer.db"
    ram = tmp_path / "agent.ram"  # the spool's directory (tests/support.py): a power cut empties it too
    config = write_config(
        tmp_path / "agent.yaml", broker_port=broker.port, buffer=buffer,
        buses=[{"id": "gw", "type": "modbus-tcp", "host": "127.0.0.1", "port": server.port}],
        devices=[{"id": f"elec-{u}", "bus": "gw", "address": u, "profile": "eastron-sdm630", "interval": "0.1s"}
                 for u in range(1, 7)] + [
                {"id": "room", "bus": "gw", "address": 10, "profile": "xy-md02", "interval": "0.5s"}],
        mqtt_extra={"batch": 200, "inflight": 5},
    )
    text = config.read_text().replace(
        "flush_interval: 1s", f"synchronous: {synchronous}\n  flush_interval: 0.25s\n  max_size_mb: 0.02")
    config.write_text(text)
    # Checkpoints and sweeps many times a second, so cuts land inside them too.
    env = {"RETROFIT_FAILPOINTS": "buffer-checkpoint-pages=40,buffer-purge-s=0.5"}
    durable: list[int] = []  # the buffer's next id after each cut
    reused: list[str] = []
    broker_up = True
    try:
        for cut in range(CUTS):
            wanted_up = cut not in OUTAGE and not (cut >= FLAPPING_FROM and rng.random() < 0.3)
            if wanted_up != broker_up:
                (broker.start if wanted_up else broker.stop)()
                broker_up = wanted_up
            with AgentProcess(config, tmp_path / f"agent-{cut}.log", env=env) as agent:
                threading.Event().wait(rng.uniform(0.25, 1.25))  # the moment of the cut: chosen at random, not a wait
                agent.stop(signal.SIGKILL)
            seen_before = platform.highest()
            card.cut()
            for spooled in ram.glob("*"):
                spooled.unlink()
            # Killed before it made the file (start-up takes a moment): nothing is durable yet.
            next_id = inspect(buffer).next_id if buffer.exists() else 1
            durable.append(next_id)
            if next_id <= seen_before:
                reused.append(f"cut {cut}: the platform saw id {seen_before}, the buffer now issues {next_id}")
        if not broker_up:
            broker.start()
        # The end: the meters go quiet, one more run delivers what is left.
        server.stop()
        with AgentProcess(config, tmp_path / "agent-final.log", env=env) as final:
            final.wait_started()
            started = time.time()
            wait_until(lambda: _settled(config, platform, started), 90, "every committed reading at the platform")
        figures = card.figures()
        last = inspect(buffer).next_id - 1
    finally:
        platform.stop()
        broker.stop()
        server.stop()
        card.stop()

    assert reused == [], "an id the platform had seen was issued again after a power cut"
    streams = {s for s, _ in platform.readings}
    assert len(streams) == 1, f"the buffer file survived every cut: one stream, not {len(streams)}"
    (stream,) = streams
    doubled = {key: versions for key, versions in platform.readings.items() if len(versions) > 1}
    assert doubled == {}, f"ids that arrived with two different readings: {list(doubled.items())[:3]}"
    received = platform.ids(stream)
    missing = set(range(1, last + 1)) - received
    unexplained = missing - _explained(platform)
    assert unexplained == set(), f"ids missing without a report: {sorted(unexplained)[:20]}"
    assert any(e["type"] == "evicted" for e in platform.events), "the outage filled the capped buffer"
    assert sum(1 for e in platform.events if e["type"] == "unclean_stop") >= CUTS // 2, "unclean starts are reported"
    with platform.lock:
        values = [v for versions in platform.readings.values() for v in versions]
    altered = [r for r in values if r["value"] not in models[r["device"]].served[r["point"]]]
    assert altered == [], f"values the meters never served: {altered[:3]}"
    grew = sum(1 for before, after in zip([1, *durable], durable, strict=False) if after > before)
    print(f"synchronous={synchronous}: {CUTS} cuts ({grew} after new durable commits), ids 1..{last}, "
          f"{len(received)} delivered, {len(missing)} evicted, durable next ids {durable[:5]}...{durable[-3:]}, "
          f"file system {figures}")


def _explained(platform: Platform) -> set[int]:
    with platform.lock:
        return {i for e in platform.events if e["type"] in ("evicted", "corrupt")
                for i in range(e["first_id"], e["last_id"] + 1)}


def _settled(config: Path, platform: Platform, since: float) -> bool:
    """The running agent has nothing left to send, and the platform has it all."""
    status = agent_status(config)
    if status.get("ts", 0) / 1000 < since:
        return False  # a snapshot of an earlier run
    buffer = status.get("buffer") or {}
    if buffer.get("depth") != 0 or buffer.get("held_in_memory"):
        return False
    through = int(buffer["next_id"]) - 1
    streams = {s for s, _ in platform.readings}
    if through <= 0 or len(streams) != 1:
        return False
    return not set(range(1, through + 1)) - platform.ids(streams.pop()) - _explained(platform)
