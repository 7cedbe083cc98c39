"""Request planning: which register blocks to read so a cycle costs least bus time.

Pure code. Points of one table, sorted by address, are partitioned into
consecutive runs; each run becomes one read request covering its span. The
partition is chosen by dynamic programming over the link's cost model, so it
is the cheapest one possible under the limits: at most ``max_registers`` per
request, never across a declared or learned hole. Reading a few unused
registers between two points is cheaper than a second request when the
per-request overhead (frame headers, inter-frame silence, turnaround) exceeds
the cost of the extra bytes, which the cost model decides, not a fixed gap.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from drivers.modbus.profile import ModbusPoint, Table

MODBUS_MAX_REGISTERS = 125  # protocol limit for function codes 3 and 4


@dataclass(frozen=True)
class LinkCost:
    """Time a request costs on a link: fixed part plus a part per register."""

    per_request_s: float
    per_register_s: float

    @classmethod
    def rtu(cls, baudrate: int, parity: str = "N", stopbits: int = 1, turnaround_s: float = 0.005) -> LinkCost:
        bits = 1 + 8 + (0 if parity == "N" else 1) + stopbits
        char = bits / baudrate
        # Modbus RTU: 3.5 character times of silence end a frame; above
        # 19200 baud the spec fixes it at 1.75 ms.
        silence = 3.5 * char if baudrate <= 19200 else 0.00175
        request_chars = 8  # address, function, start(2), count(2), crc(2)
        response_header_chars = 5  # address, function, byte count, crc(2)
        return cls(
            per_request_s=(request_chars + response_header_chars) * char + 2 * silence + turnaround_s,
            per_register_s=2 * char,
        )

    @classmethod
    def tcp(cls, round_trip_s: float = 0.002) -> LinkCost:
        # 12-byte request, 9-byte response header over a LAN: the round trip
        # dominates; the bytes of a register are nearly free.
        return cls(per_request_s=round_trip_s, per_register_s=2 * 8 / 100e6)

    def request_time(self, count: int) -> float:
        return self.per_request_s + count * self.per_register_s


@dataclass(frozen=True)
class ReadRequest:
    table: Table
    start: int
    count: int
    points: tuple[ModbusPoint, ...]

    @property
    def end(self) -> int:
        return self.start + self.count


Hole = tuple[Table, int, int]  # table, first register, first register after


def _crosses_hole(table: str, start: int, end: int, holes: Sequence[Hole]) -> bool:
    return any(t == table and start < h_end and h_start < end for t, h_start, h_end in holes)


def plan_requests(
    points: Iterable[ModbusPoint],
    cost: LinkCost,
    max_registers: int = MODBUS_MAX_REGISTERS,
    holes: Sequence[Hole] = (),
) -> tuple[ReadRequest, ...]:
    """The cheapest set of requests that reads every point exactly as declared."""
    limit = min(max_registers, MODBUS_MAX_REGISTERS)
    requests: list[ReadRequest] = []
    by_table: dict[Table, list[ModbusPoint]] = {}
    for point in points:
        if point.count > limit:
            raise ValueError(f"point {point.name} needs {point.count} registers, limit is {limit}")
        by_table.setdefault(point.table, []).append(point)
    for table in sorted(by_table):
        ordered = sorted(by_table[table], key=lambda p: (p.address, p.count))
        requests.extend(_plan_table(table, ordered, cost, limit, holes))
    return tuple(requests)


def _plan_table(
    table: Table, ordered: list[ModbusPoint], cost: LinkCost, limit: int, holes: Sequence[Hole]
) -> list[ReadRequest]:
    n = len(ordered)
    best = [0.0] + [float("inf")] * n  # best[j]: cheapest plan for the first j points
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        end = 0
        for i in range(j, 0, -1):  # run ordered[i-1 .. j-1]
            start = ordered[i - 1].address
            end = max(end, ordered[i - 1].end)
            span = end - start
            if span > limit:
                break
            if i < j and _crosses_hole(table, start, end, holes):
                break
            total = best[i - 1] + cost.request_time(span)
            if total < best[j]:
                best[j], cut[j] = total, i - 1
    runs: list[ReadRequest] = []
    j = n
    while j > 0:
        i = cut[j]
        members = tuple(ordered[i:j])
        start = members[0].address
        end = max(p.end for p in members)
        runs.append(ReadRequest(table, start, end - start, members))
        j = i
    runs.reverse()
    return runs


def group_by_interval(points: tuple[ModbusPoint, ...], device_interval: float,
                      overrides: dict[str, float] | None = None) -> dict[float, tuple[ModbusPoint, ...]]:
    """Points by the interval they are read at: the device config's
    per-point override, else the device's own, slowed to the profile
    point's ``interval`` where it has one (a profile never makes a point
    read more often than its device)."""
    groups: dict[float, list[ModbusPoint]] = {}
    for point in points:
        interval = (overrides or {}).get(point.name) or max(device_interval, point.interval or 0.0)
        groups.setdefault(float(interval), []).append(point)
    return {interval: tuple(members) for interval, members in sorted(groups.items())}


def gaps_inside(request: ReadRequest) -> list[Hole]:
    """Register ranges a merged request reads that belong to no point.

    When a device answers a merged request with "illegal data address", these
    are the suspects; declaring them holes makes the planner split there.
    """
    covered = sorted((p.address, p.end) for p in request.points)
    gaps: list[Hole] = []
    reach = request.start
    for start, end in covered:
        if start > reach:
            gaps.append((request.table, reach, start))
        reach = max(reach, end)
    return gaps
