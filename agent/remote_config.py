"""Remote configuration: a config the platform signed, tried by a restart,
kept only once it works (docs/operations.md, "Remote configuration").

Off unless ``remote_config.enabled``; over MQTT only. The platform publishes
a document to ``{prefix}/{site}/{gateway}/config/set``:

    {"schema": "retrofit-agent/config/1", "gateway": "zw-07", "site": "krakow-zlotego-wieku-7",
     "version": 8, "config": "<the YAML text>", "signature": "<base64 Ed25519 signature>"}

The signature covers :func:`signed_bytes`: the line ``retrofit-agent/config/1``,
the gateway, the site and the version, each on a line of its own, then the
YAML text's UTF-8 bytes. Identifiers cannot hold a line break and the version
is a decimal number, so no two documents share signed bytes, and any
language signs them without a canonical JSON form.

A document is refused, with every reason, when it is not such a document,
unsigned, signed by another key, meant for another gateway, not newer than
the newest this gateway has taken (a replay), or its config fails what
`retrofit-agent check` checks or would move what a pushed config must leave
alone (gateway, site, buffer, status file, the MQTT uplink, this section).
Each outcome is one retained message on ``.../config/state``:

    {"schema": "retrofit-agent/config-state/1", "gateway": ..., "site": ..., "version": 8,
     "state": "pending" | "applied" | "refused" | "rolled_back" | "superseded", "reasons": [...],
     "ts": ..., "active": {"version": 7, "sha256": ...}}

A valid config is written beside the current one (``config-8.yaml``, byte
for byte, so its SHA-256 is the one the platform computes) and tried: the
agent stops as at any stop (the buffer is closed, never touched) and
executes itself again under the same process id. It confirms the trial
once the uplink is connected and every bus has a device that answered
(a bus none of whose devices answered before the switch is not held
against it); if that does not happen within ``confirm_within``, or the
config cannot start, or the agent starts three times under it, the agent
returns to the config it ran before and reports ``rolled_back`` with why.

Which config runs: the local file, unless a pushed one is in force, which
``state.json`` in the directory says. A technician who edits the local
file on site after a push wins: the next start runs the local file and
reports the pushed one ``superseded``. `check` and `status` name the
config in force.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import json
import os
import queue
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from agent import logs
from agent.config import LoadedConfig, check_files, credential, format_duration, load_config
from drivers.core.errors import ConfigError, RetrofitError
from drivers.core.readings import now_ms
from drivers.core.yamlsource import YamlProblem, load_located

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

    from agent.health import Health

SCHEMA = "retrofit-agent/config/1"
STATE_SCHEMA = "retrofit-agent/config-state/1"
SET_TOPIC = "config/set"
STATE_TOPIC = "config/state"
CREDENTIAL = "config-signing-key"
# Where the unit loads the credential from: read directly where systemd did not
# hand it over (`check` in a shell, a hand-started `run`).
CREDENTIAL_SOURCE = Path("/etc/retrofit-agent") / CREDENTIAL
STATE_FILE = "state.json"
# A config file is read within 1 MiB (agent/config.py); its document, base64 and JSON around it, within this.
MAX_DOCUMENT_BYTES = 2 * 1024 * 1024
# Starts under a config being tried before it counts as one that does not run.
MAX_TRIAL_STARTS = 3
# Documents waiting for the main thread; more are dropped (a flood is not a config).
MAX_WAITING = 8

State = Literal["pending", "applied", "refused", "rolled_back", "superseded"]


class Refusal(RetrofitError):
    """A document the agent does not take; ``reasons`` says every why."""

    def __init__(self, reasons: list[str], version: int | None = None) -> None:
        super().__init__("; ".join(reasons))
        self.reasons = reasons
        self.version = version


# --------------------------------------------------------------------------- the document

@dataclass(frozen=True)
class Document:
    gateway: str
    site: str
    version: int
    config: str
    signature: bytes


def signed_bytes(gateway: str, site: str, version: int, config: str) -> bytes:
    return f"{SCHEMA}\n{gateway}\n{site}\n{version}\n".encode() + config.encode("utf-8")


def make_document(key: Ed25519PrivateKey, gateway: str, site: str, version: int, config: str) -> bytes:
    signature = key.sign(signed_bytes(gateway, site, version, config))
    return json.dumps({"schema": SCHEMA, "gateway": gateway, "site": site, "version": version, "config": config,
                       "signature": base64.b64encode(signature).decode()}, ensure_ascii=False).encode()


def read_document(payload: bytes) -> Document:
    """The document's fields; Refusal with every problem of its shape."""
    if len(payload) > MAX_DOCUMENT_BYTES:
        raise Refusal([f"the document is {len(payload)} bytes, more than {MAX_DOCUMENT_BYTES}"])
    try:
        body = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Refusal([f"not a config document: not JSON ({exc})"]) from None
    if not isinstance(body, dict):
        raise Refusal([("not a config document: a JSON object with schema, gateway, site, version, config "
                       "and signature is expected")])
    version = body.get("version")
    known = version if isinstance(version, int) and not isinstance(version, bool) else None
    problems = []
    if body.get("schema") != SCHEMA:
        problems.append(f"schema is {body.get('schema')!r}, expected {SCHEMA!r}")
    for name in ("gateway", "site", "config"):
        if not isinstance(body.get(name), str) or not body[name]:
            problems.append(f"{name}: text expected")
    if known is None or known < 1:
        problems.append(f"version: a whole number from 1 up expected (got {version!r})")
    signature = body.get("signature")
    raw = b""
    if signature in (None, ""):
        problems.append("unsigned: the document carries no signature")
    elif not isinstance(signature, str):
        problems.append("signature: base64 text expected")
    else:
        try:
            raw = base64.b64decode(signature, validate=True)
        except (binascii.Error, ValueError):
            problems.append("signature: not base64")
        else:
            if len(raw) != 64:
                problems.append(f"signature: an Ed25519 signature is 64 bytes, this one {len(raw)}")
    if problems:
        raise Refusal(problems, known)
    assert known is not None
    return Document(body["gateway"], body["site"], known, body["config"], raw)


def verify(document: Document, key: Ed25519PublicKey) -> None:
    from cryptography.exceptions import InvalidSignature

    try:
        key.verify(document.signature, signed_bytes(document.gateway, document.site, document.version,
                                                     document.config))
    except InvalidSignature:
        raise Refusal([("signature: does not verify with the platform's key this gateway holds (another key, or "
                       "the document was changed after signing)")], document.version) from None


# --------------------------------------------------------------------------- keys

def key_path(loaded: LoadedConfig) -> Path | None:
    """The key file: the config's, else the credential systemd handed over,
    else the file the unit loads it from."""
    path = credential(loaded.config.remote_config.public_key_file, CREDENTIAL)
    if path is not None or not CREDENTIAL_SOURCE.is_file():
        return path
    try:
        blank = not CREDENTIAL_SOURCE.read_bytes().strip()
    except OSError:
        blank = False  # unreadable here: load_public_key says so
    return None if blank else CREDENTIAL_SOURCE


def load_public_key(loaded: LoadedConfig) -> Ed25519PublicKey:
    """The platform's key the config names (or the credential); ConfigError
    saying what is wrong with it. Never echoes the file's content."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    line = loaded.located.line_of(("remote_config", "public_key_file")) if loaded.located else 1
    where = f"{loaded.path}:{line}: remote_config.public_key_file"
    path = key_path(loaded)
    if path is None:
        raise ConfigError([(f"{where}: remote configuration is on but there is no key to check it with: name the "
                           f"platform's public key file here, or install it as the systemd credential {CREDENTIAL} "
                           f"(/etc/retrofit-agent/{CREDENTIAL})")])
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError([f"{where}: cannot read {path}: {exc.strerror}"]) from None
    if b"PRIVATE KEY" in data:
        raise ConfigError([(f"{where}: {path} is a private key; a gateway holds only the public one "
                           "(the .pub file `retrofit-agent config keygen` wrote)")])
    try:
        key = (serialization.load_pem_public_key(data) if b"-----BEGIN" in data
               else serialization.load_ssh_public_key(data.strip()))
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigError([f"{where}: {path} is not a PEM or OpenSSH public key"]) from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError([(f"{where}: {path} holds a {type(key).__name__.removeprefix('_')} key; "
                           "configs are signed with Ed25519")])
    return key


def generate_keys(private_path: Path) -> Path:
    """A new Ed25519 pair: ``private_path`` (PKCS#8 PEM, 0600) and beside it
    ``.pub`` (the public key for the gateways). Never overwrites."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    public_path = private_path.with_name(private_path.name + ".pub")
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    for path, content, mode in ((private_path, private, 0o600), (public_path, public, 0o644)):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        except FileExistsError:
            raise RetrofitError(f"{path} exists; a key is never overwritten (move it away first)") from None
        except OSError as exc:
            raise RetrofitError(f"cannot write {path}: {exc.strerror}") from None
        with os.fdopen(fd, "wb") as out:
            out.write(content)
    return public_path


def load_private_key(path: Path) -> Ed25519PrivateKey:
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise RetrofitError(f"cannot read the signing key {path}: {exc.strerror}") from None
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise RetrofitError(f"{path} is not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise RetrofitError(f"{path} is not an Ed25519 key; `retrofit-agent config keygen` makes one")
    return key


# --------------------------------------------------------------------------- what is kept on disk

@dataclass
class Entry:
    """A pushed config taken (being tried, or in force)."""

    version: int
    file: str  # its name in the directory
    sha256: str  # of its bytes
    local_sha256: str  # of the local file when it was taken: an edit on site after that wins
    taken_ms: int
    # Being tried: starts under it so far, when the trial ends (wall clock,
    # for a restart; the running agent counts on the monotonic clock), and
    # the buses none of whose devices answered under the config before.
    starts: int = 0
    deadline_ms: int | None = None
    quiet_buses: list[str] = field(default_factory=list)


@dataclass
class Result:
    version: int | None
    state: State
    reasons: list[str]
    ts: int


@dataclass
class Ledger:
    """state.json: which pushed config is in force, which is being tried, the
    last result, and the newest version taken (replays are older or equal)."""

    highest: int = 0
    highest_signature: str = ""
    active: Entry | None = None
    previous: Entry | None = None
    trial: Entry | None = None
    result: Result | None = None
    # The last refused payload's SHA-256: a retained copy delivered again on
    # the next connection is not refused (and published) again.
    refused_digest: str = ""

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Ledger:
        def entry(value: Any) -> Entry | None:
            return Entry(**value) if isinstance(value, dict) else None

        result = data.get("result")
        return cls(highest=int(data.get("highest", 0)), highest_signature=str(data.get("highest_signature", "")),
                   active=entry(data.get("active")), previous=entry(data.get("previous")),
                   trial=entry(data.get("trial")), result=Result(**result) if isinstance(result, dict) else None,
                   refused_digest=str(data.get("refused_digest", "")))


def _write_atomically(path: Path, content: bytes) -> None:
    """Old or new, never half, and on the card before anything relies on it."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.unlink(missing_ok=True)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(content)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


class Store:
    """The directory of pushed configs (remote_config.directory)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.state_path = directory / STATE_FILE
        self._log = logs.get("remote-config")

    def path(self, name: str) -> Path:
        return self.directory / name

    def read(self) -> Ledger:
        """The ledger as it is (nothing written: `check` and `status` use this)."""
        try:
            data = json.loads(self.state_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return Ledger()
        return Ledger.from_json(data)

    def load(self) -> Ledger:
        """For the agent: the directory made if missing; a ledger that cannot
        be read is set aside and the local config runs, with replays still
        refused up to the newest config file present."""
        try:
            self.directory.mkdir(mode=0o750, parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError([(f"remote_config.directory: cannot make {self.directory}: {exc.strerror}; the "
                               "service writes only its state directory")]) from None
        try:
            return self.read()
        except (OSError, ValueError, TypeError, KeyError) as exc:
            aside = self.state_path.with_name(f"{STATE_FILE}.unreadable-{now_ms()}")
            os.replace(self.state_path, aside)
            versions = [int(p.stem.removeprefix("config-")) for p in self.directory.glob("config-*.yaml")
                        if p.stem.removeprefix("config-").isdigit()]
            self._log.error("remote_config.ledger_unreadable", path=str(self.state_path), error=str(exc),
                            moved_to=str(aside), meaning="the local config runs; push a newer version")
            return Ledger(highest=max(versions, default=0))

    def save(self, ledger: Ledger) -> None:
        _write_atomically(self.state_path, json.dumps(dataclasses.asdict(ledger), indent=1).encode())

    def write_config(self, version: int, text: str) -> tuple[str, str]:
        """The pushed YAML, byte for byte; returns its file name and SHA-256."""
        name = f"config-{version}.yaml"
        content = text.encode("utf-8")
        _write_atomically(self.path(name), content)
        return name, hashlib.sha256(content).hexdigest()

    def prune(self, ledger: Ledger) -> None:
        """Keep the config in force, the one before it, the one tried and the last one reported."""
        keep = {e.file for e in (ledger.active, ledger.previous, ledger.trial) if e is not None}
        if ledger.result is not None and ledger.result.version is not None:
            keep.add(f"config-{ledger.result.version}.yaml")
        for path in self.directory.glob("config-*.yaml"):
            if path.name not in keep:
                try:
                    path.unlink(missing_ok=True)
                except OSError as exc:  # an old file left behind costs a few KB, nothing else
                    self._log.warning("remote_config.prune_failed", path=str(path), error=exc.strerror)


# --------------------------------------------------------------------------- which config runs

def _load_pushed(local: LoadedConfig, store: Store, entry: Entry) -> LoadedConfig:
    """A pushed config as the agent runs it: relative paths mean what they
    mean in the local file, and this section is the local file's."""
    path = store.path(entry.file)
    try:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    if digest != entry.sha256:
        raise ConfigError([(f"{path}: changed on disk since it was taken (SHA-256 {digest[:12]}, "
                           f"taken as {entry.sha256[:12]})")])
    loaded = load_config(path, base=local.path.absolute().parent)
    check_files(loaded)
    return replace(loaded, config=replace(loaded.config, remote_config=local.config.remote_config))


@dataclass
class Selection:
    """What `run` starts with, and the remote configuration around it (None when off)."""

    loaded: LoadedConfig
    control: RemoteControl | None = None


def select(local: LoadedConfig, key: Ed25519PublicKey) -> Selection:
    """Choose the config to run and move the ledger on: count a start under a
    trial, roll a trial back that ran out of time or starts or does not
    load, fall back from a pushed config that no longer loads, and let a
    local edit made after a push win."""
    log = logs.get("remote-config")
    remote = local.config.remote_config
    assert remote.directory is not None, "load_config fills it in"
    store = Store(remote.directory)
    ledger = store.load()
    now = now_ms()
    changed = False
    for kind in ("trial", "active"):
        entry: Entry | None = getattr(ledger, kind)
        if entry is not None and entry.local_sha256 != local.sha256:
            reason = (f"the local config {local.path} was edited on site after version {entry.version} was "
                      "pushed: the local file is in force")
            log.warning("remote_config.superseded", version=entry.version, local=str(local.path))
            ledger.result = Result(entry.version, "superseded", [reason], now)
            setattr(ledger, kind, None)
            if kind == "active":
                ledger.previous = None
            changed = True

    if ledger.trial is not None:
        trial = ledger.trial
        trial.starts += 1
        if trial.deadline_ms is None:
            trial.deadline_ms = now + int(remote.confirm_within * 1000)
        reasons: list[str] = []
        if trial.starts > MAX_TRIAL_STARTS:
            reasons.append(f"the agent started {trial.starts - 1} times under version {trial.version} without "
                           "confirming it (it crashed, or was stopped, each time)")
        elif now >= trial.deadline_ms:
            reasons.append(f"not confirmed within {format_duration(remote.confirm_within)}: the agent was down "
                           "or restarting when the time ran out")
        else:
            try:
                loaded = _load_pushed(local, store, trial)
            except ConfigError as exc:
                reasons.extend(exc.problems)
            else:
                store.save(ledger)
                remaining = (trial.deadline_ms - now) / 1000
                log.info("remote_config.trying", version=trial.version, start=trial.starts,
                         confirm_within_s=round(remaining, 1))
                return Selection(loaded, RemoteControl(local, loaded, store, ledger, key, remaining))
        log.error("remote_config.rolled_back", version=trial.version, reasons=reasons)
        ledger.result = Result(trial.version, "rolled_back", reasons, now)
        ledger.trial = None
        changed = True

    chosen = local
    while ledger.active is not None:
        try:
            chosen = _load_pushed(local, store, ledger.active)
            break
        except ConfigError as exc:
            failed = ledger.active
            fallback = ledger.previous
            what = f"version {fallback.version}" if fallback else f"the local config {local.path}"
            log.error("remote_config.unusable",  # noqa: TRY400 - the problems are the message
                      version=failed.version, problems=exc.problems, running=what)
            ledger.result = Result(failed.version, "rolled_back", [*exc.problems, f"running {what} instead"], now)
            ledger.active, ledger.previous = fallback, None
            changed = True
    if changed:
        store.save(ledger)
        store.prune(ledger)
    return Selection(chosen, RemoteControl(local, chosen, store, ledger, key, None))


def describe(local: LoadedConfig) -> list[str]:
    """For `check`: whether remote configuration is on and which config is in
    force. Reads only; a pushed config in force is checked too."""
    remote = local.config.remote_config
    if not remote.enabled:
        return ["remote configuration: off (remote_config.enabled)"]
    assert remote.directory is not None
    store = Store(remote.directory)
    key = key_path(local)
    lines = [(f"remote configuration: on over MQTT, key {key or '(none)'}, pushed configs in {store.directory}, "
             f"a new one must confirm within {format_duration(remote.confirm_within)}")]
    try:
        ledger = store.read()
    except FileNotFoundError:
        ledger = Ledger()
    except PermissionError:
        return [*lines, (f"warning: cannot read {store.state_path} (permission denied): run check with sudo to "
                        "see which config is in force")]
    except (OSError, ValueError, TypeError, KeyError) as exc:
        return [*lines, (f"warning: {store.state_path} cannot be read ({exc}); the agent sets it aside at its "
                        "next start and runs this file")]
    trial, active = ledger.trial, ledger.active
    if trial is not None and trial.local_sha256 == local.sha256:
        until = f", until {_iso(trial.deadline_ms)}" if trial.deadline_ms else ""
        lines.append(f"being tried: pushed version {trial.version} ({store.path(trial.file)}){until}; if it does "
                     "not confirm, the agent returns to the config before it")
    if active is not None and active.local_sha256 == local.sha256:
        lines.append(f"in force: pushed version {active.version} ({store.path(active.file)}, taken "
                     f"{_iso(active.taken_ms)}), not this file; an edit of this file takes over at the next start")
        try:
            _load_pushed(local, store, active)
            lines.append(f"pushed version {active.version}: valid")
        except ConfigError as exc:
            lines.extend(f"warning: {problem}" for problem in exc.problems)
            lines.append(f"warning: pushed version {active.version} no longer loads: the agent falls back "
                         "at its next start")
    elif active is not None:
        lines.append(f"in force: this file (edited after pushed version {active.version} was taken, so it wins)")
    else:
        lines.append("in force: this file (no pushed config taken)")
    if ledger.result is not None:
        result = ledger.result
        lines.append(f"last remote result: version {result.version} {result.state} at {_iso(result.ts)}"
                     + (f": {'; '.join(result.reasons)}" if result.reasons else ""))
    return lines


def _iso(ms: int | None) -> str:
    if not ms:
        return "?"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ms / 1000))


# --------------------------------------------------------------------------- the running agent

class Listener(Protocol):
    """What remote configuration needs of a transport (agent/transports/mqtt.py)."""

    connections: int
    subscription_refused: str | None

    def listen(self, leaf: str, on_message: Callable[[bytes], None]) -> None: ...

    def publish_retained(self, leaf: str, payload: bytes) -> bool: ...


class RemoteControl:
    """In the running agent: documents from the uplink are judged on the main
    thread (the heartbeat), results are published retained (again on every
    new connection), and a trial is confirmed or rolled back."""

    def __init__(self, local: LoadedConfig, running: LoadedConfig, store: Store, ledger: Ledger,
                 key: Ed25519PublicKey, trial_s: float | None) -> None:
        self.local = local
        self.running = running
        self.store = store
        self.ledger = ledger
        self.key = key
        self.trying = ledger.trial if trial_s is not None else None
        self.deadline = time.monotonic() + trial_s if trial_s is not None else None
        self._waiting: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        self._dropped = 0
        self._transport: Listener | None = None
        self._published_on = 0  # the connection the current result was published on
        self._deferred: bytes | None = None  # the newest document that came during a trial
        self._uplink_seen = False
        self._refused_said: str | None = None
        self._log = logs.get("remote-config")

    @property
    def source(self) -> str:
        return "pushed" if self.running is not self.local else "local"

    @property
    def version(self) -> int | None:
        """The pushed version running (tried or in force), None for the local file."""
        if self.running is self.local:
            return None
        entry = self.trying or self.ledger.active
        return entry.version if entry else None

    def attach(self, transport: Listener) -> None:
        self._transport = transport
        transport.listen(SET_TOPIC, self._received)

    def _received(self, payload: bytes) -> None:
        """paho's network thread: hand over, never block."""
        if self._waiting.qsize() >= MAX_WAITING:
            self._dropped += 1
            return
        self._waiting.put(payload)

    # -- the heartbeat (main thread) ------------------------------------------------------------
    def tick(self, health: Health) -> str | None:
        """Once a second. Returns why the agent must start again (a config to
        try, a trial to roll back), else None."""
        if self._dropped:
            self._log.warning("remote_config.flooded", dropped=self._dropped, waiting=MAX_WAITING)
            self._dropped = 0
        restart = None
        while restart is None and not self._waiting.empty():
            restart = self._take(self._waiting.get_nowait(), health)
        if restart is None and self.trying is not None:
            restart = self._judge_trial(health)
        self._publish_if_new_connection()
        self._say_if_refused()
        return restart

    def _say_if_refused(self) -> None:
        """Once per change: a broker that refuses the subscription means no pushed config ever arrives."""
        refused = self._transport.subscription_refused if self._transport else None
        if refused != self._refused_said:
            if refused:
                self._log.error("remote_config.subscription_refused", refused=refused,
                                meaning="the broker's ACL does not let this gateway subscribe: pushed configs "
                                        "never arrive")
            else:
                self._log.info("remote_config.subscribed")
            self._refused_said = refused

    def _publish_if_new_connection(self) -> None:
        transport = self._transport
        if transport is None or self.ledger.result is None or transport.connections == self._published_on:
            return
        if transport.publish_retained(STATE_TOPIC, self._state_payload()):
            self._published_on = transport.connections

    def _report(self, result: Result) -> None:
        self.ledger.result = result
        try:
            self.store.save(self.ledger)
        except OSError as exc:  # a full or failing card: the result still goes out
            self._log.error("remote_config.ledger_write_failed", path=str(self.store.state_path),
                            error=exc.strerror or str(exc))
        self._published_on = 0  # publish now (or on the next connection)
        self._publish_if_new_connection()

    def _state_payload(self) -> bytes:
        result = self.ledger.result
        assert result is not None
        running = {"version": self.version or 0, "sha256": self.running.sha256}
        return json.dumps({"schema": STATE_SCHEMA, "gateway": self.local.config.gateway.id,
                           "site": self.local.config.gateway.site, "version": result.version,
                           "state": result.state, "reasons": result.reasons, "ts": result.ts,
                           "active": running}).encode()

    # -- a document -------------------------------------------------------------------------------
    def _take(self, payload: bytes, health: Health) -> str | None:
        digest = hashlib.sha256(payload).hexdigest()
        try:
            document = read_document(payload)
            verify(document, self.key)
            self._addressed_here(document)
            if document.version <= self.ledger.highest:
                if (document.version == self.ledger.highest and
                        base64.b64encode(document.signature).decode() == self.ledger.highest_signature):
                    return None  # the retained copy of one already taken, delivered on a new connection
                raise Refusal([(f"version {document.version} is not newer than version {self.ledger.highest}, the "
                               "newest this gateway has taken: a replay, or pushed out of order")], document.version)
            if self.trying is not None:
                # Judged once this trial is confirmed; after a roll-back (a new
                # start) a retained document comes again by itself.
                self._log.info("remote_config.deferred", version=document.version, trying=self.trying.version)
                self._deferred = payload
                return None
        except Refusal as refusal:
            if digest == self.ledger.refused_digest:
                return None
            self.ledger.refused_digest = digest
            self._log.warning("remote_config.refused", version=refusal.version, reasons=refusal.reasons)
            self._report(Result(refusal.version, "refused", refusal.reasons, now_ms()))
            return None
        self.ledger.highest = document.version
        self.ledger.highest_signature = base64.b64encode(document.signature).decode()
        problems = self._check(document)
        if problems:
            self._log.warning("remote_config.refused", version=document.version, reasons=problems)
            self._report(Result(document.version, "refused", problems, now_ms()))
            return None
        try:  # the trial only starts once the card holds both the config and the ledger saying so
            name, sha256 = self.store.write_config(document.version, document.config)
            self.ledger.trial = Entry(document.version, name, sha256, self.local.sha256, now_ms(),
                                      quiet_buses=sorted(bus for bus, answered in _buses_answered(health).items()
                                                         if not answered))
            self.ledger.result = Result(document.version, "pending", [], now_ms())
            self.store.save(self.ledger)
        except OSError as exc:
            self.ledger.trial = None
            reason = f"cannot store it in {self.store.directory}: {exc.strerror or exc}"
            self._log.error("remote_config.refused", version=document.version, reasons=[reason])
            self._report(Result(document.version, "refused", [reason], now_ms()))
            return None
        self._log.info("remote_config.taken", version=document.version, file=str(self.store.path(name)),
                       sha256=sha256, confirm_within_s=self.local.config.remote_config.confirm_within)
        self._published_on = 0
        self._publish_if_new_connection()
        return f"try pushed config version {document.version}"

    def _addressed_here(self, document: Document) -> None:
        gateway = self.local.config.gateway
        if (document.gateway, document.site) != (gateway.id, gateway.site):
            raise Refusal([(f"the document is for gateway {document.gateway} at site {document.site}; this is "
                           f"{gateway.id} at {gateway.site}")], document.version)

    def _check(self, document: Document) -> list[str]:
        """What `check` would say of the config, and what a pushed config must leave alone."""
        name = f"config-{document.version}.yaml"
        incoming = self.store.path(f".incoming-{name}")
        try:
            incoming.write_text(document.config, encoding="utf-8")
            loaded = load_config(incoming, base=self.local.path.absolute().parent)
            check_files(loaded)
        except ConfigError as exc:
            return [problem.replace(str(incoming), name) for problem in exc.problems]
        except OSError as exc:
            return [f"cannot write {incoming}: {exc.strerror}"]
        finally:
            incoming.unlink(missing_ok=True)
        return kept_apart(self.local, loaded)

    # -- a trial --------------------------------------------------------------------------------
    def _judge_trial(self, health: Health) -> str | None:
        trial = self.trying
        assert trial is not None and self.deadline is not None
        self._uplink_seen = self._uplink_seen or health.uplink.connected
        answered = _buses_answered(health)
        waiting = sorted(bus for bus, ok in answered.items() if not ok and bus not in trial.quiet_buses)
        if self._uplink_seen and not waiting:
            self._confirm(trial)
            return None
        if time.monotonic() < self.deadline:
            return None
        within = format_duration(self.local.config.remote_config.confirm_within)
        reasons = []
        if not self._uplink_seen:
            reasons.append(f"uplink: not connected within {within}"
                           + (f" (last error: {health.uplink.last_error})" if health.uplink.last_error else ""))
        for bus in waiting:
            errors = sorted({f"{name}: {d.last_error}" for name, d in health.devices.items()
                             if d.bus == bus and d.last_error})
            reasons.append(f"bus {bus}: no device answered within {within}"
                           + (f" ({'; '.join(errors[:3])})" if errors else ""))
        self._log.error("remote_config.rolled_back", version=trial.version, reasons=reasons)
        self.ledger.trial = None
        self.trying = None
        self._report(Result(trial.version, "rolled_back", reasons, now_ms()))
        return f"roll back pushed config version {trial.version}"

    def _confirm(self, trial: Entry) -> None:
        trial.starts, trial.deadline_ms, trial.quiet_buses = 0, None, []
        self.ledger.previous, self.ledger.active, self.ledger.trial = self.ledger.active, trial, None
        self.trying = None
        self.deadline = None
        self._log.info("remote_config.applied", version=trial.version, sha256=trial.sha256)
        self._report(Result(trial.version, "applied", [], now_ms()))
        self.store.prune(self.ledger)
        if self._deferred is not None:
            self._waiting.put(self._deferred)
            self._deferred = None

    def roll_back_now(self, reasons: list[str]) -> None:
        """The config being tried could not even start the agent."""
        trial = self.trying
        if trial is None:
            return
        self._log.error("remote_config.rolled_back", version=trial.version, reasons=reasons)
        self.ledger.trial = None
        self.trying = None
        self._report(Result(trial.version, "rolled_back", reasons, now_ms()))

    # -- for the status -------------------------------------------------------------------------
    def figures(self) -> dict[str, object]:
        result = self.ledger.result
        return {
            "enabled": True,
            "directory": str(self.store.directory),
            "trying": ({"version": self.trying.version,
                        "until_s": round(max(0.0, (self.deadline or 0) - time.monotonic()), 1)}
                       if self.trying else None),
            "in_force": self.ledger.active.version if self.ledger.active else 0,
            "subscription_refused": self._transport.subscription_refused if self._transport else None,
            "highest": self.ledger.highest,
            "last": dataclasses.asdict(result) if result else None,
        }


def _buses_answered(health: Health) -> dict[str, bool]:
    """Per bus: whether a device on it answered since this start."""
    answered: dict[str, bool] = {}
    for device in health.devices.values():
        answered[device.bus] = answered.get(device.bus, False) or device.last_ok_ms is not None
    return answered


def kept_apart(local: LoadedConfig, pushed: LoadedConfig) -> list[str]:
    """What a pushed config must not change: where readings come from and
    go to in the platform's eyes, the buffer and its stream, where `status`
    looks, the way back to the platform, and who may configure remotely."""
    problems = []
    here, there = local.config, pushed.config
    if (there.gateway.id, there.gateway.site) != (here.gateway.id, here.gateway.site):
        problems.append(f"gateway: must stay id {here.gateway.id} at site {here.gateway.site} (a pushed config "
                        "cannot move a gateway)")
    if there.buffer.path != here.buffer.path:
        problems.append(f"buffer.path: must stay {here.buffer.path}: a config change never touches the buffer "
                        "or its stream")
    if there.health.status_file != here.health.status_file:
        problems.append(f"health.status_file: must stay {here.health.status_file} (`retrofit-agent status` "
                        "reads it)")
    if there.uplink.mqtt is None:
        problems.append("uplink: must stay mqtt: over HTTPS the gateway could not be configured remotely again")
    data = pushed.located.data if pushed.located else {}
    if isinstance(data, dict) and "remote_config" in data and there.remote_config != here.remote_config:
        problems.append("remote_config: set on site only; leave it out of a pushed config (it keeps the "
                        "gateway's own)")
    return problems


# --------------------------------------------------------------------------- the platform's side

def sign_file(key_path: Path, config_path: Path, version: int | None, gateway: str | None,
              site: str | None, check: bool = True) -> tuple[bytes, Document]:
    """`retrofit-agent config sign`: the signed document for a YAML file.
    Gateway and site default to the file's own; the version to the current
    Unix time (successive pushes from one platform then increase)."""
    try:
        text = config_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RetrofitError(f"cannot read {config_path}: {exc}") from None
    if check:
        load_config(config_path)  # ConfigError: every problem, as `check` says them
    try:
        data = load_located(text).data
    except YamlProblem as problem:
        raise ConfigError([f"{config_path}:{problem.line}: {problem.message}"]) from None
    section = data.get("gateway") if isinstance(data, dict) else None
    section = section if isinstance(section, dict) else {}
    gateway = gateway or section.get("id")
    site = site or section.get("site")
    if not isinstance(gateway, str) or not isinstance(site, str):
        raise RetrofitError(f"{config_path} names no gateway id and site: give --gateway and --site")
    number = version if version is not None else int(time.time())
    payload = make_document(load_private_key(key_path), gateway, site, number, text)
    return payload, read_document(payload)


def push(payload: bytes, host: str, port: int, topic_prefix: str, wait_s: float, retain: bool = True,
         username: str | None = None, password: str | None = None, ca_file: Path | None = None,
         progress: Callable[[dict[str, Any]], None] = lambda _state: None) -> dict[str, Any] | None:
    """`retrofit-agent config push`: publish a signed document; with
    ``wait_s`` wait that long for the gateway's result of its version."""
    import ssl
    import threading

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    document = read_document(payload)
    base = f"{topic_prefix}/{document.site}/{document.gateway}"
    final: dict[str, Any] = {}
    done = threading.Event()
    subscribed = threading.Event()

    def on_message(_client: mqtt.Client, _userdata: object, message: mqtt.MQTTMessage) -> None:
        try:
            state = json.loads(message.payload)
        except ValueError:
            return
        if not isinstance(state, dict) or state.get("version") != document.version:
            return
        progress(state)
        if state.get("state") != "pending":
            final.update(state)
            done.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"retrofit-config-push-{os.getpid()}")
    client.on_message = on_message
    client.on_subscribe = lambda *_: subscribed.set()
    if username:
        client.username_pw_set(username, password)
    if ca_file is not None:
        try:
            client.tls_set(ca_certs=str(ca_file), cert_reqs=ssl.CERT_REQUIRED)
        except (OSError, ssl.SSLError) as exc:
            raise RetrofitError(f"--ca-file {ca_file}: cannot load it: {exc}") from None
    try:
        client.connect(host, port, keepalive=30)
    except OSError as exc:
        raise RetrofitError(f"cannot connect to the broker {host}:{port}: {exc}") from None
    client.loop_start()
    try:
        if wait_s > 0:
            client.subscribe(f"{base}/{STATE_TOPIC}", qos=1)
            if not subscribed.wait(10):
                raise RetrofitError(f"the broker {host}:{port} did not confirm the subscription "
                                    f"to {base}/{STATE_TOPIC}")
        info = client.publish(f"{base}/{SET_TOPIC}", payload, qos=1, retain=retain)
        info.wait_for_publish(timeout=10)
        if not info.is_published():
            raise RetrofitError(f"the broker {host}:{port} did not acknowledge the document")
        if wait_s > 0 and done.wait(wait_s):
            return final
        return None
    finally:
        client.disconnect()
        client.loop_stop()
