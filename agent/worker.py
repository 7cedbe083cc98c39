"""One worker thread per physical bus: devices on it take turns.

An RS-485 or M-Bus line is half-duplex: one transaction at a time. A worker
owns its bus's link, keeps each device's schedule, reads the planned
register blocks, decodes them and hands a poll's readings to the buffer in
one piece. A device that stops answering costs its own bus one timeout per
attempt; devices on other buses never wait for it.

Polls are aligned to wall-clock multiples of the interval (a 15-minute
counter is read at :00, :15, :30, :45, as utility interval data is), shifted
by a small per-device offset so a bus is not flooded at the boundary.
"""

from __future__ import annotations

import math
import threading
import time
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from agent import failpoints, logs
from agent.clock import ClockState
from agent.health import BusHealth, DeviceHealth, Health
from agent.integrity import CounterGuard, CounterLimits, Key, State
from drivers.codec import registers_to_bytes
from drivers.core.errors import BusError, ExceptionResponse, MismatchedReply
from drivers.core.readings import Reading, now_ms, with_flag
from drivers.modbus import RegisterReader
from drivers.plan import Hole, LinkCost, ReadRequest, gaps_inside, plan_requests
from drivers.profile import ModbusPoint, Profile
from drivers.values import AnswerDecoder, with_exponent_registers

if TYPE_CHECKING:
    from agent.mbus_worker import MbusDevicePoller

ILLEGAL_DATA_ADDRESS = 2
QUALITY_INVALID = "invalid"

class Sink(Protocol):
    """Where a poll's readings go (the buffer writer)."""

    def put(self, readings: list[Reading], counters: dict[Key, State] | None = None,
            meters: dict[str, str] | None = None, events: list[dict[str, object]] | None = None) -> None: ...


IDENTITY_EVERY_S = 3600.0
# A device that answers another question (a foreign meter on its address, a
# gateway mixing up replies) is counted at every reply and logged once per
# kind of mismatch and hour, with the count since: a device flapping between
# its own answers and foreign ones must not write a line per poll.
MISMATCH_LOG_EVERY_S = 3600.0
# A poll due this soon after the previous one follows it at once instead of
# after a sleep of a few ms: one wake-up for the devices a bus spreads over
# the first moments of a slot, not one each.
CHAIN_S = 0.02


def next_slot(now: float, interval: float, offset: float) -> float:
    """The first time after ``now`` that is a multiple of ``interval`` plus ``offset``."""
    return (math.floor((now - offset) / interval) + 1) * interval + offset


def device_offset(device_id: str, interval: float) -> float:
    """A stable spread within the first 5 % of the interval (at most 2 s)."""
    spread = min(interval * 0.05, 2.0)
    return spread * (zlib.crc32(device_id.encode()) % 1000) / 1000


def group_by_interval(points: tuple[ModbusPoint, ...], device_interval: float,
                      overrides: dict[str, float] | None = None) -> dict[float, tuple[ModbusPoint, ...]]:
    """Points by the interval they are read at: the device config's
    per-point override, else the device's own, slowed to the profile
    point's ``interval`` where it has one (a profile never makes a point
    read more often than its device)."""
    groups: dict[float, list[ModbusPoint]] = {}
    for point in points:
        interval = (overrides or {}).get(point.name) or max(device_interval, point.interval or 0.0)
        groups.setdefault(float(interval), []).append(point)
    return {interval: tuple(members) for interval, members in sorted(groups.items())}


@dataclass
class PollGroup:
    """Points of one device read together at one interval (counters every
    15 minutes and power every 10 s on the same meter are two groups)."""

    interval: float
    points: tuple[ModbusPoint, ...]
    offset: float
    next_due: float = 0.0
    plan: tuple[ReadRequest, ...] = ()


@dataclass
class DevicePoller:
    """One device's schedule, read plans and decoders."""

    device_id: str
    unit: int
    interval: float
    profile: Profile
    points: tuple[ModbusPoint, ...]
    cost: LinkCost
    health: DeviceHealth
    learned_holes: list[Hole] = field(default_factory=list)
    decoder: AnswerDecoder = field(init=False)
    silent_since: float | None = None
    max_rates: dict[str, float] = field(default_factory=dict)
    intervals: dict[str, float] = field(default_factory=dict)
    limits: dict[str, CounterLimits] = field(default_factory=dict)
    groups: list[PollGroup] = field(default_factory=list)
    meter: str = ""  # the identification number last read (or stored in the buffer)
    identity_due: float = 0.0  # monotonic time of the next identity read
    swapped: set[str] = field(default_factory=set)  # counters whose next reading starts a new series

    def __post_init__(self) -> None:
        self.decoder = AnswerDecoder(self.points)
        self.limits = {p.name: counter_limits(p, self.max_rates.get(p.name)) for p in self.points
                       if p.kind == "counter"}
        self.groups = [PollGroup(interval, with_exponent_registers(members), device_offset(self.device_id, interval))
                       for interval, members in group_by_interval(self.points, self.interval, self.intervals).items()]
        self.replan()

    @property
    def plan(self) -> tuple[ReadRequest, ...]:
        """Every request of every group (for logs and tests)."""
        return tuple(r for group in self.groups for r in group.plan)

    def replan(self) -> None:
        holes = tuple(self.profile.workarounds.holes) + tuple(self.learned_holes)
        for group in self.groups:
            group.plan = plan_requests(group.points, self.cost, self.profile.workarounds.max_registers, holes)


_INT_BITS = {"int16": 15, "uint16": 16, "int32": 31, "uint32": 32, "int64": 63, "uint64": 64}


def counter_limits(point: ModbusPoint, max_rate: float | None) -> CounterLimits:
    """A counter's physical limits: the width it wraps at, its resolution, its rate."""
    bits = _INT_BITS.get(point.type)
    scale = float(point.scale)
    return CounterLimits(
        max_rate_per_h=max_rate,
        rollover_at=(2 ** bits) * scale if bits else None,
        slack=abs(scale) if bits else 0.0,
    )


class BusWorker(threading.Thread):
    def __init__(self, bus_id: str, link: RegisterReader, devices: list[DevicePoller], sink: Sink,
                 health: Health, stop: threading.Event, clock: ClockState | None = None,
                 guard: CounterGuard | None = None) -> None:
        super().__init__(name=f"bus-{bus_id}", daemon=True)
        self.bus_id = bus_id
        self.link = link
        self.devices = devices
        self._sink = sink
        self._clock = clock or ClockState()
        self._guard = guard or CounterGuard()
        self._health = health
        self._stop_event = stop
        self._log = logs.get("bus").bind(bus=bus_id)
        self._bus_health = health.buses.setdefault(bus_id, BusHealth())
        self._mismatches: dict[tuple[str, str], tuple[float, int]] = {}  # (device, kind) -> (logged at, repeats since)

    def run(self) -> None:
        start = time.time()
        schedule = [(device, group) for device in self.devices for group in device.groups]
        # The first poll of each group happens at once (staggered), so a
        # technician sees data right after start; then polls align.
        for index, (_, group) in enumerate(schedule):
            group.next_due = start + index * 0.01
        try:
            while not self._stop_event.is_set():
                self._health.touch(self.name)
                failpoints.hang_if(f"stall-bus:{self.bus_id}")
                device, group = min(schedule, key=lambda entry: entry[1].next_due)
                wait = group.next_due - time.time()
                if wait > CHAIN_S:
                    self._stop_event.wait(min(wait, 1.0))
                    continue
                self.poll(device, group)
                self._bus_health.idle_reconnects = self.link.idle_reconnects
                self._bus_health.floods = self.link.floods
                # From the slot, not the clock: a poll chained a little early
                # must not land in the same slot again.
                group.next_due = next_slot(max(time.time(), group.next_due), group.interval, group.offset)
        finally:
            self.link.close()

    def _check_identity(self, device: DevicePoller) -> tuple[dict[str, str] | None, list[dict[str, object]]]:
        """Read the meter's serial number (at start, hourly, and first thing
        when a silent device answers again: a swap takes the meter offline);
        a new one is a meter swap: one event, and its counters start anew.
        Raises BusError when the device does not answer."""
        register = device.profile.identity
        if register is None or time.monotonic() < device.identity_due:
            return None, []
        try:
            words = self.link.read(register.table, device.unit, register.address, register.count)
        except ExceptionResponse:
            device.identity_due = time.monotonic() + IDENTITY_EVERY_S  # this unit has no serial there
            return None, []
        device.identity_due = time.monotonic() + IDENTITY_EVERY_S
        return self._swap_if_new(device, str(register.decoder()(words)))

    def poll(self, device: DevicePoller, group: PollGroup | None = None) -> None:
        """Read every planned block of one group of a device; hand over what was read."""
        readings: list[Reading] = []
        error: BusError | None = None
        group = group or device.groups[0]
        try:
            meters, events = self._check_identity(device)
        except BusError as exc:
            self._record(device, exc, got_any=False)  # silent: one timeout, as for any first request
            return
        requests = list(group.plan)
        answers: list[tuple[ReadRequest, bytes, int, int | None]] = []
        split_once = False
        pause = device.profile.workarounds.pause_between_requests
        first = True
        while requests:
            request = requests.pop(0)
            if pause and not first:
                time.sleep(pause)  # a device that needs a breath between requests (workarounds)
            first = False
            try:
                registers = self.link.read(request.table, device.unit, request.start, request.count)
            except ExceptionResponse as exc:
                if exc.code == ILLEGAL_DATA_ADDRESS and len(request.points) > 1 and not split_once:
                    # Some register inside the merged block does not exist on
                    # this device: never read across those gaps again.
                    gaps = gaps_inside(request)
                    split_once = True
                    if gaps:
                        device.learned_holes.extend(gaps)
                    else:
                        device.learned_holes.extend(
                            (request.table, p.end, p.end) for p in request.points[:-1]
                        )
                    device.replan()
                    self._log.warning("device.plan_split", device=device.device_id, table=request.table,
                                      start=request.start, count=request.count, requests=len(device.plan))
                    retry = [r for r in group.plan if r.start < request.end and request.start < r.end
                             and r.table == request.table]
                    requests = retry + requests
                    continue
                error = exc
                continue  # the device answers; other blocks may still be fine
            except MismatchedReply as exc:
                error = exc
                continue  # never a value; the device answers quickly, so the other blocks are still asked
            except BusError as exc:
                error = exc
                break  # no answer: the rest would only cost more timeouts
            answers.append((request, registers_to_bytes(registers), self._clock.wall_ms(),
                            None if self._clock.trusted else self._clock.mono_ms()))
        device.decoder.take_exponents((request, answer) for request, answer, _, _ in answers)
        for answer in answers:
            readings.extend(self._decode(device, *answer))
        if readings:
            self._sink.put(readings, self._guard.take_changes() or None, meters, events)
        elif meters or events:
            self._sink.put([], None, meters, events)
        self._record(device, error, got_any=bool(readings))

    def _decode(self, device: DevicePoller, request: ReadRequest, answer: bytes, stamp: int,
                mono: int | None) -> list[Reading]:
        """Values of one answer, stamped with the moment it came, checked, flagged."""
        return [self._reading(device, point.name, value, point.unit, point.kind, stamp, mono)
                for point, value in device.decoder.values(request, answer)]

    def _reading(self, device: DevicePoller | MbusDevicePoller, point: str, value: float | int | None, unit: str,
                 kind: str, stamp: int, mono: int | None) -> Reading:
        """One reading, its counter checked and its quality flags set; the raw value is kept."""
        quality = "ok"
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            value, quality = None, QUALITY_INVALID
        elif kind == "counter":
            limits = device.limits.get(point) or CounterLimits()
            flag = self._guard.check((device.device_id, point), value, stamp, limits)
            if point in device.swapped:
                device.swapped.discard(point)
                flag = "meter_swap"
            if flag:
                quality = flag
                self._log.warning("counter.suspicious", device=device.device_id, point=point, flag=flag, value=value)
        if mono is not None:
            quality = with_flag(quality, "clock_unsynced")
        return Reading(device.device_id, point, value, unit, stamp, quality, kind, device.meter, mono)

    def _swap_if_new(self, device: DevicePoller | MbusDevicePoller, meter: str
                     ) -> tuple[dict[str, str] | None, list[dict[str, object]]]:
        """A meter id that differs from the last one known is a meter swap:
        one event, and the device's counters start a new series."""
        if not meter or meter == device.meter:
            return None, []
        events: list[dict[str, object]] = []
        if device.meter:
            events.append({"type": "meter_swap", "device": device.device_id, "old_meter": device.meter,
                           "new_meter": meter, "ts": self._clock.wall_ms()})
            self._guard.forget_device(device.device_id)
            device.swapped = set(device.limits) | {p for p in getattr(device, "counter_points", ())}
            self._log.warning("device.meter_swap", device=device.device_id, old_meter=device.meter, new_meter=meter)
        device.meter = meter
        return {device.device_id: meter}, events

    def _record(self, device: DevicePoller, error: BusError | None, got_any: bool) -> None:
        """Count the poll; log only when the device's state changes."""
        health = device.health
        health.polls += 1
        if got_any:
            health.last_ok_ms = now_ms()
        if error is not None:
            health.failures += 1
            health.consecutive_failures += 1
            health.last_error = str(error)
        if isinstance(error, MismatchedReply):
            self._count_mismatch(device, error)
        state = "ok" if error is None else ("partial" if got_any else
                                             "rejected" if isinstance(error, MismatchedReply) else "silent")
        if state == health.state:
            return
        previous, health.state = health.state, state
        if state == "rejected":
            pass  # _count_mismatch tells, once per kind and hour: a device flapping between its own
            # answers and foreign ones must not write a line per poll
        elif state == "silent":
            device.silent_since = time.monotonic()
            device.identity_due = 0.0  # a meter that was away may be another meter when it answers
            self._log.warning("device.silent", device=device.device_id, error=str(error))
        elif state == "partial":
            self._log.warning("device.partial", device=device.device_id, error=str(error))
        elif previous == "silent" or device.silent_since is not None:  # also back by way of 'rejected'
            self._log.info("device.back", device=device.device_id,
                           failed_polls=health.consecutive_failures,
                           silent_s=round(time.monotonic() - (device.silent_since or 0), 1))
        elif previous != "rejected":
            self._log.info("device.ok", device=device.device_id, requests=len(device.plan))
        if state == "ok":
            health.consecutive_failures = 0
            device.silent_since = None

    def _count_mismatch(self, device: DevicePoller | MbusDevicePoller, error: MismatchedReply) -> None:
        """Count a refused reply; log the first of its kind, then once an hour with the repeats."""
        device.health.mismatched_replies += 1
        key = (device.device_id, error.kind)
        now = time.monotonic()
        logged_at, repeats = self._mismatches.get(key, (None, 0))
        if logged_at is not None and now - logged_at < MISMATCH_LOG_EVERY_S:
            self._mismatches[key] = (logged_at, repeats + 1)
            return
        self._mismatches[key] = (now, 0)
        self._log.warning("device.mismatched_reply", device=device.device_id, kind=error.kind, error=str(error),
                          repeats=repeats, mismatched_replies=device.health.mismatched_replies)
