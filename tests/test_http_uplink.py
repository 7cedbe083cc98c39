"""The HTTPS uplink (issue 16, item 3): the same contract as MQTT over a real HTTP(S) server.

Every test runs the agent as its own process against tests/http_platform.py,
a real HTTP server on 127.0.0.1 (TLS with a test CA where it matters), and
judges what the platform stored: values, ids contiguous in one stream, and
nothing lost when the platform is down, slow, failing or size-limited.
"""

from __future__ import annotations

import signal
import ssl
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from drivers.profile import load_catalogue
from simulators.meters import SimulatedDevice
from simulators.modbus_server import ModbusTcpServer
from tests.http_platform import HttpPlatform, server_context
from tests.support import AgentProcess, buffer_next_id, running, wait_until, write_config
from tests.test_e2e import ROOM_VALUES, SDM630_VALUES, FixedModel, assert_contiguous
from tests.test_tls import make_ca, make_cert

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("pki")
    make_ca(directory, "ca")
    make_ca(directory, "other-ca")
    make_cert(directory, "server", "ca", "IP:127.0.0.1,DNS:localhost")
    make_cert(directory, "stranger", "other-ca", "IP:127.0.0.1")
    make_cert(directory, "client", "ca", "DNS:gateway")
    return directory


def _meters() -> ModbusTcpServer:
    catalogue = load_catalogue()
    return ModbusTcpServer({1: SimulatedDevice(catalogue.get("eastron-sdm630"), FixedModel(SDM630_VALUES)),
                            10: SimulatedDevice(catalogue.get("xy-md02"), FixedModel(ROOM_VALUES))})


def _config(tmp_path: Path, server: ModbusTcpServer, http: dict[str, Any]) -> Path:
    return write_config(
        tmp_path / "agent.yaml", buffer=tmp_path / "buffer.db", http=http,
        buses=[{"id": "plant-room", "type": "modbus-tcp", "host": "127.0.0.1", "port": server.port}],
        devices=[{"id": "elec-main", "bus": "plant-room", "address": 1, "profile": "eastron-sdm630",
                  "interval": "0.5s"},
                 {"id": "room-101", "bus": "plant-room", "address": 10, "profile": "xy-md02", "interval": "0.5s"}])


def _streams(platform: HttpPlatform) -> set[str]:
    return {body["stream"] for body in platform.bodies("readings")}


def test_readings_arrive_over_https_with_values_and_contiguous_ids(tmp_path: Path, pki: Path) -> None:
    (tmp_path / "token").write_text("s3cret-token\n")
    platform = HttpPlatform(tls=server_context(pki), token="s3cret-token")  # noqa: S106 - the test platform's own
    with running(_meters()) as server, platform:
        config = _config(tmp_path, server, {"url": f"https://127.0.0.1:{platform.port}/ingest",
                                            "token_file": "token", "tls": {"ca_file": str(pki / "ca.pem")}})
        with AgentProcess(config, tmp_path / "agent.log") as agent:
            wait_until(lambda: len(platform.unique_readings()) >= 40, 30, "readings at the platform")
    readings = platform.unique_readings()
    assert_contiguous(set(readings))
    for reading in readings.values():
        expected = ROOM_VALUES if reading["device"] == "room-101" else SDM630_VALUES
        assert reading["value"] == expected[reading["point"]]
    assert len(_streams(platform)) == 1
    statuses = platform.bodies("status")
    assert statuses[0]["state"] == "online" and statuses[-1]["state"] == "offline", "the farewell is posted"
    assert platform.bodies("meta"), "series described as over MQTT"
    assert "s3cret-token" not in agent.log.read_text(), "the token never reaches a log"


def test_the_platform_down_at_start_then_up_gets_the_backlog_in_order(tmp_path: Path) -> None:
    platform = HttpPlatform()  # its port chosen, nothing listening yet
    with running(_meters()) as server:
        config = _config(tmp_path, server, {"url": f"http://127.0.0.1:{platform.port}/ingest"})
        with AgentProcess(config, tmp_path / "agent.log") as agent:
            wait_until(lambda: buffer_next_id(tmp_path / "buffer.db") > 30, 20, "readings buffered meanwhile")
            with platform:
                wait_until(lambda: len(platform.unique_readings()) >= buffer_next_id(tmp_path / "buffer.db") - 1
                           > 30, 30, "the backlog delivered")
    assert_contiguous(set(platform.unique_readings()))
    failed = [e for e in agent.events() if e.get("event") == "uplink.connect_failed"]
    assert len(failed) == 1, "one event per state change, not one per attempt"


def test_an_outage_and_a_restart_continue_the_ids_in_one_stream(tmp_path: Path) -> None:
    platform = HttpPlatform()
    buffer = tmp_path / "buffer.db"
    with running(_meters()) as server:
        config = _config(tmp_path, server, {"url": f"http://127.0.0.1:{platform.port}/ingest"})
        with platform, AgentProcess(config, tmp_path / "agent-1.log"):
            wait_until(lambda: len(platform.unique_readings()) >= 20, 20, "readings before the outage")
        first = max(platform.unique_readings())
        platform.mode = "fail"  # answers 500: nothing counts as delivered
        with platform, AgentProcess(config, tmp_path / "agent-2.log"):
            wait_until(lambda: buffer_next_id(buffer) > first + 20, 20, "readings during the outage")
            platform.mode = "ok"
            wait_until(lambda: len(platform.unique_readings()) >= buffer_next_id(buffer) - 1, 30,
                       "everything after the outage")
    assert_contiguous(set(platform.unique_readings()))
    assert len(_streams(platform)) == 1, "a restart keeps the stream"
    counts = Counter(r["id"] for r in platform.readings())
    assert max(counts.values()) <= 2, "a refused message is sent again, not over and over once stored"


def test_a_platform_that_never_answers_is_dropped_and_nothing_unanswered_leaves_the_buffer(tmp_path: Path) -> None:
    platform = HttpPlatform()
    platform.mode = "hang"
    buffer = tmp_path / "buffer.db"
    with running(_meters()) as server, platform:
        config = _config(tmp_path, server, {"url": f"http://127.0.0.1:{platform.port}/ingest", "timeout": "1s"})
        with AgentProcess(config, tmp_path / "agent.log") as agent:
            wait_until(lambda: len(platform.headers) >= 3, 30, "the agent to try again after timeouts")
            assert agent.stop(signal.SIGTERM) == 0
    lost = [e for e in agent.events() if e.get("event") == "uplink.lost"]
    assert lost and "timed out" in lost[0]["error"]
    assert platform.messages == []
    from agent.buffer import inspect

    state = inspect(buffer)
    assert state.acked_through == 0 and state.waiting_ids() == set(range(1, state.next_id)), \
        "nothing the platform never acknowledged may leave the buffer"


def test_a_413_makes_messages_smaller_and_loses_nothing(tmp_path: Path) -> None:
    platform = HttpPlatform(max_body=3000)
    with running(_meters()) as server, platform:
        config = _config(tmp_path, server, {"url": f"http://127.0.0.1:{platform.port}/ingest", "batch": 200})
        with AgentProcess(config, tmp_path / "agent.log") as agent:
            wait_until(lambda: len(platform.unique_readings()) >= 150, 40, "readings in smaller messages")
    assert platform.refused, "the first large message was refused"
    assert_contiguous(set(platform.unique_readings()))
    said = [e for e in agent.events() if e.get("event") == "uplink.message_too_large"]
    assert len(said) == 1 and said[0]["sending_at_most"] <= 3000, said


def test_an_untrusted_certificate_is_one_clear_event(tmp_path: Path, pki: Path) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(pki / "stranger.pem"), str(pki / "stranger.key"))
    platform = HttpPlatform(tls=context)
    with running(_meters()) as server, platform:
        config = _config(tmp_path, server, {"url": f"https://127.0.0.1:{platform.port}/ingest",
                                            "tls": {"ca_file": str(pki / "ca.pem")}})
        with AgentProcess(config, tmp_path / "agent.log") as agent:
            wait_until(lambda: any(e.get("event") == "uplink.connect_failed" for e in agent.events()), 20,
                       "the refusal")
            wait_until(lambda: buffer_next_id(tmp_path / "buffer.db") > 20, 20, "polling goes on")
    failed = [e for e in agent.events() if e.get("event") == "uplink.connect_failed"]
    assert len(failed) == 1 and "not trusted" in failed[0]["error"]
    assert platform.messages == []


def test_a_client_certificate_is_presented_when_the_platform_asks(tmp_path: Path, pki: Path) -> None:
    platform = HttpPlatform(tls=server_context(pki, require_client_cert=True))
    with running(_meters()) as server, platform:
        config = _config(tmp_path, server, {
            "url": f"https://127.0.0.1:{platform.port}/ingest",
            "tls": {"ca_file": str(pki / "ca.pem"), "cert_file": str(pki / "client.pem"),
                    "key_file": str(pki / "client.key")}})
        with AgentProcess(config, tmp_path / "agent.log"):
            wait_until(lambda: len(platform.unique_readings()) >= 20, 30, "readings over mutual TLS")
    assert_contiguous(set(platform.unique_readings()))


def test_compact_zlib_messages_are_posted_deflated_and_decode_losslessly(tmp_path: Path) -> None:
    platform = HttpPlatform()
    with running(_meters()) as server, platform:
        config = _config(tmp_path, server, {"url": f"http://127.0.0.1:{platform.port}/ingest",
                                            "encoding": "compact", "compression": "zlib"})
        with AgentProcess(config, tmp_path / "agent.log"):
            wait_until(lambda: len(platform.unique_readings()) >= 40, 30, "compact readings")
    assert any(h.get("Content-Encoding") == "deflate" for h in platform.headers)
    readings = platform.unique_readings()
    assert_contiguous(set(readings))
    assert all(r["value"] == (ROOM_VALUES if r["device"] == "room-101" else SDM630_VALUES)[r["point"]]
               for r in readings.values())
