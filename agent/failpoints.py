"""Failpoints: named places where a test can make the agent misbehave on purpose.

Some faults cannot be produced from outside on this machine: a USB-serial
driver that hangs a write forever, for instance. Tests that must prove the
watchdog notices a stuck worker set RETROFIT_FAILPOINTS (comma-separated
names, e.g. ``stall-bus:rs485-1``, or ``name=value`` such as
``clock-skew-s=-86400`` for a wall clock a day behind until NTP arrives). Unset in production: then every check
is a set lookup on an empty set.
"""

from __future__ import annotations

import os
import threading

ACTIVE: frozenset[str] = frozenset(
    name.strip() for name in os.environ.get("RETROFIT_FAILPOINTS", "").split(",") if name.strip()
)


def value(name: str) -> str | None:
    """The value of a ``name=value`` failpoint, if set."""
    for entry in ACTIVE:
        key, sep, val = entry.partition("=")
        if sep and key == name:
            return val
    return None


def hang_if(name: str) -> None:
    """Block this thread forever when the failpoint is set (a hung driver)."""
    if name in ACTIVE:
        threading.Event().wait()
