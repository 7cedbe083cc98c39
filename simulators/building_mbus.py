"""A heat meter of the simulated building on a wired M-Bus line.

It answers like simulators/mbus_meter.py's meters (two RSP_UD telegrams,
selectable by secondary address), with the building's physics behind the
numbers: energy and volume since the start as the exact counters, power,
flow and temperatures of the current step. What each answer carried (one
telegram per REQ_UD2, so half the points) goes to the ground truth decoded
through drivers/mbus and the device's profile: the exact numbers an honest
agent forwards, and only those it was sent.

Counter faults (reset, swap, rollover) are simulated on Modbus meters only;
the building's config check says so. Offline windows and a bus that is down
silence the meter, as a dead M-Bus slave is silent.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from drivers.mbus.points import point_values
from drivers.mbus.profile import MbusProfile
from drivers.mbus.telegram import decode_telegram
from simulators.mbus_meter import HeatReading, SimulatedMbusMeter

if TYPE_CHECKING:
    from simulators.building import Building
    from simulators.building_config import HeatMeterSpec


class BuildingMbusMeter(SimulatedMbusMeter):
    def __init__(self, building: Building, spec: HeatMeterSpec, profile: MbusProfile, serial: int) -> None:
        super().__init__(primary=spec.address, identification=f"{serial:08d}")
        self.building = building
        self.spec = spec
        self.profile = profile
        self.serial = serial
        self.counters: dict[str, Any] = {}  # no counter faults on this meter (see the module's docstring)
        self.swaps: list[tuple[float, int]] = []
        self.unmodelled: list[str] = []
        energy_start = Fraction(spec.energy_start).limit_denominator(1000)
        self._due_date_wh = math.floor(energy_start * 1000)  # the register at the start, for a due date
        self._made_at: tuple[int, float] | None = None  # (wall ms, simulated s) of the telegrams last made

    def present(self) -> bool:
        t = self.building.now()
        return not self.building.is_offline(self.spec.id, self.spec.bus, t)

    def reading_at(self, t: float) -> HeatReading:
        """The integers on the wire at simulated time ``t`` (the building lock is held)."""
        values = self.building.physics.values(self.spec.id)
        energy_kwh = Fraction(self.spec.energy_start).limit_denominator(1000) + Fraction(values["energy_heat"])
        volume_m3 = Fraction(self.spec.volume_start).limit_denominator(1000) + Fraction(values["volume"])
        supply, ret = float(values["temperature_supply"]), float(values["temperature_return"])
        return HeatReading(
            energy_wh=math.floor(energy_kwh * 1000),  # a meter shows completed units
            volume_l=math.floor(volume_m3 * 1000),
            power_w=round(float(values["power_heat"])),
            flow_lh=round(float(values["flow"]) * 1000),
            supply_dc=round(supply * 10),
            return_dc=round(ret * 10),
            difference_ck=round((supply - ret) * 100),
            due_date_energy_wh=self._due_date_wh,
        )

    def served_values(self, t: float) -> dict[str, int | float]:
        """The decoded value of every point at simulated time ``t`` (the building lock is held)."""
        return self._decoded(self.heat_telegrams(self.primary, self.reading_at(t)))

    def _decoded(self, telegrams: list[bytes]) -> dict[str, int | float]:
        records = [r for frame in telegrams for r in decode_telegram(frame).records]
        return {name: value for name, value, _, _ in point_values(self.profile, records) if value is not None}

    def _telegrams(self, address: int) -> list[bytes]:
        building = self.building
        with building.lock:
            wall, t = building.answering()
            telegrams = self.heat_telegrams(address, self.reading_at(t))
            self._made_at = (int(wall * 1000), t)
        return telegrams

    def sent(self, telegram: bytes) -> None:
        """Into the ground truth: the points of the telegram that was sent, not of both."""
        truth, made_at = self.building.truth, self._made_at
        if truth is not None and made_at is not None:
            truth.served(made_at[0], made_at[1], self.spec.id, self._decoded([telegram]))
