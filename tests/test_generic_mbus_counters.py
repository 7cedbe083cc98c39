"""The generic `mbus` profile's counters know their limits (issue 15, item 10).

The generic profile turns every record into a point, so it named no points
and the bus worker built counter limits for none: a BCD energy register
passing 99,999,999 was flagged `counter_backwards` (a reset) where the
`mbus-heat` profile flags `counter_rollover`. Its counters are declared by
the names every-record gives them now.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from drivers.core.errors import ProfileError
from drivers.mbus.profile import MbusProfile
from drivers.profile import load_catalogue, load_profile_file
from simulators.mbus_meter import MbusLineServer
from simulators.pty import PtyPair
from tests.support import AgentProcess, Broker, Subscriber, require_binary, wait_until, write_config
from tests.test_hostile_config import cli
from tests.test_mbus_e2e import WrappingMeter

pytestmark = pytest.mark.timeout(90)


def test_a_bcd_counter_of_the_generic_profile_passing_its_last_digit_is_a_rollover(
        tmp_path: Path, broker: Broker, subscriber: Subscriber) -> None:
    require_binary("socat")
    meter = WrappingMeter(5, "12345678")  # energy on 8 BCD digits in kWh, passing 99,999,999
    with PtyPair(tmp_path / "tty.meter", tmp_path / "tty.agent") as line:
        server = MbusLineServer([meter], str(line.meter_end), baudrate=2400).start()
        config = write_config(
            tmp_path / "agent.yaml", broker_port=broker.port, buffer=tmp_path / "buffer.db",
            buses=[{"id": "mbus-1", "type": "mbus", "port": str(line.agent_end), "baudrate": 2400, "parity": "N"}],
            devices=[{"id": "meter-5", "bus": "mbus-1", "address": 5, "profile": "mbus", "interval": "0.5s"}],
        )
        agent = AgentProcess(config, tmp_path / "agent.log").start()
        try:
            # every record in its base unit: kWh x 1000 = Wh; past the wrap below 100 kWh
            wait_until(lambda: sum(r["value"] < 100_000 for r in subscriber.unique_readings().values()) >= 2, 30,
                       "readings past the wrap")
        finally:
            assert agent.stop() == 0
            server.stop()
    readings = sorted(subscriber.unique_readings().values(), key=lambda r: r["id"])
    assert {(r["point"], r["unit"]) for r in readings} == {("energy", "Wh")}
    flags = [(r["value"], r["quality"]) for r in readings if r["quality"] != "ok"]
    first_after = next(r["value"] for r in readings if r["value"] < 100_000)
    assert flags == [(first_after, "counter_rollover")]


def test_a_generic_devices_counter_takes_a_max_rate(tmp_path: Path) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text(
        "gateway: {id: gw, site: site}\nuplink: {mqtt: {host: 127.0.0.1}}\n"
        "buses: [{id: m, type: mbus, port: /dev/ttyAMA0}]\n"
        "devices: [{id: heat, bus: m, address: 5, profile: mbus, max_rate: {energy: 50000}}]\n")
    result = cli("check", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "device heat: address 5, profile mbus, every 1m, 1 point(s): every record" in result.stdout


def test_an_every_record_profile_declares_points_only_by_their_every_record_names(tmp_path: Path) -> None:
    generic = load_catalogue().get("mbus")
    assert isinstance(generic, MbusProfile) and generic.all_records
    assert {p.name for p in generic.points if p.kind == "counter"} >= {"energy", "volume", "energy_s1"}
    path = tmp_path / "odd.yaml"
    path.write_text("name: odd\nprotocol: mbus\nmanufacturer: x\nmodel: x\nsource: x\nall_records: true\n"
                    "points:\n  - {name: heat, quantity: energy, storage: 1, kind: counter}\n")
    with pytest.raises(ProfileError, match="with all_records a point names a record as every-record does: "
                                           "name energy_s1, kind counter"):
        load_profile_file(path)
