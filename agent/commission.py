"""What `check` says about a bus beyond validity: how busy its schedule keeps it.

Each bus's protocol estimates its own wire time (drivers/*/commission.py);
the verbs that talk to meters on site (`probe`, `scan`) are the protocols'
too, reached through the command line (agent/cli.py).
"""

from __future__ import annotations

from agent.config import Config
from drivers import registry
from drivers.core.protocol import BusLoad
from drivers.profile import Catalogue


def bus_loads(config: Config, catalogue: Catalogue) -> list[BusLoad]:
    """Wire time each bus needs per second of schedule."""
    loads = []
    for bus in config.buses:
        devices = [(device, catalogue.get(device.profile)) for device in config.devices_on(bus.id)]
        loads.append(registry.for_bus(bus).load(bus, devices))
    return loads


def load_warnings(config: Config, catalogue: Catalogue) -> list[str]:
    lines = []
    for load in bus_loads(config, catalogue):
        percent = 100 * load.busy_fraction
        figures = f"{load.requests_per_hour:.0f} requests/h" + (f"; {load.assumption}" if load.assumption else "")
        note = f"bus {load.bus}: {'about ' if load.assumption else ''}{percent:.1f} % busy on the wire ({figures})"
        if load.busy_fraction >= 1.0:
            lines.append(f"warning: {note}: it cannot keep its schedule; lengthen intervals or split the bus")
        elif load.busy_fraction >= 0.7:
            lines.append(f"warning: {note}: little room left for retries and a silent meter's timeouts")
        else:
            lines.append(note)
    return lines
