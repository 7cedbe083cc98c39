"""A Modbus TCP device or gateway that answers like a broken or hostile one.

Every unit id behind the server has a behaviour (a name from BEHAVIOURS):
``good`` answers from a simulated device; every other one answers another
question, lies about a length, stays silent, answers late, or garbles.
Whatever a broken answer carries in its registers is POISON, so a value
decoded from it is recognisable wherever it ends up.

Server-wide faults: ``flood_bytes_per_s`` floods every connection with
unsolicited bytes from its first request on (a babbling device behind a
gateway), until the peer hangs up; ``idle_close_s`` closes a connection that carried no request for
that long, as many gateways do after 3-60 s.
"""

from __future__ import annotations

import random
import socket
import struct
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from simulators.modbus_server import ServerStats, Unit, answer_pdu

POISON = 0x7A7A  # every register of a broken answer: int16 x 0.1 -> 3135.4, float32 -> 3.25e35


@dataclass(frozen=True)
class Request:
    tid: int
    unit: int
    function: int
    start: int
    count: int


def mbap(tid: int, unit: int, pdu: bytes, pid: int = 0, length: int | None = None) -> bytes:
    """The MBAP header and the PDU; ``length`` overrides the honest length field."""
    return struct.pack(">HHHB", tid, pid, len(pdu) + 1 if length is None else length, unit) + pdu


def words(values: list[int]) -> bytes:
    return b"".join(v.to_bytes(2, "big") for v in values)


def registers_pdu(function: int, count: int, byte_count: int | None = None, extra: bytes = b"") -> bytes:
    """A read answer of ``count`` POISON registers; the byte count may lie."""
    data = words([POISON] * count)
    return bytes([function, len(data) if byte_count is None else byte_count]) + data + extra


def _other_read(function: int) -> int:
    return 3 if function == 4 else 4


# What a behaviour returns: the bytes to send (None: send nothing), and it
# may sleep first (a late answer) or close the connection (raise _Close).
Behaviour = Callable[["HostileModbusTcp", Request], bytes | None]


class _Close(Exception):
    """The device drops the connection instead of answering."""


def _good(server: HostileModbusTcp, r: Request) -> bytes | None:
    pdu = bytes([r.function]) + struct.pack(">HH", r.start, r.count)
    reply = answer_pdu(server.units, r.unit, pdu, server.stats)
    return None if reply is None else mbap(r.tid, r.unit, reply)


def _exception_codes(server: HostileModbusTcp, r: Request) -> bytes:
    """Every exception code from 0 to 255 in turn, for the function asked."""
    code = server.next_exception_code()
    return mbap(r.tid, r.unit, bytes([r.function | 0x80, code]))


def _late(server: HostileModbusTcp, r: Request) -> bytes:
    time.sleep(server.late_s)
    return mbap(r.tid, r.unit, registers_pdu(r.function, r.count))


def _garbage(server: HostileModbusTcp, r: Request) -> bytes:
    honest = mbap(r.tid, r.unit, registers_pdu(r.function, r.count))
    return bytes(server.random.randrange(256) for _ in honest)


def _close(server: HostileModbusTcp, r: Request) -> bytes:
    raise _Close


BEHAVIOURS: dict[str, Behaviour] = {
    "good": _good,
    # Answers to another question: issue 20, item 2.
    "other_read_function": lambda s, r: mbap(r.tid, r.unit, registers_pdu(_other_read(r.function), r.count)),
    "function_0x17": lambda s, r: mbap(r.tid, r.unit, registers_pdu(0x17, r.count)),
    "echo_06": lambda s, r: mbap(r.tid, r.unit, bytes([6]) + struct.pack(">HH", r.start, POISON)),
    "more_registers": lambda s, r: mbap(r.tid, r.unit, registers_pdu(r.function, r.count + 2)),
    "fewer_registers": lambda s, r: mbap(r.tid, r.unit, registers_pdu(r.function, r.count - 1)),
    "byte_count_odd": lambda s, r: mbap(r.tid, r.unit, registers_pdu(r.function, r.count, 2 * r.count + 1, b"\x7a")),
    "byte_count_high": lambda s, r: mbap(r.tid, r.unit, registers_pdu(r.function, r.count, 2 * r.count + 2)),
    "trailing_bytes": lambda s, r: mbap(r.tid, r.unit, registers_pdu(r.function, r.count, extra=b"\x7a\x7a")),
    "exception_other_function": lambda s, r: mbap(r.tid, r.unit, bytes([_other_read(r.function) | 0x80, 2])),
    # Held up before issue 20: they must stay failures.
    "wrong_transaction": lambda s, r: mbap(r.tid ^ 0x5A5A or 1, r.unit, registers_pdu(r.function, r.count)),
    "transaction_zero": lambda s, r: mbap(0, r.unit, registers_pdu(r.function, r.count)),
    "wrong_unit": lambda s, r: mbap(r.tid, (r.unit % 247) + 1, registers_pdu(r.function, r.count)),
    "wrong_protocol": lambda s, r: mbap(r.tid, r.unit, registers_pdu(r.function, r.count), pid=1),
    "length_lie": lambda s, r: mbap(r.tid, r.unit, registers_pdu(r.function, r.count),
                                    length=2 * r.count + 3 + 20),
    "truncated": lambda s, r: mbap(r.tid, r.unit, registers_pdu(r.function, r.count))[: 7 + r.count],
    "garbage": _garbage,
    "silent": lambda s, r: None,
    "late": _late,
    "exception_codes": _exception_codes,
    "close": _close,
}


@dataclass
class Counters:
    connections: int = 0
    idle_closes: int = 0
    flood_bytes: int = 0
    requests: dict[int, int] = field(default_factory=dict)


class HostileModbusTcp:
    """Modbus TCP on a real loopback socket; one thread per connection."""

    def __init__(self, behaviours: Mapping[int, str], units: Mapping[int, Unit] | None = None, *,
                 idle_close_s: float | None = None, flood_bytes_per_s: int = 0, late_s: float = 1.5,
                 seed: int = 20) -> None:
        unknown = set(behaviours.values()) - set(BEHAVIOURS)
        if unknown:
            raise ValueError(f"unknown behaviour(s) {sorted(unknown)}; known: {', '.join(BEHAVIOURS)}")
        self.behaviours = dict(behaviours)
        self.units = dict(units or {})
        self.idle_close_s = idle_close_s
        self.flood_bytes_per_s = flood_bytes_per_s
        self.late_s = late_s
        self.random = random.Random(seed)
        self.stats = ServerStats()
        self.counters = Counters()
        self._exception_code = 0
        self._lock = threading.Lock()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.2)
        self.port = int(self._sock.getsockname()[1])
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._conns: set[socket.socket] = set()

    def next_exception_code(self) -> int:
        with self._lock:
            code, self._exception_code = self._exception_code, (self._exception_code + 1) % 256
            return code

    def start(self) -> HostileModbusTcp:
        self._spawn(self._accept_loop)
        return self

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True, name=f"hostile-tcp-{self.port}")
        thread.start()
        self._threads.append(thread)

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.counters.connections += 1
                self._conns.add(conn)
            self._spawn(self._serve, conn)

    def _flood(self, conn: socket.socket, chunk: bytes) -> None:
        """Unsolicited bytes at the configured rate, until the peer hangs up."""
        try:
            while not self._stop.is_set():
                time.sleep(0.01)
                conn.sendall(chunk)
                with self._lock:
                    self.counters.flood_bytes += len(chunk)
        except OSError:
            return

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(0.05)
        buffer = b""
        flooding = False
        last_request = time.monotonic()
        try:
            while not self._stop.is_set():
                if self.idle_close_s is not None and time.monotonic() - last_request > self.idle_close_s:
                    with self._lock:
                        self.counters.idle_closes += 1
                    return
                try:
                    chunk = conn.recv(1024)
                except TimeoutError:
                    continue
                if not chunk:
                    return
                buffer += chunk
                while len(buffer) >= 12:
                    tid, _pid, length = struct.unpack(">HHH", buffer[:6])
                    if len(buffer) < 6 + length:
                        break
                    unit, pdu, buffer = buffer[6], buffer[7:6 + length], buffer[6 + length:]
                    last_request = time.monotonic()
                    start, count = struct.unpack(">HH", pdu[1:5])
                    request = Request(tid, unit, pdu[0], start, count)
                    with self._lock:
                        self.counters.requests[unit] = self.counters.requests.get(unit, 0) + 1
                    if self.flood_bytes_per_s and not flooding:
                        # No byte value 0 in the flood: it can never pass for an MBAP header.
                        chunk = bytes(self.random.randrange(1, 256) for _ in range(self.flood_bytes_per_s // 100))
                        conn.sendall(chunk)  # ahead of any answer
                        flooding = True
                        self._spawn(self._flood, conn, chunk)
                    behaviour = BEHAVIOURS[self.behaviours.get(unit, "silent")]
                    reply = behaviour(self, request)
                    if reply:
                        conn.sendall(reply)
        except (_Close, OSError):
            return
        finally:
            with self._lock:
                self._conns.discard(conn)
            conn.close()

    def stop(self) -> None:
        self._stop.set()
        try:
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes the accept loop at once
        except OSError:
            pass
        self._sock.close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in self._threads:
            thread.join(timeout=3)
