"""Remote configuration (issue 18, item 3) on real parts: the agent in its own
process, a real Mosquitto, a simulated meter on a real TCP socket, Ed25519
keys made by `retrofit-agent config keygen`, and an independent subscriber
that checks no reading is lost or renumbered whatever the platform pushes.

Each outcome must be one retained message on ``.../config/state``: the
tests read it with a subscriber that connects afterwards, as a platform
restarted later would.
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from agent import remote_config
from agent.config import load_config
from agent.health import DeviceHealth, Health
from drivers.profile import load_catalogue
from simulators.meters import SimulatedDevice
from simulators.modbus_server import ModbusTcpServer
from tests.support import (
    REPO,
    AgentProcess,
    Broker,
    Subscriber,
    agent_status,
    free_port,
    wait_until,
    write_config,
)
from tests.test_e2e import ROOM_VALUES, FixedModel

pytestmark = pytest.mark.timeout(90)

GATEWAY, SITE = "gw-remote", "site-remote"
STATE_TOPIC = f"buildings/{SITE}/{GATEWAY}/config/state"


# --------------------------------------------------------------------------- helpers

def keygen(path: Path) -> Path:
    """The platform's key pair, made by the command the platform team runs."""
    result = subprocess.run([sys.executable, "-m", "agent.cli", "config", "keygen", str(path)],
                            capture_output=True, text=True, cwd=REPO, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    assert (path.stat().st_mode & 0o777) == 0o600
    return path.with_name(path.name + ".pub")


def room_server() -> ModbusTcpServer:
    """Two room sensors; the local config reads the one at 10."""
    profile = load_catalogue().get("xy-md02")
    return ModbusTcpServer({unit: SimulatedDevice(profile, FixedModel(ROOM_VALUES)) for unit in (10, 11)})


def agent_config(tmp_path: Path, broker_port: int, meter_port: int, public_key: Path,
                 confirm_within: str = "6s") -> Path:
    config = write_config(
        tmp_path / "agent.yaml", broker_port=broker_port, buffer=tmp_path / "state" / "buffer.db",
        buses=[{"id": "plant", "type": "modbus-tcp", "host": "127.0.0.1", "port": meter_port, "timeout": 0.5}],
        devices=[{"id": "room-1", "bus": "plant", "address": 10, "profile": "xy-md02", "interval": "1s"}],
        gateway=GATEWAY, site=SITE, mqtt_extra={"keepalive": 5})
    data = yaml.safe_load(config.read_text())
    data["remote_config"] = {"enabled": True, "public_key_file": str(public_key), "confirm_within": confirm_within}
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    return config


def pushed_yaml(local: Path, change: Any) -> str:
    """The local config as the platform would rewrite it (without remote_config: it keeps the gateway's)."""
    data = yaml.safe_load(local.read_text())
    del data["remote_config"]
    change(data)
    return yaml.safe_dump(data, sort_keys=False)


def document(key: Path, version: int, text: str, gateway: str = GATEWAY, site: str = SITE) -> bytes:
    return remote_config.make_document(remote_config.load_private_key(key), gateway, site, version, text)


def push(broker: Broker, payload: bytes) -> None:
    """Publish as the platform does (retained, QoS 1), whatever the payload holds."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-push-{time.monotonic_ns()}")
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        info = client.publish(f"buildings/{SITE}/{GATEWAY}/config/set", payload, qos=1, retain=True)
        info.wait_for_publish(timeout=10)
        assert info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()


def retained_state(broker: Broker, version: int | None, states: tuple[str, ...], timeout: float,
                   reason: str = "") -> dict[str, Any]:
    """The retained result a platform connecting now gets, once it is for
    ``version``, in one of ``states`` and (if given) has a reason holding ``reason``."""
    def current() -> dict[str, Any] | None:
        with Subscriber(broker.port, STATE_TOPIC, client_id=f"late-platform-{time.monotonic_ns()}") as late:
            try:
                wait_until(lambda: late.messages, 1, "the retained result", interval=0.02)
            except AssertionError:
                return None  # nothing retained yet
            _topic, payload, retained = late.messages[0]
        if not retained:
            return None  # published live just now: what a platform connecting later gets is asked again
        state: dict[str, Any] = json.loads(payload)
        wanted = state["version"] == version and state["state"] in states
        return state if wanted and (not reason or any(reason in r for r in state["reasons"])) else None

    result: dict[str, Any] = wait_until(current, timeout, f"result {states} for version {version}", interval=0.3)
    return result


def started(agent: AgentProcess) -> int:
    return sum(1 for e in agent.events() if e.get("event") == "agent.started")


def assert_nothing_lost_or_renumbered(subscriber: Subscriber) -> int:
    """Every id from 1 up arrived, in one stream, and an id never stands for two readings."""
    batches = subscriber.payloads("/readings")
    assert batches, "no readings arrived"
    assert len({b["stream"] for b in batches}) == 1, "a config change started a new stream"
    seen: dict[int, tuple[Any, ...]] = {}
    for reading in (r for b in batches for r in b["readings"]):
        identity = (reading["device"], reading["point"], reading["ts"], reading["value"])
        assert seen.setdefault(reading["id"], identity) == identity, f"id {reading['id']} renumbered"
    ids = sorted(seen)
    assert ids == list(range(1, ids[-1] + 1)), f"ids missing: {sorted(set(range(1, ids[-1] + 1)) - set(ids))[:20]}"
    assert len(set(seen.values())) == len(seen), "one reading arrived under two ids"
    return ids[-1]


def wait_for_more_readings(subscriber: Subscriber, than: int, timeout: float = 20) -> None:
    wait_until(lambda: max(subscriber.unique_readings(), default=0) > than, timeout, f"readings beyond id {than}")


class NotifySocket(threading.Thread):
    """What systemd listens on, with the sender's pid of each message
    (SO_PASSCRED), as systemd checks it for NotifyAccess=main."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.messages: list[tuple[int, str]] = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self._sock.bind(str(path))
        self._sock.settimeout(0.2)
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            try:
                data, ancillary, _flags, _address = self._sock.recvmsg(4096, socket.CMSG_SPACE(12))
            except TimeoutError:
                continue
            pid = next((struct.unpack("3i", cdata[:12])[0] for level, kind, cdata in ancillary
                        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS), 0)
            self.messages.append((pid, data.decode()))

    def close(self) -> None:
        self._done.set()
        self.join(2)
        self._sock.close()

    def fields(self) -> list[tuple[int, str]]:
        """(pid, field) for READY=1, RELOADING=1 and STOPPING=1, in order."""
        return [(pid, f) for pid, message in self.messages for f in message.split("\n")
                if f in ("READY=1", "RELOADING=1", "STOPPING=1")]


# --------------------------------------------------------------------------- the document, pure

def test_a_document_verifies_only_unchanged_and_with_its_key(tmp_path: Path) -> None:
    public = keygen(tmp_path / "platform.key")
    other = keygen(tmp_path / "other.key")
    config_text = "gateway: {id: a, site: b}\n"
    payload = document(tmp_path / "platform.key", 3, config_text, "a", "b")
    parsed = remote_config.read_document(payload)
    assert (parsed.gateway, parsed.site, parsed.version, parsed.config) == ("a", "b", 3, config_text)
    remote_config.verify(parsed, _public(public))
    with pytest.raises(remote_config.Refusal, match="does not verify"):
        remote_config.verify(parsed, _public(other))
    body = json.loads(payload)
    for field, value in (("version", 4), ("gateway", "c"), ("site", "d"), ("config", config_text + "#\n")):
        changed = remote_config.read_document(json.dumps({**body, field: value}).encode())
        with pytest.raises(remote_config.Refusal, match="does not verify"):
            remote_config.verify(changed, _public(public))


@pytest.mark.parametrize(("change", "reason"), [
    ({"signature": None}, "unsigned"),
    ({"signature": ""}, "unsigned"),
    ({"signature": "not base64!"}, "signature: not base64"),
    ({"signature": base64.b64encode(b"x" * 10).decode()}, "64 bytes"),
    ({"version": 0}, "version: a whole number"),
    ({"version": "7"}, "version: a whole number"),
    ({"schema": "something/else"}, "schema"),
    ({"config": None}, "config: text expected"),
])
def test_a_malformed_document_is_refused_with_its_reason(tmp_path: Path, change: dict[str, Any], reason: str) -> None:
    keygen(tmp_path / "platform.key")
    body = {**json.loads(document(tmp_path / "platform.key", 3, "x: 1\n", "a", "b")), **change}
    with pytest.raises(remote_config.Refusal) as refused:
        remote_config.read_document(json.dumps(body).encode())
    assert any(reason in r for r in refused.value.reasons), refused.value.reasons


def _public(path: Path) -> Any:
    from cryptography.hazmat.primitives import serialization

    return serialization.load_pem_public_key(path.read_bytes())


def test_the_key_must_be_the_public_ed25519_one(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    public = keygen(tmp_path / "platform.key")
    ecdsa = tmp_path / "ecdsa.pub"
    ecdsa.write_bytes(ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    for key, expected in ((tmp_path / "platform.key", "is a private key"), (ecdsa, "configs are signed with Ed25519"),
                          (tmp_path / "missing.pub", "cannot read")):
        config = agent_config(tmp_path, 1883, 502, key)
        result = subprocess.run([sys.executable, "-m", "agent.cli", "check", "--config", str(config)],
                                capture_output=True, text=True, cwd=REPO, timeout=30, check=False)
        assert result.returncode == 78, result.stdout
        assert "remote_config.public_key_file" in result.stderr and expected in result.stderr, result.stderr
        assert "PRIVATE" not in result.stderr  # the key itself is never echoed
    config = agent_config(tmp_path, 1883, 502, public)
    result = subprocess.run([sys.executable, "-m", "agent.cli", "check", "--config", str(config)],
                            capture_output=True, text=True, cwd=REPO, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    assert "remote configuration: on over MQTT" in result.stdout
    assert "in force: this file (no pushed config taken)" in result.stdout


# --------------------------------------------------------------------------- a trial, judged

def _control(tmp_path: Path, quiet_buses: list[str]) -> remote_config.RemoteControl:
    public = keygen(tmp_path / "platform.key")
    local = load_config(agent_config(tmp_path, 1883, 502, public))
    store = remote_config.Store(tmp_path / "state" / "config")
    store.directory.mkdir(parents=True)
    trial = remote_config.Entry(2, "config-2.yaml", "0" * 64, local.sha256, 1, quiet_buses=quiet_buses)
    ledger = remote_config.Ledger(highest=2, trial=trial)
    return remote_config.RemoteControl(local, local, store, ledger, _public(public), trial_s=0.2)


def _health(connected: bool, answered: dict[str, bool]) -> Health:
    health = Health()
    health.uplink.connected = connected
    for index, (bus, ok) in enumerate(answered.items()):
        health.devices[f"d{index}"] = DeviceHealth(bus=bus, last_ok_ms=1 if ok else None,
                                                   last_error="" if ok else "timeout")
    return health


def test_a_trial_is_confirmed_by_the_uplink_and_every_bus_that_answered_before(tmp_path: Path) -> None:
    control = _control(tmp_path, quiet_buses=["dead-before"])
    assert control.tick(_health(True, {"plant": True, "dead-before": False})) is None
    assert control.ledger.result is not None and control.ledger.result.state == "applied"
    assert control.ledger.active is not None and control.ledger.active.version == 2
    assert remote_config.Store(control.store.directory).read().active is not None  # written down


@pytest.mark.parametrize(("connected", "answered", "reason"), [
    (False, {"plant": True}, "uplink: not connected within 6s"),
    (True, {"plant": True, "line-2": False}, "bus line-2: no device answered within 6s (d1: timeout)"),
])
def test_a_trial_that_does_not_confirm_in_time_is_rolled_back(tmp_path: Path, connected: bool,
                                                              answered: dict[str, bool], reason: str) -> None:
    control = _control(tmp_path, quiet_buses=[])
    health = _health(connected, answered)
    assert control.tick(health) is None  # not yet: the time is not up
    time.sleep(0.25)  # the trial's 0.2 s must pass: time itself is what is tested here
    assert control.tick(health) == "roll back pushed config version 2"
    ledger = remote_config.Store(control.store.directory).read()
    assert ledger.trial is None and ledger.active is None
    assert ledger.result is not None and ledger.result.state == "rolled_back"
    assert reason in ledger.result.reasons


# --------------------------------------------------------------------------- which config a start runs

def _taken(tmp_path: Path, **trial: Any) -> tuple[Path, remote_config.Store]:
    """A local config, and a pushed version 5 being tried (``trial`` overrides its entry)."""
    tmp_path.mkdir(exist_ok=True)
    public = keygen(tmp_path / "platform.key")
    config = agent_config(tmp_path, 1883, 502, public)
    local = load_config(config)
    store = remote_config.Store(local.config.remote_config.directory)  # type: ignore[arg-type]
    store.directory.mkdir(parents=True)
    text = pushed_yaml(config, lambda d: d["devices"][0].update(interval="2s"))
    name, sha256 = store.write_config(5, text)
    entry = remote_config.Entry(5, name, sha256, local.sha256, 1, **trial)
    store.save(remote_config.Ledger(highest=5, trial=entry))
    return config, store


def _select(config: Path) -> remote_config.Selection:
    local = load_config(config)
    return remote_config.select(local, remote_config.load_public_key(local))


def test_a_start_under_a_trial_runs_it_until_it_has_started_too_often(tmp_path: Path) -> None:
    config, store = _taken(tmp_path)
    for start in range(1, remote_config.MAX_TRIAL_STARTS + 1):
        chosen = _select(config)
        assert chosen.loaded.path == store.path("config-5.yaml"), start
        assert chosen.control is not None and chosen.control.trying is not None
    chosen = _select(config)
    assert chosen.loaded.path == config
    result = store.read().result
    assert result is not None and result.state == "rolled_back" and "started 3 times" in result.reasons[0]


def test_a_trial_past_its_deadline_or_changed_on_disk_is_rolled_back_at_start(tmp_path: Path) -> None:
    config, store = _taken(tmp_path / "late", deadline_ms=int(time.time() * 1000) - 1)
    assert _select(config).loaded.path == config
    assert "not confirmed within 6s" in store.read().result.reasons[0]  # type: ignore[union-attr]

    config, store = _taken(tmp_path / "tampered")
    with store.path("config-5.yaml").open("a") as file:
        file.write("# changed\n")
    assert _select(config).loaded.path == config
    assert "changed on disk since it was taken" in store.read().result.reasons[0]  # type: ignore[union-attr]


def test_an_edit_of_the_local_file_on_site_wins_over_a_pushed_config(tmp_path: Path) -> None:
    config, store = _taken(tmp_path)
    ledger = store.read()
    ledger.active, ledger.trial = ledger.trial, None
    store.save(ledger)
    assert _select(config).loaded.path == store.path("config-5.yaml")
    check = subprocess.run([sys.executable, "-m", "agent.cli", "check", "--config", str(config)],
                           capture_output=True, text=True, cwd=REPO, timeout=30, check=False)
    assert "in force: pushed version 5" in check.stdout and "not this file" in check.stdout, check.stdout
    assert "pushed version 5: valid" in check.stdout

    config.write_text(config.read_text() + "# the technician was here\n")
    assert _select(config).loaded.path == config
    after = store.read()
    assert after.active is None and after.result is not None and after.result.state == "superseded"
    check = subprocess.run([sys.executable, "-m", "agent.cli", "check", "--config", str(config)],
                           capture_output=True, text=True, cwd=REPO, timeout=30, check=False)
    assert "in force: this file" in check.stdout, check.stdout


# --------------------------------------------------------------------------- end to end

@pytest.fixture
def meter() -> Any:
    server = room_server().start()
    yield server
    server.stop()


def test_refusals_each_leave_one_clear_retained_result_and_nothing_changes(
        tmp_path: Path, broker: Broker, subscriber: Subscriber, meter: ModbusTcpServer) -> None:
    public = keygen(tmp_path / "platform.key")
    keygen(tmp_path / "intruder.key")
    config = agent_config(tmp_path, broker.port, meter.port, public)
    good = pushed_yaml(config, lambda d: d["devices"][0].update(interval="2s"))
    with AgentProcess(config, tmp_path / "agent.log") as agent:
        agent.wait_started()
        wait_for_more_readings(subscriber, 3)

        unsigned = {**json.loads(document(tmp_path / "platform.key", 7, good)), "signature": None}
        push(broker, json.dumps(unsigned).encode())
        state = retained_state(broker, 7, ("refused",), 15)
        assert any("unsigned" in r for r in state["reasons"]), state

        push(broker, document(tmp_path / "intruder.key", 8, good))
        state = retained_state(broker, 8, ("refused",), 15)
        assert any("does not verify" in r for r in state["reasons"]), state

        push(broker, document(tmp_path / "platform.key", 9, good, gateway="gw-elsewhere"))
        state = retained_state(broker, 9, ("refused",), 15)
        assert any("for gateway gw-elsewhere" in r for r in state["reasons"]), state

        def break_twice(data: dict[str, Any]) -> None:
            data["devices"][0]["profile"] = "no-such-meter"
            data["buses"][0]["port"] = 70000
        push(broker, document(tmp_path / "platform.key", 10, pushed_yaml(config, break_twice)))
        state = retained_state(broker, 10, ("refused",), 15)
        assert any("config-10.yaml:" in r and "unknown profile 'no-such-meter'" in r for r in state["reasons"]), state
        assert any("config-10.yaml:" in r and "buses[0].port" in r for r in state["reasons"]), state

        # Version 10 was taken (and refused): a valid config under 10 again, or an older one, is a replay.
        for version in (10, 4):
            push(broker, document(tmp_path / "platform.key", version, good))
            state = retained_state(broker, version, ("refused",), 15, reason="is not newer than version 10")
        assert state["active"] == {"version": 0, "sha256": hashlib.sha256(config.read_bytes()).hexdigest()}

        assert started(agent) == 1, "a refused document must not restart the agent"
        snapshot = agent_status(config)
        assert snapshot["config"]["source"] == "local"
        assert snapshot["config"]["remote"]["last"]["state"] == "refused"
        last = max(subscriber.unique_readings())
        wait_for_more_readings(subscriber, last)
    assert_nothing_lost_or_renumbered(subscriber)
    assert not list((tmp_path / "state" / "config").glob("config-*.yaml")), "a refused config was kept"


def test_a_good_config_is_applied_by_a_restart_and_survives_the_next_start(
        tmp_path: Path, broker: Broker, subscriber: Subscriber, meter: ModbusTcpServer) -> None:
    public = keygen(tmp_path / "platform.key")
    config = agent_config(tmp_path, broker.port, meter.port, public)

    def second_room(data: dict[str, Any]) -> None:
        data["devices"].append({"id": "room-2", "bus": "plant", "address": 11, "profile": "xy-md02",
                                "interval": "1s", "points": ["temperature"]})
    good = pushed_yaml(config, second_room)
    signed = tmp_path / "v3.json"
    signed.write_bytes(document(tmp_path / "platform.key", 3, good))
    notify = NotifySocket(tmp_path / "notify.sock")
    notify.start()
    with AgentProcess(config, tmp_path / "agent.log", env={"NOTIFY_SOCKET": str(notify.path)}) as agent:
        agent.wait_started()
        wait_for_more_readings(subscriber, 3)
        pid = agent.proc.pid  # type: ignore[union-attr]
        # The platform's command: publishes, then waits for the gateway's result.
        result = subprocess.run(
            [sys.executable, "-m", "agent.cli", "config", "push", str(signed), "--broker", f"127.0.0.1:{broker.port}",
             "--wait", "40s"], capture_output=True, text=True, cwd=REPO, timeout=60, check=False)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "version 3 pending" in result.stdout and "version 3 applied" in result.stdout, result.stdout
        state = retained_state(broker, 3, ("applied",), 5)
        assert state["active"] == {"version": 3, "sha256": hashlib.sha256(good.encode()).hexdigest()}
        assert agent.proc.pid == pid and agent.proc.poll() is None  # type: ignore[union-attr]
        assert started(agent) == 2, "applied by executing the agent again"
        wait_until(lambda: any(r["device"] == "room-2" for r in subscriber.readings()), 20, "the pushed device")
        snapshot = wait_until(lambda: (s := agent_status(config)).get("config", {}).get("source") == "pushed" and s,
                              10, "the status to name the pushed config")
        assert snapshot["config"]["sha256"] == hashlib.sha256(good.encode()).hexdigest()
        assert snapshot["config"]["pushed_version"] == 3
        assert (tmp_path / "state" / "config" / "config-3.yaml").read_text() == good
        # To systemd a reload by the main process, never a stop: the same pid says READY=1 again.
        assert notify.fields() == [(pid, "READY=1"), (pid, "RELOADING=1"), (pid, "READY=1")], notify.messages
        assert any("MONOTONIC_USEC=" in m for _, m in notify.messages if "RELOADING=1" in m)
    notify.close()

    # A start from scratch (a reboot) runs the pushed config, without a new trial.
    with AgentProcess(config, tmp_path / "agent-2.log") as again:
        again.wait_started()
        snapshot = wait_until(lambda: (s := agent_status(config)).get("config", {}).get("source") and s, 10,
                              "a status snapshot")
        assert snapshot["config"]["pushed_version"] == 3 and snapshot["config"]["remote"]["trying"] is None
        last = max(subscriber.unique_readings())
        wait_for_more_readings(subscriber, last)
    status = subprocess.run([sys.executable, "-m", "agent.cli", "status", "--config", str(config)],
                            capture_output=True, text=True, cwd=REPO, timeout=30, check=False)
    assert f"config: {tmp_path / 'state' / 'config' / 'config-3.yaml'} (pushed version 3)" in status.stdout, \
        status.stdout
    assert "last: version 3 APPLIED" in status.stdout, status.stdout
    assert_nothing_lost_or_renumbered(subscriber)


@pytest.mark.long(13)
def test_a_config_that_cuts_the_gateway_off_is_rolled_back_in_time(
        tmp_path: Path, broker: Broker, subscriber: Subscriber, meter: ModbusTcpServer) -> None:
    public = keygen(tmp_path / "platform.key")
    config = agent_config(tmp_path, broker.port, meter.port, public, confirm_within="6s")
    dead = pushed_yaml(config, lambda d: d["uplink"]["mqtt"].update(port=free_port()))
    with AgentProcess(config, tmp_path / "agent.log") as agent:
        agent.wait_started()
        wait_for_more_readings(subscriber, 3)
        push(broker, document(tmp_path / "platform.key", 2, dead))
        pushed_at = time.monotonic()
        state = retained_state(broker, 2, ("rolled_back",), 40)
        took = time.monotonic() - pushed_at
        assert any(r.startswith("uplink: not connected within 6s") and "Connection refused" in r
                   for r in state["reasons"]), state
        assert state["active"] == {"version": 0, "sha256": hashlib.sha256(config.read_bytes()).hexdigest()}
        assert started(agent) == 3, "tried, then back to the config before"
        print(f"rolled back {took:.1f} s after the push (confirm_within 6 s)")
        # The readings taken while cut off arrive after the roll-back, in the same stream.
        last = max(subscriber.unique_readings())
        wait_for_more_readings(subscriber, last + 5)
        # The retained document comes again on every connection: it is not tried twice.
        assert started(agent) == 3
    assert_nothing_lost_or_renumbered(subscriber)


def test_a_second_agent_refused_by_the_lock_leaves_the_trial_alone(tmp_path: Path) -> None:
    """`run` chose the config (counting a start under a trial, or rolling it
    back) before it took the buffer's lock: a technician's second `run` while
    the service ran used up the trial's starts and was refused only then."""
    from agent.lifecycle import BufferLock

    config, store = _taken(tmp_path)
    holder = BufferLock(load_config(config).config.buffer.path)  # the service, as far as the lock tells
    try:
        result = subprocess.run([sys.executable, "-m", "agent.cli", "run", "--config", str(config)],
                                capture_output=True, text=True, cwd=REPO, timeout=30, check=False)
    finally:
        holder.release()
    assert result.returncode == 75, result.stderr
    trial = store.read().trial
    assert trial is not None and trial.starts == 0


def test_config_sign_takes_gateway_and_site_from_the_file_and_checks_it_first(tmp_path: Path) -> None:
    public = keygen(tmp_path / "platform.key")
    config = agent_config(tmp_path, 1883, 502, public)
    pushed = tmp_path / "pushed.yaml"
    pushed.write_text(pushed_yaml(config, lambda d: d["devices"][0].update(interval="2s")))

    def sign(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "agent.cli", "config", "sign", str(pushed), "--key",
                               str(tmp_path / "platform.key"), *extra], capture_output=True, text=True, cwd=REPO,
                              timeout=30, check=False)

    result = sign("--config-version", "12", "--out", str(tmp_path / "doc.json"))
    assert result.returncode == 0, result.stderr
    signed = remote_config.read_document((tmp_path / "doc.json").read_bytes())
    remote_config.verify(signed, _public(public))
    assert (signed.gateway, signed.site, signed.version) == (GATEWAY, SITE, 12)
    assert signed.config == pushed.read_text()

    before = int(time.time())
    printed = remote_config.read_document(sign().stdout.encode())
    assert before <= printed.version <= int(time.time()) + 1  # the Unix time: successive pushes increase

    pushed.write_text(pushed.read_text().replace("xy-md02", "no-such-meter"))
    refused = sign()
    assert refused.returncode == 78 and "unknown profile 'no-such-meter'" in refused.stderr, refused.stderr
    assert sign("--no-check").returncode == 0


def test_remote_configuration_is_refused_over_https(tmp_path: Path) -> None:
    public = keygen(tmp_path / "platform.key")
    config = agent_config(tmp_path, 1883, 502, public)
    data = yaml.safe_load(config.read_text())
    data["uplink"] = {"http": {"url": "https://127.0.0.1:8443/ingest"}}
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    result = subprocess.run([sys.executable, "-m", "agent.cli", "check", "--config", str(config)],
                            capture_output=True, text=True, cwd=REPO, timeout=30, check=False)
    assert result.returncode == 78
    assert "remote_config.enabled: remote configuration comes over MQTT only" in result.stderr, result.stderr


class RefusingBroker(threading.Thread):
    """Just enough of an MQTT 3.1.1 broker to accept the agent, acknowledge its
    messages and refuse every subscription (SUBACK 0x80), as EMQX, VerneMQ or
    HiveMQ do for a topic their ACL denies. A stand-in because the Mosquitto
    here (2.0.11) grants a denied subscription and then delivers nothing."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(0.2)
        self.port = self._server.getsockname()[1]
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            try:
                connection, _ = self._server.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._serve, args=(connection,), daemon=True).start()

    def _serve(self, connection: socket.socket) -> None:
        reader = connection.makefile("rb")
        with connection, reader:
            while header := reader.read(1):
                length, shift = 0, 0
                while (byte := reader.read(1)[0]) & 0x80:
                    length, shift = length | (byte & 0x7F) << shift, shift + 7
                body = reader.read(length | byte << shift)
                kind = header[0] >> 4
                if kind == 1:  # CONNECT
                    connection.sendall(b"\x20\x02\x00\x00")
                elif kind == 3 and header[0] & 0x06:  # PUBLISH at QoS 1: PUBACK its packet id
                    topic_length = struct.unpack(">H", body[:2])[0]
                    connection.sendall(b"\x40\x02" + body[2 + topic_length:4 + topic_length])
                elif kind == 8:  # SUBSCRIBE: refused
                    connection.sendall(b"\x90\x03" + body[:2] + b"\x80")
                elif kind == 12:  # PINGREQ
                    connection.sendall(b"\xd0\x00")
                elif kind == 14:  # DISCONNECT
                    return

    def stop(self) -> None:
        self._done.set()
        self.join(2)
        self._server.close()


def test_a_broker_that_refuses_the_subscription_is_said_in_the_log_and_the_status(
        tmp_path: Path, meter: ModbusTcpServer) -> None:
    """With remote configuration on but the broker's ACL denying config/set,
    pushed configs would never arrive and nothing would say why."""
    broker = RefusingBroker()
    broker.start()
    try:
        public = keygen(tmp_path / "platform.key")
        config = agent_config(tmp_path, broker.port, meter.port, public)
        with AgentProcess(config, tmp_path / "agent.log") as agent:
            agent.wait_started()
            refused = wait_until(lambda: [e for e in agent.events()
                                          if e["event"] == "remote_config.subscription_refused"],
                                 15, "the refusal in the log")
            assert f"buildings/{SITE}/{GATEWAY}/config/set" in refused[0]["refused"]
            status = wait_until(lambda: "REFUSED the subscription" in (out := subprocess.run(
                [sys.executable, "-m", "agent.cli", "status", "--config", str(config)], capture_output=True,
                text=True, cwd=REPO, timeout=30, check=False).stdout) and out, 10, "the refusal in the status")
            assert "check its ACL" in status
    finally:
        broker.stop()
