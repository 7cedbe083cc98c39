"""Broken and hostile configs, profiles, secrets and status files, through
the real command line: each gets one clear line and its exit code (78 for a
config, a warning for a broken profile nobody uses), never a traceback, and
never gigabytes of memory (issue 20, item 7)."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO, AgentProcess, wait_until

pytestmark = pytest.mark.timeout(120)

GOOD = """\
gateway: {id: zw-07, site: krakow-zlotego-wieku-7}
buffer:  {path: state/buffer.db}
uplink:
  mqtt:
    host: 127.0.0.1
    port: 1
buses:
  - {id: plant-room, type: modbus-tcp, host: 127.0.0.1, port: 5020}
devices:
  - {id: room-101, bus: plant-room, address: 10, profile: xy-md02, interval: 5m}
health: {status_file: status.json}
"""
MEMORY_LIMIT_KB = 1024 * 1024  # the 617-byte bomb took 2.4 GB before the loader was bounded


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The command line as a technician runs it, within 1 GB of address space
    (set by the shell: preexec_fn is not safe in a process with threads)."""
    command = " ".join(shlex.quote(a) for a in (sys.executable, "-m", "agent.cli", *args))
    return subprocess.run(["sh", "-c", f"ulimit -v {MEMORY_LIMIT_KB} && exec {command}"], capture_output=True,
                          text=True, cwd=REPO, timeout=60, check=False)


def one_clean_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single line a technician gets; no traceback anywhere."""
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def _bomb(levels: int = 9, fan: int = 9) -> str:
    """'Billion laughs': each anchor a list of `fan` aliases of the previous one."""
    text = "x0: &a0 [" + ", ".join(["lol"] * fan) + "]\n"
    for level in range(1, levels):
        text += f"x{level}: &a{level} [" + ", ".join([f"*a{level - 1}"] * fan) + "]\n"
    return text


HOSTILE_YAML = {
    "alias-bomb": (_bomb(), 6, "aliases here expand to more than"),
    "recursive-alias": ("loop: &loop [*loop]\n", 1, "recursive alias"),
    "deep-nesting": ("deep: " + "[" * 20_000 + "]" * 20_000 + "\n", 1, "nested more than 32 levels"),
    "deep-mapping": ("deep: " + "{a: " * 20_000 + "1" + "}" * 20_000 + "\n", 1, "nested more than 32 levels"),
    "merge-key-bomb": ("m0: &m0 {a: 1}\n" + "".join(
        f"m{n}: &m{n} {{<<: [{', '.join([f'*m{n - 1}'] * 9)}]}}\n" for n in range(1, 9)), 7, "expand to more"),
}


@pytest.mark.parametrize("command", ["check", "run"])
@pytest.mark.parametrize("name", HOSTILE_YAML)
def test_a_hostile_yaml_config_is_one_line_and_exit_78(tmp_path: Path, command: str, name: str) -> None:
    text, line, message = HOSTILE_YAML[name]
    path = tmp_path / "agent.yaml"
    path.write_text(text + GOOD)
    result = cli(command, "--config", str(path))
    assert result.returncode == 78, result.stderr[-2000:]
    first = one_clean_line(result)
    assert first.startswith(f"{path}:{line}: "), first
    assert message in first
    assert not (tmp_path / "state").exists(), "nothing is made from a config that was refused"


def test_a_config_larger_than_any_building_needs_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(GOOD + "# " + "x" * (1024 * 1024) + "\n")
    result = cli("check", "--config", str(path))
    assert result.returncode == 78
    assert "at most 1,048,576 are read" in one_clean_line(result)


def test_merge_keys_give_devices_shared_settings_their_own_keys_override(tmp_path: Path) -> None:
    """Ordinary anchors, aliases and merge keys stay within the bounds. A
    device's own keys override the merged ones (YAML's merge rule; the
    loader used to call that a duplicate key)."""
    path = tmp_path / "agent.yaml"
    path.write_text(GOOD.replace(
        "  - {id: room-101, bus: plant-room, address: 10, profile: xy-md02, interval: 5m}",
        "  - &room {id: room-101, bus: plant-room, address: 10, profile: xy-md02, interval: 5m}\n"
        "  - {<<: *room, id: room-102, address: 11}\n"
        "  - {<<: *room, id: room-103, address: 12, interval: 1m}"))
    result = cli("check", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert "device room-102: address 11, profile xy-md02, every 5m" in result.stdout
    assert "device room-103: address 12, profile xy-md02, every 1m" in result.stdout


def _site_profiles(tmp_path: Path, files: dict[str, bytes], device_profile: str = "xy-md02") -> Path:
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    for name, content in files.items():
        (profiles / name).write_bytes(content)
    path = tmp_path / "agent.yaml"
    path.write_text(GOOD.replace("profile: xy-md02", f"profile: {device_profile}") + "profile_dirs: [profiles]\n")
    return path


LATIN1_PROFILE = ("name: caf\xe9-meter\nmanufacturer: Caf\xe9\nmodel: x\nsource: x\n"
                  "points:\n  t: {table: input, address: 0, type: int16, unit: Cel, kind: gauge}\n").encode("latin-1")


def test_an_unused_site_profile_that_is_not_utf8_is_a_warning_not_a_crash(tmp_path: Path) -> None:
    config = _site_profiles(tmp_path, {"cafe-meter.yaml": LATIN1_PROFILE})
    checked = cli("check", "--config", str(config))
    assert checked.returncode == 0, checked.stderr
    assert "Traceback" not in checked.stderr + checked.stdout
    warning = [line for line in checked.stdout.splitlines() if line.startswith("warning:") and "cafe-meter" in line]
    assert len(warning) == 1 and "not UTF-8" in warning[0], checked.stdout
    listed = cli("profiles", "list", "--config", str(config))
    assert listed.returncode == 0, listed.stderr
    assert "xy-md02" in listed.stdout
    assert "not UTF-8" in one_clean_line(listed)


def test_run_starts_beside_an_unused_site_profile_that_is_not_utf8(tmp_path: Path) -> None:
    """`run` logs the broken file once and goes on; start-up is held at the
    buffer lock (a failpoint), where the test stops it: no broker needed."""
    config = _site_profiles(tmp_path, {"cafe-meter.yaml": LATIN1_PROFILE})
    agent = AgentProcess(config, tmp_path / "agent.log", env={"RETROFIT_FAILPOINTS": "hold-start:lock"}).start()
    proc = agent.proc
    assert proc is not None
    wait_until(lambda: any(e.get("event") == "failpoint.holding" for e in agent.events())
               or proc.poll() is not None, 30, "start-up")
    assert proc.poll() is None, agent.log.read_text()[-2000:]
    assert agent.stop() == 0
    warnings = [e for e in agent.events() if e.get("event") == "config.warning"]
    assert len(warnings) == 1 and "cafe-meter.yaml" in warnings[0]["warning"], agent.events()
    assert "not UTF-8" in warnings[0]["warning"]


def test_a_used_site_profile_that_is_not_utf8_is_an_error_naming_it(tmp_path: Path) -> None:
    config = _site_profiles(tmp_path, {"cafe-meter.yaml": LATIN1_PROFILE}, device_profile="cafe-meter")
    for command in ("check", "run"):
        result = cli(command, "--config", str(config))
        assert result.returncode == 78, result.stderr
        line = one_clean_line(result)
        assert line.startswith(f"{config}:10: devices[0].profile: profile 'cafe-meter' cannot be used: "), line
        assert "not UTF-8" in line


def test_a_broken_site_file_meant_to_override_a_bundled_profile_does_not_silently_fall_back(
        tmp_path: Path) -> None:
    config = _site_profiles(tmp_path, {"xy-md02.yaml": b"name: xy-md02\npoints: [\n"})
    result = cli("check", "--config", str(config))
    assert result.returncode == 78, result.stdout
    assert "devices[0].profile: profile 'xy-md02' cannot be used" in one_clean_line(result)


def test_an_alias_bomb_in_a_site_profile_is_reported_not_expanded(tmp_path: Path) -> None:
    config = _site_profiles(tmp_path, {"bomb.yaml": _bomb().encode()})
    result = cli("check", "--config", str(config))
    assert result.returncode == 0, result.stderr[-2000:]
    assert any("bomb.yaml:6: not a valid profile" in line and "expand to more than" in line
               for line in result.stdout.splitlines()), result.stdout


def _with_mqtt(tmp_path: Path, extra: str) -> Path:
    path = tmp_path / "agent.yaml"
    path.write_text(GOOD.replace("    port: 1\n", "    port: 1\n" + extra))
    return path


def test_a_password_file_that_is_not_utf8_is_one_line_for_run_and_check(tmp_path: Path) -> None:
    (tmp_path / "password").write_bytes(b"s\xe9cret\n")
    config = _with_mqtt(tmp_path, "    username: gw\n    password_file: password\n")
    for command in ("check", "run"):
        result = cli(command, "--config", str(config))
        assert result.returncode == 78, (command, result.stderr[-2000:])
        line = one_clean_line(result)
        assert line.startswith(f"{config}:8: uplink.mqtt.password_file: {tmp_path / 'password'} is not UTF-8"), line


@pytest.mark.parametrize(("extra", "line", "key"), [
    ("    password_file: absent\n", 7, "uplink.mqtt.password_file: cannot read"),
    ("    tls: {ca_file: absent.pem}\n", 7, "uplink.mqtt.tls.ca_file: cannot read"),
    ("    tls: {ca_file: not-a-certificate.pem}\n", 7, "uplink.mqtt.tls.ca_file:"),
])
def test_check_fails_on_the_secret_or_certificate_run_would_fail_on(tmp_path: Path, extra: str, line: int,
                                                                   key: str) -> None:
    (tmp_path / "not-a-certificate.pem").write_text("hello\n")
    config = _with_mqtt(tmp_path, extra)
    checked = cli("check", "--config", str(config))
    ran = cli("run", "--config", str(config))
    assert (checked.returncode, ran.returncode) == (78, 78), (checked.stderr, ran.stderr)
    assert one_clean_line(checked) == one_clean_line(ran)
    assert one_clean_line(checked).startswith(f"{config}:{line}: {key}"), checked.stderr


@pytest.mark.parametrize("username", ['"gw\\0evil"', '"gw\\nadmin"', '"gw\\x1b[2J"'])
def test_a_control_character_in_the_mqtt_username_is_refused(tmp_path: Path, username: str) -> None:
    config = _with_mqtt(tmp_path, f"    username: {username}\n")
    result = cli("check", "--config", str(config))
    assert result.returncode == 78
    assert one_clean_line(result).startswith(f"{config}:7: uplink.mqtt.username: no control characters")


@pytest.mark.parametrize("content", [
    "[]", '{"uplink": "connected"}', '{"devices": [1, 2]}', '{"devices": {"room-101": {"polls": "many"}}}',
    '{"uptime_s": "long"}', '{"buffer": {"depth": null}}', '{"stalled": [1]}', "\x00\x01", '{"ts": 1',
])
def test_status_on_a_snapshot_of_the_wrong_shape_is_one_line(tmp_path: Path, content: str) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text(GOOD)
    (tmp_path / "status.json").write_text(content)
    result = cli("status", "--config", str(config))
    assert result.returncode == 1
    line = one_clean_line(result)
    assert line.startswith(f"retrofit-agent status: cannot read {tmp_path / 'status.json'}: not a status snapshot"), line
