"""Every config key reaches the code that uses it (issue 15, item 9).

`buffer.flush_interval` was documented and validated but never passed to
the buffer writer: a technician's setting silently did nothing. This test
walks every record of agent/config.py (recursively, each bus type apart)
and needs an entry for each key in REACHES below, so a new key without one
fails here. Each entry sets the key to a value unlike its default; the
agent is then built from the config (start-up only: buffer opened, uplink
credentials loaded, bus workers made, nothing started) and the value must
be found in the object that uses it. A record handed whole to one consumer
(the MQTT settings to the uplink) is found there, and the consumer's code
must read the field.
"""

from __future__ import annotations

import ast
import dataclasses
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.app import Agent
from agent.config import Config, check_files, load_config
from agent.lifecycle import StopRequest
from agent.spool import Spool
from drivers.core.records import hints, is_record, key_of
from tests.support import REPO
from tests.test_tls import make_ca, make_cert

pytestmark = pytest.mark.timeout(60)

Observe = Callable[[Agent], Any]
WMBUS_KEYS = REPO / "tests" / "data" / "wmbus" / "config-keys.csv"  # a made-up key


@dataclasses.dataclass(frozen=True)
class ReadBy:
    """The record reaches ``module`` whole (``record(agent)`` is the configured
    one) and the module's code reads this field of it."""

    module: str
    record: Observe


def _worker(agent: Agent, bus_id: str) -> Any:
    return next(w for w in agent.workers if w.name == f"bus-{bus_id}")


def _poller(agent: Agent, device_id: str) -> Any:
    """The device as its protocol reads it."""
    return next(d for w in agent.workers for d in w.source.devices if d.device_id == device_id)


def _state(agent: Agent, device_id: str) -> Any:
    """The device as the pipeline keeps it (schedule, counter limits)."""
    return next(d for w in agent.workers for d in w.devices if d.device_id == device_id)


def _comm(agent: Agent, bus_id: str) -> Any:
    return _worker(agent, bus_id).link._client.comm_params  # pymodbus's own record of the line


def _synchronous(agent: Agent) -> str:
    level = agent.buffer._conn.execute("PRAGMA synchronous").fetchone()[0]
    return {1: "normal", 2: "full"}[level]


def _transport(agent: Agent) -> Any:
    """The transport's own settings: each transport keeps its config section (MQTT, HTTPS)."""
    return agent.uplink.transport


def _spool(agent: Agent) -> Spool:
    assert agent.spool is not None, "a spool directory was configured"
    return agent.spool


UPLINK = ReadBy("agent/transports/mqtt.py", lambda a: _transport(a).cfg)
TLS = ReadBy("agent/transports/mqtt.py", lambda a: _transport(a).cfg.tls)
HTTP = ReadBy("agent/transports/http.py", lambda a: _transport(a).cfg)
HTTP_TLS = ReadBy("agent/transports/http.py", lambda a: _transport(a).cfg.tls)


def _delivery(field: str) -> Observe:
    """Delivery settings reach the forwarder, whichever transport carries them."""
    return lambda a: getattr(a.uplink.settings, field)
APP = ReadBy("agent/app.py", lambda a: a.cfg.health)
# Remote configuration is chosen by `run` before the agent is built (agent/cli.py), and run by agent/remote_config.py.
REMOTE_ON = ReadBy("agent/cli.py", lambda a: a.cfg.remote_config)
REMOTE = ReadBy("agent/remote_config.py", lambda a: a.cfg.remote_config)

# key -> (value in the YAML, the value the agent must hold, where it holds it)
REACHES: dict[str, tuple[Any, Any, Observe | ReadBy]] = {
    "gateway.id": ("gw-keys", "gw-keys", lambda a: a.uplink.gateway),
    "gateway.site": ("site-keys", "site-keys", lambda a: a.uplink.site),
    "buffer.path": ("state/keys.db", "state/keys.db", lambda a: a.buffer.path),
    "buffer.max_size_mb": (3, 3 * 1024 * 1024, lambda a: a.buffer.max_bytes),
    "buffer.synchronous": ("full", "full", _synchronous),
    "buffer.flush_interval": ("7s", 7.0, lambda a: a.writer._flush_interval),
    "buffer.max_age": ("2d", 172800.0, lambda a: a.buffer.max_age_s),
    "buffer.spool_dir": ("spool", "spool", lambda a: _spool(a).path.parent.name),
    "uplink.mqtt": ({}, "MqttTransport", lambda a: type(a.uplink.transport).__name__),  # its keys follow
    "uplink.mqtt.host": ("127.0.0.3", "127.0.0.3", UPLINK),
    "uplink.mqtt.port": (8883, 8883, UPLINK),
    "uplink.mqtt.topic_prefix": ("city/keys", "city/keys", lambda a: _transport(a)._topics["readings"].split("/site-keys")[0]),
    "uplink.mqtt.client_id": ("keys-client", "keys-client", UPLINK),
    "uplink.mqtt.qos": (1, 1, UPLINK),  # the one value allowed: it must still be what is sent with
    "uplink.mqtt.keepalive": ("45s", 45.0, UPLINK),
    "uplink.mqtt.batch": (77, 77, _delivery("batch")),
    "uplink.mqtt.inflight": (7, 7, _delivery("inflight")),
    "uplink.mqtt.username": ("keys-user", "keys-user", UPLINK),
    "uplink.mqtt.password_file": ("password", "password", UPLINK),
    "uplink.mqtt.tls": ({}, None, UPLINK),  # a section: its keys follow
    "uplink.mqtt.tls.ca_file": ("ca.pem", "ca.pem", TLS),
    "uplink.mqtt.tls.cert_file": ("client.pem", "client.pem", TLS),
    "uplink.mqtt.tls.key_file": ("client.key", "client.key", TLS),
    "uplink.mqtt.tls.insecure_skip_hostname_check": (True, True, TLS),
    "uplink.mqtt.status_interval": ("9s", 9.0, _delivery("status_interval")),
    "uplink.mqtt.max_message_bytes": (5000, 5000, _delivery("max_message_bytes")),
    "uplink.mqtt.encoding": ("compact", "compact", _delivery("encoding")),
    "uplink.mqtt.compression": ("zlib", "zlib", _delivery("compression")),
    "uplink.mqtt.ack_timeout": ("11s", 11.0, _delivery("ack_timeout")),
    "buses[modbus-rtu].id": ("line-a", "bus-line-a", lambda a: _worker(a, "line-a").name),
    "buses[modbus-rtu].type": ("modbus-rtu", "SERIAL", lambda a: _comm(a, "line-a").comm_type.name),
    "buses[modbus-rtu].port": ("/dev/ttyKEYS0", "/dev/ttyKEYS0", lambda a: _comm(a, "line-a").host),
    "buses[modbus-rtu].baudrate": (19200, 19200, lambda a: _comm(a, "line-a").baudrate),
    "buses[modbus-rtu].parity": ("E", "E", lambda a: _comm(a, "line-a").parity),
    "buses[modbus-rtu].stopbits": (2, 2, lambda a: _comm(a, "line-a").stopbits),
    "buses[modbus-rtu].bytesize": (7, 7, lambda a: _comm(a, "line-a").bytesize),
    "buses[modbus-rtu].timeout": ("0.7s", 0.7, lambda a: _comm(a, "line-a").timeout_connect),
    "buses[modbus-tcp].id": ("plant", "bus-plant", lambda a: _worker(a, "plant").name),
    "buses[modbus-tcp].type": ("modbus-tcp", "TCP", lambda a: _comm(a, "plant").comm_type.name),
    "buses[modbus-tcp].host": ("127.0.0.4", "127.0.0.4", lambda a: _comm(a, "plant").host),
    "buses[modbus-tcp].port": (5021, 5021, lambda a: _comm(a, "plant").port),
    "buses[modbus-tcp].framing": ("rtu", "FramerRTU", lambda a: type(_worker(a, "plant").link._client.framer).__name__),
    "buses[modbus-tcp].timeout": ("2.5s", 2.5, lambda a: _comm(a, "plant").timeout_connect),
    "buses[mbus].id": ("heat-line", "bus-heat-line", lambda a: _worker(a, "heat-line").name),
    "buses[mbus].type": ("mbus", "MbusLink", lambda a: type(_worker(a, "heat-line").link).__name__),
    "buses[mbus].port": ("/dev/ttyKEYS1", "/dev/ttyKEYS1", lambda a: _worker(a, "heat-line").link.port),
    "buses[mbus].baudrate": (9600, 9600, lambda a: _worker(a, "heat-line").link.baudrate),
    "buses[mbus].parity": ("N", "N", lambda a: _worker(a, "heat-line").link.parity),
    "buses[mbus].timeout": ("0.4s", 0.4, lambda a: _worker(a, "heat-line").link.timeout),
    "buses[mbus].retries": (4, 4, lambda a: _worker(a, "heat-line").link.retries),
    "buses[wmbus].id": ("radio-keys", "bus-radio-keys", lambda a: _worker(a, "radio-keys").name),
    "buses[wmbus].type": ("wmbus", "SerialStick", lambda a: type(_worker(a, "radio-keys").link.receiver).__name__),
    "buses[wmbus].stick": ("amb8465", "amb8465", lambda a: _worker(a, "radio-keys").link.receiver.stick),
    "buses[wmbus].port": ("/dev/ttyKEYS2", "/dev/ttyKEYS2", lambda a: _worker(a, "radio-keys").link.receiver.port),
    "buses[wmbus].baudrate": (19200, 19200, lambda a: _worker(a, "radio-keys").link.receiver.baudrate),
    "buses[wmbus].modes": (["C1", "T1"], ("c1", "t1"), lambda a: _worker(a, "radio-keys").link.receiver.modes),
    "buses[wmbus].keys_file": (str(WMBUS_KEYS), ["12345678"], lambda a: _worker(a, "radio-keys").link.key_meters()),
    "buses[wmbus-sdr].id": ("sdr-keys", "bus-sdr-keys", lambda a: _worker(a, "sdr-keys").name),
    "buses[wmbus-sdr].type": ("wmbus-sdr", "CommandReceiver",
                              lambda a: type(_worker(a, "sdr-keys").link.receiver).__name__),
    "buses[wmbus-sdr].command": ("rtl_433 -F json", "rtl_433 -F json",
                                 lambda a: _worker(a, "sdr-keys").link.receiver.command),
    "buses[wmbus-sdr].keys_file": (str(WMBUS_KEYS), ["12345678"], lambda a: _worker(a, "sdr-keys").link.key_meters()),
    "devices[].id": ("elec-keys", "elec-keys", lambda a: _poller(a, "elec-keys").device_id),
    "devices[].bus": ("line-a", "bus-line-a", lambda a: next(
        w.name for w in a.workers if any(d.device_id == "elec-keys" for d in w.source.devices))),
    "devices[].address": (17, 17, lambda a: _poller(a, "elec-keys").unit),
    "devices[].profile": ("eastron-sdm120", "eastron-sdm120", lambda a: _poller(a, "elec-keys").profile.name),
    "devices[].interval": ("20s", 20.0, lambda a: _poller(a, "elec-keys").interval),
    "devices[].points": (["voltage", "energy_active_import"], ["voltage", "energy_active_import"],
                         lambda a: list(_poller(a, "elec-keys").points)),
    "devices[].align": ("boundary", [(True, 0.0)] * 2,
                        lambda a: [(slot.aligned, slot.offset) for slot in _state(a, "elec-keys").slots]),
    "devices[].max_rate": ({"energy_active_import": 4.5}, 4.5,
                           lambda a: _state(a, "elec-keys").limits["energy_active_import"].max_rate_per_h),
    "devices[].intervals": ({"energy_active_import": "15m"}, [20.0, 900.0],
                            lambda a: [g.interval for g in _poller(a, "elec-keys").groups]),
    "profile_dirs": (["site-profiles"], "site-profiles/keys-meter.yaml",
                     lambda a: str(Path(_poller(a, "room-keys").profile.origin).relative_to(a.loaded.path.parent))),
    "health.stall_after": ("13s", 13.0, APP),
    "health.status_file": ("keys-status.json", "keys-status.json", APP),
    "health.snapshot_interval": ("2.5s", 2.5, APP),
    "health.timesync_flag": ("synced-flag", "synced-flag", lambda a: a.clock.flag_path),
    "health.use_timedatectl": (False, False, lambda a: a.clock.use_timedatectl),
    "remote_config.enabled": (True, True, REMOTE_ON),
    "remote_config.public_key_file": ("platform.pub", "platform.pub", REMOTE),
    "remote_config.confirm_within": ("45s", 45.0, REMOTE),
    "remote_config.directory": ("pushed", "pushed", REMOTE),
}

# The HTTPS uplink instead of MQTT: a config of its own (only one uplink at a time).
REACHES_HTTP: dict[str, tuple[Any, Any, Observe | ReadBy]] = {
    "uplink.http": ({}, "HttpTransport", lambda a: type(a.uplink.transport).__name__),
    "uplink.http.url": ("https://127.0.0.1:8443/ingest", "https://127.0.0.1:8443/ingest", HTTP),
    "uplink.http.timeout": ("4s", 4.0, HTTP),
    "uplink.http.token_file": ("password", "password", HTTP),
    "uplink.http.tls": ({}, None, HTTP),
    "uplink.http.tls.ca_file": ("ca.pem", "ca.pem", HTTP_TLS),
    "uplink.http.tls.cert_file": ("client.pem", "client.pem", HTTP_TLS),
    "uplink.http.tls.key_file": ("client.key", "client.key", HTTP_TLS),
    "uplink.http.tls.insecure_skip_hostname_check": (True, True, HTTP_TLS),
    "uplink.http.batch": (78, 78, _delivery("batch")),
    "uplink.http.inflight": (6, 6, _delivery("inflight")),
    "uplink.http.status_interval": ("8s", 8.0, _delivery("status_interval")),
    "uplink.http.max_message_bytes": (6000, 6000, _delivery("max_message_bytes")),
    "uplink.http.encoding": ("compact", "compact", _delivery("encoding")),
    "uplink.http.compression": ("zlib", "zlib", _delivery("compression")),
    "uplink.http.ack_timeout": ("12s", 12.0, _delivery("ack_timeout")),
}


def _plain(tp: Any) -> list[Any]:
    """The record types behind a hint: X | None, Annotated[X, ...], unions, tuples of them."""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _plain(typing.get_args(tp)[0])
    if origin in (typing.Union, types.UnionType):
        return [r for arg in typing.get_args(tp) for r in _plain(arg)]
    if origin is tuple:
        return [r for arg in typing.get_args(tp) if arg is not Ellipsis for r in _plain(arg)]
    return [tp] if is_record(tp) else []


def _tag(record: type) -> str | None:
    """The Literal value a record of a union fixes (a bus's ``type``)."""
    hint = hints(record).get("type")
    return str(typing.get_args(hint)[0]) if typing.get_origin(hint) is typing.Literal else None


def _unwrapped(tp: Any) -> Any:
    return _unwrapped(typing.get_args(tp)[0]) if typing.get_origin(tp) is typing.Annotated else tp


def config_keys(record: type = Config, prefix: str = "") -> list[str]:
    """Every key a config may hold, as the file spells it."""
    keys: list[str] = []
    for field in dataclasses.fields(record):
        hint = _unwrapped(hints(record)[field.name])
        path = f"{prefix}.{key_of(field)}" if prefix else key_of(field)
        members = _plain(hint)
        if not members:
            keys.append(path)
            continue
        if type(None) in typing.get_args(hint):
            keys.append(path)  # an optional section is a setting of its own (tls: {} switches TLS on)
        listed = typing.get_origin(hint) is tuple
        for member in members:
            tag = _tag(member) if len(members) > 1 else None
            keys += config_keys(member, f"{path}[{tag}]" if tag else f"{path}[]" if listed else path)
    return keys


def test_the_walk_finds_the_keys_of_every_record() -> None:
    """The walk itself, against keys written out here: nested records, each
    bus type apart, devices as a list, an optional section (tls)."""
    keys = config_keys()
    for key in ("gateway.id", "buffer.flush_interval", "uplink.mqtt.tls.ca_file", "uplink.mqtt.tls",
                "buses[modbus-rtu].bytesize", "buses[modbus-tcp].framing", "buses[mbus].retries",
                "devices[].intervals", "profile_dirs", "health.use_timedatectl"):
        assert key in keys
    assert len(keys) == len(set(keys))


def test_every_config_key_has_an_entry_saying_where_it_lands() -> None:
    keys = set(config_keys())
    entries = set(REACHES) | set(REACHES_HTTP)
    assert sorted(keys - entries) == [], "a config key nobody checks: add it to REACHES"
    assert sorted(entries - keys) == [], "REACHES names a key the config no longer has"


def _set(tree: dict[str, Any], key: str, value: Any) -> None:
    """'buses[mbus].port' -> the bus of that type; 'devices[].interval' -> the first device."""
    node: Any = tree
    parts = key.split(".")
    for part in parts[:-1]:
        name, _, tag = part.partition("[")
        node = node[name]
        if tag:
            tag = tag.rstrip("]")
            node = next(item for item in node if not tag or item["type"] == tag)
    name, _, tag = parts[-1].partition("[")
    if isinstance(node.get(name), dict) and isinstance(value, dict) and not value:
        return  # a section whose keys are set one by one
    node[name] = value


def _config(tmp_path: Path, uplink: str = "mqtt") -> Path:
    make_ca(tmp_path, "ca")
    make_cert(tmp_path, "client", "ca", "DNS:client")
    (tmp_path / "password").write_text("secret\n")
    (tmp_path / "site-profiles").mkdir()
    (tmp_path / "site-profiles" / "keys-meter.yaml").write_text(
        "name: keys-meter\nmanufacturer: x\nmodel: x\nsource: this test\n"
        "points:\n  temperature: {table: input, address: 1, type: int16, scale: 0.1, unit: Cel, kind: gauge}\n")
    tree: dict[str, Any] = {
        "gateway": {}, "buffer": {}, "uplink": {uplink: {"tls": {}}},
        "buses": [{"type": "modbus-rtu"}, {"type": "modbus-tcp"}, {"type": "mbus"}, {"type": "wmbus"},
                  {"type": "wmbus-sdr"}],
        "devices": [{}, {"id": "room-keys", "bus": "plant", "address": 10, "profile": "keys-meter"},
                    {"id": "heat-keys", "bus": "heat-line", "address": 5, "profile": "mbus-heat"},
                    {"id": "flat-keys", "bus": "radio-keys", "address": "12345678", "profile": "oms-water"},
                    {"id": "flat-sdr-keys", "bus": "sdr-keys", "address": "12345678", "profile": "oms-water"}],
        "health": {}, "remote_config": {},
    }
    (tmp_path / "platform.pub").write_bytes(_ed25519_public_key())
    for key, (value, _, _) in _entries(uplink).items():
        _set(tree, key, value)
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


@pytest.mark.parametrize("uplink", ["mqtt", "http"])
def test_every_config_key_reaches_the_code_that_uses_it(tmp_path: Path, uplink: str) -> None:
    loaded = load_config(_config(tmp_path, uplink))
    check_files(loaded)
    agent = Agent(loaded, stop=StopRequest())  # start-up only: nothing runs, nothing connects
    entries = _entries(uplink)
    try:
        missed = []
        for key, (_, expected, where) in entries.items():
            if isinstance(where, ReadBy):
                record = where.record(agent)
                field = key.rsplit(".", 1)[1]
                value = getattr(record, field) if expected is not None else None
                value = _relative(value, tmp_path)
                read = field in _attributes_read(where.module)
                if value != expected or not read:
                    missed.append(f"{key}: {value!r} (expected {expected!r}); read in {where.module}: {read}")
            elif (value := _relative(where(agent), tmp_path)) != expected:
                missed.append(f"{key}: {value!r}, expected {expected!r}")
    finally:
        agent._close_opened()
    assert missed == []


def _entries(uplink: str) -> dict[str, tuple[Any, Any, Observe | ReadBy]]:
    """The keys set for one uplink: remote configuration comes over MQTT only."""
    if uplink == "mqtt":
        return REACHES
    return {**{k: v for k, v in REACHES.items() if not k.startswith(("uplink.", "remote_config."))}, **REACHES_HTTP}


def _ed25519_public_key() -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _relative(value: Any, base: Path) -> Any:
    if isinstance(value, Path):
        return str(value.relative_to(base)) if value.is_relative_to(base) else str(value)
    return value


def _attributes_read(module: str) -> set[str]:
    tree = ast.parse((REPO / module).read_text())
    return {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
