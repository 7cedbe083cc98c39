"""Bus workers on real sockets: holes in a register map, dead devices, isolation."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from agent.health import DeviceHealth, Health
from agent.pipeline import CHAIN_S, BusWorker, Slot, next_slot
from drivers.core.protocol import Polled
from drivers.core.readings import Reading
from drivers.modbus.link import PymodbusLink, tcp_link
from drivers.modbus.plan import LinkCost
from drivers.modbus.profile import ModbusProfile as Profile
from drivers.modbus.reader import ModbusDevice
from drivers.profile import load_catalogue
from simulators.meters import SimulatedDevice
from simulators.modbus_server import ModbusTcpServer
from tests.hostile.modbus_tcp import HostileModbusTcp
from tests.independent_meter import IndependentMeter, float32_words
from tests.support import free_port, running, wait_until
from tests.test_e2e import ROOM_VALUES, SDM630_ADDRESSES, SDM630_VALUES, FixedModel

pytestmark = pytest.mark.timeout(60)


class Collector:
    def __init__(self) -> None:
        self.batches: list[tuple[float, list[Reading]]] = []
        self.lock = threading.Lock()

    def put(self, readings: list[Reading], counters: object = None, meters: object = None,
            events: object = None, resolutions: object = None) -> None:
        if not readings:
            return
        with self.lock:
            self.batches.append((time.monotonic(), readings))

    def of(self, device: str) -> list[tuple[float, list[Reading]]]:
        with self.lock:
            return [(t, b) for t, b in self.batches if b[0].device == device]


def poller(link: PymodbusLink, device: str, unit: int, profile: str | Profile, interval: float,
           health: Health) -> ModbusDevice:
    p = load_catalogue().get(profile) if isinstance(profile, str) else profile
    assert isinstance(p, Profile)
    health.devices[device] = DeviceHealth(bus="b")
    return ModbusDevice(link, device, unit, interval, p, p.points, LinkCost.tcp())


def run_worker(link: PymodbusLink, devices: list[ModbusDevice], health: Health, done: Callable[[Collector], bool],
               what: str, timeout: float = 15) -> Collector:
    """A bus worker polling meters over ``link`` until ``done``; then stopped."""
    collector, stop = Collector(), threading.Event()
    worker = BusWorker("b", Polled(link, devices), collector, health, stop)
    worker.start()
    try:
        wait_until(lambda: done(collector), timeout, what)
    finally:
        stop.set()
        worker.join(5)
    return collector


def test_a_hole_answering_exception_02_is_split_once_and_remembered(tmp_path: Path) -> None:
    """An independent meter (pymodbus) whose map has a hole between the current
    and power registers: the TCP cost model merges everything into one read,
    the meter refuses it, the worker splits and never reads across it again."""
    image: dict[int, int] = {}
    for point, address in SDM630_ADDRESSES.items():
        image[address], image[address + 1] = float32_words(SDM630_VALUES[point])
    port = free_port()
    meter = IndependentMeter({1: image}, port).start()
    health = Health()
    link = tcp_link("127.0.0.1", port, 1.0)
    device = poller(link, "elec", 1, "eastron-sdm630", 0.2, health)
    assert len(device.plan) == 1, "the TCP plan reads the whole map in one request"
    try:
        collector = run_worker(link, [device], health, lambda c: len(c.of("elec")) >= 4, "four polls")
    finally:
        meter.stop()
    exceptions_seen = health.devices["elec"].failures
    assert exceptions_seen == 0, "the split is retried within the same poll, so no poll fails"
    assert len(device.plan) > 1
    for _, batch in collector.of("elec"):
        assert {r.point: r.value for r in batch} == SDM630_VALUES
    # After the first poll, every request stays inside what exists.
    reads_per_poll = len(device.plan)
    polls = len(collector.of("elec"))
    # (+1: the serial-number register, which this meter does not have, asked once)
    assert len(meter.function_codes) <= 2 + reads_per_poll * (polls + 1)


def test_a_dead_device_costs_its_bus_only_its_timeout_and_other_buses_nothing(tmp_path: Path) -> None:
    catalogue = load_catalogue()
    # Unit 10 answers; unit 11 is configured but absent (the server stays silent for it).
    server_a = ModbusTcpServer({10: SimulatedDevice(catalogue.get("xy-md02"), FixedModel(ROOM_VALUES))})
    server_b = ModbusTcpServer({20: SimulatedDevice(catalogue.get("xy-md02"), FixedModel(ROOM_VALUES))})
    health = Health()
    collector = Collector()
    stop = threading.Event()
    timeout = 0.4
    link_a, link_b = tcp_link("127.0.0.1", server_a.port, timeout), tcp_link("127.0.0.1", server_b.port, timeout)
    alive_a = poller(link_a, "alive-a", 10, "xy-md02", 1.0, health)
    dead = poller(link_a, "dead", 11, "xy-md02", 1.0, health)
    alive_b = poller(link_b, "alive-b", 20, "xy-md02", 1.0, health)
    workers = [
        BusWorker("a", Polled(link_a, [alive_a, dead]), collector, health, stop),
        BusWorker("b", Polled(link_b, [alive_b]), collector, health, stop),
    ]
    with running(server_a), running(server_b):
        started = time.monotonic()
        for worker in workers:
            worker.start()
        try:
            # Six polls of each live device; by then the dead one has cost its bus four timeouts or more.
            wait_until(lambda: all(len(collector.of(name)) >= 6 for name in ("alive-a", "alive-b"))
                       and health.devices["dead"].failures >= 4, 20, "six polls of the live devices")
        finally:
            stop.set()
            for worker in workers:
                worker.join(5)
    assert health.devices["dead"].state == "silent"
    assert health.devices["dead"].failures >= 4
    assert collector.of("dead") == []
    # Both live devices keep their 1 s schedule: one poll per second (+ the first at start).
    for name in ("alive-a", "alive-b"):
        times = [t - started for t, _ in collector.of(name)]
        assert len(times) >= 5, (name, times)
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert max(gaps) < 1.0 + timeout + 0.5, (name, gaps)
        assert health.devices[name].state == "ok"


@pytest.mark.parametrize(("now", "interval", "offset", "expected"), [
    (0.0, 900.0, 0.0, 900.0),
    (899.9, 900.0, 0.0, 900.0),
    (900.0, 900.0, 0.0, 1800.0),
    (1000.0, 900.0, 3.0, 1803.0),
    (901.0, 900.0, 3.0, 903.0),
    (10.5, 1.0, 0.25, 11.25),
])
def test_polls_align_to_wall_clock_multiples(now: float, interval: float, offset: float, expected: float) -> None:
    assert next_slot(now, interval, offset) == pytest.approx(expected)


def test_a_slot_just_after_the_first_poll_is_not_polled_again_at_once() -> None:
    """A first poll (at start) 5 ms before a slot was followed at once by
    that slot's poll, chained: the same values in the same millisecond under
    two ids (tests/test_remote_config.py saw ids 1-2 and 3-4 carry one poll)."""
    slot = Slot(0, 1.0, 0.0)
    wall = 1000.0 - 0.005
    slot.place(wall, wall_minus_mono=0.0)
    assert slot.target == 1001.0, "the first poll stands for the slot 5 ms after it"
    assert slot.deadline - wall > CHAIN_S
    slot.place(1001.001, wall_minus_mono=0.0)  # later polls: the next slot, as before
    assert slot.target == 1002.0
    far = Slot(0, 1.0, 0.0)
    far.place(1000.5, wall_minus_mono=0.0)
    assert far.target == 1001.0, "a slot further than the chaining window is kept"


def test_points_are_read_at_their_own_interval_aligned_to_the_clock() -> None:
    catalogue = load_catalogue()
    server = ModbusTcpServer({1: SimulatedDevice(catalogue.get("eastron-sdm630"), FixedModel(SDM630_VALUES))})
    health = Health()
    health.devices["elec"] = DeviceHealth(bus="b")
    profile = catalogue.get("eastron-sdm630")
    assert isinstance(profile, Profile)
    link = tcp_link("127.0.0.1", server.port, 1.0)
    device = ModbusDevice(link, "elec", 1, 0.5, profile, profile.points, LinkCost.tcp(),
                          intervals={"energy_active_import": 2.0, "energy_active_export": 2.0})
    assert [g.interval for g in device.groups] == [0.5, 2.0]
    collector = Collector()
    stop = threading.Event()
    worker = BusWorker("b", Polled(link, [device]), collector, health, stop)

    def readings(point: str) -> list[Reading]:
        return [r for _, batch in collector.of("elec") for r in batch if r.point == point]
    with running(server):
        worker.start()
        try:
            # The first at start, then one at each 2 s boundary: four take more than 4 s.
            wait_until(lambda: len(readings("energy_active_import")) >= 4, 15, "four counter reads")
        finally:
            stop.set()
            worker.join(5)
    energy, voltage = readings("energy_active_import"), readings("voltage_l1")
    assert len(energy) == 4, len(energy)  # the worker stops at once; a fifth cannot come 2 s later
    # Voltage at every 0.5 s boundary over those 4 s and more: nine reads at least.
    assert len(voltage) >= 3 * (len(energy) - 1), (len(voltage), len(energy))
    slot = worker.devices[0].slots[1]
    # After the first poll, every counter read sits on a 2 s boundary (plus the device's small offset).
    for reading in energy[1:]:
        phase = (reading.ts / 1000 - slot.offset) % 2.0
        assert min(phase, 2.0 - phase) < 0.25, phase


def test_a_device_answering_another_question_publishes_nothing_and_logs_once() -> None:
    """Issue 20, item 2, at the bus worker: a unit that answers every read
    with another function code (03 to the 04 the profile asks) published
    its registers as values. Now: no reading, the device is 'rejected', each
    refused reply counted, one log line for the kind, and the good device
    on the same gateway reads on."""
    catalogue = load_catalogue()
    server = HostileModbusTcp({7: "other_read_function", 1: "good"},
                              {1: SimulatedDevice(catalogue.get("xy-md02"), FixedModel(ROOM_VALUES))}).start()
    health = Health()
    link = tcp_link("127.0.0.1", server.port, 1.0)
    bad = poller(link, "bad", 7, "xy-md02", 0.2, health)
    good = poller(link, "good", 1, "xy-md02", 0.2, health)
    try:
        with capture_logs() as logged:
            collector = run_worker(link, [bad, good], health,
                                   lambda c: len(c.of("good")) >= 8 and health.devices["bad"].mismatched_replies >= 8,
                                   "polls of both devices")
    finally:
        server.stop()
    assert collector.of("bad") == []
    assert health.devices["bad"].state == "rejected"
    assert "function 0x03" in health.devices["bad"].last_error
    about_bad = [e["event"] for e in logged if e.get("device") == "bad"]
    assert about_bad == ["device.mismatched_reply"], about_bad
    for _, batch in collector.of("good"):
        assert {r.point: r.value for r in batch} == ROOM_VALUES
    assert health.devices["good"].failures == 0


def test_a_gateway_closing_idle_connections_loses_no_poll_and_is_counted() -> None:
    """Issue 20, item 5, at the bus worker: a gateway closing connections
    idle for 0.2 s, polled every 0.5 s, lost the poll after every pause.
    Now each poll reconnects at once; the bus health counts it, the log
    stays quiet."""
    catalogue = load_catalogue()
    server = HostileModbusTcp({1: "good"}, {1: SimulatedDevice(catalogue.get("xy-md02"), FixedModel(ROOM_VALUES))},
                              idle_close_s=0.2).start()
    health = Health()
    link = tcp_link("127.0.0.1", server.port, 1.0)
    device = poller(link, "room", 1, "xy-md02", 0.5, health)
    try:
        with capture_logs() as logged:
            collector = run_worker(link, [device], health,
                                   lambda c: len(c.of("room")) >= 5 and server.counters.idle_closes >= 4,
                                   "polls across idle closes")
    finally:
        server.stop()
    assert health.devices["room"].failures == 0
    assert health.buses["b"].idle_reconnects >= 3
    assert health.snapshot()["buses"] == {"b": {"idle_reconnects": health.buses["b"].idle_reconnects, "floods": 0}}
    assert [e["event"] for e in logged if e.get("device") == "room"] == ["device.ok"]
    assert len(collector.of("room")) >= 5


def test_a_device_back_from_silence_by_way_of_wrong_answers_is_told_back() -> None:
    """Silent, then answering another question, then well again: one line
    each (silent, the mismatch, back), none per poll; and never a value
    before it answers well."""
    catalogue = load_catalogue()
    server = HostileModbusTcp({3: "silent"}, {3: SimulatedDevice(catalogue.get("xy-md02"),
                                                                 FixedModel(ROOM_VALUES))}).start()
    health = Health()
    link = tcp_link("127.0.0.1", server.port, 0.2)
    device = poller(link, "room", 3, "xy-md02", 0.2, health)
    collector, stop = Collector(), threading.Event()
    worker = BusWorker("b", Polled(link, [device]), collector, health, stop)
    try:
        with capture_logs() as logged:
            worker.start()
            for behaviour, state in (("silent", "silent"), ("more_registers", "rejected"), ("good", "ok")):
                server.behaviours[3] = behaviour
                def reached(wanted: str = state) -> bool:
                    return health.devices["room"].state == wanted and health.devices["room"].polls >= 3

                wait_until(reached, 10, f"the device {state}")
                if state != "ok":
                    assert collector.of("room") == []
            wait_until(lambda: len(collector.of("room")) >= 3, 10, "readings")
    finally:
        stop.set()
        worker.join(5)
        server.stop()
    assert [e["event"] for e in logged if e.get("device") == "room"] == \
        ["device.silent", "device.mismatched_reply", "device.back"]
