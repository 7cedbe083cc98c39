"""The naive baseline the benchmark compares the agent with.

What a first version of such a daemon usually looks like: the pymodbus sync
client with one request per point, one SQLite transaction per reading
(WAL, synchronous=NORMAL, the agent's own settings, so only the granularity
differs), one MQTT message per reading at QoS 1, and one DELETE transaction
per PUBACK. The payload is the agent's flat schema with one reading in it,
so the benchmark's subscriber counts both the same way.

Not a product: no reconnects, no backoff, no eviction. It runs beside the
agent only to give ratios that hold on a noisy machine.

    python tests/bench/naive.py --sim-port 5020 --broker-port 1883 \\
        --device 1=bench-meter-30 --interval 1 --db /tmp/naive.db
"""

from __future__ import annotations

import argparse
import json
import queue
import signal
import sqlite3
import sys
import threading
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402
from pymodbus.client import ModbusTcpClient  # noqa: E402

from drivers.profile import load_catalogue  # noqa: E402
from simulators.meters import modbus_profile  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sim-port", type=int, required=True)
    parser.add_argument("--broker-port", type=int, required=True)
    parser.add_argument("--device", action="append", required=True, metavar="UNIT=PROFILE")
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--db", type=Path, required=True)
    parser.add_argument("--profile-dir", type=Path, default=HERE / "profiles")
    parser.add_argument("--topic", default="bench/bench-site/naive-gw/readings")
    parser.add_argument("--duration", type=float, default=900.0, help="stop by itself after this long")
    args = parser.parse_args()

    catalogue = load_catalogue([args.profile_dir])
    devices = []
    for spec in args.device:
        unit, _, name = spec.partition("=")
        profile = modbus_profile(catalogue.get(name))
        devices.append((f"meter-{int(unit):02d}", int(unit),
                        [(p, p.decoder()) for p in profile.points]))

    db = sqlite3.connect(args.db, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("CREATE TABLE IF NOT EXISTS readings (id INTEGER PRIMARY KEY AUTOINCREMENT, device TEXT, "
               "point TEXT, unit TEXT, ts INTEGER, value, quality TEXT)")
    stream = str(uuid.uuid4())

    acked: queue.SimpleQueue[int] = queue.SimpleQueue()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-naive")
    client.on_publish = lambda _c, _u, mid, _rc, _p: acked.put(mid)
    client.connect("127.0.0.1", args.broker_port, keepalive=60)
    client.loop_start()
    modbus = ModbusTcpClient("127.0.0.1", port=args.sim_port, timeout=3, retries=0)
    modbus.connect()

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    deadline = time.monotonic() + args.duration
    in_flight: dict[int, int] = {}  # mid -> reading id
    print(f"naive.started stream={stream}", flush=True)
    next_poll = time.time()
    while not stop.is_set() and time.monotonic() < deadline:
        wait = next_poll - time.time()
        if wait > 0:
            stop.wait(wait)
            continue
        for device_id, unit, points in devices:
            for point, decode in points:
                read = modbus.read_input_registers if point.table == "input" else modbus.read_holding_registers
                response = read(point.address, count=point.count, device_id=unit)
                if response.isError():
                    continue
                value = decode(response.registers)
                ts = time.time_ns() // 1_000_000
                cur = db.execute("INSERT INTO readings (device, point, unit, ts, value, quality) "
                                 "VALUES (?, ?, ?, ?, ?, 'ok')", (device_id, point.name, point.unit, ts, value))
                rid = int(cur.lastrowid or 0)
                payload = json.dumps({
                    "schema": "retrofit-agent/readings/1", "gateway": "naive-gw", "site": "bench-site",
                    "stream": stream, "readings": [{"id": rid, "device": device_id, "point": point.name,
                                                    "value": value, "unit": point.unit, "ts": ts,
                                                    "quality": "ok"}]}, separators=(",", ":"))
                info = client.publish(args.topic, payload, qos=1)
                in_flight[info.mid] = rid
            while True:
                try:
                    mid = acked.get_nowait()
                except queue.Empty:
                    break
                rid = in_flight.pop(mid, 0)
                if rid:
                    db.execute("DELETE FROM readings WHERE id = ?", (rid,))
        next_poll = (int(time.time() / args.interval) + 1) * args.interval
    modbus.close()
    client.disconnect()
    client.loop_stop()
    db.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
