"""Counter integrity: never repair a counter silently, say what was seen.

Consumption in a period is the difference of two counter readings, so one
garbage read, a reset, a meter swap or a rollover turns into phantom
consumption or phantom savings. Each counter reading is compared with the
last accepted value of its series; a suspicious one is flagged and keeps its
raw value. A single bad read must not make the next good one look bad, so a
suspicious value is only a *candidate* baseline: if the next reading
continues from it (a real reset), the series moves there; if the next
reading continues from the old baseline (a garbage read), the candidate is
dropped. Pure code; the bus worker owns one guard for its devices.
"""

from __future__ import annotations

from dataclasses import dataclass, field

COUNTER_BACKWARDS = "counter_backwards"
COUNTER_JUMP = "counter_jump"
COUNTER_ROLLOVER = "counter_rollover"
METER_SWAP = "meter_swap"

Key = tuple[str, str]  # device, point
State = tuple[float | int, int]  # value, ts (ms)


@dataclass(frozen=True)
class CounterLimits:
    """What a counter can physically do."""

    max_rate_per_h: float | None = None  # largest increase per hour, in the point's unit
    rollover_at: float | None = None  # the value at which the register wraps to zero
    slack: float = 0.0  # one step of resolution: a counter may tick once more than the rate says


@dataclass
class CounterGuard:
    last: dict[Key, State] = field(default_factory=dict)
    candidate: dict[Key, State] = field(default_factory=dict)
    changed: dict[Key, State] = field(default_factory=dict)  # to persist with the next commit

    def check(self, key: Key, value: float | int | None, ts: int, limits: CounterLimits) -> str | None:
        """The flag for this reading, or None when it continues its series."""
        if not isinstance(value, (int, float)) or value != value:
            return None
        previous = self.last.get(key)
        if previous is None:
            self._accept(key, value, ts)
            return None
        if self._continues(previous, value, ts, limits):
            self._accept(key, value, ts)
            return None
        candidate = self.candidate.get(key)
        if candidate is not None and self._continues(candidate, value, ts, limits):
            # The earlier suspicious value was real (a reset, a step): the series moves on from here.
            self._accept(key, value, ts)
            return None
        if value < previous[0] and self._rolled_over(previous, value, ts, limits):
            self._accept(key, value, ts)
            return COUNTER_ROLLOVER
        self.candidate[key] = (value, ts)
        return COUNTER_BACKWARDS if value < previous[0] else COUNTER_JUMP

    def forget_device(self, device: str) -> None:
        """A new meter: its counters start a new series."""
        for key in [k for k in self.last if k[0] == device]:
            del self.last[key]
            self.candidate.pop(key, None)

    def take_changes(self) -> dict[Key, State]:
        changes, self.changed = self.changed, {}
        return changes

    def _accept(self, key: Key, value: float | int, ts: int) -> None:
        self.last[key] = self.changed[key] = (value, ts)
        self.candidate.pop(key, None)

    @staticmethod
    def _continues(base: State, value: float | int, ts: int, limits: CounterLimits) -> bool:
        if value < base[0]:
            return False
        if limits.max_rate_per_h is None:
            return True
        hours = max(0, ts - base[1]) / 3_600_000
        # A float32 register steps by its last bit: never call that a jump.
        return value - base[0] <= limits.max_rate_per_h * hours + limits.slack + abs(value) * 2.4e-7

    @staticmethod
    def _rolled_over(previous: State, value: float | int, ts: int, limits: CounterLimits) -> bool:
        if limits.rollover_at is None:
            return False
        wrapped_increase = limits.rollover_at - previous[0] + value
        if limits.max_rate_per_h is None:
            return previous[0] > 0.9 * limits.rollover_at and value < 0.1 * limits.rollover_at
        hours = max(0, ts - previous[1]) / 3_600_000
        return 0 <= wrapped_increase <= limits.max_rate_per_h * hours + limits.slack
