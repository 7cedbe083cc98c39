"""The radio simulator's channel: intervals with jitter, collisions, bit errors, key file."""

from __future__ import annotations

import itertools
import stat
from collections import defaultdict
from pathlib import Path

from drivers.wmbus import decode_wmbus, load_key_file
from simulators.wmbus_meter import (
    MeterKind,
    RadioChannel,
    RadioMeterSpec,
    SimulatedRadioMeter,
    generate_keys,
    write_key_file,
)


def _meters(count: int, interval_s: float = 120.0, with_crcs: bool = False) -> list[SimulatedRadioMeter]:
    keys = generate_keys(count, seed=9)
    return [
        SimulatedRadioMeter(RadioMeterSpec(80_000_000 + i, list(MeterKind)[i % 4], security_mode=5,
                                           key=keys[i], interval_s=interval_s, with_crcs=with_crcs), seed=i)
        for i in range(count)
    ]


def test_each_meter_keeps_its_interval_within_the_jitter_and_counts_access_numbers() -> None:
    channel = RadioChannel(_meters(10), jitter=0.1, collisions=False, seed=1)
    sent = channel.run(3600)
    by_meter = defaultdict(list)
    for transmission in sent:
        by_meter[transmission.truth.meter].append(transmission)
    assert len(by_meter) == 10
    for transmissions in by_meter.values():
        gaps = [b.time_s - a.time_s for a, b in itertools.pairwise(transmissions)]
        assert gaps and all(108.0 <= gap <= 132.0 for gap in gaps)
        numbers = [t.truth.access_number for t in transmissions]
        assert all((b - a) % 256 == 1 for a, b in itertools.pairwise(numbers))
    assert [t.time_s for t in sent] == sorted(t.time_s for t in sent)


def test_overlapping_transmissions_collide_and_others_do_not() -> None:
    channel = RadioChannel(_meters(200, interval_s=10.0), jitter=0.5, seed=3)
    sent = channel.run(60)
    collided = [t for t in sent if t.damage == "collision"]
    assert collided, "200 meters every 10 s must collide sometimes"
    for transmission in collided:
        others = [o for o in sent if o is not transmission]
        assert any(o.time_s < transmission.time_s + transmission.airtime_s and
                   transmission.time_s < o.time_s + o.airtime_s for o in others)
    for transmission in (t for t in sent if t.intact):
        assert not any(o.time_s < transmission.time_s + transmission.airtime_s and
                       transmission.time_s < o.time_s + o.airtime_s for o in sent if o is not transmission)


def test_bit_errors_are_caught_by_the_block_crcs(tmp_path: Path) -> None:
    meters = _meters(20, with_crcs=True)
    keys = load_key_file(write_key_file(meters, tmp_path / "keys.csv"))
    sent = RadioChannel(meters, bit_error_rate=1.0, collisions=False, seed=5).run(600)
    assert sent and all(t.damage == "bit_error" for t in sent)
    for transmission in sent:
        result = decode_wmbus(transmission.telegram, keys)
        assert result.records == () and result.error is not None, result.error


def test_key_file_is_private_and_reads_back(tmp_path: Path) -> None:
    meters = _meters(5)
    path = write_key_file(meters, tmp_path / "keys.csv")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    ring = load_key_file(path)
    assert ring.meters() == [m.spec.id_text for m in meters]
    assert all(ring.key_for(m.spec.id_text) == m.spec.key for m in meters)
