"""The configuration model: parsed and validated in one pass.

The rest of the agent sees only the frozen objects defined here, never raw
dicts. Every problem in a file is reported at once, each as
``FILE:LINE: key.path: what is wrong and what to do``, because a technician
on a ladder wants one round trip, not ten.
"""

from __future__ import annotations

import hashlib
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
    # Every commit is synced before its readings may leave (docs/payload.md);
    # "normal" once meant less and is kept so that older files stay valid.
    synchronous: Literal["normal", "full"] = "full"
    # Readings are committed together at most this long after they were read
    # (sooner once a row's worth gathered). Each commit costs the SD card a
    # sync; a power cut loses at most the readings of this interval.
    flush_interval: Annotated[float, Parse(parse_duration, DURATION_SCHEMA), Rule(ge=0.05, le=600)] = 120.0
    # Optionally evict readings older than this even when there is room.
    max_age: Duration | None = None
    # Where readings wait for their commit, in RAM (agent/spool.py): they
    # survive a crash of the agent, not a power cut. Default: the service's
    # /run/retrofit-agent/, else /dev/shm.
    spool_dir: Path | None = None


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
class DeliveryConfig:
    """How readings travel, whatever carries them (agent/forward.py)."""

    batch: Annotated[int, Rule(ge=1, le=10_000)] = 500
    inflight: Annotated[int, Rule(ge=1, le=100)] = 20
    status_interval: Duration = 60.0
    # Every message stays below this size (mosquitto's message_size_limit, a
    # broker's maximum packet size, an HTTPS endpoint's body limit): batches
    # are halved, reports and series descriptions split, the status trimmed.
    max_message_bytes: Annotated[int, Rule(ge=1024, le=268_435_455)] = 262_144
    # flat: one self-describing object per reading (readings/1). compact:
    # grouped readings, series described once in a retained meta message
    # (readings-compact/1), optionally zlib-compressed; for metered links.
    encoding: Literal["flat", "compact"] = "flat"
    compression: Literal["none", "zlib"] = "none"
    # A connection whose oldest unacknowledged message waits longer than this
    # is dropped and made again (a platform that accepts but never acknowledges).
    ack_timeout: Duration = 30.0


@dataclass(frozen=True, kw_only=True)
class MqttConfig(DeliveryConfig):
    host: Host
    port: Port = 1883
    topic_prefix: Annotated[str, Rule(pattern=r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*")] = (
        "buildings"
    )
    client_id: Identifier | None = None
    qos: Literal[1] = 1
    keepalive: Duration = 60.0
    username: PrintableText | None = None
    password_file: Path | None = None
    tls: TlsConfig | None = None


@dataclass(frozen=True, kw_only=True)
class HttpConfig(DeliveryConfig):
    # The platform's ingest endpoint; every message is POSTed to it.
    url: Annotated[str, Rule(pattern=r"https?://[^\s/?#]+(/[^\s#]*)?")]
    timeout: Duration = 10.0
    # A bearer token (else the systemd credential http-token, else none).
    token_file: Path | None = None
    tls: TlsConfig | None = None


@dataclass(frozen=True, kw_only=True)
class UplinkConfig:
    # Exactly one of them.
    mqtt: MqttConfig | None = None
    http: HttpConfig | None = None

    @property
    def delivery(self) -> DeliveryConfig:
        chosen = self.mqtt or self.http
        assert chosen is not None, "validated: exactly one uplink"
        return chosen


# A bus is a record of the protocol its `type` names (drivers/registry.py):
# the validator tells them apart by that key. For the type checker every
# one of them is a BusRecord; the agent needs no more than that of a bus.
if TYPE_CHECKING:
    BusConfig = BusRecord
else:
    BusConfig = Union[registry.bus_records()]  # noqa: UP007 - a union built at run time


@dataclass(frozen=True, kw_only=True)
class RemoteConfig:
    """Configuration pushed by the platform, signed (agent/remote_config.py, docs/operations.md).

    Set on site only: a pushed config that changes this section is refused."""

    # Off: the gateway takes its configuration from its own disk only.
    enabled: bool = False
    # The platform's Ed25519 public key (PEM or OpenSSH); else the systemd
    # credential config-signing-key.
    public_key_file: Path | None = None
    # A pushed config must bring the uplink back and every bus polling within
    # this long after its restart, or the agent returns to the previous one.
    confirm_within: Annotated[float, Parse(parse_duration, DURATION_SCHEMA), Rule(ge=2, le=86_400)] = 300.0
    # Where pushed configs and their state are kept (the service may write
    # only its state directory); default: config/ beside the buffer.
    directory: Path | None = None


@dataclass(frozen=True, kw_only=True)
class Config:
    gateway: GatewayConfig
    buffer: BufferConfig = field(default_factory=BufferConfig)
    uplink: UplinkConfig
    buses: Annotated[tuple[BusConfig, ...], Rule(min_length=1)]
    devices: Annotated[tuple[DeviceConfig, ...], Rule(min_length=1)]
    profile_dirs: tuple[Path, ...] = ()
    health: HealthConfig = field(default_factory=HealthConfig)
    remote_config: RemoteConfig = field(default_factory=RemoteConfig)

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
    # SHA-256 of the file's bytes as read: what `status` and the platform show
    # as the configuration in force (`sha256sum` of the file gives the same).
    sha256: str = ""


CatalogueLoader = Callable[[Sequence[Path]], Catalogue]


def load_config(path: Path, catalogue_loader: CatalogueLoader | None = None, base: Path | None = None) -> LoadedConfig:
    """Read, validate and resolve ``path``; raise ConfigError listing every problem.

    Relative paths in it are relative to ``base``, by default the file's own
    directory (a pushed config stands in for the local file: its relative
    paths mean what they would mean there)."""
    try:
        raw = path.read_bytes()
        text = raw.decode("utf-8")
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

    base = (base or path.absolute().parent).absolute()
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
    buffer_data = data.get("buffer")
    if isinstance(buffer_data, dict) and buffer_data.get("synchronous") == "normal":
        warnings += (("buffer.synchronous: 'normal' no longer weakens durability: every commit is synced "
                      "before its readings leave (docs/config.md); the key can go"),)

    if problems or config is None:
        unique = sorted(set(problems), key=lambda item: (item[0], item[1]))
        raise ConfigError([f"{path}:{line}: {message}" for line, message in unique])

    buffer_path = _resolve(base, config.buffer.path)
    spool_dir = _resolve(base, config.buffer.spool_dir) if config.buffer.spool_dir else (
        RUNTIME_DIR if RUNTIME_DIR.is_dir() else Path("/dev/shm"))  # noqa: S108 - a directory of our own inside it (agent/spool.py)
    status_file = _resolve(base, config.health.status_file) if config.health.status_file else (
        RUNTIME_DIR / "status.json" if RUNTIME_DIR.is_dir() else buffer_path.parent / "status.json")
    uplink = config.uplink
    if uplink.mqtt is not None:
        mqtt = uplink.mqtt
        uplink = replace(uplink, mqtt=replace(mqtt, tls=_resolved_tls(base, mqtt.tls),
                                              password_file=mqtt.password_file and _resolve(base, mqtt.password_file)))
    if uplink.http is not None:
        http = uplink.http
        uplink = replace(uplink, http=replace(http, tls=_resolved_tls(base, http.tls),
                                              token_file=http.token_file and _resolve(base, http.token_file)))
    remote = config.remote_config
    remote = replace(remote, public_key_file=remote.public_key_file and _resolve(base, remote.public_key_file),
                     directory=_resolve(base, remote.directory) if remote.directory else buffer_path.parent / "config")
    if remote.enabled and config.uplink.mqtt is None:
        line = located.line_of(("remote_config", "enabled"))
        raise ConfigError([(f"{path}:{line}: remote_config.enabled: remote configuration comes over MQTT only; "
                            "with uplink.http switch it off")])
    resolved = replace(config, buffer=replace(config.buffer, path=buffer_path, spool_dir=spool_dir),
                       health=replace(config.health, status_file=status_file), profile_dirs=tuple(profile_dirs),
                       uplink=uplink, remote_config=remote)
    return LoadedConfig(path=path, config=resolved, catalogue=catalogue, warnings=warnings, located=located,
                        sha256=hashlib.sha256(raw).hexdigest())


def _resolved_tls(base: Path, tls: TlsConfig | None) -> TlsConfig | None:
    return tls and replace(tls, ca_file=_resolve_optional(base, tls.ca_file),
                           cert_file=_resolve_optional(base, tls.cert_file),
                           key_file=_resolve_optional(base, tls.key_file))


def read_secret(explicit: Path | None, name: str, key: str) -> str | None:
    """A secret's text (a broker password, a bearer token): the file ``key``
    names, else the systemd credential ``name``; None when neither is set."""
    path = credential(explicit, name)
    if path is None:
        return None
    try:
        return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{key}: cannot read {path}: {exc}"]) from None


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
    uplink = loaded.config.uplink
    section = "mqtt" if uplink.mqtt is not None else "http"
    problems: list[str] = []

    def where(*key: str | int) -> str:
        line = loaded.located.line_of(("uplink", section, *key)) if loaded.located else 1
        return f"{loaded.path}:{line}: uplink.{section}.{'.'.join(map(str, key))}"

    if uplink.mqtt is not None:
        secret, key_name, what = credential(uplink.mqtt.password_file, "mqtt-password"), "password_file", "password"
        tls, client_key = uplink.mqtt.tls, "mqtt-client-key"
    else:
        assert uplink.http is not None
        secret, key_name, what = credential(uplink.http.token_file, "http-token"), "token_file", "token"
        tls, client_key = uplink.http.tls, "http-client-key"
    if secret is not None:
        try:
            secret.read_bytes().decode("utf-8")
        except OSError as exc:
            problems.append(f"{where(key_name)}: cannot read {secret}: {exc.strerror}")
        except UnicodeDecodeError as exc:
            problems.append(f"{where(key_name)}: {secret} is not UTF-8 text (byte {exc.start}); "
                            f"write the {what} as plain text")
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
        key_file = credential(tls.key_file, client_key) if tls.cert_file else None
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
    uplink = data.get("uplink")
    if isinstance(uplink, dict):
        chosen = [name for name in ("mqtt", "http") if uplink.get(name) is not None]
        if len(chosen) != 1:
            problems.append((located.line_of(("uplink",)),
                             "uplink: configure exactly one of mqtt (a broker) and http (an HTTPS endpoint)"
                             + (", not both" if chosen else "")))
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


def _describe_uplink(cfg: Config) -> str:
    if cfg.uplink.mqtt is not None:
        mqtt = cfg.uplink.mqtt
        return (f"uplink mqtt://{mqtt.host}:{mqtt.port} topic {mqtt.topic_prefix}/{cfg.gateway.site}/"
                f"{cfg.gateway.id}/readings" + (" (TLS)" if mqtt.tls else ""))
    assert cfg.uplink.http is not None
    return f"uplink POST {cfg.uplink.http.url}" + (" (client certificate)" if cfg.uplink.http.tls and
                                                   cfg.uplink.http.tls.cert_file else "")


def summarise(loaded: LoadedConfig) -> list[str]:
    """Human summary for `check`: buses, devices, points and intervals."""
    cfg = loaded.config
    lines = [
        f"config {loaded.path}: valid",
        f"gateway {cfg.gateway.id} at site {cfg.gateway.site}",
        (f"buffer {cfg.buffer.path} (max {cfg.buffer.max_size_mb} MB, commits at most every "
         f"{cfg.buffer.flush_interval:g} s)"),
        _describe_uplink(cfg),
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
                f"every {format_duration(device.interval)}{' on the boundary' if device.align == 'boundary' else ''}, "
                f"{len(points)} point(s): {', '.join(points)}"
            )
    return lines


def config_schema() -> dict[str, Any]:
    """JSON Schema of the config file, for editors (yaml-language-server)."""
    schema = json_schema(Config)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "retrofit-agent configuration"
    return schema
