"""The simulator serves every bundled Modbus profile from the profile file
itself, and what the agent reads back is what the simulated meter meant."""

from __future__ import annotations

import math

import pytest

from drivers.modbus.commission import probe
from drivers.modbus.link import tcp_link
from drivers.modbus.plan import LinkCost
from drivers.modbus.profile import ModbusPoint
from drivers.modbus.profile import ModbusProfile as Profile
from drivers.profile import load_catalogue
from simulators.meters import SimulatedDevice
from simulators.modbus_server import ModbusTcpServer

pytestmark = pytest.mark.timeout(30)

CATALOGUE = load_catalogue()
MODBUS = [p for p in (CATALOGUE.get(n) for n in CATALOGUE.names()) if isinstance(p, Profile)]


def _step(point: ModbusPoint, device: SimulatedDevice) -> float:
    """How far the value read may be from the one meant: half a register step."""
    if point.type.startswith("float"):
        return 0.0
    exponent = device.exponents[point.scale_source] if point.scale_source else 0
    return abs(float(point.scale)) * 10.0 ** exponent / 2


@pytest.mark.parametrize("profile", MODBUS, ids=[p.name for p in MODBUS])
def test_every_point_of_every_profile_is_served_and_read_back(profile: Profile) -> None:
    device = SimulatedDevice(profile, serial=4711)
    server = ModbusTcpServer({7: device}).start()
    link = tcp_link("127.0.0.1", server.port, 2.0)
    try:
        rows = probe(link, 7, profile, LinkCost.tcp())
        identity = None
        if profile.identity is not None:
            register = profile.identity
            identity = register.decoder()(link.read(register.table, 7, register.address, register.count))
    finally:
        link.close()
        server.stop()
    assert [r.point for r in rows] == [p.name for p in profile.points]
    assert [r.error for r in rows if r.error] == []
    for row in rows:
        point = profile.point(row.point)
        meant = device.served[row.point]
        if isinstance(meant, str) or point.type == "bits":
            assert row.value == meant, row.point
        elif point.type == "float32":
            assert row.value == pytest.approx(meant, rel=1e-6), row.point
        else:
            assert math.isclose(_number(row.value), _number(meant), rel_tol=1e-12,
                                abs_tol=_step(point, device) + 1e-9), row.point
    if profile.identity is not None:
        assert str(identity) == "4711"
    assert server.stats.write_attempts == 0


THREE_PHASE = [p for p in MODBUS if {"power_active", "power_active_l1", "energy_active_import"}
               <= {q.name for q in p.points}]


@pytest.mark.parametrize("profile", THREE_PHASE, ids=[p.name for p in THREE_PHASE])
def test_a_simulated_three_phase_meter_is_consistent(profile: Profile) -> None:
    """Whatever the register map: the total is the sum of the phases, and the
    energy register integrates the power (read back through the agent's probe)."""
    now = [1000.0]
    device = SimulatedDevice(profile, clock=lambda: now[0])
    server = ModbusTcpServer({1: device}).start()
    link = tcp_link("127.0.0.1", server.port, 2.0)
    wanted = ["power_active", "power_active_l1", "power_active_l2", "power_active_l3", "energy_active_import"]
    try:
        first = {r.point: _number(r.value) for r in probe(link, 1, profile, LinkCost.tcp(), wanted)}
        for _ in range(60):  # one simulated hour, a minute at a time
            now[0] += 60.0
            probe(link, 1, profile, LinkCost.tcp(), ["energy_active_import"])
        last = {r.point: _number(r.value) for r in probe(link, 1, profile, LinkCost.tcp(), wanted)}
    finally:
        link.close()
        server.stop()
    step = max(_step(profile.point(n), device) for n in wanted[:4]) * 4 + 1e-6
    assert first["power_active"] == pytest.approx(
        first["power_active_l1"] + first["power_active_l2"] + first["power_active_l3"], abs=step + 0.01)
    used_kwh = last["energy_active_import"] - first["energy_active_import"]
    mean_kw = (first["power_active"] + last["power_active"]) / 2 / 1000
    assert used_kwh == pytest.approx(mean_kw, rel=0.2), "an hour at ~P kW adds ~P kWh"


def _number(value: object) -> float:
    assert isinstance(value, (int, float)), value
    return float(value)
