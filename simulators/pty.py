"""A virtual serial cable: two ptys joined by socat.

One end for the simulated meters, the other for the agent, both opened with
pyserial as a real RS-485 adapter would be.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from drivers.core.errors import RetrofitError


class PtyPair:
    def __init__(self, meter_end: Path, agent_end: Path) -> None:
        self.meter_end = meter_end
        self.agent_end = agent_end
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 5.0) -> PtyPair:
        socat = shutil.which("socat")
        if socat is None:
            raise RetrofitError("socat is not installed (apt-get install socat): it makes the virtual serial line")
        for end in (self.meter_end, self.agent_end):
            end.parent.mkdir(parents=True, exist_ok=True)
            if end.is_symlink() or end.exists():
                end.unlink()
        self._proc = subprocess.Popen(
            [socat, "-d", "-d",
             f"pty,raw,echo=0,link={self.meter_end}", f"pty,raw,echo=0,link={self.agent_end}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while not (self.meter_end.exists() and self.agent_end.exists()):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RetrofitError(f"socat could not create the pty pair {self.meter_end} <-> {self.agent_end}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        for end in (self.meter_end, self.agent_end):
            if end.is_symlink():
                try:
                    os.unlink(end)
                except OSError:
                    pass

    def __enter__(self) -> PtyPair:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
