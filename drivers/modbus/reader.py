"""One Modbus device as the agent's pipeline polls it.

A device's points are read in groups, one per interval (energy counters
every 15 minutes, power every 10 s); each group has its read plan, made once
and made again only when the device refuses a merged block. A poll reads
the group's blocks in turn, stamps each answer with the moment it came and
decodes it; the meter's serial number is read at start, hourly, and first
thing when a silent device answers again (a swap takes the meter offline).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

from drivers.core.errors import BusError, ExceptionResponse, MismatchedReply
from drivers.core.protocol import Answer, Clock, PointInfo, Readout
from drivers.modbus.codec import Decoder
from drivers.modbus.plan import Hole, LinkCost, ReadRequest, gaps_inside, group_by_interval, plan_requests
from drivers.modbus.profile import ModbusPoint, ModbusProfile
from drivers.modbus.values import AnswerDecoder, with_exponent_registers

if TYPE_CHECKING:
    from drivers.modbus.link import RegisterReader

ILLEGAL_DATA_ADDRESS = 2
IDENTITY_EVERY_S = 3600.0

_INT_BITS = {"int16": 15, "uint16": 16, "int32": 31, "uint32": 32, "int64": 63, "uint64": 64}


@cache
def point_info(point: ModbusPoint) -> PointInfo:
    """A point's resolution for the platform, and a counter's physical
    limits: the width it wraps at, one step of its resolution. One per
    profile point, shared by every device of that profile."""
    bits = _INT_BITS.get(point.type)
    scale = float(point.scale)
    return PointInfo(point.name, point.unit, point.kind, point.resolution_meta(),
                     slack=abs(scale) if bits else 0.0, rollover_at=(2 ** bits) * scale if bits else None)


@dataclass
class PollGroup:
    """Points of one device read together at one interval, and their plan."""

    interval: float
    points: tuple[ModbusPoint, ...]
    plan: tuple[ReadRequest, ...] = ()


class ModbusDevice:
    """One device's poll groups, read plans, decoders and identity register."""

    identity_confirm = 1  # a serial number read from the meter is its own: a new one is a swap at once

    def __init__(self, link: RegisterReader, device_id: str, unit: int, interval: float, profile: ModbusProfile,
                 points: tuple[ModbusPoint, ...], cost: LinkCost, intervals: dict[str, float] | None = None,
                 where: str = "") -> None:
        self.link = link
        self.device_id = device_id
        self.unit = unit
        self.interval = interval
        self.profile = profile
        self.cost = cost
        self.where = where or f"unit {unit}"
        self.learned_holes: list[Hole] = []
        self.decoder = AnswerDecoder(points)
        self.points = {p.name: point_info(p) for p in points}
        self.groups = [PollGroup(group_interval, with_exponent_registers(members))
                       for group_interval, members in group_by_interval(points, interval, intervals).items()]
        self.intervals = tuple(group.interval for group in self.groups)
        self.identity_due = 0.0  # monotonic time of the next identity read
        identity = profile.identity
        self._identity_decoder: Decoder | None = identity.decoder() if identity is not None else None
        self._pause = profile.workarounds.pause_between_requests
        self.replan()

    @property
    def plan(self) -> tuple[ReadRequest, ...]:
        """Every request of every group (for logs and tests)."""
        return tuple(r for group in self.groups for r in group.plan)

    @property
    def requests(self) -> int:
        return len(self.plan)

    def replan(self) -> None:
        holes = tuple(self.profile.workarounds.holes) + tuple(self.learned_holes)
        for group in self.groups:
            group.plan = plan_requests(group.points, self.cost, self.profile.workarounds.max_registers, holes)

    def identity_lost(self) -> None:
        self.identity_due = 0.0

    def _identity(self) -> str:
        """The meter's serial number when it is due, else ''. Raises BusError
        when the device does not answer."""
        register = self.profile.identity
        if register is None or self._identity_decoder is None or time.monotonic() < self.identity_due:
            return ""
        try:
            words = self.link.read(register.table, self.unit, register.address, register.count)
        except ExceptionResponse:
            self.identity_due = time.monotonic() + IDENTITY_EVERY_S  # this unit has no serial there
            return ""
        self.identity_due = time.monotonic() + IDENTITY_EVERY_S
        return str(self._identity_decoder(words))

    def read(self, group: int, clock: Clock) -> Readout:
        """Read every planned block of one group; decode what was read."""
        readout = Readout()
        try:
            readout.meter = self._identity()
        except BusError as exc:
            readout.error = exc  # silent: one timeout, as for any first request
            return readout
        poll_group = self.groups[group]
        requests = list(poll_group.plan)
        answers: list[tuple[ReadRequest, bytes, int, int | None]] = []
        split_once = False
        first = True
        while requests:
            request = requests.pop(0)
            if self._pause and not first:
                time.sleep(self._pause)  # a device that needs a breath between requests (workarounds)
            first = False
            try:
                answer = self.link.read_bytes(request.table, self.unit, request.start, request.count)
            except ExceptionResponse as exc:
                if exc.code == ILLEGAL_DATA_ADDRESS and len(request.points) > 1 and not split_once:
                    # Some register inside the merged block does not exist on
                    # this device: never read across those gaps again.
                    split_once = True
                    self.learned_holes.extend(gaps_inside(request) or [
                        (request.table, p.end, p.end) for p in request.points[:-1]])
                    self.replan()
                    readout.notes.append(("device.plan_split", {
                        "table": request.table, "start": request.start, "count": request.count,
                        "requests": len(self.plan)}))
                    retry = [r for r in poll_group.plan if r.start < request.end and request.start < r.end
                             and r.table == request.table]
                    requests = retry + requests
                    continue
                readout.error = exc
                continue  # the device answers; other blocks may still be fine
            except MismatchedReply as exc:
                readout.error = exc
                continue  # never a value; the device answers quickly, so the other blocks are still asked
            except BusError as exc:
                readout.error = exc
                break  # no answer: the rest would only cost more timeouts
            stamp, mono = clock.stamp()
            answers.append((request, answer, stamp, mono))
        decoder = self.decoder
        decoder.take_exponents((request, answer) for request, answer, _, _ in answers)
        decoded: list[Answer] = [(stamp, mono, decoder.values(request, answer))
                                 for request, answer, stamp, mono in answers]
        readout.answers = decoded
        return readout
