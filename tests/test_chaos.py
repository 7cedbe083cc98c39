"""Chaos: the agent killed with SIGKILL at random moments, the broker restarted,
while polling at 1 s; then prove from the ids and the meters' own record that
no committed reading was lost and no value altered."""

from __future__ import annotations

import json
import random
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.buffer import inspect
from drivers.profile import load_catalogue
from simulators.meters import SimulatedDevice
from simulators.modbus_server import ModbusTcpServer
from tests.support import AgentProcess, Broker, wait_until, write_config
from tests.test_faults import CountingModel

pytestmark = pytest.mark.timeout(240)

AGENT_KILLS = 20
BROKER_RESTARTS = 5


class DurableSubscriber:
    """A platform with a persistent session: what the broker accepted while it
    was away is queued for it, so only the agent can lose a reading here."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.raw: list[dict] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="chaos-platform", clean_session=False)
        self.client.reconnect_delay_set(0.1, 1)  # type: ignore[arg-type]  # paho takes float seconds; says int
        self.client.on_connect = lambda c, *_: c.subscribe("buildings/+/+/readings", qos=1)
        self.client.on_message = self._on_message

    def _on_message(self, _c: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        batch = json.loads(message.payload)
        with self.lock:
            self.raw.extend(batch["readings"])

    def start(self) -> DurableSubscriber:
        self.client.connect("127.0.0.1", self.port, keepalive=5)
        self.client.loop_start()
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def ids(self) -> set[int]:
        with self.lock:
            return {r["id"] for r in self.raw}


def test_agent_kills_and_broker_restarts_lose_nothing(tmp_path: Path) -> None:
    rng = random.Random(20261128)
    catalogue = load_catalogue()
    sdm, room = catalogue.get("eastron-sdm630"), catalogue.get("xy-md02")
    models = {
        "elec-1": CountingModel([p.name for p in sdm.points]),
        "elec-2": CountingModel([p.name for p in sdm.points]),
        "room": CountingModel([p.name for p in room.points], scale=0.1),
    }
    server = ModbusTcpServer({
        1: SimulatedDevice(sdm, models["elec-1"]),
        2: SimulatedDevice(sdm, models["elec-2"]),
        10: SimulatedDevice(room, models["room"]),
    }).start()
    broker = Broker(tmp_path / "broker", extra_conf=(
        f"persistence true\npersistence_location {tmp_path / 'broker'}/\nmax_queued_messages 100000\n"
        "autosave_interval 1\n"))
    broker.start()
    platform = DurableSubscriber(broker.port).start()
    wait_until(platform.client.is_connected, 10, "the platform to connect")
    buffer = tmp_path / "buffer.db"
    config = write_config(
        tmp_path / "agent.yaml", broker_port=broker.port, buffer=buffer,
        buses=[{"id": "gw", "type": "modbus-tcp", "host": "127.0.0.1", "port": server.port}],
        devices=[
            {"id": "elec-1", "bus": "gw", "address": 1, "profile": "eastron-sdm630", "interval": "1s"},
            {"id": "elec-2", "bus": "gw", "address": 2, "profile": "eastron-sdm630", "interval": "1s"},
            {"id": "room", "bus": "gw", "address": 10, "profile": "xy-md02", "interval": "1s"},
        ],
        mqtt_extra={"batch": 25, "inflight": 5},
    )
    restarts_at = set(rng.sample(range(AGENT_KILLS), BROKER_RESTARTS))
    kills = 0
    try:
        for round_ in range(AGENT_KILLS):
            agent = AgentProcess(config, tmp_path / f"agent-{round_}.log").start()
            time.sleep(rng.uniform(0.6, 2.4))
            if round_ in restarts_at:
                broker.stop()
                time.sleep(rng.uniform(0.2, 0.8))
                broker.start()
            agent.stop(signal.SIGKILL)
            kills += 1
        committed = inspect(buffer).next_id - 1  # what the killed runs committed
        final = AgentProcess(config, tmp_path / "agent-final.log").start().wait_started()
        wait_until(lambda: set(range(1, committed + 1)) <= platform.ids(), 60,
                   "every committed reading at the platform")
        assert final.stop() == 0
    finally:
        platform.stop()
        broker.stop()
        server.stop()

    with platform.lock:
        raw = list(platform.raw)
    by_id: dict[int, dict] = {}
    altered: list[tuple[object, object]] = []
    for reading in raw:
        first = by_id.setdefault(reading["id"], reading)
        if first != reading:
            altered.append((first, reading))
        if reading["value"] not in models[reading["device"]].served[reading["point"]]:
            altered.append(("never served", reading))
    ids = set(by_id)
    missing = sorted(set(range(1, max(ids) + 1)) - ids)
    duplicates = sum(Counter(r["id"] for r in raw).values()) - len(ids)
    print(f"chaos: {kills} agent kills, {BROKER_RESTARTS} broker restarts, {len(ids)} readings, "
          f"{duplicates} duplicates (resent unacknowledged batches), {len(missing)} missing, {len(altered)} altered")
    assert kills >= 20
    assert missing == []
    assert altered == []
    assert len({r["ts"] for r in raw}) > 10
