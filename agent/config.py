"""The configuration model: parsed and validated in one pass.

The rest of the agent sees only the frozen objects defined here, never raw
dicts. Every problem in a file is reported at once, each as
``FILE:LINE: key.path: what is wrong and what to do``, because a technician
on a ladder wants one round trip, not ten.
"""

from __future__ import annotations

import os
import ssl
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from drivers import registry
from drivers.core.device import DeviceConfig
from drivers.core.durations import DURATION_SCHEMA, Duration, format_duration, parse_duration
from drivers.core.errors import ConfigError, did_you_mean
from drivers.core.fields import Host, Identifier, Port, PrintableText
from drivers.core.protocol import BusRecord
from drivers.core.records import Invalid, Parse, Problem, Rule, dotted, json_schema, validate
from drivers.core.yamlsource import Located, YamlProblem, load_located
from drivers.profile import SITE_PROFILE_DIR, Catalogue, load_catalogue

__all__ = ["Config", "DeviceConfig", "LoadedConfig", "format_duration", "load_config", "parse_duration"]

# systemd's RuntimeDirectory= (a tmpfs): the status snapshot, rewritten every
# few seconds, belongs there rather than on the SD card.
RUNTIME_DIR = Path("/run/retrofit-agent")


def default_state_dir() -> Path:
    """systemd's StateDirectory= when set, else the FHS place."""
    return Path(os.environ.get("STATE_DIRECTORY", "/var/lib/retrofit-agent").split(":")[0])


@dataclass(frozen=True, kw_only=True)
class GatewayConfig:
    id: Identifier
    site: Identifier


@dataclass(frozen=True, kw_only=True)
class BufferConfig:
    path: Path = field(default_factory=lambda: default_state_dir() / "buffer.db")
    max_size_mb: Annotated[float, Rule(ge=0.02, le=1_000_000)] = 512
    # "normal": a power cut may lose the last flush interval (WAL, fsync at
    # checkpoints: kind to SD cards). "full": fsync on every commit.
    synchronous: Literal["normal", "full"] = "normal"
    # Readings are committed together at most this long after they were read:
    # one transaction per interval instead of one per poll spares the SD card.
    flush_interval: Annotated[float, Parse(parse_duration, DURATION_SCHEMA), Rule(le=600)] = 1.0
    # Optionally evict readings older than this even when there is room.
    max_age: Duration | None = None


@dataclass(frozen=True, kw_only=True)
class HealthConfig:
    # A worker without progress for this long is stuck: the systemd watchdog
    # is no longer fed and systemd restarts the service.
    stall_after: Duration = 60.0
    # The snapshot `retrofit-agent status` reads; default: /run/retrofit-agent/
    # when that exists (the service's RuntimeDirectory, in RAM), else beside the buffer.
    status_file: Path | None = None
    # How often that snapshot is written (in RAM under systemd: /run).
    snapshot_interval: Annotated[float, Parse(parse_duration, DURATION_SCHEMA), Rule(ge=0.1, le=3600)] = 5.0
    # Where systemd-timesyncd signals a synchronised clock; `timedatectl` is
    # asked too unless switched off.
    timesync_flag: Path = Path("/run/systemd/timesync/synchronized")
    use_timedatectl: bool = True


@dataclass(frozen=True, kw_only=True)
class TlsConfig:
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure_skip_hostname_check: bool = False


@dataclass(frozen=True, kw_only=True)
class MqttConfig:
    host: Host
    port: Port = 1883
    topic_prefix: Annotated[str, Rule(pattern=r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*")] = (
        "buildings"
    )
    client_id: Identifier | None = None
    qos: Literal[1] = 1
    keepalive: Duration = 60.0
    batch: Annotated[int, Rule(ge=1, le=10_000)] = 500
    inflight: Annotated[int, Rule(ge=1, le=100)] = 20
    username: PrintableText | None = None
    password_file: Path | None = None
    tls: TlsConfig | None = None
    status_interval: Duration = 60.0
    # Batches are split below this size (mosquitto's message_size_limit, a
    # platform broker's maximum packet size).
    max_message_bytes: Annotated[int, Rule(ge=4096, le=268_435_455)] = 262_144
    # flat: one self-describing object per reading (readings/1). compact:
    # grouped readings, series described once in a retained meta message
    # (readings-compact/1), optionally zlib-compressed; for metered links.
    encoding: Literal["flat", "compact"] = "flat"
    compression: Literal["none", "zlib"] = "none"
    # A connection whose oldest unacknowledged message waits longer than this
    # is dropped and made again (a broker that accepts but never acknowledges).
    ack_timeout: Duration = 30.0


@dataclass(frozen=True, kw_only=True)
class UplinkConfig:
    mqtt: MqttConfig


# A bus is a record of the protocol its `type` names (drivers/registry.py):
# the validator tells them apart by that key. For the type checker every
# one of them is a BusRecord; the agent needs no more than that of a bus.
if TYPE_CHECKING:
    BusConfig = BusRecord
else:
    BusConfig = Union[registry.bus_records()]  # noqa: UP007 - a union built at run time


@dataclass(frozen=True, kw_only=True)
class Config:
    gateway: GatewayConfig
    buffer: BufferConfig = field(default_factory=BufferConfig)
    uplink: UplinkConfig
    buses: Annotated[tuple[BusConfig, ...], Rule(min_length=1)]
    devices: Annotated[tuple[DeviceConfig, ...], Rule(min_length=1)]
    profile_dirs: tuple[Path, ...] = ()
    health: HealthConfig = field(default_factory=HealthConfig)

    def bus(self, bus_id: str) -> BusConfig:
        return next(b for b in self.buses if b.id == bus_id)

    def devices_on(self, bus_id: str) -> list[DeviceConfig]:
        return [d for d in self.devices if d.bus == bus_id]


@dataclass(frozen=True)
class LoadedConfig:
    """A valid config plus what was resolved from outside it."""

    path: Path
    config: Config
    catalogue: Catalogue
    # Not errors: a broken site profile no device uses, for example.
    warnings: tuple[str, ...] = ()
    located: Located | None = None  # the line of each key, for later checks


CatalogueLoader = Callable[[Sequence[Path]], Catalogue]


def load_config(path: Path, catalogue_loader: CatalogueLoader | None = None) -> LoadedConfig:
    """Read, validate and resolve ``path``; raise ConfigError listing every problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{path}: no such file"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}: cannot read: {exc}"]) from None
    try:
        located = load_located(text)
    except YamlProblem as problem:
        raise ConfigError([f"{path}:{problem.line}: {problem.message}"]) from None
    if not isinstance(located.data, dict):
        raise ConfigError([f"{path}:1: the config must be a mapping with gateway, uplink, buses, devices"])

    base = path.absolute().parent
    data = dict(located.data)
    problems: list[tuple[int, str]] = []
    invalid: list[Problem] = []
    config: Config | None = None
    try:
        config = validate(Config, data)
    except Invalid as exc:
        invalid = exc.problems

    profile_dirs = [SITE_PROFILE_DIR] + [
        _resolve(base, Path(p)) for p in _as_list(data.get("profile_dirs")) if isinstance(p, str)
    ]
    catalogue = (catalogue_loader or load_catalogue)(profile_dirs)
    # The cross-check judges an address knowing its bus's protocol; the type's
    # own "0..255 or 8 digits" would only say the same again, less clearly.
    judged: set[tuple[str | int, ...]] = set()
    problems.extend(_cross_check(located, catalogue, judged))
    problems.extend(_describe(problem, located) for problem in invalid if problem.loc not in judged)
    # A broken site profile is an error only for a device that names it (or
    # when a device names a profile nobody knows: the broken file may be it).
    used = {d.get("profile") for d in _as_list(data.get("devices")) if isinstance(d, dict)}
    wanted = any(name not in catalogue for name in used if isinstance(name, str))
    warnings = tuple(problem for name, problem in catalogue.broken.items() if name not in used)
    if wanted:
        problems.extend((1, problem) for problem in warnings)
        warnings = ()

    if problems or config is None:
        unique = sorted(set(problems), key=lambda item: (item[0], item[1]))
        raise ConfigError([f"{path}:{line}: {message}" for line, message in unique])

    buffer_path = _resolve(base, config.buffer.path)
    status_file = _resolve(base, config.health.status_file) if config.health.status_file else (
        RUNTIME_DIR / "status.json" if RUNTIME_DIR.is_dir() else buffer_path.parent / "status.json")
    mqtt = config.uplink.mqtt
    tls = mqtt.tls and replace(mqtt.tls, ca_file=_resolve_optional(base, mqtt.tls.ca_file),
                               cert_file=_resolve_optional(base, mqtt.tls.cert_file),
                               key_file=_resolve_optional(base, mqtt.tls.key_file))
    mqtt = replace(mqtt, tls=tls, password_file=_resolve_optional(base, mqtt.password_file))
    resolved = replace(config, buffer=replace(config.buffer, path=buffer_path),
                       health=replace(config.health, status_file=status_file), profile_dirs=tuple(profile_dirs),
                       uplink=replace(config.uplink, mqtt=mqtt))
    return LoadedConfig(path=path, config=resolved, catalogue=catalogue, warnings=warnings, located=located)


def credential(explicit: Path | None, name: str) -> Path | None:
    """A configured file, else systemd's LoadCredential= copy, else nothing.

    The unit gives every credential a one-newline fallback (systemd refuses
    empty ones): a blank credential means "not configured"."""
    if explicit is not None:
        return explicit
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        return None
    candidate = Path(directory) / name
    try:
        return candidate if candidate.is_file() and candidate.read_bytes().strip() else None
    except OSError:
        return None


def check_files(loaded: LoadedConfig) -> None:
    """The secrets and certificates the uplink reads at start, read now.

    `run` would stop on them with exit 78 anyway; `check` must say so first,
    and `run` must say it in one line (a password file that is not UTF-8
    ended in a traceback). Raises ConfigError listing every problem."""
    mqtt = loaded.config.uplink.mqtt
    problems: list[str] = []

    def where(*key: str | int) -> str:
        line = loaded.located.line_of(("uplink", "mqtt", *key)) if loaded.located else 1
        return f"{loaded.path}:{line}: uplink.mqtt.{'.'.join(map(str, key))}"

    password = credential(mqtt.password_file, "mqtt-password")
    if password is not None:
        try:
            password.read_bytes().decode("utf-8")
        except OSError as exc:
            problems.append(f"{where('password_file')}: cannot read {password}: {exc.strerror}")
        except UnicodeDecodeError as exc:
            problems.append(f"{where('password_file')}: {password} is not UTF-8 text (byte {exc.start}); "
                            "write the password as plain text")
    tls = mqtt.tls
    if tls is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        for key, path in (("ca_file", tls.ca_file), ("cert_file", tls.cert_file)):
            if path is not None and not os.access(path, os.R_OK):
                problems.append(f"{where('tls', key)}: cannot read {path}"
                                + ("" if path.exists() else ": no such file"))
                raise ConfigError(problems)
        try:
            if tls.ca_file is not None:
                context.load_verify_locations(cafile=str(tls.ca_file))
        except (OSError, ssl.SSLError, ValueError) as exc:
            problems.append(f"{where('tls', 'ca_file')}: {tls.ca_file} is not a PEM certificate: {exc}")
        key_file = credential(tls.key_file, "mqtt-client-key") if tls.cert_file else None
        try:
            if tls.cert_file is not None:
                context.load_cert_chain(str(tls.cert_file), str(key_file) if key_file else None)
        except (OSError, ssl.SSLError, ValueError) as exc:
            problems.append(f"{where('tls', 'cert_file')}: cannot load {tls.cert_file}"
                            + (f" with the key {key_file}" if key_file else "") + f": {exc}")
    _raise_if(problems)


def _raise_if(problems: list[str]) -> None:
    if problems:
        raise ConfigError(problems)


def _resolve(base: Path, path: Path) -> Path:
    """Relative paths in a config are relative to the config file, not the cwd."""
    return path if path.is_absolute() else Path(os.path.normpath(base / path))


def _resolve_optional(base: Path, path: Path | None) -> Path | None:
    return None if path is None else _resolve(base, path)


def _as_list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _describe(problem: Problem, located: Located) -> tuple[int, str]:
    message = problem.message
    if problem.kind == "tag_missing":
        message = f"a bus needs a 'type' ({', '.join(registry.bus_types())})"
    elif problem.kind == "tag_unknown":
        message = message.replace("unknown type", "unknown bus type", 1)
    return located.line_of(problem.loc), f"{dotted(problem.loc)}: {message}"


def _cross_check(located: Located, catalogue: Catalogue,
                 judged: set[tuple[str | int, ...]]) -> list[tuple[int, str]]:
    """References and uniqueness, checked on the raw data so that every
    problem is found even when other parts of the file are invalid. The key
    paths of addresses it found wrong are added to ``judged``."""
    data = located.data
    problems: list[tuple[int, str]] = []
    buses = [b for b in _as_list(data.get("buses")) if isinstance(b, dict)]
    devices = _as_list(data.get("devices"))
    bus_types: dict[str, str] = {}
    first_bus: dict[str, int] = {}
    for index, bus in enumerate(_as_list(data.get("buses"))):
        if not isinstance(bus, dict) or not isinstance(bus.get("id"), str):
            continue
        bus_id = bus["id"]
        if bus_id in first_bus:
            problems.append(
                (located.line_of(("buses", index, "id")),
                 f"buses[{index}].id: duplicate bus id {bus_id!r} (also buses[{first_bus[bus_id]}])")
            )
        else:
            first_bus[bus_id] = index
            bus_types[bus_id] = str(bus.get("type"))
    del buses

    first_device: dict[str, int] = {}
    addresses: dict[tuple[str, object], int] = {}
    for index, device in enumerate(devices):
        if not isinstance(device, dict):
            continue
        where = ("devices", index)
        dev_id = device.get("id")
        if isinstance(dev_id, str):
            if dev_id in first_device:
                problems.append(
                    (located.line_of(where + ("id",)),
                     f"devices[{index}].id: duplicate device id {dev_id!r} (also devices[{first_device[dev_id]}])")
                )
            else:
                first_device[dev_id] = index
        bus_id = device.get("bus")
        if isinstance(bus_id, str) and bus_id not in bus_types:
            known = ", ".join(sorted(bus_types)) or "none defined"
            problems.append(
                (located.line_of(where + ("bus",)),
                 f"devices[{index}].bus: unknown bus {bus_id!r}; buses defined: {known}")
            )
        address = device.get("address")
        if isinstance(bus_id, str) and address is not None and not isinstance(address, (dict, list)):
            taken = (bus_id, address)
            if taken in addresses:
                problems.append(
                    (located.line_of(where + ("address",)),
                     (f"devices[{index}].address: address {address} is already used on bus "
                      f"{bus_id!r} by devices[{addresses[taken]}]; two devices cannot share an address"))
                )
            else:
                addresses[taken] = index
            protocol = registry.for_bus_type(bus_types.get(bus_id, ""))
            problem = protocol.check_address(address) if protocol is not None else None
            if problem is not None:
                judged.add(where + ("address",))
                problems.append((located.line_of(where + ("address",)), f"devices[{index}].address: {problem}"))
        profile_name = device.get("profile")
        if isinstance(profile_name, str):
            if profile_name in catalogue.broken:
                problems.append(
                    (located.line_of(where + ("profile",)),
                     f"devices[{index}].profile: profile {profile_name!r} cannot be used: "
                     + catalogue.broken[profile_name]))
            elif profile_name not in catalogue:
                problems.append(
                    (located.line_of(where + ("profile",)),
                     (f"devices[{index}].profile: unknown profile {profile_name!r}"
                      f"{did_you_mean(profile_name, catalogue.names())}; "
                      "`retrofit-agent profiles list` shows the known ones"))
                )
            else:
                profile = catalogue.get(profile_name)
                protocol = registry.for_bus_type(bus_types.get(bus_id, "")) if isinstance(bus_id, str) else None
                if isinstance(bus_id, str) and protocol is not None and profile.protocol not in protocol.takes:
                    problems.append(
                        (located.line_of(where + ("profile",)),
                         (f"devices[{index}].profile: {profile_name!r} is a {profile.protocol} profile, "
                          f"but bus {bus_id!r} is {bus_types[bus_id]}")))
                wanted = device.get("points")
                names = {p.name for p in profile.points}
                for key in ("max_rate", "intervals"):
                    per_point = device.get(key)
                    if isinstance(per_point, dict):
                        for name in per_point:
                            if name not in names:
                                problems.append(
                                    (located.line_of(where + (key, name)),
                                     f"devices[{index}].{key}.{name}: profile {profile_name!r} has no point {name!r}"))
                if isinstance(wanted, list):
                    for p_index, name in enumerate(wanted):
                        if name not in names:
                            problems.append(
                                (located.line_of(where + ("points", p_index)),
                                 f"devices[{index}].points[{p_index}]: profile {profile_name!r} has no point {name!r}")
                            )
    return problems


def summarise(loaded: LoadedConfig) -> list[str]:
    """Human summary for `check`: buses, devices, points and intervals."""
    cfg = loaded.config
    lines = [
        f"config {loaded.path}: valid",
        f"gateway {cfg.gateway.id} at site {cfg.gateway.site}",
        f"buffer {cfg.buffer.path} (max {cfg.buffer.max_size_mb} MB, synchronous={cfg.buffer.synchronous})",
        f"uplink mqtt://{cfg.uplink.mqtt.host}:{cfg.uplink.mqtt.port} topic "
        f"{cfg.uplink.mqtt.topic_prefix}/{cfg.gateway.site}/{cfg.gateway.id}/readings"
        + (" (TLS)" if cfg.uplink.mqtt.tls else ""),
    ]
    by_bus: dict[str, list[DeviceConfig]] = defaultdict(list)
    for device in cfg.devices:
        by_bus[device.bus].append(device)
    for bus in cfg.buses:
        protocol = registry.for_bus(bus)
        lines.append(f"bus {bus.id} ({bus.type}, {bus.describe()}): {len(by_bus[bus.id])} device(s)")
        for device in by_bus[bus.id]:
            profile = loaded.catalogue.get(device.profile)
            points = protocol.point_names(device, profile)
            lines.extend(f"  {note}" for note in protocol.notes(bus, device, profile))
            lines.append(
                f"  device {device.id}: address {device.address}, profile {device.profile}, "
                f"every {format_duration(device.interval)}, {len(points)} point(s): {', '.join(points)}"
            )
    return lines


def config_schema() -> dict[str, Any]:
    """JSON Schema of the config file, for editors (yaml-language-server)."""
    schema = json_schema(Config)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "retrofit-agent configuration"
    return schema
