"""The physics of a simulated building: weather, heat, hot water, electricity, rooms.

Pure code, no I/O, no wall clock: everything is a function of simulated time
(UTC epoch seconds) and a seed, so the same seed and config give the same
building. Time advances in fixed steps; within a step every power is
constant, and counters integrate the power of each step in integers
(joules, litre-seconds per hour), so a counter never drifts from its power,
never falls, and two runs agree to the last bit.

Space heating follows the degree-day model an energy office uses:

    P_space = H * max(0, T_base - T_outdoor)      [W]

with H the building's heat-loss coefficient [W/K]. A retrofit multiplies H
by a known factor from a known date, so the saving the platform should find
is known exactly. Heating degree days are integrated with the same steps,
so "kWh per degree day" of the space heating is H * 24 / 1000, exactly.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from fractions import Fraction

DAY_S = 86_400
# Volumetric heat capacity of heating water at about 50 degC: rho * c.
RHO_C_J_PER_M3_K = 4.12e6
J_PER_KWH = 3_600_000

# Share of a day's domestic hot water drawn in each hour (a residential
# profile: a morning and an evening peak). Sums to 1.
_DHW_WEEKDAY = (1, 0.5, 0.5, 0.5, 1, 3, 9, 10, 7, 4, 3, 3, 4, 3, 2, 2, 3, 5, 8, 9, 8, 6, 4, 2)
_DHW_WEEKEND = (2, 1, 0.5, 0.5, 0.5, 1, 2, 5, 9, 10, 8, 6, 6, 5, 4, 3, 4, 5, 7, 8, 7, 6, 5, 3)
# Occupancy of a residential block, 0..1, by hour.
_OCC_WEEKDAY = (0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 1.0, 0.8, 0.4, 0.3, 0.3, 0.3,
                0.35, 0.3, 0.3, 0.35, 0.5, 0.7, 0.9, 1.0, 1.0, 1.0, 0.95, 0.9)
_OCC_WEEKEND = (0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.85, 0.7, 0.6,
                0.6, 0.6, 0.6, 0.6, 0.65, 0.75, 0.9, 1.0, 1.0, 1.0, 0.95, 0.9)
# Electricity demand shape (lights, cooking, appliances), relative, by hour.
_ELEC_WEEKDAY = (0.45, 0.4, 0.38, 0.38, 0.4, 0.55, 0.9, 1.1, 0.9, 0.7, 0.65, 0.7,
                 0.8, 0.7, 0.65, 0.7, 0.9, 1.3, 1.7, 1.9, 1.8, 1.5, 1.1, 0.7)
_ELEC_WEEKEND = (0.5, 0.45, 0.4, 0.38, 0.38, 0.4, 0.5, 0.7, 1.0, 1.2, 1.25, 1.3,
                 1.4, 1.3, 1.2, 1.15, 1.2, 1.4, 1.7, 1.85, 1.8, 1.5, 1.15, 0.8)


def _normalised(shape: tuple[float, ...]) -> tuple[float, ...]:
    total = sum(shape)
    return tuple(x / total for x in shape)


DHW_WEEKDAY, DHW_WEEKEND = _normalised(_DHW_WEEKDAY), _normalised(_DHW_WEEKEND)
ELEC_WEEKDAY = tuple(x * 24 / sum(_ELEC_WEEKDAY) for x in _ELEC_WEEKDAY)
ELEC_WEEKEND = tuple(x * 24 / sum(_ELEC_WEEKEND) for x in _ELEC_WEEKEND)


def hour_and_weekend(t: float) -> tuple[int, bool]:
    """Hour of day and whether it is Saturday or Sunday (UTC, simulated time)."""
    day = math.floor(t / DAY_S)
    hour = int((t - day * DAY_S) // 3600)
    return hour, (day + 3) % 7 >= 5  # 1970-01-01 was a Thursday


def unit_noise(seed: int, stream: int, step: int) -> float:
    """A reproducible number in [-0.5, 0.5) for (seed, stream, step): a
    splitmix64 hash, cheap enough for every device at every step."""
    x = (seed * 0x9E3779B97F4A7C15 + stream * 0xBF58476D1CE4E5B9 + step * 0x94D049BB133111EB) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    x ^= x >> 31
    return x / 2.0**64 - 0.5


_MASK64 = (1 << 64) - 1


@dataclass(frozen=True)
class Weather:
    """Outdoor temperature: a level, a seasonal cycle, a day-to-day anomaly
    and a daily swing.

    The seasonal cycle (``annual_amplitude_k``, coldest on day of the year
    ``coldest_day``) makes a heating season: a year-long baseline has a
    winter and a summer, as a real one does.
    """

    seed: int
    mean_c: float = -1.0
    daily_sd_k: float = 3.0
    diurnal_amplitude_k: float = 4.0
    trend_k_per_day: float = 0.0
    start: float = 0.0
    annual_amplitude_k: float = 0.0
    coldest_day: float = 20.0  # day of the year (1 = 1 January); Poland: around 20 January
    _anomaly: dict[int, float] = field(default_factory=dict, compare=False, repr=False)

    def anomaly(self, day: int) -> float:
        cached = self._anomaly.get(day)
        if cached is None:
            cached = self._anomaly[day] = random.Random(f"{self.seed}:weather:{day}").gauss(0.0, self.daily_sd_k)
        return cached

    def outdoor(self, t: float) -> float:
        """Degrees Celsius at simulated time ``t``: the anomaly is interpolated
        between noons, so the weather changes smoothly from day to day."""
        noon_days = (t - DAY_S / 2) / DAY_S
        day = math.floor(noon_days)
        frac = noon_days - day
        anomaly = self.anomaly(day) * (1 - frac) + self.anomaly(day + 1) * frac
        hour = (t % DAY_S) / 3600
        swing = -self.diurnal_amplitude_k * math.cos(2 * math.pi * (hour - 4) / 24)
        trend = self.trend_k_per_day * (t - self.start) / DAY_S
        season = -self.annual_amplitude_k * math.cos(2 * math.pi * (day_of_year(t) - self.coldest_day) / YEAR_DAYS) \
            if self.annual_amplitude_k else 0.0
        return self.mean_c + anomaly + swing + trend + season

    def daily_mean(self, start: float, end: float, samples_per_hour: int = 4) -> float:
        """The mean of ``outdoor`` over [start, end) (a local day of 23, 24 or
        25 hours): what a weather service reports as the day's mean."""
        count = max(1, round((end - start) / 3600 * samples_per_hour))
        step = (end - start) / count
        return sum(self.outdoor(start + (k + 0.5) * step) for k in range(count)) / count


YEAR_DAYS = 365.2425


def day_of_year(t: float) -> float:
    """Fractional day of the year (1.0 = 1 January 00:00 UTC): a smooth
    season that ignores leap years beyond a quarter of a day."""
    days = t / DAY_S
    years = math.floor((days + 0.5) / YEAR_DAYS)  # 1970-01-01 = day 1 of year 0
    return days - years * YEAR_DAYS + 1


def day_factor(seed: int, stream: int, day: int, sd: float) -> float:
    """A reproducible factor around 1 for one device on one day: the
    day-to-day scatter of real consumption (occupants, gains, hot water) that
    no weather explains. The same factor applies with and without the
    retrofit, so the true saving stays exact."""
    if not sd:
        return 1.0
    return max(0.0, random.Random(f"{seed}:day:{stream}:{day}").gauss(1.0, sd))


@dataclass(frozen=True)
class Retrofit:
    """From ``at`` (simulated epoch s), the heat-loss coefficient is ``factor`` x H."""

    at: float
    factor: float

    def coefficient(self, h_before: float, t: float) -> float:
        return h_before * self.factor if t >= self.at else h_before


@dataclass(frozen=True)
class HeatZone:
    """What one heat meter measures: a building (part) with its hot water."""

    heat_loss_w_per_k: float
    dhw_kwh_per_day: float
    base_temperature_c: float
    design_outdoor_c: float = -20.0
    design_delta_t_k: float = 20.0


@dataclass
class HeatState:
    energy_j: int = 0  # integral of the served power, exact
    volume_lsph: int = 0  # integral of the served flow in litre x second / hour, exact
    power_w: int = 0
    flow_lph: int = 0
    supply_c: float = 20.0
    return_c: float = 20.0
    space_w: int = 0  # the space-heating part of power_w
    space_j: int = 0  # the space-heating part of energy_j (ground truth only)


def heat_step(zone: HeatZone, h: float, outdoor_c: float, hour: int, weekend: bool, noise: float,
              state: HeatState, scatter: float = 1.0) -> None:
    """Set the heat meter's gauges for one step from the weather and the hour.

    Power and flow are integers (W and l/h, what the counters integrate);
    the return temperature is derived from them, so P = rho * c * flow * dT
    holds to the resolution of the temperature registers.
    """
    space_w = round(h * scatter * max(0.0, zone.base_temperature_c - outdoor_c))
    dhw_share = (DHW_WEEKEND if weekend else DHW_WEEKDAY)[hour]
    dhw_w = round(zone.dhw_kwh_per_day * 1000 * dhw_share * scatter)  # the hour's share of the day, in W
    power = space_w + dhw_w
    # Heating curve: warmer supply the colder it is outside; hot water needs 60 degC.
    supply = 28.0 + 1.2 * max(0.0, 20.0 - outdoor_c)
    supply = min(75.0, max(supply, 60.0 if dhw_w else 25.0)) + 0.6 * noise
    state.power_w, state.space_w = power, space_w
    if power <= 0:
        state.flow_lph, state.supply_c, state.return_c = 0, supply, supply - 0.2
        return
    design_w = zone.heat_loss_w_per_k * (zone.base_temperature_c - zone.design_outdoor_c) + 1.0
    target_dt = min(zone.design_delta_t_k * 1.25, max(4.0, zone.design_delta_t_k * math.sqrt(power / design_w)))
    flow_lph = max(1, round(power * 3_600_000 / (RHO_C_J_PER_M3_K * target_dt)))
    delta_t = power * 3_600_000 / (RHO_C_J_PER_M3_K * flow_lph)
    state.flow_lph, state.supply_c, state.return_c = flow_lph, supply, supply - delta_t


@dataclass(frozen=True)
class ElectricityUse:
    """A building's electricity: a base load plus a residential daily shape."""

    annual_kwh: float
    base_share: float = 0.3
    noise_share: float = 0.15


@dataclass
class ElectricityState:
    energy_j: int = 0  # imported from the grid, exact
    power_w: int = 0  # at the meter: the load, less a PV behind it (negative = export)
    export_j: int = 0  # exported to the grid (a PV behind the meter), exact
    voltages: tuple[float, float, float] = (230.0, 230.0, 230.0)
    frequency: float = 50.0


def electricity_step(use: ElectricityUse, hour: int, weekend: bool, noise: float, step_index: int,
                     state: ElectricityState) -> None:
    mean_w = use.annual_kwh * 1000 / 8760
    shape = (ELEC_WEEKEND if weekend else ELEC_WEEKDAY)[hour]
    power = mean_w * (use.base_share + (1 - use.base_share) * shape) * (1 + use.noise_share * 2 * noise)
    state.power_w = max(0, round(power))
    phase = step_index / 7.0
    state.voltages = tuple(230.0 + 3.0 * math.sin(phase + k * 2.1) + 2.0 * noise for k in range(3))  # type: ignore[assignment]
    state.frequency = 50.0 + 0.04 * math.sin(step_index / 5.0)


@dataclass(frozen=True)
class PvArray:
    """A rooftop PV array behind one inverter: its peak AC power and where
    it is (the sun's height there sets the shape of every day)."""

    peak_w: float
    latitude: float = 52.23  # Warsaw
    longitude: float = 21.01
    dc_strings: int = 2  # MPPT inputs, each with half the array


@dataclass
class PvState:
    energy_j: int = 0  # AC energy delivered, exact
    power_w: int = 0
    dc_energy_j: list[int] = field(default_factory=list)  # per MPPT input
    dc_power_w: list[int] = field(default_factory=list)
    clearness: float = 1.0


def sun_height(latitude: float, longitude: float, t: float) -> float:
    """Sine of the sun's elevation at UTC epoch ``t`` (a textbook
    approximation: declination from the day of the year, hour angle from the
    solar time); negative at night."""
    doy = day_of_year(t)
    declination = math.radians(23.44) * math.sin(2 * math.pi * (284 + doy) / 365)
    solar_hour = (t % DAY_S) / 3600 + longitude / 15
    hour_angle = math.radians(15 * (solar_hour - 12))
    lat = math.radians(latitude)
    return math.sin(lat) * math.sin(declination) + math.cos(lat) * math.cos(declination) * math.cos(hour_angle)


def clearness(seed: int, stream: int, day: int) -> float:
    """How clear one day's sky is, 0.15 (overcast) to 1 (clear), from the seed."""
    return 0.15 + 0.85 * random.Random(f"{seed}:sky:{stream}:{day}").random()


def pv_step(array: PvArray, t: float, sky: float, state: PvState) -> None:
    """Set the inverter's power for one step: peak x the sun's height x the
    day's clearness, in whole watts; the MPPT inputs share it (a DC side a
    little above AC: the inverter's losses)."""
    height = sun_height(array.latitude, array.longitude, t)
    power = round(array.peak_w * max(0.0, height) * sky) if height > 0 else 0
    state.power_w, state.clearness = power, sky
    strings = max(1, array.dc_strings)
    if len(state.dc_power_w) != strings:
        state.dc_power_w = [0] * strings
        state.dc_energy_j = state.dc_energy_j[:strings] + [0] * (strings - len(state.dc_energy_j))
    dc_total = round(power / 0.97)
    for index in range(strings):
        state.dc_power_w[index] = dc_total // strings + (1 if index < dc_total % strings else 0)


@dataclass(frozen=True)
class Room:
    """A flat's air temperature: lags towards a target set by heating and people."""

    setpoint_c: float = 21.0
    night_setback_k: float = 2.0
    time_constant_h: float = 5.0


@dataclass
class RoomState:
    temperature_c: float = 20.0
    humidity: float = 45.0


def room_step(room: Room, outdoor_c: float, base_c: float, retrofit_factor: float, hour: int, weekend: bool,
              noise: float, dt: float, state: RoomState) -> None:
    occupancy = (_OCC_WEEKEND if weekend else _OCC_WEEKDAY)[hour]
    heating = outdoor_c < base_c
    night = hour < 6 or hour >= 22
    if heating:
        target = room.setpoint_c - (room.night_setback_k if night else 0.0) + 0.8 * occupancy
    else:
        target = max(outdoor_c + 5.0, room.setpoint_c - 3.0) + 0.8 * occupancy
    # A better envelope (smaller H) cools and warms more slowly.
    tau_s = room.time_constant_h * 3600 / retrofit_factor
    state.temperature_c += (target - state.temperature_c) * (1 - math.exp(-dt / tau_s)) + 0.05 * noise
    humidity = 42.0 + 10.0 * occupancy - 1.5 * (state.temperature_c - 21.0) + 4.0 * noise
    state.humidity = min(80.0, max(20.0, humidity))


def kwh(joules: int | Fraction) -> Fraction:
    return Fraction(joules) / J_PER_KWH
