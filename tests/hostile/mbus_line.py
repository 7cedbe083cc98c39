"""Broken and hostile M-Bus meters, for simulators.mbus_meter.MbusLineServer
on a socat pty, and a babbler that floods a line.

A hostile meter answers only when it is addressed, as a real one does, so
it can share a line with good meters; what it answers is wrong in one way.
Its telegrams carry POISON values (energy, volume, power, flow,
temperatures), so a value taken from them is recognisable at the broker.
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import serial

from simulators.mbus_meter import CI_RSP_VARIABLE, HeatReading, SimulatedMbusMeter, long_frame

POISON = HeatReading(energy_wh=66_666_666, volume_l=6_666_666, power_w=666_666, flow_lh=66_666,
                     supply_dc=666, return_dc=-666, difference_ck=6_666, due_date_energy_wh=66_666_666)
POISON_VALUES = {name: float(value) for name, value in POISON.in_profile_units().items()}
C_SND_UD = 0x53  # a master's frame: SND_UD with the FCV bit


class HostileMeter(SimulatedMbusMeter):
    """A meter that answers with POISON telegrams, spoiled by ``spoil``."""

    def _telegrams(self, address: int) -> list[bytes]:
        return [self.spoil(frame) for frame in self.heat_telegrams(address, POISON)]

    def spoil(self, frame: bytes) -> bytes:
        return frame


class ForeignAddressMeter(HostileMeter):
    """Asked at its address, it answers with another meter's address in the A field."""

    def __init__(self, primary: int, identification: str, names: int) -> None:
        super().__init__(primary, identification)
        self.names = names

    def _telegrams(self, address: int) -> list[bytes]:
        return self.heat_telegrams(self.names, POISON)


class MasterControlMeter(HostileMeter):
    """Answers with a master's control field (SND_UD, 0x53): an echo or a second master."""

    def _telegrams(self, address: int) -> list[bytes]:
        header_and_records = [frame[7:-2] for frame in self.heat_telegrams(address, POISON)]
        return [long_frame(address, CI_RSP_VARIABLE, data, control=C_SND_UD) for data in header_and_records]


class ForeignIdMeter(HostileMeter):
    """Acknowledges a selection of its secondary address, then sends a
    telegram that carries another identification number."""

    def __init__(self, primary: int, identification: str, carries: str) -> None:
        super().__init__(primary, identification)
        self.carries = carries

    def _header(self) -> bytes:
        own, self.identification = self.identification, self.carries
        try:
            return super()._header()
        finally:
            self.identification = own


class AlternatingMeter(SimulatedMbusMeter):
    """Every other readout, the telegrams of another meter (POISON values,
    another identification number) come back: two meters on one primary
    address, or a gateway mixing up its answers. The good readouts are the
    meter's own, recorded in ``served``."""

    def __init__(self, primary: int, identification: str, foreign: str) -> None:
        super().__init__(primary, identification)
        self.foreign = foreign
        self.readouts = 0

    def reset_link(self) -> None:  # SND_NKE starts each readout
        super().reset_link()
        self.readouts += 1

    def _telegrams(self, address: int) -> list[bytes]:
        if self.readouts % 2:
            return super()._telegrams(address)
        own, self.identification = self.identification, self.foreign
        try:
            return self.heat_telegrams(address, POISON)
        finally:
            self.identification = own


class ChecksumLiar(HostileMeter):
    def spoil(self, frame: bytes) -> bytes:
        return frame[:-2] + bytes([(frame[-2] + 1) & 0xFF, frame[-1]])


class LengthLiar(HostileMeter):
    """The L fields promise 16 bytes more than come (the checksum is over what is sent)."""

    def spoil(self, frame: bytes) -> bytes:
        length = frame[1] + 16
        return bytes([0x68, length, length, 0x68]) + frame[4:]


class LengthFieldsDiffer(HostileMeter):
    def spoil(self, frame: bytes) -> bytes:
        return frame[:2] + bytes([frame[2] - 1]) + frame[3:]


class RandomBytesMeter(HostileMeter):
    def __init__(self, primary: int, identification: str, seed: int = 3) -> None:
        super().__init__(primary, identification)
        self.random = random.Random(seed)

    def spoil(self, frame: bytes) -> bytes:
        return bytes(self.random.randrange(256) for _ in frame)


class EndlessMoreMeter(HostileMeter):
    """Every telegram says 'more records follow' (DIF 0x1F), for ever."""

    def _telegrams(self, address: int) -> list[bytes]:
        data = self.heat_telegrams(address, POISON)[0][7:-2]
        if data[-1] != 0x1F:
            data += b"\x1f"
        return [long_frame(address, CI_RSP_VARIABLE, data)]


class ApplicationErrorMeter(HostileMeter):
    def _telegrams(self, address: int) -> list[bytes]:
        return [long_frame(address, 0x70, b"\x08")]  # application busy


class Babbler:
    """A device on an M-Bus or RS-485 line that never stops sending: random
    bytes, or an endless run of E5 acknowledgements."""

    def __init__(self, port: Path, pattern: bytes | None = None, bytes_per_s: int = 6_000_000,
                 seed: int = 5) -> None:
        self._serial = serial.Serial(str(port), timeout=0.1, write_timeout=0.5)
        generator = random.Random(seed)
        size = max(1, bytes_per_s // 200)
        self._chunk = (pattern * (size // len(pattern) + 1))[:size] if pattern else \
            bytes(generator.randrange(256) for _ in range(size))
        self.attempts = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"babbler-{port.name}")

    def start(self) -> Babbler:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.attempts += 1
            try:
                self._serial.write(self._chunk)
            except serial.SerialTimeoutException:
                continue  # nobody reads: the pty is full
            except (serial.SerialException, OSError):
                return
            time.sleep(0.005)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=3)
        self._serial.close()
