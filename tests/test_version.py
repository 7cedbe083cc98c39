"""`--version` on both commands: the installed distribution's version, and a
source checkout's, marked as such, when nothing is installed."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import pytest

from agent import cli as agent_cli
from agent.version import UNKNOWN, checkout_version
from simulators import cli as sim_cli
from tests.support import REPO


@pytest.mark.parametrize(("main", "prog"), [(agent_cli.main, "retrofit-agent"), (sim_cli.main, "retrofit-sim")])
def test_version_option_prints_the_installed_version(main: Callable[[list[str]], int], prog: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"{prog} {metadata.version('retrofit-agent')}\n"


def test_a_checkout_without_an_install_reports_its_pyproject_version_marked(tmp_path: Path) -> None:
    shutil.copytree(REPO / "agent", tmp_path / "agent", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "retrofit-agent"\nversion = "9.8.7"\n')
    # -S: no site-packages, so no installed copy (this venv's editable one) is found.
    result = subprocess.run([sys.executable, "-S", "-c", "from agent.version import version; print(version())"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=30, check=False,
                            env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "9.8.7+checkout"


@pytest.mark.parametrize(("content", "expected"), [
    ('[project]\nversion = "1.2+site"\n', "1.2+site.checkout"),
    ("[project]\nname = 'x'\n", UNKNOWN),
    ("this is not toml", UNKNOWN),
    (None, UNKNOWN),
])
def test_checkout_version_says_unknown_rather_than_guessing(tmp_path: Path, content: str | None,
                                                            expected: str) -> None:
    pyproject = tmp_path / "pyproject.toml"
    if content is not None:
        pyproject.write_text(content)
    assert checkout_version(pyproject) == expected


def test_building_the_command_line_does_not_load_the_metadata_machinery() -> None:
    # importlib.metadata brings email, zipfile, csv ... into a daemon that
    # never needs them; only --version may load it.
    probe = ("import sys, agent.cli; agent.cli.build_parser(); "
             "print('importlib.metadata' in sys.modules, 'tomllib' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True,
                            timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False"]
