"""M-Bus buses: the bus worker's schedule and health, one readout per meter.

Kept apart from agent/worker.py so that a gateway without an M-Bus line
never loads the M-Bus decoder (about 1 MB of memory on a Pi).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, replace

from agent.clock import ClockState
from drivers.core.errors import BusError
from agent.health import DeviceHealth, Health
from agent.integrity import CounterGuard, CounterLimits
from agent.worker import BusWorker, PollGroup, Sink, device_offset
from drivers.mbus_link import MbusLink
from drivers.mbus_points import Resolution, point_steps, point_values
from drivers.plan import ReadRequest
from drivers.profile import MbusProfile


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
        stamp = self._clock.wall_ms()
        mono = None if self._clock.trusted else self._clock.mono_ms()
        records = [r for telegram in telegrams for r in telegram.records]
        meters, events = self._swap_if_new(device, telegrams[0].header.identification or "")
        for point, step in point_steps(device.profile, records).items():
            self.resolutions[(device.device_id, point)] = step.resolution()
            if point in device.limits:  # the guard allows one step of slack and knows a BCD register's wrap
                device.limits[point] = replace(
                    device.limits[point], slack=float(step.step or 0),
                    rollover_at=float(step.wraps_at) if step.wraps_at is not None else None)
        readings = [self._reading(device, name, value, unit, kind, stamp, mono)
                    for name, value, unit, kind in point_values(device.profile, records)]
        if readings or meters or events:
            self._sink.put(readings, self._guard.take_changes() or None, meters, events)
        self._record(device, None, got_any=True)  # type: ignore[arg-type]
