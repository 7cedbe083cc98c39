"""The daemon's own process: stop signals, one agent per buffer, private files.

Kept light (standard library only) because `retrofit-agent run` sets these up
before it imports the rest of the agent: the imports, the config and the
buffer take a few tenths of a second, and a SIGTERM in that time must stop
the agent cleanly rather than kill it without a word (exit 143).
"""

from __future__ import annotations

import fcntl
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from drivers.core.errors import RetrofitError

# SIGHUP too: a terminal closed under a hand-started agent, or a `kill -HUP`
# meant as "reload", must not end it like a crash (exit 129, the last flush
# lost). It stops it cleanly; systemd restarts the service to reload.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# Group may read (a technician in the service's group runs `status`), others
# never: the buffer and the status file are the building's consumption data.
PRIVATE_UMASK = 0o027
PRIVATE_FILE_MODE = 0o640


class StartupInterrupted(Exception):
    """A stop signal came while the agent was starting; ``step`` says where."""

    def __init__(self, step: str) -> None:
        super().__init__(step)
        self.step = step


class StopRequest:
    """Which stop signal came, from the first moment of `run` to the end.

    The handler only records: it may run between any two bytecodes of the
    main thread, so it neither logs nor closes anything. Start-up asks
    :meth:`check` between its steps; the running agent waits on ``event``.
    """

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signal: str | None = None

    def install(self) -> StopRequest:
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._on_signal)
        return self

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self.signal is None:
            self.signal = signal.Signals(signum).name
        self.event.set()

    def check(self, step: str, hold: frozenset[str] = frozenset(),
              on_hold: Callable[[str], None] | None = None) -> None:
        """Raise StartupInterrupted when a stop was asked for before ``step``.

        ``hold`` is the set of active failpoints: with ``hold-start:STEP`` a
        test makes start-up wait here (until a signal, at most 30 s), so it
        can send its signal at a known step instead of after a guessed sleep.
        ``on_hold`` is called first, to say so in the log."""
        if f"hold-start:{step}" in hold:
            if on_hold is not None:
                on_hold(step)
            self.event.wait(30)
        if self.event.is_set():
            raise StartupInterrupted(step)


class AlreadyRunning(RetrofitError):
    """Another agent holds this buffer."""


class BufferLock:
    """An exclusive lock on ``<buffer>.lock`` for the life of the process.

    Two agents on one buffer would be two masters on one RS-485 line, one
    MQTT client id taken in turns, and ids issued twice. flock(2) is released
    by the kernel when the process ends however it ends, so a crash never
    leaves a stale lock; the pid written into the file only names the holder
    in the refusal. The descriptor is not inherited by child processes
    (timedatectl), which would otherwise keep the lock after the agent died.
    """

    def __init__(self, buffer_path: Path) -> None:
        self.path = Path(f"{buffer_path}.lock")
        buffer_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE_MODE)
        except OSError as exc:
            raise RetrofitError(f"cannot open the lock file {self.path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f"another agent (pid {holder})" if holder else "another agent"
            raise AlreadyRunning(
                f"{who} is running on the buffer {buffer_path}; stop it first "
                "(`systemctl stop retrofit-agent`, or Ctrl-C where it was started by hand)") from None
        except OSError as exc:
            os.close(fd)
            raise RetrofitError(f"cannot lock {self.path}: {exc.strerror}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Only for tests and embedding: the process's end releases it anyway."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def private_umask() -> int:
    """Tighten the process's umask to at least PRIVATE_UMASK (systemd's
    UMask=0077 stays); returns the old one. Called before anything is made."""
    old = os.umask(PRIVATE_UMASK)
    os.umask(old | PRIVATE_UMASK)
    return old


def make_private(path: Path) -> list[str]:
    """Create ``path`` empty with PRIVATE_FILE_MODE if it is missing, so that
    SQLite gives its -wal and -shm files the same mode whatever the umask;
    take the world's permissions away from an existing file and its -wal and
    -shm (made by an older agent). Returns the files whose mode changed."""
    tightened: list[str] = []
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, PRIVATE_FILE_MODE))
    except FileExistsError:
        pass
    except OSError:
        return tightened  # the buffer reports what is wrong with its directory
    for candidate in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        try:
            mode = candidate.stat().st_mode & 0o777
            if mode & 0o007:
                os.chmod(candidate, mode & ~0o007)
                tightened.append(str(candidate))
        except OSError:
            continue  # absent, or not ours to change
    return tightened
