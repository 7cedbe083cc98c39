"""What a newcomer reads after the Quick start: where the command is, what
--config defaults to, and a layout section that names what is there
(issue 15 item 15)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("command", ["run", "check", "status"])
def test_config_option_has_help_with_its_default(command: str) -> None:
    result = subprocess.run([sys.executable, "-m", "agent.cli", command, "--help"], check=False, capture_output=True, text=True,
                            cwd=REPO, timeout=30, env={**os.environ, "COLUMNS": "200"})  # no wrapping
    assert result.returncode == 0
    help_text = " ".join(result.stdout.split())
    assert re.search(r"--config FILE\s+the agent's config \(default /etc/retrofit-agent/config\.yaml\)", help_text), \
        help_text


def test_readme_says_where_the_commands_are_after_the_quick_start() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    quick_start = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    assert ".venv/bin" in quick_start and "not on your PATH" in quick_start


def _layout() -> str:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    return readme.split("## Layout", 1)[1].split("\n## ", 1)[0]


@pytest.mark.parametrize("folder", ["configs", "docs"])
def test_readme_layout_names_every_file_of(folder: str) -> None:
    layout = _layout()
    files = sorted(path.name for path in (REPO / folder).iterdir() if path.is_file())
    assert files
    missing = [name for name in files if name not in layout]
    assert not missing, f"README's layout section does not name {folder}/{missing}"


def test_setup_says_once_where_the_commands_are(tmp_path: Path) -> None:
    """A real install takes a minute and the network: the venv here is one
    whose python accepts any command and does nothing, so only what setup.sh
    itself prints is tested (the real venv is exercised by every other test)."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text("#!/bin/sh\nexit 0\n")
    python.chmod(0o755)
    env = {**os.environ, "RETROFIT_VENV": str(venv)}

    def setup() -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", str(REPO / "scripts" / "setup.sh")], check=False, capture_output=True, text=True,
                              env=env, timeout=30)

    first, second = setup(), setup()
    assert first.returncode == 0, first.stderr
    assert f"the commands are in {venv}/bin (not on PATH): {venv}/bin/retrofit-agent --help" in first.stderr
    assert second.returncode == 0
    assert "the commands are in" not in second.stderr, "said once, at install, not on every run"
