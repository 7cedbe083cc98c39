"""Ground truth: what each simulated device really served, and when.

The building appends one JSON line per answered request:

    {"t": 1764327590123, "s": 1736722800, "d": "heat-a", "v": {"energy_heat": 1234.567, ...}}

``t`` is the wall clock in UTC epoch milliseconds at the moment the answer
was made, ``s`` the simulated epoch seconds, ``d`` the device id and ``v``
each point as the device put it on the wire, decoded with the profile's own
decoder, so it is the exact number an honest agent forwards. Faults and
other events are lines with an ``"event"`` key instead of ``"v"``.

A reading the agent forwarded is *proven* when the same device served the
same value for the same point at a wall time in the poll window before the
reading's ``ts`` (the agent stamps a reading when the answer arrives).
"""

from __future__ import annotations

import bisect
import json
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO


class GroundTruthWriter:
    """Appends served values; thread-safe (TCP connections and RTU lines serve in parallel)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file: TextIO | None = path.open("w", encoding="utf-8")
        self._lock = threading.Lock()
        self.lines = 0

    def served(self, wall_ms: int, sim_s: float, device: str, values: Mapping[str, object]) -> None:
        line = json.dumps({"t": wall_ms, "s": round(sim_s, 3), "d": device, "v": values},
                          separators=(",", ":"))
        self._write(line)

    def event(self, wall_ms: int, sim_s: float, event: str, **fields: object) -> None:
        line = json.dumps({"t": wall_ms, "s": round(sim_s, 3), "event": event, **fields},
                          separators=(",", ":"))
        self._write(line)

    def _write(self, line: str) -> None:
        with self._lock:
            if self._file is not None:
                self._file.write(line + "\n")
                self.lines += 1

    def flush(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.flush()

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


@dataclass
class GroundTruth:
    """The served values, indexed by (device, point) in wall-time order."""

    served: dict[tuple[str, str], tuple[list[int], list[object]]] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> GroundTruth:
        truth = cls()
        rows: dict[tuple[str, str], list[tuple[int, object]]] = {}
        with path.open(encoding="utf-8") as lines:
            for line in lines:
                if not line.endswith("\n"):
                    break  # the writer is still writing this one
                record = json.loads(line)
                if "event" in record:
                    truth.events.append(record)
                    continue
                for point, value in record["v"].items():
                    rows.setdefault((record["d"], point), []).append((record["t"], value))
        for key, series in rows.items():
            series.sort(key=lambda item: item[0])
            truth.served[key] = ([t for t, _ in series], [v for _, v in series])
        return truth

    def served_between(self, device: str, point: str, first_ms: int, last_ms: int) -> list[object]:
        times, values = self.served.get((device, point), ([], []))
        lo = bisect.bisect_left(times, first_ms)
        hi = bisect.bisect_right(times, last_ms)
        return values[lo:hi]


@dataclass
class Proof:
    proven: int = 0
    unproven: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.unproven


def prove(readings: Iterable[Mapping[str, Any]], truth: GroundTruth, window_ms: int = 5000,
          late_ms: int = 50) -> Proof:
    """Every reading must equal a value its device served for its point at a
    wall time within ``window_ms`` before the reading's ``ts`` (``late_ms``
    after it allows for clocks read in a different order by two threads)."""
    proof = Proof()
    for reading in readings:
        candidates = truth.served_between(reading["device"], reading["point"],
                                          reading["ts"] - window_ms, reading["ts"] + late_ms)
        if reading["value"] in candidates and reading["value"] is not None:
            proof.proven += 1
        else:
            proof.unproven.append({**reading, "served_nearby": candidates[-3:]})
    return proof
