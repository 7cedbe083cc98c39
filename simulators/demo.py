"""`retrofit-sim demo`: simulated meters -> the agent -> Mosquitto -> a live view.

By default the simulated retrofitted building (configs/sim-building.yaml) is
read by the agent (configs/building-agent.yaml) and the simulated platform
shows completeness and the heat saving it measures, beside the simulator's
true saving. ``--simple`` runs three meters (configs/demo.yaml) and a view of
the latest value of every point.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from drivers.core.errors import RetrofitError
from drivers.profile import load_catalogue
from simulators.meters import SimulatedDevice, model_for
from simulators.modbus_server import ModbusRtuServer, ModbusTcpServer
from simulators.pty import PtyPair

BROKER_PORT = 18830
TCP_PORT = 15020
PTY_LINK = Path("/tmp/retrofit-demo/ttyV0")


@dataclass
class PlatformView:
    """What the platform has received, kept by an independent subscriber."""

    latest: dict[tuple[str, str], tuple[object, str, int, str]] = field(default_factory=dict)
    ids: set[int] = field(default_factory=set)
    messages: int = 0
    duplicates: int = 0
    status: str = "?"
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_message(self, _client: mqtt.Client, _userdata: object, message: mqtt.MQTTMessage) -> None:
        payload = json.loads(message.payload)
        with self.lock:
            if message.topic.endswith("/status"):
                self.status = payload.get("state", "?")
                return
            self.messages += 1
            for r in payload["readings"]:
                if r["id"] in self.ids:
                    self.duplicates += 1
                self.ids.add(r["id"])
                self.latest[(r["device"], r["point"])] = (r["value"], r["unit"], r["id"], r["quality"])

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
            return "\n".join(lines)


def _start_broker(workdir: Path) -> subprocess.Popen[bytes]:
    binary = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if binary is None:
        raise RetrofitError("mosquitto is not installed: sudo apt-get install mosquitto")
    conf = workdir / "mosquitto.conf"
    conf.write_text(f"listener {BROKER_PORT} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    if proc.poll() is not None:
        raise RetrofitError(f"mosquitto could not listen on 127.0.0.1:{BROKER_PORT} (port in use?)")
    return proc


def _ended(proc: subprocess.Popen[bytes], within: float) -> Callable[[], object]:
    """Stop a child with SIGTERM and wait for it (a clean-up step)."""
    def end() -> int:
        proc.send_signal(signal.SIGTERM)
        return proc.wait(within)
    return end


def _quietly(action: Callable[[], object]) -> Callable[[], None]:
    """A clean-up step that must not stop the ones after it."""
    def run() -> None:
        try:
            action()
        except (OSError, subprocess.TimeoutExpired, RetrofitError) as exc:
            print(f"demo: clean-up: {exc}", file=sys.stderr)
    return run


def run_demo(config: Path, duration: float | None) -> int:
    """The small demo: two meters on TCP, one on a virtual RS-485 line."""
    catalogue = load_catalogue()
    sdm630, md02 = catalogue.get("eastron-sdm630"), catalogue.get("xy-md02")
    workdir = Path(tempfile.mkdtemp(prefix="retrofit-demo-"))
    with contextlib.ExitStack() as stack:  # clean-ups run in reverse: agent first, broker last
        stack.callback(shutil.rmtree, workdir, True)
        broker = _start_broker(workdir)
        stack.callback(_quietly(_ended(broker, within=5)))
        try:
            tcp = ModbusTcpServer({1: SimulatedDevice(sdm630, model_for(sdm630)),
                                   10: SimulatedDevice(md02, model_for(md02, seed=1))},
                                  "127.0.0.1", TCP_PORT).start()
        except OSError as exc:
            raise RetrofitError(f"cannot serve Modbus TCP on 127.0.0.1:{TCP_PORT}: {exc.strerror}") from None
        stack.callback(_quietly(tcp.stop))
        pair = PtyPair(PTY_LINK.with_name("ttyV0.meter"), PTY_LINK).start()
        stack.callback(_quietly(pair.stop))
        rtu = ModbusRtuServer({3: SimulatedDevice(md02, model_for(md02, seed=2))},
                              str(pair.meter_end), 9600, pace=True).start()
        stack.callback(_quietly(rtu.stop))

        view = PlatformView()
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="demo-platform")
        client.on_message = view.on_message
        client.on_connect = lambda c, *_: c.subscribe("buildings/#", qos=1)
        client.connect("127.0.0.1", BROKER_PORT)
        client.loop_start()
        stack.callback(_quietly(lambda: (client.disconnect(), client.loop_stop())))
        _run_agent(stack, config, workdir, view.render, duration)
    return 0


def run_building_demo(building: Path, agent_config: Path, duration: float | None, out: Path) -> int:
    """The building demo: a simulated retrofitted block, the agent, and the
    platform's view: completeness and the retrofit saving measured from what
    arrived, beside the simulator's true saving."""
    from simulators.building import describe, run_building
    from simulators.platform import PlatformIngest

    workdir = Path(tempfile.mkdtemp(prefix="retrofit-demo-"))
    out.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:  # clean-ups run in reverse: agent first, broker last
        stack.callback(shutil.rmtree, workdir, True)
        broker = _start_broker(workdir)
        stack.callback(_quietly(_ended(broker, within=5)))
        handle = run_building(building)
        stack.callback(_quietly(handle.stop))
        for line in describe(handle):
            print(line, flush=True)
        # A fresh buffer each time: the building's simulated time starts anew too.
        config = yaml.safe_load(agent_config.read_text())
        buffer = out / "building-buffer.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{buffer}{suffix}").unlink(missing_ok=True)
        config["buffer"]["path"] = str(buffer)
        config["uplink"]["mqtt"]["port"] = BROKER_PORT
        runtime_config = workdir / "agent.yaml"
        runtime_config.write_text(yaml.safe_dump(config, sort_keys=False))
        ingest = PlatformIngest(port=BROKER_PORT, meta_path=handle.meta_path).start()
        stack.callback(_quietly(ingest.stop))

        def finish() -> str:
            report = ingest.report()
            ingest.write_summary(out / "summary", report)
            if ingest.plot(out / "heat.png", report):
                print(f"plot: {out / 'heat.png'}", flush=True)
            return ingest.render(report)

        _run_agent(stack, runtime_config, workdir, ingest.render, duration, finish)
        print(f"summary: {out / 'summary.txt'} and {out / 'summary.json'}", flush=True)
    return 0


def _run_agent(stack: contextlib.ExitStack, config: Path, workdir: Path, render: Callable[[], str],
               duration: float | None, finish: Callable[[], str] | None = None) -> None:
    """Run the agent as its own process and refresh the view until Ctrl-C or ``duration``."""
    log = workdir / "agent.log"
    with log.open("wb") as out:
        agent = subprocess.Popen([sys.executable, "-m", "agent.cli", "run", "--config", str(config)],
                                 stdout=out, stderr=subprocess.STDOUT)
    stack.callback(_quietly(_ended(agent, within=10)))
    print(f"demo: broker 127.0.0.1:{BROKER_PORT}, agent config {config}; Ctrl-C stops", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    started = time.monotonic()
    interactive = sys.stdout.isatty()
    try:
        while not stop.wait(2.0):
            if agent.poll() is not None:
                print(log.read_text()[-3000:], file=sys.stderr)
                raise RetrofitError(f"the agent exited with code {agent.returncode}")
            print(("\x1b[2J\x1b[H" if interactive else "\n") + render(), flush=True)
            if duration is not None and time.monotonic() - started >= duration:
                break
    except KeyboardInterrupt:
        pass
    print(f"\nsummary:\n{(finish or render)()}", flush=True)
