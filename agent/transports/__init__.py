"""Links to the platform: each sends a message and says when it was acknowledged.

A transport is chosen by the uplink section of the config (``uplink.mqtt`` or
``uplink.http``); the forwarder (agent/forward.py) owns everything else about
delivery. A new kind of link is one module here and one config record.
"""

from __future__ import annotations

import queue
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from agent.config import UplinkConfig
    from agent.forward import Transport


def open_transport(uplink: UplinkConfig, gateway: str, site: str) -> Transport:
    """The transport the config names (imported only when chosen)."""
    if uplink.http is not None:
        from agent.transports.http import HttpTransport

        return HttpTransport(uplink.http)
    from agent.transports.mqtt import MqttTransport

    assert uplink.mqtt is not None  # the config requires exactly one
    return MqttTransport(uplink.mqtt, gateway, site)


T = TypeVar("T")


def drained(pending: queue.SimpleQueue[T]) -> list[T]:
    """Everything a callback thread queued so far (acknowledgements, refusals), without waiting."""
    out: list[T] = []
    while not pending.empty():
        out.append(pending.get_nowait())
    return out
