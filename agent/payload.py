"""The uplink payload: the platform team's API (docs/payload.md).

Pure code. Schema ``retrofit-agent/readings/1``: one JSON object per batch,
readings in id order. Bump the schema name for any incompatible change.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

from agent.buffer import Row

READINGS_SCHEMA = "retrofit-agent/readings/1"
STATUS_SCHEMA = "retrofit-agent/status/1"
EVENTS_SCHEMA = "retrofit-agent/events/1"


def topic(prefix: str, site: str, gateway: str, leaf: str) -> str:
    return f"{prefix}/{site}/{gateway}/{leaf}"


def _json_value(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def encode_readings(gateway: str, site: str, stream: str, rows: Sequence[Row]) -> bytes:
    head = json.dumps(
        {"schema": READINGS_SCHEMA, "gateway": gateway, "site": site, "stream": stream},
        separators=(",", ":"),
    )[:-1]
    items = ",".join(
        json.dumps(
            {"id": rid, "device": device, "point": point, "value": _json_value(value),
             "unit": unit, "ts": ts, "quality": quality, **({"meter": meter} if meter else {})},
            separators=(",", ":"),
        )
        for rid, device, point, unit, ts, value, quality, meter in rows
    )
    return f'{head},"readings":[{items}]}}'.encode()


def encode_events(gateway: str, site: str, stream: str, bodies: Sequence[str]) -> bytes:
    """Reports for the platform (evicted runs, meter swaps, clock corrections)."""
    head = json.dumps({"schema": EVENTS_SCHEMA, "gateway": gateway, "site": site, "stream": stream},
                      separators=(",", ":"))[:-1]
    return f'{head},"events":[{",".join(bodies)}]}}'.encode()
