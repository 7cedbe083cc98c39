"""The request planner against a brute-force optimum, and its limits."""

from __future__ import annotations

from itertools import combinations, pairwise

from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.modbus.codec import RegisterType
from drivers.modbus.plan import Hole, LinkCost, gaps_inside, plan_requests
from drivers.modbus.profile import ModbusPoint, Table


def point(address: int, kind: RegisterType = "float32", table: Table = "input") -> ModbusPoint:
    return ModbusPoint(name=f"p{table}{address}", table=table, address=address, type=kind, unit="", kind="gauge")


def brute_force(points: list[ModbusPoint], cost: LinkCost, limit: int, holes: list) -> float:
    """Cheapest partition of the sorted points into consecutive runs, by trying every cut set."""
    ordered = sorted(points, key=lambda p: (p.address, p.count))
    best = float("inf")
    for k in range(len(ordered)):
        for cuts in combinations(range(1, len(ordered)), k):
            bounds = [0, *cuts, len(ordered)]
            total = 0.0
            for a, b in pairwise(bounds):
                run = ordered[a:b]
                start, end = run[0].address, max(p.end for p in run)
                if end - start > limit or (len(run) > 1 and any(
                        h[1] < end and start < h[2] for h in holes)):
                    total = float("inf")
                    break
                total += cost.request_time(end - start)
            best = min(best, total)
    return best


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(0, 300), min_size=1, max_size=8, unique=True), st.sampled_from([9600, 2400, 0]),
       st.integers(4, 125), st.lists(st.tuples(st.integers(0, 300), st.integers(1, 20)), max_size=2))
def test_planner_is_optimal_and_respects_limits(addresses: list[int], baud: int, limit: int, raw_holes: list) -> None:
    points = [point(a) for a in sorted(addresses)]
    points = [p for i, p in enumerate(points) if i == 0 or p.address >= points[i - 1].end]  # no overlaps
    holes: list[Hole] = [("input", s, s + n) for s, n in raw_holes]
    cost = LinkCost.rtu(baud) if baud else LinkCost.tcp()
    plan = plan_requests(points, cost, limit, holes)
    assert sorted(p.name for r in plan for p in r.points) == sorted(p.name for p in points)
    for request in plan:
        assert request.count <= min(limit, 125)
        if len(request.points) > 1:
            assert not any(h[1] < request.end and request.start < h[2] for h in holes)
    total = sum(cost.request_time(r.count) for r in plan)
    assert abs(total - brute_force(points, cost, min(limit, 125), holes)) < 1e-12


def test_merging_a_hole_is_decided_by_the_cost_model() -> None:
    near, far = [point(0), point(4)], [point(0), point(60)]
    rtu = LinkCost.rtu(9600)
    assert len(plan_requests(near, rtu)) == 1  # 2 unused registers are cheaper than a second request
    assert len(plan_requests(far, rtu)) == 2  # 58 are not
    assert len(plan_requests(far, LinkCost.tcp())) == 1  # on TCP the round trip dominates


def test_gaps_inside_a_merged_request() -> None:
    request = plan_requests([point(0), point(4), point(6)], LinkCost.tcp())[0]
    assert gaps_inside(request) == [("input", 2, 4)]
