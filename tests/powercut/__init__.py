"""A mounted power-cut file system for tests (tests/powercut/fs.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.support import REPO, wait_until


def fuse_problem() -> str | None:
    """Why a FUSE file system cannot be mounted here, or None when it can."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is missing (apt-get install fuse3; ./scripts/setup.sh installs it)"
    try:
        import mfusepy  # noqa: F401
    except (ImportError, OSError) as exc:
        return f"mfusepy cannot load libfuse3: {exc} (./scripts/setup.sh installs both)"
    return None


class PowerCutMount:
    """The file system in its own process, mounted at ``mountpoint``."""

    def __init__(self, mountpoint: Path, log: Path) -> None:
        self.mountpoint = mountpoint
        self.log = log
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> PowerCutMount:
        problem = fuse_problem()
        if problem:
            raise AssertionError(f"the power-cut file system cannot run: {problem}")
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self._proc = subprocess.Popen([sys.executable, "-m", "tests.powercut.fs", str(self.mountpoint)],
                                          stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
        wait_until(lambda: os.path.ismount(self.mountpoint) or self._proc.poll() is not None, 15,  # type: ignore[union-attr]
                   "the power-cut file system to mount")
        if not os.path.ismount(self.mountpoint):
            raise AssertionError(f"the power-cut file system did not mount: {self.log.read_text()[-2000:]}")
        return self

    def cut(self) -> None:
        """Everything not synced is gone (call it with no process writing)."""
        (self.mountpoint / ".powercut").write_text("cut")

    def figures(self) -> dict[str, int]:
        return dict(json.loads((self.mountpoint / ".powercut").read_text()))

    def stop(self) -> None:
        subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)], capture_output=True, timeout=10,
                       check=False)
        if self._proc is not None:
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
