"""Simulated meters for the benchmark, as their own process.

Like ``retrofit-sim modbus --tcp``, but it also loads the benchmark's own
profiles (tests/bench/profiles/, not shipped) and binds port 0, printing
the port it got, so the harness never races for a free port. Stops on
SIGTERM/SIGINT or after ``--duration`` seconds, whichever comes first.

    python tests/bench/sim.py --device 1=bench-meter-30 --device 2=bench-meter-30
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from drivers.profile import load_catalogue  # noqa: E402
from simulators.meters import SimulatedDevice, model_for  # noqa: E402
from simulators.modbus_server import ModbusTcpServer  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", action="append", required=True, metavar="UNIT=PROFILE")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--profile-dir", type=Path, default=HERE / "profiles")
    parser.add_argument("--duration", type=float, default=900.0, help="stop by itself after this long")
    args = parser.parse_args()
    catalogue = load_catalogue([args.profile_dir])
    units = {}
    for index, spec in enumerate(args.device):
        unit, _, name = spec.partition("=")
        profile = catalogue.get(name)
        units[int(unit)] = SimulatedDevice(profile, model_for(profile, seed=index))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    server = ModbusTcpServer(units, args.host, args.port).start()
    print(f"port={server.port}", flush=True)
    try:
        stop.wait(args.duration)
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
