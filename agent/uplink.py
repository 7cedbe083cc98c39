"""The uplink: buffered readings -> MQTT batches, removed only once acknowledged.

Each connection is a fresh paho client. When a connection ends, everything
it had in flight is simply unacknowledged: the next connection starts again
from the oldest reading still in the buffer (skipping ranges already
acknowledged but not yet deleted). So paho never holds a queue of its own
across outages, the buffer stays the one source of truth, and duplicates at
the platform are limited to batches whose PUBACK never arrived.

Reconnects back off exponentially with jitter (tenacity); each state change
(connected, lost, refused) is one log event with counts, not a line per try.
"""

from __future__ import annotations

import json
import os
import queue
import random
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from tenacity import RetryError, Retrying, retry_if_exception_type, wait_exponential_jitter

from agent import logs
from agent.buffer import BufferReader, IdRange
from agent.config import MqttConfig
from drivers.core.errors import ConfigError, RetrofitError
from agent.health import Health
from agent.payload import STATUS_SCHEMA, CompactEncoder, FlatEncoder, encode_events, encode_meta, topic
from drivers.core.readings import now_ms


FLAP_WINDOW_S = 10.0
BACKOFF_MAX_S = 60.0


def _credential(explicit: Path | None, name: str) -> Path | None:
    """A configured file, else systemd's LoadCredential= copy, else nothing."""
    if explicit is not None:
        return explicit
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if directory:
        candidate = Path(directory) / name
        # The unit gives every credential a one-newline fallback (systemd
        # refuses empty ones): blank means "not configured".
        try:
            if candidate.is_file() and candidate.read_bytes().strip():
                return candidate
        except OSError:
            return None
    return None


class ConnectFailed(RetrofitError):
    pass


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
            low, high = self._ranges.pop(0)
            if high > self.watermark:
                self.watermark = high
                moved = True
        return moved

    def covers(self, row_id: int) -> bool:
        return row_id <= self.watermark or any(low <= row_id <= high for low, high in self._ranges)

    def highest(self) -> int:
        """The highest acknowledged id (the watermark when nothing lies above it)."""
        return max([self.watermark] + [high for _, high in self._ranges])


@dataclass
class Inflight:
    """A message awaiting its PUBACK: a readings batch or eviction reports."""

    sent: float
    ids: IdRange | None = None
    count: int = 0
    reported: list[int] = field(default_factory=list)


class Uplink(threading.Thread):
    def __init__(
        self,
        cfg: MqttConfig,
        gateway: str,
        site: str,
        stream: str,
        reader: Callable[[], BufferReader],
        on_ack: Callable[[int], None],
        health: Health,
        status_extra: Callable[[], dict[str, object]],
        on_reported: Callable[[list[int]], None],
        on_corrupt: Callable[[IdRange], None],
    ) -> None:
        super().__init__(name="uplink", daemon=True)
        self.cfg = cfg
        self.gateway = gateway
        self.site = site
        self.stream = stream
        self.readings_topic = topic(cfg.topic_prefix, site, gateway, "readings")
        self.status_topic = topic(cfg.topic_prefix, site, gateway, "status")
        self.events_topic = topic(cfg.topic_prefix, site, gateway, "events")
        self.meta_topic = topic(cfg.topic_prefix, site, gateway, "meta")
        self._encoder: FlatEncoder | CompactEncoder = (
            CompactEncoder(stream, compress=cfg.compression == "zlib") if cfg.encoding == "compact"
            else FlatEncoder(gateway, site, stream))
        self._on_reported = on_reported
        self.resolutions: dict[tuple[str, str], dict[str, float | str]] = {}
        self._reader = reader
        self._on_ack = on_ack
        self._on_corrupt = on_corrupt
        self._health = health
        self._status_extra = status_extra
        self._stop_event = threading.Event()
        self._wake = threading.Event()
        self._acks: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._acked = AckedRanges()
        self.resume_after = 0  # the buffer's acknowledged watermark at start
        self._lost = threading.Event()
        self._connack: queue.SimpleQueue[mqtt.ReasonCode] = queue.SimpleQueue()
        self._log = logs.get("uplink").bind(broker=f"{cfg.host}:{cfg.port}")
        self._password = self._read_password()
        self.last_progress = time.monotonic()

    @property
    def acked_watermark(self) -> int:
        """Every id up to this one is acknowledged by the platform (or was never sent: evicted)."""
        return self._acked.watermark

    def preflight(self) -> None:
        """Load password, certificates and key now, so a bad path is a config
        error at start (exit 78), not a dead uplink thread later."""
        self._new_client()

    # -- called from other threads ------------------------------------------
    def notify(self, _ids: IdRange | None = None) -> None:
        """New readings were committed, or acked ones deleted."""
        self._wake.set()

    def stop(self) -> None:
        self._stop_event.set()
        self._wake.set()

    # -- paho callbacks (paho's network thread) --------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:  # noqa: ANN001
        self._connack.put(reason_code)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:  # noqa: ANN001
        self._lost.set()
        self._wake.set()

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:  # noqa: ANN001
        # Never take a lock here: paho holds its own while calling back.
        self._acks.put(mid)
        self._wake.set()

    # -- the thread -------------------------------------------------------------
    def run(self) -> None:
        reader = self._reader()
        self._acked = AckedRanges(self.resume_after)
        flaps = 0
        try:
            while not self._stop_event.is_set():
                try:
                    client = self._connect_with_backoff()
                except RetryError:
                    return  # stopping
                if client is None:
                    return
                connected_at = time.monotonic()
                try:
                    self._serve(client, reader)
                finally:
                    self._close(client)
                if self._stop_event.is_set():
                    return
                self._health.uplink.reconnects += 1
                # A broker that drops us right after accepting must not get a
                # reconnect storm: short-lived connections keep the backoff growing.
                if time.monotonic() - connected_at < FLAP_WINDOW_S:
                    flaps += 1
                    delay = min(BACKOFF_MAX_S, 2.0 ** flaps) * random.uniform(0.5, 1.0)
                    if flaps == 3:
                        self._log.warning("uplink.flapping", connections=flaps, retry_in_s=round(delay, 1))
                    self._sleep(delay)
                else:
                    flaps = 0
        finally:
            reader.close()

    def _read_password(self) -> str | None:
        path = _credential(self.cfg.password_file, "mqtt-password")
        if path is None:
            return None
        try:
            return path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError([f"uplink.mqtt.password_file: cannot read {path}: {exc.strerror}"]) from None

    def _new_client(self) -> mqtt.Client:
        client_id = self.cfg.client_id or f"retrofit-agent-{self.gateway}"
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=mqtt.MQTTv311, clean_session=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        # Our own window bounds what is in flight; paho must never queue more.
        client.max_inflight_messages_set(self.cfg.inflight + 2)
        client.max_queued_messages_set(self.cfg.inflight + 2)
        client.will_set(self.status_topic, self._status_payload("offline"), qos=1, retain=True)
        if self.cfg.username:
            client.username_pw_set(self.cfg.username, self._password)
        if self.cfg.tls is not None:
            tls = self.cfg.tls
            key_file = _credential(tls.key_file, "mqtt-client-key") if tls.cert_file else None
            try:
                client.tls_set(
                    ca_certs=str(tls.ca_file) if tls.ca_file else None,  # None: the system store
                    certfile=str(tls.cert_file) if tls.cert_file else None,
                    keyfile=str(key_file) if key_file else None,
                    cert_reqs=ssl.CERT_REQUIRED,
                )
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError([f"uplink.mqtt.tls: cannot load certificates or key: {exc}"]) from None
            if tls.insecure_skip_hostname_check:
                client.tls_insecure_set(True)
        return client

    def _connect_once(self) -> mqtt.Client:
        client = self._new_client()
        self._lost.clear()
        while not self._connack.empty():
            self._connack.get_nowait()
        try:
            client.connect(self.cfg.host, self.cfg.port, keepalive=int(self.cfg.keepalive))
        except ssl.SSLCertVerificationError as exc:
            raise ConnectFailed(f"TLS: the broker's certificate is not trusted: {exc.verify_message}") from None
        except ssl.SSLError as exc:
            raise ConnectFailed(f"TLS handshake failed: {exc.reason or exc}") from None
        except (OSError, ValueError) as exc:
            raise ConnectFailed(str(exc) or type(exc).__name__) from None
        client.loop_start()
        try:
            code = self._connack.get(timeout=10)
        except queue.Empty:
            self._close(client)
            raise ConnectFailed("no CONNACK within 10 s") from None
        if code.is_failure:
            self._close(client)
            raise ConnectFailed(f"broker refused the connection: {code}")
        return client

    def _connect_with_backoff(self) -> mqtt.Client | None:
        attempts = 0
        started = time.monotonic()

        def log_failure(state) -> None:  # noqa: ANN001
            nonlocal attempts
            attempts += 1
            error = str(state.outcome.exception()) if state.outcome else "?"
            self._health.uplink.last_error = error
            if attempts == 1:
                self._log.warning("uplink.connect_failed", error=error,
                                  retry_in_s=round(state.next_action.sleep, 1))

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
                    return None
                client = self._connect_once()
        self._health.uplink.connected = True
        self._log.info("uplink.connected", attempts=attempts + 1,
                       waited_s=round(time.monotonic() - started, 1))
        return client

    def _sleep(self, seconds: float) -> None:
        """Back off in short steps, so the watchdog sees this thread is alive."""
        deadline = time.monotonic() + seconds
        while not self._stop_event.is_set() and time.monotonic() < deadline:
            self.last_progress = time.monotonic()
            self._stop_event.wait(min(1.0, max(0.0, deadline - time.monotonic())))

    def _close(self, client: mqtt.Client) -> None:
        client.disconnect()
        client.loop_stop()
        self._health.uplink.connected = False

    def _status_payload(self, state: str) -> bytes:
        body: dict[str, object] = {
            "schema": STATUS_SCHEMA, "gateway": self.gateway, "site": self.site,
            "stream": self.stream, "state": state,
        }
        if state == "online":
            body["ts"] = now_ms()
            body.update(self._status_extra())
        return json.dumps(body, separators=(",", ":")).encode()

    def _serve(self, client: mqtt.Client, reader: BufferReader) -> None:
        """Publish batches while connected; return when the connection ends."""
        inflight: dict[int, Inflight] = {}
        cursor = self._acked.watermark  # everything unacknowledged is sent again
        event_cursor = 0
        meta_published = -1
        ack_timeout = self.cfg.ack_timeout
        client.publish(self.status_topic, self._status_payload("online"), qos=1, retain=True)
        next_status = time.monotonic() + self.cfg.status_interval
        while not self._stop_event.is_set() and not self._lost.is_set():
            self._wake.clear()
            self.last_progress = time.monotonic()
            self._take_acks(inflight)
            if inflight and time.monotonic() - min(e.sent for e in inflight.values()) > ack_timeout:
                self._log.warning("uplink.ack_timeout", waiting_batches=len(inflight), after_s=ack_timeout)
                return
            if time.monotonic() >= next_status:
                client.publish(self.status_topic, self._status_payload("online"), qos=1, retain=True)
                next_status = time.monotonic() + self.cfg.status_interval
            if len(inflight) >= self.cfg.inflight:
                self._wake.wait(1.0)
                continue
            # Events first (evictions, meter swaps, clock corrections): they are
            # few, and the platform needs them to read the readings right.
            events = reader.events_after(event_cursor, 500)
            if events:
                info = client.publish(self.events_topic, encode_events(
                    self.gateway, self.site, self.stream, [body for _, body in events]), qos=1)
                if info.rc != mqtt.MQTT_ERR_SUCCESS:
                    return
                inflight[info.mid] = Inflight(time.monotonic(), reported=[seq for seq, _ in events])
                event_cursor = events[-1][0]
                continue
            batch = reader.batch_after(cursor, self.cfg.batch)
            for corrupt in reader.take_corrupt():
                self._on_corrupt(corrupt)
            if not batch:
                self._wake.wait(1.0)
                continue
            covered_from = cursor + 1
            # Acknowledged on an earlier connection (only possible right after
            # a reconnect, below the highest acknowledged id): never resend.
            rows = batch if batch[0][0] > self._acked.highest() else [
                r for r in batch if not self._acked.covers(r[0])]
            if not rows:
                cursor = batch[-1][0]
                if self._acked.add((covered_from, cursor)):
                    self._on_ack(self._acked.watermark)
                continue
            series = reader.series()
            if len(series) != meta_published:
                # New series: describe them (retained) before any reading uses them.
                client.publish(self.meta_topic, encode_meta(self.gateway, self.site, self.stream, series,
                                                            self.resolutions), qos=1, retain=True)
                meta_published = len(series)
            payload = self._encoder.encode(rows, series)
            while len(payload) > self.cfg.max_message_bytes and len(rows) > 1:
                rows = rows[: len(rows) // 2]
                payload = self._encoder.encode(rows, series)
            info = client.publish(self.readings_topic, payload, qos=self.cfg.qos)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                return  # connection gone under us; the next one resends
            inflight[info.mid] = Inflight(time.monotonic(), ids=(covered_from, rows[-1][0]), count=len(rows))
            cursor = rows[-1][0]
        if self._lost.is_set() and not self._stop_event.is_set():
            self._log.warning("uplink.lost", unacked_batches=len(inflight))
        elif self._stop_event.is_set():
            self._drain_acks(inflight, timeout=1.0)
            info = client.publish(self.status_topic, self._status_payload("offline"), qos=1, retain=True)
            try:
                info.wait_for_publish(timeout=1.0)
            except (RuntimeError, ValueError):
                pass  # the connection ended first: the last will says offline

    def _take_acks(self, inflight: dict[int, Inflight]) -> None:
        while not self._acks.empty():
            self._settle(inflight.pop(self._acks.get_nowait(), None))

    def _settle(self, entry: Inflight | None) -> None:
        """The broker acknowledged a message: its readings or reports may go."""
        if entry is None:
            return  # a status message, or a batch of an earlier connection
        if entry.reported:
            self._on_reported(entry.reported)
            return
        if entry.ids is not None:
            if self._acked.add(entry.ids):
                self._on_ack(self._acked.watermark)
            self._health.uplink.batches_acked += 1
            self._health.uplink.readings_acked += entry.count
            self._health.uplink.last_ack_ms = now_ms()

    def _drain_acks(self, inflight: dict[int, Inflight], timeout: float) -> None:
        """At shutdown, give outstanding PUBACKs a moment so fewer batches are resent."""
        deadline = time.monotonic() + timeout
        while inflight and time.monotonic() < deadline and not self._lost.is_set():
            try:
                mid = self._acks.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return
            self._settle(inflight.pop(mid, None))
