"""Radio meters as the pipeline hears them: a Listener over one receiver.

Nobody polls a radio meter. The listener takes what the receiver heard,
drops a telegram heard again (a repeater's copy, a retransmission), opens
it with the key ring and hands it over as ``Heard(sender, device, Readout)``:
the sender is the meter's identification (the long transport header's when
a radio adapter sends for a meter), the device the configured one whose
address that is, or None for a meter nobody configured.

A telegram that cannot be opened (no key, wrong key, a security mode this
agent does not implement) is a Readout with an ``error`` and no values,
and one event (``wmbus.no_key``, ``wmbus.wrong_key``,
``wmbus.unsupported_security``) when a meter's state changes to it, not
per telegram. Keys never leave the key ring: no event, error or repr
carries one.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping, Sequence

from drivers.core.errors import BusError
from drivers.core.protocol import Clock, Heard, PointInfo, Readout
from drivers.mbus.points import point_steps, point_values
from drivers.mbus.profile import MbusProfile
from drivers.mbus.telegram import medium_name
from drivers.wmbus.compact import KNOWN_FORMATS, FormatBook
from drivers.wmbus.decode import WmbusResult, decode_wmbus
from drivers.wmbus.keys import KeyRing
from drivers.wmbus.link import RepeatFilter
from drivers.wmbus.received import Received
from drivers.wmbus.stick import Receiver
from drivers.wmbus.transport import SecurityState

RSSI_POINT = "rssi"
SECURITY_EVENTS = {
    SecurityState.NO_KEY: "wmbus.no_key",
    SecurityState.WRONG_KEY: "wmbus.wrong_key",
    SecurityState.UNSUPPORTED: "wmbus.unsupported_security",
}


class CannotOpen(BusError):
    """A telegram came but could not be opened: ``state`` says why (no_key, wrong_key, unsupported)."""

    def __init__(self, message: str, state: str) -> None:
        self.state = state
        super().__init__(message)


def security_problem(meter: str, result: WmbusResult) -> CannotOpen | None:
    """Why this meter's telegram gave no values, for the technician; None when it opened."""
    security = result.security
    mode = security.mode
    if security.state is SecurityState.NO_KEY:
        return CannotOpen(
            f"meter {meter} sends encrypted telegrams (security mode {mode}) and the key file has no key for "
            f"it: add a line '{meter};<its 32 hex digit key>' to the key file (credential wmbus-keys) and "
            "restart", "no_key")
    if security.state is SecurityState.WRONG_KEY:
        return CannotOpen(
            f"meter {meter}: the key file's key for it does not open its telegrams (security mode {mode}: "
            f"{security.reason or 'the check failed'}); compare the key with the vendor's list for {meter}",
            "wrong_key")
    if security.state is SecurityState.UNSUPPORTED:
        return CannotOpen(
            f"meter {meter} protects its telegrams in a way this agent cannot open (security mode {mode}: "
            f"{security.reason or 'not implemented'})", "unsupported_security")
    return None


class RadioMeter:
    """One configured radio meter: its identification, profile and how often it sends."""

    requests = 0  # nothing is ever sent to a radio meter
    identity_confirm = 1  # the sender is the address: a telegram names its meter

    def __init__(self, device_id: str, meter: str, interval: float, profile: MbusProfile,
                 points: Sequence[str] | None = None, rssi: bool = True) -> None:
        self.device_id = device_id
        self.meter = meter
        self.profile = profile
        self.intervals = (interval,)
        self.where = f"radio meter {meter}"
        self._wanted = frozenset(points) if points is not None else None
        self._rssi = rssi and (self._wanted is None or RSSI_POINT in self._wanted)
        # A choosing profile (oms-auto): its points are its candidates', the choice is per header.
        self._chosen: dict[tuple[str, int, str], MbusProfile | None] = {}
        self.points: dict[str, PointInfo] = {p.name: PointInfo(p.name, p.unit or "", p.kind)
                                             for p in profile.points if self._wants(p.name)}
        if self._rssi:
            self.points[RSSI_POINT] = PointInfo(RSSI_POINT, "dBm", "gauge")
        self.problem: str | None = None  # the security state last told ("no_key", ...), None when readable

    def _wants(self, name: str) -> bool:
        return self._wanted is None or name in self._wanted

    def readout(self, result: WmbusResult, received: Received, stamp: int, mono: int | None) -> Readout:
        problem = security_problem(self.meter, result)
        if problem is not None:
            notes: list[tuple[str, dict[str, object]]] = []
            if problem.state != self.problem:
                self.problem = problem.state
                notes.append((f"wmbus.{problem.state}", {"meter": self.meter, "security_mode": result.security.mode,
                                                          "error": str(problem)}))
            return Readout(meter=self.meter, error=problem, notes=notes)
        profile = self._profile_for(result)
        if profile is None:
            return self._no_profile(result)
        self.problem = None
        if result.error is not None:
            return Readout(meter=self.meter, error=BusError(f"{self.where}: {result.error}"))
        records = result.records
        steps = point_steps(profile, records)
        points: dict[str, PointInfo] = {}
        values: list[tuple[PointInfo, float | int | None]] = []
        for name, value, unit, kind in point_values(profile, records):
            if not self._wants(name):
                continue
            step = steps.get(name)
            info = PointInfo(name, unit, kind) if step is None else PointInfo(
                name, unit, kind, step.resolution(), slack=float(step.step or 0),
                rollover_at=float(step.wraps_at) if step.wraps_at is not None else None)
            points[name] = info
            values.append((info, value))
        if self._rssi and received.rssi_dbm is not None:
            values.append((self.points[RSSI_POINT], received.rssi_dbm))
        return Readout([(stamp, mono, values)], meter=self.meter,
                       points={name: info for name, info in points.items() if name in steps})

    def _profile_for(self, result: WmbusResult) -> MbusProfile | None:
        """The configured profile, or the one a choosing profile picks for this header (once per header)."""
        if not self.profile.candidates:
            return self.profile
        address = result.meter or (result.link.address if result.link is not None else None)
        if address is None:
            return None
        header = (address.manufacturer, address.version, medium_name(address.device_type))
        if header not in self._chosen:
            self._chosen[header] = self.profile.choose(*header)
        return self._chosen[header]

    def _no_profile(self, result: WmbusResult) -> Readout:
        address = result.meter or (result.link.address if result.link is not None else None)
        header = ("?", 0, "?") if address is None else (address.manufacturer, address.version,
                                                         medium_name(address.device_type))
        problem = BusError(
            f"meter {self.meter} ({header[0]}, version {header[1]}, device type {header[2]}) fits none of the "
            f"profiles {self.profile.name} chooses from ({', '.join(self.profile.choose_from)}): name its profile "
            "in the config (`retrofit-agent scan --wmbus` suggests one)")
        notes: list[tuple[str, dict[str, object]]] = []
        if self.problem != "no_profile":
            self.problem = "no_profile"
            notes.append(("wmbus.no_profile", {"meter": self.meter, "manufacturer": header[0], "version": header[1],
                                               "device_type": header[2], "error": str(problem)}))
        return Readout(meter=self.meter, error=problem, notes=notes)


class RadioListener:
    """A receiver, the key ring, the repeat filter and the configured meters."""

    idle_reconnects = 0
    floods = 0

    def __init__(self, receiver: Receiver, meters: Mapping[str, RadioMeter], keys: KeyRing,
                 repeats: RepeatFilter | None = None) -> None:
        self.receiver = receiver
        self._meters = dict(meters)
        self._keys = keys
        self._repeats = repeats or RepeatFilter()
        self._formats = FormatBook(KNOWN_FORMATS)  # compact frames: formats the full frames showed
        self._pending: deque[Received] = deque()
        self.telegrams = 0  # every telegram the receiver handed over
        self.broken = 0  # link layer unreadable (CRC, length)
        self.compact = 0  # compact frames: their records need an earlier full frame
        self.port = receiver.where

    def __repr__(self) -> str:
        return f"RadioListener({self.receiver.where}, {len(self._meters)} meters, {self._keys!r})"

    def key_meters(self) -> list[str]:
        """The meters the key ring has keys for (never a key)."""
        return self._keys.meters()

    @property
    def repeats(self) -> int:
        return self._repeats.dropped

    def receive(self, timeout: float, clock: Clock) -> Heard | None:
        deadline = time.monotonic() + timeout
        while True:
            while self._pending:
                heard = self._take(self._pending.popleft(), clock)
                if heard is not None:
                    return heard
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self._pending.extend(self.receiver.read(left))

    def _take(self, received: Received, clock: Clock) -> Heard | None:
        self.telegrams += 1
        stamp, mono = clock.stamp()
        result = decode_wmbus(received.telegram, self._keys, received.frame_format, self._formats,
                              received.crcs)
        if result.link is None:
            self.broken += 1
            return None
        if self._repeats.is_repeat(result.link, time.monotonic()):
            return None
        address = result.meter
        sender = address.identification if address is not None else result.link.address.identification
        meter = self._meters.get(sender)
        if meter is None:
            return Heard(sender, None)
        if result.awaiting_format:
            # Heard, alive, its values waiting for the meter's next full frame
            # (after a restart): no values, and no silence or failure either.
            self.compact += 1
            return Heard(sender, meter.device_id, Readout(meter=meter.meter))
        return Heard(sender, meter.device_id, meter.readout(result, received, stamp, mono))

    def close(self) -> None:
        self._pending.clear()
        self.receiver.close()
