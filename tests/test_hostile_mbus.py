"""A broken, foreign or hostile M-Bus meter never gets a value through.

Real parts: the agent's MbusLink and bus worker on one end of a socat pty
pair, simulators.mbus_meter.MbusLineServer with good meters and the hostile
ones of tests/hostile/mbus_line.py on the other. Hostile telegrams carry
POISON values, so one that got through would be visible.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from agent.health import DeviceHealth, Health
from agent.pipeline import BusWorker
from drivers.core.errors import BusError, MismatchedReply
from drivers.core.protocol import Polled
from drivers.core.readings import Reading
from drivers.mbus.link import MbusLink
from drivers.mbus.profile import MbusProfile
from drivers.mbus.reader import SWAP_CONFIRM_POLLS, MbusDevice
from drivers.profile import load_catalogue
from simulators.mbus_meter import MbusLineServer, SimulatedMbusMeter
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
    LengthFieldsDiffer,
    LengthLiar,
    MasterControlMeter,
    RandomBytesMeter,
)
from tests.support import free_port, require_binary, wait_until

pytestmark = pytest.mark.timeout(60)

TIMEOUT = 0.3  # a pty has no wire time; a loaded test machine needs some slack


@pytest.fixture
def line(tmp_path: Path) -> Iterator[PtyPair]:
    require_binary("socat")
    with PtyPair(tmp_path / "tty.meter", tmp_path / "tty.agent") as pair:
        yield pair


def serve(line: PtyPair, meters: list[SimulatedMbusMeter]) -> MbusLineServer:
    return MbusLineServer(meters, str(line.meter_end)).start()


def mbus_link(line: PtyPair, retries: int = 1) -> MbusLink:
    return MbusLink(str(line.agent_end), 9600, "N", timeout=TIMEOUT, retries=retries)


def good_meter() -> SimulatedMbusMeter:
    return SimulatedMbusMeter(1, "10000001")


def assert_good_meter_reads(link: MbusLink) -> None:
    telegrams = link.read(1)
    assert {t.header.identification for t in telegrams} == {"10000001"}


@pytest.mark.parametrize(("meter", "address", "kind"), [
    (ForeignAddressMeter(7, "70000007", names=8), 7, "address"),
    (MasterControlMeter(9, "90000009"), 9, "control"),
    (ForeignIdMeter(11, "11112222", carries="99998888"), "11112222", "meter"),
], ids=["foreign_address_field", "master_control_field", "secondary_foreign_identification"])
def test_mbus_telegram_of_another_meter_is_refused(line: PtyPair, meter: SimulatedMbusMeter, address: int | str,
                                                   kind: str) -> None:
    """Issue 20, item 3: a reply whose A field names another meter, a frame
    with a master's control field (0x53), and, after a selection by secondary
    address, a telegram carrying another identification number were decoded
    and published under the polled device. Each is now a MismatchedReply."""
    server = serve(line, [good_meter(), meter])
    link = mbus_link(line)
    try:
        with pytest.raises(MismatchedReply) as caught:
            link.read(address)
        assert caught.value.kind == kind
        assert f"meter {address}" in str(caught.value)
        assert_good_meter_reads(link)
    finally:
        link.close()
        server.stop()


@pytest.mark.parametrize("meter", [
    ChecksumLiar(21, "21000021"), LengthLiar(22, "22000022"), LengthFieldsDiffer(23, "23000023"),
    RandomBytesMeter(24, "24000024"), EndlessMoreMeter(25, "25000025"), ApplicationErrorMeter(26, "26000026"),
], ids=lambda m: type(m).__name__)
def test_mbus_held_up_faults_stay_failed_polls(line: PtyPair, meter: SimulatedMbusMeter) -> None:
    """The review's 'held up' list: checksum and length lies, random bytes,
    endless 'more records follow' (capped), an application error. Each is a
    BusError naming the meter, and the good meter on the line reads on."""
    server = serve(line, [good_meter(), meter])
    link = mbus_link(line)
    try:
        with pytest.raises(BusError) as caught:
            link.read(meter.primary)
        assert f"meter {meter.primary}" in str(caught.value) or f"SND_NKE to {meter.primary}" in str(caught.value)
        assert_good_meter_reads(link)
    finally:
        link.close()
        server.stop()


@pytest.mark.parametrize(("pattern", "rate"), [(b"\xe5", 200), (b"\xe5", 6_000_000), (None, 6_000_000)],
                         ids=["endless_e5", "e5_flood", "random_flood"])
def test_mbus_babbling_line_gives_no_telegram(line: PtyPair, pattern: bytes | None, rate: int) -> None:
    """Endless 0xE5 and a 6 MB/s flood: no telegram, a BusError; a flood is
    named as such, counted, and the line closed (issue 20, item 8)."""
    babbler = Babbler(line.meter_end, pattern, bytes_per_s=rate).start()
    link = mbus_link(line)
    try:
        wait_until(lambda: babbler.attempts > 0, 5, "the babbler to start")
        errors = []
        for _ in range(3):
            with pytest.raises(BusError) as caught:
                link.read(5)
            errors.append(str(caught.value))
        if rate > 1_000_000:
            flooded = [e for e in errors if "floods the line" in e]
            assert flooded and link.floods == len(flooded), errors
    finally:
        link.close()
        babbler.stop()


def test_mbus_line_in_use_is_refused_with_a_clear_error(line: PtyPair) -> None:
    """Issue 20, item 6: the M-Bus line was opened without pyserial's
    exclusive lock, so a second agent could share it with the first."""
    server = serve(line, [good_meter()])
    first, second = mbus_link(line), mbus_link(line)
    try:
        assert_good_meter_reads(first)
        with pytest.raises(BusError, match="in use by another process") as caught:
            second.read(1)
        assert str(line.agent_end) in str(caught.value)
        assert_good_meter_reads(first)
    finally:
        first.close()
        second.close()
        server.stop()


def test_mbus_gateway_closing_idle_connections_costs_no_poll(line: PtyPair) -> None:
    """A transparent TCP-to-M-Bus gateway (socat, closing a connection idle
    for 0.3 s) in front of the line: each readout after a pause found the
    connection closed and failed. Now the link reopens it and asks again at
    once, and counts it."""
    port = free_port()
    socat = shutil.which("socat")
    assert socat is not None
    gateway = subprocess.Popen([socat, "-T", "0.3", f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork",
                                f"OPEN:{line.agent_end},raw,echo=0"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = serve(line, [good_meter()])
    # socat forks and opens the pty for each connection: more latency than a pty.
    link = MbusLink(f"socket://127.0.0.1:{port}", 9600, "N", timeout=1.0, retries=0)
    try:
        wait_until(lambda: _listening(port), 5, "the gateway to listen")
        for _ in range(3):
            assert_good_meter_reads(link)
            # The gateway closes the idle connection: the socket turns readable (EOF).
            wait_until(lambda: link._serial is not None and link._serial.in_waiting, 5, "the idle close")
        assert_good_meter_reads(link)
        assert link.idle_reconnects == 3
    finally:
        link.close()
        server.stop()
        gateway.terminate()
        gateway.wait(5)


def _listening(port: int) -> bool:
    """Is a socket listening on the port? Read from /proc, because a probe
    connection would make socat fork a child that opens (and, closing,
    hangs up) the pty."""
    lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return any(f":{port:04X}" == fields[1][-5:] and fields[3] == "0A" for fields in (line.split() for line in lines))


# --- The bus worker: which identification number is the meter -----------------


class Collector:
    """The buffer writer's side of a bus worker: every reading, meter id and event put."""

    def __init__(self) -> None:
        self.readings: list[Reading] = []
        self.events: list[dict[str, object]] = []
        self.meters: list[dict[str, str]] = []
        self._lock = threading.Lock()

    def put(self, readings: list[Reading], counters: object = None, meters: dict[str, str] | None = None,
            events: list[dict[str, object]] | None = None, resolutions: object = None) -> None:
        with self._lock:
            self.readings.extend(readings)
            self.events.extend(events or [])
            if meters:
                self.meters.append(meters)


def heat_profile() -> MbusProfile:
    profile = load_catalogue().get("mbus-heat")
    assert isinstance(profile, MbusProfile)
    return profile


@dataclass(frozen=True)
class Poller:
    """A meter for the bus worker to poll, and the identification it knew before."""

    device_id: str
    address: int | str
    meter: str = ""


def run_mbus_worker(line: PtyPair, devices: list[Poller], health: Health, until: object,
                    what: str, timeout: float = 20) -> Collector:
    collector, stop = Collector(), threading.Event()
    link = mbus_link(line)
    source = Polled(link, [MbusDevice(link, d.device_id, d.address, 0.3, heat_profile()) for d in devices])
    worker = BusWorker("m", source, collector, health, stop, meters={d.device_id: d.meter for d in devices})
    worker.start()
    try:
        wait_until(until, timeout, what)  # type: ignore[arg-type]
    finally:
        stop.set()
        worker.join(5)
    return collector


def poller(device_id: str, address: int | str, health: Health, meter: str = "") -> Poller:
    health.devices[device_id] = DeviceHealth(bus="m")
    return Poller(device_id, address, meter)


def served_values(meter: SimulatedMbusMeter) -> dict[str, set[float]]:
    out: dict[str, set[float]] = {}
    for values in meter.served:
        for point, value in values.items():
            out.setdefault(point, set()).add(float(value))
    return out


def test_mbus_meter_alternating_with_a_foreign_telegram_is_no_swap(line: PtyPair) -> None:
    """Issue 20, item 3: a meter whose every other readout is another
    meter's telegram produced a meter_swap on every poll, and the foreign
    values were published as ok. Now the foreign readouts are failed polls
    (counted, logged once), never a swap, never a value."""
    meter = AlternatingMeter(5, "12345678", foreign="87654321")
    server = serve(line, [meter])
    health = Health()
    device = poller("heat-5", 5, health)
    try:
        with capture_logs() as logged:
            collector = run_mbus_worker(line, [device], health, lambda: meter.readouts >= 9, "nine readouts")
    finally:
        server.stop()
    assert collector.events == []
    assert collector.meters == [{"heat-5": "12345678"}]
    assert {r.meter for r in collector.readings} == {"12345678"}
    served = served_values(meter)
    for reading in collector.readings:
        assert reading.value != POISON_VALUES[reading.point]
        assert float(reading.value) in served[reading.point], reading  # type: ignore[arg-type]
        assert reading.quality == "ok"
    assert health.devices["heat-5"].mismatched_replies >= 3
    assert [e["event"] for e in logged if e.get("device") == "heat-5"] == ["device.ok", "device.mismatched_reply"]


def test_mbus_real_swap_at_a_primary_address_is_confirmed_and_loses_no_reading(line: PtyPair) -> None:
    """The other side of the rule: the meter at primary address 5 replaced
    by a new one (a new identification number from then on) is a swap once
    the new number answered SWAP_CONFIRM_POLLS polls in a row; its first
    polls, held back until then, are all published, the first counter
    readings flagged meter_swap."""
    old, new = SimulatedMbusMeter(5, "12345678"), SimulatedMbusMeter(5, "55556666")
    swapped = threading.Event()
    old.present = lambda: not swapped.is_set()  # type: ignore[method-assign]
    new.present = swapped.is_set  # type: ignore[method-assign]
    server = serve(line, [old, new])
    health = Health()
    device = poller("heat-5", 5, health, meter="12345678")

    def readouts(meter: SimulatedMbusMeter) -> int:
        return len(meter.served) // 2  # two telegrams per readout

    def swap_when_old_was_read() -> bool:
        if readouts(old) >= 2:
            swapped.set()
        return readouts(new) >= SWAP_CONFIRM_POLLS + 2

    try:
        collector = run_mbus_worker(line, [device], health, swap_when_old_was_read, "readouts of the new meter")
    finally:
        server.stop()
    assert [(e["type"], e["old_meter"], e["new_meter"]) for e in collector.events] == \
        [("meter_swap", "12345678", "55556666")]
    stamps = sorted({r.ts for r in collector.readings if r.meter == "55556666"})
    assert len(stamps) >= readouts(new) - 1, "every readout of the new meter is published"
    first = [r for r in collector.readings if r.meter == "55556666" and r.ts == stamps[0]]
    assert {r.point: r.quality for r in first if r.kind == "counter"} == \
        {"energy_heat": "meter_swap", "volume": "meter_swap", "energy_heat_due_date": "meter_swap"}
    assert all(r.quality == "ok" for r in collector.readings if r.meter == "55556666" and r.ts != stamps[0])
    served = served_values(new)
    for reading in (r for r in collector.readings if r.meter == "55556666"):
        assert float(reading.value) in served[reading.point], reading  # type: ignore[arg-type]


def test_mbus_secondary_addressed_meter_never_swaps_to_a_foreign_identification(line: PtyPair) -> None:
    """A device addressed by secondary address 11112222 whose selection is
    answered with a telegram of 99998888: before, the foreign meter became
    the device's meter and its values were published as ok. Now every poll
    fails and nothing is published, however often it repeats."""
    meter = ForeignIdMeter(11, "11112222", carries="99998888")
    server = serve(line, [meter])
    health = Health()
    device = poller("heat-s", "11112222", health)
    try:
        collector = run_mbus_worker(line, [device], health,
                                    lambda: health.devices["heat-s"].mismatched_replies >= SWAP_CONFIRM_POLLS + 2,
                                    "foreign telegrams")
    finally:
        server.stop()
    assert collector.readings == [] and collector.events == [] and collector.meters == []
    assert health.devices["heat-s"].state == "rejected"


def test_mbus_secondary_address_changed_in_the_config_is_a_swap_at_once(line: PtyPair) -> None:
    """The technician replaced the meter and put the new number in the
    config: the first readout under it is the swap (no confirmation wait:
    the selection already proves the identity)."""
    meter = SimulatedMbusMeter(3, "22223333")
    server = serve(line, [meter])
    health = Health()
    device = poller("heat-s", "22223333", health, meter="11110000")
    try:
        collector = run_mbus_worker(line, [device], health, lambda: len(meter.served) >= 2, "the first readout")
    finally:
        server.stop()
    assert [(e["type"], e["new_meter"]) for e in collector.events] == [("meter_swap", "22223333")]
