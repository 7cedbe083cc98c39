"""Composition: the one place that wires config, buses, buffer and uplink.

Threads: one per bus, one buffer writer (owns the SQLite write connection),
one uplink (paho runs its own network thread), and the main thread for
signals, health and sd_notify.
"""

from __future__ import annotations

import signal
import threading
import time
from types import FrameType

from agent import logs
from agent.buffer import Buffer, BufferReader, BufferWriter, file_size
from agent.config import LoadedConfig, ModbusRtuBus, ModbusTcpBus
from agent.health import DeviceHealth, Health
from agent.notify import Notifier
from agent.uplink import Uplink
from agent.worker import BusWorker, DevicePoller
from drivers import modbus
from drivers.plan import LinkCost

STOP_BUDGET_S = 4.0


def _link_for(bus: ModbusRtuBus | ModbusTcpBus) -> tuple[modbus.RegisterReader, LinkCost]:
    if isinstance(bus, ModbusRtuBus):
        link = modbus.serial_link(bus.port, bus.baudrate, bus.parity, bus.stopbits, bus.bytesize, bus.timeout)
        return link, LinkCost.rtu(bus.baudrate, bus.parity, bus.stopbits)
    link = modbus.tcp_link(bus.host, bus.port, bus.timeout, rtu_framing=bus.framing == "rtu")
    return link, LinkCost.tcp()


class Agent:
    def __init__(self, loaded: LoadedConfig, notifier: Notifier | None = None) -> None:
        self.loaded = loaded
        self.cfg = loaded.config
        self.health = Health()
        self.stop_event = threading.Event()
        self.notifier = notifier or Notifier()
        self._log = logs.get("agent")
        self.buffer = Buffer(self.cfg.buffer.path, self.cfg.buffer.synchronous,
                             max_bytes=int(self.cfg.buffer.max_size_mb * 1024 * 1024),
                             max_age_s=self.cfg.buffer.max_age)
        self._reader = BufferReader(self.cfg.buffer.path)
        self.uplink = Uplink(
            self.cfg.uplink.mqtt, self.cfg.gateway.id, self.cfg.gateway.site, self.buffer.stream,
            self.cfg.buffer.path, on_ack=self._ack, health=self.health, status_extra=self.status_figures,
        )
        self.writer = BufferWriter(self.buffer, on_commit=self.uplink.notify)
        self.workers = [self._worker(bus) for bus in self.cfg.buses if self.cfg.devices_on(bus.id)]

    def _ack(self, id_range: tuple[int, int]) -> None:
        self.writer.ack(id_range)

    def _reported(self, first_ids: list[int]) -> None:
        self.writer.reported(first_ids)

    def _worker(self, bus: ModbusRtuBus | ModbusTcpBus) -> BusWorker:
        link, cost = _link_for(bus)
        pollers = []
        for device in self.cfg.devices_on(bus.id):
            profile = self.loaded.catalogue.get(device.profile)
            points = tuple(p for p in profile.points if device.points is None or p.name in device.points)
            self.health.devices[device.id] = DeviceHealth(bus=bus.id)
            pollers.append(DevicePoller(device.id, device.address, device.interval, profile, points,
                                        cost, self.health.devices[device.id]))
        return BusWorker(bus.id, link, pollers, self.writer.put, self.health, self.stop_event)

    def status_figures(self) -> dict[str, object]:
        oldest = self._reader.oldest()
        figures = self.health.snapshot()
        figures["buffer"] = {
            "depth": self._reader.depth(),
            "oldest_age_s": round(time.time() - oldest[1] / 1000, 1) if oldest else 0,
            "next_id": self.buffer.next_id,
            "bytes": file_size(self.cfg.buffer.path),
            "held_in_memory": self.writer.held_in_memory,
            "write_failing": self.writer.failing_since is not None,
            "evicted_total": self.buffer.evicted_total,
            "dropped_total": self.writer.dropped,
        }
        return figures

    def run(self) -> int:
        """Run until SIGTERM or SIGINT; return the process exit code."""
        def on_signal(signum: int, _frame: FrameType | None) -> None:
            self._log.info("agent.stopping", signal=signal.Signals(signum).name)
            self.stop_event.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
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
        finally:
            self._shutdown()
        return 0

    def _all_progressing(self) -> bool:
        now = time.monotonic()
        limit = 120.0
        stale = [name for name, seen in self.health.worker_progress.items() if now - seen > limit]
        if now - self.writer.last_progress > limit:
            stale.append("buffer-writer")
        if now - self.uplink.last_progress > limit and self.uplink.is_alive() and self.health.uplink.connected:
            stale.append("uplink")
        if stale:
            self._log.error("agent.worker_stuck", workers=stale)
        return not stale

    def _heartbeat(self) -> None:
        if self.notifier.enabled and self._all_progressing():
            depth = self._reader.depth()
            up = "connected" if self.health.uplink.connected else "disconnected"
            self.notifier.send("WATCHDOG=1", f"STATUS={len(self.cfg.devices)} device(s), buffer {depth}, uplink {up}")

    def _shutdown(self) -> None:
        deadline = time.monotonic() + STOP_BUDGET_S
        self.notifier.send("STOPPING=1")
        self.stop_event.set()
        for worker in self.workers:
            worker.join(timeout=max(0.1, deadline - time.monotonic() - 1.5))
        self.writer.stop()
        self.writer.join(timeout=max(0.1, deadline - time.monotonic() - 1.0))
        self.uplink.stop()
        self.uplink.join(timeout=max(0.1, deadline - time.monotonic()))
        self._reader.close()
        self.buffer.close()
        self._log.info("agent.stopped", committed=self.writer.committed,
                       acked=self.health.uplink.readings_acked, next_id=self.buffer.next_id)
