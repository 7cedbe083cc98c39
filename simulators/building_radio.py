"""The building's apartments: OMS radio meters behind a simulated stick.

Each flat has a heat cost allocator and a cold and a hot water meter
(simulators/wmbus_meter.py builds their telegrams, mode 5 or 7 with a key
each, written to the vendor's key file at the start). Their numbers come
from the building:

- an allocator counts a fixed share of the space heat of one heat meter
  (the shares scatter around 1/count, seeded, and sum to 1), so the flats
  together count what the building's space heating does, in HCA units;
- a water meter follows the daily hot-water profile of simulators/physics.py
  with a seeded level per flat and a seeded factor per day.

The meters transmit on their interval (simulated time, with jitter) through
a ``StickServer`` whose clock is the building's: each telegram is built when
the building's time reaches its turn, with the values of that moment, and
what it carries goes to the ground truth under the device's id, as the
agent's OMS profiles name the points. Telegrams sent before the agent set
the stick's mode were not heard (``unheard``); those lost to collisions are
``dropped``: both are in the ground truth, as they were on air.

The allocators' and water meters' set-date values are those the meters had
at their last set date before the start (31 May); a run that passes a set
date does not start a new billing period.
"""

from __future__ import annotations

import datetime as dt
import math
import random
from decimal import Decimal
from fractions import Fraction
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from simulators import physics
from simulators.building_config import ApartmentsSpec, BuildingConfig, WmbusBusSpec
from simulators.pty import PtyPair
from simulators.wmbus_meter import MeterKind, RadioMeterSpec, SimulatedRadioMeter, generate_keys, write_key_file
from simulators.wmbus_stick import StickServer

if TYPE_CHECKING:
    from simulators.building import Building

# The flat's meters, in the order of their ids: (device id suffix, kind, the agent's profile).
FLAT_METERS = (("hca", MeterKind.HCA, "oms-hca"), ("cold", MeterKind.WATER, "oms-water"),
               ("hot", MeterKind.WARM_WATER, "oms-water"))
# The simulator's truth keys -> the points of the agent's OMS profiles (drivers/profiles/oms-*.yaml).
POINTS = {"hca": "hca_units", "hca@1": "hca_units_set_date", "volume": "volume", "volume_flow": "flow",
          "volume@1": "volume_set_date", "date@1": "set_date", "date_time": "meter_datetime"}
_STREAM = 10_000  # noise streams of the flats, clear of the devices' (1, 2, ...)


def device_id(spec: ApartmentsSpec, flat: int, suffix: str) -> str:
    return f"flat-{flat + 1:0{max(2, len(str(spec.count)))}d}-{suffix}"


def point_value(value: object) -> int | float:
    """A telegram's value as the agent forwards it: dates as seconds since 1970
    of the meter's clock (no zone), decimals as numbers."""
    if isinstance(value, dt.datetime):
        return int((value - dt.datetime(1970, 1, 1)).total_seconds())
    if isinstance(value, dt.date):
        return int((dt.datetime.combine(value, dt.time()) - dt.datetime(1970, 1, 1)).total_seconds())
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    assert isinstance(value, int)
    return value


class FlatWater:
    """One water meter's litres: a flat's level times a day's factor times the hour's share."""

    def __init__(self, seed: int, stream: int, start: float, litres_per_day: float, level: float,
                 daily_sd: float) -> None:
        self.seed, self.stream, self.start = seed, stream, start
        self.litres_per_day = litres_per_day * level
        self.daily_sd = daily_sd
        self._whole_days: dict[int, float] = {}  # day -> days' worth of use from the start to its midnight

    def _factor(self, day: int) -> float:
        return physics.day_factor(self.seed, self.stream, day, self.daily_sd)

    @staticmethod
    def _profile_so_far(t: float) -> float:
        """The share of its day's use drawn by ``t`` (hourly shares, even within the hour)."""
        hour, weekend = physics.hour_and_weekend(t)
        shares = physics.DHW_WEEKEND if weekend else physics.DHW_WEEKDAY
        into_hour = (t % 3600) / 3600
        return sum(shares[:hour]) + shares[hour] * into_hour

    def _days(self, t: float) -> float:
        """Days' worth of use (each day weighted by its factor) from the start to ``t``."""
        first, day = math.floor(self.start / physics.DAY_S), math.floor(t / physics.DAY_S)
        if day not in self._whole_days:
            total = self._factor(first) * (1 - self._profile_so_far(self.start)) if day > first else 0.0
            for whole in range(first + 1, day):
                total += self._factor(whole)
            self._whole_days[day] = total
        if day == first:
            return self._factor(day) * (self._profile_so_far(t) - self._profile_so_far(self.start))
        return self._whole_days[day] + self._factor(day) * self._profile_so_far(t)

    def litres(self, t: float) -> float:
        return self.litres_per_day * self._days(t)

    def flow_lh(self, t: float) -> int:
        hour, weekend = physics.hour_and_weekend(t)
        shares = physics.DHW_WEEKEND if weekend else physics.DHW_WEEKDAY
        return round(self.litres_per_day * self._factor(math.floor(t / physics.DAY_S)) * shares[hour])


class FlatMeter(SimulatedRadioMeter):
    """A flat's radio meter whose numbers are the building's at the moment it sends."""

    def __init__(self, radio: ApartmentRadio, device: str, spec: RadioMeterSpec, share: Fraction,
                 water: FlatWater | None, seed: int) -> None:
        super().__init__(spec, seed=seed)
        self.radio = radio
        self.device = device
        self.share = share  # of the heat meter's space heat (allocators)
        self.water = water
        rng = random.Random(f"{seed}:flat-meter:{spec.identification}")
        p = self._physics
        if spec.kind is MeterKind.HCA:
            self.start_value = rng.randrange(200, 2_000)  # units since the last set date
            p.set_date_value = rng.randrange(1_000, 6_000)  # the last period's
        else:
            self.start_value = rng.randrange(10_000, 600_000)  # litres on the register
            p.set_date_volume_l = self.start_value - rng.randrange(0, 9_000)

    def transmit(self, seconds_since_last: float, now: dt.datetime) -> tuple[bytes, Any]:
        """The telegram of the building's moment (``now``, the channel's own clock, is not used)."""
        building = self.radio.building
        with building.lock:
            wall = building.clock()
            t = building.sim_time(wall)
            building.advance(t)
            p = self._physics
            if self.water is None:
                space_j = building.physics.heat[self.radio.spec.heat_meter][1].space_j
                units = Fraction(space_j, physics.J_PER_KWH) * self.share
                units *= Fraction(self.radio.spec.hca_units_per_kwh).limit_denominator(1000)
                p.hca_units = self.start_value + math.floor(units)
            else:
                p.volume_l = self.start_value + math.floor(self.water.litres(t))
                p.flow_lh = self.water.flow_lh(t)
            telegram, truth = self.build(self.radio.local_clock(t))
            self.access_number = (self.access_number + 1) & 0xFF
            self.message_counter += 1
            if building.truth is not None:
                values = {POINTS[k]: point_value(v) for k, v in truth.values.items() if k in POINTS}
                building.truth.served(int(wall * 1000), t, self.device, values)
            self.radio.sent[self.device] = self.radio.sent.get(self.device, 0) + 1
        return telegram, truth


class ApartmentRadio:
    """The flats' meters, their key file, the stick and its pty."""

    def __init__(self, building: Building, config: BuildingConfig) -> None:
        assert config.apartments is not None
        self.building = building
        self.spec = spec = config.apartments
        self.bus = next(b for b in config.buses if isinstance(b, WmbusBusSpec) and b.id == spec.bus)
        self.zone = ZoneInfo(config.building.timezone)
        seed = config.building.seed
        start = building.physics.start
        rng = random.Random(f"{seed}:apartments")
        weights = [max(0.05, rng.gauss(1.0, spec.share_sd)) for _ in range(spec.count)]
        total = sum(weights)
        keys = generate_keys(3 * spec.count, seed) if spec.security_mode else []
        self.meters: list[FlatMeter] = []
        self.sent: dict[str, int] = {}
        for flat in range(spec.count):
            level = max(0.1, rng.gauss(1.0, spec.occupancy_sd))  # people in the flat, roughly
            for index, (suffix, kind, _) in enumerate(FLAT_METERS):
                number = 3 * flat + index
                stream = _STREAM + number
                water = None
                if kind is not MeterKind.HCA:
                    litres = spec.cold_litres_per_day if kind is MeterKind.WATER else spec.hot_litres_per_day
                    water = FlatWater(seed, stream, start, litres, level, spec.daily_sd)
                meter_spec = RadioMeterSpec(spec.first_id + number, kind, manufacturer=spec.manufacturer.upper(),
                                            version=0x01, security_mode=spec.security_mode,
                                            key=keys[number] if keys else None,
                                            interval_s=spec.interval, mode=self.bus.mode)
                share = Fraction(weights[flat] / total).limit_denominator(1_000_000)
                self.meters.append(FlatMeter(self, device_id(spec, flat, suffix), meter_spec, share, water, seed))
        self.pair: PtyPair | None = None
        self.server: StickServer | None = None

    def local_clock(self, t: float) -> dt.datetime:
        """The meters' clocks: the building's local time, no zone."""
        return dt.datetime.fromtimestamp(t, self.zone).replace(tzinfo=None)

    def start(self) -> ApartmentRadio:
        if self.spec.security_mode:
            self.spec.keys.parent.mkdir(parents=True, exist_ok=True)
            write_key_file(self.meters, self.spec.keys)
        pty = self.bus.pty
        self.pair = PtyPair(pty.with_name(pty.name + ".stick"), pty).start()
        building = self.building
        self.server = StickServer(self.meters, str(self.pair.meter_end), self.bus.stick, jitter=self.spec.jitter,
                                  seed=building.seed, clock=lambda: building.now() - building.physics.start).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
        if self.pair is not None:
            self.pair.stop()
            self.pair = None

    def meta(self) -> dict[str, Any]:
        """The flats in meta.json: which meter is whose, and each allocator's share of the heat."""
        return {"bus": self.spec.bus, "heat_meter": self.spec.heat_meter, "count": self.spec.count,
                "hca_units_per_kwh": self.spec.hca_units_per_kwh, "security_mode": self.spec.security_mode,
                "meters": {m.device: {"meter": m.spec.id_text, "kind": m.spec.kind.value,
                                      **({"share": float(m.share)} if m.water is None else {}),
                                      "sent": self.sent.get(m.device, 0)} for m in self.meters}}


def agent_parts(config: BuildingConfig, acceleration: float) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The agent's radio bus and the flats' devices (by meter id), for agent configs made from the file."""
    spec = config.apartments
    if spec is None:
        return [], []
    bus = next(b for b in config.buses if isinstance(b, WmbusBusSpec) and b.id == spec.bus)
    entry: dict[str, Any] = {"id": bus.id, "type": "wmbus", "stick": bus.stick, "port": str(bus.pty),
                             "modes": [bus.mode]}
    if spec.security_mode:
        entry["keys_file"] = str(spec.keys)
    interval = f"{spec.interval * (1 + spec.jitter) / acceleration:.3f}s"  # in the agent's (wall) time
    devices = [{"id": device_id(spec, flat, suffix), "bus": bus.id, "address": f"{spec.first_id + 3 * flat + i:08d}",
                "profile": profile, "interval": interval}
               for flat in range(spec.count) for i, (suffix, _, profile) in enumerate(FLAT_METERS)]
    return [entry], devices
