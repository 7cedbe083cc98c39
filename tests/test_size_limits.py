"""Size-limited brokers (issue 20, finding 4): every message fits, nothing is lost.

A broker with ``max_packet_size`` dropped the connection at the agent's
first (status) message, every time, and the log never said why. A broker
with ``message_size_limit`` silently dropped the oversized status and
retained meta but acknowledged them, so compact readings were acknowledged
and deleted while the platform never got the meta needed to decode them.
Real Mosquitto with each limit; thirty room sensors make the status and the
series description larger than the limit.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.payload import decode_compact
from drivers.profile import load_catalogue
from simulators.meters import SimulatedDevice
from simulators.modbus_server import ModbusTcpServer
from tests.support import AgentProcess, Broker, running, wait_until, write_config
from tests.test_e2e import ROOM_VALUES, FixedModel, assert_contiguous

pytestmark = pytest.mark.timeout(120)

ROOMS = 30


class Recorder:
    """Every message on the gateway's topics, its size, and the compact readings decoded."""

    def __init__(self, port: int) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="size-platform")
        self.client.on_connect = lambda c, *_: c.subscribe("buildings/#", qos=1)
        self.client.on_message = self._on_message
        self.port = port

    def _on_message(self, _c: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append((message.topic, bytes(message.payload)))

    def __enter__(self) -> Recorder:
        self.client.connect("127.0.0.1", self.port, keepalive=30)
        self.client.loop_start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def readings(self) -> dict[int, dict[str, Any]]:
        with self.lock:
            messages = list(self.messages)
        meta: dict[str, Any] = {"series": {}}
        out: dict[int, dict[str, Any]] = {}
        for topic, payload in messages:
            leaf = topic.split("/", 3)[3]
            if leaf.startswith("meta") and payload:
                body = json.loads(payload)
                meta = {**body, "series": {**meta["series"], **body["series"]}}
            elif leaf == "readings":
                if payload[:1] == b"{" and b'"readings"' in payload[:200]:
                    batch = json.loads(payload)["readings"]
                else:
                    batch = decode_compact(payload, meta)
                out.update((r["id"], r) for r in batch)
        return out

    def largest(self) -> int:
        with self.lock:
            return max(len(p) + len(t) + 9 for t, p in self.messages)


def _rooms() -> ModbusTcpServer:
    sensor = load_catalogue().get("xy-md02")
    return ModbusTcpServer({unit: SimulatedDevice(sensor, FixedModel(ROOM_VALUES)) for unit in range(1, ROOMS + 1)})


def _config(tmp_path: Path, broker: Broker, server: ModbusTcpServer, **mqtt_extra: Any) -> Path:
    return write_config(
        tmp_path / "agent.yaml", broker_port=broker.port, buffer=tmp_path / "buffer.db", mqtt_extra=mqtt_extra,
        buses=[{"id": "rooms", "type": "modbus-tcp", "host": "127.0.0.1", "port": server.port}],
        devices=[{"id": f"room-{unit:03d}", "bus": "rooms", "address": unit, "profile": "xy-md02",
                  "interval": "1s"} for unit in range(1, ROOMS + 1)])


def test_a_broker_that_drops_oversized_packets_is_noticed_and_sent_messages_it_takes(tmp_path: Path) -> None:
    broker = Broker(tmp_path / "broker", extra_conf="max_packet_size 4200\n")
    with broker.start(), running(_rooms()) as server, Recorder(broker.port) as platform:
        config = _config(tmp_path, broker, server)  # max_message_bytes left at its default
        with AgentProcess(config, tmp_path / "agent.log") as agent:
            wait_until(lambda: len(platform.readings()) >= 200, 60, "readings through the limited broker")
    assert_contiguous(set(platform.readings()))
    assert platform.largest() <= 4200
    said = [e for e in agent.events() if e.get("event") == "uplink.message_too_large"]
    assert len(said) == 1, "the refusal is named, once"
    # Halving below the first refused message may take another step (a first
    # guess still above the limit): that is a quieter event of its own.
    limits = [e["sending_at_most"] for e in agent.events()
              if e.get("event") in ("uplink.message_too_large", "uplink.message_limit_lowered")]
    assert limits == sorted(limits, reverse=True) and limits[-1] < 4200, limits
    status = [json.loads(p) for t, p in platform.messages if t.endswith("/status") and p]
    assert any(s["state"] == "online" for s in status), "the status arrives, trimmed to fit"


def test_a_broker_that_silently_drops_large_messages_gets_every_part_within_the_limit(tmp_path: Path) -> None:
    broker = Broker(tmp_path / "broker", extra_conf="message_size_limit 4096\n")
    with broker.start(), running(_rooms()) as server, Recorder(broker.port) as platform:
        config = _config(tmp_path, broker, server, max_message_bytes=4096, encoding="compact")
        with AgentProcess(config, tmp_path / "agent.log"):
            wait_until(lambda: len(platform.readings()) >= 200, 60, "compact readings, decodable")
    readings = platform.readings()
    assert_contiguous(set(readings))
    assert all(r["value"] == ROOM_VALUES[r["point"]] for r in readings.values())
    meta_topics = {t for t, p in platform.messages if "/meta" in t and p}
    assert len(meta_topics) > 1, "the series description came in parts"
    assert platform.largest() <= 4096 + 64
    status = [json.loads(p) for t, p in platform.messages if t.endswith("/status") and p]
    assert status and all(len(json.dumps(s)) <= 4096 for s in status)
