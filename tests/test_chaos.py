"""Chaos: the agent killed with SIGKILL at random moments, the broker restarted,
while polling and committing every 0.25 s; then prove from the ids and the meters' own record that
no committed reading was lost and no value altered.

The moments are random in the agent's progress, not in wall time: each kill
comes after a random number of new readings was committed (0: at once, while
it starts), and the broker stays down while a random number more are
committed, so a loaded machine gets the same mix of kills as an idle one.
"""

from __future__ import annotations

import json
import random
import signal
import threading
from collections import Counter
from pathlib import Path
from typing import Self

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from drivers.profile import load_catalogue
from simulators.meters import SimulatedDevice
from simulators.modbus_server import ModbusTcpServer
from tests.support import AgentProcess, Broker, buffer_next_id, running, wait_until, write_config
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

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def ids(self) -> set[int]:
        with self.lock:
            return {r["id"] for r in self.raw}


@pytest.mark.long(31)
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
    })
    broker = Broker(tmp_path / "broker", extra_conf=(
        f"persistence true\npersistence_location {tmp_path / 'broker'}/\nmax_queued_messages 100000\n"
        "autosave_interval 1\n"))
    buffer = tmp_path / "buffer.db"
    config = write_config(
        tmp_path / "agent.yaml", broker_port=broker.port, buffer=buffer,
        buses=[{"id": "gw", "type": "modbus-tcp", "host": "127.0.0.1", "port": server.port}],
        devices=[
            {"id": "elec-1", "bus": "gw", "address": 1, "profile": "eastron-sdm630", "interval": "0.25s"},
            {"id": "elec-2", "bus": "gw", "address": 2, "profile": "eastron-sdm630", "interval": "0.25s"},
            {"id": "room", "bus": "gw", "address": 10, "profile": "xy-md02", "interval": "0.25s"},
        ],
        mqtt_extra={"batch": 25, "inflight": 5},
    )
    # Commits (and status snapshots, where the test sees them) as often as polls:
    # each round's random number of readings is reached in a fraction of the time.
    config.write_text(config.read_text().replace("flush_interval: 1s", "flush_interval: 0.25s")
                      .replace("snapshot_interval: 0.5s", "snapshot_interval: 0.25s"))
    restarts_at = set(rng.sample(range(AGENT_KILLS), BROKER_RESTARTS))
    kills = 0

    def commits(count: int, what: str) -> None:
        """Wait until the agent committed ``count`` more readings (one poll of the three meters: 22)."""
        target = buffer_next_id(buffer) + count
        wait_until(lambda: buffer_next_id(buffer) >= target, 30, what)

    with running(server), broker, DurableSubscriber(broker.port) as platform:
        wait_until(platform.client.is_connected, 10, "the platform to connect")
        for round_ in range(AGENT_KILLS):
            with AgentProcess(config, tmp_path / f"agent-{round_}.log") as agent:
                commits(rng.randint(0, 50), f"round {round_}: readings committed before the kill")
                if round_ in restarts_at:
                    broker.stop()
                    commits(rng.randint(1, 25), f"round {round_}: readings committed while the broker is down")
                    broker.start()
                agent.stop(signal.SIGKILL)
                kills += 1
        with AgentProcess(config, tmp_path / "agent-final.log"):
            commits(22, "the final agent to commit a poll")
            committed = buffer_next_id(buffer) - 1
            wait_until(lambda: set(range(1, committed + 1)) <= platform.ids(), 60,
                       "every committed reading at the platform")

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


def test_a_crash_between_commits_loses_no_reading_already_read(tmp_path: Path) -> None:
    """Commits come every two minutes on a gateway (each costs the SD card a
    sync); the readings in between are spooled in RAM (agent/spool.py), so a
    SIGKILL — the OOM killer, the watchdog — loses none of them."""
    catalogue = load_catalogue()
    sdm = catalogue.get("eastron-sdm630")
    model = CountingModel([p.name for p in sdm.points])
    server = ModbusTcpServer({1: SimulatedDevice(sdm, model)}).start()
    broker = Broker(tmp_path / "broker").start()
    platform = DurableSubscriber(broker.port).start()
    buffer = tmp_path / "buffer.db"
    config = write_config(
        tmp_path / "agent.yaml", broker_port=broker.port, buffer=buffer,
        buses=[{"id": "gw", "type": "modbus-tcp", "host": "127.0.0.1", "port": server.port}],
        devices=[{"id": "elec", "bus": "gw", "address": 1, "profile": "eastron-sdm630", "interval": "0.2s"}],
    )
    config.write_text(config.read_text().replace("flush_interval: 1s", "flush_interval: 2m"))
    try:
        with AgentProcess(config, tmp_path / "agent-1.log") as agent:
            agent.wait_started()
            wait_until(lambda: len(model.served["energy_active_import"]) >= 15, 20, "polls before the crash")
            agent.stop(signal.SIGKILL)
        assert buffer_next_id(buffer) == 1, "nothing was committed yet: the flush interval is two minutes"
        served_before = len(model.served["energy_active_import"])
        with AgentProcess(config, tmp_path / "agent-2.log") as again:
            again.wait_started()
            wait_until(lambda: len(platform.ids()) >= 10 * (served_before - 1), 30, "the spooled readings delivered")
    finally:
        platform.stop()
        broker.stop()
        server.stop()
    recovered = [e for e in again.events() if e.get("event") == "spool.recovered"]
    assert len(recovered) == 1 and recovered[0]["readings"] >= 10 * (served_before - 1)
    with platform.lock:
        seen = sorted(r["value"] for r in platform.raw if r["point"] == "energy_active_import")
    served = sorted(model.served["energy_active_import"])
    # Every poll the killed agent completed arrived (the one it was in the middle of may not).
    assert seen == served[: len(seen)] and len(seen) >= served_before - 1, (len(seen), served_before)
