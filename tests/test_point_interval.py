"""A profile point's own interval (issue 15, item 9).

agent/worker.py read ``interval`` and ``max_rate`` from a profile point with
getattr, but the point record had neither and a profile naming them was
refused: dead code that looked like a feature. A per-point ``interval`` is
what a technician needs (energy counters every 15 min on a meter whose
power is read every 10 s), so it is a real, validated field now; a rate
limit depends on the installation (its supply), not on the meter model, and
stays in the device config (``max_rate``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from drivers.core.errors import ProfileError
from drivers.modbus.plan import group_by_interval
from drivers.modbus.profile import ModbusProfile as Profile
from drivers.profile import load_profile_file
from simulators.meters import SimulatedDevice
from simulators.modbus_server import ModbusTcpServer
from tests.support import AgentProcess, Broker, Subscriber, wait_until, write_config
from tests.test_e2e import ROOM_VALUES, FixedModel
from tests.test_hostile_config import cli

pytestmark = pytest.mark.timeout(60)

ROOM = """\
name: room-slow-humidity
manufacturer: test
model: XY-MD02 with humidity every hour
source: the XY-MD02 register table
defaults: {table: input, type: int16, scale: 0.1}
points:
  temperature: {address: 0x0001, unit: Cel, kind: gauge}
  humidity:    {address: 0x0002, unit: "%RH", kind: gauge, interval: 1h}
"""


def _profile(tmp_path: Path, text: str = ROOM) -> Path:
    directory = tmp_path / "profiles"
    directory.mkdir(exist_ok=True)
    path = directory / "room-slow-humidity.yaml"
    path.write_text(text)
    return path


def test_a_profile_point_interval_is_read_and_validated(tmp_path: Path) -> None:
    profile = load_profile_file(_profile(tmp_path))
    assert isinstance(profile, Profile)
    assert profile.point("humidity").interval == 3600.0
    assert profile.point("temperature").interval is None
    with pytest.raises(ProfileError, match=r"points\.humidity\.interval: expected a duration"):
        load_profile_file(_profile(tmp_path, ROOM.replace("interval: 1h", "interval: often")))
    with pytest.raises(ProfileError, match=r"points\.humidity\.interval: a duration must be positive"):
        load_profile_file(_profile(tmp_path, ROOM.replace("interval: 1h", "interval: 0")))


def test_a_profile_max_rate_is_refused_as_the_devices_setting(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match=r"points\.humidity\.max_rate: unknown key"):
        load_profile_file(_profile(tmp_path, ROOM.replace("interval: 1h", "max_rate: 5")))


def test_a_point_interval_slows_a_point_never_speeds_it_and_the_device_config_wins(tmp_path: Path) -> None:
    profile = load_profile_file(_profile(tmp_path))
    assert isinstance(profile, Profile)
    names = {interval: [p.name for p in points] for interval, points in group_by_interval(profile.points, 10.0).items()}
    assert names == {10.0: ["temperature"], 3600.0: ["humidity"]}
    # A device read every 2 h reads humidity every 2 h too, not more often than asked.
    assert list(group_by_interval(profile.points, 7200.0)) == [7200.0]
    # The device's own per-point setting overrides the profile.
    names = {i: [p.name for p in points]
             for i, points in group_by_interval(profile.points, 10.0, {"humidity": 30.0}).items()}
    assert names == {10.0: ["temperature"], 30.0: ["humidity"]}


def test_check_accepts_a_profile_point_interval(tmp_path: Path) -> None:
    _profile(tmp_path)
    config = tmp_path / "agent.yaml"
    config.write_text(
        "gateway: {id: gw, site: site}\nuplink: {mqtt: {host: 127.0.0.1}}\nprofile_dirs: [profiles]\n"
        "buses: [{id: plant, type: modbus-tcp, host: 127.0.0.1}]\n"
        "devices: [{id: room, bus: plant, address: 10, profile: room-slow-humidity, interval: 10s}]\n")
    result = cli("check", "--config", str(config))
    assert result.returncode == 0, result.stderr


def test_the_agent_reads_a_slow_point_once_per_its_interval(tmp_path: Path, broker: Broker,
                                                            subscriber: Subscriber) -> None:
    profile = load_profile_file(_profile(tmp_path))
    assert isinstance(profile, Profile)
    server = ModbusTcpServer({10: SimulatedDevice(profile, FixedModel(ROOM_VALUES))}).start()
    config = write_config(
        tmp_path / "agent.yaml", broker_port=broker.port, buffer=tmp_path / "state" / "buffer.db",
        buses=[{"id": "plant", "type": "modbus-tcp", "host": "127.0.0.1", "port": server.port}],
        devices=[{"id": "room", "bus": "plant", "address": 10, "profile": "room-slow-humidity", "interval": "1s"}])
    data = yaml.safe_load(config.read_text())
    data["profile_dirs"] = [str(tmp_path / "profiles")]
    config.write_text(yaml.safe_dump(data))
    agent = AgentProcess(config, tmp_path / "agent.log").start()

    def points() -> list[str]:
        return [r["point"] for r in subscriber.unique_readings().values()]
    try:
        wait_until(lambda: points().count("temperature") >= 4, 20, "four temperature polls")
    finally:
        assert agent.stop() == 0
        server.stop()
    # The first poll reads everything at once; the next humidity read is due
    # at the next full hour (which these seconds may just cross).
    assert 1 <= points().count("humidity") <= 2
