"""Simulated wired M-Bus heat meters on a serial line (a socat pty in tests).

Each meter answers SND_NKE with E5 and REQ_UD2 with RSP_UD telegrams built
from its state (energy integrating power, volume integrating flow,
temperatures consistent with the power), split over two telegrams (DIF 0x1F:
more records follow). Meters can be selected by secondary address with
wildcards; when several answer at once the line carries garbage, as a real
bus does. A replay mode serves recorded telegrams instead. A line can be
noisy (a FaultPlan): answers lost, cut short, garbled, with a wrong checksum
or late, as on a long M-Bus line with a weak level converter.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from decimal import Decimal

import serial

from drivers.core.errors import DecodeError
from drivers.mbus.frame import ACK, LongFrame, ShortFrame, bytes_needed, checksum, parse_frame
from simulators.modbus_server import FaultPlan, read_burst

# What goes wrong on an M-Bus line (FaultPlan names). "busy" is a Modbus
# exception response; an M-Bus slave has none.
MBUS_FAULTS = ("silent", "crc", "garbage", "partial", "slow")
# The widest values the telegrams carry: the identification number is 8 BCD
# digits, energy (Wh) and volume (litres) are 32-bit integers (type B, signed).
MAX_IDENTIFICATION = 99_999_999
MAX_INT32 = 2**31 - 1

C_RSP_UD = 0x08
CI_RSP_VARIABLE = 0x72
MEDIUM_HEAT = 0x04


def manufacturer_id(code: str) -> int:
    """Three letters -> the 2-byte EN 13757-3 manufacturer id."""
    a, b, c = (ord(ch) - 64 for ch in code.upper())
    return (a << 10) | (b << 5) | c


def long_frame(address: int, ci: int, data: bytes, control: int = C_RSP_UD) -> bytes:
    body = bytes([control, address, ci]) + data
    return bytes([0x68, len(body), len(body), 0x68]) + body + bytes([checksum(body), 0x16])


@dataclass
class HeatMeterState:
    """A heat meter's physics: power and flow consistent, counters integrating exactly."""

    power_w: float = 12_000.0
    supply_c: float = 70.0
    return_c: float = 45.0
    energy_wh: Decimal = Decimal(12_345_678)
    volume_l: Decimal = Decimal(456_789)
    due_date_energy_wh: Decimal = Decimal(12_000_000)
    last_t: float | None = None

    @property
    def flow_lh(self) -> int:
        # P = rho * c * flow * dT, water: 1.163 Wh per litre and kelvin
        return round(self.power_w / (1.163 * (self.supply_c - self.return_c)))

    def advance(self, t: float) -> None:
        if self.last_t is not None and t > self.last_t:
            hours = Decimal(repr(t - self.last_t)) / 3600
            self.energy_wh += (Decimal(repr(self.power_w)) * hours).quantize(Decimal(1))
            self.volume_l += (Decimal(self.flow_lh) * hours).quantize(Decimal(1))
        self.last_t = t


@dataclass(frozen=True)
class HeatReading:
    """What a heat meter puts in its telegrams, as the integers on the wire."""

    energy_wh: int
    volume_l: int
    power_w: int
    flow_lh: int
    supply_dc: int  # 0.1 Cel
    return_dc: int
    difference_ck: int  # 0.01 K
    due_date_energy_wh: int

    def in_profile_units(self) -> dict[str, Decimal | int | float]:
        """The same values in the units of the mbus-heat profile."""
        return {"energy_heat": Decimal(self.energy_wh) / 1000, "volume": Decimal(self.volume_l) / 1000,
                "power_heat": self.power_w, "flow": Decimal(self.flow_lh) / 1000,
                "temperature_supply": Decimal(self.supply_dc) / 10, "temperature_return": Decimal(self.return_dc) / 10,
                "temperature_difference": Decimal(self.difference_ck) / 100,
                "energy_heat_due_date": Decimal(self.due_date_energy_wh) / 1000}


@dataclass
class SimulatedMbusMeter:
    primary: int
    identification: str  # 8 digits
    manufacturer: str = "RFA"
    version: int = 1
    medium: int = MEDIUM_HEAT
    state: HeatMeterState = field(default_factory=HeatMeterState)
    replay: list[bytes] | None = None  # recorded RSP_UD frames served instead of the state
    access: int = 0
    served: list[dict[str, Decimal | int | float]] = field(default_factory=list)
    _next: int = 0
    _last_fcb: bool | None = None

    def reset_link(self) -> None:
        self._next = 0
        self._last_fcb = None

    def answer(self, fcb: bool, address: int) -> bytes:
        """The telegram for a REQ_UD2 (the next one when the FCB toggled)."""
        if self._last_fcb is not None and fcb == self._last_fcb:
            index = max(0, self._next - 1)  # same FCB: repeat the last answer
        else:
            index = self._next
        self._last_fcb = fcb
        telegrams = self.replay if self.replay is not None else self._telegrams(address)
        index = min(index, len(telegrams) - 1)
        self._next = 0 if index + 1 >= len(telegrams) else index + 1
        self.sent(telegrams[index])
        return telegrams[index]

    def sent(self, telegram: bytes) -> None:
        """The telegram that went on the line for a REQ_UD2 (the building's
        meter records what it carried in the ground truth)."""

    def _header(self) -> bytes:
        self.access = (self.access + 1) & 0xFF
        return (bytes.fromhex(self.identification)[::-1] + manufacturer_id(self.manufacturer).to_bytes(2, "little")
                + bytes([self.version, self.medium, self.access, 0x00]) + b"\x00\x00")

    def present(self) -> bool:
        """Does the meter answer now? (A building's meter can be offline.)"""
        return True

    def _telegrams(self, address: int) -> list[bytes]:
        s = self.state
        s.advance(time.monotonic())
        reading = HeatReading(int(s.energy_wh), int(s.volume_l), round(s.power_w), s.flow_lh,
                              round(s.supply_c * 10), round(s.return_c * 10),
                              round((s.supply_c - s.return_c) * 100), int(s.due_date_energy_wh))
        self.served.append(reading.in_profile_units())
        return self.heat_telegrams(address, reading)

    def heat_telegrams(self, address: int, r: HeatReading) -> list[bytes]:
        """Two RSP_UD telegrams (DIF 0x1F between them: more records follow)."""
        first = (b"\x04\x03" + r.energy_wh.to_bytes(4, "little")  # energy, Wh
                 + b"\x04\x13" + r.volume_l.to_bytes(4, "little")  # volume, litres
                 + b"\x04\x2B" + r.power_w.to_bytes(4, "little")  # power, W
                 + b"\x04\x3B" + r.flow_lh.to_bytes(4, "little")  # volume flow, l/h
                 + b"\x1F")  # more records follow
        second = (b"\x02\x5A" + r.supply_dc.to_bytes(2, "little", signed=True)  # flow temperature, 0.1 Cel
                  + b"\x02\x5E" + r.return_dc.to_bytes(2, "little", signed=True)  # return temperature, 0.1 Cel
                  + b"\x02\x61" + r.difference_ck.to_bytes(2, "little", signed=True)  # difference, 0.01 K
                  + b"\x44\x03" + r.due_date_energy_wh.to_bytes(4, "little"))  # storage 1: due-date energy
        return [long_frame(address, CI_RSP_VARIABLE, self._header() + first),
                long_frame(address, CI_RSP_VARIABLE, self._header() + second)]

    def matches(self, pattern: bytes) -> bool:
        """Does a selection (8 bytes: id BCD LSB first, manufacturer, version, medium) mean this meter?"""
        wanted = pattern[:4][::-1].hex().upper()
        if any(w != "F" and w != h for w, h in zip(wanted, self.identification.upper(), strict=True)):
            return False
        man = int.from_bytes(pattern[4:6], "little")
        return ((man in (0xFFFF, manufacturer_id(self.manufacturer)))
                and pattern[6] in (0xFF, self.version) and pattern[7] in (0xFF, self.medium))


class MbusLineServer:
    """Several simulated meters on one serial line."""

    def __init__(self, meters: list[SimulatedMbusMeter], port: str, baudrate: int = 2400,
                 faults: FaultPlan | None = None) -> None:
        self.meters = meters
        self.faults = faults  # may be swapped while running (a noisy period)
        self.selected: list[SimulatedMbusMeter] = []
        self.requests: list[bytes] = []
        self._serial = serial.Serial(port, baudrate=baudrate, timeout=0.05)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"sim-mbus-{port}", daemon=True)

    def start(self) -> MbusLineServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._serial.close()

    def _loop(self) -> None:
        buffer = b""
        while not self._stop.is_set():
            try:
                chunk = read_burst(self._serial)
            except (serial.SerialException, OSError, TypeError):
                return
            if not chunk:
                buffer = b""
                continue
            buffer += chunk
            while buffer:
                try:
                    need = bytes_needed(buffer)
                except DecodeError:
                    buffer = buffer[1:]  # resynchronise on the next start byte
                    continue
                if need:
                    break
                length = len(buffer) if buffer[0] == ACK else (5 if buffer[0] == 0x10 else buffer[1] + 6)
                frame, buffer = buffer[:length], buffer[length:]
                self.requests.append(frame)
                reply = self._noisy(frame)
                if reply:
                    try:
                        self._serial.write(reply)
                    except (serial.SerialException, OSError):
                        return

    def _noisy(self, raw: bytes) -> bytes | None:
        """The answer as the line delivers it: a fault is chosen per request
        (by the address asked), before the meter answers, so a lost answer
        is one the meter never gave."""
        plan = self.faults
        address = raw[2] if raw[:1] == b"\x10" and len(raw) > 2 else raw[5] if len(raw) > 5 else 0
        fault = plan.pick(address) if plan is not None else None
        if fault == "silent":
            return None
        reply = self._answer(raw)
        if not reply or fault is None or plan is None:
            return reply
        if fault == "slow":
            time.sleep(plan.slow_s)
            return reply
        if fault == "crc" and len(reply) > 2:  # a long frame with a wrong checksum byte
            return reply[:-2] + bytes([reply[-2] ^ 0x5A]) + reply[-1:]
        return plan.garble(reply, "garbage" if fault == "crc" else fault)

    def _answer(self, raw: bytes) -> bytes | None:
        try:
            frame = parse_frame(raw)
        except DecodeError:
            return None  # a meter ignores a frame with a bad checksum
        if isinstance(frame, ShortFrame):
            control, address = frame.control, frame.address
            targets = [m for m in (self.selected if address == 0xFD else
                                   [m for m in self.meters if m.primary == address]) if m.present()]
            if control == 0x40:  # SND_NKE
                for meter in targets:
                    meter.reset_link()
                return bytes([ACK]) if targets else None
            if control & 0x4F == 0x4B:  # REQ_UD2, FCB in bit 5
                if not targets:
                    return None
                answers = [m.answer(bool(control & 0x20), address) for m in targets]
                if len(answers) == 1:
                    return answers[0]
                # Several meters answer at once: what reaches the master is garbage.
                return bytes(a ^ b for a, b in zip(answers[0], answers[1], strict=False)) or b"\x00"
            return None
        if isinstance(frame, LongFrame) and frame.ci == 0x52 and frame.address == 0xFD:
            self.selected = [m for m in self.meters if m.present() and m.matches(bytes(frame.data))]
            for meter in self.selected:
                meter.reset_link()
            return bytes([ACK]) if self.selected else None
        return None
