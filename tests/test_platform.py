"""The simulated platform, and the whole chain proven against the building's ground truth.

A seeded building with faults (noisy lines, a device offline, a bus gone, a
rollover, a counter reset, a meter swap) -> the real agent -> a real
Mosquitto -> the platform ingest. Every reading that arrives must be a value
the device really served just before the reading's timestamp, the ids must
be complete (or explained by eviction reports), and the heat saving measured
from the forwarded counters must be within 5 % of the simulator's true one.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.buffer import inspect
from simulators.building import run_building
from simulators.building_config import parse_building_config
from simulators.groundtruth import GroundTruth, prove
from simulators.platform import (
    DAY_S,
    PlatformIngest,
    counter_series,
    daily_energy,
    day_iso,
    energy_report,
    render,
)
from tests.support import (
    REPO,
    AgentProcess,
    Broker,
    buffer_next_id,
    free_port,
    require_binary,
    wait_until,
)

ACCELERATION = 25_920  # one simulated day in 3.33 s


# ---------------------------------------------------------------- counter rules, pure

def test_counter_series_follows_the_quality_flags() -> None:
    h = 3600.0
    rows = [
        (0 * h, 100.0, "ok"), (6 * h, 106.0, "ok"),
        (12 * h, 7.0, "counter_backwards"),  # garbage: the next one continues from 106
        (18 * h, 112.0, "ok"), (24 * h, 118.0, "ok"),
        (30 * h, 2.0, "counter_backwards"),  # a reset: the next one continues from 2
        (36 * h, 8.0, "ok"), (42 * h, 14.0, "ok"),
        (48 * h, 65_530.0, "meter_swap"), (54 * h, 65_535.0, "ok"),
        (60 * h, 4.0, "counter_rollover"),  # wraps at 65 536: 5 consumed
        (72 * h, 16.0, "ok"),
    ]
    series = counter_series(rows)
    assert (series.breaks, series.rollovers, series.dropped) == (2, 1, 1)
    energy, covered = daily_energy(series)
    assert energy[0] == pytest.approx(18.0)  # 100 -> 118 over day 0, the garbage read ignored
    assert covered[0] == DAY_S
    assert covered[1] < DAY_S  # the reset leaves 24h..30h unknown
    assert energy[2] == pytest.approx(5.0 + 5.0 + 12.0)  # after the swap: 65 530 -> 65 535 -> wrap -> 4 -> 16


def test_a_counter_rise_over_days_without_a_reading_is_not_spread_over_them() -> None:
    """The agent accepts any rise of a counter without a rate limit; the
    platform spread it over the days between the two readings, and called
    those days complete (a field trial: a stale buffer's jump landed on
    earlier days). A silence over a day starts the series again instead."""
    h = 3600.0
    rows = [(k * 6 * h, 100.0 + 6 * k, "ok") for k in range(5)]  # day 0, every 6 h
    rows += [(3 * 86_400 + 12 * h + k * 6 * h, 300_000.0 + 6 * k, "ok") for k in range(9)]  # after 2.5 silent days
    series = counter_series(rows)
    energy, covered = daily_energy(series)
    assert series.gaps == 1 and series.breaks == 0
    assert energy[0] == pytest.approx(24.0) and covered[0] == DAY_S
    assert 1 not in covered and 2 not in covered, "days without a reading are not measured"
    assert covered[3] < DAY_S and energy[4] == pytest.approx(24.0)


def test_readings_stamped_before_the_building_started_are_left_out() -> None:
    """A buffer that outlived a run sends that run's last readings first:
    they are not the building's, and their counter values (another run's
    meter) must not be joined to its first reading."""
    wall_start_ms, sim_start = 1_800_000_000_000, 1_736_712_000.0  # a simulated midnight
    meta = {"wall_start_ms": wall_start_ms, "sim_start": sim_start, "acceleration": 8640.0, "devices": {},
            "days": [], "retrofit": None}
    readings = [{"id": i, "device": "heat-b", "point": "energy_heat", "unit": "kWh", "quality": "ok",
                 "ts": wall_start_ms - 40_000 + 1000 * i, "value": 2000.0 + i} for i in range(3)]
    readings += [{"id": 10 + i, "device": "heat-b", "point": "energy_heat", "unit": "kWh", "quality": "ok",
                  "ts": wall_start_ms + 500 + 1000 * i, "value": 402_310.0 + 10 * i} for i in range(25)]
    report = energy_report(readings, meta)
    assert report["before_start"] == 3
    days = report["energy"]["heat-b/energy_heat"]["days"]
    assert min(days) >= day_iso(int(sim_start // DAY_S)), days
    assert sum(days.values()) == pytest.approx(240.0)
    assert "left out: 3 counter reading(s) stamped before the building started" in render(
        {"messages": 0, "readings": 0, "duplicates": 0, "streams": {}, "quality": {}, **report})


def test_ingest_deduplicates_and_explains_gaps_by_evictions() -> None:
    ingest = PlatformIngest()
    batch = {"stream": "s1", "gateway": "g", "site": "x",
             "readings": [{"id": i, "device": "d", "point": "energy_heat", "value": float(i), "unit": "kWh",
                           "ts": 1000 * i, "quality": "ok"} for i in (1, 2, 3, 7, 8)]}
    ingest.ingest("buildings/x/g/readings", json.dumps(batch).encode())
    ingest.ingest("buildings/x/g/readings", json.dumps(batch).encode())
    events = {"stream": "s1", "events": [{"type": "evicted", "first_id": 4, "last_id": 5, "count": 2}]}
    ingest.ingest("buildings/x/g/events", json.dumps(events).encode())
    report = ingest.report()
    stream = report["streams"]["s1"]
    assert (stream["received"], stream["duplicates"], stream["missing"], stream["unexplained"]) == (5, 5, 3, 1)
    assert stream["unexplained_ranges"] == [[6, 6]]
    assert "unexplained 1" in render(report)


# ---------------------------------------------------------------- the whole chain

def faulty_building(tmp_path: Path, tcp_port: int) -> dict[str, Any]:
    return {
        "building": {"name": "proof-block", "seed": 2024, "start": "2025-01-12T21:00:00Z",
                     "acceleration": ACCELERATION, "step": "60s", "base_temperature": 15.5,
                     "weather": {"mean": -2.0, "daily_sd": 3.0},
                     "retrofit": {"at": "2025-01-16T00:00:00Z", "heat_loss_reduction": 0.3}},
        "output": str(tmp_path / "building"),
        "buses": [
            {"id": "plant", "type": "modbus-tcp", "port": tcp_port,
             "faults": {"rates": {"busy": 0.02, "silent": 0.02}}},
            {"id": "line-1", "type": "modbus-rtu", "pty": str(tmp_path / "ttyB1"), "baudrate": 19200,
             "faults": {"rates": {"crc": 0.03, "garbage": 0.02, "partial": 0.02, "silent": 0.02,
                                  "slow": 0.01}, "slow": "0.1s"}},
            {"id": "line-2", "type": "modbus-rtu", "pty": str(tmp_path / "ttyB2"), "baudrate": 9600},
            {"id": "mbus-1", "type": "mbus", "pty": str(tmp_path / "ttyM1"), "baudrate": 2400},
        ],
        "devices": [
            {"id": "heat-a", "bus": "plant", "address": 20, "profile": "sim-heat-meter", "model": "heat",
             "heat_loss": 2000, "dhw_kwh_per_day": 80, "energy_start": 654321.0, "interval": 0.5},
            {"id": "elec", "bus": "plant", "address": 1, "profile": "eastron-sdm630", "model": "electricity",
             "annual_kwh": 70000, "energy_start": 33000, "interval": 0.5},
            {"id": "heat-b", "bus": "line-2", "address": 21, "profile": "sim-heat-meter", "model": "heat",
             "heat_loss": 900, "dhw_kwh_per_day": 40, "energy_start": 1200.0, "interval": 0.5},
            {"id": "heat-m", "bus": "mbus-1", "address": 5, "profile": "mbus-heat", "model": "heat",
             "heat_loss": 1200, "dhw_kwh_per_day": 50, "energy_start": 4321.5, "volume_start": 87.25,
             "interval": 0.5},
            {"id": "room-1", "bus": "line-1", "address": 11, "profile": "xy-md02", "model": "room", "interval": 1},
            {"id": "room-2", "bus": "line-1", "address": 12, "profile": "xy-md02", "model": "room", "interval": 1},
        ],
        "faults": [
            {"at": "1d2h", "fault": "offline", "device": "room-2", "for": "8h"},
            {"at": "1d18h", "fault": "bus_down", "bus": "line-2", "for": "5h"},
            {"at": "2d20h", "fault": "offline", "device": "heat-m", "for": "6h"},
            {"at": "2d8h", "fault": "noisy", "bus": "plant", "for": "4h", "rates": {"silent": 0.3, "busy": 0.2}},
            {"at": "3d10h", "fault": "rollover", "device": "heat-a", "point": "energy_heat"},
            {"at": "4d4h", "fault": "counter_reset", "device": "elec", "point": "energy_active_import"},
            {"at": "5d3h", "fault": "meter_swap", "device": "heat-b"},
            {"at": "6d1h", "fault": "bus_down", "bus": "plant", "for": "3h"},
        ],
    }


@pytest.mark.long(20)
@pytest.mark.slow
@pytest.mark.timeout(90)
def test_every_forwarded_reading_is_proven_and_the_saving_is_measured(tmp_path: Path, broker: Broker) -> None:
    require_binary("socat")
    config = parse_building_config(faulty_building(tmp_path, free_port()), tmp_path)
    buffer = tmp_path / "buffer.db"
    faults_over = {"offline_end", "bus_down_end", "noisy_end", "rollover", "counter_reset", "meter_swap"}

    def enough_to_judge() -> bool:
        """Every scheduled fault is over and each heat meter has two complete days on each side."""
        events = {line.split()[1] for line in list(handle.fault_log)}
        heat = ingest.report().get("heat", {})
        return faults_over <= events and all(
            name in heat and heat[name]["before"]["days"] >= 2 and heat[name]["after"]["days"] >= 2
            for name in ("heat-a", "heat-m", "building"))

    handle = run_building(config)
    try:
        ingest = PlatformIngest(port=broker.port, meta_path=handle.meta_path).start()
        try:
            agent_yaml = tmp_path / "agent.yaml"
            agent_yaml.write_text(yaml.safe_dump(handle.agent_config(broker.port, buffer)))
            started = time.monotonic()
            with AgentProcess(agent_yaml, tmp_path / "agent.log") as agent:
                wait_until(enough_to_judge, 60, "the faults and complete days on both sides", interval=1.0)
            handle.stop()
            # What the broker acknowledged (and the agent then deleted) may still be on its way.
            still_buffered = inspect(buffer).waiting_ids()
            delivered = set(range(1, buffer_next_id(buffer))) - still_buffered
            wait_until(lambda: delivered <= {r["id"] for r in ingest.readings()}, 10,
                       "every acknowledged reading at the platform")
        finally:
            ingest.stop()
    finally:
        handle.stop()
    elapsed = time.monotonic() - started
    report = ingest.report()
    ingest.write_summary(tmp_path / "summary", report)
    print(render(report))
    assert "Traceback" not in agent.log.read_text()

    # Completeness: one stream, ids from 1, every gap explained by an eviction report.
    [stream] = report["streams"].values()
    assert stream["first_id"] == 1
    assert stream["unexplained"] == 0, stream["unexplained_ranges"]

    # Every forwarded reading is a value its device served just before the reading's ts.
    truth = GroundTruth.load(handle.truth_path)
    readings = ingest.readings()
    proof = prove(readings, truth, window_ms=3000)
    assert proof.ok, f"{len(proof.unproven)} reading(s) the meters never served, e.g. {proof.unproven[:3]}"
    assert proof.proven > 1000

    # The faults really happened, and the agent flagged the counter ones.
    events = [e["event"] for e in truth.events]
    for fault in ("offline", "bus_down", "noisy", "rollover", "counter_reset", "meter_swap", "bus_down_end"):
        assert fault in events, events
    meta = json.loads(handle.meta_path.read_text())
    # Line 1 garbled answers (the proof above shows none became a value). How
    # many depends on how many requests a loaded machine got through: one
    # run on CI saw 5 in 18 s; what matters is that they happened.
    assert sum(meta["injected"]["line-1"].values()) >= 2, meta["injected"]["line-1"]
    flags = {(r["device"], r["point"], r["quality"]) for r in readings if r["quality"] != "ok"}
    assert ("heat-a", "energy_heat", "counter_rollover") in flags
    assert ("elec", "energy_active_import", "counter_backwards") in flags
    assert ("heat-b", "energy_heat", "counter_backwards") in flags

    # The M-Bus heat meter, on its own line, is read and judged as the others.
    mbus = [r for r in readings if r["device"] == "heat-m"]
    assert {r["point"] for r in mbus} >= {"energy_heat", "volume", "power_heat", "temperature_supply"}
    assert {r["meter"] for r in mbus} == {f"{meta['devices']['heat-m']['serial']:08d}"}
    assert events.count("offline") == 2 and events.count("offline_end") == 2, events

    # The heat saving measured from the forwarded counters against the simulator's true saving.
    heat = report["heat"]
    for meter in ("heat-a", "heat-m", "building"):
        result = heat[meter]
        assert result["before"]["days"] >= 2 and result["after"]["days"] >= 2, result
        assert result["saving_error_relative"] <= 0.05, result
    print(f"elapsed {elapsed:.1f} s; saving heat-a measured {heat['heat-a']['saving_measured']:.4f} "
          f"true {heat['heat-a']['saving_true']:.4f}; proven {proof.proven}")


@pytest.mark.timeout(30)
def test_cli_platform_writes_a_summary(tmp_path: Path, broker: Broker) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "simulators.cli", "platform", "--broker", f"127.0.0.1:{broker.port}",
         "--until", "1", "--summary", str(tmp_path / "summary"), "--plot", str(tmp_path / "plot.png")],
        check=False, capture_output=True, text=True, timeout=20, cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["schema"] == "retrofit-sim/platform-summary/1"
    assert "platform:" in (tmp_path / "summary.txt").read_text()
    assert ("plot written" in result.stdout) == (tmp_path / "plot.png").exists()


# ---------------------------------------------------------------- the store and `retrofit-sim verify` (issue 19)

@pytest.mark.timeout(30)
def test_cli_platform_stores_what_arrives_once_per_stream_and_id(tmp_path: Path, broker: Broker) -> None:
    import sqlite3

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from simulators.platform_store import load

    store = tmp_path / "platform.db"
    proc = subprocess.Popen(
        [sys.executable, "-m", "simulators.cli", "platform", "--broker", f"127.0.0.1:{broker.port}", "--until", "3",
         "--store", str(store)], cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-gateway")
        client.connect("127.0.0.1", broker.port)
        client.loop_start()
        # A retained status reaches the platform once it has subscribed: then the readings can go.
        client.publish("buildings/s/gw/status", json.dumps({"state": "online"}), qos=1, retain=True)

        def subscribed() -> bool:
            if not store.exists():
                return False
            with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as conn:
                try:
                    return bool(conn.execute("SELECT count(*) FROM status").fetchone()[0])
                except sqlite3.OperationalError:
                    return False
        wait_until(subscribed, 10, "the platform to subscribe")
        body = {"schema": "retrofit-agent/readings/1", "gateway": "gw", "site": "s", "stream": "st-1",
                "readings": [{"id": 1, "device": "heat", "point": "energy_heat", "value": 731204.2, "unit": "kWh",
                              "ts": 1_760_000_000_000, "quality": "ok"}]}
        for _ in range(2):  # at least once: the same batch twice
            client.publish("buildings/s/gw/readings", json.dumps(body), qos=1).wait_for_publish(5)
        client.publish("buildings/s/gw/events", json.dumps({"stream": "st-1", "events": [
            {"type": "corrupt", "first_id": 2, "last_id": 3, "count": 2}]}), qos=1).wait_for_publish(5)
        client.loop_stop()
        client.disconnect()
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    received = load(store)
    assert [(r.stream, r.id, str(r.value)) for r in received.readings] == [("st-1", 1, "731204.2")]
    assert received.streams["st-1"]["duplicates"] == 1
    assert received.events == [{"type": "corrupt", "first_id": 2, "last_id": 3, "count": 2, "stream": "st-1"}]


@pytest.mark.long(11)
def test_cli_verify_reports_from_a_store_with_an_imgw_weather_file_and_says_when_it_skips_the_plot(
        tmp_path: Path) -> None:
    from simulators.platform_store import PlatformStore

    store = PlatformStore(tmp_path / "platform.db")
    start = 1_759_269_600  # 2025-10-01 00:00 in Warsaw (22:00 UTC the day before)
    readings = [{"id": k + 1, "device": "heat", "point": "energy_heat", "value": round(1000 + 30.5 * k, 3),
                 "unit": "kWh", "ts": (start - 3600 + k * 3600) * 1000, "quality": "ok"} for k in range(80)]
    store.add_readings("st", "gw", "site", readings)
    store.close()
    weather = tmp_path / "k_d_10_2025.csv"
    weather.write_bytes("".join(
        f'252200150,"WARSZAWA-BIELANY",2025,10,{d:02d},12.0,,3.0,,{d / 2:.1f},,1.0,,0.0,,"",0,\n'
        for d in range(1, 5)).encode("cp1250"))
    hidden = tmp_path / "hide" / "matplotlib"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text("raise ImportError('hidden by the test')\n")
    env = {"PYTHONPATH": f"{hidden.parent}:{REPO}", "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-m", "simulators.cli", "verify", "--store", str(tmp_path / "platform.db"),
         "--retrofit", "2025-10-02", "--weather-csv", str(weather), "--station", "warszawa-bielany",
         "--out", str(tmp_path / "verify.json"), "--plot", str(tmp_path / "savings.png")],
        check=False, capture_output=True, text=True, timeout=60, cwd=REPO, env=env)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "verify.json").read_text())
    assert report["schema"] == "retrofit-sim/verify/1" and report["timezone"] == "Europe/Warsaw"
    days = report["meters"]["heat/energy_heat"]["days"]
    assert days["2025-10-01"]["kwh"] == pytest.approx(24 * 30.5) and days["2025-10-01"]["status"] == "ok"
    assert report["temperature"]["days"]["2025-10-03"] == 1.5
    assert "IMGW daily file k_d_10_2025.csv" in report["temperature"]["source"]
    assert "plot skipped: matplotlib is not installed" in result.stdout
    assert not (tmp_path / "savings.png").exists()
    # OpenDSM imports matplotlib (without declaring it): the report says why there is no saving.
    assert report["savings"]["why_no_savings"].startswith("OpenDSM cannot be imported (ImportError: hidden by")

    pytest.importorskip("opendsm", reason="the platform extra runs the CalTRACK model")
    result = subprocess.run(
        [sys.executable, "-m", "simulators.cli", "verify", "--store", str(tmp_path / "platform.db"),
         "--retrofit", "2025-10-02", "--weather-csv", str(weather), "--station", "252200150",
         "--out", str(tmp_path / "verify.json")],
        check=False, capture_output=True, text=True, timeout=60, cwd=REPO, env={**env, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "verify.json").read_text())
    # Two days of baseline is not a year: the verdict says so, with CalTRACK's reason.
    assert report["savings"]["sufficiency"]["verdict"] == "insufficient"
    assert any("incorrect_number_of_total_days" in r for r in report["savings"]["sufficiency"]["reasons"])
    assert "data sufficiency: INSUFFICIENT" in result.stdout

    wrong = subprocess.run(
        [sys.executable, "-m", "simulators.cli", "verify", "--store", str(tmp_path / "platform.db"),
         "--meter", "heat/volume", "--out", str(tmp_path / "v2.json")],
        check=False, capture_output=True, text=True, timeout=60, cwd=REPO, env=env)
    assert wrong.returncode == 1
    assert "--meter heat/volume: no such counter series; there are: building/heat, heat/energy_heat" in wrong.stderr
    assert "Traceback" not in wrong.stderr
