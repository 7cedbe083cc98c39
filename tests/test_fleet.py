"""The fleet view (issue 18, items 4 and 5): fifty agents, each a real
process with a small config, against one Mosquitto, and the simulated
platform's view of them: every gateway listed with its version, config hash,
online or offline since when, buffer, clock and silent devices; some stopped
cleanly, some killed (the broker's last will says they went).

Kept light for 2 cores: the agents start in waves of ten, poll one simulated
sensor every 2 s, and report every 2 s; the test prints its duration and the
agents' memory.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from drivers.profile import load_catalogue
from simulators.meters import SimulatedDevice
from simulators.modbus_server import ModbusTcpServer
from simulators.platform import PlatformIngest, render_fleet
from tests.support import REPO, AgentProcess, Broker, wait_until, write_config
from tests.test_e2e import ROOM_VALUES, FixedModel

pytestmark = pytest.mark.timeout(120)

AGENTS = 50
WAVE = 10
SITES = 5
GHOSTS = {3, 13, 23, 33, 43}  # these also have a device nobody answers for
STOPPED = {5, 15, 25, 35, 45}  # SIGTERM: the agent says offline itself
KILLED = {7, 17, 27, 37, 47}  # SIGKILL: the broker's last will says it


def gateway(index: int) -> tuple[str, str]:
    return f"block-{index % SITES}", f"gw-{index:02}"


def fleet_config(tmp_path: Path, index: int, broker_port: int, meter_port: int, synced: Path, unsynced: Path) -> Path:
    site, gw = gateway(index)
    devices = [{"id": "room", "bus": "plant", "address": 10, "profile": "xy-md02", "interval": "2s"}]
    if index in GHOSTS:
        devices.append({"id": "ghost", "bus": "plant", "address": 99, "profile": "xy-md02", "interval": "2s"})
    config = write_config(
        tmp_path / f"{gw}.yaml", broker_port=broker_port, buffer=tmp_path / gw / "buffer.db",
        buses=[{"id": "plant", "type": "modbus-tcp", "host": "127.0.0.1", "port": meter_port, "timeout": 0.3}],
        devices=devices, gateway=gw, site=site, mqtt_extra={"status_interval": "2s", "keepalive": 5})
    data = yaml.safe_load(config.read_text())
    data["health"].update({"snapshot_interval": "2s", "use_timedatectl": False,
                           "timesync_flag": str((synced if index % 2 == 0 else unsynced) / "synchronized")})
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    return config


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.long(13)
def test_the_fleet_view_shows_fifty_gateways_including_those_gone_offline(tmp_path: Path, broker: Broker) -> None:
    began = time.monotonic()
    version = subprocess.run([sys.executable, "-m", "agent.cli", "--version"], capture_output=True, text=True,
                             cwd=REPO, timeout=30, check=True).stdout.split()[-1]
    synced, unsynced = tmp_path / "timesync-synced", tmp_path / "timesync-waiting"
    synced.mkdir()
    unsynced.mkdir()
    (synced / "synchronized").touch()
    server = ModbusTcpServer({10: SimulatedDevice(load_catalogue().get("xy-md02"), FixedModel(ROOM_VALUES))}).start()
    ingest = PlatformIngest(port=broker.port, client_id="fleet-platform").start()
    configs = [fleet_config(tmp_path, i, broker.port, server.port, synced, unsynced) for i in range(AGENTS)]
    agents: list[AgentProcess] = []
    try:
        for first in range(0, AGENTS, WAVE):
            wave = [AgentProcess(configs[i], tmp_path / f"{gateway(i)[1]}.log").start()
                    for i in range(first, first + WAVE)]
            agents.extend(wave)
            for agent in wave:
                agent.wait_started()
        started_s = time.monotonic() - began

        def polled(row: dict[str, Any]) -> bool:
            return row["state"] == "online" and row["clock"] is not None and row["devices"] and (
                len(row["silent"]) == (1 if int(row["gateway"][3:]) in GHOSTS else 0))

        wait_until(lambda: sum(1 for r in ingest.fleet_rows() if polled(r)) == AGENTS, 40,
                   "every gateway online in the fleet view, its devices polled", interval=0.5)
        rss = [rss_kib(a.proc.pid) for a in agents]  # type: ignore[union-attr]
        cpu = [cpu_s(a.proc.pid) for a in agents]  # type: ignore[union-attr]

        gone_at_ms = time.time_ns() // 1_000_000
        for index in sorted(STOPPED | KILLED):
            agents[index].proc.send_signal(signal.SIGTERM if index in STOPPED else signal.SIGKILL)  # type: ignore[union-attr]
        for index in sorted(STOPPED | KILLED):
            agents[index].proc.wait(timeout=15)  # type: ignore[union-attr]  # one signal each, not stop()'s second
            code = agents[index].stop()
            assert code == (0 if index in STOPPED else -signal.SIGKILL), (index, code, agents[index].tail())
        gone = {gateway(i)[1] for i in STOPPED | KILLED}
        wait_until(lambda: {r["gateway"] for r in ingest.fleet_rows() if r["state"] == "offline"} == gone, 20,
                   "the stopped and killed gateways offline in the fleet view", interval=0.5)
        ingest.check()
        rows = {r["gateway"]: r for r in ingest.fleet_rows()}
        print(render_fleet(list(rows.values())))
    finally:
        for agent in agents:
            if agent.proc is not None and agent.proc.poll() is None:
                agent.stop()
        ingest.stop()
        server.stop()

    assert len(rows) == AGENTS
    for index in range(AGENTS):
        site, gw = gateway(index)
        row = rows[gw]
        assert row["site"] == site
        assert row["version"] == version, row
        assert row["config_sha256"] == hashlib.sha256(configs[index].read_bytes()).hexdigest(), row
        assert row["config_source"] == "local" and row["profiles_sha256"], row
        assert row["clock"] == ("synchronised" if index % 2 == 0 else "NOT synchronised"), row
        assert row["silent"] == (["ghost"] if index in GHOSTS else []), row
        assert row["devices"] == (2 if index in GHOSTS else 1), row
        assert isinstance(row["buffer_depth"], int) and row["buffer_depth"] >= 0, row
        if gw in gone:
            assert row["state"] == "offline" and row["since_ms"] >= gone_at_ms, row
        else:
            assert row["state"] == "online", row
            assert row["since_ms"] < gone_at_ms, row
    duration = time.monotonic() - began
    print(f"{AGENTS} agents: started in {started_s:.1f} s, whole test {duration:.1f} s; agent RSS "
          f"mean {sum(rss) / len(rss) / 1024:.1f} MiB, max {max(rss) / 1024:.1f} MiB, total {sum(rss) / 1024:.0f} MiB; "
          f"agent CPU mean {sum(cpu) / len(cpu):.2f} s, total {sum(cpu):.1f} s")
