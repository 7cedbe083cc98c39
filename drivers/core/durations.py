"""Durations as a technician writes them: ``90``, ``2.5``, ``10s``, ``15m``, ``1h``.

Shared by the config and the device profiles (a point read every 15 min).
"""

from __future__ import annotations

import re
from typing import Annotated

from drivers.core.records import Parse

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def parse_duration(value: object) -> float:
    """Seconds from ``90``, ``2.5``, ``"10s"``, ``"15m"``, ``"1h"``, ``"1d"``."""
    if isinstance(value, bool):  # Parse functions report with ValueError
        raise ValueError(f"expected a duration like 10s, 15m or 1h, got {value!r}")  # noqa: TRY004
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    else:
        raise ValueError(f"expected a duration like 10s, 15m or 1h, got {value!r}")
    if seconds <= 0:
        raise ValueError(f"a duration must be positive, got {value!r}")
    return seconds


DURATION_SCHEMA = {
    "anyOf": [{"type": "number", "exclusiveMinimum": 0},
              {"type": "string", "pattern": _DURATION.pattern}],
    "description": "seconds, or a number with ms, s, m, h or d (10s, 15m, 1h)",
}
Duration = Annotated[float, Parse(parse_duration, DURATION_SCHEMA)]


def format_duration(seconds: float) -> str:
    """900 -> "15m", 3600 -> "1h", 2.5 -> "2.5s": as a technician writes it."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
