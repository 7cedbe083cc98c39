"""The pipeline every protocol's readings go through: one worker thread per bus.

An RS-485 or M-Bus line is half-duplex: one transaction at a time, the
devices on it take turns; a radio receiver hears one transmission at a
time. A worker owns its bus's source (opened by the bus's protocol,
drivers/*/protocol.py) and does, the same for every protocol:

- scheduling (polled sources): polls aligned to wall-clock multiples of the
  interval (a 15-minute counter is read at :00, :15, :30, :45, as utility
  interval data is), shifted by a small per-device offset so a bus is not
  flooded at the boundary; a device set to ``align: boundary`` is read at
  the boundary itself, first, and nothing that would still hold the bus
  then is started before it (settlement periods, docs/savings.md); or
  listening (pushed sources), where a device that has not been heard for a
  few of its intervals is silent;
- health: each device's state (ok, partial, silent, rejected), one log
  line per change of state, counts for the repeats;
- the counter guard (agent/integrity.py) on every counter reading;
- identity: a new meter identification is a meter swap (one event, its
  counters start new series). A protocol that cannot be sure a reply is the
  addressed meter's asks for several readouts in a row first
  (``identity_confirm``): until then they are held back and each is a
  failed poll; if the known meter answers in between, the newcomer was a
  foreign reply and what was held is dropped. Confirmed, the held readouts
  are published, the first reading of each counter flagged ``meter_swap``:
  a real swap loses no reading, a foreign reply never becomes one;
- the clock: answers stamped with the wall clock, and with the monotonic
  clock too while the wall clock is not trusted;
- resolutions: what the platform needs to read a series travels with the
  readings that start it, to the buffer writer (never beside them).

A dead meter costs its own bus one timeout per attempt; devices on other
buses never wait for it.
"""

from __future__ import annotations

import heapq
import math
import threading
import time
import zlib
from collections import deque
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from typing import Protocol

from agent import failpoints, logs
from agent.clock import ClockState
from agent.health import BusHealth, DeviceHealth, Health
from agent.integrity import CounterGuard, CounterLimits, Key, State
from drivers.core.errors import BusError, MismatchedReply
from drivers.core.protocol import Device, PointInfo, Polled, PolledDevice, Pushed, Readout, Resolution, Source
from drivers.core.readings import QUALITY_INVALID, Reading, now_ms, with_flag

Event = dict[str, object]
# A poll's hand-over: readings, counter state, meters, events, resolutions.
Put = tuple[list[Reading], dict[Key, State] | None, dict[str, str] | None, list[Event],
            dict[tuple[str, str], Resolution] | None]


class Sink(Protocol):
    """Where a poll's readings go (the buffer writer)."""

    def put(self, readings: list[Reading], counters: dict[Key, State] | None = None,
            meters: dict[str, str] | None = None, events: list[Event] | None = None,
            resolutions: dict[tuple[str, str], Resolution] | None = None) -> None: ...


# A device that answers another question (a foreign meter on its address, a
# gateway mixing up replies) is counted at every reply and logged once per
# kind of mismatch and hour, with the count since: a device flapping between
# its own answers and foreign ones must not write a line per poll.
MISMATCH_LOG_EVERY_S = 3600.0
# A poll due this soon after the previous one follows it at once instead of
# after a sleep of a few ms: one wake-up for the devices a bus spreads over
# the first moments of a slot, not one each.
CHAIN_S = 0.02
# A poll on its boundary (``align: boundary``) is on time within this: the
# platform takes a settlement period's counter at its boundary from a reading
# no further than 2 s (simulators/intervals.py). A later one is still read,
# and the device logs once that its boundary reads are late, once when they
# are on time again.
BOUNDARY_TOLERANCE_S = 2.0
# A spread poll that, judged by its last polls, would still hold the bus this
# close to a boundary poll's start waits and goes right after it.
BOUNDARY_MARGIN_S = 0.05
# How long a poll group takes: the longest of its last few polls (a device
# that timed out lately is expected to again).
DURATIONS_KEPT = 4
# The wall clock moved against the monotonic one by more than this between
# two turns of the loop (NTP stepped it): every slot is placed anew.
CLOCK_STEP_S = 0.05
# The two clocks are compared only from readings taken this close together
# (a thread paused between them would look like a step).
CLOCK_READ_S = 0.005
# At most this many polls are handed over together (a bus of many devices
# all due at once still hands its readings over steadily).
HAND_OVER_POLLS = 32
# A device that sends on its own is silent once this many of its intervals
# passed without a word (radio transmissions are lost now and then).
SILENT_AFTER_INTERVALS = 3
# Senders no device of the bus is: logged once per sender and hour.
UNKNOWN_LOG_EVERY_S = 3600.0
RECEIVER_RETRY_S = (1.0, 30.0)  # first and longest wait before a failed receiver is asked again


def next_slot(now: float, interval: float, offset: float) -> float:
    """The first time after ``now`` that is a multiple of ``interval`` plus ``offset``."""
    return (math.floor((now - offset) / interval) + 1) * interval + offset


def wall_minus_mono() -> float | None:
    """How far the wall clock is ahead of the monotonic one, in seconds;
    None when the thread was paused while reading them."""
    before = time.monotonic()
    wall = time.time()
    after = time.monotonic()
    return wall - (before + after) / 2 if after - before < CLOCK_READ_S else None


def device_offset(device_id: str, interval: float) -> float:
    """A stable spread within the first 5 % of the interval (at most 2 s)."""
    spread = min(interval * 0.05, 2.0)
    return spread * (zlib.crc32(device_id.encode()) % 1000) / 1000


@dataclass
class Slot:
    """When one poll group of a device is due next.

    ``target`` is the wall-clock moment the poll is for (None: the first
    poll after start, at once). ``due`` is when it is due by the wall clock
    (the target, or the boundary poll it waits for), which orders the polls:
    polls for the same boundary tie exactly and go by ``rank``.
    ``deadline`` is the same moment on the monotonic clock, worked out when
    the slot is placed, so a poll waits for its moment whatever the wall
    clock does meanwhile."""

    group: int
    interval: float
    offset: float
    aligned: bool = False  # on the boundary itself, first (``align: boundary``)
    target: float | None = None
    due: float = 0.0
    deadline: float = 0.0
    took: deque[float] = field(default_factory=lambda: deque(maxlen=DURATIONS_KEPT))
    deferred: bool = False  # waited once for a boundary poll; goes at its next turn
    late: bool = False  # the last boundary poll started more than BOUNDARY_TOLERANCE_S late

    @property
    def rank(self) -> tuple[int, float]:
        """Among polls due at the same moment: boundary polls first, the
        longest interval first (a device's 15-minute counters before its
        10-second gauges), then the others."""
        return (0, -self.interval) if self.aligned else (1, 0.0)

    def place(self, wall: float, wall_minus_mono: float) -> None:
        """The next slot after ``wall`` (and after the one just polled).

        After the first poll (made at once, at start) a slot due within
        CHAIN_S would be polled straight away, chained: the same values again
        within the same millisecond, which the platform cannot tell from one
        reading sent under two ids. That first poll stands for such a slot."""
        after = max(wall, self.target) if self.target is not None else wall + CHAIN_S
        self.target = self.due = next_slot(after, self.interval, self.offset)
        self.deadline = self.target - wall_minus_mono

    def behind(self, other: Slot) -> None:
        """Due right after ``other`` (a boundary poll it would hold the bus for)."""
        self.due, self.deadline = other.due, other.deadline


class DeviceState:
    """What the pipeline keeps of one device: schedule, identity, counter
    limits, health and what the platform was told. Owned by its bus worker."""

    def __init__(self, device: Device, health: DeviceHealth, max_rates: Mapping[str, float] | None = None,
                 meter: str = "", aligned: bool = False) -> None:
        self.device = device
        self.device_id = device.device_id
        self.health = health
        self.meter = meter  # the identification number last read (or stored in the buffer)
        self.slots = [Slot(index, interval, 0.0 if aligned else device_offset(self.device_id, interval), aligned)
                      for index, interval in enumerate(device.intervals)]
        rates = max_rates or {}
        self.limits = {name: CounterLimits(max_rate_per_h=rates.get(name), rollover_at=info.rollover_at,
                                           slack=info.slack)
                       for name, info in device.points.items() if info.kind == "counter"}
        self.swapped: set[str] = set()  # counters whose next reading starts a new series
        self.silent_since: float | None = None
        self.told: set[str] = set()  # errors the last readout's notes already logged
        self.heard_at = time.monotonic()  # pushed: when the device was last heard
        self.candidate = ""  # a new identification, not yet confirmed
        self.held: list[Readout] = []  # the candidate's readouts, in order
        # The platform learns a point's resolution with the first readings of its series.
        self.resolutions: dict[str, Resolution] = {
            name: info.resolution for name, info in device.points.items() if info.resolution is not None}
        self.units: dict[str, str] = {}
        self.undescribed: set[str] = set(self.resolutions)

    def learn(self, points: Mapping[str, PointInfo]) -> None:
        """What a reply said of its points: their step (the counter's slack
        and wrap) and resolution, which the platform is told when it changes."""
        for name, info in points.items():
            if info.resolution is not None and self.resolutions.get(name) != info.resolution:
                self.resolutions[name] = info.resolution
                self.undescribed.add(name)
            if self.units.get(name, info.unit) != info.unit and name in self.resolutions:
                self.undescribed.add(name)  # another unit is another series
            self.units[name] = info.unit
            limits = self.limits.get(name)
            if limits is not None and (limits.slack, limits.rollover_at) != (info.slack, info.rollover_at):
                self.limits[name] = replace(limits, slack=info.slack, rollover_at=info.rollover_at)


class BusWorker(threading.Thread):
    """One bus: its source's devices polled on schedule, or listened to."""

    def __init__(self, bus_id: str, source: Source, sink: Sink, health: Health, stop: threading.Event,
                 clock: ClockState | None = None, guard: CounterGuard | None = None,
                 max_rates: Mapping[str, Mapping[str, float]] | None = None,
                 meters: Mapping[str, str] | None = None, aligned: Collection[str] = ()) -> None:
        super().__init__(name=f"bus-{bus_id}", daemon=True)
        self.bus_id = bus_id
        self.source = source
        self._sink = sink
        self._clock = clock or ClockState()
        self._guard = guard or CounterGuard()
        self._health = health
        self._stop_event = stop
        self._log = logs.get("bus").bind(bus=bus_id)
        self._stall_failpoint = f"stall-bus:{bus_id}"
        self._bus_health = health.buses.setdefault(bus_id, BusHealth())
        self._mismatches: dict[tuple[str, str], tuple[float, int]] = {}  # (device, kind) -> (logged at, repeats)
        self._unknown: dict[str, tuple[float, int]] = {}  # sender -> (logged at, repeats since)
        self._puts: list[Put] = []  # polls read since the last hand-over, each as the writer takes it
        self.unknown_senders = 0  # transmissions heard from nobody configured on the bus (pushed sources)
        self.devices = [
            DeviceState(device, health.devices.setdefault(device.device_id, DeviceHealth(bus=bus_id)),
                        (max_rates or {}).get(device.device_id), (meters or {}).get(device.device_id, ""),
                        device.device_id in aligned)
            for device in source.devices]
        self._readers: dict[str, PolledDevice] = (
            {device.device_id: device for device in source.devices} if isinstance(source, Polled) else {})

    @property
    def link(self) -> object:
        return self.source.link if isinstance(self.source, Polled) else self.source.listener

    def close(self) -> None:
        """Close the bus's link (start-up failed, or the thread ended)."""
        if isinstance(self.source, Polled):
            self.source.link.close()
        else:
            self.source.listener.close()

    def run(self) -> None:
        try:
            if isinstance(self.source, Polled):
                self._poll(self.source)
            else:
                self._listen(self.source)
        finally:
            self._hand_over()
            self.close()

    # -- polled sources ------------------------------------------------------------------------
    def _poll(self, source: Polled) -> None:
        link = source.link
        schedule = [(state, self._readers[state.device_id], slot) for state in self.devices for slot in state.slots]
        boundary = [slot for _, _, slot in schedule if slot.aligned]
        # The first poll of each group happens at once (staggered), so a
        # technician sees data right after start; then polls align.
        start, wall = time.monotonic(), time.time()
        for index, (_, _, slot) in enumerate(schedule):
            slot.due, slot.deadline = wall + index * 0.01, start + index * 0.01
        # A heap: the next poll first; at the same moment, boundary polls first.
        due = [(slot.due, slot.rank, index) for index, (_, _, slot) in enumerate(schedule)]
        heapq.heapify(due)
        offset = wall - start
        while not self._stop_event.is_set():
            self._health.touch(self.name)
            failpoints.hang_if(self._stall_failpoint)
            measured = wall_minus_mono()
            if measured is not None:
                if abs(measured - offset) > CLOCK_STEP_S:
                    due = self._place_anew(schedule, time.time(), measured)
                offset = measured
            now = time.monotonic()
            index = due[0][2]
            state, reader, slot = schedule[index]
            # A boundary poll starts at its moment, never early; others
            # follow a poll due within CHAIN_S at once.
            if slot.deadline - now > (0.0 if slot.aligned else CHAIN_S):
                self._hand_over()  # before a wait: the writer wakes once for a burst of polls
                self._stop_event.wait(min(slot.deadline - time.monotonic(), 1.0))
                continue
            if boundary and not slot.aligned and not slot.deferred:
                ahead = min(boundary, key=lambda other: other.deadline)
                if ahead.deadline < now + max(slot.took, default=0.0) + BOUNDARY_MARGIN_S:
                    slot.deferred = True  # once: then it goes, even before the next boundary
                    slot.behind(ahead)
                    heapq.heapreplace(due, (slot.due, slot.rank, index))
                    continue
            if slot.aligned and slot.target is not None and self._clock.trusted:
                self._check_boundary(state, slot, time.time() - slot.target)
            self.take(state, reader.read(slot.group, self._clock))
            slot.took.append(time.monotonic() - now)
            slot.deferred = False
            if len(self._puts) >= HAND_OVER_POLLS:
                self._hand_over()
            self._bus_health.idle_reconnects = link.idle_reconnects
            self._bus_health.floods = link.floods
            # From the slot, not the clock: a poll chained a little early
            # must not land in the same slot again.
            slot.place(time.time(), offset)
            heapq.heapreplace(due, (slot.due, slot.rank, index))

    @staticmethod
    def _place_anew(schedule: list[tuple[DeviceState, PolledDevice, Slot]], wall: float,
                    offset: float) -> list[tuple[float, tuple[int, float], int]]:
        """The wall clock was stepped (NTP after boot): every slot's next
        poll at its next moment by the clock as it is now."""
        due = []
        for index, (_, _, slot) in enumerate(schedule):
            if slot.target is None:
                slot.due = slot.deadline + offset  # a first poll, still due at once
            else:
                slot.target = None
                slot.place(wall, offset)
            slot.deferred = False
            due.append((slot.due, slot.rank, index))
        heapq.heapify(due)
        return due

    def _check_boundary(self, state: DeviceState, slot: Slot, late_s: float) -> None:
        """Log when a device's boundary polls start late (a busy bus), and
        when they are on time again: one line per change."""
        late = late_s > BOUNDARY_TOLERANCE_S
        if late == slot.late:
            return
        slot.late = late
        if late:
            self._log.warning("device.boundary_late", device=state.device_id, interval=slot.interval,
                              late_s=round(late_s, 3))
        else:
            self._log.info("device.boundary_on_time", device=state.device_id, interval=slot.interval,
                           late_s=round(late_s, 3))

    # -- pushed sources ------------------------------------------------------------------------
    def _listen(self, source: Pushed) -> None:
        listener = source.listener
        by_id = {state.device_id: state for state in self.devices}
        failing: str | None = None
        retry = RECEIVER_RETRY_S[0]
        while not self._stop_event.is_set():
            self._health.touch(self.name)
            failpoints.hang_if(self._stall_failpoint)
            try:
                heard = listener.receive(min(1.0, self._until_silent()), self._clock)
            except BusError as exc:
                if failing is None:
                    self._log.error("bus.receiver_failed", error=str(exc))
                failing = str(exc)
                self._stop_event.wait(retry)
                retry = min(retry * 2, RECEIVER_RETRY_S[1])
                continue
            if self._stop_event.is_set():
                break  # a stop during the wait is no silence
            if failing is not None:
                self._log.info("bus.receiver_back", error_was=failing)
                failing, retry = None, RECEIVER_RETRY_S[0]
            if heard is not None:
                state = by_id.get(heard.device_id) if heard.device_id is not None else None
                if state is None:
                    self._count_unknown(heard.sender)
                elif heard.readout is not None:
                    state.heard_at = time.monotonic()
                    self.take(state, heard.readout)
                    self._hand_over()
            self._check_silence()
            self._bus_health.idle_reconnects = listener.idle_reconnects
            self._bus_health.floods = listener.floods

    def _until_silent(self) -> float:
        now = time.monotonic()
        return max(0.0, min((state.heard_at + self._silent_after(state) - now for state in self.devices),
                            default=1.0))

    @staticmethod
    def _silent_after(state: DeviceState) -> float:
        return SILENT_AFTER_INTERVALS * max(state.device.intervals, default=60.0)

    def _check_silence(self) -> None:
        """A device not heard for a few of its intervals is silent: a failed
        poll for each such stretch, logged when its state changes."""
        now = time.monotonic()
        for state in self.devices:
            quiet = now - state.heard_at
            if quiet >= self._silent_after(state):
                state.heard_at = now
                self._record(state, BusError(
                    f"nothing heard from {state.device.where} for {quiet:.3g} s (it sends about every "
                    f"{max(state.device.intervals, default=60.0):g} s)"), got_any=False)

    def _count_unknown(self, sender: str) -> None:
        """A transmission from nobody configured on this bus: counted, logged once an hour per sender."""
        self.unknown_senders += 1
        now = time.monotonic()
        logged_at, repeats = self._unknown.get(sender, (None, 0))
        if logged_at is not None and now - logged_at < UNKNOWN_LOG_EVERY_S:
            self._unknown[sender] = (logged_at, repeats + 1)
            return
        if len(self._unknown) > 1000:  # a busy radio neighbourhood: memory stays bounded
            self._unknown.clear()
        self._unknown[sender] = (now, 0)
        self._log.info("bus.unknown_sender", sender=sender, repeats=repeats)

    # -- what a device said --------------------------------------------------------------------
    def take(self, state: DeviceState, readout: Readout) -> None:
        """One readout of a device: identity, readings, health."""
        for event, fields in readout.notes:
            self._log.warning(event, device=state.device_id, **fields)
        state.told = {str(fields["error"]) for _, fields in readout.notes if "error" in fields}
        meter = readout.meter
        if meter and state.meter and meter != state.meter and state.device.identity_confirm > 1:
            self._unconfirmed(state, meter, readout)
            return
        if readout.answers or meter:
            state.candidate, state.held = "", []  # the known meter answered: a newcomer was a foreign reply
        self._publish(state, meter, [readout])

    def _unconfirmed(self, state: DeviceState, meter: str, readout: Readout) -> None:
        """Another identification than the known one: held back until it
        has come ``identity_confirm`` times in a row."""
        if meter != state.candidate:
            state.candidate, state.held = meter, []
        state.held.append(readout)
        confirm = state.device.identity_confirm
        if len(state.held) >= confirm:
            held, state.candidate, state.held = state.held, "", []
            self._publish(state, meter, held)
            return
        self._record(state, MismatchedReply(
            f"{state.device.where}: the reply carries identification {meter}, not {state.device_id}'s "
            f"{state.meter}; a meter swap only once it answers {confirm} polls in a row ({len(state.held)} so "
            "far), a foreign reply otherwise", "meter"), got_any=False)

    def _publish(self, state: DeviceState, meter: str, readouts: list[Readout]) -> None:
        meters, events = self._swap_if_new(state, meter)
        readings: list[Reading] = []
        error: BusError | None = None
        for readout in readouts:
            if readout.points:
                state.learn(readout.points)
            for stamp, mono, values in readout.answers:
                readings.extend([self._reading(state, point.name, value, point.unit, point.kind, stamp, mono)
                                 for point, value in values])
            error = readout.error
        resolutions = self._describe(state, readings) if state.undescribed and readings else None
        if readings or meters or events:
            self._puts.append((readings, self._guard.take_changes() or None, meters, events, resolutions))
        self._record(state, error, got_any=bool(readings) or error is None)

    def _hand_over(self) -> None:
        """Hand the polls' readings to the buffer writer. Each poll stays
        one put (and one chunk in the buffer); a burst of polls is handed
        over together, so the writer thread wakes once for it, not once
        per poll."""
        puts, self._puts = self._puts, []
        for readings, counters, meters, events, resolutions in puts:
            self._sink.put(readings, counters, meters, events, resolutions)

    @staticmethod
    def _describe(state: DeviceState, readings: list[Reading]) -> dict[tuple[str, str], Resolution] | None:
        """The resolutions of the points these readings bring that the
        platform was not told yet (a new series: start, a swap, a new step)."""
        out: dict[tuple[str, str], Resolution] = {}
        for reading in readings:
            if reading.point in state.undescribed:
                state.undescribed.discard(reading.point)
                out[(reading.device, reading.point)] = state.resolutions[reading.point]
        return out or None

    def _reading(self, state: DeviceState, point: str, value: float | int | str | None, unit: str,
                 kind: str, stamp: int, mono: int | None) -> Reading:
        """One reading, its counter checked and its quality flags set; the raw value is kept."""
        quality = "ok"
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            value, quality = None, QUALITY_INVALID
        elif kind == "counter" and not isinstance(value, str):
            limits = state.limits.get(point) or CounterLimits()
            flag = self._guard.check((state.device_id, point), value, stamp, limits)
            if point in state.swapped:
                state.swapped.discard(point)
                flag = "meter_swap"
            if flag:
                quality = flag
                self._log.warning("counter.suspicious", device=state.device_id, point=point, flag=flag, value=value)
        if mono is not None:
            quality = with_flag(quality, "clock_unsynced")
        return Reading(state.device_id, point, value, unit, stamp, quality, kind, state.meter, mono)

    def _swap_if_new(self, state: DeviceState, meter: str) -> tuple[dict[str, str] | None, list[Event]]:
        """A meter id that differs from the last one known is a meter swap:
        one event, and the device's counters start a new series."""
        if not meter or meter == state.meter:
            return None, []
        events: list[Event] = []
        if state.meter:
            events.append({"type": "meter_swap", "device": state.device_id, "old_meter": state.meter,
                           "new_meter": meter, "ts": self._clock.wall_ms()})
            self._guard.forget_device(state.device_id)
            state.swapped = set(state.limits)
            state.undescribed = set(state.resolutions)  # the new meter's series are new series
            self._log.warning("device.meter_swap", device=state.device_id, old_meter=state.meter, new_meter=meter)
        state.meter = meter
        return {state.device_id: meter}, events

    def _record(self, state: DeviceState, error: BusError | None, got_any: bool) -> None:
        """Count the poll; log only when the device's state changes."""
        health = state.health
        health.polls += 1
        if got_any:
            health.last_ok_ms = now_ms()
        if error is not None:
            health.failures += 1
            health.consecutive_failures += 1
            health.last_error = str(error)
        if isinstance(error, MismatchedReply):
            self._count_mismatch(state, error)
        status = "ok" if error is None else ("partial" if got_any else
                                             "rejected" if isinstance(error, MismatchedReply) else "silent")
        if status == health.state:
            return
        previous, health.state = health.state, status
        if status == "rejected":
            pass  # _count_mismatch tells, once per kind and hour: a device flapping between its own
            # answers and foreign ones must not write a line per poll
        elif status == "silent":
            state.silent_since = time.monotonic()
            reader = self._readers.get(state.device_id)
            if reader is not None:
                reader.identity_lost()  # a meter that was away may be another meter when it answers
            if str(error) not in state.told:  # a note (wmbus.no_key, ...) already said it: one line per change
                self._log.warning("device.silent", device=state.device_id, error=str(error))
        elif status == "partial":
            self._log.warning("device.partial", device=state.device_id, error=str(error))
        elif previous == "silent" or state.silent_since is not None:  # also back by way of 'rejected'
            self._log.info("device.back", device=state.device_id,
                           failed_polls=health.consecutive_failures,
                           silent_s=round(time.monotonic() - (state.silent_since or 0), 1))
        elif previous != "rejected":
            self._log.info("device.ok", device=state.device_id, requests=state.device.requests)
        if status == "ok":
            health.consecutive_failures = 0
            state.silent_since = None

    def _count_mismatch(self, state: DeviceState, error: MismatchedReply) -> None:
        """Count a refused reply; log the first of its kind, then once an hour with the repeats."""
        state.health.mismatched_replies += 1
        key = (state.device_id, error.kind)
        now = time.monotonic()
        logged_at, repeats = self._mismatches.get(key, (None, 0))
        if logged_at is not None and now - logged_at < MISMATCH_LOG_EVERY_S:
            self._mismatches[key] = (logged_at, repeats + 1)
            return
        self._mismatches[key] = (now, 0)
        self._log.warning("device.mismatched_reply", device=state.device_id, kind=error.kind, error=str(error),
                          repeats=repeats, mismatched_replies=state.health.mismatched_replies)
