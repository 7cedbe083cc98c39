"""The uplink payloads: the platform team's API (docs/payload.md).

Pure code. Two readings schemas, chosen in config:

- ``retrofit-agent/readings/1`` (flat, the default): one JSON object per
  batch, one object per reading, self-describing.
- ``retrofit-agent/readings-compact/1``: for metered links. Series metadata
  (device, point, unit, kind, meter) goes once per connection in a retained
  ``.../meta`` message; readings are grouped by poll (series, first id and
  timestamp shared) and the JSON may be zlib-compressed.

Encoding is on the hot path of a backlog drain, so the flat encoder builds
each reading from a pre-escaped series fragment instead of a dict per row.
Bump a schema name for any incompatible change.
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from agent.schema import Row, Series

READINGS_SCHEMA = "retrofit-agent/readings/1"
COMPACT_SCHEMA = "retrofit-agent/readings-compact/1"
META_SCHEMA = "retrofit-agent/meta/1"
STATUS_SCHEMA = "retrofit-agent/status/1"
EVENTS_SCHEMA = "retrofit-agent/events/1"
ZLIB_MAGIC = 0x78  # first byte of a zlib stream; JSON starts with '{'

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def topic(prefix: str, site: str, gateway: str, leaf: str) -> str:
    return f"{prefix}/{site}/{gateway}/{leaf}"


def _value(value: object) -> str:
    """A value as JSON text; NaN and infinity (not JSON) become null."""
    if value is None:
        return "null"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else "null"
    if isinstance(value, int):
        return str(value)
    return _dumps(value)


class FlatEncoder:
    """Schema readings/1. Keeps one escaped JSON fragment per series."""

    def __init__(self, gateway: str, site: str, stream: str) -> None:
        self._head = _dumps({"schema": READINGS_SCHEMA, "gateway": gateway, "site": site,
                             "stream": stream})[:-1] + ',"readings":['
        self._fragments: dict[int, str] = {}

    def _fragment(self, sid: int, series: Mapping[int, Series]) -> str:
        device, point, unit, _kind, meter = series[sid]
        text = (f'"device":{_dumps(device)},"point":{_dumps(point)},"unit":{_dumps(unit)}'
                + (f',"meter":{_dumps(meter)}' if meter else ""))
        self._fragments[sid] = text
        return text

    def encode(self, rows: Sequence[Row], series: Mapping[int, Series]) -> bytes:
        fragments = self._fragments
        parts = []
        for rid, sid, ts, value, quality in rows:
            fragment = fragments.get(sid) or self._fragment(sid, series)
            parts.append(f'{{"id":{rid},{fragment},"value":{_value(value)},"ts":{ts},"quality":"{quality}"}}')
        return (self._head + ",".join(parts) + "]}").encode()


class CompactEncoder:
    """Schema readings-compact/1: groups of readings sharing series run, first id and ts.

    A group is ``[first_id, ts, [[series, value], ...]]``; a reading whose
    quality is not ok is ``[series, value, quality]``. Ids run on from
    first_id within a group. Series numbers are explained by the meta message.
    """

    def __init__(self, stream: str, compress: bool) -> None:
        self._head = _dumps({"schema": COMPACT_SCHEMA, "stream": stream})[:-1] + ',"groups":['
        self._compress = compress

    def encode(self, rows: Sequence[Row], series: Mapping[int, Series]) -> bytes:
        groups: list[str] = []
        items: list[str] = []
        first = ts_open = next_id = None
        for rid, sid, ts, value, quality in rows:
            if rid != next_id or ts != ts_open:
                if items:
                    groups.append(f"[{first},{ts_open},[{','.join(items)}]]")
                items, first, ts_open = [], rid, ts
            items.append(f"[{sid},{_value(value)}]" if quality == "ok" else f'[{sid},{_value(value)},"{quality}"]')
            next_id = rid + 1
        if items:
            groups.append(f"[{first},{ts_open},[{','.join(items)}]]")
        raw = (self._head + ",".join(groups) + "]}").encode()
        return zlib.compress(raw, 6) if self._compress else raw


Resolution = dict[str, float | str]  # {"step": 0.1} or {"float": "float32"}


def encode_meta(gateway: str, site: str, stream: str, series: Mapping[int, Series],
                resolutions: Mapping[tuple[str, str], Resolution] | None = None) -> bytes:
    """The retained description of every series: its device, point, unit,
    kind, meter and resolution (so the platform can tell noise from
    consumption). The compact schema's series numbers refer to it."""
    described = {}
    for sid, (d, p, u, k, m) in sorted(series.items()):
        entry: dict[str, Any] = {"device": d, "point": p, "unit": u, "kind": k}
        if m:
            entry["meter"] = m
        resolution = (resolutions or {}).get((d, p))
        if resolution:
            entry["resolution"] = resolution
        described[str(sid)] = entry
    return _dumps({"schema": META_SCHEMA, "gateway": gateway, "site": site, "stream": stream,
                   "series": described}).encode()


def meta_parts(gateway: str, site: str, stream: str, series: Mapping[int, Series], attrs: Mapping[int, str],
               room: Callable[[int], int]) -> list[bytes]:
    """The description of every series, in as many messages as the link's size
    limit needs (``room(part)`` gives it; part 0 when one message carries all).

    Each part is a meta/1 message of its own; when there are several they
    carry ``"part"`` and ``"parts"`` (docs/payload.md): the first on the
    retained ``.../meta`` topic, the others on ``.../meta/2``, ...
    """
    entries: list[tuple[str, Any]] = []
    for sid, (d, p, u, k, m) in sorted(series.items()):
        entry: dict[str, Any] = {"device": d, "point": p, "unit": u, "kind": k}
        if m:
            entry["meter"] = m
        stored = attrs.get(sid)
        resolution = json.loads(stored).get("resolution") if stored else None
        if resolution:
            entry["resolution"] = resolution
        entries.append((str(sid), entry))
    head = {"schema": META_SCHEMA, "gateway": gateway, "site": site, "stream": stream}
    whole = _dumps({**head, "series": dict(entries)}).encode()
    if len(whole) <= room(0) or len(entries) <= 1:
        return [whole]
    # Greedy parts under the smallest room any part's topic leaves.
    limit = min(room(1), room(999))
    groups: list[list[tuple[str, Any]]] = [[]]
    for item in entries:
        trial = groups[-1] + [item]
        if groups[-1] and len(_dumps({**head, "part": 999, "parts": 999, "series": dict(trial)})) > limit:
            groups.append([item])
        else:
            groups[-1] = trial
    return [_dumps({**head, "part": n, "parts": len(groups), "series": dict(group)}).encode()
            for n, group in enumerate(groups, start=1)]


def decode_compact(payload: bytes, meta: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Readings of a compact message in the flat schema's shape (the platform's
    side of the contract; the tests prove the encoding lossless with it)."""
    if payload[:1] == bytes([ZLIB_MAGIC]):
        payload = zlib.decompress(payload)
    body = json.loads(payload)
    if body.get("schema") != COMPACT_SCHEMA or body.get("stream") != meta.get("stream"):
        raise ValueError("not a compact readings message of this stream")
    out = []
    for first, ts, items in body["groups"]:
        for offset, item in enumerate(items):
            described = meta["series"][str(item[0])]
            reading = {"id": first + offset, "device": described["device"], "point": described["point"],
                       "unit": described["unit"], "value": item[1], "ts": ts,
                       "quality": item[2] if len(item) > 2 else "ok"}
            if "meter" in described:
                reading["meter"] = described["meter"]
            out.append(reading)
    return out


def encode_events(gateway: str, site: str, stream: str, bodies: Sequence[str]) -> bytes:
    """Reports for the platform (evicted runs, meter swaps, clock corrections)."""
    head = _dumps({"schema": EVENTS_SCHEMA, "gateway": gateway, "site": site, "stream": stream})[:-1]
    return f'{head},"events":[{",".join(bodies)}]}}'.encode()
