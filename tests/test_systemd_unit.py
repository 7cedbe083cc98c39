"""The shipped unit stays hardened and keeps what the agent needs; install.sh
stages where it says and never overwrites a technician's config.

The exposure test runs the real `systemd-analyze security --offline=yes`
(CI has it; elsewhere it skips and says why). The install tests run the real
script into a temporary root (--destdir): a real venv, a real pip install,
the real `retrofit-agent check`; only systemctl and user creation are
skipped, as the script does for any staging tree.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support import REPO

UNIT = REPO / "systemd" / "retrofit-agent.service"
INSTALL = REPO / "scripts" / "install.sh"
EXAMPLE = REPO / "configs" / "example.yaml"
MAX_EXPOSURE = 1.5

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed here (CI has it)")


def unit_settings(path: Path = UNIT) -> dict[str, list[str]]:
    """Key -> every value assigned to it, comments and sections dropped."""
    settings: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def one(settings: dict[str, list[str]], key: str) -> str:
    values = settings.get(key, [])
    assert len(values) == 1, f"{key}= should be set exactly once, found {values}"
    return values[0]


# --- systemd-analyze --------------------------------------------------------

@needs_systemd_analyze
def test_exposure_is_at_most_1_5() -> None:
    result = subprocess.run(
        [str(SYSTEMD_ANALYZE), "security", "--offline=yes", "--no-pager", str(UNIT)],
        capture_output=True, text=True, timeout=60,
    )
    output = result.stdout + result.stderr
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", output)
    assert match, f"no 'Overall exposure level' line in:\n{output}"
    exposure = float(match.group(1))
    # The table lists what still counts against the unit: show it on failure.
    exposed = "\n".join(line for line in output.splitlines() if line.startswith("✗"))
    assert exposure <= MAX_EXPOSURE, f"exposure {exposure} > {MAX_EXPOSURE}; open items:\n{exposed}"


@needs_systemd_analyze
def test_unit_verifies_except_for_the_binary_installed_later() -> None:
    result = subprocess.run(
        [str(SYSTEMD_ANALYZE), "verify", "--no-pager", str(UNIT)],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )
    # /opt/retrofit-agent/venv only exists after install.sh; anything else
    # (a typo, an unknown setting, bad syntax) is a real problem.
    problems = [
        line for line in (result.stdout + result.stderr).splitlines()
        if line.strip() and "/opt/retrofit-agent/venv/bin/retrofit-agent is not executable" not in line
    ]
    assert not problems, "\n".join(problems)


# --- the unit's contract with the agent ---------------------------------------

def test_unit_runs_the_daemon_as_systemd_expects() -> None:
    s = unit_settings()
    assert one(s, "Type") == "notify"
    assert one(s, "NotifyAccess") == "main"
    assert one(s, "ExecStart") == (
        "/opt/retrofit-agent/venv/bin/retrofit-agent run --config /etc/retrofit-agent/config.yaml")
    assert one(s, "WatchdogSec") == "60"
    assert one(s, "Restart") == "on-failure"
    # 78 is EX_CONFIG in agent/cli.py: a bad config must not crash-loop.
    from agent.cli import EX_CONFIG
    assert one(s, "RestartPreventExitStatus") == str(EX_CONFIG)
    assert one(s, "TimeoutStopSec") == "15"
    env = " ".join(s["Environment"])
    assert "PYTHONUNBUFFERED=1" in env and "PYTHONFAULTHANDLER=1" in env


def test_unit_keeps_serial_ports_open_and_everything_else_closed() -> None:
    s = unit_settings()
    assert one(s, "DevicePolicy") == "closed"
    allowed = {tuple(v.split()) for v in s["DeviceAllow"]}
    for group in ("char-ttyUSB", "char-ttyACM", "char-ttyAMA", "char-ttyS"):
        assert (group, "rw") in allowed, f"DeviceAllow={group} rw missing: that adapter would be refused"
    # PrivateDevices=yes would hide /dev/ttyUSB* altogether.
    assert s.get("PrivateDevices", ["no"]) == ["no"]
    assert "dialout" in one(s, "SupplementaryGroups").split()
    # Device groups resolve when the service starts: the modules must be loaded.
    assert "modprobe@usbserial.service" in " ".join(s["Wants"])
    assert "modprobe@usbserial.service" in " ".join(s["After"])


def test_unit_allows_outbound_tcp_and_the_notify_socket() -> None:
    s = unit_settings()
    families = one(s, "RestrictAddressFamilies").split()
    assert {"AF_UNIX", "AF_INET", "AF_INET6"} <= set(families)
    assert "PrivateNetwork" not in s
    # The broker's address is site config: no IP allow list in the shipped unit.
    assert "IPAddressDeny" not in s


def test_unit_identity_directories_and_credentials() -> None:
    s = unit_settings()
    assert one(s, "User") == "retrofit-agent" and one(s, "Group") == "retrofit-agent"
    assert one(s, "StateDirectory") == "retrofit-agent"
    assert one(s, "ConfigurationDirectory") == "retrofit-agent"
    loads = dict(v.split(":", 1) for v in s["LoadCredential"])
    assert loads == {"mqtt-password": "/etc/retrofit-agent/mqtt-password",
                     "mqtt-client-key": "/etc/retrofit-agent/mqtt-client-key",
                     "http-token": "/etc/retrofit-agent/http-token",
                     "http-client-key": "/etc/retrofit-agent/http-client-key",
                     "config-signing-key": "/etc/retrofit-agent/config-signing-key",
                     "wmbus-keys": "/etc/retrofit-agent/wmbus-keys.csv"}
    # An absolute LoadCredential= path that is missing fails the start unless
    # a SetCredential= of the same id gives a fallback.
    assert {v.split(":", 1)[0] for v in s["SetCredential"]} == set(loads)
    sysusers = (REPO / "systemd" / "sysusers.d" / "retrofit-agent.conf").read_text()
    assert re.search(r"^u\s+retrofit-agent\s", sysusers, re.MULTILINE)
    assert re.search(r"^m\s+retrofit-agent\s+dialout\s*$", sysusers, re.MULTILINE)


# --- install.sh -------------------------------------------------------------

def install(destdir: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "DESTDIR"}
    return subprocess.run(
        ["bash", str(INSTALL), "--destdir", str(destdir), *args],
        capture_output=True, text=True, timeout=timeout, env=env,
    )


def test_install_script_is_shellcheck_clean() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (apt-get install -y shellcheck)")
    result = subprocess.run([shellcheck, str(INSTALL)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dry_run_prints_the_plan_and_changes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    result = install(root, "--dry-run")
    assert result.returncode == 0, result.stderr
    plan = result.stderr
    assert f"{root}/usr/local/lib/systemd/system/retrofit-agent.service" in plan
    assert f"{root}/etc/retrofit-agent/config.yaml" in plan
    assert "pip install" in plan and "check --config" in plan
    assert not root.exists(), "--dry-run created files"


@pytest.mark.long(20)
@pytest.mark.timeout(600)
def test_install_upgrade_uninstall_in_a_staging_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    example = tmp_path / "example.yaml"
    # The script takes the example as an option; the project's own when present.
    if EXAMPLE.exists():
        shutil.copy(EXAMPLE, example)
    else:
        pytest.skip("configs/example.yaml is not written yet")

    first = install(root, "--example", str(example), timeout=300)
    assert first.returncode == 0, first.stderr
    opt = root / "opt" / "retrofit-agent"
    unit = root / "usr/local/lib/systemd/system/retrofit-agent.service"
    assert unit.read_text() == UNIT.read_text()
    assert (root / "usr/local/lib/sysusers.d/retrofit-agent.conf").is_file()
    assert (root / "usr/local/lib/tmpfiles.d/retrofit-agent.conf").is_file()
    assert (root / "etc/retrofit-agent/profiles").is_dir()
    assert (root / "var/lib/retrofit-agent").is_dir()
    config = root / "etc/retrofit-agent/config.yaml"
    assert config.read_text() == example.read_text()
    assert config.stat().st_mode & 0o777 == 0o640
    # The path ExecStart= names exists and is the venv's real command.
    assert (opt / "venv").is_symlink()
    agent = opt / "venv" / "bin" / "retrofit-agent"
    assert os.access(agent, os.X_OK)
    assert "valid" in first.stderr, "retrofit-agent check did not run on the config"
    assert "still the example" in first.stderr, "must not start on the untouched example"
    assert "skipping systemctl" in first.stderr
    first_venv = (opt / "venv").resolve()

    # Upgrade: a technician's config and the buffer survive, the new venv goes live.
    config.write_text(example.read_text().replace("id: zw-07 ", "id: zw-99 "))
    technicians = config.read_text()
    buffer = root / "var/lib/retrofit-agent/buffer.db"
    buffer.write_bytes(b"unsent readings")
    second = install(root, "--example", str(example), timeout=300)
    assert second.returncode == 0, second.stderr
    assert config.read_text() == technicians, "install.sh overwrote an existing config"
    assert buffer.read_bytes() == b"unsent readings"
    assert "keeping the existing config" in second.stderr
    assert (opt / "venv").resolve() != first_venv
    assert first_venv.is_dir(), "the previous venv is kept for a rollback"

    # A config the new code rejects: the upgrade is not applied.
    live = (opt / "venv").resolve()
    config.write_text(technicians + "not_a_key: 1\n")
    refused = install(root, "--example", str(example), timeout=300)
    assert refused.returncode != 0
    assert "not_a_key" in refused.stderr and "upgrade not applied" in refused.stderr
    assert (opt / "venv").resolve() == live
    assert sorted(p.name for p in opt.glob("venv-*")) == sorted({first_venv.name, live.name})

    # Uninstall keeps config and buffer; --purge removes them.
    removed = install(root, "--uninstall")
    assert removed.returncode == 0, removed.stderr
    assert not opt.exists() and not unit.exists()
    assert config.exists() and buffer.exists()
    purged = install(root, "--uninstall", "--purge")
    assert purged.returncode == 0, purged.stderr
    assert not config.exists() and not buffer.exists()
