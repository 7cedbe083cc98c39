"""A plain, non-editable install carries the code, the commands and the profiles."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.support import REPO

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    """The wheel, built once with pip as a user would (what pip printed, and the file)."""
    work = tmp_path_factory.mktemp("wheel")
    # Build from a copy so the checkout gets no build/ or egg-info litter.
    source = work / "src"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", ".demo", "__pycache__", "build", "*.egg-info", ".hypothesis", ".pytest_cache"))
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(work / "dist"), str(source)],
        check=False, capture_output=True, text=True, timeout=200,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    return build, next((work / "dist").glob("retrofit_agent-*.whl"))


def test_building_the_package_warns_of_nothing_deprecated(
        built: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    """setuptools deprecated ``project.license`` as a table (issue 15): every
    set-up printed the warning, twice."""
    build, _ = built
    said = [line.strip() for line in (build.stdout + build.stderr).splitlines() if "deprecat" in line.lower()]
    assert said == []


def test_wheel_ships_profiles_and_commands(tmp_path: Path, built: tuple[subprocess.CompletedProcess[str], Path]
                                          ) -> None:
    _, wheel = built
    names = zipfile.ZipFile(wheel).namelist()
    assert "drivers/profiles/eastron-sdm630.yaml" in names
    assert "drivers/profiles/xy-md02.yaml" in names
    entry_points = zipfile.ZipFile(wheel).read(
        next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "retrofit-agent = agent.cli:main" in entry_points
    assert "retrofit-sim = simulators.cli:main" in entry_points

    target = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(target), str(wheel)],
        check=False, capture_output=True, text=True, timeout=120,
    )
    assert install.returncode == 0, install.stderr
    # -S: no site hooks, so an editable install of the checkout cannot shadow
    # the wheel; the dependencies come from this venv's site-packages.
    deps = sysconfig.get_paths()["purelib"]
    listing = subprocess.run(
        [sys.executable, "-S", "-c",
         "import sys; from agent.cli import main; import agent; print(agent.__file__); sys.exit(main(['profiles', 'list']))"],
        check=False, capture_output=True, text=True, cwd=tmp_path, timeout=60,
        env={"PYTHONPATH": f"{target}:{deps}", "PATH": "/usr/bin:/bin"},
    )
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.splitlines()[0].startswith(str(target)), "imported the checkout, not the wheel"
    assert "eastron-sdm630" in listing.stdout and "xy-md02" in listing.stdout
