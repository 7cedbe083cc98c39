"""`retrofit-agent status` as a technician reads it over SSH: what it says
about the clock, and which errors it shows (issue 15 item 16)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from drivers.profile import load_catalogue
from simulators.meters import SimulatedDevice
from simulators.modbus_server import ModbusTcpServer
from tests.support import REPO, AgentProcess, Broker, free_port, wait_until, write_config
from tests.test_e2e import ROOM_VALUES, FixedModel

pytestmark = pytest.mark.timeout(60)


def status(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.cli", "status", "--config", str(config)],
                          check=False, capture_output=True, text=True, cwd=REPO, timeout=30)


def _line(output: str, start: str) -> str:
    return next((line for line in output.splitlines() if line.startswith(start)), "")


def _status_when(config: Path, wanted: Callable[[str], bool], timeout: float, what: str) -> str:
    """The first output of `status` that shows what is wanted."""
    return str(wait_until(lambda: wanted(out := status(config).stdout) and out, timeout, what))


def test_status_explains_an_unknown_clock_and_drops_the_error_of_a_connection_made_again(tmp_path: Path) -> None:
    """`clock: unknown` came without a reason, and the uplink's last error
    stayed on screen after the broker had been reached again."""
    server = ModbusTcpServer({10: SimulatedDevice(load_catalogue().get("xy-md02"), FixedModel(ROOM_VALUES))}).start()
    broker = Broker(tmp_path / "broker", port=free_port())  # down when the agent starts
    flag = tmp_path / "no-timesyncd" / "synchronized"  # nothing on this machine tells the clock's state
    config = write_config(
        tmp_path / "agent.yaml", broker_port=broker.port, buffer=tmp_path / "buffer.db",
        buses=[{"id": "gw", "type": "modbus-tcp", "host": "127.0.0.1", "port": server.port}],
        devices=[{"id": "room-101", "bus": "gw", "address": 10, "profile": "xy-md02", "interval": "1s"}],
    )
    data = yaml.safe_load(config.read_text())
    data["health"].update({"timesync_flag": str(flag), "use_timedatectl": False})
    config.write_text(yaml.safe_dump(data))
    agent = AgentProcess(config, tmp_path / "agent.log").start()
    try:
        refused = _status_when(config, lambda out: "last error" in _line(out, "uplink:"), 20,
                               "the refused connection in the status")
        broker.start()
        connected = _status_when(config, lambda out: "uplink: connected" in out, 30,
                                 "the connection made again in the status")
    finally:
        code = agent.stop()
        broker.stop()
        server.stop()
    assert code == 0
    assert "uplink: DISCONNECTED" in refused
    assert "last error" not in _line(connected, "uplink:"), connected
    assert _line(connected, "clock:") == (
        f"clock: unknown: timedatectl switched off (health.use_timedatectl: false) and no flag file {flag}; "
        "readings carry the wall clock as it is, unflagged")


@pytest.mark.parametrize("content", ["[1, 2]", '{"uplink": [], "devices": 5, "ts": "soon"}', "{not json"])
def test_status_of_a_file_that_is_not_a_snapshot_is_one_line(tmp_path: Path, content: str) -> None:
    config = write_config(tmp_path / "agent.yaml", broker_port=1883, buffer=tmp_path / "buffer.db",
                          buses=[{"id": "gw", "type": "modbus-tcp", "host": "127.0.0.1"}],
                          devices=[{"id": "room-101", "bus": "gw", "address": 10, "profile": "xy-md02"}])
    (tmp_path / "agent.status.json").write_text(content)
    result = status(config)
    assert result.returncode == 1, result.stdout
    assert result.stderr.count("\n") == 1 and "cannot read" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
