"""`retrofit-agent check` on a technician's configs: every mistake named, no traceback.

Cases are written as a technician would make them; each expects exit 78
(EX_CONFIG), the file's line and the key path in the message.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO

pytestmark = pytest.mark.timeout(60)

GOOD = """\
gateway: {id: zw-07, site: krakow-zlotego-wieku-7}
buffer:  {path: state/buffer.db, max_size_mb: 512}
uplink:
  mqtt:
    host: 127.0.0.1
    port: 1883
    topic_prefix: buildings
buses:
  - {id: rs485-1, type: modbus-rtu, port: /dev/ttyUSB0, baudrate: 9600, parity: N}
  - {id: plant-room, type: modbus-tcp, host: 127.0.0.1, port: 5020}
devices:
  - {id: elec-main, bus: rs485-1, address: 1, profile: eastron-sdm630, interval: 1m}
  - {id: room-101, bus: plant-room, address: 10, profile: xy-md02, interval: 5m}
"""


def run_check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", "check", "--config", str(path)],
        check=False, capture_output=True, text=True, cwd=REPO, timeout=30,
    )


def test_valid_config_is_summarised(tmp_path: Path) -> None:
    path = tmp_path / "good.yaml"
    path.write_text(GOOD)
    result = run_check(path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "bus rs485-1 (modbus-rtu, /dev/ttyUSB0 9600 8N1): 1 device(s)" in out
    assert "device elec-main: address 1, profile eastron-sdm630, every 1m, 10 point(s)" in out
    assert "device room-101: address 10, profile xy-md02, every 5m, 2 point(s): temperature, humidity" in out
    # Relative buffer paths are relative to the config file.
    assert str(tmp_path / "state" / "buffer.db") in out


def test_a_serial_bus_unlike_a_meters_factory_settings_is_noted(tmp_path: Path) -> None:
    path = tmp_path / "orno.yaml"
    # The ORNO OR-WE-517 leaves the factory at 9600 8E1; this bus runs 8N1.
    path.write_text(GOOD.replace("profile: eastron-sdm630", "profile: orno-or-we-517"))
    result = run_check(path)
    assert result.returncode == 0, result.stderr
    assert ("note: device elec-main: orno-or-we-517 leaves the factory at 9600 8E1, bus rs485-1 runs 9600 8N1"
            in result.stdout)
    same = tmp_path / "xy.yaml"  # the XY-MD02 ships at 9600 8N1, as the bus runs: nothing to note
    same.write_text(GOOD.replace("profile: eastron-sdm630, interval: 1m", "profile: xy-md02, interval: 1m"))
    assert "note:" not in run_check(same).stdout


# (name, replace this text of GOOD, with this, expected line, expected text in the message)
MISTAKES = [
    ("typo-key", "    topic_prefix: buildings", "    topic_prefx: buildings", 7, "uplink.mqtt.topic_prefx: unknown key (did you mean 'topic_prefix'?)"),
    ("typo-device-key", "interval: 5m}", "intervall: 5m}", 13, "devices[1].intervall: unknown key"),
    ("wrong-type-port", "    port: 1883", "    port: eighteen", 6, "uplink.mqtt.port"),
    ("port-out-of-range", "    port: 1883", "    port: 70000", 6, "uplink.mqtt.port"),
    ("tab-indent", "    host: 127.0.0.1", "\thost: 127.0.0.1", 5, "tabs"),
    ("duplicate-key", "    port: 1883", "    port: 1883\n    port: 1884", 7, "duplicate key 'port'"),
    ("unknown-bus", "bus: plant-room, address: 10", "bus: plant-rom, address: 10", 13, "devices[1].bus: unknown bus 'plant-rom'"),
    ("unknown-profile", "profile: xy-md02", "profile: xy-md03", 13, "devices[1].profile: unknown profile 'xy-md03' (did you mean 'xy-md02'?)"),
    ("bad-duration", "interval: 1m}", "interval: often}", 12, "devices[0].interval: expected a duration"),
    ("negative-duration", "interval: 1m}", "interval: -5}", 12, "devices[0].interval"),
    ("duplicate-device-id", "id: room-101", "id: elec-main", 13, "devices[1].id: duplicate device id 'elec-main'"),
    ("duplicate-address", "bus: plant-room, address: 10", "bus: rs485-1, address: 1", 13, "address 1 is already used on bus 'rs485-1'"),
    ("bad-parity", "parity: N}", "parity: X}", 9, "buses[0].parity"),
    ("bad-baudrate", "baudrate: 9600", "baudrate: 9601", 9, "buses[0].baudrate"),
    ("unknown-bus-type", "type: modbus-tcp", "type: modbus-udp", 10, "buses[1]: unknown bus type 'modbus-udp'"),
    ("modbus-address-range", "address: 10,", "address: 250,", 13, "devices[1].address: a Modbus unit id is 1..247"),
    ("missing-section", "gateway: {id: zw-07, site: krakow-zlotego-wieku-7}\n", "", 1, "gateway: required key is missing"),
    ("space-in-id", "site: krakow-zlotego-wieku-7", "site: krakow zlotego", 1, "gateway.site"),
    ("unclosed-bracket", "  - {id: rs485-1,", "  - [id: rs485-1,", 9, ""),
]


def test_an_mbus_line_gets_a_wire_time_estimate(tmp_path: Path) -> None:
    devices = "\n".join(f"  - {{id: heat-{n:02d}, bus: mbus-1, address: {n}, profile: mbus-heat, interval: 1m}}"
                         for n in range(1, 41))
    config = GOOD.split("buses:")[0] + (
        "buses:\n  - {id: mbus-1, type: mbus, port: /dev/ttyUSB1, baudrate: 300}\ndevices:\n" + devices + "\n")
    path = tmp_path / "mbus.yaml"
    path.write_text(config)
    result = run_check(path)
    assert result.returncode == 0, result.stdout + result.stderr
    # One readout: SND_NKE (5 characters) + E5 (1) + REQ_UD2 (5) + a long frame of
    # 9 + 12 (header) + 8 records x 6; 11 bits a character at 300 baud.
    readout_s = (5 + 1 + 5 + 9 + 12 + 8 * 6) * 11 / 300
    percent = 100 * 40 * readout_s / 60
    assert f"warning: bus mbus-1: about {percent:.1f} % busy on the wire (4800 requests/h; M-Bus, estimated" \
        in result.stdout
    assert "it cannot keep its schedule" in result.stdout


@pytest.mark.parametrize(("name", "old", "new", "line", "text"), MISTAKES, ids=[m[0] for m in MISTAKES])
def test_mistake_is_reported_with_line_and_key(tmp_path: Path, name: str, old: str, new: str, line: int,
                                                text: str) -> None:
    assert old in GOOD, f"case {name} does not apply to the base config"
    path = tmp_path / f"{name}.yaml"
    path.write_text(GOOD.replace(old, new, 1))
    result = run_check(path)
    assert result.returncode == 78, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stdout == ""
    first = result.stderr.splitlines()[0]
    assert first.startswith(f"{path}:{line}: "), result.stderr
    assert text in result.stderr, result.stderr


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    text = (GOOD.replace("    topic_prefix: buildings", "    topic_prefx: buildings")
                .replace("profile: xy-md02", "profile: nope")
                .replace("parity: N}", "parity: Q}"))
    path = tmp_path / "many.yaml"
    path.write_text(text)
    result = run_check(path)
    assert result.returncode == 78
    lines = result.stderr.splitlines()
    assert len(lines) == 3, result.stderr
    assert [int(x.split(":")[1]) for x in lines] == [7, 9, 13]


@pytest.mark.parametrize("content", ["", "just a string\n", "- a\n- list\n", "\x00\x01binary"])
def test_not_a_config_at_all(tmp_path: Path, content: str) -> None:
    path = tmp_path / "odd.yaml"
    path.write_text(content)
    result = run_check(path)
    assert result.returncode == 78
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith(f"{path}:")


def test_missing_file(tmp_path: Path) -> None:
    result = run_check(tmp_path / "absent.yaml")
    assert result.returncode == 78
    assert result.stderr.strip() == f"{tmp_path / 'absent.yaml'}: no such file"


def test_the_published_schema_is_current() -> None:
    """configs/example.yaml points editors at configs/config.schema.json (installed beside it)."""
    result = subprocess.run([sys.executable, "-m", "agent.cli", "schema"], check=False, capture_output=True, text=True,
                            cwd=REPO, timeout=30)
    assert result.returncode == 0
    published = (REPO / "configs" / "config.schema.json").read_text()
    assert json.loads(result.stdout) == json.loads(published), \
        "regenerate: retrofit-agent schema > configs/config.schema.json"
    assert "$schema=config.schema.json" in (REPO / "configs" / "example.yaml").read_text()


# Issue 15 item 13: mistakes `check` let through or reported confusingly.
@pytest.mark.parametrize(("written", "host", "extra"), [
    ("mqtt://broker.example.com:1883", "broker.example.com", "`port: 1883`"),
    ("mqtts://broker.example.com", "broker.example.com", "`tls:`"),
    ("broker.example.com:8883", "broker.example.com", "`port: 8883`"),
])
def test_a_url_as_mqtt_host_is_refused_naming_the_host_part(tmp_path: Path, written: str, host: str,
                                                             extra: str) -> None:
    path = tmp_path / "url.yaml"
    path.write_text(GOOD.replace("    host: 127.0.0.1", f"    host: {written}", 1))
    result = run_check(path)
    assert result.returncode == 78, result.stdout
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"{path}:5: uplink.mqtt.host: "), result.stderr
    assert f"(did you mean {host!r}?)" in result.stderr
    assert extra in result.stderr


def test_a_url_as_modbus_tcp_host_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "tcp.yaml"
    path.write_text(GOOD.replace("host: 127.0.0.1, port: 5020", "host: tcp://10.0.0.5, port: 5020"))
    result = run_check(path)
    assert result.returncode == 78
    assert result.stderr.startswith(f"{path}:10: buses[1].host: 'tcp://10.0.0.5' is a URL"), result.stderr
    assert "(did you mean '10.0.0.5'?)" in result.stderr


def test_plain_hosts_and_ipv6_addresses_stay_valid(tmp_path: Path) -> None:
    for host in ("broker.example.com", "10.0.0.5", "'::1'", "'fe80::1'"):
        path = tmp_path / "ok.yaml"
        path.write_text(GOOD.replace("    host: 127.0.0.1", f"    host: {host}", 1))
        result = run_check(path)
        assert result.returncode == 0, (host, result.stderr)


@pytest.mark.parametrize(("bus", "address", "message"), [
    ("plant-room", "300", "devices[1].address: a Modbus unit id is 1..247 (got 300)"),
    ("plant-room", "'12345678'", "devices[1].address: a Modbus unit id is 1..247 (got '12345678')"),
])
def test_a_modbus_unit_id_out_of_range_is_one_clear_line(tmp_path: Path, bus: str, address: str,
                                                         message: str) -> None:
    path = tmp_path / "unit.yaml"
    path.write_text(GOOD.replace("bus: plant-room, address: 10", f"bus: {bus}, address: {address}"))
    result = run_check(path)
    assert result.returncode == 78
    assert result.stderr.splitlines() == [f"{path}:13: {message}"]


@pytest.mark.parametrize(("written", "meant"), [("SDM630", "eastron-sdm630"), ("XY-MD02", "xy-md02"),
                                                ("sdm72", "eastron-sdm72")])
def test_a_profile_written_as_on_the_meter_gets_a_did_you_mean(tmp_path: Path, written: str,
                                                               meant: str) -> None:
    path = tmp_path / "sdm.yaml"
    path.write_text(GOOD.replace("profile: eastron-sdm630", f"profile: {written}"))
    result = run_check(path)
    assert result.returncode == 78
    assert f"unknown profile {written!r} (did you mean {meant!r}?)" in result.stderr
