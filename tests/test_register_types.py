"""Text, bit fields and scale registers (SunSpec's *_SF), from profile file to
readings, against an independent meter (pymodbus's own server) whose
registers are written out by hand here."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.health import Health
from drivers.core.errors import ProfileError
from drivers.modbus.link import tcp_link
from drivers.modbus.profile import ModbusProfile as Profile
from drivers.profile import load_profile_file
from tests.independent_meter import IndependentMeter
from tests.support import free_port
from tests.test_profiles import run_vectors
from tests.test_worker import poller, run_worker

pytestmark = pytest.mark.timeout(60)

PROFILE = """
name: test-typed-meter
manufacturer: test
model: typed
source: written for tests/test_register_types.py
defaults: {table: input}
identity: {table: input, address: 50, type: string, length: 4}
workarounds:
  max_registers: 8          # the scale registers land in a request of their own
points:
  model_name:  {address: 0, type: string, length: 8, unit: "", kind: gauge}
  status:      {address: 10, type: bits, unit: "", kind: gauge}
  alarm:       {address: 10, type: bits, bit: 2, unit: "", kind: gauge}
  running:     {address: 10, type: bits, bit: 1, unit: "", kind: gauge}
  power:       {address: 20, type: int16, scale_register: {address: 40}, unit: W, kind: gauge}
  energy:      {address: 21, type: uint32, scale: 0.001, scale_register: {address: 41}, unit: kWh, kind: counter}
  voltage:     {address: 23, type: uint16, scale_register: {address: 42}, unit: V, kind: gauge}
  power_l2:    {address: 24, type: int16, missing: -32768, scale_register: {address: 40}, unit: W, kind: gauge}
tests:
  - registers:
      input:
        0: [0x5241, 0x2D4D, 0x4554, 0x4552, 0, 0, 0, 0]
        10: [0x0005]
        20: [0xFB2E, 0x0012, 0xD687, 0x0903]
        40: [0xFFFF, 0x0002, 0x8000]
    expect: {model_name: RA-METER, status: 5, alarm: 1, running: 0, power: -123.4, energy: 123456.7}
"""

# The same registers as the vector, served by pymodbus.
IMAGE = {
    0: 0x5241, 1: 0x2D4D, 2: 0x4554, 3: 0x4552, 4: 0, 5: 0, 6: 0, 7: 0,   # "RA-METER"
    10: 0x0005,                                                         # bits 0 and 2 set
    20: 0xFB2E,                                                         # -1234
    21: 0x0012, 22: 0xD687,                                             # 1234567
    23: 0x0903,                                                         # 2307, exponent "not implemented"
    24: 0x8000,                                                         # the value itself "not implemented"
    40: 0xFFFF, 41: 0x0002, 42: 0x8000,                                 # W_SF -1, Wh_SF +2, V_SF n/a
    50: 0x534E, 51: 0x3437, 52: 0x3131, 53: 0x0000,                     # serial "SN4711"
}


@pytest.fixture
def profile(tmp_path: Path) -> Profile:
    path = tmp_path / "typed.yaml"
    path.write_text(PROFILE)
    loaded = load_profile_file(path)
    assert isinstance(loaded, Profile)
    return loaded


def test_the_vector_decodes_text_bits_and_exponents(profile: Profile) -> None:
    assert run_vectors(profile) == []


def test_the_poll_reads_the_scale_registers_and_applies_them(profile: Profile) -> None:
    port = free_port()
    meter = IndependentMeter({1: IMAGE}, port).start()
    health = Health()
    link = tcp_link("127.0.0.1", port, 2.0)
    device = poller(link, "typed", 1, profile, 0.3, health)
    assert {(r.start, r.count) for r in device.plan} == {(0, 8), (10, 1), (20, 5), (40, 3)}
    try:
        sink = run_worker(link, [device], health, lambda c: len(c.of("typed")) >= 2, "two polls", timeout=20)
    finally:
        meter.stop()
    readings = {r.point: r for r in sink.of("typed")[-1][1]}
    assert {p: r.value for p, r in readings.items()} == {
        "model_name": "RA-METER", "status": 5, "alarm": 1, "running": 0,
        "power": -123.4, "energy": 123456.7, "voltage": None, "power_l2": None}
    assert readings["voltage"].quality == "invalid", "an exponent of -32768 means the meter has no value"
    assert readings["power_l2"].quality == "invalid", "so does the profile's `missing` raw value"
    assert readings["energy"].quality == "ok"
    assert {r.meter for r in readings.values()} == {"SN4711"}, "a text serial number is the meter's identity"


@pytest.mark.parametrize(("point", "complaint"), [
    ("{address: 0, type: string, unit: '', kind: gauge}", "length"),
    ("{address: 0, type: uint16, length: 2, unit: '', kind: gauge}", "length"),
    ("{address: 0, type: uint16, bit: 3, unit: '', kind: gauge}", "bit"),
    ("{address: 0, type: bits, bit: 16, unit: '', kind: gauge}", "at most 15"),
    ("{address: 0, type: string, length: 2, scale: 0.1, unit: '', kind: gauge}", "no scale"),
    ("{address: 0, type: string, length: 2, unit: '', kind: counter}", "counter"),
    ("{address: 0, type: int16, scale_register: {adress: 3}, unit: W, kind: gauge}", "adress"),
    ("{address: 0, type: float32, missing: 0, unit: W, kind: gauge}", "missing"),
])
def test_a_wrong_point_is_a_clear_profile_error(tmp_path: Path, point: str, complaint: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(f"name: bad\nmanufacturer: x\nmodel: y\nsource: z\ndefaults: {{table: input}}\n"
                    f"points:\n  p: {point}\n")
    with pytest.raises(ProfileError, match=complaint) as caught:
        load_profile_file(path)
    assert str(path) in str(caught.value)
