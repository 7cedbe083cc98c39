"""sd_notify without a dependency: a datagram to $NOTIFY_SOCKET.

systemd's protocol is a few lines: READY=1 when the service is up,
STATUS=... for `systemctl status`, WATCHDOG=1 as a heartbeat, STOPPING=1.
Abstract socket names start with '@'. Outside systemd every call is a no-op.
"""

from __future__ import annotations

import os
import socket


class Notifier:
    def __init__(self, address: str | None = None) -> None:
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET")
        self._address: str | None = None
        self._sock: socket.socket | None = None
        if address:
            self._address = "\0" + address[1:] if address.startswith("@") else address
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.watchdog_usec = int(os.environ.get("WATCHDOG_USEC", "0") or 0)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, *fields: str) -> None:
        if self._sock is None or self._address is None:
            return
        try:
            self._sock.sendto("\n".join(fields).encode(), self._address)
        except OSError:
            pass  # systemd gone or socket full: nothing a daemon can do about it

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
