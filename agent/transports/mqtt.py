"""MQTT (paho), QoS 1: a message is acknowledged by its PUBACK.

Each connection is a fresh paho client with a clean session: when a
connection ends, what it had in flight is simply unacknowledged and the
forwarder sends it again from the buffer, so paho never holds a queue of
its own across outages. Topics (docs/payload.md):
``{prefix}/{site}/{gateway}/readings|events|status|meta[/N]``; status and
meta are retained, and the offline status is the last will.

It also listens, when asked (:meth:`MqttTransport.listen`): remote
configuration subscribes to ``.../config/set`` on every connection (a clean
session forgets subscriptions) and answers on ``.../config/state``
(agent/remote_config.py).
"""

from __future__ import annotations

import queue
import ssl
import threading
from collections.abc import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.config import MqttConfig, credential, read_secret
from agent.forward import ConnectFailed, Kind, Lost
from agent.payload import topic
from agent.transports import drained
from drivers.core.errors import ConfigError

# A PUBLISH packet beyond its payload: fixed header (up to 5 bytes), topic
# length (2), packet id (2), and the topic itself.
_PUBLISH_OVERHEAD = 9
CONNACK_TIMEOUT_S = 10.0


class MqttTransport:
    def __init__(self, cfg: MqttConfig, gateway: str, site: str) -> None:
        self.cfg = cfg
        self.gateway = gateway
        self.describe = f"mqtt://{cfg.host}:{cfg.port}"
        self._topics = {kind: topic(cfg.topic_prefix, site, gateway, kind)
                        for kind in ("readings", "events", "meta", "status")}
        self._site = site
        self._listeners: dict[str, Callable[[bytes], None]] = {}
        self.connections = 0  # connections made (and subscribed); a listener republishes on a new one
        self.subscription_refused: str | None = None  # the broker's SUBACK refused a listener's topic (ACL)
        self._password = read_secret(cfg.password_file, "mqtt-password", "uplink.mqtt.password_file")
        self._client: mqtt.Client | None = None
        self._acks: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._connack: queue.SimpleQueue[mqtt.ReasonCode] = queue.SimpleQueue()
        self._lost = threading.Event()
        self.wakeup = threading.Event()  # the forwarder's: set on an acknowledgement or a loss
        self.preflight()

    def preflight(self) -> None:
        """Load password, certificates and key now, so a bad path is a config
        error at start (exit 78), not a dead uplink thread later."""
        self._new_client(b"")

    def _topic(self, kind: Kind, part: int) -> str:
        return self._topics[kind] if part <= 1 else f"{self._topics[kind]}/{part}"

    # -- paho callbacks (paho's network thread; never take a lock here) -------------------------
    def _on_connect(self, client: mqtt.Client, userdata: object, flags: mqtt.ConnectFlags, reason_code: ReasonCode,
                    properties: Properties | None) -> None:
        if not reason_code.is_failure:
            for subscription in self._listeners:
                client.subscribe(subscription, qos=1)
            self.connections += 1
        self._connack.put(reason_code)

    def _on_subscribe(self, client: mqtt.Client, userdata: object, mid: int, reason_codes: list[ReasonCode],
                      properties: Properties | None) -> None:
        refused = [str(code) for code in reason_codes if code.is_failure]
        self.subscription_refused = f"{', '.join(self._listeners)}: {', '.join(refused)}" if refused else None

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        listener = self._listeners.get(message.topic)
        if listener is not None:
            listener(bytes(message.payload))

    def _on_disconnect(self, client: mqtt.Client, userdata: object, flags: mqtt.DisconnectFlags,
                       reason_code: ReasonCode, properties: Properties | None) -> None:
        self._lost.set()
        self.wakeup.set()

    def _on_publish(self, client: mqtt.Client, userdata: object, mid: int, reason_code: ReasonCode,
                    properties: Properties | None) -> None:
        self._acks.put(mid)
        self.wakeup.set()

    # -- Transport ---------------------------------------------------------------------------------
    def _new_client(self, farewell: bytes) -> mqtt.Client:
        client_id = self.cfg.client_id or f"retrofit-agent-{self.gateway}"
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=mqtt.MQTTv311, clean_session=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        # The forwarder's window bounds what is in flight; paho must never queue more.
        client.max_inflight_messages_set(self.cfg.inflight + 4)
        client.max_queued_messages_set(self.cfg.inflight + 4)
        client.will_set(self._topics["status"], farewell, qos=1, retain=True)
        if self.cfg.username:
            client.username_pw_set(self.cfg.username, self._password)
        if self.cfg.tls is not None:
            tls = self.cfg.tls
            key_file = credential(tls.key_file, "mqtt-client-key") if tls.cert_file else None
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

    def open(self, farewell: bytes) -> None:
        client = self._new_client(farewell)
        self._lost.clear()
        for pending in (self._connack, self._acks):
            while not pending.empty():
                pending.get_nowait()
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
            code = self._connack.get(timeout=CONNACK_TIMEOUT_S)
        except queue.Empty:
            self._stop(client)
            raise ConnectFailed(f"no CONNACK within {CONNACK_TIMEOUT_S:g} s") from None
        if code.is_failure:
            self._stop(client)
            raise ConnectFailed(f"broker refused the connection: {code}")
        self._client = client

    def listen(self, leaf: str, on_message: Callable[[bytes], None]) -> None:
        """Subscribe to ``{prefix}/{site}/{gateway}/{leaf}`` (QoS 1) on every
        connection from the next one on. ``on_message`` gets each payload on
        paho's network thread: it must only hand it over, never block."""
        self._listeners[topic(self.cfg.topic_prefix, self._site, self.gateway, leaf)] = on_message

    def publish_retained(self, leaf: str, payload: bytes) -> bool:
        """Publish a retained message (QoS 1) beside the agent's own topics;
        False when not connected (the caller publishes again on the next
        connection). Its acknowledgement is not followed: the forwarder
        ignores tickets it did not send."""
        client = self._client
        if client is None or self._lost.is_set():
            return False
        info = client.publish(topic(self.cfg.topic_prefix, self._site, self.gateway, leaf), payload,
                              qos=1, retain=True)
        return info.rc == mqtt.MQTT_ERR_SUCCESS

    def room(self, kind: Kind, part: int = 0) -> int:
        return self.cfg.max_message_bytes - _PUBLISH_OVERHEAD - len(self._topic(kind, part).encode())

    def send(self, kind: Kind, payload: bytes, part: int = 0) -> int | None:
        client = self._client
        if client is None or self._lost.is_set():
            raise Lost("not connected")
        retain = kind in ("status", "meta")
        info = client.publish(self._topic(kind, part), payload, qos=self.cfg.qos, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise Lost(mqtt.error_string(info.rc))
        return info.mid

    def acknowledged(self) -> list[int]:
        return drained(self._acks)

    def refused(self) -> list[tuple[int, str]]:
        return []  # MQTT 3.1.1 cannot refuse a message: a broker drops the connection instead

    def lost(self) -> bool:
        return self._lost.is_set()

    def close(self, farewell: bytes | None) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        if farewell is not None and not self._lost.is_set():
            info = client.publish(self._topics["status"], farewell, qos=1, retain=True)
            try:
                info.wait_for_publish(timeout=1.0)
            except (RuntimeError, ValueError):
                pass  # the connection ended first: the last will says offline
        self._stop(client)

    @staticmethod
    def _stop(client: mqtt.Client) -> None:
        client.disconnect()
        client.loop_stop()
