"""Health figures the running agent keeps for the status message and `status`.

Each figure has one writer (a bus worker, the uplink, the buffer writer);
readers take a snapshot. Plain attribute writes of ints and floats are
atomic enough in CPython for figures that are only ever reported.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field


@dataclass
class DeviceHealth:
    bus: str
    state: str = "unknown"  # unknown, ok, partial, silent, rejected (answers that answer another question)
    last_ok_ms: int | None = None
    polls: int = 0
    failures: int = 0
    consecutive_failures: int = 0
    last_error: str = ""
    mismatched_replies: int = 0  # replies refused: another function, unit, length or meter than asked


@dataclass
class BusHealth:
    """Figures of a bus's link that no single device owns."""

    idle_reconnects: int = 0  # the peer had closed an idle connection: reconnected and asked again at once
    floods: int = 0  # connections dropped because a peer sent far more than any answer


@dataclass
class UplinkHealth:
    connected: bool = False
    last_ack_ms: int | None = None
    batches_acked: int = 0
    readings_acked: int = 0
    reconnects: int = 0
    last_error: str = ""


@dataclass
class Health:
    started_monotonic: float = field(default_factory=time.monotonic)
    devices: dict[str, DeviceHealth] = field(default_factory=dict)
    buses: dict[str, BusHealth] = field(default_factory=dict)
    uplink: UplinkHealth = field(default_factory=UplinkHealth)
    worker_progress: dict[str, float] = field(default_factory=dict)

    def touch(self, worker: str) -> None:
        """A worker says it is alive and making progress."""
        self.worker_progress[worker] = time.monotonic()

    def snapshot(self) -> dict[str, object]:
        return {
            "uptime_s": round(time.monotonic() - self.started_monotonic, 1),
            "devices": {name: asdict(d) for name, d in sorted(self.devices.items())},
            "buses": {name: asdict(b) for name, b in sorted(self.buses.items())},
            "uplink": asdict(self.uplink),
        }
