"""Planner benchmark: `python tests/bench_planner.py` (prints a table, asserts nothing).

For each bundled Modbus profile, reading all points once at 9600 baud 8N1:
requests and wire time for the planner's plan, for one request per point,
and for the optimal plan found here by an exhaustive dynamic programme of
its own. Then a simulated 9600-baud line with 10 SDM630s over a socat pty,
the simulator pacing bytes at the baud rate: the measured time of one full
poll against the wire-time limit computed from the frame sizes.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from drivers.modbus.link import serial_link  # noqa: E402
from drivers.modbus.plan import LinkCost, plan_requests  # noqa: E402
from drivers.modbus.profile import ModbusPoint  # noqa: E402
from drivers.modbus.profile import ModbusProfile as Profile  # noqa: E402
from drivers.modbus.values import with_exponent_registers  # noqa: E402
from drivers.profile import load_catalogue  # noqa: E402
from simulators.meters import SimulatedDevice  # noqa: E402
from simulators.modbus_server import ModbusRtuServer  # noqa: E402
from simulators.pty import PtyPair  # noqa: E402


def optimal_time(points: list[ModbusPoint], cost: LinkCost, limit: int) -> tuple[int, float]:
    """Exhaustive DP over every cut of the address-sorted points (per table)."""
    requests, total = 0, 0.0
    for table in sorted({p.table for p in points}):
        ordered = sorted((p for p in points if p.table == table), key=lambda p: p.address)
        n = len(ordered)
        best: list[tuple[float, int]] = [(0.0, 0)] + [(float("inf"), 0)] * n
        for j in range(1, n + 1):
            for i in range(j):
                span = max(p.end for p in ordered[i:j]) - ordered[i].address
                if span <= limit:
                    candidate = best[i][0] + cost.request_time(span)
                    if candidate < best[j][0]:
                        best[j] = (candidate, best[i][1] + 1)
        total += best[n][0]
        requests += best[n][1]
    return requests, total


def main() -> int:
    cost = LinkCost.rtu(9600)
    print(f"{'profile':18} {'points':>6} | {'planner':>16} | {'one per point':>16} | {'optimal':>16} | ratio")
    for name in load_catalogue().names():
        profile = load_catalogue().get(name)
        if not isinstance(profile, Profile):
            continue
        points = list(with_exponent_registers(profile.points))  # as the bus worker plans them
        limit = profile.workarounds.max_registers
        plan = plan_requests(points, cost, limit, profile.workarounds.holes)
        planned = sum(cost.request_time(r.count) for r in plan)
        single = sum(cost.request_time(p.count) for p in points)
        best_n, best = optimal_time(points, cost, min(limit, 125))
        print(f"{name:18} {len(points):>6} | {len(plan):>3} req {planned * 1000:7.1f} ms | "
              f"{len(points):>3} req {single * 1000:7.1f} ms | {best_n:>3} req {best * 1000:7.1f} ms | "
              f"{planned / best:.2f}")

    sdm = load_catalogue().get("eastron-sdm630")
    assert isinstance(sdm, Profile)
    with tempfile.TemporaryDirectory() as tmp, PtyPair(Path(tmp) / "m", Path(tmp) / "a") as line:
        units = {u: SimulatedDevice(sdm) for u in range(1, 11)}
        server = ModbusRtuServer(units, str(line.meter_end), 9600, pace=True).start()
        link = serial_link(str(line.agent_end), 9600, "N", 1, 8, 1.0)
        plan = plan_requests(sdm.points, cost, sdm.workarounds.max_registers)
        limit_s = 10 * sum(cost.request_time(r.count) for r in plan)
        timings = []
        for _ in range(3):
            started = time.perf_counter()
            for unit in units:
                for request in plan:
                    link.read(request.table, unit, request.start, request.count)
            timings.append(time.perf_counter() - started)
        link.close()
        server.stop()
    measured = min(timings)
    print(f"\n10 x SDM630 at 9600 baud: {len(plan) * 10} requests, wire-time limit {limit_s * 1000:.0f} ms, "
          f"measured full poll {measured * 1000:.0f} ms (best of 3), ratio {measured / limit_s:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
