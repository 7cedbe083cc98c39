"""`retrofit-agent scan --wmbus`: the meters a receiver hears, as a technician
sees them on site (real command line, simulated stick on a socat pty, or an
SDR decoder's lines from a command)."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from simulators.pty import PtyPair
from simulators.wmbus_meter import MeterKind, RadioMeterSpec, SimulatedRadioMeter, write_key_file
from simulators.wmbus_stick import StickServer, radio_meters
from tests.support import REPO, require_binary, running

pytestmark = pytest.mark.timeout(60)


def _scan(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.cli", "scan", "--wmbus", *args], capture_output=True,
                          text=True, cwd=REPO, timeout=40, check=False)


def _rows(stdout: str) -> dict[str, list[str]]:
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("meter "))
    return {line.split()[0]: line.split() for line in lines[start + 1:] if line[:8].isdigit()}


def test_scan_lists_every_meter_heard_with_its_security_and_whether_a_key_is_there(tmp_path: Path) -> None:
    require_binary("socat")
    meters = radio_meters(6, interval_s=0.3, seed=2)  # water, warm water, HCA, heat; modes 5, 7, 0 in turn
    keys = tmp_path / "keys.csv"
    write_key_file(meters[:4], keys)  # the encrypted ones of the first four: the fifth (mode 7) has no key
    with (PtyPair(tmp_path / "tty.stick", tmp_path / "tty.scan") as line,
          running(StickServer(meters, str(line.meter_end), "amb8465", duration_s=30, collisions=False))):
        result = _scan("--serial", str(tmp_path / "tty.scan"), "--stick", "amb8465", "--baudrate", "9600",
                       "--seconds", "2", "--keys", str(keys))
    assert result.returncode == 0, result.stderr
    rows = _rows(result.stdout)
    assert set(rows) == {m.spec.id_text for m in meters}
    expected_state = {0: "decrypted", 1: "decrypted", 2: "none", 3: "decrypted", 4: "no_key", 5: "none"}
    for index, meter in enumerate(meters):
        row = rows[meter.spec.id_text]
        manufacturer, medium, version, mode, rssi, *security = row[1:-4]
        state, key, profile = row[-4:-1]
        assert manufacturer == meter.spec.manufacturer and mode == "T1" and int(rssi) < 0
        assert int(version) == meter.spec.version
        assert " ".join(security) == ("none" if not meter.spec.security_mode else f"mode {meter.spec.security_mode}")
        assert state == expected_state[index], row
        assert key == ("yes" if index in (0, 1, 3) else "no")
        assert profile == {"water": "oms-water", "warm_water": "oms-water", "heat_cost_allocator": "oms-hca",
                           "heat_outlet": "oms-heat"}.get(medium), row
    assert "1 encrypted meter(s) without a key: " + meters[4].spec.id_text in result.stdout
    for meter_key in (m.spec.key for m in meters if m.spec.key):
        assert meter_key.secret().hex() not in result.stdout.lower()


def test_scan_reads_an_sdr_decoders_lines_from_its_command() -> None:
    sim = shlex.join([sys.executable, "-m", "simulators.cli", "wmbus", "--stick", "lines", "--meters", "3",
                      "--interval", "0.3", "--security", "0"])
    result = _scan("--sdr-command", sim, "--seconds", "2")
    assert result.returncode == 0, result.stderr
    rows = _rows(result.stdout)
    assert set(rows) == {"30000001", "30000002", "30000003"}
    # rtl_wmbus's level is no dBm: shown as the SDR's own figure, and said so.
    assert all(row[5].startswith("~") for row in rows.values())
    assert "not dBm" in result.stdout


def test_scan_with_nothing_heard_says_so_and_fails(tmp_path: Path) -> None:
    result = _scan("--sdr-command", "sleep 5", "--seconds", "0.5")
    assert result.returncode == 1
    assert "0 meter(s) heard" in result.stdout


def test_scan_suggests_a_vendors_profile_for_its_meters_and_the_oms_one_for_the_rest(tmp_path: Path) -> None:
    """The suggestion is oms-auto's choice from the header: a Diehl Sharky
    (DME, version 0x40) and a Kamstrup Multical 403 (KAM, 0x34) get their
    vendors' profiles, a meter of another make the generic OMS one (the scan
    suggested by device type only)."""
    require_binary("socat")
    sharky = SimulatedRadioMeter(RadioMeterSpec(61_000_001, MeterKind.HEAT, manufacturer="DME", version=0x40,
                                                interval_s=0.3))
    multical = SimulatedRadioMeter(RadioMeterSpec(61_000_002, MeterKind.HEAT, manufacturer="KAM", version=0x34,
                                                  interval_s=0.3))
    other = SimulatedRadioMeter(RadioMeterSpec(61_000_003, MeterKind.HEAT, manufacturer="ZRI", version=0x34,
                                               interval_s=0.3))
    with (PtyPair(tmp_path / "tty.stick", tmp_path / "tty.scan") as line,
          running(StickServer([sharky, multical, other], str(line.meter_end), "im871a", duration_s=30,
                              collisions=False))):
        result = _scan("--serial", str(tmp_path / "tty.scan"), "--stick", "im871a", "--seconds", "2")
    assert result.returncode == 0, result.stderr
    rows = _rows(result.stdout)
    assert {meter: row[-2] for meter, row in rows.items()} == {
        "61000001": "diehl-sharky", "61000002": "kamstrup-multical-heat", "61000003": "oms-heat"}
