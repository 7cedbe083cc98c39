"""Wireless M-Bus inside the agent, piece by piece: the bus records, the key
file as a credential, the listener (repeats, unknown senders, telegrams
that cannot be opened), and HCA units as points."""

from __future__ import annotations

import calendar
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest
import serial

from drivers.core.errors import BusError, ConfigError
from drivers.core.records import Invalid, validate
from drivers.mbus.points import point_steps, point_values
from drivers.mbus.profile import MbusProfile
from drivers.profile import load_catalogue
from drivers.wmbus import amb8465
from drivers.wmbus.config import WmbusBus, WmbusSdrBus, check_address
from drivers.wmbus.decode import decode_wmbus
from drivers.wmbus.keys import KeyRing, credentials_key_file, load_bus_keys
from drivers.wmbus.reader import RadioListener, RadioMeter
from drivers.wmbus.received import Received
from drivers.wmbus.stick import SerialStick
from simulators.pty import PtyPair
from simulators.wmbus_meter import (
    MeterKind,
    RadioMeterSpec,
    SimulatedRadioMeter,
    generate_keys,
    strip_to_crcless,
    write_key_file,
)
from tests.support import require_binary

CATALOGUE = load_catalogue()


def _profile(name: str) -> MbusProfile:
    profile = CATALOGUE.get(name)
    assert isinstance(profile, MbusProfile)
    return profile


class FixedClock:
    def stamp(self) -> tuple[int, int | None]:
        return 1_700_000_000_000, None


class ListReceiver:
    """Telegrams handed over in one go, as a stick delivers a burst."""

    where = "test receiver"
    garbled = 0

    def __init__(self, telegrams: list[bytes]) -> None:
        self._telegrams = [Received(t, rssi_dbm=-71.0) for t in telegrams]

    def read(self, timeout: float) -> list[Received]:
        out, self._telegrams = self._telegrams, []
        return out

    def close(self) -> None:
        pass


def _meter(identification: int, kind: MeterKind, mode: int = 5, seed: int = 0) -> SimulatedRadioMeter:
    key = generate_keys(1, seed=identification)[0] if mode else None
    return SimulatedRadioMeter(RadioMeterSpec(identification, kind, security_mode=mode, key=key), seed=seed)


# -- config -------------------------------------------------------------------------------------

def test_a_radio_meter_address_is_its_identification_in_quotes() -> None:
    assert check_address("12345678") is None
    problem = check_address(12345678)
    assert problem is not None and '"12345678"' in problem and "octal" in problem
    assert check_address("1234567") is not None


@pytest.mark.parametrize(("modes", "ok"), [(["t1"], True), (["C1", "T1"], True), (["s1"], True),
                                           (["s1", "t1"], False), (["x1"], False), ([], False)])
def test_the_modes_a_stick_can_listen_to(modes: list[str], ok: bool) -> None:
    data = {"id": "radio", "type": "wmbus", "stick": "im871a", "port": "/dev/ttyUSB1", "modes": modes}
    if ok:
        assert validate(WmbusBus, data).modes == tuple(m.lower() for m in modes)
    else:
        with pytest.raises(Invalid):
            validate(WmbusBus, data)


def test_a_relative_key_file_is_refused() -> None:
    with pytest.raises(Invalid, match="absolute"):
        validate(WmbusSdrBus, {"id": "sdr", "type": "wmbus-sdr", "command": "rtl_433", "keys_file": "keys.csv"})


# -- keys as a credential -----------------------------------------------------------------------

def test_the_key_file_comes_as_the_wmbus_keys_credential_and_a_blank_one_is_none(tmp_path: Path) -> None:
    meter = _meter(11111111, MeterKind.WATER)
    env = {"CREDENTIALS_DIRECTORY": str(tmp_path)}
    assert credentials_key_file(env) is None
    (tmp_path / "wmbus-keys").write_text("\n")  # the unit's SetCredential= fallback
    assert credentials_key_file(env) is None
    assert len(load_bus_keys(None, env)) == 0
    write_key_file([meter], tmp_path / "wmbus-keys")
    assert load_bus_keys(None, env).meters() == ["11111111"]
    other = tmp_path / "other.csv"
    other.write_text("22222222;" + "AB" * 16 + "\n")
    assert load_bus_keys(other, env).meters() == ["22222222"], "a configured keys_file wins"


def test_a_broken_key_file_is_a_config_error_that_never_repeats_a_key(tmp_path: Path) -> None:
    path = tmp_path / "keys.csv"
    path.write_text("11111111;00112233445566778899AABBCCDDEEF\n")  # 31 hex digits
    with pytest.raises(ConfigError) as error:
        load_bus_keys(path)
    assert "00112233445566778899AABBCCDDEEF" not in str(error.value)


# -- the listener ---------------------------------------------------------------------------------

def _listener(telegrams: list[bytes], meters: dict[str, RadioMeter], keys: KeyRing) -> RadioListener:
    return RadioListener(ListReceiver(telegrams), meters, keys)


def test_a_repeated_telegram_is_heard_once_and_an_unknown_sender_is_named() -> None:
    known = _meter(11111111, MeterKind.WATER)
    stranger = _meter(22222222, MeterKind.HCA, mode=0)
    profile = _profile("oms-water")
    first, _ = known.transmit(120, datetime(2025, 3, 1, 12))
    other, _ = stranger.transmit(120, datetime(2025, 3, 1, 12))
    assert known.spec.key is not None
    listener = _listener([first, first, other], {"11111111": RadioMeter("flat-1-water", "11111111", 120, profile)},
                         KeyRing({"11111111": known.spec.key}))
    heard = [listener.receive(0.1, FixedClock()) for _ in range(3)]
    assert [(h.sender, h.device_id) if h else None for h in heard] == [
        ("11111111", "flat-1-water"), ("22222222", None), None]
    readout = heard[0].readout if heard[0] else None
    assert readout is not None and readout.error is None
    values = {point.name: value for _, _, answer in readout.answers for point, value in answer}
    assert set(values) == {"volume", "flow", "volume_set_date", "set_date", "meter_datetime", "rssi"}
    assert values["rssi"] == -71.0
    # The meter's clock and its set date, as seconds since 1970 as the meter reads them (no zone).
    assert values["meter_datetime"] == calendar.timegm((2025, 3, 1, 12, 0, 0))
    assert values["set_date"] == calendar.timegm((2024, 5, 31, 0, 0, 0))
    units = {point.name: point.unit for _, _, answer in readout.answers for point, _ in answer}
    assert units["meter_datetime"] == units["set_date"] == "s"
    assert listener.repeats == 1


@pytest.mark.parametrize("case", ["no_key", "wrong_key"])
def test_a_telegram_that_cannot_be_opened_is_an_error_and_one_event_per_change(case: str) -> None:
    meter = _meter(11111111, MeterKind.HEAT)
    telegrams = [meter.transmit(120, datetime(2025, 3, 1, 12, n))[0] for n in range(3)]
    keys = KeyRing() if case == "no_key" else KeyRing({"11111111": generate_keys(1, seed=77)[0]})
    radio = RadioMeter("flat-1-heat", "11111111", 120, _profile("oms-heat"))
    listener = _listener(telegrams, {"11111111": radio}, keys)
    readouts = [h.readout for h in (listener.receive(0.1, FixedClock()) for _ in range(3)) if h and h.readout]
    assert len(readouts) == 3
    assert all(r.answers == [] and r.error is not None for r in readouts)
    assert [event for r in readouts for event, _ in r.notes] == [f"wmbus.{case}"]
    assert "11111111" in str(readouts[0].error)
    secrets = [k.secret().hex() for k in (meter.spec.key, keys.key_for("11111111")) if k is not None]
    told = repr(listener) + "".join(str(r.error) + repr(r.notes) for r in readouts)
    assert not [s for s in secrets if s in told.lower()]


# -- HCA units ----------------------------------------------------------------------------------

def test_heat_cost_allocator_units_are_points_with_their_set_date_value() -> None:
    """Regression: HCA records have no base unit, so a profile naming them got None (invalid)."""
    meter = _meter(33333333, MeterKind.HCA, mode=0)
    telegram, truth = meter.transmit(900, datetime(2025, 3, 1, 12))
    result = decode_wmbus(telegram)
    profile = _profile("oms-hca")
    values = {name: (value, unit) for name, value, unit, _ in point_values(profile, result.records)}
    assert values == {"hca_units": (truth.values["hca"], "HCA"), "hca_units_set_date": (truth.values["hca@1"], "HCA"),
                      "set_date": (calendar.timegm((2024, 5, 31, 0, 0, 0)), "s"),
                      "meter_datetime": (calendar.timegm((2025, 3, 1, 12, 0, 0)), "s")}
    steps = point_steps(profile, result.records)
    assert steps["hca_units"].resolution() == {"step": 1.0}
    assert steps["hca_units"].wraps_at == 10**6  # six BCD digits


# -- check --------------------------------------------------------------------------------------

def test_check_names_the_configured_meters_without_a_key_and_never_a_key(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.support import REPO, write_config

    with_key = _meter(11111111, MeterKind.WATER)  # meter 22222222 (heat) is configured without a key
    keys = write_key_file([with_key], tmp_path / "keys.csv")
    config = write_config(tmp_path / "agent.yaml", broker_port=1883, buffer=tmp_path / "buffer.db",
                          buses=[{"id": "radio", "type": "wmbus", "stick": "im871a", "port": "/dev/ttyUSB1",
                                  "modes": ["t1", "c1"], "keys_file": str(keys)}],
                          devices=[{"id": "flat-1-water", "bus": "radio", "address": "11111111",
                                    "profile": "oms-water", "interval": "2m"},
                                   {"id": "flat-1-heat", "bus": "radio", "address": "22222222",
                                    "profile": "oms-heat", "interval": "15m"}])
    result = subprocess.run([sys.executable, "-m", "agent.cli", "check", "--config", str(config)],
                            capture_output=True, text=True, cwd=REPO, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    notes = [line.strip() for line in result.stdout.splitlines() if "has no key" in line]
    assert len(notes) == 1 and "flat-1-heat (meter 22222222)" in notes[0]
    assert "im871a on /dev/ttyUSB1 57600 8N1, C1+T1" in result.stdout
    assert with_key.spec.key is not None
    assert with_key.spec.key.secret().hex().upper() not in result.stdout + result.stderr

    keys.write_text("11111111;0011\n")  # a broken key file stops `check` with its line
    result = subprocess.run([sys.executable, "-m", "agent.cli", "check", "--config", str(config)],
                            capture_output=True, text=True, cwd=REPO, timeout=30, check=False)
    assert result.returncode == 78
    assert f"{keys}:1:" in result.stderr and "0011" not in result.stderr


# -- the AMB8465's RSSI setting, read from the stick on a pty -------------------------------------

def test_an_amb8465_is_asked_for_its_rssi_setting_and_a_telegram_before_the_answer_is_kept(
        tmp_path: Path) -> None:
    require_binary("socat")
    meter = SimulatedRadioMeter(RadioMeterSpec(30000001, MeterKind.WATER), seed=1)
    telegram = strip_to_crcless(meter, meter.transmit(60, datetime(2025, 1, 1))[0])
    with PtyPair(tmp_path / "tty.stick", tmp_path / "tty.agent") as pair, \
            serial.Serial(str(pair.meter_end), 9600, timeout=0.1) as stick_end:
        stick = SerialStick("amb8465", str(pair.agent_end), 9600, ("t1",))
        asked = threading.Thread(target=lambda: stick_end.write(
            _await(stick_end, amb8465.get_request(amb8465.RSSI_ENABLE))
            + amb8465.telegram_indication(telegram)  # RSSI output off: no RSSI byte
            + amb8465.get_confirmation(amb8465.RSSI_ENABLE, b"\x00")))
        asked.start()
        try:
            received = stick.read(2.0)
        finally:
            asked.join(5)
            stick.close()
    assert stick.rssi is False
    assert [r.telegram for r in received] == [telegram] and received[0].rssi_dbm is None


def test_an_amb8465_that_does_not_answer_the_settings_query_is_a_failing_receiver(tmp_path: Path) -> None:
    require_binary("socat")
    with PtyPair(tmp_path / "tty.stick", tmp_path / "tty.agent") as pair:
        stick = SerialStick("amb8465", str(pair.agent_end), 9600, ("t1",))
        with pytest.raises(BusError, match="did not answer the query of its RSSI_Enable"):
            stick.read(0.1)


def _await(line: serial.Serial, request: bytes) -> bytes:
    """Read until ``request`` came from the host (bounded); nothing to send back for it."""
    seen = b""
    deadline = time.monotonic() + 5
    while request not in seen and time.monotonic() < deadline:
        seen += line.read(64)
    assert request in seen, "the host asked for the setting"
    return b""


def test_a_compact_frame_before_its_format_keeps_the_meter_alive_without_values() -> None:
    """After a restart a Kamstrup-style meter sends compact frames until its
    next full frame: heard (no silence, no failure), no values; then values."""
    meter = SimulatedRadioMeter(RadioMeterSpec(11111111, MeterKind.WATER, compact_every=3))
    meter.transmit(120, datetime(2025, 3, 1, 12))  # the full frame before the restart: not heard
    telegrams = [meter.transmit(120, datetime(2025, 3, 1, 12, n))[0] for n in range(1, 5)]  # compact, compact, full, compact
    radio = RadioMeter("flat-1-water", "11111111", 120, _profile("oms-water"))
    listener = _listener(telegrams, {"11111111": radio}, KeyRing())
    heard = [listener.receive(0.1, FixedClock()) for _ in range(4)]
    readouts = [h.readout for h in heard if h is not None and h.readout is not None]
    assert len(readouts) == 4
    assert [bool(r.answers) for r in readouts] == [False, False, True, True]
    assert all(r.error is None and r.meter == "11111111" for r in readouts)
    assert listener.compact == 2
