"""The test helpers themselves: a failed test never leaves a broker or an
agent behind, and reading the buffer never races the agent creating it.

(Issue 15: a test read the buffer before the agent had made its schema, and
its assert inside ``finally`` skipped ``broker.stop()``: a Mosquitto was left
running for the rest of the suite.)
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.buffer import Buffer, pack
from drivers.core.readings import Reading
from tests.support import (
    AgentProcess,
    Broker,
    buffer_next_id,
    free_port,
    port_open,
    stop_leftovers,
    write_config,
)


def _agent_config(tmp_path: Path, broker_port: int) -> Path:
    return write_config(
        tmp_path / "agent.yaml", broker_port=broker_port, buffer=tmp_path / "buffer.db",
        buses=[{"id": "gw", "type": "modbus-tcp", "host": "127.0.0.1", "port": free_port()}],
        devices=[{"id": "room", "bus": "gw", "address": 10, "profile": "xy-md02", "interval": "1s"}],
    )


def test_buffer_next_id_reads_nothing_before_the_agent_made_its_schema(tmp_path: Path) -> None:
    buffer = tmp_path / "buffer.db"
    assert buffer_next_id(buffer) == 0
    assert not buffer.exists(), "reading must never create the file the agent is about to open"
    buffer.touch()  # the agent has opened the file, its tables are not there yet
    assert buffer_next_id(buffer) == 0
    made = Buffer(buffer)
    made.commit(pack(made, [Reading("d", "p", float(i), "W", 1_700_000_000_000 + i) for i in range(41)]))
    made.close()
    assert buffer_next_id(buffer) == 42

def test_an_assertion_failing_inside_still_stops_the_broker_and_the_agent(tmp_path: Path) -> None:
    broker = Broker(tmp_path / "broker")
    agent = AgentProcess(_agent_config(tmp_path, broker.port), tmp_path / "agent.log")
    with pytest.raises(AssertionError, match="as a test fails"), broker, agent:  # noqa: PT012 - the block is the test
        assert port_open(broker.port)
        raise AssertionError("as a test fails")
    assert not port_open(broker.port), "the broker still listens"
    assert agent.proc is not None and agent.proc.poll() is not None, "the agent still runs"


def test_an_agent_that_exits_non_zero_fails_the_block_that_ended_normally(tmp_path: Path) -> None:
    config = _agent_config(tmp_path, free_port())
    config.write_text(config.read_text() + "no_such_key: 1\n")  # a config error: exit 78
    with pytest.raises(AssertionError, match="exited with 78"), \
            AgentProcess(config, tmp_path / "agent.log") as agent:  # noqa: PT012 - the block is the test
        assert agent.proc is not None
        agent.proc.wait(timeout=20)


def test_what_a_test_left_running_is_stopped_after_it(tmp_path: Path) -> None:
    broker = Broker(tmp_path / "broker").start()
    agent = AgentProcess(_agent_config(tmp_path, broker.port), tmp_path / "agent.log").start()
    assert sorted(stop_leftovers()) == ["AgentProcess", "Broker"]
    assert not port_open(broker.port)
    assert agent.proc is not None and agent.proc.poll() is not None
    assert stop_leftovers() == []
