"""The building file of `retrofit-sim building`: its typed model, parsed and
checked in one pass (drivers/core/records.py), with every problem named.

simulators/building.py runs what this describes; docs/simulators.md is the
technician's reference for the keys.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from drivers.core.durations import parse_duration
from drivers.core.errors import RetrofitError
from drivers.core.records import Invalid, Parse, Problem, Rule, dotted, validate
from simulators.mbus_meter import MAX_IDENTIFICATION, MAX_INT32, MBUS_FAULTS

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


def parse_sim_duration(value: object) -> float:
    """Like the agent's durations, and compound ones too: ``1d12h``, ``2h30m``."""
    if isinstance(value, str) and value.strip() and _PART.sub("", value.replace(" ", "")) == "":
        parts = _PART.findall(value.replace(" ", ""))
        if len(parts) > 1:
            return sum(parse_duration(number + unit) for number, unit in parts)
    return parse_duration(value)


_SIM_DURATION_SCHEMA = {
    "anyOf": [{"type": "number", "exclusiveMinimum": 0},
              {"type": "string", "pattern": r"^\s*(\d+(\.\d+)?\s*(ms|s|m|h|d)?\s*)+$"}],
    "description": "seconds, or numbers with ms, s, m, h or d (10s, 15m, 1h, 1d12h)",
}

Duration = Annotated[float, Parse(parse_sim_duration, _SIM_DURATION_SCHEMA)]
Identifier = Annotated[str, Rule(pattern=r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}",
                                 explain="use 1 to 64 letters, digits, '_', '.' or '-', "
                                         "starting with a letter or digit")]
Port = Annotated[int, Rule(ge=1, le=65535)]
Rate = Annotated[float, Rule(ge=0, le=1)]
FaultName = Literal["silent", "crc", "garbage", "partial", "busy", "slow"]
# A scheduled fault's `at`: an offset from the start (36h, 1d12h) or a date-time.
Moment = Duration | dt.datetime


@dataclass(frozen=True, kw_only=True)
class WeatherSpec:
    mean: float = -1.0  # degC, the level of the period
    daily_sd: Annotated[float, Rule(ge=0, le=15)] = 3.0  # day-to-day anomaly
    diurnal_amplitude: Annotated[float, Rule(ge=0, le=15)] = 4.0
    trend_per_day: float = 0.0
    # A seasonal cycle around `mean`: a year-long run has a heating season.
    annual_amplitude: Annotated[float, Rule(ge=0, le=30)] = 0.0
    coldest_day: Annotated[float, Rule(ge=1, le=366)] = 20.0  # day of the year


@dataclass(frozen=True, kw_only=True)
class RetrofitSpec:
    at: dt.datetime
    # The heat-loss coefficient H falls by this share: 0.35 -> H x 0.65.
    heat_loss_reduction: Annotated[float, Rule(gt=0, lt=1)]


@dataclass(frozen=True, kw_only=True)
class BuildingSpec:
    name: Identifier = "sim-building"
    seed: int = 0
    start: dt.datetime
    acceleration: Annotated[float, Rule(ge=1, le=1_000_000)] = 1.0
    step: Duration = 60.0
    base_temperature: float = 15.5
    weather: WeatherSpec = field(default_factory=WeatherSpec)
    retrofit: RetrofitSpec | None = None
    # Where the building stands: its local days (midnight to midnight, 23 or
    # 25 hours at a clock change) are the days of the true figures.
    timezone: str = "Europe/Warsaw"


@dataclass(frozen=True, kw_only=True)
class RandomFaults:
    """Per-request faults on a bus (FaultPlan): probability of each fault."""

    rates: dict[FaultName, Rate]
    slow: Duration = 0.3
    devices: tuple[str, ...] | None = None  # only these device ids; all when absent


@dataclass(frozen=True, kw_only=True)
class TcpBusSpec:
    id: Identifier
    type: Literal["modbus-tcp"]
    host: Literal["127.0.0.1", "::1", "localhost"] = "127.0.0.1"
    port: Port
    faults: RandomFaults | None = None


@dataclass(frozen=True, kw_only=True)
class RtuBusSpec:
    id: Identifier
    type: Literal["modbus-rtu"]
    # The agent's end of a virtual RS-485 line (socat pty); the meters get PTY.meter.
    pty: Path
    baudrate: Literal[1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200] = 9600
    parity: Literal["N", "E", "O"] = "N"
    pace: bool = True  # answer at the speed of the line
    faults: RandomFaults | None = None


@dataclass(frozen=True, kw_only=True)
class MbusBusSpec:
    id: Identifier
    type: Literal["mbus"]
    # The agent's end of a virtual M-Bus line (socat pty); the meters get PTY.meter.
    pty: Path
    baudrate: Literal[300, 2400, 9600] = 2400
    faults: RandomFaults | None = None  # all but "busy" (a Modbus exception; M-Bus has none)


@dataclass(frozen=True, kw_only=True)
class WmbusBusSpec:
    """A radio receiver stick: the apartments' meters transmit to it (simulators/building_radio.py)."""

    id: Identifier
    type: Literal["wmbus"]
    stick: Literal["im871a", "amb8465"] = "im871a"
    # The agent's end of a virtual serial line (socat pty); the stick gets PTY.stick.
    pty: Path
    mode: Literal["t1", "c1"] = "t1"


BusSpec = TcpBusSpec | RtuBusSpec | MbusBusSpec | WmbusBusSpec  # told apart by their `type`
BUS_TYPES = ("modbus-tcp", "modbus-rtu", "mbus", "wmbus")


@dataclass(frozen=True, kw_only=True)
class _DeviceBase:
    id: Identifier
    bus: Identifier
    address: Annotated[int, Rule(ge=1, le=247)]
    profile: str
    interval: Duration | None = None  # the agent's poll interval in configs made from this file
    serial: Annotated[int, Rule(ge=0, le=2**32 - 1)] | None = None
    points: tuple[str, ...] | None = None  # the agent reads only these (configs made from this file)


@dataclass(frozen=True, kw_only=True)
class HeatMeterSpec(_DeviceBase):
    model: Literal["heat"]
    heat_loss: Annotated[float, Rule(gt=0)]  # H before the retrofit, W/K
    dhw_kwh_per_day: Annotated[float, Rule(ge=0)] = 0.0
    energy_start: Annotated[float, Rule(ge=0)] = 0.0  # kWh on the register at the start
    volume_start: Annotated[float, Rule(ge=0)] = 0.0  # m3
    # Day-to-day scatter of the demand no weather explains (occupants, hot
    # water): the standard deviation of a daily factor, e.g. 0.05.
    daily_sd: Annotated[float, Rule(ge=0, le=0.5)] = 0.0


@dataclass(frozen=True, kw_only=True)
class ElectricityMeterSpec(_DeviceBase):
    model: Literal["electricity"]
    annual_kwh: Annotated[float, Rule(gt=0)]
    energy_start: Annotated[float, Rule(ge=0)] = 0.0
    # The PV inverter behind this meter (a device id): the meter is then the
    # bidirectional main meter, importing the load less the PV and exporting
    # what the PV makes beyond the load.
    pv: str | None = None
    export_start: Annotated[float, Rule(ge=0)] = 0.0  # kWh on the export register at the start


@dataclass(frozen=True, kw_only=True)
class PvInverterSpec(_DeviceBase):
    model: Literal["pv"]
    peak: Annotated[float, Rule(gt=0, le=1_000_000)]  # W AC at a clear noon sun
    latitude: Annotated[float, Rule(ge=-90, le=90)] = 52.23
    longitude: Annotated[float, Rule(ge=-180, le=180)] = 21.01
    energy_start: Annotated[float, Rule(ge=0)] = 0.0  # kWh produced before the start


@dataclass(frozen=True, kw_only=True)
class RoomSensorSpec(_DeviceBase):
    model: Literal["room"]
    setpoint: float = 21.0
    night_setback: Annotated[float, Rule(ge=0)] = 2.0
    time_constant: Annotated[float, Rule(gt=0)] = 5.0  # hours


DeviceSpec = HeatMeterSpec | ElectricityMeterSpec | RoomSensorSpec | PvInverterSpec  # told apart by their `model`


@dataclass(frozen=True, kw_only=True)
class ScheduledFault:
    """A fault at a simulated moment: ``at`` is an offset from the start (36h)
    or a date-time; ``for`` a simulated duration."""

    at: Moment
    fault: Literal["offline", "bus_down", "noisy", "counter_reset", "meter_swap", "rollover"]
    device: str | None = None
    bus: str | None = None
    point: str | None = None
    for_: Duration | None = field(default=None, metadata={"key": "for"})  # a keyword in Python
    rates: dict[FaultName, Rate] | None = None


@dataclass(frozen=True, kw_only=True)
class ApartmentsSpec:
    """The flats: each a heat cost allocator and a cold and a hot water
    meter, OMS radio meters on a `wmbus` bus. The allocators share the
    space heat of one heat meter; the water follows a daily profile."""

    count: Annotated[int, Rule(ge=1, le=999)]
    bus: Identifier  # a `wmbus` bus
    heat_meter: Identifier  # the heat meter whose space heat the flats' allocators share
    security_mode: Literal[0, 5, 7] = 5
    # Where the vendor's key file is written at the start (mode 600); the
    # agent config made from this file reads it as the bus's keys_file.
    keys: Path = Path("wmbus-keys.csv")
    interval: Duration = 900.0  # simulated time between a meter's telegrams
    jitter: Annotated[float, Rule(ge=0, lt=1)] = 0.1  # relative scatter of each interval
    first_id: Annotated[int, Rule(ge=1, le=99_999_999 - 3 * 999)] = 40_000_001
    manufacturer: Annotated[str, Rule(pattern=r"[A-Za-z]{3}")] = "QDS"
    # A flat's share of the heat scatters this much around 1/count (seeded).
    share_sd: Annotated[float, Rule(ge=0, le=0.5)] = 0.25
    hca_units_per_kwh: Annotated[float, Rule(gt=0, le=100)] = 1.0
    cold_litres_per_day: Annotated[float, Rule(ge=0, le=5000)] = 110.0
    hot_litres_per_day: Annotated[float, Rule(ge=0, le=5000)] = 50.0
    # A flat's water use scatters this much around the mean, and each day by daily_sd.
    occupancy_sd: Annotated[float, Rule(ge=0, le=0.9)] = 0.4
    daily_sd: Annotated[float, Rule(ge=0, le=0.5)] = 0.15


@dataclass(frozen=True, kw_only=True)
class BuildingConfig:
    building: BuildingSpec
    output: Path = Path("sim-output")
    buses: Annotated[tuple[BusSpec, ...], Rule(min_length=1)]
    devices: Annotated[tuple[DeviceSpec, ...], Rule(min_length=1)]
    faults: tuple[ScheduledFault, ...] = ()
    apartments: ApartmentsSpec | None = None


def utc_epoch(moment: dt.datetime) -> float:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.timestamp()


def iso(epoch_s: float) -> str:
    return dt.datetime.fromtimestamp(epoch_s, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def load_building_config(path: Path) -> BuildingConfig:
    """Read and validate a building file; relative paths are relative to it."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise RetrofitError(f"{path}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise RetrofitError(f"{path}: not valid YAML: {exc}") from None
    return parse_building_config(raw, path.absolute().parent, str(path))


def parse_building_config(raw: object, base: Path, origin: str = "building config") -> BuildingConfig:
    try:
        config: BuildingConfig = validate(BuildingConfig, raw)
    except Invalid as exc:
        problems = "; ".join(f"{dotted(p.loc)}: {_bus_words(p)}" for p in exc.problems)
        raise RetrofitError(f"{origin}: {problems}") from None
    def resolve(path: Path) -> Path:
        return path if path.is_absolute() else base / path

    buses = tuple(replace(b, pty=resolve(b.pty)) if isinstance(b, RtuBusSpec | MbusBusSpec | WmbusBusSpec) else b
                  for b in config.buses)
    config = replace(config, output=resolve(config.output), buses=buses)
    if config.apartments is not None:  # a relative key file goes with the run's output
        keys = config.apartments.keys
        config = replace(config, apartments=replace(
            config.apartments, keys=keys if keys.is_absolute() else config.output / keys))
    _cross_check(config, origin)
    return config


def _bus_words(problem: Problem) -> str:
    """'unknown type' is clearer as 'unknown bus type' (and 'model' as 'device model')."""
    if problem.kind == "tag_unknown":
        return problem.message.replace("unknown type", "unknown bus type", 1).replace(
            "unknown model", "unknown device model", 1)
    return problem.message


def _cross_check(config: BuildingConfig, origin: str) -> None:
    problems = []
    bus_ids = [b.id for b in config.buses]
    device_ids = [d.id for d in config.devices]
    for ids, what in ((bus_ids, "bus"), (device_ids, "device")):
        for duplicate in sorted({i for i in ids if ids.count(i) > 1}):
            problems.append(f"duplicate {what} id {duplicate!r}")
    mbus_buses = {b.id for b in config.buses if isinstance(b, MbusBusSpec)}
    mbus_devices = {d.id for d in config.devices if d.bus in mbus_buses}
    seen: set[tuple[str, int]] = set()
    for device in config.devices:
        if device.bus in mbus_buses and device.model != "heat":
            problems.append(f"device {device.id}: only heat meters are simulated on an M-Bus line "
                            f"({device.bus}); this one is a {device.model} model")
        if device.bus not in bus_ids:
            problems.append(f"device {device.id}: unknown bus {device.bus!r}; buses: {', '.join(bus_ids)}")
        if (device.bus, device.address) in seen:
            problems.append(f"device {device.id}: address {device.address} is used twice on bus {device.bus}")
        seen.add((device.bus, device.address))
    radio_buses = [b.id for b in config.buses if isinstance(b, WmbusBusSpec)]
    for device in config.devices:
        if device.bus in radio_buses:
            problems.append(f"device {device.id}: bus {device.bus} is a radio receiver; its meters are the "
                            "apartments' (the `apartments:` section), wired devices need a wired bus")
    flats = config.apartments
    if flats is not None:
        if flats.bus not in radio_buses:
            problems.append(f"apartments.bus: {flats.bus!r} is no wmbus bus"
                            + (f"; wmbus buses: {', '.join(radio_buses)}" if radio_buses else
                               "; add one, e.g. {id: radio, type: wmbus, stick: im871a, pty: ttyR1}"))
        heat_ids = [d.id for d in config.devices if isinstance(d, HeatMeterSpec)]
        if flats.heat_meter not in heat_ids:
            problems.append(f"apartments.heat_meter: {flats.heat_meter!r} is no heat meter"
                            + (f"; heat meters: {', '.join(heat_ids)}" if heat_ids else ""))
    for bus_id in radio_buses:
        if flats is None or flats.bus != bus_id:
            problems.append(f"bus {bus_id}: no meters transmit to it; give `apartments:` with bus: {bus_id}")
    pv_ids = [d.id for d in config.devices if isinstance(d, PvInverterSpec)]
    for device in config.devices:
        if isinstance(device, ElectricityMeterSpec) and device.pv is not None and device.pv not in pv_ids:
            problems.append(f"device {device.id}: pv: {device.pv!r} is no pv device"
                            + (f"; pv devices: {', '.join(pv_ids)}" if pv_ids else ""))
    try:
        ZoneInfo(config.building.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        problems.append(f"building.timezone: unknown time zone {config.building.timezone!r} "
                        "(an IANA name such as Europe/Warsaw)")
    step = config.building.step
    if not (step >= 1 and 3600 % step == 0):
        problems.append(f"building.step: {step:g} s must divide an hour (60s, 5m, 15m ...)")
    elif utc_epoch(config.building.start) % step:
        problems.append("building.start: must be a multiple of building.step after midnight")
    for bus in config.buses:
        if isinstance(bus, MbusBusSpec) and bus.faults and "busy" in bus.faults.rates:
            problems.append(f"bus {bus.id}: faults.rates: busy is a Modbus exception response; an M-Bus "
                            f"meter has none (use {', '.join(MBUS_FAULTS)})")
    for device in config.devices:
        if device.bus in mbus_buses:
            problems.extend(_mbus_device_bounds(device))
    for index, fault in enumerate(config.faults):
        where = f"faults[{index}] ({fault.fault})"
        needs_device = fault.fault in ("offline", "counter_reset", "meter_swap", "rollover")
        if needs_device and fault.device not in device_ids:
            problems.append(f"{where}: device: give one of {', '.join(device_ids)}")
        if fault.fault in ("bus_down", "noisy") and fault.bus not in bus_ids:
            problems.append(f"{where}: bus: give one of {', '.join(bus_ids)}")
        if fault.fault in ("offline", "bus_down", "noisy") and fault.for_ is None:
            problems.append(f"{where}: for: how long (simulated), e.g. 6h")
        if fault.fault == "noisy" and not fault.rates:
            problems.append(f"{where}: rates: e.g. {{crc: 0.2, silent: 0.1}}")
        if fault.fault == "noisy" and fault.bus in mbus_buses and "busy" in (fault.rates or {}):
            problems.append(f"{where}: rates: busy is a Modbus exception response; an M-Bus meter has none "
                            f"(use {', '.join(MBUS_FAULTS)})")
        if fault.fault == "rollover" and fault.point is None:
            problems.append(f"{where}: point: the counter that wraps")
        if fault.fault in ("counter_reset", "meter_swap", "rollover") and fault.device in mbus_devices:
            problems.append(f"{where}: {fault.device} is on an M-Bus line; counter faults are simulated on "
                            "Modbus meters only")
    if problems:
        raise RetrofitError(f"{origin}: " + "; ".join(problems))


# Room for what a run adds: a start value this far below the telegram's limit.
MBUS_COUNTER_START_MAX = 2_000_000  # kWh and m3: 2,147,483 fit in a 32-bit count of Wh or litres


def _mbus_device_bounds(device: DeviceSpec) -> list[str]:
    """What an M-Bus heat meter's telegrams can carry (simulators/mbus_meter.py)."""
    problems = []
    if device.serial is not None and device.serial > MAX_IDENTIFICATION:
        problems.append(f"device {device.id}: serial {device.serial} does not fit an M-Bus identification "
                        f"number (8 digits, at most {MAX_IDENTIFICATION})")
    for key, unit, carried in (("energy_start", "kWh", "energy in Wh"), ("volume_start", "m3", "volume in litres")):
        value = getattr(device, key, 0.0)
        if value > MBUS_COUNTER_START_MAX:
            problems.append(f"device {device.id}: {key} {value:g} {unit} is too large for an M-Bus meter: its "
                            f"telegram carries {carried} as a 32-bit integer (at most {MAX_INT32 // 1000:,} "
                            f"{unit}); give at most {MBUS_COUNTER_START_MAX:,} {unit}, leaving room for the run")
    return problems
