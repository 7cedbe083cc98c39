"""Payload encodings: the flat schema is valid JSON with every field; the
compact schema decodes to exactly the flat readings (property-based)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.payload import CompactEncoder, FlatEncoder, decode_compact, encode_meta
from drivers.core.protocol import Value
from drivers.profile import load_catalogue
from simulators.meters import SimulatedDevice
from simulators.modbus_server import ModbusTcpServer
from tests.support import AgentProcess, Broker, Subscriber, running, wait_until, write_config

SERIES = {1: ("elec-main", "voltage_l1", "V", "gauge", ""),
          2: ("heat-1", "energy_heat", "kWh", "counter", "12345678"),
          3: ('odd "device"', "temp\\erature", "Cel", "gauge", "")}

values = st.one_of(st.none(), st.integers(-2**53, 2**53), st.floats(allow_nan=True, allow_infinity=True, width=64),
                   st.text(max_size=5))
qualities = st.sampled_from(["ok", "invalid", "counter_jump", "clock_unsynced+counter_backwards"])


@st.composite
def batches(draw: st.DrawFn) -> list[tuple[int, int, int, Value, str]]:
    n = draw(st.integers(1, 60))
    rid = draw(st.integers(1, 10**9))
    ts = draw(st.integers(1_600_000_000_000, 1_900_000_000_000))
    rows: list[tuple[int, int, int, Value, str]] = []
    for _ in range(n):
        rid += draw(st.sampled_from([1, 1, 1, 2, 7]))  # mostly contiguous, sometimes a gap
        ts += draw(st.sampled_from([0, 0, 0, 1, 1000]))
        rows.append((rid, draw(st.sampled_from(sorted(SERIES))), ts, draw(values), draw(qualities)))
    return rows


def _expected_value(value: object) -> object:
    return None if isinstance(value, float) and not math.isfinite(value) else value


@settings(max_examples=200, deadline=None)
@given(batches(), st.booleans())
def test_compact_decodes_to_exactly_the_flat_readings(rows: list, compress: bool) -> None:
    flat = json.loads(FlatEncoder("gw", "site", "stream-1").encode(rows, SERIES))
    meta = json.loads(encode_meta("gw", "site", "stream-1", SERIES))
    compact = CompactEncoder("stream-1", compress).encode(rows, SERIES)
    assert decode_compact(compact, meta) == flat["readings"]
    for reading, row in zip(flat["readings"], rows, strict=True):
        assert reading["id"] == row[0] and reading["ts"] == row[2] and reading["quality"] == row[4]
        assert reading["value"] == _expected_value(row[3])
        device, point, unit, _kind, meter = SERIES[row[1]]
        assert (reading["device"], reading["point"], reading["unit"]) == (device, point, unit)
        assert reading.get("meter", "") == meter


@pytest.mark.timeout(90)
def test_compact_uplink_end_to_end_is_lossless_and_small(tmp_path: Path, broker: Broker,
                                                        subscriber: Subscriber) -> None:
    """A typical building (electricity meters, room sensors) over a metered link."""
    catalogue = load_catalogue()
    units = {u: SimulatedDevice(catalogue.get("eastron-sdm630")) for u in (1, 2, 3)}
    units.update({u: SimulatedDevice(catalogue.get("xy-md02")) for u in range(10, 25)})
    server = ModbusTcpServer(units)
    buffer = tmp_path / "buffer.db"
    config = write_config(
        tmp_path / "agent.yaml", broker_port=broker.port, buffer=buffer,
        buses=[{"id": "gw", "type": "modbus-tcp", "host": "127.0.0.1", "port": server.port}],
        devices=[{"id": f"dev-{u}", "bus": "gw", "address": u,
                  "profile": "eastron-sdm630" if u < 10 else "xy-md02", "interval": "1s"} for u in units],
        mqtt_extra={"encoding": "compact", "compression": "zlib"},
    )
    with running(server), AgentProcess(config, tmp_path / "agent.log"):
        wait_until(lambda: len(_compact(subscriber)) >= 600, 40, "compact readings")
    meta = next(json.loads(p) for t, p, _ in subscriber.messages if t.endswith("/meta"))
    readings = _compact(subscriber, meta)
    ids = sorted({r["id"] for r in readings})
    assert ids == list(range(ids[0], ids[-1] + 1))
    devices = {r["device"] for r in readings}
    assert devices == {f"dev-{u}" for u in units}
    assert {r["unit"] for r in readings if r["point"] == "temperature"} == {"Cel"}
    wire = sum(len(p) for t, p, _ in subscriber.messages if t.endswith("/readings"))
    per_reading = wire / len(readings)
    print(f"compact+zlib: {per_reading:.1f} bytes per reading on the wire ({len(readings)} readings)")
    assert per_reading <= 25


def _compact(subscriber: Subscriber, meta: dict | None = None) -> list[dict]:
    if meta is None:
        metas = [json.loads(p) for t, p, _ in subscriber.messages if t.endswith("/meta")]
        if not metas:
            return []
        meta = metas[-1]
    out = []
    for t, p, _ in list(subscriber.messages):
        if t.endswith("/readings"):
            out.extend(decode_compact(p, meta))
    return out
