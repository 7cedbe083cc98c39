"""Composition: the one place that wires config, buses, buffer and uplink.

Threads: one per bus, one buffer writer (owns the SQLite write connection),
one uplink (paho runs its own network thread), and the main thread for
signals, health and sd_notify.

Stopping runs the data flow's order backwards where it matters: the bus
workers and the uplink stop first (the uplink waits a moment for the
acknowledgements still on their way), and the buffer writer stops last, so
its final transaction holds both the last readings and the last
acknowledgements. A writer stopped first dropped every acknowledgement that
came during shutdown, and their readings were sent again after the restart.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from agent import failpoints, logs
from agent.buffer import Buffer, BufferWriter, file_size
from agent.clock import ClockState, ClockWatch
from agent.config import BusConfig, LoadedConfig
from agent.fingerprint import profile_set
from agent.forward import Forwarder, ForwardSettings
from agent.health import Health
from agent.integrity import CounterGuard
from agent.lifecycle import PRIVATE_FILE_MODE, StopRequest, make_private
from agent.notify import Notifier
from agent.pipeline import BusWorker
from agent.spool import Spool
from agent.spool import path_for as spool_path_for
from agent.transports import open_transport
from agent.version import version
from drivers import registry
from drivers.core.readings import now_ms

if TYPE_CHECKING:
    from agent.remote_config import RemoteControl

STOP_BUDGET_S = 4.0
# Of the stop budget, what the buffer writer keeps for its final transaction.
WRITER_STOP_S = 1.0


def _write_atomically(path: Path | None, figures: dict[str, object]) -> None:
    """Readers of the status file see the old or the new snapshot, never
    half. Its mode is set here, not left to the umask: it names the
    building's devices and figures."""
    if path is None:
        return
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        temporary.unlink(missing_ok=True)  # a leftover keeps its mode through O_TRUNC: make it anew
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, PRIVATE_FILE_MODE)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(json.dumps({"ts": now_ms(), **figures}, default=str))
        os.replace(temporary, path)
    except OSError:
        pass  # a full disk is reported by the buffer; the snapshot is best effort


class Agent:
    """The running agent. Construction is start-up: it opens the buffer and
    checks the uplink's credentials; a stop signal during it raises
    StartupInterrupted with everything opened so far closed again."""

    def __init__(self, loaded: LoadedConfig, notifier: Notifier | None = None,
                 stop: StopRequest | None = None, remote: RemoteControl | None = None) -> None:
        self.loaded = loaded
        self.cfg = loaded.config
        self.remote = remote
        # Why the agent stops to start again under another config (remote configuration), if it does.
        self.restart: str | None = None
        self.health = Health()
        self.stop = stop or StopRequest()
        self._install_signals = stop is None  # run() installs them; a caller that passed one did
        self.stop_event = self.stop.event
        self.notifier = notifier or Notifier()
        self._log = logs.get("agent")
        self._closers: list[Callable[[], None]] = []
        try:
            self._start_up()
        except BaseException:
            self._close_opened()
            raise

    def step(self, name: str) -> None:
        """A point of start-up where a stop signal is honoured (and where the
        ``hold-start:NAME`` failpoint holds start-up for a test)."""
        self.stop.check(name, failpoints.ACTIVE,
                        lambda held: self._log.warning("failpoint.holding", step=held))

    def _start_up(self) -> None:
        self.step("buffer")
        for path in make_private(self.cfg.buffer.path):
            self._log.warning("buffer.permissions_tightened", path=path,
                              why="other users could read the building's readings")
        self.buffer = Buffer(self.cfg.buffer.path, max_bytes=int(self.cfg.buffer.max_size_mb * 1024 * 1024),
                             max_age_s=self.cfg.buffer.max_age, flush_interval_s=self.cfg.buffer.flush_interval)
        self._closers.append(self.buffer.close)
        self._reader = self.buffer.reader()
        self.clock = ClockWatch(self.cfg.health.timesync_flag, use_timedatectl=self.cfg.health.use_timedatectl)
        self._stalled: list[str] = []
        self._next_snapshot = 0.0
        self.step("uplink")
        # Loads password, certificates and key now: a bad path is a config error at start.
        transport = open_transport(self.cfg.uplink, self.cfg.gateway.id, self.cfg.gateway.site)
        if self.remote is not None:
            self.remote.attach(transport)  # type: ignore[arg-type]  # MQTT: load_config refuses it with HTTPS
        self._running = {"version": version(), "profiles": profile_set(self.loaded)}
        delivery = self.cfg.uplink.delivery
        self.uplink = Forwarder(
            transport, ForwardSettings(batch=delivery.batch, inflight=delivery.inflight,
                                       status_interval=delivery.status_interval,
                                       max_message_bytes=delivery.max_message_bytes, encoding=delivery.encoding,
                                       compression=delivery.compression, ack_timeout=delivery.ack_timeout),
            self.cfg.gateway.id, self.cfg.gateway.site, self.buffer.stream, self.buffer.reader, self.health,
            status_extra=self.status_figures, on_ack=self._ack, on_reported=self._reported,
            on_corrupt=self._corrupt, resume_after=self.buffer.acked_through)
        self._counter_state = self.buffer.counter_state()
        self._meters = self.buffer.meter_ids()
        self.clock_state = ClockState(trusted=self.clock.synchronised() is not False)
        self.spool = self._spool()
        self.writer = BufferWriter(self.buffer, on_commit=self.uplink.notify,
                                   flush_interval=self.cfg.buffer.flush_interval, spool=self.spool)
        # A point's resolution travels with the first readings of its series
        # (the bus workers put both); the writer stores it in the series'
        # attrs, from which the forwarder's meta message describes it.
        self.step("workers")
        self.workers = []
        for bus in self.cfg.buses:
            if self.cfg.devices_on(bus.id):
                worker = self._worker(bus)
                self._closers.append(worker.close)
                self.workers.append(worker)

    def _close_opened(self) -> None:
        for close in reversed(self._closers):
            try:
                close()
            except Exception as exc:  # noqa: BLE001 - start-up failed already; say what else did, go on
                self._log.warning("agent.close_failed", error=str(exc))
        self._closers.clear()

    def _spool(self) -> Spool | None:
        directory = self.cfg.buffer.spool_dir
        try:
            if directory is None:
                raise OSError("no directory in RAM (neither /run/retrofit-agent nor /dev/shm)")
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            self._log.warning("spool.unavailable", directory=str(directory), error=str(exc),
                              meaning="a crash would lose the readings of the last flush interval")
            return None
        return Spool(spool_path_for(directory, self.cfg.buffer.path), self.buffer.stream)

    def _ack(self, watermark: int) -> None:
        self.writer.ack_through(watermark)

    def _reported(self, seqs: list[int]) -> None:
        self.writer.reported(seqs)

    def _corrupt(self, id_range: tuple[int, int]) -> None:
        self.writer.corrupt(id_range)

    def _worker(self, bus: BusConfig) -> BusWorker:
        """The bus's source, from its protocol, on the pipeline's worker thread."""
        devices = self.cfg.devices_on(bus.id)
        source = registry.for_bus(bus).open(bus, [(device, self.loaded.catalogue.get(device.profile))
                                                  for device in devices])
        return BusWorker(bus.id, source, self.writer, self.health, self.stop_event, self.clock_state,
                         CounterGuard(last=self._counter_state),
                         max_rates={device.id: dict(device.max_rate or {}) for device in devices},
                         meters={device.id: self._meters.get(device.id, "") for device in devices},
                         aligned={device.id for device in devices if device.align == "boundary"})

    def status_figures(self) -> dict[str, object]:
        """Health figures for the retained status message and the status file."""
        acked = self.uplink.acked_watermark  # acknowledgements wait for the next commit to be stored
        oldest = self._reader.oldest(acked)
        depth = self._reader.depth(acked)
        figures = self.health.snapshot()
        figures["buffer"] = {
            "path": str(self.cfg.buffer.path),
            "depth": depth,
            "oldest_age_s": round(time.time() - oldest[1] / 1000, 1) if oldest else 0,
            "next_id": self.buffer.next_id,
            "bytes": file_size(self.cfg.buffer.path),
            "held_in_memory": self.writer.held_in_memory,
            "write_failing": self.writer.failing_since is not None,
            "evicted_total": self.buffer.evicted_total,
            "dropped_total": self.writer.dropped,
        }
        figures["clock_synchronised"] = self.clock.synchronised()
        figures["clock_trusted"] = self.clock_state.trusted
        figures["stalled"] = self._stalled
        figures["version"] = self._running["version"]
        figures["config"] = {
            "sha256": self.loaded.sha256, "path": str(self.loaded.path),
            "source": self.remote.source if self.remote else "local",
            "pushed_version": self.remote.version if self.remote else None,
            "remote": self.remote.figures() if self.remote else {"enabled": False},
        }
        figures["profiles"] = self._running["profiles"]
        return figures

    def run(self) -> int:
        """Run until SIGTERM, SIGINT or SIGHUP; return the process exit code."""
        if self._install_signals:
            self.stop.install()
        self.writer.start()
        self.uplink.start()
        for worker in self.workers:
            worker.start()
        self._log.info(
            "agent.started", gateway=self.cfg.gateway.id, site=self.cfg.gateway.site,
            stream=self.buffer.stream, next_id=self.buffer.next_id, buffer=str(self.cfg.buffer.path),
            new_buffer=self.buffer.info.created, buses=len(self.workers), devices=len(self.cfg.devices),
        )
        self.notifier.send("READY=1", f"STATUS=polling {len(self.cfg.devices)} device(s)")
        try:
            while not self.stop_event.wait(1.0):
                self._heartbeat()
            self._log.info("agent.stopping", signal=self.stop.signal, restart=self.restart)
        finally:
            self._shutdown()
        return 0

    def _find_stalled(self) -> list[str]:
        now = time.monotonic()
        limit = self.cfg.health.stall_after
        progress = dict(self.health.worker_progress)
        progress["buffer-writer"] = self.writer.last_progress
        progress["uplink"] = self.uplink.last_progress
        return sorted(name for name, seen in progress.items() if now - seen > limit)

    def _watch_clock(self) -> None:
        """Trust the wall clock once it is synchronised; then re-stamp, once."""
        if self.clock_state.trusted or self.clock.synchronised() is False:
            return
        offset = time.time_ns() // 1_000_000 - ClockState.mono_ms()
        self.clock_state.trusted = True
        self.writer.restamp(offset)
        self._log.info("clock.synchronised", wall_minus_monotonic_ms=offset)

    def _heartbeat(self) -> None:
        """Once a second: feed the watchdog only while every thread progresses."""
        self._watch_clock()
        if self.remote is not None and self.restart is None and (restart := self.remote.tick(self.health)):
            self.restart = restart
            self.stop_event.set()
        stalled = self._find_stalled()
        if stalled != self._stalled:
            if stalled:
                self._log.error("agent.worker_stuck", workers=stalled, after_s=self.cfg.health.stall_after)
            else:
                self._log.info("agent.workers_progressing", previously_stuck=self._stalled)
            self._stalled = stalled
        now = time.monotonic()
        if now < self._next_snapshot:
            if not stalled:
                self.notifier.send("WATCHDOG=1")
            return
        self._next_snapshot = now + self.cfg.health.snapshot_interval
        figures = self.status_figures()
        _write_atomically(self.cfg.health.status_file, figures)
        if not stalled:
            buffer = figures["buffer"]
            assert isinstance(buffer, dict)
            up = "connected" if self.health.uplink.connected else "disconnected"
            silent = sum(1 for d in self.health.devices.values() if d.state == "silent")
            self.notifier.send("WATCHDOG=1", f"STATUS={len(self.cfg.devices)} device(s), {silent} silent; "
                                             f"buffer {buffer['depth']} waiting; uplink {up}")

    def _write_final_snapshot(self) -> None:
        figures = self.status_figures()
        figures["state"] = "stopped"
        _write_atomically(self.cfg.health.status_file, figures)

    def _shutdown(self) -> None:
        deadline = time.monotonic() + STOP_BUDGET_S
        if self.restart is not None:
            # The same process executes itself again (agent/remote_config.py):
            # to systemd a reload, which the new start's READY=1 ends.
            self.notifier.send("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}",
                               f"STATUS=restarting: {self.restart}")
        else:
            self.notifier.send("STOPPING=1")
        self.stop_event.set()
        # Bus workers finish their poll while the uplink waits for the
        # acknowledgements still on their way; both before the writer stops.
        self.uplink.stop(drain_s=STOP_BUDGET_S - WRITER_STOP_S - 1.0)
        for worker in self.workers:
            worker.join(timeout=max(0.1, deadline - time.monotonic() - WRITER_STOP_S))
        self.uplink.join(timeout=max(0.1, deadline - time.monotonic() - WRITER_STOP_S))
        if self.uplink.is_alive():
            self._log.warning("uplink.stop_timeout", after_s=STOP_BUDGET_S - WRITER_STOP_S,
                              meaning="acknowledgements after this are lost; their readings are sent again")
        self.writer.stop()
        self.writer.join(timeout=max(0.1, deadline - time.monotonic()))
        self._write_final_snapshot()
        self._closers.clear()
        self._reader.close()
        # A clean stop is written down only when everything read was committed.
        clean = not self.writer.is_alive() and self.writer.held_in_memory == 0
        self.buffer.close(clean=clean)
        if self.spool is not None:
            self.spool.close(remove=clean)
        self._log.info("agent.stopped", signal=self.stop.signal, committed=self.writer.committed,
                       acked=self.health.uplink.readings_acked, next_id=self.buffer.next_id)

