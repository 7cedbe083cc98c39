"""Is the wall clock trustworthy? A Raspberry Pi has no real-time clock.

After boot the wall clock can be days wrong until NTP synchronises it.
systemd-timesyncd marks synchronisation by creating
/run/systemd/timesync/synchronized; where that file is not used, `timedatectl
show -p NTPSynchronized` answers. The check is cheap and cached.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

TIMESYNC_FLAG = Path("/run/systemd/timesync/synchronized")


class ClockWatch:
    def __init__(self, flag_path: Path | None = TIMESYNC_FLAG, use_timedatectl: bool = True,
                 cache_s: float = 30.0) -> None:
        self.flag_path = flag_path
        self.use_timedatectl = use_timedatectl and shutil.which("timedatectl") is not None
        self.cache_s = cache_s
        self._cached: tuple[float, bool | None] | None = None

    def synchronised(self) -> bool | None:
        """True or False when known; None when nothing on this system can tell."""
        now = time.monotonic()
        if self._cached is not None and now - self._cached[0] < self.cache_s:
            return self._cached[1]
        answer = self._ask()
        self._cached = (now, answer)
        return answer

    def _ask(self) -> bool | None:
        if self.flag_path is not None and self.flag_path.exists():
            return True
        if self.use_timedatectl:
            try:
                result = subprocess.run(["timedatectl", "show", "-p", "NTPSynchronized", "--value"],
                                        capture_output=True, text=True, timeout=2)
            except (OSError, subprocess.TimeoutExpired):
                return None
            if result.returncode == 0 and result.stdout.strip() in ("yes", "no"):
                return result.stdout.strip() == "yes"
            return None
        return False if self.flag_path is not None else None
