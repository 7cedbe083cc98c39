"""Is the wall clock trustworthy? A Raspberry Pi has no real-time clock.

After boot the wall clock can be days wrong until NTP synchronises it.
systemd-timesyncd marks synchronisation by creating
/run/systemd/timesync/synchronized; where that file is not used, `timedatectl
show -p NTPSynchronized` answers. The check is cheap and cached.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from agent import failpoints

TIMESYNC_FLAG = Path("/run/systemd/timesync/synchronized")


class ClockState:
    """The clock the bus workers stamp readings with, and whether to trust it.

    ``trusted`` is set by the main thread from :class:`ClockWatch`. Before
    that, readings carry the monotonic time too, so they can be re-stamped
    once the wall clock is right. The ``clock-skew-s`` failpoint makes the
    wall clock wrong until trusted, as a Raspberry Pi's is after boot.
    """

    def __init__(self, trusted: bool = True) -> None:
        self.trusted = trusted
        skew = failpoints.value("clock-skew-s")
        self._skew_ms = int(float(skew) * 1000) if skew else 0

    def wall_ms(self) -> int:
        wall = time.time_ns() // 1_000_000
        return wall if self.trusted else wall + self._skew_ms

    @staticmethod
    def mono_ms() -> int:
        return time.monotonic_ns() // 1_000_000

    def stamp(self) -> tuple[int, int | None]:
        """The moment an answer came: wall-clock ms, and monotonic ms while the wall clock is not trusted."""
        return self.wall_ms(), None if self.trusted else self.mono_ms()


class ClockWatch:
    def __init__(self, flag_path: Path | None = TIMESYNC_FLAG, use_timedatectl: bool = True,
                 cache_s: float = 30.0) -> None:
        self.flag_path = flag_path
        # A system without timedatectl is found out by the first try.
        self.use_timedatectl = use_timedatectl
        self.cache_s = cache_s
        self._cached: tuple[float, bool | None] | None = None

    def synchronised(self) -> bool | None:
        """True or False when known; None when nothing on this system can tell.

        The flag file is looked at on every call (a stat); timedatectl, a
        subprocess, at most every ``cache_s``.
        """
        if self.flag_path is not None and self.flag_path.exists():
            return True
        if self.use_timedatectl:
            now = time.monotonic()
            if self._cached is None or now - self._cached[0] >= self.cache_s:
                self._cached = (now, self._ask_timedatectl())
            if self._cached[1] is not None:
                return self._cached[1]
        # timesyncd keeps its directory while it has not synchronised yet; on a
        # system without it nothing can tell, and nothing is flagged.
        if self.flag_path is not None and self.flag_path.parent.is_dir():
            return False
        return None

    def _ask_timedatectl(self) -> bool | None:
        try:
            result = subprocess.run(["timedatectl", "show", "-p", "NTPSynchronized", "--value"],
                                    check=False, capture_output=True, text=True, timeout=2)
        except FileNotFoundError:
            self.use_timedatectl = False
            return None
        except (OSError, subprocess.TimeoutExpired):
            return None
        if result.returncode == 0 and result.stdout.strip() in ("yes", "no"):
            return result.stdout.strip() == "yes"
        return None
