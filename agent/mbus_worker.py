"""M-Bus buses: the bus worker's schedule and health, one readout per meter.

Kept apart from agent/worker.py so that a gateway without an M-Bus line
never loads the M-Bus decoder (about 1 MB of memory on a Pi).

A meter's identity is the identification number in its telegram header.
The link (drivers/mbus_link.py) takes only the addressed meter's answer; a
new identification number is then a meter swap, by this rule:

- A meter addressed by its secondary address never swaps silently: the
  address is the identification number, so a telegram carrying another one
  is refused by the link (a failed poll). A replaced meter does not answer
  the selection at all; the technician puts the new number in the config,
  and the first readout under it is the swap.
- At a primary address, a new identification number is a swap once it has
  answered SWAP_CONFIRM_POLLS polls in a row. Until then each such poll is a
  failed one (counted, logged once per hour) and its values are held back;
  if the known meter answers in between, the newcomer was a foreign
  telegram (two meters on one address, a confused gateway) and the held
  values are dropped. Once confirmed, the held polls are published, the
  first reading of each counter flagged ``meter_swap``: a real swap loses
  no reading, a foreign telegram never becomes one.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, replace

from agent.clock import ClockState
from agent.health import DeviceHealth, Health
from agent.integrity import CounterGuard, CounterLimits
from agent.worker import BusWorker, PollGroup, Sink, device_offset
from drivers.core.errors import BusError, MismatchedReply
from drivers.core.readings import Reading
from drivers.mbus_link import MbusLink
from drivers.mbus_points import PointStep, Resolution, point_steps, point_values
from drivers.plan import ReadRequest
from drivers.profile import MbusProfile

SWAP_CONFIRM_POLLS = 3


@dataclass(frozen=True)
class Readout:
    """One readout's values, kept as decoded until they may be published."""

    stamp: int
    mono: int | None
    steps: dict[str, PointStep]
    values: list[tuple[str, float | int | None, str, str]]


@dataclass
class MbusDevicePoller:
    """One M-Bus meter: address (primary or secondary), profile, schedule."""

    device_id: str
    address: int | str
    interval: float
    profile: MbusProfile
    health: DeviceHealth
    max_rates: dict[str, float] = field(default_factory=dict)
    meter: str = ""
    silent_since: float | None = None
    identity_due: float = 0.0
    swapped: set[str] = field(default_factory=set)
    groups: list[PollGroup] = field(default_factory=list)
    limits: dict[str, CounterLimits] = field(default_factory=dict)
    plan: tuple[ReadRequest, ...] = ()
    counter_points: set[str] = field(default_factory=set)
    candidate: str = ""  # a new identification number at a primary address, not yet confirmed
    held: list[Readout] = field(default_factory=list)  # the candidate's readouts, in order

    def __post_init__(self) -> None:
        self.groups = [PollGroup(self.interval, (), device_offset(self.device_id, self.interval))]
        self.limits = {p.name: CounterLimits(max_rate_per_h=self.max_rates.get(p.name))
                       for p in self.profile.points if p.kind == "counter"}
        self.counter_points = set(self.limits)


class MbusBusWorker(BusWorker):
    """The same schedule and health as a Modbus bus; a readout is one
    M-Bus transaction per telegram, and the meter's identification number
    from the telegram header is its identity."""

    def __init__(self, bus_id: str, link: MbusLink, devices: list[MbusDevicePoller], sink: Sink,  # type: ignore[override]
                 health: Health, stop: threading.Event, clock: ClockState | None = None,
                 guard: CounterGuard | None = None,
                 resolutions: dict[tuple[str, str], Resolution] | None = None) -> None:
        super().__init__(bus_id, link, devices, sink, health, stop, clock, guard)  # type: ignore[arg-type]
        self.mbus = link
        self.resolutions = resolutions if resolutions is not None else {}

    def poll(self, device: MbusDevicePoller, group: PollGroup | None = None) -> None:  # type: ignore[override]
        try:
            telegrams = self.mbus.read(device.address)
        except BusError as exc:
            self._record(device, exc, got_any=False)  # type: ignore[arg-type]
            return
        records = [r for telegram in telegrams for r in telegram.records]
        readout = Readout(self._clock.wall_ms(), None if self._clock.trusted else self._clock.mono_ms(),
                          point_steps(device.profile, records), point_values(device.profile, records))
        meter = next((t.header.identification for t in telegrams if t.header.identification), "")
        if isinstance(device.address, int) and device.meter and meter and meter != device.meter:
            self._unconfirmed(device, meter, readout)
            return
        device.candidate, device.held = "", []  # the known meter answered: a newcomer was a foreign telegram
        self._publish(device, meter, [readout])

    def _unconfirmed(self, device: MbusDevicePoller, meter: str, readout: Readout) -> None:
        """Another identification number at a primary address: held back
        until it has answered SWAP_CONFIRM_POLLS polls in a row."""
        if meter != device.candidate:
            device.candidate, device.held = meter, []
        device.held.append(readout)
        if len(device.held) >= SWAP_CONFIRM_POLLS:
            held, device.candidate, device.held = device.held, "", []
            self._publish(device, meter, held)
            return
        self._record(device, MismatchedReply(  # type: ignore[arg-type]
            f"meter {device.address} on {self.mbus.port}: the telegram carries identification {meter}, not "
            f"{device.device_id}'s {device.meter}; a meter swap only once it answers {SWAP_CONFIRM_POLLS} polls "
            f"in a row ({len(device.held)} so far), a foreign telegram otherwise", "meter"), got_any=False)

    def _publish(self, device: MbusDevicePoller, meter: str, readouts: list[Readout]) -> None:
        meters, events = self._swap_if_new(device, meter)
        readings: list[Reading] = []
        for readout in readouts:
            for point, step in readout.steps.items():
                self.resolutions[(device.device_id, point)] = step.resolution()
                if point in device.limits:  # the guard allows one step of slack and knows a BCD register's wrap
                    device.limits[point] = replace(
                        device.limits[point], slack=float(step.step or 0),
                        rollover_at=float(step.wraps_at) if step.wraps_at is not None else None)
            readings.extend(self._reading(device, name, value, unit, kind, readout.stamp, readout.mono)
                            for name, value, unit, kind in readout.values)
        if readings or meters or events:
            self._sink.put(readings, self._guard.take_changes() or None, meters, events)
        self._record(device, None, got_any=True)  # type: ignore[arg-type]
