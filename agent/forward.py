"""Delivery: buffered readings -> the platform, removed only once acknowledged.

The forwarder owns everything about delivery that does not depend on how
messages travel: the cursor into the buffer, the acknowledged watermark and
the ranges acknowledged above it, the in-flight window, the acknowledgement
timeout, reconnecting with backoff, fitting every message under the link's
size limit (batches halved, reports and series descriptions split, the
status trimmed), and the order the platform needs (reports before the
readings they explain, the series description of a compact batch before
the batch). A transport (agent/transports/) only opens a connection, sends
a message and says which ones were acknowledged: MQTT (PUBACK) and HTTPS
(2xx) are the two.

Each connection starts again from the acknowledged watermark: what was in
flight when a connection ended is simply sent again, so the buffer stays the
one source of truth and duplicates at the platform are limited to messages
whose acknowledgement never arrived (the platform deduplicates on
``(stream, id)``).

Reconnects back off exponentially with jitter (tenacity); each state change
(connected, lost, refused) is one log event with counts, not a line per try.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from tenacity import RetryCallState, RetryError, Retrying, retry_if_exception_type, wait_exponential_jitter

from agent import logs
from agent.buffer import BufferReader
from agent.health import Health
from agent.payload import (
    STATUS_SCHEMA,
    CompactEncoder,
    FlatEncoder,
    encode_events,
    meta_parts,
)
from agent.schema import IdRange
from drivers.core.errors import RetrofitError
from drivers.core.readings import now_ms

Kind = Literal["readings", "events", "meta", "status"]

FLAP_WINDOW_S = 10.0
BACKOFF_MAX_S = 60.0
EVENTS_PER_MESSAGE = 500


class ConnectFailed(RetrofitError):
    """The platform could not be reached, or refused the connection."""


class Lost(RetrofitError):
    """The connection ended while sending."""


class Transport(Protocol):
    """What the forwarder needs from a link to the platform."""

    describe: str  # for logs: mqtt://host:port, https://host/path
    wakeup: threading.Event  # set by the transport when something was acknowledged or lost

    def open(self, farewell: bytes) -> None:
        """Connect (``farewell`` is the status the platform should see if the
        gateway vanishes: MQTT's last will). Raises ConnectFailed."""

    def room(self, kind: Kind, part: int = 0) -> int:
        """The largest payload of this kind the link carries (its own framing subtracted)."""

    def send(self, kind: Kind, payload: bytes, part: int = 0) -> int | None:
        """Send; return a ticket that :meth:`acknowledged` will give back, or
        None when nothing will be acknowledged (a retained message deleted).
        Raises Lost."""

    def acknowledged(self) -> list[int]:
        """Tickets acknowledged since the last call."""

    def refused(self) -> list[tuple[int, str]]:
        """Tickets the platform refused (too large), with its reason."""

    def lost(self) -> bool:
        """Whether the connection ended."""

    def close(self, farewell: bytes | None) -> None:
        """Say goodbye (``farewell``: the offline status) and disconnect."""


@dataclass
class ForwardSettings:
    """The delivery part of an uplink's config (agent/config.py DeliveryConfig)."""

    batch: int = 500
    inflight: int = 20
    status_interval: float = 60.0
    max_message_bytes: int = 262_144
    encoding: str = "flat"
    compression: str = "none"
    ack_timeout: float = 30.0


class AckedRanges:
    """What the platform acknowledged, as a watermark and the ranges above it.

    A batch covers the ids from just after the previous batch to its last
    reading, so ids skipped because they were evicted or failed their
    checksum lie inside a batch's range and never hold the watermark back.
    """

    def __init__(self, watermark: int = 0) -> None:
        self.watermark = watermark
        self._ranges: list[IdRange] = []

    def add(self, id_range: IdRange) -> bool:
        """Take an acknowledged range; True when the watermark moved."""
        self._ranges.append(id_range)
        self._ranges.sort()
        moved = False
        while self._ranges and self._ranges[0][0] <= self.watermark + 1:
            _low, high = self._ranges.pop(0)
            if high > self.watermark:
                self.watermark = high
                moved = True
        return moved

    def covers(self, row_id: int) -> bool:
        return row_id <= self.watermark or any(low <= row_id <= high for low, high in self._ranges)

    def highest(self) -> int:
        return max([self.watermark] + [high for _, high in self._ranges])


@dataclass
class Inflight:
    """A message awaiting its acknowledgement."""

    kind: Kind
    sent: float
    size: int
    ids: IdRange | None = None  # readings: the ids it covers
    count: int = 0
    reported: list[int] = field(default_factory=list)  # events: their seqs
    series: int = 0  # meta: how many series it describes (all parts together)


class Forwarder(threading.Thread):
    def __init__(self, transport: Transport, settings: ForwardSettings, gateway: str, site: str, stream: str,
                 reader: Callable[[], BufferReader], health: Health,
                 status_extra: Callable[[], dict[str, object]],
                 on_ack: Callable[[int], None], on_reported: Callable[[list[int]], None],
                 on_corrupt: Callable[[IdRange], None], resume_after: int = 0) -> None:
        super().__init__(name="uplink", daemon=True)
        self.transport = transport
        self.settings = settings
        self.gateway = gateway
        self.site = site
        self.stream = stream
        self._encoder: FlatEncoder | CompactEncoder = (
            CompactEncoder(stream, compress=settings.compression == "zlib") if settings.encoding == "compact"
            else FlatEncoder(gateway, site, stream))
        self._compact = settings.encoding == "compact"
        self._reader_factory = reader
        self._health = health
        self._status_extra = status_extra
        self._on_ack = on_ack
        self._on_reported = on_reported
        self._on_corrupt = on_corrupt
        self._acked = AckedRanges(resume_after)
        self._stop_event = threading.Event()
        self._drain_s = 1.0
        self._wake = threading.Event()
        transport.wakeup = self._wake
        self._log = logs.get("uplink").bind(platform=transport.describe)
        self._meta_parts_sent = 0  # retained parts on the link (so that fewer, later, clear the rest)
        self._learned_limit: int | None = None  # what the platform showed it takes at most
        self._dropped_after = 0
        self.last_progress = time.monotonic()

    # -- called from other threads ---------------------------------------------------------------
    @property
    def acked_watermark(self) -> int:
        """Every id up to this one is acknowledged by the platform (or was never sent: evicted)."""
        return self._acked.watermark

    def notify(self, _ids: IdRange | None = None) -> None:
        """New readings were committed (or reports stored)."""
        self._wake.set()

    def stop(self, drain_s: float = 1.0) -> None:
        """Stop; acknowledgements still on their way are waited for ``drain_s``."""
        self._drain_s = drain_s
        self._stop_event.set()
        self._wake.set()

    # -- the thread ------------------------------------------------------------------------------
    def run(self) -> None:
        reader = self._reader_factory()
        flaps = 0
        try:
            while not self._stop_event.is_set():
                try:
                    self._connect_with_backoff()
                except RetryError:
                    return  # stopping
                if self._stop_event.is_set():
                    self.transport.close(self._status("offline"))
                    return
                connected_at = time.monotonic()
                try:
                    self._serve(reader)
                finally:
                    self.transport.close(self._status("offline") if self._stop_event.is_set() else None)
                    self._health.uplink.connected = False
                if self._stop_event.is_set():
                    return
                self._health.uplink.reconnects += 1
                # A platform that drops us right after accepting must not get a
                # reconnect storm: short-lived connections keep the backoff growing.
                if time.monotonic() - connected_at < FLAP_WINDOW_S:
                    flaps += 1
                    delay = min(BACKOFF_MAX_S, 2.0 ** flaps) * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not a secret
                    if flaps == 3:
                        self._log.warning("uplink.flapping", connections=flaps, retry_in_s=round(delay, 1))
                    self._sleep(delay)
                else:
                    flaps = 0
        finally:
            reader.close()

    def _connect_with_backoff(self) -> None:
        attempts = 0
        started = time.monotonic()

        def log_failure(state: RetryCallState) -> None:
            nonlocal attempts
            attempts += 1
            error = str(state.outcome.exception()) if state.outcome else "?"
            self._health.uplink.last_error = error
            if attempts == 1:
                self._log.warning("uplink.connect_failed", error=error,
                                  retry_in_s=round(state.next_action.sleep, 1) if state.next_action else None)

        retrying = Retrying(
            retry=retry_if_exception_type(ConnectFailed),
            wait=wait_exponential_jitter(initial=1, max=BACKOFF_MAX_S, exp_base=2, jitter=1),
            stop=lambda _state: self._stop_event.is_set(),
            sleep=self._sleep,
            before_sleep=log_failure,
            reraise=False,
        )
        for attempt in retrying:
            with attempt:
                if self._stop_event.is_set():
                    return
                self.transport.open(self._status("offline"))
        self._health.uplink.connected = True
        self._health.uplink.last_error = ""
        self._log.info("uplink.connected", attempts=attempts + 1, waited_s=round(time.monotonic() - started, 1))

    def _sleep(self, seconds: float) -> None:
        """Back off in short steps, so the watchdog sees this thread is alive."""
        deadline = time.monotonic() + seconds
        while not self._stop_event.is_set() and time.monotonic() < deadline:
            self.last_progress = time.monotonic()
            self._stop_event.wait(min(1.0, max(0.0, deadline - time.monotonic())))

    # -- one connection --------------------------------------------------------------------------
    def _serve(self, reader: BufferReader) -> None:
        """Send while connected; return when the connection ends (or on stop)."""
        transport = self.transport
        inflight: dict[int, Inflight] = {}
        cursor = self._acked.watermark  # everything unacknowledged is sent again
        event_cursor = 0
        described = -1  # series described by a meta message sent on this connection
        meta_acked = -1  # ... and acknowledged
        ack_timeout = self.settings.ack_timeout
        acked_any = False
        try:
            self._send(inflight, "status", self._fitted_status())
            next_status = time.monotonic() + self.settings.status_interval
            while not self._stop_event.is_set() and not transport.lost():
                self._wake.clear()
                self.last_progress = time.monotonic()
                before = len(inflight)
                meta_acked = max(meta_acked, self._settle(inflight))
                acked_any = acked_any or len(inflight) < before
                if inflight and time.monotonic() - min(e.sent for e in inflight.values()) > ack_timeout:
                    self._log.warning("uplink.ack_timeout", waiting_messages=len(inflight), after_s=ack_timeout)
                    return
                if time.monotonic() >= next_status:
                    self._send(inflight, "status", self._fitted_status())
                    next_status = time.monotonic() + self.settings.status_interval
                if len(inflight) >= self.settings.inflight:
                    self._wake.wait(1.0)
                    continue
                # Reports first (evictions, meter swaps, clock corrections): they
                # are few, and the platform needs them to read the readings right.
                events = reader.events_after(event_cursor, EVENTS_PER_MESSAGE)
                if events:
                    self._send_events(inflight, events)
                    event_cursor = events[-1][0]
                    continue
                batch = reader.batch_after(cursor, self.settings.batch)
                for corrupt in reader.take_corrupt():
                    self._on_corrupt(corrupt)
                if not batch:
                    self._wake.wait(1.0)  # a commit or an acknowledgement wakes it
                    continue
                covered_from = cursor + 1
                # Acknowledged on an earlier connection (only right after a
                # reconnect, below the highest acknowledged id): never sent again.
                rows = batch if batch[0][0] > self._acked.highest() else [
                    r for r in batch if not self._acked.covers(r[0])]
                if not rows:
                    cursor = batch[-1][0]
                    if self._acked.add((covered_from, cursor)):
                        self._on_ack(self._acked.watermark)
                    continue
                series = reader.series()
                if len(series) != described:
                    # New series: describe them (retained) before any reading uses them.
                    self._send_meta(inflight, series, reader.series_attrs())
                    described = len(series)
                if self._compact and meta_acked < described:
                    # Compact readings name their series by number only: the
                    # description must have arrived before they may count as delivered.
                    self._wake.wait(1.0)
                    continue
                payload, rows = self._fitted_readings(rows, series)
                ticket = transport.send("readings", payload)
                if ticket is not None:
                    inflight[ticket] = Inflight("readings", time.monotonic(), len(payload),
                                                ids=(covered_from, rows[-1][0]), count=len(rows))
                cursor = rows[-1][0]
        except Lost as exc:
            reason = str(exc)
        else:
            reason = "connection closed"
        if self._stop_event.is_set():
            self._drain(inflight)
            return
        self._health.uplink.last_error = reason
        self._log.warning("uplink.lost", error=reason, unacked_messages=len(inflight))
        self._suspect_size(acked_any, inflight)

    def _suspect_size(self, acked_any: bool, inflight: dict[int, Inflight]) -> None:
        """A platform that drops every connection right after a large message
        (a broker's max_packet_size: MQTT 3.1.1 has no way to refuse one):
        twice in a row with nothing acknowledged, the limit is halved below
        that message's size for the rest of this run, and that is said once."""
        largest = max((e.size for e in inflight.values()), default=0)
        if acked_any or largest < 1024:
            self._dropped_after = 0
            return
        self._dropped_after += 1
        if self._dropped_after >= 2:
            self._learn_limit(largest, "the platform closed the connection before acknowledging it, twice")
            self._dropped_after = 0

    def _learn_limit(self, refused_bytes: int, reason: str) -> None:
        limit = max(1024, refused_bytes // 2)
        if self._learned_limit is not None and self._learned_limit <= limit:
            return
        first = self._learned_limit is None
        self._learned_limit = limit
        if first:
            self._log.error("uplink.message_too_large", bytes=refused_bytes, reason=reason, sending_at_most=limit,
                            hint="set max_message_bytes below the platform's limit")
        else:  # halved once more: messages at the first guess were still too large
            self._log.warning("uplink.message_limit_lowered", bytes=refused_bytes, sending_at_most=limit)

    def _send(self, inflight: dict[int, Inflight], kind: Kind, payload: bytes, part: int = 0,
              **details: object) -> None:
        ticket = self.transport.send(kind, payload, part)
        if ticket is not None:
            inflight[ticket] = Inflight(kind, time.monotonic(), len(payload), **details)  # type: ignore[arg-type]

    def _settle(self, inflight: dict[int, Inflight]) -> int:
        """Take acknowledgements; returns how many series an acknowledged meta described (-1: none)."""
        meta = -1
        for ticket, reason in self.transport.refused():
            entry = inflight.pop(ticket, None)
            if entry is not None:
                self._learn_limit(entry.size, reason)
            raise Lost(f"a message was refused: {reason}")
        for ticket in self.transport.acknowledged():
            entry = inflight.pop(ticket, None)
            if entry is None:
                continue  # a message of an earlier connection
            if entry.kind == "events":
                self._on_reported(entry.reported)
            elif entry.kind == "meta":
                meta = max(meta, entry.series)
            elif entry.kind == "readings" and entry.ids is not None:
                if self._acked.add(entry.ids):
                    self._on_ack(self._acked.watermark)
                uplink = self._health.uplink
                uplink.batches_acked += 1
                uplink.readings_acked += entry.count
                uplink.last_ack_ms = now_ms()
        return meta

    def _drain(self, inflight: dict[int, Inflight]) -> None:
        """At a stop, wait a moment for acknowledgements on their way, so fewer readings are sent twice."""
        deadline = time.monotonic() + self._drain_s
        while inflight and time.monotonic() < deadline and not self.transport.lost():
            self._wake.wait(max(0.0, min(0.1, deadline - time.monotonic())))
            self._wake.clear()
            try:
                self._settle(inflight)
            except Lost:
                return

    # -- fitting messages under the link's limit ----------------------------------------------
    def _limit(self, kind: Kind, part: int = 0) -> int:
        return min(self.settings.max_message_bytes, self.transport.room(kind, part),
                   self._learned_limit or self.settings.max_message_bytes)

    def _fitted_readings(self, rows: list, series: dict) -> tuple[bytes, list]:  # type: ignore[type-arg]
        limit = self._limit("readings")
        payload = self._encoder.encode(rows, series)
        while len(payload) > limit and len(rows) > 1:
            rows = rows[: len(rows) // 2]
            payload = self._encoder.encode(rows, series)
        return payload, rows

    def _send_events(self, inflight: dict[int, Inflight], events: Sequence[tuple[int, str]]) -> None:
        limit = self._limit("events")
        start = 0
        while start < len(events):
            end = len(events)
            payload = encode_events(self.gateway, self.site, self.stream, [b for _, b in events[start:end]])
            while len(payload) > limit and end - start > 1:
                end = start + (end - start) // 2
                payload = encode_events(self.gateway, self.site, self.stream, [b for _, b in events[start:end]])
            self._send(inflight, "events", payload, reported=[seq for seq, _ in events[start:end]])
            start = end

    def _send_meta(self, inflight: dict[int, Inflight], series: dict, attrs: dict) -> None:  # type: ignore[type-arg]
        parts = meta_parts(self.gateway, self.site, self.stream, series, attrs,
                           lambda part: self._limit("meta", part))
        for number, payload in enumerate(parts, start=1):
            self._send(inflight, "meta", payload, part=number if len(parts) > 1 else 0,
                       series=len(series) if number == len(parts) else -1)
        # Parts a longer description left behind would confuse the platform: cleared.
        for number in range(len(parts) + 1, self._meta_parts_sent + 1):
            self.transport.send("meta", b"", part=number)
        self._meta_parts_sent = len(parts) if len(parts) > 1 else 0

    def _status(self, state: str) -> bytes:
        body: dict[str, object] = {"schema": STATUS_SCHEMA, "gateway": self.gateway, "site": self.site,
                                   "stream": self.stream, "state": state}
        if state == "online":
            body["ts"] = now_ms()
            body.update(self._status_extra())
        return json.dumps(body, separators=(",", ":")).encode()

    def _fitted_status(self) -> bytes:
        """The online status within the link's limit: per-device detail gives way to counts first."""
        payload = self._status("online")
        limit = self._limit("status")
        if len(payload) <= limit:
            return payload
        body = json.loads(payload)
        devices = body.pop("devices", {}) or {}
        states: dict[str, list[str]] = {}
        for name, device in devices.items():
            states.setdefault(str(device.get("state", "unknown")), []).append(name)
        body["devices_by_state"] = {state: sorted(names) for state, names in states.items()}
        body["truncated"] = "devices"
        payload = json.dumps(body, separators=(",", ":")).encode()
        if len(payload) <= limit:
            return payload
        body["devices_by_state"] = {state: len(names) for state, names in states.items()}
        body.pop("buses", None)
        body["truncated"] = "devices, buses"
        return json.dumps(body, separators=(",", ":")).encode()
