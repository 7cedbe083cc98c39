"""Is a serial port or a TCP endpoint usable at all? Asked by every
protocol's commissioning verbs before they talk to a meter, and on the
error path of a link that cannot open its line.

A port that cannot be used is :class:`PortUnavailable`, said at once and
with the reason, instead of a scan of empty answers.
"""

from __future__ import annotations

import fcntl
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager

# pyserial lets termios.error through when a port refuses settings.
from termios import error as TermiosError  # noqa: N812 - an exception class, named as one
from typing import Protocol

from drivers.core.errors import PortUnavailable


def check_serial_port(port: str, baudrate: int, parity: str, stopbits: int = 1, bytesize: int = 8) -> None:
    """Open and close ``port`` with these settings, or raise PortUnavailable
    saying why. A ``socket://host:port`` URL (a TCP-to-serial gateway) is
    checked by connecting to it."""
    if "://" in port:
        scheme, _, rest = port.partition("://")
        host, _, number = rest.split("/", 1)[0].rpartition(":")
        if scheme != "socket" or not host or not number.isdigit():
            raise PortUnavailable(f"{port}: expected a serial port (/dev/ttyUSB0) or socket://HOST:PORT")
        check_tcp(host, int(number), 2.0, what=port)
        return
    if not os.path.exists(port):
        raise PortUnavailable(f"{port}: no such port (USB adapter unplugged? `ls /dev/serial/by-id/` lists "
                              "the adapters present)")
    if not os.access(port, os.R_OK | os.W_OK):
        raise PortUnavailable(f"{port}: no permission to open it (is this user in the dialout group?)")
    if not _is_terminal(port):
        raise PortUnavailable(f"{port} is not a serial port")
    settings = f"{baudrate} {bytesize}{parity}{stopbits}"
    # A pty refuses parity (EINVAL), though not always on its first open.
    if os.path.realpath(port).startswith("/dev/pts/") and parity != "N":
        raise PortUnavailable(f"{port} refuses {settings}: it is a pty (a virtual serial line), which "
                              "takes parity N only: add --parity N", settings_refused=True)
    import serial  # pyserial: asked on site, not loaded by the daemon for nothing

    with refused_settings(port, settings):
        serial.Serial(port, baudrate=baudrate, parity=parity, stopbits=stopbits, bytesize=bytesize,
                      timeout=0).close()


@contextmanager
def refused_settings(port: str, settings: str) -> Iterator[None]:
    """A port that will not take these settings, as PortUnavailable: pyserial
    lets termios.error through, which is no OSError."""
    import serial

    try:
        yield
    except (serial.SerialException, TermiosError, ValueError) as exc:
        raise PortUnavailable(f"{port} refuses {settings}: {_reason(exc)}", settings_refused=True) from None


def _is_terminal(port: str) -> bool:
    """A serial port is a terminal device; a plain file or /dev/null is not."""
    try:
        descriptor = os.open(port, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as exc:
        raise PortUnavailable(f"{port}: cannot open: {_reason(exc)}") from None
    try:
        return os.isatty(descriptor)
    finally:
        os.close(descriptor)


def check_tcp(host: str, port: int, timeout: float, what: str | None = None) -> None:
    """Connect once and close, or raise PortUnavailable saying why."""
    where = what or f"tcp://{host}:{port}"
    try:
        with socket.create_connection((host, port), timeout=max(timeout, 1.0)):
            pass
    except socket.gaierror:
        raise PortUnavailable(f"{where}: unknown host {host!r}") from None
    except ConnectionRefusedError:
        raise PortUnavailable(f"{where}: connection refused: nothing listens there (wrong port?)") from None
    except TimeoutError:
        raise PortUnavailable(f"{where}: no connection within {max(timeout, 1.0):g} s (host down or "
                              "filtered?)") from None
    except OSError as exc:
        raise PortUnavailable(f"{where}: {_reason(exc)}") from None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    if isinstance(exc, TermiosError) and len(exc.args) == 2:
        return str(exc.args[1])
    return str(exc) or type(exc).__name__


def close_quietly(line: Closable | None) -> None:
    """Close a serial line that may already be gone (unplugged): a failing close is no news.

    pyserial's SerialException is an OSError.
    """
    if line is None:
        return
    try:
        line.close()
    except OSError:
        pass


class Closable(Protocol):
    def close(self) -> None: ...


def port_in_use(port: str) -> bool:
    """Does another process hold the port's exclusive lock (pyserial's
    ``exclusive=True`` takes an advisory flock)? Asked on the error path only."""
    try:
        fd = os.open(port, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # closing the only descriptor releases a lock taken here
    return False
