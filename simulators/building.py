"""`retrofit-sim building`: a whole simulated building from one YAML file.

Heat meters, electricity meters and room sensors on several buses (Modbus
TCP servers, virtual RS-485 lines and M-Bus lines; the file's model is
simulators/building_config.py), all driven by one physics model
(simulators/physics.py) in simulated time that runs ``acceleration`` times
faster than the wall clock: a demo shows days in minutes while the agent
stamps its readings with the real clock. Faults come on a schedule (in
simulated time) or at random with a seed. Everything each device served is
written to a ground-truth file, and the building's true figures (degree
days, energy per day, the retrofit and its exact effect) to a metadata file
the simulated platform compares its measurements with.

In-process use (the demo, tests):

    handle = run_building(Path("configs/sim-building.yaml"), stop_event)
    handle.meta_path, handle.truth_path, handle.endpoints
    handle.agent_config(broker_port=18830, buffer=Path(".sim/buffer.db"))
    handle.stop()
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import yaml

from drivers.core.errors import RetrofitError
from drivers.core.protocol import DeviceProfile
from drivers.mbus.profile import MbusProfile
from drivers.modbus.codec import encode
from drivers.modbus.profile import ModbusPoint
from drivers.modbus.profile import ModbusProfile as Profile
from drivers.modbus.values import scaled_by_exponent
from drivers.profile import load_catalogue
from simulators import physics
from simulators.building_config import (
    BuildingConfig,
    DeviceSpec,
    ElectricityMeterSpec,
    HeatMeterSpec,
    MbusBusSpec,
    PvInverterSpec,
    RandomFaults,
    RtuBusSpec,
    ScheduledFault,
    TcpBusSpec,
    WmbusBusSpec,
    iso,
    load_building_config,
    utc_epoch,
)
from simulators.building_mbus import BuildingMbusMeter
from simulators.building_radio import ApartmentRadio, agent_parts
from simulators.groundtruth import GroundTruthWriter
from simulators.mbus_meter import MbusLineServer
from simulators.meters import modbus_profile
from simulators.modbus_server import FaultPlan, ModbusRtuServer, ModbusTcpServer, Unit
from simulators.paced_clock import ReaderPacedClock
from simulators.pty import PtyPair

Clock = Callable[[], float]


def _nothing() -> None:
    pass


SCHEMA = "retrofit-sim/building/1"

# ---------------------------------------------------------------- physics of the whole building

@dataclass
class DayTruth:
    start: float
    hdd: float = 0.0
    outdoor_sum: float = 0.0
    steps: int = 0
    energy_j: dict[str, int] = field(default_factory=dict)
    space_j: dict[str, int] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"date": iso(self.start)[:10], "start": self.start, "hdd": round(self.hdd, 6),
                "outdoor_mean": round(self.outdoor_sum / max(1, self.steps), 3),
                "energy_kwh": {d: round(j / physics.J_PER_KWH, 6) for d, j in self.energy_j.items()},
                "space_heat_kwh": {d: round(j / physics.J_PER_KWH, 6) for d, j in self.space_j.items()}}


@dataclass
class LocalDayTruth:
    """One day of the building's own calendar (midnight to midnight where it
    stands: 23 or 25 hours at a clock change), as an energy office counts.

    ``counterfactual_j`` is what each heat meter would have counted on the
    same day without the retrofit (same weather, same occupants): the true
    avoided energy of the day is counterfactual minus actual, exactly.
    """

    date: str
    start: float
    end: float
    outdoor_sum: float = 0.0
    steps: int = 0
    energy_j: dict[str, int] = field(default_factory=dict)
    counterfactual_j: dict[str, int] = field(default_factory=dict)
    export_j: dict[str, int] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"date": self.date, "start": self.start, "end": self.end,
                "outdoor_mean": round(self.outdoor_sum / max(1, self.steps), 4),
                "energy_kwh": {d: round(j / physics.J_PER_KWH, 6) for d, j in self.energy_j.items()},
                "counterfactual_kwh": {d: round(j / physics.J_PER_KWH, 6) for d, j in self.counterfactual_j.items()},
                "export_kwh": {d: round(j / physics.J_PER_KWH, 6) for d, j in self.export_j.items()}}


class LocalCalendar:
    """Local midnights of a time zone, DST-correct (zoneinfo)."""

    def __init__(self, timezone: str) -> None:
        self.zone = ZoneInfo(timezone)

    def day_of(self, t: float) -> tuple[str, float, float]:
        """(ISO date, start, end) of the local day containing UTC epoch ``t``."""
        local = dt.datetime.fromtimestamp(t, self.zone)
        start = dt.datetime(local.year, local.month, local.day, tzinfo=self.zone)
        end = start.date() + dt.timedelta(days=1)
        end_dt = dt.datetime(end.year, end.month, end.day, tzinfo=self.zone)
        return start.date().isoformat(), start.timestamp(), end_dt.timestamp()


class BuildingPhysics:
    """The building's state in simulated time, advanced in fixed steps.

    A pure function of (config, simulated time): the gauges served at time
    ``t`` are those of the step containing ``t``; the counters are the exact
    integral of the steps before it.
    """

    def __init__(self, config: BuildingConfig) -> None:
        spec = config.building
        self.config = config
        self.seed = spec.seed
        self.dt = int(spec.step)
        self.start = utc_epoch(spec.start)
        self.base_c = spec.base_temperature
        self.weather = physics.Weather(spec.seed, spec.weather.mean, spec.weather.daily_sd,
                                       spec.weather.diurnal_amplitude, spec.weather.trend_per_day, self.start,
                                       spec.weather.annual_amplitude, spec.weather.coldest_day)
        self.retrofit = (physics.Retrofit(utc_epoch(spec.retrofit.at), 1 - spec.retrofit.heat_loss_reduction)
                         if spec.retrofit else None)
        self.heat: dict[str, tuple[physics.HeatZone, physics.HeatState]] = {}
        self.elec: dict[str, tuple[physics.ElectricityUse, physics.ElectricityState]] = {}
        self.rooms: dict[str, tuple[physics.Room, physics.RoomState]] = {}
        self.pv: dict[str, tuple[physics.PvArray, physics.PvState]] = {}
        self.scatter_sd: dict[str, float] = {}  # heat meters: the day-to-day scatter of their demand
        self.pv_of: dict[str, str] = {}  # main meter -> the PV inverter behind it
        self.counterfactual_w: dict[str, int] = {}  # heat meters: the power without the retrofit, this step
        self._stream = {d.id: index + 1 for index, d in enumerate(config.devices)}
        for device in config.devices:
            if isinstance(device, HeatMeterSpec):
                zone = physics.HeatZone(device.heat_loss, device.dhw_kwh_per_day, self.base_c)
                self.heat[device.id] = (zone, physics.HeatState())
                self.scatter_sd[device.id] = device.daily_sd
            elif isinstance(device, ElectricityMeterSpec):
                self.elec[device.id] = (physics.ElectricityUse(device.annual_kwh), physics.ElectricityState())
                if device.pv is not None:
                    self.pv_of[device.id] = device.pv
            elif isinstance(device, PvInverterSpec):
                self.pv[device.id] = (physics.PvArray(device.peak, device.latitude, device.longitude),
                                      physics.PvState())
            else:
                room = physics.Room(device.setpoint, device.night_setback, device.time_constant)
                self.rooms[device.id] = (room, physics.RoomState(device.setpoint - 1.0))
        self.t = self.start
        self.step_index = 0
        self.outdoor_c = 0.0
        self.days: list[DayTruth] = []
        midnight = math.floor(self.start / physics.DAY_S) * physics.DAY_S
        self._day = DayTruth(midnight) if midnight == self.start else None
        self.calendar = LocalCalendar(spec.timezone)
        self.local_days: list[LocalDayTruth] = []
        date, day_start, day_end = self.calendar.day_of(self.start)
        # Only whole local days are true figures: the first starts at the first local midnight.
        self._local = LocalDayTruth(date, day_start, day_end) if day_start == self.start else None
        self._next_local = day_end
        self._marks: dict[float, dict[str, Fraction]] = {}
        self._wanted_marks: set[float] = set()
        self._gauges()

    def factor(self, t: float) -> float:
        return self.retrofit.factor if self.retrofit and t >= self.retrofit.at else 1.0

    def heat_loss(self, device_id: str, t: float) -> float:
        return self.heat[device_id][0].heat_loss_w_per_k * self.factor(t)

    def snap(self, t: float) -> float:
        """The first step boundary at or after ``t``."""
        return self.start + math.ceil((t - self.start) / self.dt) * self.dt

    def want_mark(self, t: float) -> None:
        """Remember the counters at step boundary ``t`` when the simulation gets there."""
        self._wanted_marks.add(t)
        if t == self.t:
            self._marks[t] = self.counters()

    def mark(self, t: float) -> dict[str, Fraction]:
        return self._marks[t]

    def _gauges(self) -> None:
        t, k = self.t, self.step_index
        hour, weekend = physics.hour_and_weekend(t)
        self.outdoor_c = self.weather.outdoor(t)
        factor = self.factor(t)
        day = math.floor(t / physics.DAY_S)
        for device_id, (zone, state) in self.heat.items():
            stream = self._stream[device_id]
            noise = physics.unit_noise(self.seed, stream, k)
            scatter = physics.day_factor(self.seed, stream, day, self.scatter_sd[device_id])
            physics.heat_step(zone, zone.heat_loss_w_per_k * factor, self.outdoor_c, hour, weekend, noise, state,
                              scatter)
            if factor != 1.0:  # the same step without the retrofit: only the space heating differs
                space = round(zone.heat_loss_w_per_k * scatter * max(0.0, zone.base_temperature_c - self.outdoor_c))
                self.counterfactual_w[device_id] = state.power_w - state.space_w + space
            else:
                self.counterfactual_w[device_id] = state.power_w
        for device_id, (array, pstate) in self.pv.items():
            sky = physics.clearness(self.seed, self._stream[device_id], day)
            physics.pv_step(array, t, sky, pstate)
        for device_id, (use, estate) in self.elec.items():
            noise = physics.unit_noise(self.seed, self._stream[device_id], k)
            physics.electricity_step(use, hour, weekend, noise, k, estate)
            pv_id = self.pv_of.get(device_id)
            if pv_id is not None:  # the main meter sees the load less the PV: negative = export
                estate.power_w -= self.pv[pv_id][1].power_w
        for device_id, (room, rstate) in self.rooms.items():
            noise = physics.unit_noise(self.seed, self._stream[device_id], k)
            physics.room_step(room, self.outdoor_c, self.base_c, factor, hour, weekend, noise, self.dt, rstate)

    def advance_to(self, t: float) -> None:
        dt_s = self.dt
        while self.t + dt_s <= t:
            day, local = self._day, self._local
            if day is not None:
                day.hdd += max(0.0, self.base_c - self.outdoor_c) * dt_s / physics.DAY_S
                day.outdoor_sum += self.outdoor_c
                day.steps += 1
            if local is not None:
                local.outdoor_sum += self.outdoor_c
                local.steps += 1
            for device_id, (_, state) in self.heat.items():
                state.energy_j += state.power_w * dt_s
                state.space_j += state.space_w * dt_s
                state.volume_lsph += state.flow_lph * dt_s
                if day is not None:
                    day.energy_j[device_id] = day.energy_j.get(device_id, 0) + state.power_w * dt_s
                    day.space_j[device_id] = day.space_j.get(device_id, 0) + state.space_w * dt_s
                if local is not None:
                    local.energy_j[device_id] = local.energy_j.get(device_id, 0) + state.power_w * dt_s
                    local.counterfactual_j[device_id] = (local.counterfactual_j.get(device_id, 0)
                                                         + self.counterfactual_w[device_id] * dt_s)
            for device_id, (_, pstate) in self.pv.items():
                pstate.energy_j += pstate.power_w * dt_s
                for index, power in enumerate(pstate.dc_power_w):
                    pstate.dc_energy_j[index] += power * dt_s
                if local is not None:
                    local.energy_j[device_id] = local.energy_j.get(device_id, 0) + pstate.power_w * dt_s
            for device_id, (_, estate) in self.elec.items():
                imported, exported = max(0, estate.power_w) * dt_s, max(0, -estate.power_w) * dt_s
                estate.energy_j += imported
                estate.export_j += exported
                if day is not None:
                    day.energy_j[device_id] = day.energy_j.get(device_id, 0) + imported
                if local is not None:
                    local.energy_j[device_id] = local.energy_j.get(device_id, 0) + imported
                    if device_id in self.pv_of:
                        local.export_j[device_id] = local.export_j.get(device_id, 0) + exported
            self.t += dt_s
            self.step_index += 1
            if self.t >= self._next_local:
                if local is not None:
                    self.local_days.append(local)
                date, day_start, day_end = self.calendar.day_of(self.t)
                self._local, self._next_local = LocalDayTruth(date, day_start, day_end), day_end
            if self.t % physics.DAY_S == 0:
                if day is not None:
                    self.days.append(day)
                self._day = DayTruth(self.t)
            if self.t in self._wanted_marks:
                self._marks[self.t] = self.counters()
            self._gauges()

    def counters(self) -> dict[str, Fraction]:
        """Every counter's exact value (kWh, m3) since the start, keyed device/point."""
        out: dict[str, Fraction] = {}
        for device_id, (_, state) in self.heat.items():
            out[f"{device_id}/energy_heat"] = Fraction(state.energy_j, physics.J_PER_KWH)
            out[f"{device_id}/volume"] = Fraction(state.volume_lsph, 3_600_000)
        for device_id, (_, estate) in self.elec.items():
            out[f"{device_id}/energy_active_import"] = Fraction(estate.energy_j, physics.J_PER_KWH)
            out[f"{device_id}/energy_active_export"] = Fraction(estate.export_j, physics.J_PER_KWH)
        for device_id, (_, pstate) in self.pv.items():
            out[f"{device_id}/energy_produced"] = Fraction(pstate.energy_j, physics.J_PER_KWH)
            for index, joules in enumerate(pstate.dc_energy_j):
                out[f"{device_id}/mppt{index + 1}_energy"] = Fraction(joules, physics.J_PER_KWH)
        return out

    def values(self, device_id: str) -> dict[str, float | Fraction]:
        """The physical quantities of one device now (counters since the start)."""
        if device_id in self.heat:
            _, s = self.heat[device_id]
            return {"energy_heat": Fraction(s.energy_j, physics.J_PER_KWH),
                    "volume": Fraction(s.volume_lsph, 3_600_000),
                    "power_heat": s.power_w, "flow": s.flow_lph / 1000,
                    "temperature_supply": s.supply_c, "temperature_return": s.return_c,
                    "temperature_difference": s.supply_c - s.return_c}
        if device_id in self.elec:
            _, e = self.elec[device_id]
            currents = [abs(e.power_w) / 3 / v for v in e.voltages]
            return {"voltage_l1": e.voltages[0], "voltage_l2": e.voltages[1], "voltage_l3": e.voltages[2],
                    "current_l1": currents[0], "current_l2": currents[1], "current_l3": currents[2],
                    "current_total": sum(currents), "power_active": e.power_w, "frequency": e.frequency,
                    "energy_active_import": Fraction(e.energy_j, physics.J_PER_KWH),
                    "energy_active_export": Fraction(e.export_j, physics.J_PER_KWH),
                    "sunspec_model_id": 203}  # served where the profile is a SunSpec meter's
        if device_id in self.pv:
            array, pv = self.pv[device_id]
            out: dict[str, float | Fraction] = {
                "energy_produced": Fraction(pv.energy_j, physics.J_PER_KWH), "power_active": pv.power_w,
                "current_total": pv.power_w / 3 / 230.0, "voltage_l1": 230.0, "voltage_l2": 230.0,
                "voltage_l3": 230.0, "frequency": 50.0, "power_apparent": pv.power_w, "power_reactive": 0,
                "power_factor": 1.0 if pv.power_w else 0.0, "dc_power": sum(pv.dc_power_w),
                "dc_voltage": 620.0 if pv.power_w else 0.0,
                "dc_current": sum(pv.dc_power_w) / 620.0 if pv.power_w else 0.0,
                "temperature_cabinet": self.outdoor_c + 8.0 + 25.0 * pv.power_w / array.peak_w,
                "operating_state": 4 if pv.power_w else 2,  # SunSpec St: MPPT, or SLEEPING at night
                "rated_power": array.peak_w, "rated_apparent_power": array.peak_w,
                "rated_current": array.peak_w / 3 / 230.0, "der_type": 4,
                "sunspec_model_id": 103, "nameplate_model_id": 120, "mppt_model_id": 160,
                "mppt_modules": len(pv.dc_power_w)}
            for index, (power, joules) in enumerate(zip(pv.dc_power_w, pv.dc_energy_j, strict=True)):
                out[f"mppt{index + 1}_dc_power"] = power
                out[f"mppt{index + 1}_dc_voltage"] = 620.0 if power else 0.0
                out[f"mppt{index + 1}_dc_current"] = power / 620.0
                out[f"mppt{index + 1}_energy"] = Fraction(joules, physics.J_PER_KWH)
            return out
        _, r = self.rooms[device_id]
        return {"temperature": r.temperature_c, "humidity": r.humidity}


# ---------------------------------------------------------------- counters as a meter shows them

_UINT_BITS = {"uint16": 16, "uint32": 32, "uint64": 64}
_INT_BITS = {"int16": 16, "int32": 32, "int64": 64}


@dataclass
class CounterRegister:
    """What a meter's counter register shows: a start value plus the energy
    since the segment began, wrapping at the register width. A reset or a
    meter swap starts a new segment at 0."""

    point: ModbusPoint
    # (from simulated t, physical value at that t, register value at that t)
    segments: list[tuple[float, Fraction, Fraction]]

    def value(self, t: float, physical: Fraction) -> Fraction:
        _, base, shown = self.segments[0]
        for since, segment_base, segment_shown in self.segments:
            if since <= t:
                base, shown = segment_base, segment_shown
        return shown + physical - base


def _fits(point: ModbusPoint, value: float, exponent: int) -> bool:
    """Whether ``value`` fits the point's integer register at this exponent."""
    bits = _UINT_BITS.get(point.type) or _INT_BITS.get(point.type)
    if bits is None:
        return True
    raw = round((value - float(point.offset)) / (float(point.scale) * 10.0 ** exponent))
    if point.type in _UINT_BITS:
        return 0 <= raw < (1 << bits) - 1  # the top value is "not implemented"
    return -(1 << (bits - 1)) < raw < (1 << (bits - 1))


def _raw(point: ModbusPoint, value: float | Fraction, counter: bool, exponent: int | None = None) -> int | float:
    """The number a device stores for ``value``: counters truncate (a meter
    shows completed units), gauges round; integers wrap or clip to the type;
    a SunSpec-style exponent divides the value first."""
    scale = Fraction(point.scale) * (Fraction(10) ** exponent if exponent is not None else 1)
    if point.type.startswith("float"):
        return (float(value) - float(point.offset)) / float(scale)
    scaled = (Fraction(value) - Fraction(point.offset)) / scale
    raw = math.floor(scaled) if counter else round(scaled)
    bits = _UINT_BITS.get(point.type)
    if bits:
        return raw % (1 << bits) if counter else min(max(raw, 0), (1 << bits) - 1)
    bits = _INT_BITS[point.type]
    return min(max(raw, -(1 << (bits - 1))), (1 << (bits - 1)) - 1)


class BuildingDevice(Unit):
    """One device of the building served through its profile's register map."""

    def __init__(self, building: Building, spec: DeviceSpec, profile: Profile) -> None:
        self.building = building
        self.spec = spec
        self.profile = profile
        self.decoders = {p.name: p.decoder() for p in profile.points}
        self.serial = spec.serial if spec.serial is not None else _stable_serial(building.seed, spec.id)
        start_values = {"energy_heat": getattr(spec, "energy_start", 0.0), "volume": getattr(spec, "volume_start", 0.0),
                        "energy_active_import": getattr(spec, "energy_start", 0.0),
                        "energy_active_export": getattr(spec, "export_start", 0.0),
                        "energy_produced": getattr(spec, "energy_start", 0.0)}
        # SunSpec-style scale registers (*_SF): the exponent each serves. A
        # counter's is fixed (its register keeps counting in one unit, as an
        # acc32 in Wh does); a gauge's is the finest at which its values fit,
        # chosen at every answer as a real device does.
        self.counter_exponents = {p.scale_source: 0 for p in profile.points
                                  if p.kind == "counter" and p.scale_source is not None}
        self.counters = {
            p.name: CounterRegister(p, [(building.physics.start, Fraction(0),
                                         Fraction(start_values.get(p.name, 0.0)).limit_denominator(1000))])
            for p in profile.points if p.kind == "counter"
        }
        self.swaps: list[tuple[float, int]] = []  # (from simulated t, new serial)
        self.unmodelled = sorted(set(self.decoders) - set(building.physics.values(spec.id)) - {"serial_number"}
                                 - set(self.counters))

    def served_values(self, t: float) -> dict[str, int | float]:
        """The decoded value of every point at simulated time ``t`` (the
        building lock is held): what an honest agent will forward."""
        physical = self.building.physics.values(self.spec.id)
        exponents = self._exponents(physical)
        out: dict[str, int | float] = {}
        for point in self.profile.points:
            exponent = exponents.get(point.scale_source) if point.scale_source else None
            raw = self._raw_at(point, t, physical, exponent)
            out[point.name] = self._decoded(point, encode(raw, point.type, point.order, point.length), exponent)
        return out

    def _decoded(self, point: ModbusPoint, encoded: list[int], exponent: int | None) -> int | float:
        value = self.decoders[point.name](encoded)
        if exponent is None:
            return value  # type: ignore[return-value]
        return scaled_by_exponent(value, exponent)  # type: ignore[arg-type,return-value]

    def _exponents(self, physical: Mapping[str, float | Fraction]) -> dict[tuple[Any, int], int]:
        """The exponent each scale register serves now (see __init__)."""
        if not self.counter_exponents and all(p.scale_source is None for p in self.profile.points):
            return {}
        users: dict[tuple[Any, int], list[ModbusPoint]] = {}
        for point in self.profile.points:
            if point.scale_source is not None and point.scale_source not in self.counter_exponents:
                users.setdefault(point.scale_source, []).append(point)
        chosen: dict[tuple[Any, int], int] = dict(self.counter_exponents)
        for source, members in users.items():
            chosen[source] = next((e for e in range(-3, 10) if all(
                _fits(p, float(physical.get(p.name, 0.0)), e) for p in members)), 9)
        return chosen

    def _raw_at(self, point: ModbusPoint, t: float, physical: Mapping[str, float | Fraction],
                exponent: int | None = None) -> int | float | str:
        counter = self.counters.get(point.name)
        if counter is not None:
            return _raw(point, counter.value(t, Fraction(physical.get(point.name, 0))), True, exponent)
        if point.type == "string":
            return f"SIM-{self.spec.id}"[: 2 * (point.length or 1)]
        if point.name == "serial_number":
            return _raw(point, Fraction(self._serial_at(t)), False)
        return _raw(point, physical.get(point.name, 0.0), False, exponent)

    def _serial_at(self, t: float) -> int:
        serial = self.serial
        for since, new in self.swaps:
            if since <= t:
                serial = new
        return serial

    def registers(self, table: str, start: int, count: int) -> list[int] | int:
        end = start + count
        words = [0] * count

        def place(address: int, encoded: list[int]) -> None:
            for offset, word in enumerate(encoded):
                if 0 <= address + offset - start < count:
                    words[address + offset - start] = word

        with self.building.lock:
            wall, t = self.building.answering()
            physical = self.building.physics.values(self.spec.id)
            exponents = self._exponents(physical)
            for (sf_table, sf_address), sf_exponent in exponents.items():
                if sf_table == table and start <= sf_address < end:
                    place(sf_address, encode(sf_exponent, "int16"))
            identity = self.profile.identity
            if identity is not None and identity.table == table and identity.type == "string" \
                    and start < identity.address + identity.count and identity.address < end:
                place(identity.address, encode(str(self._serial_at(t)), "string", identity.order, identity.length))
            served: dict[str, int | float] = {}
            for point in self.profile.points:
                if point.table != table or point.end <= start or point.address >= end:
                    continue
                exponent = exponents.get(point.scale_source) if point.scale_source else None
                raw = self._raw_at(point, t, physical, exponent)
                encoded = encode(raw, point.type, point.order, point.length)
                place(point.address, encoded)
                if point.address >= start and point.end <= end and point.type != "string":
                    served[point.name] = self._decoded(point, encoded, exponent)
            if served and self.building.truth is not None:
                self.building.truth.served(int(wall * 1000), t, self.spec.id, served)
        return words


def _stable_serial(seed: int, device_id: str) -> int:
    noise = physics.unit_noise(seed, sum(device_id.encode()) * 131 + len(device_id), 7)
    return 10_000_000 + int((noise + 0.5) * 89_999_999)


# ---------------------------------------------------------------- the building

@dataclass(frozen=True)
class Window:
    start: float
    end: float
    what: str  # device or bus id

    def covers(self, t: float) -> bool:
        return self.start <= t < self.end


class Building:
    """Physics + devices + faults + ground truth; the servers live in BuildingHandle."""

    def __init__(self, config: BuildingConfig, clock: Clock = time.time, profile_dirs: tuple[Path, ...] = ()) -> None:
        self.config = config
        self.seed = config.building.seed
        self.acceleration = config.building.acceleration
        self.clock = clock
        # A clock that waits for the building's reader hears of every request (simulators/paced_clock.py).
        self._requested: Callable[[], None] = clock.request if isinstance(clock, ReaderPacedClock) else _nothing
        self.lock = threading.RLock()
        self.physics = BuildingPhysics(config)
        self.wall_start = clock()
        self.truth: GroundTruthWriter | None = None
        catalogue = load_catalogue(profile_dirs)
        mbus_buses = {b.id for b in config.buses if isinstance(b, MbusBusSpec)}
        self.devices: dict[str, BuildingDevice | BuildingMbusMeter] = {}
        for spec in config.devices:
            profile = catalogue.get(spec.profile)
            wanted = "mbus" if spec.bus in mbus_buses else "modbus"
            if profile.protocol != wanted:
                raise RetrofitError(f"device {spec.id}: profile {profile.name} is {profile.protocol}, but bus "
                                    f"{spec.bus} is {'an M-Bus line' if wanted == 'mbus' else 'Modbus'}")
            if isinstance(profile, MbusProfile):
                self._check_profile(spec, profile)
                assert isinstance(spec, HeatMeterSpec)  # _cross_check allows nothing else on M-Bus
                serial = spec.serial if spec.serial is not None else _stable_serial(self.seed, spec.id)
                self.devices[spec.id] = BuildingMbusMeter(self, spec, profile, serial)
            else:
                modbus = modbus_profile(profile)
                self._check_profile(spec, modbus)
                self.devices[spec.id] = BuildingDevice(self, spec, modbus)
        self.offline: list[Window] = []
        self.bus_down: list[Window] = []
        self.noisy: list[tuple[Window, dict[str, float]]] = []
        self.events: list[dict[str, Any]] = []
        self._pending = 0  # counter segments waiting for the physical value at their fault
        self._schedule_faults()

    @staticmethod
    def _check_profile(spec: DeviceSpec, profile: DeviceProfile) -> None:
        names = {p.name for p in profile.points}
        needed = {"heat": {"energy_heat"}, "electricity": {"energy_active_import"}, "room": {"temperature"},
                  "pv": {"energy_produced"}}
        missing = needed[spec.model] - names
        if missing:
            raise RetrofitError(f"device {spec.id}: profile {profile.name} has no point(s) {sorted(missing)} "
                                f"that a {spec.model} model serves")

    # simulated time <-> wall time
    def sim_time(self, wall: float) -> float:
        return self.physics.start + (wall - self.wall_start) * self.acceleration

    def wall_time(self, sim: float) -> float:
        return self.wall_start + (sim - self.physics.start) / self.acceleration

    def answering(self) -> tuple[float, float]:
        """The wall and simulated time of an answer to a reader, simulated up to
        there (the lock is held)."""
        self._requested()
        wall = self.clock()
        t = self.sim_time(wall)
        self.advance(t)
        return wall, t

    def restart_clock(self) -> None:
        """Simulated time starts now (called when the servers are up)."""
        self.wall_start = self.clock()

    def _at(self, fault: ScheduledFault) -> float:
        at = fault.at if isinstance(fault.at, float | int) else None
        moment = self.physics.start + at if at is not None else utc_epoch(fault.at)  # type: ignore[arg-type]
        return self.physics.snap(moment)

    def _schedule_faults(self) -> None:
        for fault in self.config.faults:
            at = self._at(fault)
            end = at + (fault.for_ or 0)
            entry: dict[str, Any] = {"fault": fault.fault, "sim": at, "sim_iso": iso(at)}
            if fault.fault == "offline":
                self.offline.append(Window(at, end, fault.device or ""))
            elif fault.fault == "bus_down":
                self.bus_down.append(Window(at, end, fault.bus or ""))
            elif fault.fault == "noisy":
                rates = {str(k): v for k, v in (fault.rates or {}).items()}
                self.noisy.append((Window(at, end, fault.bus or ""), rates))
            else:
                self._counter_fault(fault, at, entry)
            if fault.for_:
                entry.update(until=end, until_iso=iso(end))
            entry.update({k: v for k, v in (("device", fault.device), ("bus", fault.bus), ("point", fault.point)) if v})
            self.events.append(entry)
        self.events.sort(key=lambda e: e["sim"])

    def _counter_fault(self, fault: ScheduledFault, at: float, entry: dict[str, Any]) -> None:
        device = self.devices[fault.device or ""]
        points = [fault.point] if fault.point else list(device.counters)
        for name in points:
            if name not in device.counters:
                raise RetrofitError(f"fault {fault.fault} at {iso(at)}: device {device.spec.id} "
                                    f"has no counter {name!r}; "
                                    f"counters: {', '.join(device.counters)}")
        if fault.fault == "rollover":
            point = device.counters[points[0]].point
            bits = _UINT_BITS.get(point.type)
            if bits is None:
                raise RetrofitError(f"fault rollover: {device.spec.id}.{point.name} is {point.type}; only an "
                                    "unsigned integer register wraps")
            # Start the counter just so far below the wrap that it wraps at ``at``.
            probe = BuildingPhysics(self.config)
            probe.advance_to(at)
            energy_at = probe.counters()[f"{device.spec.id}/{point.name}"]
            width = Fraction(1 << bits) * Fraction(point.scale)
            register = device.counters[point.name]
            register.segments[0] = (register.segments[0][0], Fraction(0), width - energy_at)
            entry["wraps_at"] = float(width)
            return
        self.physics.want_mark(at)
        key = fault.device or ""
        if fault.fault == "meter_swap":
            old_serial = device.swaps[-1][1] if device.swaps else device.serial
            new_serial = _stable_serial(self.seed + len(device.swaps) + 1, key)
            device.swaps.append((at, new_serial))
            entry.update(old_serial=old_serial, new_serial=new_serial)
        for name in points:
            register = device.counters[name]
            register.segments.append((at, _Pending(f"{key}/{name}"), Fraction(0)))  # type: ignore[arg-type]
            register.segments.sort(key=lambda segment: segment[0])
            self._pending += 1

    def advance(self, t: float) -> None:
        """Simulate up to ``t`` (the lock is held). Counter segments that start
        at a fault take the physical value there once the simulation got there."""
        self.physics.advance_to(t)
        if not self._pending:
            return
        for device in self.devices.values():
            for register in device.counters.values():
                for index, (start, base, shown) in enumerate(register.segments):
                    if isinstance(base, _Pending) and start <= self.physics.t:
                        register.segments[index] = (start, self.physics.mark(start)[base.key], shown)
                        self._pending -= 1

    def is_offline(self, device_id: str, bus_id: str, t: float) -> bool:
        return any(w.what == device_id and w.covers(t) for w in self.offline) or self.is_bus_down(bus_id, t)

    def is_bus_down(self, bus_id: str, t: float) -> bool:
        return any(w.what == bus_id and w.covers(t) for w in self.bus_down)

    def now(self) -> float:
        with self.lock:
            t = self.sim_time(self.clock())
            self.advance(t)
            return t

    def meta(self) -> dict[str, Any]:
        """The building's true figures, for the platform to compare with."""
        spec = self.config.building
        ph = self.physics
        with self.lock:
            days = [d.as_json() for d in ph.days]
            local_days = [d.as_json() for d in ph.local_days]
            t = ph.t
        weather = spec.weather
        return {
            "schema": SCHEMA, "name": spec.name, "seed": spec.seed, "acceleration": spec.acceleration,
            "step_s": ph.dt, "base_temperature": ph.base_c, "timezone": spec.timezone,
            # The weather's parameters: a "weather service" for this building
            # (simulators/verify.py) recomputes any day's mean outdoor temperature.
            "weather": {"seed": spec.seed, "mean": weather.mean, "daily_sd": weather.daily_sd,
                        "diurnal_amplitude": weather.diurnal_amplitude, "trend_per_day": weather.trend_per_day,
                        "annual_amplitude": weather.annual_amplitude, "coldest_day": weather.coldest_day,
                        "start": ph.start},
            "sim_start": ph.start, "sim_start_iso": iso(ph.start), "wall_start_ms": int(self.wall_start * 1000),
            "sim_now": t, "sim_now_iso": iso(t),
            "retrofit": ({"at": ph.retrofit.at, "at_iso": iso(ph.retrofit.at), "heat_loss_factor": ph.retrofit.factor}
                         if ph.retrofit else None),
            "devices": {
                d.spec.id: {"model": d.spec.model, "profile": d.profile.name, "bus": d.spec.bus,
                            "address": d.spec.address, "serial": d.serial,
                            **({"heat_loss_w_per_k": d.spec.heat_loss,
                                "heat_loss_after_w_per_k":
                                    d.spec.heat_loss * (ph.retrofit.factor if ph.retrofit else 1),
                                "dhw_kwh_per_day": d.spec.dhw_kwh_per_day}
                               if isinstance(d.spec, HeatMeterSpec) else {}),
                            **({"pv": d.spec.pv} if isinstance(d.spec, ElectricityMeterSpec) and d.spec.pv else {}),
                            **({"peak_w": d.spec.peak} if isinstance(d.spec, PvInverterSpec) else {}),
                            **({"unmodelled_points": d.unmodelled} if d.unmodelled else {})}
                for d in self.devices.values()},
            "days": days,
            # Local days (building.timezone, DST-correct), with each heat
            # meter's counterfactual: the true avoided energy, day by day.
            "local_days": local_days,
            "events": [{**e, "wall_ms": int(self.wall_time(e["sim"]) * 1000)} for e in self.events],
            "ground_truth": "groundtruth.jsonl",
        }


@dataclass(frozen=True)
class _Pending:
    key: str


class BusUnits(Mapping[int, Unit]):
    """The devices a bus answers for: a device that is offline (or a bus that
    is down) is simply absent, so the server stays silent as a dead meter does."""

    def __init__(self, building: Building, bus_id: str, devices: dict[int, BuildingDevice]) -> None:
        self.building = building
        self.bus_id = bus_id
        self.devices = devices

    def __getitem__(self, unit: int) -> Unit:
        device = self.devices[unit]
        t = self.building.now()
        if self.building.is_offline(device.spec.id, self.bus_id, t):
            raise KeyError(unit)
        return device

    def get(self, unit: int, default: Unit | None = None) -> Unit | None:  # type: ignore[override]
        try:
            return self[unit]
        except KeyError:
            return default

    def __iter__(self) -> Iterator[int]:
        return iter(self.devices)

    def __len__(self) -> int:
        return len(self.devices)


# ---------------------------------------------------------------- running it

@dataclass
class _BusRuntime:
    spec: TcpBusSpec | RtuBusSpec | MbusBusSpec
    units: BusUnits
    base_faults: FaultPlan | None
    server: ModbusTcpServer | ModbusRtuServer | MbusLineServer | None = None
    pair: PtyPair | None = None
    down: bool = False
    noisy: bool = False
    noisy_plans: list[FaultPlan] = field(default_factory=list)  # one per noisy period, for the counts


AGENT_BUFFER = "agent-buffer.db"  # in the output directory: where agent configs made for a run keep their buffer


class BuildingHandle:
    """A running building: servers, ptys, the ticker that applies scheduled
    faults and keeps the metadata file current. ``stop()`` ends it all.

    The output directory holds one run: the ground truth and metadata are
    written anew, and an agent buffer a previous run left there
    (``agent-buffer.db``, where configs/building-agent.yaml and
    ``--agent-config`` put it) is removed. Simulated time starts again at
    ``building.start``: that buffer's ids, counter baselines and meter ids
    belong to a building that no longer exists.
    """

    TICK_S = 0.02
    META_MIN_S = 0.5

    def __init__(self, config: BuildingConfig, clock: Clock = time.time, profile_dirs: tuple[Path, ...] = ()) -> None:
        self.config = config
        self.building = Building(config, clock, profile_dirs)
        self.output = config.output
        self.meta_path = self.output / "meta.json"
        self.truth_path = self.output / "groundtruth.jsonl"
        self.endpoints: dict[str, str] = {}
        self._buses: dict[str, _BusRuntime] = {}
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self._days_written = -1
        self._next_meta = 0.0
        self._last_meta = 0.0
        self.fault_log: list[str] = []
        self._logged: set[tuple[str, int]] = set()
        self._stop_lock = threading.Lock()
        self._stopped = False
        self.removed_agent_buffer: Path | None = None
        self.radio = ApartmentRadio(self.building, config) if config.apartments is not None else None

    def start(self) -> BuildingHandle:
        self.output.mkdir(parents=True, exist_ok=True)
        stale = self.output / AGENT_BUFFER
        if stale.exists():
            self.removed_agent_buffer = stale
        for suffix in ("", "-wal", "-shm"):
            Path(f"{stale}{suffix}").unlink(missing_ok=True)
        self.building.truth = GroundTruthWriter(self.truth_path)
        try:
            for index, spec in enumerate(self.config.buses):
                self._start_bus(index, spec)
        except (OSError, RetrofitError):
            self.stop()
            raise
        self.building.restart_clock()
        self.write_meta()
        self._ticker = threading.Thread(target=self._tick_loop, name="sim-building", daemon=True)
        self._ticker.start()
        return self

    def _start_bus(self, index: int, spec: TcpBusSpec | RtuBusSpec | MbusBusSpec | WmbusBusSpec) -> None:
        if isinstance(spec, WmbusBusSpec):  # the apartments' stick (the config check: their bus)
            if self.radio is not None:
                self.radio.start()
                self.endpoints[spec.id] = str(spec.pty)
            return
        if isinstance(spec, MbusBusSpec):
            meters = [d for d in self.building.devices.values()
                      if isinstance(d, BuildingMbusMeter) and d.spec.bus == spec.id]
            by_address = {m.spec.address: m for m in meters}
            plan = self._plan(spec.faults, index, by_address) if spec.faults else None
            runtime = _BusRuntime(spec, BusUnits(self.building, spec.id, {}), plan)
            self._buses[spec.id] = runtime
            runtime.pair = PtyPair(spec.pty.with_name(spec.pty.name + ".meter"), spec.pty).start()
            runtime.server = MbusLineServer(list(meters), str(runtime.pair.meter_end), spec.baudrate,
                                            faults=plan).start()
            self.endpoints[spec.id] = str(spec.pty)
            return
        devices = {d.spec.address: d for d in self.building.devices.values()
                   if isinstance(d, BuildingDevice) and d.spec.bus == spec.id}
        units = BusUnits(self.building, spec.id, devices)
        plan = self._plan(spec.faults, index, devices) if spec.faults else None
        runtime = _BusRuntime(spec, units, plan)
        self._buses[spec.id] = runtime
        if isinstance(spec, TcpBusSpec):
            runtime.server = self._tcp_server(runtime)
            self.endpoints[spec.id] = f"{spec.host}:{runtime.server.port}"
        else:
            runtime.pair = PtyPair(spec.pty.with_name(spec.pty.name + ".meter"), spec.pty).start()
            runtime.server = ModbusRtuServer(units, str(runtime.pair.meter_end), spec.baudrate, spec.parity,
                                             pace=spec.pace, faults=plan).start()
            self.endpoints[spec.id] = str(spec.pty)

    def _plan(self, faults: RandomFaults, index: int,
              devices: Mapping[int, BuildingDevice | BuildingMbusMeter]) -> FaultPlan:
        only = ({a for a, d in devices.items() if d.spec.id in faults.devices} if faults.devices else None)
        rates = {str(k): v for k, v in faults.rates.items()}
        return FaultPlan(rates, seed=self.building.seed * 1000 + index, only=only, slow_s=faults.slow)

    def _tcp_server(self, runtime: _BusRuntime) -> ModbusTcpServer:
        spec = runtime.spec
        assert isinstance(spec, TcpBusSpec)
        try:
            return ModbusTcpServer(runtime.units, spec.host, spec.port, faults=runtime.base_faults).start()
        except OSError as exc:
            raise RetrofitError(f"bus {spec.id}: cannot serve Modbus TCP on {spec.host}:{spec.port}: "
                                f"{exc.strerror}") from None

    def _tick_loop(self) -> None:
        while not self._stop.wait(self.TICK_S):
            try:
                self.tick()
            except (OSError, RetrofitError) as exc:
                self.fault_log.append(f"tick: {exc}")

    def tick(self) -> None:
        t = self.building.now()
        for bus_id, runtime in self._buses.items():
            self._bus_state(bus_id, runtime, t)
        self._log_events(t)
        now = time.monotonic()
        # A new day is written at once, but at most every META_MIN_S: a
        # building running a day every 0.1 s would otherwise rewrite a growing
        # file ten times a second.
        if (len(self.building.physics.days) != self._days_written and now >= self._last_meta + self.META_MIN_S) \
                or now >= self._next_meta:
            self.write_meta()
            self._last_meta = now
            self._next_meta = now + 1.0
        if self.building.truth is not None:
            self.building.truth.flush()

    def _bus_state(self, bus_id: str, runtime: _BusRuntime, t: float) -> None:
        building = self.building
        down = building.is_bus_down(bus_id, t)
        if down != runtime.down:
            runtime.down = down
            if isinstance(runtime.spec, TcpBusSpec):
                # A TCP gateway that is gone refuses connections; one that comes back listens again.
                if down and runtime.server is not None:
                    runtime.server.stop()
                    runtime.server = None
                elif not down:
                    runtime.server = self._tcp_server(runtime)
        noisy = [rates for window, rates in building.noisy if window.what == bus_id and window.covers(t)]
        if bool(noisy) != runtime.noisy:
            runtime.noisy = bool(noisy)
            plan = (FaultPlan(noisy[0], seed=building.seed * 7919 + int(t) % 100_000) if noisy
                    else runtime.base_faults)
            if noisy and plan is not None:
                runtime.noisy_plans.append(plan)
            if runtime.server is not None:  # Modbus servers and M-Bus lines alike
                runtime.server.faults = plan

    def _log_events(self, t: float) -> None:
        """Each scheduled fault once when it begins and once when it ends."""
        for index, event in enumerate(self.building.events):
            fields = {k: event[k] for k in ("device", "bus", "point", "old_serial", "new_serial") if k in event}
            if event["sim"] <= t and ("start", index) not in self._logged:
                self._logged.add(("start", index))
                self._log(event["sim"], event["fault"], **fields)
            if "until" in event and event["until"] <= t and ("end", index) not in self._logged:
                self._logged.add(("end", index))
                self._log(event["until"], f"{event['fault']}_end", **fields)

    def _log(self, t: float, event: str, **fields: object) -> None:
        if self.building.truth is not None:
            self.building.truth.event(int(self.building.clock() * 1000), t, event, **fields)
        self.fault_log.append(f"{iso(t)} {event} " + " ".join(f"{k}={v}" for k, v in fields.items()))

    def write_meta(self) -> None:
        meta = self.building.meta()
        meta["endpoints"] = self.endpoints
        meta["injected"] = {bus_id: dict(r.base_faults.injected) for bus_id, r in self._buses.items()
                            if r.base_faults is not None}
        noisy: dict[str, dict[str, int]] = {}
        for bus_id, runtime in self._buses.items():
            for plan in list(runtime.noisy_plans):
                for fault, count in plan.injected.items():
                    noisy.setdefault(bus_id, {})[fault] = noisy.get(bus_id, {}).get(fault, 0) + count
        meta["injected_noisy"] = noisy  # the scheduled noisy periods' faults
        if self.radio is not None:
            meta["apartments"] = self.radio.meta()
        self._days_written = len(meta["days"])
        temporary = self.meta_path.with_name(".meta.json.tmp")
        temporary.write_text(json.dumps(meta, indent=1))
        os.replace(temporary, self.meta_path)

    def agent_config(self, broker_port: int, buffer: Path, gateway: str = "sim-gw",
                     site: str | None = None, **mqtt_extra: object) -> dict[str, Any]:
        return agent_config(self.config, broker_port, buffer, gateway, site, endpoints=self.endpoints,
                            **mqtt_extra)

    def stop(self) -> None:
        """Idempotent: a stop event watcher and the owner may both call it."""
        with self._stop_lock:
            if self._stopped:
                return
            self._stopped = True
        self._stop.set()
        if self._ticker is not None and self._ticker is not threading.current_thread():
            self._ticker.join(timeout=2)
        if self.radio is not None:
            self.radio.stop()
        for runtime in self._buses.values():
            if runtime.server is not None:
                runtime.server.stop()
                runtime.server = None
            if runtime.pair is not None:
                runtime.pair.stop()
                runtime.pair = None
        if self.building.truth is not None:
            self.write_meta()
            self.building.truth.close()


def agent_config(config: BuildingConfig, broker_port: int, buffer: Path, gateway: str = "sim-gw",
                 site: str | None = None, endpoints: Mapping[str, str] | None = None,
                 **mqtt_extra: object) -> dict[str, Any]:
    """The agent config that reads this building (what configs/building-agent.yaml holds)."""
    default_interval = {"heat": 1.0, "electricity": 1.0, "room": 2.0, "pv": 1.0}
    buses = []
    for bus in config.buses:
        if isinstance(bus, TcpBusSpec):
            port = int((endpoints or {}).get(bus.id, f":{bus.port}").rpartition(":")[2])
            buses.append({"id": bus.id, "type": "modbus-tcp", "host": bus.host, "port": port, "timeout": "1s"})
        elif isinstance(bus, RtuBusSpec):
            buses.append({"id": bus.id, "type": "modbus-rtu", "port": str(bus.pty), "baudrate": bus.baudrate,
                          "parity": bus.parity, "timeout": "0.5s"})
        elif isinstance(bus, MbusBusSpec):  # a pty takes no parity; a real M-Bus level converter runs 8E1
            buses.append({"id": bus.id, "type": "mbus", "port": str(bus.pty), "baudrate": bus.baudrate,
                          "parity": "N"})
    devices = [{"id": d.id, "bus": d.bus, "address": d.address, "profile": d.profile,
                "interval": d.interval or default_interval[d.model],
                **({"points": list(d.points)} if d.points else {})} for d in config.devices]
    radio_buses, flats = agent_parts(config, config.building.acceleration)
    buses += radio_buses
    devices += flats
    return {
        "gateway": {"id": gateway, "site": site or config.building.name},
        # Commits every second (a gateway's default is a minute): in
        # accelerated time a minute is hours of the building's day.
        "buffer": {"path": str(buffer), "flush_interval": "1s"},
        "uplink": {"mqtt": {"host": "127.0.0.1", "port": broker_port, "topic_prefix": "buildings",
                            "status_interval": "10s", **mqtt_extra}},
        "buses": buses,
        "devices": devices,
    }


def run_building(config: Path | BuildingConfig, stop_event: threading.Event | None = None, *,
                 clock: Clock = time.time, profile_dirs: tuple[Path, ...] = ()) -> BuildingHandle:
    """Start a building (servers, ptys, fault schedule) and return its handle.

    When ``stop_event`` is given, the building stops itself once it is set.
    """
    loaded = load_building_config(config) if isinstance(config, Path) else config
    handle = BuildingHandle(loaded, clock, profile_dirs).start()
    if stop_event is not None:
        def watch() -> None:
            stop_event.wait()
            handle.stop()
        threading.Thread(target=watch, name="sim-building-stop", daemon=True).start()
    return handle


def describe(handle: BuildingHandle) -> list[str]:
    config = handle.config
    spec = config.building
    lines = [(f"building {spec.name}: seed {spec.seed}, x{spec.acceleration:g} "
             f"(1 simulated day = {physics.DAY_S / spec.acceleration:.1f} s), start {iso(utc_epoch(spec.start))}")]
    if spec.retrofit:
        lines.append(f"retrofit at {iso(utc_epoch(spec.retrofit.at))}: heat-loss coefficient "
                     f"-{spec.retrofit.heat_loss_reduction:.0%}")
    for bus in config.buses:
        where = handle.endpoints.get(bus.id, "?")
        speed = (f", {bus.baudrate} 8{bus.parity}1" if isinstance(bus, RtuBusSpec)
                 else f", {bus.baudrate} baud" if isinstance(bus, MbusBusSpec) else "")
        units = ", ".join(f"{d.address}={d.id}({d.profile})" for d in config.devices if d.bus == bus.id)
        if isinstance(bus, WmbusBusSpec) and config.apartments is not None:
            speed = f", {bus.stick} {bus.mode}"
            units = (f"{config.apartments.count} flats x (hca, cold, hot), security mode "
                     f"{config.apartments.security_mode}, keys {config.apartments.keys}")
        lines.append(f"bus {bus.id} ({bus.type} {where}{speed}): {units}")
    lines.append(f"ground truth: {handle.truth_path}; metadata: {handle.meta_path}")
    if handle.removed_agent_buffer is not None:
        lines.append(f"a new run: removed the last run's agent buffer {handle.removed_agent_buffer}")
    return lines


def main_building(config_path: Path, duration: float | None, agent_config_out: Path | None = None,
                  broker_port: int = 18830) -> int:
    """`retrofit-sim building`: run until Ctrl-C (or ``duration``), one line per simulated day."""
    import signal

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    handle = run_building(config_path)
    try:
        for line in describe(handle):
            print(line, flush=True)
        if agent_config_out is not None:
            agent_config_out.write_text(yaml.safe_dump(
                handle.agent_config(broker_port, handle.output / AGENT_BUFFER), sort_keys=False))
            print(f"agent config: {agent_config_out}", flush=True)
        started = time.monotonic()
        days_shown = faults_shown = 0
        while not stop.wait(0.5):
            days = handle.building.physics.days
            for day in days[days_shown:]:
                figures = day.as_json()
                heat = sum(figures["energy_kwh"].get(d, 0) for d in handle.building.physics.heat)
                print(f"{figures['date']}: outdoor {figures['outdoor_mean']:5.1f} degC, HDD {figures['hdd']:5.2f}, "
                      f"heat {heat:8.1f} kWh", flush=True)
            days_shown = len(days)
            faults = list(handle.fault_log)
            for entry in faults[faults_shown:]:
                print(f"fault: {entry}", flush=True)
            faults_shown = len(faults)
            if duration is not None and time.monotonic() - started >= duration:
                break
    finally:
        handle.stop()
    return 0


def add_cli(commands: Any) -> None:
    """`retrofit-sim building` (hooked into simulators/cli.py)."""
    parser = commands.add_parser("building", help="a simulated building: meters on several buses, physics, faults")
    parser.add_argument("--config", type=Path, required=True, help="building file, e.g. configs/sim-building.yaml")
    parser.add_argument("--duration", type=float, help="stop after this many seconds (default: until Ctrl-C)")
    parser.add_argument("--agent-config", type=Path, metavar="FILE",
                        help="also write the agent config that reads this building")
    parser.add_argument("--broker-port", type=int, default=18830, help="broker port for --agent-config")
    parser.set_defaults(handler=lambda args: main_building(args.config, args.duration, args.agent_config,
                                                           args.broker_port))


def _numeric(point: ModbusPoint, value: int | float | str | None) -> int | float:
    """A served value of a building's meter: its points are numbers."""
    if isinstance(value, str) or value is None:
        raise RetrofitError(f"point {point.name}: a building's meter serves numbers (got {value!r})")
    return value
