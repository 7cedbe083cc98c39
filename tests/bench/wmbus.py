"""Wireless M-Bus decode + decrypt time per telegram (issue 17 target: <= 200 us).

Builds telegrams with the radio simulator (water, heat, HCA; unencrypted,
mode 5, mode 7, ELL AES-CTR; frame format A with CRCs, as on air) and times
``decode_wmbus`` on each kind: link CRCs, transport, AES, records. Prints a
table; asserts nothing (figures are for people, docs/performance.md).

    python tests/bench/wmbus.py [--rounds 2000]
    ./scripts/bench wmbus [--rounds 2000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from drivers.wmbus import KeyRing, decode_wmbus
from drivers.wmbus.link import FrameFormat
from drivers.wmbus.received import Received
from simulators.wmbus_meter import (
    MeterKind,
    RadioMeterSpec,
    SimulatedRadioMeter,
    generate_keys,
)

TARGET_US = 200.0
KINDS = [
    ("water, unencrypted", MeterKind.WATER, 0, False),
    ("water, mode 5", MeterKind.WATER, 5, False),
    ("heat, mode 5", MeterKind.HEAT, 5, False),
    ("hca, mode 5", MeterKind.HCA, 5, False),
    ("heat, mode 7 (KDF + CMAC)", MeterKind.HEAT, 7, False),
    ("heat, ELL AES-CTR", MeterKind.HEAT, 0, True),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2000, help="decodes per telegram kind")
    args = parser.parse_args(argv)
    keys = generate_keys(len(KINDS), seed=1)
    ring = {}
    print(f"{'telegram':30} {'bytes':>5} {'median us':>10} {'p95 us':>8}  target <= {TARGET_US:.0f} us")
    worst = 0.0
    for index, (name, kind, mode, ell) in enumerate(KINDS):
        spec = RadioMeterSpec(70_000_000 + index, kind, security_mode=mode, ell_encryption=ell,
                              key=keys[index] if mode or ell else None,
                              frame_format=FrameFormat.A, with_crcs=True)
        ring[spec.id_text] = keys[index]
        meter = SimulatedRadioMeter(spec, seed=index)
        telegrams = [meter.transmit(900, datetime(2025, 1, 1, 0, n % 60))[0] for n in range(50)]
        keyring = KeyRing(ring)
        assert decode_wmbus(telegrams[0], keyring).ok
        samples = []
        for round_ in range(args.rounds):
            telegram = telegrams[round_ % len(telegrams)]
            start = time.perf_counter_ns()
            decode_wmbus(telegram, keyring)
            samples.append((time.perf_counter_ns() - start) / 1000)
        samples.sort()
        median = statistics.median(samples)
        p95 = samples[int(0.95 * len(samples))]
        worst = max(worst, median)
        print(f"{name:30} {len(telegrams[0]):>5} {median:>10.1f} {p95:>8.1f}")
    print(f"worst median {worst:.1f} us per telegram ({'within' if worst <= TARGET_US else 'OVER'} target)")
    listener_figures(args.rounds)
    return 0


class _Burst:
    """A receiver that hands over a whole burst at once (as a stick's serial buffer does)."""

    where = "bench"
    garbled = 0

    def __init__(self, telegrams: list[bytes]) -> None:
        self._burst = [Received(t, rssi_dbm=-70.0) for t in telegrams]

    def read(self, timeout: float) -> list[Received]:
        burst, self._burst = self._burst, []
        return burst

    def close(self) -> None:
        pass


class _Clock:
    def stamp(self) -> tuple[int, int | None]:
        return 1_700_000_000_000, None


def listener_figures(rounds: int) -> None:
    """The agent's whole per-telegram path in the listener: decode, decrypt,
    repeat filter, profile -> a Readout, over a mixed block of 100 meters."""
    from drivers.profile import load_catalogue
    from drivers.wmbus.reader import RadioListener, RadioMeter
    from simulators.wmbus_stick import device_entries, radio_meters

    catalogue = load_catalogue()
    meters = radio_meters(100, interval_s=120.0, seed=4)
    entries = device_entries(meters, "radio")
    ring = KeyRing({m.spec.id_text: m.spec.key for m in meters if m.spec.key is not None})
    telegrams = [m.transmit(120, datetime(2025, 1, 1, 0, n % 60))[0] for n in range(max(1, rounds // 100))
                 for m in meters]
    radio = {str(e["address"]): RadioMeter(str(e["id"]), str(e["address"]), 120.0,
                                           catalogue.get(str(e["profile"])))  # type: ignore[arg-type]
             for e in entries}
    listener = RadioListener(_Burst(telegrams), radio, ring)
    clock = _Clock()
    start = time.perf_counter_ns()
    heard = 0
    while listener.receive(0.0 if heard else 0.001, clock) is not None:
        heard += 1
    elapsed_us = (time.perf_counter_ns() - start) / 1000
    per = elapsed_us / max(heard, 1)
    print(f"listener, 100 meters (modes 5/7/0, water/HCA/heat): {heard} telegrams, {per:.1f} us each "
          f"(decode, decrypt, repeat filter, profile) = {1e6 / per:,.0f} telegrams/s on one core")


if __name__ == "__main__":
    sys.exit(main())
