"""HTTPS: every message is a POST of the same JSON the MQTT topics carry; 2xx acknowledges it.

The platform tells messages apart by their ``schema`` field (readings,
compact readings, meta, events, status) and, for convenience, by the
``X-Retrofit-Message`` header. ``(stream, id)`` makes every retry
idempotent, so a POST whose answer was lost is simply sent again. A
compact message compressed with zlib is sent with ``Content-Encoding:
deflate`` (HTTP's name for a zlib stream).

One connection, kept alive; a POST is answered before the next is sent, so
an acknowledgement is known at once. TLS is verified (the system's
certificates, or ``tls.ca_file``); a client certificate and a bearer token
(``token_file``, or the systemd credential ``http-token``) are optional.

Answers: 2xx acknowledged; 413 "too large" refused (the forwarder sends
smaller messages from then on); anything else, a timeout or a broken
connection ends the connection, and the forwarder tries again with backoff.
"""

from __future__ import annotations

import http.client
import queue
import ssl
import threading
from urllib.parse import urlsplit

from agent.config import HttpConfig, credential, read_secret
from agent.forward import ConnectFailed, Kind, Lost
from agent.transports import drained
from drivers.core.errors import ConfigError

ANSWER_BYTES = 65_536  # what is read of an answer's body (it only says why)
ZLIB_MAGIC = 0x78


class HttpTransport:
    def __init__(self, cfg: HttpConfig) -> None:
        self.cfg = cfg
        parts = urlsplit(cfg.url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port or (443 if self._https else 80)
        self._path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.describe = f"{parts.scheme}://{self._host}:{self._port}{parts.path or '/'}"
        self._token = read_secret(cfg.token_file, "http-token", "uplink.http.token_file")
        self._context = self._tls_context() if self._https else None
        self._conn: http.client.HTTPConnection | None = None
        self._acks: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._refused: queue.SimpleQueue[tuple[int, str]] = queue.SimpleQueue()
        self._ticket = 0
        self._lost = False
        self.wakeup = threading.Event()

    def _tls_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.cfg.tls.ca_file) if self.cfg.tls and
                                             self.cfg.tls.ca_file else None)
        tls = self.cfg.tls
        if tls is not None and tls.cert_file is not None:
            key = credential(tls.key_file, "http-client-key")
            try:
                context.load_cert_chain(str(tls.cert_file), str(key) if key else None)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError([f"uplink.http.tls: cannot load the client certificate or key: {exc}"]) from None
        if tls is not None and tls.insecure_skip_hostname_check:
            context.check_hostname = False
        return context

    # -- Transport ---------------------------------------------------------------------------------
    def open(self, farewell: bytes) -> None:
        self._lost = False
        if self._https:
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                self._host, self._port, timeout=self.cfg.timeout, context=self._context)
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=self.cfg.timeout)
        try:
            conn.connect()
        except ssl.SSLCertVerificationError as exc:
            conn.close()
            raise ConnectFailed(f"TLS: the platform's certificate is not trusted: {exc.verify_message}") from None
        except ssl.SSLError as exc:
            conn.close()
            raise ConnectFailed(f"TLS handshake failed: {exc.reason or exc}") from None
        except (TimeoutError, OSError) as exc:
            conn.close()
            raise ConnectFailed(str(exc) or type(exc).__name__) from None
        self._conn = conn

    def room(self, kind: Kind, part: int = 0) -> int:
        return self.cfg.max_message_bytes

    def send(self, kind: Kind, payload: bytes, part: int = 0) -> int | None:
        if not payload:
            return None  # nothing is retained over HTTP: nothing to clear
        self._ticket += 1
        status, reason = self._post(kind, payload)
        if 200 <= status < 300:
            self._acks.put(self._ticket)
        elif status == 413:
            self._refused.put((self._ticket, f"HTTP 413 {reason}"))
        else:
            self._lost = True
            raise Lost(f"the platform answered HTTP {status} {reason}".strip())
        self.wakeup.set()
        return self._ticket

    def _post(self, kind: Kind, payload: bytes, timeout: float | None = None) -> tuple[int, str]:
        conn = self._conn
        if conn is None or self._lost:
            raise Lost("not connected")
        headers = {"Content-Type": "application/json", "X-Retrofit-Message": kind,
                   "Content-Length": str(len(payload))}
        if payload[0] == ZLIB_MAGIC:
            headers["Content-Encoding"] = "deflate"
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        try:
            if timeout is not None and conn.sock is not None:
                conn.sock.settimeout(timeout)
            conn.request("POST", self._path, body=payload, headers=headers)
            answer = conn.getresponse()
            body = answer.read(ANSWER_BYTES)  # a platform that closes after it: http.client opens again
        except (TimeoutError, OSError, http.client.HTTPException) as exc:
            self._lost = True
            raise Lost(str(exc) or type(exc).__name__) from None
        why = answer.reason or ""
        if not 200 <= answer.status < 300 and body:
            why = f"{why}: {body[:200].decode('utf-8', 'replace').strip()}"
        return answer.status, why

    def acknowledged(self) -> list[int]:
        return drained(self._acks)

    def refused(self) -> list[tuple[int, str]]:
        return drained(self._refused)

    def lost(self) -> bool:
        return self._lost

    def close(self, farewell: bytes | None) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if farewell is not None and not self._lost:
            self._conn = conn
            try:
                self._post("status", farewell, timeout=1.0)
            except Lost:
                pass  # the platform sees the status go stale instead
            self._conn = None
        conn.close()
