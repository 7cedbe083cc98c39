"""A real HTTP(S) ingest endpoint on 127.0.0.1, for the HTTPS uplink's tests.

It answers as a platform would (2xx once a message is stored) and can be
made to misbehave: refuse large bodies (413), fail (500), never answer, ask
for a bearer token or a client certificate. It keeps every message it
accepted, so a test checks completeness the way the platform team would.
"""

from __future__ import annotations

import http.server
import json
import ssl
import threading
import zlib
from pathlib import Path
from typing import Any

from agent.payload import decode_compact
from tests.support import free_port


class HttpPlatform:
    def __init__(self, *, tls: ssl.SSLContext | None = None, token: str | None = None,
                 max_body: int | None = None, port: int | None = None) -> None:
        self.port = port or free_port()
        self.tls = tls
        self.token = token
        self.max_body = max_body
        self.mode = "ok"  # "ok", "fail" (500), "hang" (never answers)
        self.messages: list[tuple[str, dict[str, Any]]] = []
        self.refused: list[tuple[int, int]] = []  # (status, body bytes)
        self.headers: list[dict[str, str]] = []
        self.lock = threading.Lock()
        self._server: http.server.ThreadingHTTPServer | None = None
        self._release = threading.Event()

    # -- running ---------------------------------------------------------------------------------
    def start(self) -> HttpPlatform:
        platform = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_args: object) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                with platform.lock:
                    platform.headers.append(dict(self.headers))
                if platform.mode == "hang":
                    platform._release.wait(30)
                    return
                if platform.token is not None and self.headers.get("Authorization") != f"Bearer {platform.token}":
                    self._answer(401, b"token required")
                    return
                if platform.max_body is not None and length > platform.max_body:
                    with platform.lock:
                        platform.refused.append((413, length))
                    self._answer(413, b"body too large")
                    return
                if platform.mode == "fail":
                    self._answer(500, b"try later")
                    return
                if self.headers.get("Content-Encoding") == "deflate":
                    body = zlib.decompress(body)
                with platform.lock:
                    platform.messages.append((self.headers.get("X-Retrofit-Message", ""), json.loads(body)))
                self._answer(204, b"")

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        if self.tls is not None:
            server.socket = self.tls.wrap_socket(server.socket, server_side=True)
        self._server = server
        self._release.clear()
        threading.Thread(target=server.serve_forever, name="http-platform", daemon=True).start()
        return self

    def stop(self) -> None:
        self._release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> HttpPlatform:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # -- what arrived ----------------------------------------------------------------------------
    def bodies(self, kind: str) -> list[dict[str, Any]]:
        with self.lock:
            return [body for k, body in self.messages if k == kind]

    def readings(self) -> list[dict[str, Any]]:
        """Every reading received, duplicates included (compact ones decoded with the meta received)."""
        out: list[dict[str, Any]] = []
        meta: dict[str, Any] = {}
        with self.lock:
            messages = list(self.messages)
        for kind, body in messages:
            if kind == "meta":
                meta = {**body, "series": {**meta.get("series", {}), **body["series"]}}
            elif kind == "readings" and "readings" in body:
                out += body["readings"]
            elif kind == "readings":
                out += decode_compact(json.dumps(body).encode(), meta)
        return out

    def unique_readings(self) -> dict[int, dict[str, Any]]:
        return {r["id"]: r for r in self.readings()}


def server_context(pki: Path, require_client_cert: bool = False) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(pki / "server.pem"), str(pki / "server.key"))
    if require_client_cert:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=str(pki / "ca.pem"))
    return context
