"""Polls on the wall-clock boundary (``align: boundary``, docs/savings.md).

Real parts: a Modbus TCP simulator on loopback, pymodbus on the agent's
side, the real BusWorker, the real wall clock. The boundaries are 1 to 3 s
apart instead of 15 minutes so each test takes seconds; the tolerance is the
contract's own (2 s). No fake clock: the only clock state a test sets is
"not synchronised" (ClockState(trusted=False)), which is what a gateway
before NTP has.

What a test needs to know and the readings do not say (which slot a poll
was for, when it started) it learns from the worker itself: each device is
wrapped, and the wrapper notes the slot the worker is polling it for (the
worker's own Slot, still holding the moment it was due) before passing the
poll on. That a slot is a whole multiple of its interval is checked here
against the wall clock, not taken from the worker.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from agent.clock import ClockState
from agent.health import DeviceHealth, Health
from agent.pipeline import BOUNDARY_TOLERANCE_S, BusWorker, DeviceState
from drivers.core.protocol import Clock, Polled, PolledDevice, Readout
from drivers.core.readings import Reading
from drivers.modbus.link import tcp_link
from drivers.modbus.plan import LinkCost
from drivers.modbus.profile import ModbusProfile
from drivers.modbus.reader import ModbusDevice
from drivers.profile import load_catalogue
from simulators.meters import SimulatedDevice
from simulators.modbus_server import FaultPlan, ModbusTcpServer
from tests.support import running, wait_until
from tests.test_e2e import ROOM_VALUES, SDM630_VALUES, FixedModel

pytestmark = pytest.mark.timeout(60)

ENERGY = ("energy_active_import", "energy_active_export")


@dataclass(frozen=True)
class Poll:
    device: str
    group: int
    interval: float
    aligned: bool
    target: float | None  # the wall-clock moment the poll was due for (None: the first, at start)
    started: float  # wall clock when the worker asked
    took: float  # seconds on the bus
    stamps: tuple[int, ...]  # when the answers came (the readings' ts)


class Recorded:
    """A device as the worker polls it, noting each poll (see the module docstring)."""

    def __init__(self, device: ModbusDevice, polls: list[Poll], lock: threading.Lock) -> None:
        self.device = device
        self.state: DeviceState | None = None
        self._polls, self._lock = polls, lock

    def __getattr__(self, name: str) -> Any:
        return getattr(self.device, name)

    def read(self, group: int, clock: Clock) -> Readout:
        assert self.state is not None
        slot = self.state.slots[group]
        started, mono = time.time(), time.monotonic()
        readout = self.device.read(group, clock)
        took = time.monotonic() - mono
        with self._lock:
            self._polls.append(Poll(self.device.device_id, group, slot.interval, slot.aligned, slot.target, started,
                                    took, tuple(stamp for stamp, _, _ in readout.answers)))
        return readout


class Bus:
    """One bus: a simulator, a link, the worker and what it polled and read."""

    def __init__(self, server: ModbusTcpServer, timeout: float = 2.0) -> None:
        self.server = server
        self.link = tcp_link("127.0.0.1", server.port, timeout)
        self.health = Health()
        self.polls: list[Poll] = []
        self.readings: list[Reading] = []
        self._lock = threading.Lock()
        self._devices: list[Recorded] = []

    def device(self, device_id: str, unit: int, profile: str, interval: float,
               intervals: dict[str, float] | None = None) -> None:
        p = load_catalogue().get(profile)
        assert isinstance(p, ModbusProfile)
        self.health.devices[device_id] = DeviceHealth(bus="b")
        self._devices.append(Recorded(ModbusDevice(self.link, device_id, unit, interval, p, p.points,
                                                   LinkCost.tcp(), intervals), self.polls, self._lock))

    def put(self, readings: list[Reading], *_: object) -> None:
        with self._lock:
            self.readings.extend(readings)

    def of(self, device: str, group: int | None = None) -> list[Poll]:
        with self._lock:
            return [p for p in self.polls if p.device == device and group in (None, p.group)]

    @contextmanager
    def run(self, aligned: set[str], clock: ClockState | None = None) -> Iterator[BusWorker]:
        stop = threading.Event()
        devices: list[PolledDevice] = list(self._devices)  # each passes every call on
        worker = BusWorker("b", Polled(self.link, devices), self, self.health, stop, clock, aligned=aligned)
        for recorded in self._devices:
            recorded.state = next(s for s in worker.devices if s.device_id == recorded.device.device_id)
        with running(self.server):
            worker.start()
            try:
                yield worker
            finally:
                stop.set()
                worker.join(5)


def slotted(polls: list[Poll]) -> list[Poll]:
    """The polls made for a slot (not the first one at start)."""
    return [p for p in polls if p.target is not None]


def boundary_polls(polls: list[Poll], interval: float) -> list[Poll]:
    """The polls made for a slot, each checked to be for a whole multiple of
    the interval by the wall clock."""
    out = slotted(polls)
    for poll in out:
        assert poll.target is not None
        assert poll.target % interval == 0, f"a boundary poll for {poll.target}, not a multiple of {interval} s"
    return out


def figures(late_ms: list[float]) -> str:
    return f"p50 {statistics.median(late_ms):.1f} ms, max {max(late_ms):.1f} ms over {len(late_ms)} boundaries"


def test_boundary_reads_come_within_2_s_of_every_boundary_and_before_the_rest_of_the_bus() -> None:
    """A meter whose counters are read every 2 s on the boundary, its gauges
    every second, beside two room sensors read every second (spread): at each
    boundary the counters are read first (before the same meter's gauges,
    which are due at that very moment, and before the sensors), no boundary
    is skipped, and every counter reading is stamped within 2 s after its
    boundary, never before it."""
    catalogue = load_catalogue()
    bus = Bus(ModbusTcpServer({1: SimulatedDevice(catalogue.get("eastron-sdm630"), FixedModel(SDM630_VALUES)),
                               10: SimulatedDevice(catalogue.get("xy-md02"), FixedModel(ROOM_VALUES)),
                               11: SimulatedDevice(catalogue.get("xy-md02"), FixedModel(ROOM_VALUES))}))
    bus.device("pv-main", 1, "eastron-sdm630", 1.0, dict.fromkeys(ENERGY, 2.0))
    bus.device("room-1", 10, "xy-md02", 1.0)
    bus.device("room-2", 11, "xy-md02", 1.0)
    with bus.run({"pv-main"}) as worker:
        energy_group = next(s.group for s in worker.devices[0].slots if s.interval == 2.0)
        wait_until(lambda: len(boundary_polls(bus.of("pv-main", energy_group), 2.0)) >= 3, 15,
                   "three boundary reads of the counters")
    counters = boundary_polls(bus.of("pv-main", energy_group), 2.0)
    assert all(p.aligned for p in counters)
    targets = [p.target for p in counters if p.target is not None]
    assert targets == [targets[0] + 2.0 * k for k in range(len(targets))], f"a boundary was skipped: {targets}"
    late_ms = [stamp - p.target * 1000 for p in counters for stamp in p.stamps if p.target is not None]
    print(f"\ncounter reads after their boundary: {figures(late_ms)}")
    assert late_ms and all(0 <= late <= BOUNDARY_TOLERANCE_S * 1000 for late in late_ms), late_ms
    # First at each boundary: nothing else on the bus started between the boundary and the counters' poll.
    for poll in counters:
        assert poll.target is not None
        before = [(p.device, p.interval, round(p.started - poll.target, 3)) for p in bus.of("pv-main") + bus.of("room-1")
                  + bus.of("room-2") if poll.target <= p.started < poll.started]
        assert before == [], f"polled before the counters at the boundary {poll.target}: {before}"
    # The same meter's gauges were due at that moment too, and came right after.
    gauges = {p.target for p in bus.of("pv-main") if p.group != energy_group}
    assert set(targets) <= gauges
    assert all(p.quality == "ok" for p in bus.readings), {p.quality for p in bus.readings}


def test_a_slow_device_due_just_before_the_boundary_waits_for_the_boundary_read() -> None:
    """A room sensor that takes 0.6 s to answer, due every 0.25 s, is due
    again 0.25 s before each boundary of a counter read every second: started
    then, it would hold the half-duplex bus past the boundary. It waits and
    goes right after the counter's read instead, every time."""
    catalogue = load_catalogue()
    slow_s = 0.6
    server = ModbusTcpServer({1: SimulatedDevice(catalogue.get("eastron-sdm630"), FixedModel(SDM630_VALUES)),
                              10: SimulatedDevice(catalogue.get("xy-md02"), FixedModel(ROOM_VALUES))},
                             faults=FaultPlan({"slow": 1.0}, only={10}, slow_s=slow_s))
    bus = Bus(server)
    bus.device("pv-main", 1, "eastron-sdm630", 1.0)
    bus.device("slow-room", 10, "xy-md02", 0.25)

    def crossing() -> list[tuple[Poll, float]]:
        """Polls of the slow sensor due before a boundary that, started when
        due, would have held the bus at that boundary; and the boundary."""
        out = []
        for poll in slotted(bus.of("slow-room")):
            assert poll.target is not None
            boundary = float(int(poll.target) + 1)
            if poll.target + poll.took > boundary:
                out.append((poll, boundary))
        return out

    with bus.run({"pv-main"}):
        wait_until(lambda: len(crossing()) >= 4 and len(boundary_polls(bus.of("pv-main"), 1.0)) >= 5, 15,
                   "four boundaries with the slow sensor due just before them")
    counters = {p.target: p for p in boundary_polls(bus.of("pv-main"), 1.0)}
    for slow, boundary in crossing():
        counter = counters.get(boundary)
        if counter is None:
            continue  # the worker stopped before that boundary came
        assert slow.started > counter.started, (
            f"the slow sensor, due {boundary - (slow.target or 0):.2f} s before the boundary {boundary}, started "
            f"{counter.started - slow.started:.3f} s before the counter's read")
    late_ms = [stamp - p.target * 1000 for p in counters.values() for stamp in p.stamps if p.target is not None]
    print(f"\ncounter reads after their boundary, a slow device due before each: {figures(late_ms)}")
    assert all(0 <= late <= BOUNDARY_TOLERANCE_S * 1000 for late in late_ms), late_ms
    assert server.faults is not None and server.faults.injected["slow"] >= 4


def test_a_boundary_poll_started_late_on_a_busy_bus_is_read_anyway_and_logged_once() -> None:
    """Two devices on the same 2.5 s boundaries, the first taking 2.1 s to
    answer: the second starts more than 2 s late every time. It is read all
    the same (the platform flags the period, docs/savings.md) and the device
    logs once that its boundary reads are late, not once per poll."""
    catalogue = load_catalogue()
    # The first is a room sensor: one request per poll, so one slow answer.
    server = ModbusTcpServer({1: SimulatedDevice(catalogue.get("xy-md02"), FixedModel(ROOM_VALUES)),
                              2: SimulatedDevice(catalogue.get("eastron-sdm630"), FixedModel(SDM630_VALUES))},
                             faults=FaultPlan({"slow": 1.0}, only={1}, slow_s=2.1))
    bus = Bus(server, timeout=4.0)
    bus.device("pv-a", 1, "xy-md02", 2.5)
    bus.device("pv-b", 2, "eastron-sdm630", 2.5)
    with capture_logs() as logged, bus.run({"pv-a", "pv-b"}):
        wait_until(lambda: len(boundary_polls(bus.of("pv-b"), 2.5)) >= 2, 20, "two boundary reads of pv-b")
    late = boundary_polls(bus.of("pv-b"), 2.5)
    assert all(p.target is not None and p.started - p.target > BOUNDARY_TOLERANCE_S for p in late), late
    assert all(p.stamps for p in late), "read anyway"
    about_b = [e["event"] for e in logged if e.get("device") == "pv-b" and e["event"].startswith("device.boundary")]
    assert about_b == ["device.boundary_late"], about_b
    assert not [e for e in logged if e.get("device") == "pv-a" and e["event"].startswith("device.boundary")]


def test_with_the_clock_not_synchronised_boundary_polls_keep_their_interval_and_are_flagged() -> None:
    """Before NTP the wall clock may be days off: boundary polls go on at
    their interval, every reading says clock_unsynced and carries the
    monotonic time (to be restamped), and lateness is not judged."""
    catalogue = load_catalogue()
    bus = Bus(ModbusTcpServer({1: SimulatedDevice(catalogue.get("eastron-sdm630"), FixedModel(SDM630_VALUES))}))
    bus.device("pv-main", 1, "eastron-sdm630", 2.0)
    with capture_logs() as logged, bus.run({"pv-main"}, ClockState(trusted=False)):
        wait_until(lambda: len(boundary_polls(bus.of("pv-main"), 2.0)) >= 2, 15, "two polls after the first")
    targets = [p.target for p in boundary_polls(bus.of("pv-main"), 2.0) if p.target is not None]
    assert targets == [targets[0] + 2.0 * k for k in range(len(targets))], targets
    assert bus.readings
    assert all("clock_unsynced" in r.quality.split("+") and r.mono is not None for r in bus.readings)
    assert not [e for e in logged if e["event"].startswith("device.boundary")]


class SteppedClock:
    """The time module as the worker sees it, with a wall clock that can be
    stepped. A fake, because the real clock cannot be stepped in a test
    without stepping it for the whole machine; the monotonic clock is real."""

    def __init__(self) -> None:
        self.step = 0.0

    def time(self) -> float:
        return time.time() + self.step

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def test_a_wall_clock_stepped_back_places_the_boundary_polls_on_its_new_boundaries(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """NTP steps a gateway's clock once it synchronises, back as well as
    forward. A poll waits for a monotonic deadline, but its next slot comes
    from the wall clock: after a step back of an hour, the slot after the
    last one polled lies an hour ahead. The worker sees the step and places
    every slot anew, on the boundaries of the clock as it now is."""
    from agent import pipeline

    clock = SteppedClock()
    monkeypatch.setattr(pipeline, "time", clock)
    catalogue = load_catalogue()
    bus = Bus(ModbusTcpServer({1: SimulatedDevice(catalogue.get("eastron-sdm630"), FixedModel(SDM630_VALUES))}))
    bus.device("pv-main", 1, "eastron-sdm630", 1.0)
    with bus.run({"pv-main"}):
        wait_until(lambda: len(slotted(bus.of("pv-main"))) >= 1, 10, "a boundary poll")
        clock.step = -3600.5
        before = len(bus.of("pv-main"))
        wait_until(lambda: len(bus.of("pv-main")) >= before + 3, 10, "three polls after the clock went back")
    after = [p.target for p in bus.of("pv-main")[before:] if p.target is not None]
    assert after and all(target < time.time() - 3000 for target in after), "slots by the clock as it is now"
    assert all(target % 1.0 == 0 for target in after), after  # its boundaries, not the old ones half a second off


def test_check_says_which_devices_are_read_on_the_boundary_and_refuses_another_word(tmp_path: Path) -> None:
    from tests.test_check import GOOD, run_check

    path = tmp_path / "pv.yaml"
    path.write_text(GOOD.replace("profile: eastron-sdm630, interval: 1m}",
                                 "profile: eastron-sdm630, interval: 15m, align: boundary}"))
    result = run_check(path)
    assert result.returncode == 0, result.stderr
    assert "device elec-main: address 1, profile eastron-sdm630, every 15m on the boundary, 10 point(s)" in result.stdout
    assert "device room-101: address 10, profile xy-md02, every 5m, 2 point(s)" in result.stdout
    path.write_text(path.read_text().replace("align: boundary", "align: quarter_hour"))
    result = run_check(path)
    assert result.returncode == 78, result.stdout
    assert "devices[0].align" in result.stderr and ":12" in result.stderr, result.stderr
