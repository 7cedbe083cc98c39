"""Broken and hostile devices beside good ones, for a while (issue 20's done-when).

The real agent process reads, over real loopback sockets and socat ptys:

- 21 broken Modbus devices: 9 on a gateway that also serves a good room
  sensor (answers with another function code, 0x17, an 06 echo, more or
  fewer registers, an odd byte count, trailing bytes, an exception for
  another function, every exception code in turn); 11 behind two broken
  gateways (wrong transaction, unit and
  protocol ids, transaction id 0, a length lie, a byte count beyond the
  data, truncation, garbage, silence, late answers, closing instead of
  answering); one flooding its link at 6 MB/s;
- 11 broken M-Bus meters: 9 on a line with two good meters (another
  address in the A field, a master's control field, a foreign identification
  after a secondary selection, another meter's telegram every other
  readout, a checksum lie, a length lie, random bytes, endless 'more records
  follow', an application error) and two lines a babbler floods (endless
  E5, random bytes at 6 MB/s);
- good devices: that room sensor, another behind a gateway closing
  connections idle for 0.7 s, an SDM630 on its own gateway, the two good
  M-Bus meters.

Then, at a real Mosquitto: not one value of a broken answer arrives as
`ok`, every value of a good device is one it served, good devices lose no
poll, and the agent's RSS stays within 5 MB of its baseline.

The duration is RETROFIT_SOAK_S seconds; RETROFIT_SOAK=1 makes it the
issue's 2 minutes; the suite's default is 25 s. The figures are printed.
"""

from __future__ import annotations

import itertools
import json
import os
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from drivers.modbus.profile import ModbusProfile as Profile
from drivers.profile import load_catalogue
from simulators.mbus_meter import MbusLineServer, SimulatedMbusMeter
from simulators.meters import SimulatedDevice
from simulators.modbus_server import ModbusTcpServer
from simulators.pty import PtyPair
from tests.hostile.mbus_line import (
    POISON_VALUES,
    AlternatingMeter,
    ApplicationErrorMeter,
    Babbler,
    ChecksumLiar,
    EndlessMoreMeter,
    ForeignAddressMeter,
    ForeignIdMeter,
    LengthLiar,
    MasterControlMeter,
    RandomBytesMeter,
)
from tests.hostile.modbus_tcp import HostileModbusTcp
from tests.support import AgentProcess, Broker, Subscriber, require_binary, wait_until, write_config
from tests.test_faults import CountingModel, sdm_counting

SOAK_S = float(os.environ.get("RETROFIT_SOAK_S") or (120 if os.environ.get("RETROFIT_SOAK") == "1" else 25))
RSS_BUDGET_KB = 5 * 1024

pytestmark = pytest.mark.timeout(int(SOAK_S) + 120)

GATEWAY_MISMATCHES = ["other_read_function", "function_0x17", "echo_06", "more_registers", "fewer_registers",
                      "byte_count_odd", "trailing_bytes", "exception_other_function", "exception_codes"]
BAD_GATEWAY_A = ["wrong_transaction", "transaction_zero", "wrong_unit", "wrong_protocol", "length_lie"]
BAD_GATEWAY_B = ["byte_count_high", "truncated", "garbage", "silent", "late", "close"]
GOOD_INTERVAL = {"good-room": 1.0, "good-room-idle": 1.0, "good-sdm630": 1.0, "good-heat-1": 5.0,
                 "good-heat-2": 5.0}


class RssSampler:
    """The agent's resident set size from /proc, every 0.25 s."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="rss")

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            try:
                status = Path(f"/proc/{self.pid}/status").read_text()
            except OSError:
                return
            kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
            self.samples.append((time.monotonic(), kb))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def room_profile() -> Profile:
    profile = load_catalogue().get("xy-md02")
    assert isinstance(profile, Profile)
    return profile


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    with ExitStack() as resources:
        yield resources


@pytest.mark.long(28)
def test_hostile_devices_beside_good_ones_publish_nothing_as_ok(tmp_path: Path, broker: Broker,
                                                                subscriber: Subscriber, stack: ExitStack) -> None:
    require_binary("socat")
    buses: list[dict[str, Any]] = []
    devices: list[dict[str, Any]] = []

    def modbus(bus: str, server: HostileModbusTcp | ModbusTcpServer, timeout: str) -> None:
        stack.callback(server.stop)
        buses.append({"id": bus, "type": "modbus-tcp", "host": "127.0.0.1", "port": server.port, "timeout": timeout})

    # A gateway with a good room sensor and nine units answering other questions.
    room_model = CountingModel(["temperature", "humidity"], 0.1)
    mismatching = {10 + i: name for i, name in enumerate(GATEWAY_MISMATCHES)}
    modbus("gw-mixed", HostileModbusTcp({1: "good", **mismatching},
                                        {1: SimulatedDevice(room_profile(), room_model)}).start(), "0.5s")
    devices.append({"id": "good-room", "bus": "gw-mixed", "address": 1, "profile": "xy-md02", "interval": "1s"})
    # A gateway closing connections idle for 0.7 s, polled every second.
    idle_model = CountingModel(["temperature", "humidity"], 0.1)
    modbus("gw-idle", HostileModbusTcp({1: "good"}, {1: SimulatedDevice(room_profile(), idle_model)},
                                       idle_close_s=0.7).start(), "0.5s")
    devices.append({"id": "good-room-idle", "bus": "gw-idle", "address": 1, "profile": "xy-md02", "interval": "1s"})
    devices += [{"id": f"bad-{name}", "bus": "gw-mixed", "address": unit, "profile": "xy-md02", "interval": "1s"}
                for unit, name in mismatching.items()]
    # Two broken gateways: every answer times out, garbles or lies.
    for bus, names in (("gw-bad-a", BAD_GATEWAY_A), ("gw-bad-b", BAD_GATEWAY_B)):
        units = {20 + i: name for i, name in enumerate(names)}
        modbus(bus, HostileModbusTcp(units, late_s=0.6).start(), "0.3s")
        devices += [{"id": f"bad-{name}", "bus": bus, "address": unit, "profile": "xy-md02", "interval": "3s"}
                    for unit, name in units.items()]
    # A device flooding its link.
    modbus("gw-flood", HostileModbusTcp({1: "good"}, {1: SimulatedDevice(room_profile(), CountingModel(
        ["temperature", "humidity"], 0.1))}, flood_bytes_per_s=6_000_000).start(), "1s")
    devices.append({"id": "bad-flood", "bus": "gw-flood", "address": 1, "profile": "xy-md02", "interval": "1s"})
    # A good SDM630 on a gateway of its own.
    sdm, sdm_model = sdm_counting()
    modbus("gw-good", ModbusTcpServer({1: sdm}).start(), "1s")
    devices.append({"id": "good-sdm630", "bus": "gw-good", "address": 1, "profile": "eastron-sdm630",
                    "interval": "1s"})

    # M-Bus: two good meters and nine hostile ones on one line.
    good_1, good_2 = SimulatedMbusMeter(1, "10000001"), SimulatedMbusMeter(2, "20000002")
    alternating = AlternatingMeter(5, "12345678", foreign="87654321")
    hostile_meters: list[tuple[str, SimulatedMbusMeter, int | str]] = [
        ("bad-mbus-foreign-address", ForeignAddressMeter(7, "70000007", names=8), 7),
        ("bad-mbus-master-control", MasterControlMeter(9, "90000009"), 9),
        ("bad-mbus-foreign-id", ForeignIdMeter(11, "11112222", carries="99998888"), "11112222"),
        ("bad-mbus-alternating", alternating, 5),
        ("bad-mbus-checksum", ChecksumLiar(21, "21000021"), 21),
        ("bad-mbus-length", LengthLiar(22, "22000022"), 22),
        ("bad-mbus-random", RandomBytesMeter(24, "24000024"), 24),
        ("bad-mbus-endless-more", EndlessMoreMeter(25, "25000025"), 25),
        ("bad-mbus-application-error", ApplicationErrorMeter(26, "26000026"), 26),
    ]
    line = stack.enter_context(PtyPair(tmp_path / "mbus-a.meter", tmp_path / "mbus-a.agent"))
    server = MbusLineServer([good_1, good_2] + [m for _, m, _ in hostile_meters], str(line.meter_end)).start()
    stack.callback(server.stop)
    mbus_bus = {"type": "mbus", "baudrate": 9600, "parity": "N", "timeout": "0.3s", "retries": 1}
    buses.append({"id": "mbus-a", "port": str(line.agent_end), **mbus_bus})
    devices += [{"id": "good-heat-1", "bus": "mbus-a", "address": 1, "profile": "mbus-heat", "interval": "5s"},
                {"id": "good-heat-2", "bus": "mbus-a", "address": "20000002", "profile": "mbus-heat",
                 "interval": "5s"}]
    devices += [{"id": name, "bus": "mbus-a", "address": address, "profile": "mbus-heat", "interval": "5s"}
                for name, _, address in hostile_meters]
    # Two lines flooded by a babbler.
    for bus, pattern in (("mbus-e5", b"\xe5"), ("mbus-noise", None)):
        pair = stack.enter_context(PtyPair(tmp_path / f"{bus}.meter", tmp_path / f"{bus}.agent"))
        babbler = Babbler(pair.meter_end, pattern, bytes_per_s=6_000_000).start()
        stack.callback(babbler.stop)
        buses.append({"id": bus, "port": str(pair.agent_end), **mbus_bus})
        devices.append({"id": f"bad-{bus}", "bus": bus, "address": 3, "profile": "mbus-heat", "interval": "5s"})
    bad_devices = {d["id"] for d in devices if d["id"].startswith("bad-")}
    assert sum(1 for d in devices if d["id"].startswith("bad-") and "mbus" not in d["bus"]) >= 20
    assert sum(1 for d in devices if d["id"].startswith("bad-") and "mbus" in d["bus"]) >= 10

    config = write_config(tmp_path / "agent.yaml", broker_port=broker.port, buffer=tmp_path / "buffer.db",
                          buses=buses, devices=devices)
    agent = AgentProcess(config, tmp_path / "agent.log").start()
    assert agent.proc is not None
    sampler = RssSampler(agent.proc.pid).start()
    try:
        # Warm-up: every good device read twice, every bus worker through its first rounds.
        wait_until(lambda: all(len(_polls(subscriber, d)) >= 2 for d in GOOD_INTERVAL), 60, "the good devices read")
        warm = time.monotonic()
        time.sleep(SOAK_S)  # the soak itself: its length is what is under test, nothing waits on it
    finally:
        sampler.stop()
        code = agent.stop()
    assert code == 0

    readings = list(subscriber.unique_readings().values())
    log = agent.log.read_text()
    events = agent.events()
    status = json.loads((tmp_path / "agent.status.json").read_text())

    # 1. Not one value of a broken answer arrives as ok.
    ok_from_broken = [r for r in readings if r["device"] in bad_devices and r["quality"] == "ok"
                      and not (r["device"] == "bad-mbus-alternating" and r.get("meter") == "12345678")]
    assert ok_from_broken == [], ok_from_broken[:5]
    poisoned = [r for r in readings if r["device"].startswith("bad-mbus") and r["value"] == POISON_VALUES.get(r["point"])]
    assert poisoned == [], poisoned[:5]
    own = _served(alternating)
    for reading in (r for r in readings if r["device"] == "bad-mbus-alternating"):
        assert float(reading["value"]) in own[reading["point"]], reading
    assert not [e for e in events if e.get("type") == "meter_swap" or e.get("event") == "device.meter_swap"]

    # 2. Every value of a good device is one it served.
    for device, served in (("good-room", room_model.served), ("good-room-idle", idle_model.served),
                           ("good-sdm630", sdm_model.served)):
        altered = [r for r in readings if r["device"] == device and r["value"] not in served[r["point"]]]
        assert altered == [], altered[:5]
    for device, meter in (("good-heat-1", good_1), ("good-heat-2", good_2)):
        values = _served(meter)
        assert all(float(r["value"]) in values[r["point"]] for r in readings if r["device"] == device)
    assert all(r["quality"] == "ok" for r in readings if r["device"] in GOOD_INTERVAL)

    # 3. Good devices lose no poll: no failure, and no gap of a whole interval between two polls.
    lost = {}
    for device, interval in GOOD_INTERVAL.items():
        stamps = _polls(subscriber, device)
        gaps = [b - a for a, b in itertools.pairwise(stamps)]
        figures = status["devices"][device]
        lost[device] = sum(round(g / interval) - 1 for g in gaps if g > 1.5 * interval) + figures["failures"]
        assert figures["failures"] == 0 and max(gaps) < 1.5 * interval, (device, figures, max(gaps))
    assert not [e for e in events if e.get("device") in GOOD_INTERVAL and e.get("event") != "device.ok"]

    # 4. Memory: within 5 MB of the baseline (the median of the first 5 s after the warm-up).
    baseline_samples = [kb for t, kb in sampler.samples if warm <= t < warm + 5]
    later = [kb for t, kb in sampler.samples if t >= warm + 5]
    baseline, peak = int(statistics.median(baseline_samples)), max(later)
    assert peak - baseline <= RSS_BUDGET_KB, f"RSS baseline {baseline} kB, peak {peak} kB"

    # 5. The log stays quiet: a few lines per broken device, whatever the duration; no traceback.
    lines_per_bad = {d: sum(1 for e in events if e.get("device") == d) for d in bad_devices}
    assert max(lines_per_bad.values()) <= 4, lines_per_bad
    assert "Traceback" not in log

    # 6. The faults were really there: idle closes absorbed, floods cut off.
    buses_status = status["buses"]
    assert buses_status["gw-idle"]["idle_reconnects"] >= SOAK_S / 2
    assert all(buses_status[bus]["floods"] > 0 for bus in ("gw-flood", "mbus-e5", "mbus-noise"))
    print(f"\nsoak {SOAK_S:.0f} s: {len(readings)} readings, {len(bad_devices)} broken devices, "
          f"ok values from broken answers: {len(ok_from_broken)}, polls lost by good devices: {lost}, "
          f"RSS baseline {baseline} kB, peak {peak} kB (+{peak - baseline} kB), "
          f"log lines per broken device: max {max(lines_per_bad.values())}, "
          f"mismatched replies: {sum(d.get('mismatched_replies', 0) for d in status['devices'].values())}, "
          f"idle reconnects: {buses_status.get('gw-idle', {}).get('idle_reconnects')}, "
          f"floods: { {b: f['floods'] for b, f in buses_status.items() if f['floods']} }")


def _polls(subscriber: Subscriber, device: str) -> list[float]:
    """The moments (s) a device was read: one timestamp per poll."""
    return sorted({r["ts"] / 1000 for r in subscriber.unique_readings().values() if r["device"] == device})


def _served(meter: SimulatedMbusMeter) -> dict[str, set[float]]:
    out: dict[str, set[float]] = {}
    for values in meter.served:
        for point, value in values.items():
            out.setdefault(point, set()).add(float(value))
    return out
