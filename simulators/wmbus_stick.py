"""A simulated receiver stick: radio meters heard through an iM871A or AMB8465 on a serial port.

``StickServer`` opens the meters' end of a pty pair (simulators/pty.py) and
behaves as the stick does towards its host: it waits for the host to set
the receive mode (iM871A SET_CONFIG, AMB8465 CMD_SET_MODE), confirms it,
then delivers what the simulated meters transmit (``RadioChannel``: their
intervals with jitter, collisions, bit errors), each telegram CRC-less
with an RSSI byte, in the stick's framing, at the moment it is sent. Like
a real stick it drops what failed its CRCs (collisions, bit errors);
``repeat_every`` delivers every n-th telegram twice (a repeater's copy)
and ``serial_noise`` puts garbage bytes between frames. An AMB8465 answers
the host's query of its RSSI_Enable setting; ``rssi=False`` is a module
set without it (no RSSI byte after a telegram). ``clock`` gives the
channel another time base than the wall clock (a simulated building's
accelerated or paced time): each telegram is then built when that clock
reaches its turn, with the values of that moment. ``delivered`` is
the ground truth: every intact telegram the host was given, once each.
A stdout line source (rtl_wmbus lines, for the agent's SDR receiver) is
``run_line_source``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import serial

from drivers.core.errors import RetrofitError
from drivers.wmbus import amb8465, im871a
from drivers.wmbus.crypto import MeterKey
from simulators.pty import PtyPair
from simulators.wmbus_meter import (
    MeterKind,
    RadioChannel,
    RadioMeterSpec,
    SimulatedRadioMeter,
    Transmission,
    amb8465_frame,
    generate_keys,
    im871a_frame,
    rtl_wmbus_line,
    strip_to_crcless,
)

KINDS = (MeterKind.WATER, MeterKind.WARM_WATER, MeterKind.HCA, MeterKind.HEAT)
SECURITY = (5, 7, 0)


def radio_meters(count: int, interval_s: float = 120.0, seed: int = 0, first_id: int = 30_000_001,
                 security: Sequence[int] = SECURITY, mode: str = "t1") -> list[SimulatedRadioMeter]:
    """A block's radio meters: water, warm water, HCA and heat meters in turn,
    security modes 5, 7 and 0 in turn, each encrypted one with its own key."""
    keys = generate_keys(count, seed)
    meters = []
    for index in range(count):
        security_mode = security[index % len(security)]
        spec = RadioMeterSpec(first_id + index, KINDS[index % len(KINDS)],
                              manufacturer=("APA", "DME", "KAM")[index % 3],
                              version=0x10 + index % 4, security_mode=security_mode,
                              key=keys[index] if security_mode else None, long_header=index % 5 == 4,
                              interval_s=interval_s, mode=mode)
        meters.append(SimulatedRadioMeter(spec, seed=seed))
    return meters


def device_entries(meters: Sequence[SimulatedRadioMeter], bus: str,
                   interval: str | None = None) -> list[dict[str, object]]:
    """The agent's `devices` for these meters (profile by kind)."""
    profile = {MeterKind.WATER: "oms-water", MeterKind.WARM_WATER: "oms-water", MeterKind.HEAT: "oms-heat",
               MeterKind.HCA: "oms-hca"}
    return [{"id": f"{m.spec.kind.value.replace('_', '-')}-{m.spec.id_text}", "bus": bus, "address": m.spec.id_text,
             "profile": profile[m.spec.kind], "interval": interval or f"{m.spec.interval_s:g}s"} for m in meters]


@dataclass(frozen=True)
class Delivered:
    transmission: Transmission
    rssi_dbm: float | None  # None: an AMB8465 set without RSSI output
    copies: int  # 2 when a repeater's copy followed


class StickServer:
    """The stick's side of a serial line, with radio meters behind it."""

    def __init__(self, meters: Sequence[SimulatedRadioMeter], port: str, stick: str = "im871a",
                 duration_s: float | None = None, jitter: float = 0.1, bit_error_rate: float = 0.0,
                 collisions: bool = True, repeat_every: int = 0, serial_noise: float = 0.0, seed: int = 0,
                 baudrate: int = 57600, rssi: bool = True, clock: Callable[[], float] | None = None,
                 poll_s: float = 0.01) -> None:
        if stick not in ("im871a", "amb8465"):
            raise ValueError(f"stick {stick!r}: im871a or amb8465")
        self.meters = list(meters)
        self.port = port
        self.stick = stick
        self.duration_s = duration_s
        self.channel = RadioChannel(self.meters, jitter=jitter, bit_error_rate=bit_error_rate,
                                    collisions=collisions, seed=seed)
        self.repeat_every = repeat_every
        self.serial_noise = serial_noise
        self.baudrate = baudrate
        # The channel's time base: wall seconds since the start, or (a
        # simulated building) simulated seconds since its start, read every
        # ``poll_s`` because that clock may run at any pace.
        self.clock = clock
        self.poll_s = poll_s
        self.rssi = rssi or stick == "im871a"
        # The AMB8465's user settings the host may read (CMD_GET_REQ): only RSSI_Enable matters here.
        self.settings = {amb8465.RSSI_ENABLE: 1 if self.rssi else 0}
        self._rng = random.Random(seed + 1)
        self.requests: list[bytes] = []  # every chunk of bytes the host wrote
        self.configured = threading.Event()
        self.finished = threading.Event()
        self.delivered: list[Delivered] = []
        self.dropped: list[Transmission] = []  # damaged on air: a stick never delivers them
        self.unheard: list[Transmission] = []  # sent (on ``clock``) before the host set the receive mode
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._line: serial.Serial | None = None
        self._hci = im871a.HciDecoder()  # the host's requests, however the pty splits them
        self._amber = amb8465.AmberDecoder(rssi=False)

    def start(self) -> StickServer:
        self._line = serial.Serial(self.port, baudrate=self.baudrate, timeout=0.05)
        self._thread = threading.Thread(target=self._run, name=f"sim-{self.stick}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if self._line is not None:
            self._line.close()

    # -- the host's side ------------------------------------------------------------
    def _answer_configuration(self, line: serial.Serial) -> None:
        data = line.read(line.in_waiting or 1)
        if not data:
            return
        self.requests.append(data)
        if self.stick == "im871a":
            for message in self._hci.feed(data):
                if message.endpoint == im871a.ENDPOINT_DEVMGMT and message.message_id == im871a.DEVMGMT_SET_CONFIG_REQ:
                    line.write(im871a.encode(im871a.HciMessage(im871a.ENDPOINT_DEVMGMT,
                                                               im871a.DEVMGMT_SET_CONFIG_RSP, b"\x00")))
                    self.configured.set()
        else:
            for amber in self._amber.feed(data):
                if amber.command == amb8465.CMD_GET_REQ and len(amber.payload) == 2:
                    position, length = amber.payload
                    values = bytes(self.settings.get(p, 0) for p in range(position, position + length))
                    line.write(amb8465.get_confirmation(position, values))
                if amber.command == amb8465.CMD_SET_MODE_REQ:
                    line.write(amb8465.encode(amb8465.AmberMessage(amb8465.CMD_SET_MODE_REQ | amb8465.CONFIRM,
                                                                   b"\x00")))
                    self.configured.set()

    def _frame(self, transmission: Transmission, rssi: float) -> bytes:
        crcless = strip_to_crcless(transmission.meter, transmission.telegram)
        if self.stick == "im871a":
            return im871a_frame(crcless, rssi)
        return amb8465_frame(crcless, rssi) if self.rssi else amb8465.telegram_indication(crcless)

    def _run(self) -> None:
        line = self._line
        assert line is not None
        while not self._stop.is_set() and not self.configured.is_set():
            self._answer_configuration(line)
        wall_start = time.monotonic()
        clock = self.clock or (lambda: time.monotonic() - wall_start)
        if self.clock is not None:  # another clock ran while nobody listened
            self.unheard = self.channel.run_until(clock())
        end = self.duration_s
        count = 0
        while not self._stop.is_set():
            now = clock()
            for transmission in self.channel.run_until(now if end is None else min(now, end)):
                if not transmission.intact:
                    self.dropped.append(transmission)
                    continue
                count += 1
                rssi = round(self._rng.uniform(-95, -50))
                frame = self._frame(transmission, rssi)
                copies = 2 if self.repeat_every and count % self.repeat_every == 0 else 1
                out = b""
                for _ in range(copies):
                    if self.serial_noise and self._rng.random() < self.serial_noise:
                        out += bytes(self._rng.randrange(256) for _ in range(self._rng.randrange(1, 8)))
                    out += frame
                line.write(out)
                self.delivered.append(Delivered(transmission, self._rng_rssi(rssi), copies))
            if end is not None and now >= end:
                break
            if self.clock is not None:
                wait = self.poll_s
            else:
                due = self.channel.next_due() if end is None else min(self.channel.next_due(), end)
                wait = min(0.2, max(0.0, due - clock()))
            self._stop.wait(wait)
            if line.in_waiting:
                self._answer_configuration(line)  # a host that reopened the port sets the mode again
        line.flush()
        self.finished.set()

    def _rng_rssi(self, rssi: float) -> float | None:
        """The RSSI the host will read back: the stick's byte rounds it."""
        if not self.rssi:
            return None
        if self.stick == "im871a":
            from simulators.wmbus_meter import rssi_raw_im871a

            return im871a.HciMessage(0, 0, b"", rssi_raw=rssi_raw_im871a(rssi)).rssi_dbm or 0.0
        from simulators.wmbus_meter import rssi_raw_amb8465

        return amb8465.rssi_dbm(rssi_raw_amb8465(rssi))


def run_line_source(meters: Sequence[SimulatedRadioMeter], out: TextIO = sys.stdout, duration_s: float | None = None,
                    jitter: float = 0.1, seed: int = 0, truth: TextIO | None = None) -> int:
    """rtl_wmbus lines on stdout, in real time: the agent's SDR receiver runs this as its command.

    ``truth`` gets one JSON line per telegram printed (the meter and the
    values it sent, decimals as strings), and ``{"sent": N}`` at the end:
    the ground truth of a test that runs this as the agent's command.
    """
    channel = RadioChannel(meters, jitter=jitter, seed=seed)
    start = time.monotonic()
    sent = 0
    for transmission in _schedule(channel, duration_s, threading.Event()):
        sent += 1
        wait = start + transmission.time_s - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        if transmission.intact:
            out.write(rtl_wmbus_line(transmission.telegram, transmission.meter.spec.mode.upper()) + "\n")
            out.flush()
            if truth is not None:
                facts = transmission.truth
                truth.write(json.dumps({"meter": facts.meter, "kind": facts.kind.value,
                                        "values": {k: str(v) for k, v in facts.values.items()}}) + "\n")
    if truth is not None:
        truth.write(json.dumps({"sent": sent}) + "\n")
        truth.flush()
    return sent


CHUNK_S = 60.0


def _schedule(channel: RadioChannel, duration_s: float | None, stop: threading.Event) -> Iterator[Transmission]:
    """The channel's transmissions in time order, a minute of them at a time (forever without a duration)."""
    remaining = duration_s
    while not stop.is_set() and (remaining is None or remaining > 0):
        chunk = CHUNK_S if remaining is None else min(CHUNK_S, remaining)
        if remaining is not None:
            remaining -= chunk
        yield from channel.run(chunk)


def write_keys(meters: Sequence[SimulatedRadioMeter], path: Path) -> Path:
    from simulators.wmbus_meter import write_key_file

    return write_key_file(meters, path)


def meter_keys(meters: Sequence[SimulatedRadioMeter]) -> list[MeterKey]:
    return [m.spec.key for m in meters if m.spec.key is not None]


# -- `retrofit-sim wmbus` -------------------------------------------------------------------


def add_cli(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    wmbus = commands.add_parser(
        "wmbus", help="simulated radio meters behind an iM871A or AMB8465 stick (a pty), or as SDR lines on stdout")
    wmbus.add_argument("--stick", choices=("im871a", "amb8465", "lines"), default="im871a",
                       help="the receiver's framing; lines: rtl_wmbus lines on stdout (a wmbus-sdr bus's command)")
    where = wmbus.add_mutually_exclusive_group()
    where.add_argument("--pty", type=Path, metavar="LINK", help="make a virtual serial line; the agent's end is LINK")
    where.add_argument("--serial", type=Path, metavar="PATH", help="serve on this serial port")
    wmbus.add_argument("--meters", type=int, default=12, help="how many meters (water, warm water, HCA, heat in turn)")
    wmbus.add_argument("--interval", type=float, default=120.0, help="seconds between a meter's telegrams")
    wmbus.add_argument("--jitter", type=float, default=0.1, help="relative jitter of the interval (default 0.1)")
    wmbus.add_argument("--security", default="5,7,0", help="security modes in turn (default 5,7,0)")
    wmbus.add_argument("--keys-out", type=Path, metavar="FILE", help="write the vendor key file here (mode 600)")
    wmbus.add_argument("--devices-out", type=Path, metavar="FILE",
                       help="write the agent's `devices:` for these meters here (YAML)")
    wmbus.add_argument("--bus", default="radio", help="the bus id in --devices-out (default radio)")
    wmbus.add_argument("--bit-errors", type=float, default=0.0, help="share of telegrams with a flipped bit")
    wmbus.add_argument("--no-collisions", action="store_true", help="overlapping telegrams both arrive")
    wmbus.add_argument("--repeat-every", type=int, default=0, help="deliver every n-th telegram twice (a repeater)")
    wmbus.add_argument("--no-rssi", action="store_true",
                       help="an AMB8465 whose RSSI output (RSSI_Enable) is off: no RSSI byte after a telegram")
    wmbus.add_argument("--duration", type=float, help="stop after this many seconds (default: until Ctrl-C)")
    wmbus.add_argument("--truth-out", type=Path, metavar="FILE",
                       help="with --stick lines: the values of every telegram printed, as JSON lines")
    wmbus.add_argument("--seed", type=int, default=0)
    wmbus.set_defaults(handler=_run_cli)


def _run_cli(args: argparse.Namespace) -> int:
    import signal

    import yaml

    try:
        security = tuple(int(mode) for mode in args.security.split(","))
    except ValueError:
        raise RetrofitError(f"--security {args.security!r}: security modes like 5,7,0") from None
    if not set(security) <= {0, 5, 7} or args.meters < 1 or args.interval <= 0:
        raise RetrofitError("--security takes 0, 5 and 7; --meters and --interval must be positive")
    meters = radio_meters(args.meters, args.interval, args.seed, security=security)
    say = sys.stderr if args.stick == "lines" else sys.stdout
    if args.keys_out:
        write_keys(meters, args.keys_out)
        print(f"keys of {len(meter_keys(meters))} encrypted meters in {args.keys_out}", file=say, flush=True)
    if args.devices_out:
        args.devices_out.write_text(yaml.safe_dump({"devices": device_entries(meters, args.bus)}, sort_keys=False))
        print(f"devices for bus {args.bus} in {args.devices_out}", file=say, flush=True)
    if args.stick == "lines":
        if args.truth_out is None:
            run_line_source(meters, sys.stdout, args.duration, args.jitter, args.seed)
            return 0
        with args.truth_out.open("w", encoding="utf-8") as truth:
            run_line_source(meters, sys.stdout, args.duration, args.jitter, args.seed, truth)
        return 0
    if not (args.pty or args.serial):
        raise RetrofitError("give --pty LINK or --serial PATH (or --stick lines)")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    pair = PtyPair(args.pty.with_name(args.pty.name + ".stick"), args.pty).start() if args.pty else None
    port = pair.meter_end if pair else args.serial
    server = StickServer(meters, str(port), args.stick, args.duration, args.jitter, args.bit_errors,
                         not args.no_collisions, args.repeat_every, seed=args.seed,
                         rssi=not args.no_rssi).start()
    print(f"{len(meters)} radio meters behind a simulated {args.stick} on {args.pty or port}, every "
          f"{args.interval:g} s; waiting for the receiver to set its mode", flush=True)
    try:
        while not stop.is_set() and not server.finished.is_set():
            stop.wait(0.5)
    finally:
        server.stop()
        if pair:
            pair.stop()
    print(f"delivered {len(server.delivered)} telegrams, {len(server.dropped)} lost on air", flush=True)
    return 0
