"""`retrofit-sim demo`: simulated meters -> the agent -> Mosquitto -> a live view.

By default the simulated retrofitted building (configs/sim-building.yaml) is
read by the agent (configs/building-agent.yaml) and the simulated platform
shows completeness and the heat saving it measures, beside the simulator's
true saving. ``--simple`` serves the meters configs/demo.yaml reads and shows
the latest value of every point.

The demo serves what the agent's config says: the broker on its
``uplink.mqtt`` port, the meters where its buses point. Each run starts from
a fresh buffer of its own, and a view that stops working (its MQTT callback
failed) ends the demo with an error instead of showing 0 readings forever.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from drivers.core.errors import RetrofitError
from drivers.modbus.profile import ModbusProfile as Profile
from drivers.profile import load_catalogue
from simulators.meters import SimulatedDevice, model_for
from simulators.modbus_server import ModbusRtuServer, ModbusTcpServer
from simulators.platform import Fleet, render_fleet
from simulators.pty import PtyPair


@dataclass
class PlatformView:
    """What the platform has received, kept by an independent subscriber.

    The agent publishes four topics under its prefix (docs/payload.md):
    ``readings`` are shown; ``status`` gives the agent's state and the
    fleet line (version, config, buffer, clock, silent devices); ``meta``
    (retained) and ``events`` are counted. A callback that fails records why
    (``failure``): paho would otherwise end its network thread and the view
    would stand still without a word.
    """

    latest: dict[tuple[str, str], tuple[object, str, int, str]] = field(default_factory=dict)
    ids: set[int] = field(default_factory=set)
    messages: int = 0
    duplicates: int = 0
    other: int = 0  # meta and events messages
    status: str = "?"
    fleet: Fleet = field(default_factory=Fleet)
    failure: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_message(self, _client: mqtt.Client, _userdata: object, message: mqtt.MQTTMessage) -> None:
        try:
            self._take(message.topic, bytes(message.payload))
        except Exception as exc:  # noqa: BLE001 - reported by check(), which ends the demo
            self.failure = (f"{type(exc).__name__}: {exc} on {message.topic} "
                            f"({traceback.extract_tb(exc.__traceback__)[-1].line!s})")

    def _take(self, topic: str, raw: bytes) -> None:
        kind = topic.rsplit("/", 1)[-1]
        payload = json.loads(raw)
        with self.lock:
            if kind == "status":
                self.status = payload.get("state", "?")
                self.fleet.status(topic, payload, time.time_ns() // 1_000_000)
            elif kind == "readings":
                self.messages += 1
                for r in payload["readings"]:
                    if r["id"] in self.ids:
                        self.duplicates += 1
                    self.ids.add(r["id"])
                    self.latest[(r["device"], r["point"])] = (r["value"], r["unit"], r["id"], r["quality"])
            else:
                self.other += 1

    def check(self) -> None:
        if self.failure is not None:
            raise RetrofitError(f"the platform view stopped: {self.failure}")

    def render(self) -> str:
        with self.lock:
            lines = [(f"platform view: agent {self.status}, {self.messages} message(s), "
                      f"{len(self.ids)} reading(s), duplicates {self.duplicates}")]
            if self.ids:
                span = max(self.ids) - min(self.ids) + 1
                lines.append(f"ids {min(self.ids)}..{max(self.ids)}: complete {100.0 * len(self.ids) / span:.1f} %")
            lines.append(f"{'device':12} {'point':22} {'value':>12} unit  {'id':>7} quality")
            for (device, point), (value, unit, rid, quality) in sorted(self.latest.items()):
                lines.append(f"{device:12} {point:22} {value!s:>12} {unit:5} {rid:>7} {quality}")
            lines.append(render_fleet(self.fleet.rows()))
            return "\n".join(lines)


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def _start_broker(workdir: Path, port: int) -> subprocess.Popen[bytes]:
    binary = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if binary is None:
        raise RetrofitError("mosquitto is not installed: sudo apt-get install mosquitto")
    if _listening(port):
        raise RetrofitError(f"127.0.0.1:{port} is in use (another demo or broker?); stop it or change "
                            "uplink.mqtt.port in the agent's config")
    conf = workdir / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    # Its own session: Ctrl-C reaches the demo, which stops the parts in order.
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 10
    while not _listening(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RetrofitError(f"mosquitto could not listen on 127.0.0.1:{port}")
        time.sleep(0.05)
    return proc


def _agent_config(path: Path) -> dict[str, Any]:
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise RetrofitError(f"{path}: cannot read the agent's config: {exc}") from None
    if not isinstance(config, dict) or not isinstance(config.get("uplink", {}).get("mqtt"), dict):
        raise RetrofitError(f"{path}: no uplink.mqtt section: the demo runs its broker where that says")
    return config


def _fresh_buffer(config: dict[str, Any], base: Path, buffer: Path | None = None) -> Path:
    """Every demo run starts from an empty buffer of its own: its meters start
    anew, and an old buffer's counters and meter ids belong to another run."""
    path = buffer or Path(str(config.get("buffer", {}).get("path", "buffer.db")))
    path = path if path.is_absolute() else (base / path).resolve()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    config.setdefault("buffer", {})["path"] = str(path)
    return path


def _stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout``: a clean-up never hangs the demo."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _quietly(action: Callable[[], object]) -> Callable[[], None]:
    """A clean-up step that must not stop the ones after it."""
    def run() -> None:
        try:
            action()
        except (OSError, subprocess.TimeoutExpired, RetrofitError) as exc:
            print(f"demo: clean-up: {exc}", file=sys.stderr)
    return run


def _serve_meters(stack: contextlib.ExitStack, config: dict[str, Any]) -> None:
    """Simulated meters for every device of the agent's config, where its bus
    points: a Modbus TCP server per TCP bus, a virtual RS-485 line per RTU bus."""
    catalogue = load_catalogue()
    for index, bus in enumerate(config.get("buses") or []):
        units = {}
        for seed, device in enumerate(d for d in config.get("devices") or [] if d.get("bus") == bus["id"]):
            profile = catalogue.get(device["profile"])
            if not isinstance(profile, Profile):
                raise RetrofitError(f"device {device['id']}: the simple demo simulates Modbus meters, "
                                    f"not {profile.name} ({profile.protocol})")
            units[int(device["address"])] = SimulatedDevice(profile, model_for(profile, seed=10 * index + seed))
        if bus.get("type") == "modbus-tcp":
            host, port = str(bus.get("host", "127.0.0.1")), int(bus["port"])
            try:
                tcp = ModbusTcpServer(units, host, port).start()
            except OSError as exc:
                raise RetrofitError(f"bus {bus['id']}: cannot serve Modbus TCP on {host}:{port}: "
                                    f"{exc.strerror}") from None
            stack.callback(_quietly(tcp.stop))
        elif bus.get("type") == "modbus-rtu":
            link = Path(str(bus["port"]))
            pair = PtyPair(link.with_name(link.name + ".meter"), link).start()
            stack.callback(_quietly(pair.stop))
            rtu = ModbusRtuServer(units, str(pair.meter_end), int(bus.get("baudrate", 9600)), pace=True).start()
            stack.callback(_quietly(rtu.stop))
        else:
            raise RetrofitError(f"bus {bus['id']}: the simple demo serves Modbus TCP and RTU meters, "
                                f"not {bus.get('type')!r}")


def run_demo(config_path: Path, duration: float | None) -> int:
    """The simple demo: the meters of configs/demo.yaml, the agent, a view of the latest values."""
    config = _agent_config(config_path)
    port = int(config["uplink"]["mqtt"].get("port", 1883))
    workdir = Path(tempfile.mkdtemp(prefix="retrofit-demo-"))
    with contextlib.ExitStack() as stack:  # clean-ups run in reverse: agent first, broker last
        stack.callback(shutil.rmtree, workdir, True)
        broker = _start_broker(workdir, port)
        stack.callback(_quietly(lambda: _stop_process(broker, 5)))
        _serve_meters(stack, config)
        _fresh_buffer(config, config_path.absolute().parent)
        runtime_config = workdir / "agent.yaml"
        runtime_config.write_text(yaml.safe_dump(config, sort_keys=False))

        view = PlatformView()
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="demo-platform")
        client.on_message = view.on_message
        prefix = config["uplink"]["mqtt"].get("topic_prefix", "buildings")
        client.on_connect = lambda c, *_: c.subscribe(f"{prefix}/#", qos=1)
        client.connect("127.0.0.1", port)
        client.loop_start()
        stack.callback(_quietly(lambda: (client.disconnect(), client.loop_stop())))
        _run_agent(stack, runtime_config, port, workdir, view.render, duration, check=view.check)
    return 0


def run_building_demo(building: Path, agent_config: Path, duration: float | None, out: Path) -> int:
    """The building demo: a simulated retrofitted block, the agent, and the
    platform's view: completeness and the retrofit saving measured from what
    arrived, beside the simulator's true saving."""
    from simulators.building import describe, run_building
    from simulators.platform import PlatformIngest

    config = _agent_config(agent_config)
    port = int(config["uplink"]["mqtt"].get("port", 1883))
    workdir = Path(tempfile.mkdtemp(prefix="retrofit-demo-"))
    out.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:  # clean-ups run in reverse: agent first, broker last
        stack.callback(shutil.rmtree, workdir, True)
        broker = _start_broker(workdir, port)
        stack.callback(_quietly(lambda: _stop_process(broker, 5)))
        handle = run_building(building)
        stack.callback(_quietly(handle.stop))
        for line in describe(handle):
            print(line, flush=True)
        # The demo's own buffer in its own directory (never the one the agent's
        # config names, which the hand recipe of docs/simulators.md uses), and
        # a fresh one each time: the building's simulated time starts anew too.
        buffer = _fresh_buffer(config, agent_config.absolute().parent, out / "building-buffer.db")
        print(f"demo: agent buffer {buffer} (new for this run)", flush=True)
        runtime_config = workdir / "agent.yaml"
        runtime_config.write_text(yaml.safe_dump(config, sort_keys=False))
        # What the platform receives is stored (new for this run), and the
        # verification step runs on it at the end (simulators/verify.py).
        store = out / "platform.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{store}{suffix}").unlink(missing_ok=True)
        ingest = PlatformIngest(port=port, topic_prefix=config["uplink"]["mqtt"].get("topic_prefix", "buildings"),
                                meta_path=handle.meta_path, store=store).start()
        stack.callback(_quietly(ingest.stop))

        def finish() -> str:
            report = ingest.report()
            ingest.write_summary(out / "summary", report)
            text = f"{ingest.render(report)}\n{_verification(store, ingest.load_meta(), out)}"
            if ingest.plot(out / "heat.png", report):
                from simulators import verify

                verified = json.loads((out / "verify.json").read_text())
                shown = f"\nplot: {out / 'heat.png'}"
                if verify.plot(verified, out / "savings.png"):
                    shown += f"\nverification plot: {out / 'savings.png'}"
                return text + shown
            return (f"{text}\nplot: skipped: matplotlib is not installed "
                    "(./scripts/demo installs it; or pip install 'retrofit-agent[demo]')")

        _run_agent(stack, runtime_config, port, workdir, ingest.render, duration, finish, check=ingest.check)
        print(f"summary: {out / 'summary.txt'} and {out / 'summary.json'}", flush=True)
    return 0


def _verification(store: Path, meta: dict[str, Any] | None, out: Path) -> str:
    """The verification step on what the platform stored: its summary (and
    out/verify.json). A demo's week is no year-long baseline: the verdict
    says so, with CalTRACK's reason."""
    from simulators import platform_store, verify

    report = verify.verify(platform_store.load(store), meta)
    verify.write_report(report, out / "verify.json")
    return f"{verify.render(report)}\nverification report: {out / 'verify.json'}"


def _run_agent(stack: contextlib.ExitStack, config: Path, port: int, workdir: Path, render: Callable[[], str],
               duration: float | None, finish: Callable[[], str] | None = None,
               check: Callable[[], None] = lambda: None) -> None:
    """Run the agent as its own process and refresh the view until Ctrl-C or
    ``duration``; ``check`` raises when the view stopped working."""
    log = workdir / "agent.log"
    with log.open("wb") as out:
        # Its own session: Ctrl-C reaches the demo only, which stops the agent first.
        agent = subprocess.Popen([sys.executable, "-m", "agent.cli", "run", "--config", str(config)],
                                 stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    stack.callback(_quietly(lambda: _stop_process(agent, 10)))
    print(f"demo: broker 127.0.0.1:{port}, agent config {config}; Ctrl-C stops", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    started = time.monotonic()
    interactive = sys.stdout.isatty()
    try:
        while not stop.wait(2.0):
            check()
            if agent.poll() is not None:
                print(log.read_text()[-3000:], file=sys.stderr)
                raise RetrofitError(f"the agent exited with code {agent.returncode}")
            print(("\x1b[2J\x1b[H" if interactive else "\n") + render(), flush=True)
            if duration is not None and time.monotonic() - started >= duration:
                break
    except KeyboardInterrupt:
        pass
    check()
    print(f"\nsummary:\n{(finish or render)()}", flush=True)
