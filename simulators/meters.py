"""Simulated meters: plausible, consistent values served through a profile.

A meter model produces values by point name; the profile (the same file the
agent reads) turns them into registers. So a profile mistake shows up as a
wrong value at the broker, not as two mistakes that cancel out. Counters
integrate the simulated power, so energy only rises and rises at the rate
the power says.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

from drivers.core.protocol import DeviceProfile
from drivers.modbus.codec import encode
from drivers.modbus.profile import ModbusPoint
from drivers.modbus.profile import ModbusProfile as Profile
from simulators.modbus_server import ILLEGAL_DATA_ADDRESS, Unit

Clock = Callable[[], float]


class MeterModel:
    """Values of one simulated device at a time ``t`` (seconds, monotonic)."""

    def values(self, t: float) -> dict[str, float]:
        raise NotImplementedError


class ThreePhaseMeter(MeterModel):
    """An SDM630-like meter on a building's main supply."""

    def __init__(self, seed: int = 0, base_power_w: float = 2500.0, energy_kwh: float = 12345.6) -> None:
        self.seed = seed
        self.base_power_w = base_power_w
        self._energy_import = energy_kwh
        self._energy_export = 7.25
        self._last_t: float | None = None
        self._lock = threading.Lock()

    def _phase_current(self, phase: int, t: float) -> float:
        wobble = math.sin(t / 37.0 + phase * 2.1 + self.seed) * 0.25
        return max(0.0, self.base_power_w / 3 / 230.0 * (1 + wobble))

    def values(self, t: float) -> dict[str, float]:
        volts = [230.0 + 3.0 * math.sin(t / 53.0 + k + self.seed) for k in range(3)]
        amps = [self._phase_current(k, t) for k in range(3)]
        power = sum(v * a for v, a in zip(volts, amps, strict=True))
        with self._lock:
            if self._last_t is not None and t > self._last_t:
                self._energy_import += power * (t - self._last_t) / 3_600_000
            self._last_t = t
            energy = self._energy_import
        return {
            "voltage_l1": volts[0], "voltage_l2": volts[1], "voltage_l3": volts[2],
            "current_l1": amps[0], "current_l2": amps[1], "current_l3": amps[2],
            "power_active_l1": volts[0] * amps[0], "power_active_l2": volts[1] * amps[1],
            "power_active_l3": volts[2] * amps[2],
            "power_active": power,
            "frequency": 50.0 + 0.03 * math.sin(t / 11.0),
            "energy_active_import": energy,
            "energy_active_export": self._energy_export,
        }


class RoomSensor(MeterModel):
    """An XY-MD02-like temperature and humidity sensor."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def values(self, t: float) -> dict[str, float]:
        return {
            "temperature": 21.0 + 1.5 * math.sin(t / 600.0 + self.seed),
            "humidity": 45.0 + 5.0 * math.sin(t / 900.0 + self.seed / 2),
        }


# Where a gauge of each unit sits, so every profile gets plausible values
# that fit its registers (a power factor near 0.95, not 100).
_LEVELS = {"V": 230.0, "A": 5.0, "W": 1500.0, "var": 200.0, "VA": 1600.0, "Hz": 50.0, "/": 0.95,
           "Cel": 21.0, "K": 20.0, "%RH": 45.0, "ppm": 600.0, "m3/h": 1.2, "kW": 1.5}


class GenericModel(MeterModel):
    """Any profile: gauges drift around a level, counters rise steadily."""

    def __init__(self, profile: Profile, seed: int = 0) -> None:
        self.profile = profile
        self.seed = seed
        self._start: float | None = None

    def values(self, t: float) -> dict[str, float]:
        if self._start is None:
            self._start = t
        out = {}
        for index, point in enumerate(self.profile.points):
            if point.kind == "counter":
                out[point.name] = 1000.0 + index + (t - self._start) * 0.001
            else:
                level = _LEVELS.get(point.unit, 100.0)
                out[point.name] = level * (1 + 0.04 * math.sin(t / 30.0 + index + self.seed))
        return out


class Overlay(MeterModel):
    """A physical model's values where the profile names them, generic ones
    elsewhere: any three-phase meter profile (the point names are shared)
    gets phases that add up to the total and energy that integrates it."""

    def __init__(self, physical: MeterModel, generic: MeterModel) -> None:
        self.physical, self.generic = physical, generic

    def values(self, t: float) -> dict[str, float]:
        return {**self.generic.values(t), **self.physical.values(t)}


def modbus_profile(profile: DeviceProfile) -> Profile:
    """A catalogue's profile as the Modbus profile a simulated Modbus device serves."""
    if not isinstance(profile, Profile):
        raise TypeError(f"profile {profile.name} is a {profile.protocol} profile: a Modbus device serves Modbus ones")
    return profile


def model_for(profile: DeviceProfile, seed: int = 0) -> MeterModel:
    profile = modbus_profile(profile)
    if profile.name.startswith("eastron-sdm630"):
        return ThreePhaseMeter(seed)
    if profile.name == "xy-md02":
        return RoomSensor(seed)
    names = {p.name for p in profile.points}
    if {"power_active", "power_active_l1", "energy_active_import"} <= names:
        return Overlay(ThreePhaseMeter(seed), GenericModel(profile, seed))
    return GenericModel(profile, seed)


_RANGE = {"int16": (-32767, 32767), "uint16": (0, 65534), "int32": (-(2**31) + 1, 2**31 - 1),
          "uint32": (0, 2**32 - 1), "int64": (-(2**63) + 1, 2**63 - 1), "uint64": (0, 2**64 - 1)}


def _fitting_exponents(points: tuple[ModbusPoint, ...], values: dict[str, float]) -> dict[tuple[str, int], int]:
    """Per scale register (SunSpec *_SF), the finest exponent from -3 up at
    which every value that uses it fits its register, as a real meter
    chooses its scale factors."""
    users: dict[tuple[str, int], list[ModbusPoint]] = {}
    for point in points:
        if point.scale_source is not None:
            users.setdefault(point.scale_source, []).append(point)
    chosen = {}
    for source, members in users.items():
        chosen[source] = next((e for e in range(-3, 10) if all(
            _fits(p, _quantise(p, values[p.name], e)) for p in members)), 9)
    return chosen


def _fits(point: ModbusPoint, raw: float) -> bool:
    low, high = _RANGE.get(point.type, (float("-inf"), float("inf")))
    return low <= raw <= high


def _quantise(point: ModbusPoint, value: float, exponent: int | None = None) -> int | float:
    """The number a device stores for ``value`` in this point's encoding."""
    scale = float(point.scale) * (10.0 ** exponent if exponent is not None else 1.0)
    if point.type.startswith("float"):
        return (value - float(point.offset)) / scale
    return round((value - float(point.offset)) / scale)


def _served(point: ModbusPoint, value: float, exponent: int | None = None
            ) -> tuple[int | float | str, float | int | str]:
    """(what goes into the registers, the value the device means by it)."""
    if point.type == "string":
        text = f"SIM-{point.name}"[: 2 * (point.length or 1)]
        return text, text
    if point.type == "bits":
        mask = int(abs(value)) & 0xFFFF
        return mask, mask if point.bit is None else (mask >> point.bit) & 1
    return _quantise(point, value, exponent), value


class SimulatedDevice(Unit):
    """Serves a meter model's values through a profile's register map.

    ``served`` keeps the last value of each point as the device put it on
    the wire (after quantisation), which is the ground truth a test compares
    the agent's readings against.
    """

    def __init__(
        self,
        profile: DeviceProfile,
        model: MeterModel | None = None,
        clock: Clock = time.monotonic,
        holes: tuple[tuple[str, int, int], ...] = (),
        serial: int = 12345678,
    ) -> None:
        self.profile = modbus_profile(profile)
        self.model = model or model_for(self.profile)
        self.clock = clock
        self.holes = holes
        self.serial = serial  # served at the profile's identity register; change it to swap the meter
        self.served: dict[str, float | int | str] = {}
        self.exponents: dict[tuple[str, int], int] = {}  # served in each scale register
        self._lock = threading.Lock()

    def registers(self, table: str, start: int, count: int) -> list[int] | int:
        end = start + count
        for hole_table, h_start, h_end in self.holes:
            if hole_table == table and start < h_end and h_start < end:
                return ILLEGAL_DATA_ADDRESS
        identity = self.profile.identity
        if identity is not None and identity.table == table and identity.address == start \
                and identity.count == count:
            return encode(self.serial, identity.type, identity.order, identity.length)
        values = self.model.values(self.clock())
        words = [0] * count

        def place(address: int, encoded: list[int]) -> None:
            for offset, word in enumerate(encoded):
                if 0 <= address + offset - start < count:
                    words[address + offset - start] = word

        with self._lock:
            self.exponents = _fitting_exponents(self.profile.points, values)
            for source, exponent in self.exponents.items():
                if source[0] == table and start <= source[1] < end:
                    place(source[1], encode(exponent, "int16"))
            for point in self.profile.points:
                if point.table != table or point.end <= start or point.address >= end:
                    continue
                scale = self.exponents.get(point.scale_source) if point.scale_source else None
                raw, served = _served(point, values[point.name], scale)
                place(point.address, encode(raw, point.type, point.order, point.length))
                self.served[point.name] = served
        return words
