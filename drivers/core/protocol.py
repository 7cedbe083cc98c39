"""What a protocol package gives the agent, and what the agent gives back.

A protocol (Modbus, wired M-Bus, wireless M-Bus, ...) is a package under
drivers/ whose ``protocol.py`` defines one :class:`BusProtocol`;
drivers/registry.py lists them. The agent never names a protocol: it asks
the registry which one a bus's ``type`` belongs to and works through the
types below.

A protocol's source for one bus is one of two kinds:

- :class:`Polled`: the agent's bus worker keeps every device's schedule and
  asks the device's reader for a :class:`Readout` when a poll is due
  (Modbus, wired M-Bus: the master asks, the meter answers);
- :class:`Pushed`: the devices send on their own; the bus worker waits on
  the :class:`Listener`, which hands over what it heard, device by device
  (wireless M-Bus: a radio stick hears meters transmit every few minutes).

Either way, what a device said comes back as a Readout: values stamped with
the moment they came, the meter's identification when the reply carried it,
and what the reply told about its points (their step, where a counter wraps).
Everything a source needs beyond that (schedule or silence, health, the
counter guard, identity and swaps, the clock, resolutions for the platform)
is the agent's pipeline, the same for every protocol.
"""

from __future__ import annotations

import typing
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import ClassVar, Generic, TypeVar

from drivers.core.device import DeviceConfig
from drivers.core.errors import BusError

if typing.TYPE_CHECKING:
    import argparse

Value = float | int | str | None
Resolution = Mapping[str, float | str]  # {"step": 0.001} or {"float": "float32"} (docs/payload.md)


class Clock(typing.Protocol):
    """The agent's clock, as a reader stamps an answer with it."""

    def stamp(self) -> tuple[int, int | None]:
        """Wall-clock ms now, and monotonic ms while the wall clock is not trusted."""
        ...


class Point(typing.Protocol):
    """What the pipeline reads of a value's point."""

    @property
    def name(self) -> str: ...

    @property
    def unit(self) -> str: ...

    @property
    def kind(self) -> str: ...


@dataclass(frozen=True, slots=True)
class PointInfo:
    """What is known of a point apart from its values: enough for the
    counter guard (one step of slack, where it wraps) and for the platform
    (its resolution)."""

    name: str
    unit: str
    kind: str  # "counter" or "gauge"
    resolution: Resolution | None = None
    slack: float = 0.0  # one step: a counter may tick once more than its rate allows
    rollover_at: float | None = None  # where the register wraps to zero


# One answer: when it came (wall ms, monotonic ms while the clock is not
# trusted) and each point's value in it.
Answer = tuple[int, int | None, Sequence[tuple[Point, Value]]]


@dataclass(slots=True)
class Readout:
    """What one poll of a device (or one heard transmission) gave."""

    answers: list[Answer] = field(default_factory=list)
    meter: str = ""  # the meter's identification, when this reply carried it
    error: BusError | None = None  # the failure of a poll that got part or nothing
    points: Mapping[str, PointInfo] | None = None  # what the reply said of its points (an M-Bus VIF's step)
    notes: list[tuple[str, dict[str, object]]] = field(default_factory=list)  # state changes to log, as events


class Link(typing.Protocol):
    """A bus's connection, owned by its bus worker."""

    @property
    def idle_reconnects(self) -> int: ...  # the peer had closed an idle connection: asked again on a new one

    @property
    def floods(self) -> int: ...  # connections dropped because the peer sent far more than any answer

    def close(self) -> None: ...


class Device(typing.Protocol):
    """One configured device, as its protocol reads it."""

    @property
    def device_id(self) -> str: ...

    @property
    def where(self) -> str: ...  # for messages: "unit 1 on tcp://10.0.0.5:502"

    @property
    def intervals(self) -> Sequence[float]: ...  # polled: one per poll group; pushed: how often it sends

    @property
    def points(self) -> Mapping[str, PointInfo]: ...  # known before the first readout

    @property
    def identity_confirm(self) -> int: ...  # readouts a new meter id must give in a row before it is a swap

    @property
    def requests(self) -> int: ...  # requests one round of its polls sends (for the log)


class PolledDevice(Device, typing.Protocol):
    def read(self, group: int, clock: Clock) -> Readout:
        """Poll one group (an index into ``intervals``) now; never raises BusError."""
        ...

    def identity_lost(self) -> None:
        """The device was silent: it may be another meter when it answers."""
        ...


@dataclass(frozen=True)
class Heard:
    """One transmission a listener received."""

    sender: str  # as the protocol names senders (a wireless M-Bus meter's identification)
    device_id: str | None  # the configured device it is; None: nobody on this bus
    readout: Readout | None = None


class Listener(Link, typing.Protocol):
    def receive(self, timeout: float, clock: Clock) -> Heard | None:
        """The next transmission, or None after ``timeout`` seconds of quiet.
        Raises BusError when the receiver itself fails (it is then reopened)."""
        ...


@dataclass
class Polled:
    link: Link
    devices: Sequence[PolledDevice]


@dataclass
class Pushed:
    listener: Listener
    devices: Sequence[Device]


Source = Polled | Pushed


@dataclass(frozen=True)
class BusLoad:
    """Wire time a bus needs per second of its schedule (`check`)."""

    bus: str
    busy_fraction: float
    requests_per_hour: float
    worst_poll_s: float
    assumption: str = ""  # what an estimate rests on, where the wire time is not known exactly


class BusRecord(typing.Protocol):
    """A bus section of the config, whatever its protocol."""

    @property
    def id(self) -> str: ...

    @property
    def type(self) -> str: ...

    def describe(self) -> str:
        """Where the bus is, for `check`: "/dev/ttyUSB0 9600 8N1"."""
        ...


class ProfilePoint(typing.Protocol):
    @property
    def name(self) -> str: ...

    @property
    def kind(self) -> str: ...


class DeviceProfile(typing.Protocol):
    """A device profile, whatever its protocol."""

    @property
    def name(self) -> str: ...

    @property
    def protocol(self) -> str: ...

    @property
    def manufacturer(self) -> str: ...

    @property
    def model(self) -> str: ...

    @property
    def source(self) -> str: ...

    @property
    def origin(self) -> str: ...

    @property
    def points(self) -> Sequence[ProfilePoint]: ...


class Commissioning(ABC):
    """A protocol's part of `probe` and `scan`, and its own tools."""

    # The option that names this protocol on an ad hoc command line
    # ("--mbus"); None for the protocol a bus without such an option is.
    flag: str | None = None
    flag_help: str = ""
    # The profile an ad hoc probe takes when none is given.
    default_profile: str | None = None
    # What --address takes ("unit id 1..247").
    address_help: str = ""
    # Defaults of the shared bus options, for their help ("9600 (Modbus)").
    option_defaults: ClassVar[Mapping[str, str]] = MappingProxyType({})

    def add_arguments(self, verb: str, parser: argparse.ArgumentParser) -> None:  # noqa: B027 - a hook: none by default
        """This protocol's own options of `probe` or `scan`."""

    def check_arguments(self, verb: str, args: argparse.Namespace, chosen: bool) -> None:  # noqa: B027 - a hook
        """Raise UsageError for an option of this protocol given where it
        means nothing (``chosen``: this protocol is the one the command uses)."""

    @abstractmethod
    def parse_address(self, text: str) -> int | str:
        """A device address from the command line; UsageError when it is none."""

    @abstractmethod
    def adhoc_bus(self, verb: str, args: argparse.Namespace, profile: DeviceProfile | None) -> BusRecord:
        """The bus the command line describes; UsageError when it does not say where."""

    @abstractmethod
    def probe(self, bus: BusRecord, address: int | str, profile: DeviceProfile, points: Sequence[str] | None) -> bool:
        """Read one device once and print what it said; True when every point came."""

    @abstractmethod
    def scan(self, args: argparse.Namespace, bus: BusRecord | None) -> bool:
        """Find the devices that answer on a bus and print them; True when any did."""

    def with_timeout(self, bus: BusRecord, timeout: float) -> BusRecord:
        """The bus with another answer timeout (a scan may wait less than polling)."""
        return bus

    def tools(self) -> Sequence[Tool]:
        """Commands of this protocol's own (`mbus decode`)."""
        return ()


@dataclass(frozen=True)
class Tool:
    """A command of a protocol's own: `retrofit-agent NAME ACTION ...`."""

    name: str
    help: str
    add_arguments: Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]
    run: Callable[[argparse.Namespace], int]  # the exit code (os.EX_*)


B = TypeVar("B")
P = TypeVar("P")


class BusProtocol(ABC, Generic[B, P]):
    """One protocol: its config records, profiles, source, load and commissioning.

    ``B`` is its bus record type (a union when it has several), ``P`` its
    profile type. Nothing heavy is imported where this is defined: a
    gateway loads a protocol's link and decoder only when a bus uses it."""

    name: str  # its profiles say `protocol: NAME`
    title: str  # for people: "Modbus", "M-Bus"
    buses: tuple[type, ...]  # its bus records, each with a Literal `type` of its own
    profile: type | None  # its profile record; None when its devices take another protocol's profiles
    takes: tuple[str, ...]  # the protocols whose profiles its devices take (usually just its own)
    commissioning: Commissioning | None = None

    @abstractmethod
    def check_address(self, address: object) -> str | None:
        """What is wrong with a device address on this protocol's buses, or None."""

    @abstractmethod
    def open(self, bus: B, devices: Sequence[tuple[DeviceConfig, P]]) -> Source:
        """The source for a bus: its link (opened on first use) and its devices."""

    @abstractmethod
    def load(self, bus: B, devices: Sequence[tuple[DeviceConfig, P]]) -> BusLoad:
        """Wire time the bus needs for its devices' schedule."""

    def notes(self, bus: B, device: DeviceConfig, profile: P) -> list[str]:
        """What `check` should tell about a device beyond the config's validity."""
        return []

    @abstractmethod
    def point_names(self, device: DeviceConfig, profile: P) -> tuple[str, ...]:
        """The points a device is read for (`check`'s summary)."""

    @abstractmethod
    def show_profile(self, profile: P) -> list[str]:
        """`profiles show`: the profile's points, as this protocol describes them."""
