"""The device record: one meter or sensor of the config, whatever its bus.

Protocol-neutral on purpose: what an address means (a Modbus unit id, an
M-Bus primary or secondary address, a radio meter's identification) is
judged by the protocol of the device's bus (``BusProtocol.check_address``),
because the bus is a reference the record alone cannot follow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from drivers.core.durations import Duration
from drivers.core.fields import Identifier, NonEmpty
from drivers.core.records import Rule


@dataclass(frozen=True, kw_only=True)
class DeviceConfig:
    id: Identifier
    bus: Identifier
    # Modbus: unit id 1..247. M-Bus: primary address 1..250, or the meter's
    # 8-digit identification number (secondary address) as a quoted string.
    address: Annotated[int, Rule(ge=0)] | Annotated[str, Rule(min_length=1)]
    profile: NonEmpty
    # Polled: read every interval. Pushed: the device sends about this often
    # (silent after a few intervals without a word).
    interval: Duration = 60.0
    # Where in its interval a poll sits. `spread`: shifted by a small offset
    # of its own (up to 5 % of the interval, at most 2 s), so the devices of
    # a bus do not all ask at the same instant. `boundary`: on the
    # wall-clock boundary itself (:00, :15, :30, :45 for 15m), before the
    # bus's other polls: a counter read for 15-minute settlement periods
    # (docs/savings.md). Every poll group of the device.
    align: Literal["spread", "boundary"] = "spread"
    # A subset of the profile's points; all of them when absent.
    points: tuple[str, ...] | None = None
    # The most a counter can rise per hour, in its unit (e.g. a 63 A
    # three-phase supply: energy_active_import: 45). A larger rise is flagged.
    max_rate: dict[str, Annotated[float, Rule(gt=0)]] | None = None
    # Points read at their own interval, e.g. {energy_active_import: 15m,
    # power_active: 10s}; the others at the device's interval.
    intervals: dict[str, Duration] | None = None
