"""`retrofit-agent wmbus decode`, run as a technician runs it: a process, files, stdin."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime
from decimal import Decimal
from pathlib import Path

from drivers.wmbus.link import FrameFormat
from simulators.wmbus_meter import (
    MeterKind,
    RadioMeterSpec,
    SimulatedRadioMeter,
    generate_keys,
    write_key_file,
)


def _run(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.cli", "wmbus", "decode", *args],
                          input=stdin, capture_output=True, text=True, timeout=60, check=False)


def _building(count: int = 12) -> list[SimulatedRadioMeter]:
    keys = generate_keys(count, seed=21)
    meters = []
    for index in range(count):
        security = (0, 5, 7)[index % 3]
        spec = RadioMeterSpec(60_000_000 + index, list(MeterKind)[index % 4],
                              security_mode=security, key=keys[index],
                              frame_format=FrameFormat.B if index % 2 else FrameFormat.A,
                              with_crcs=index % 4 == 1)
        meters.append(SimulatedRadioMeter(spec, seed=index))
    return meters


def test_decode_with_key_file_gives_values_and_never_a_key(tmp_path: Path) -> None:
    meters = _building()
    key_file = write_key_file(meters, tmp_path / "keys.csv")
    lines, truths = ["# captured on site"], []
    for meter in meters:
        telegram, truth = meter.transmit(600, datetime(2025, 3, 1, 12, 0))
        lines.append(" ".join(f"{b:02X}" for b in telegram) if meter.spec.identification % 2 else telegram.hex())
        truths.append(truth)
    done = _run("--keys", str(key_file), stdin="\n".join(lines) + "\n\n")
    assert done.returncode == 0, done.stderr
    outputs = [json.loads(line) for line in done.stdout.splitlines()]
    assert [o["line"] for o in outputs] == list(range(2, 2 + len(meters)))
    for output, truth, meter in zip(outputs, truths, meters, strict=True):
        assert "error" not in output, output
        assert output["header"]["identification"] == truth.meter
        state = output["security"]["state"]
        assert state == ("none" if meter.spec.security_mode == 0 else "decrypted")
        if "volume" in truth.values:
            volume = next(r for r in output["records"] if r["quantity"] == "volume" and r["storage"] == 0)
            assert Decimal(volume["base_value"]) == truth.values["volume"]
    text = done.stdout + done.stderr
    for meter in meters:
        assert meter.spec.key is not None
        secret = meter.spec.key.secret().hex()
        assert secret not in text.lower() and secret.upper() not in text


def test_missing_and_wrong_keys_are_states_not_values(tmp_path: Path) -> None:
    meters = [m for m in _building() if m.spec.security_mode]
    telegrams = [m.transmit(600, datetime(2025, 3, 1))[0].hex() for m in meters]
    no_keys = _run(stdin="\n".join(telegrams))
    states = {json.loads(line)["security"]["state"] for line in no_keys.stdout.splitlines()}
    assert states == {"no_key"}
    wrong = _run("--key", "00" * 16, stdin="\n".join(telegrams))
    for line in wrong.stdout.splitlines():
        output = json.loads(line)
        assert output["security"]["state"] == "wrong_key" and output["records"] == []


def test_a_bad_key_file_stops_with_file_and_line_and_no_key(tmp_path: Path) -> None:
    key_file = tmp_path / "keys.csv"
    key_file.write_text("meter;key\n12345678;0102030405060708090A0B0C0D0E0F\n")
    done = _run("--keys", str(key_file), stdin="")
    assert done.returncode == 78
    assert f"{key_file}:2: the key for meter 12345678 has 30 characters" in done.stderr
    assert "0102030405060708090A0B0C0D0E0F" not in done.stderr
    assert "Traceback" not in done.stderr


def test_unreadable_lines_and_files_are_reported_without_a_traceback(tmp_path: Path) -> None:
    done = _run(stdin="not hex\n0A\n")
    outputs = [json.loads(line) for line in done.stdout.splitlines()]
    assert outputs[0] == {"line": 1, "error": "'n' is not a hex digit: a telegram is written as hex bytes"}
    assert "at least 11 bytes" in outputs[1]["error"]
    missing = _run(str(tmp_path / "nope.txt"))
    assert missing.returncode == 1 and "cannot read" in missing.stderr and "Traceback" not in missing.stderr


def test_a_wired_mbus_frame_pasted_into_wmbus_decode_is_decoded_as_one() -> None:
    # libmbus's Itron BM+m capture (tests/data/mbus, BSD licence): its
    # normalised XML states volume 54.321 m3. A wired long frame starts
    # 68 L L 68; read as a radio telegram it was "L-field 104" and an error.
    frame = (Path(__file__).parent / "data/mbus/frames/ACW_Itron-BM-plus-m.hex").read_text().split()
    wireless = _building(1)[0].transmit(600, datetime(2025, 3, 1, 12, 0))[0].hex()
    done = _run(stdin=" ".join(frame) + "\n" + wireless + "\n")
    assert done.returncode == 0, done.stderr
    wired, radio = (json.loads(line) for line in done.stdout.splitlines())
    assert wired["wired"] is True and "error" not in wired
    assert wired["header"]["identification"] == "11490378"
    volume = next(r for r in wired["records"] if r["quantity"] == "volume" and r["storage"] == 0)
    assert Decimal(volume["base_value"]) == Decimal("54.321")
    assert "wired" not in radio and "error" not in radio
