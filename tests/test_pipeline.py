"""The protocol-neutral pipeline (agent/pipeline.py) with a pushed source.

No pushed protocol is wired yet (wireless M-Bus is next, docs/architecture.md),
so the source here is a stand-in for a radio receiver: a real UDP socket on
loopback, one datagram per transmission ("sender;point;value"). What is
tested is the pipeline's side, unchanged whatever the radio: listening,
silence after a few missed intervals, senders nobody configured, a receiver
that fails and comes back, and a point's resolution stored with its series
in a real buffer, also for the new series a meter swap starts.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from agent.buffer import Buffer, BufferWriter
from agent.health import Health
from agent.pipeline import BusWorker
from drivers.core.errors import BusError
from drivers.core.protocol import Clock, Heard, PointInfo, Pushed, Readout
from drivers.core.readings import Reading
from tests.support import wait_until

pytestmark = pytest.mark.timeout(60)

STEP = {"step": 0.01}


@dataclass
class Radio:
    """A device that sends on its own, as a pushed protocol describes it."""

    device_id: str
    where: str
    intervals: tuple[float, ...]
    points: dict[str, PointInfo] = field(default_factory=dict)
    identity_confirm: int = 1
    requests: int = 0


class UdpListener:
    """Each datagram is one transmission: 'sender;point;value', or 'fail'
    (the receiver itself failing, as an unplugged stick does)."""

    idle_reconnects = 0
    floods = 0

    def __init__(self, senders: dict[str, str]) -> None:
        self.senders = senders  # sender -> configured device
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.address = self.sock.getsockname()

    def receive(self, timeout: float, clock: Clock) -> Heard | None:
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data = self.sock.recv(512).decode()
        except TimeoutError:
            return None
        if data == "fail":
            raise BusError("receiver gone")
        sender, point, value = data.split(";")
        stamp, mono = clock.stamp()
        info = PointInfo(point, "m3", "counter", STEP)
        return Heard(sender, self.senders.get(sender),
                     Readout([(stamp, mono, [(info, float(value))])], meter=sender, points={point: info}))

    def close(self) -> None:
        self.sock.close()


class Collector:
    def __init__(self) -> None:
        self.readings: list[Reading] = []
        self.lock = threading.Lock()

    def put(self, readings: list[Reading], counters: object = None, meters: object = None, events: object = None,
            resolutions: object = None) -> None:
        with self.lock:
            self.readings.extend(readings)


@pytest.fixture
def sender() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    yield sock
    sock.close()


def start(listener: UdpListener, devices: list[Radio], sink: object, health: Health) -> tuple[BusWorker, threading.Event]:
    stop = threading.Event()
    worker = BusWorker("radio", Pushed(listener, devices), sink, health, stop)  # type: ignore[arg-type]
    worker.start()
    return worker, stop


def test_a_pushed_source_is_listened_to_and_a_device_not_heard_for_three_intervals_is_silent(
        sender: socket.socket) -> None:
    listener = UdpListener({"11110001": "water-1"})
    device = Radio("water-1", "meter 11110001", (0.3,))
    health, collector = Health(), Collector()
    with capture_logs() as logged:
        worker, stop = start(listener, [device], collector, health)
        try:
            for value in (1.0, 1.5, 2.0):
                sender.sendto(f"11110001;volume;{value}".encode(), listener.address)
            wait_until(lambda: len(collector.readings) == 3, 5, "three transmissions")
            assert health.devices["water-1"].state == "ok"
            quiet_from = time.monotonic()
            wait_until(lambda: health.devices["water-1"].state == "silent", 5, "silence")
            assert time.monotonic() - quiet_from >= 0.6, "silent only after three intervals without a word"
            failures = health.devices["water-1"].failures
            wait_until(lambda: health.devices["water-1"].failures >= failures + 2, 5, "more silent stretches")
            sender.sendto(b"11110001;volume;2.5", listener.address)
            wait_until(lambda: health.devices["water-1"].state == "ok", 5, "the device back")
        finally:
            stop.set()
            worker.join(5)
    assert [r.value for r in collector.readings] == [1.0, 1.5, 2.0, 2.5]
    assert all(r.quality == "ok" and r.meter == "11110001" for r in collector.readings)
    assert [e["event"] for e in logged if e.get("device") == "water-1"] == \
        ["device.ok", "device.silent", "device.back"], "one line per change of state, none per silent stretch"


def test_senders_nobody_configured_are_counted_and_logged_once_each(sender: socket.socket) -> None:
    listener = UdpListener({"11110001": "water-1"})
    health, collector = Health(), Collector()
    with capture_logs() as logged:
        worker, stop = start(listener, [Radio("water-1", "meter 11110001", (60.0,))], collector, health)
        try:
            for _ in range(3):
                sender.sendto(b"99990000;volume;7", listener.address)
            sender.sendto(b"88880000;volume;7", listener.address)
            wait_until(lambda: worker.unknown_senders == 4, 5, "four foreign transmissions")
        finally:
            stop.set()
            worker.join(5)
    assert collector.readings == []
    assert sorted(e["sender"] for e in logged if e["event"] == "bus.unknown_sender") == ["88880000", "99990000"]


def test_a_failing_receiver_is_logged_once_and_listened_to_again(sender: socket.socket) -> None:
    listener = UdpListener({"11110001": "water-1"})
    health, collector = Health(), Collector()
    with capture_logs() as logged:
        worker, stop = start(listener, [Radio("water-1", "meter 11110001", (60.0,))], collector, health)
        try:
            sender.sendto(b"fail", listener.address)
            sender.sendto(b"fail", listener.address)
            sender.sendto(b"11110001;volume;3", listener.address)
            wait_until(lambda: len(collector.readings) == 1, 10, "a transmission after the failures")
        finally:
            stop.set()
            worker.join(5)
    events = [e["event"] for e in logged if e["event"].startswith("bus.receiver")]
    assert events == ["bus.receiver_failed", "bus.receiver_back"]


def test_a_resolution_travels_with_its_readings_into_the_buffer_also_for_a_swapped_meter(
        tmp_path: Path, sender: socket.socket) -> None:
    """Issue 16: the M-Bus worker wrote the uplink's resolution map from its
    bus thread. Now the resolution goes with the readings that start a
    series to the buffer writer, which stores it with the series: here for
    the first meter's series, and again for the series a meter swap starts."""
    buffer = Buffer(tmp_path / "buffer.db")
    writer = BufferWriter(buffer, on_commit=lambda _ids: None, flush_interval=0.05)
    writer.start()
    # Both meters are the same configured device: the second one replaced the first.
    listener = UdpListener({"11110001": "water-1", "22220002": "water-1"})
    health = Health()
    worker, stop = start(listener, [Radio("water-1", "meter 11110001", (60.0,))], writer, health)
    try:
        sender.sendto(b"11110001;volume;10.5", listener.address)
        sender.sendto(b"11110001;volume;10.75", listener.address)
        wait_until(lambda: buffer.next_id == 3, 5, "two readings committed")
        sender.sendto(b"22220002;volume;0.25", listener.address)
        wait_until(lambda: buffer.next_id == 4, 5, "the new meter's reading committed")
    finally:
        stop.set()
        worker.join(5)
        writer.stop()
        writer.join(5)
    series = {key[4]: sid for sid, key in buffer.series().items()}
    assert set(series) == {"11110001", "22220002"}, "a swap starts a new series"
    for sid in series.values():
        assert json.loads(buffer.series_attrs()[sid]) == {"resolution": STEP}
    buffer.close()
