"""The protocols this agent speaks: one package each under drivers/.

A protocol registers by defining ``PROTOCOL`` (a BusProtocol) in its
package's ``protocol.py`` and being listed here; its commands come with its
commissioning (``tools()``); a package with commands only would list them
in ``EXTRA_TOOLS``. Every lookup the agent makes by bus type, profile
protocol or command goes through this module, so agent/ never names one.
"""

from __future__ import annotations

import typing
from functools import cache
from typing import Any

from drivers.core.protocol import BusProtocol, BusRecord, Tool
from drivers.core.records import hints
from drivers.mbus.protocol import PROTOCOL as MBUS
from drivers.modbus.protocol import PROTOCOL as MODBUS
from drivers.wmbus.protocol import PROTOCOL as WMBUS

AnyProtocol = BusProtocol[Any, Any]

PROTOCOLS: tuple[AnyProtocol, ...] = (MODBUS, MBUS, WMBUS)
EXTRA_TOOLS: tuple[Tool, ...] = ()
# A profile file without `protocol:` is a Modbus profile: the first ones had none.
DEFAULT_PROFILE_PROTOCOL = MODBUS.name


def bus_type(record: type) -> str:
    """The `type` value a bus record fixes with its Literal."""
    return str(typing.get_args(hints(record)["type"])[0])


@cache
def _by_bus_type() -> dict[str, AnyProtocol]:
    return {bus_type(record): protocol for protocol in PROTOCOLS for record in protocol.buses}


def bus_records() -> tuple[type, ...]:
    """Every bus record of every protocol (the config's `buses` union)."""
    return tuple(record for protocol in PROTOCOLS for record in protocol.buses)


def bus_types() -> tuple[str, ...]:
    return tuple(_by_bus_type())


def for_bus_type(type_: str) -> AnyProtocol | None:
    return _by_bus_type().get(type_)


def for_bus(bus: BusRecord) -> AnyProtocol:
    protocol = for_bus_type(bus.type)
    if protocol is None:  # the config's validation allows only registered types
        raise LookupError(f"no protocol for bus type {bus.type!r}")
    return protocol


def by_name(name: str) -> AnyProtocol | None:
    return next((protocol for protocol in PROTOCOLS if protocol.name == name), None)


def profile_types() -> dict[str, type]:
    """Profile record by the `protocol:` a profile file gives."""
    return {protocol.name: protocol.profile for protocol in PROTOCOLS if protocol.profile is not None}


def tools() -> tuple[Tool, ...]:
    """Commands the protocols bring (`mbus decode`, `wmbus decode`)."""
    own = tuple(tool for protocol in PROTOCOLS if protocol.commissioning is not None
                for tool in protocol.commissioning.tools())
    return own + EXTRA_TOOLS
