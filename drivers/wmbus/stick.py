"""The receivers' I/O: a USB stick on a serial port, or an SDR decoder's output lines.

Each receiver hands over what it heard as :class:`Received` telegrams and
raises BusError when the receiver itself fails (port gone, command exited);
the pipeline then waits and asks again, and the receiver reopens. The only
bytes ever written are the stick's own configuration (its receive mode,
volatile memory): a collector never transmits to a meter.
"""

from __future__ import annotations

import os
import select
import shlex
import subprocess
import time
from typing import Protocol

import serial

from drivers.core.errors import BusError, DecodeError, FrameError
from drivers.core.ports import close_quietly
from drivers.wmbus import amb8465, im871a
from drivers.wmbus.received import Received
from drivers.wmbus.sdr import parse_line

MAX_LINE = 8192  # an SDR line longer than this is no telegram: dropped, counted
SETTINGS_ANSWER_S = 2.0  # a stick answers a settings query in milliseconds


class Receiver(Protocol):
    where: str

    @property
    def garbled(self) -> int: ...  # frames or lines the receiver's framing rejected (bad CRC, checksum)

    def read(self, timeout: float) -> list[Received]:
        """Telegrams heard within ``timeout`` seconds (may be none); BusError when the receiver fails."""
        ...

    def close(self) -> None: ...


class SerialStick:
    """An iM871A or AMB8465 on a serial port: set to its modes once per opening."""

    def __init__(self, stick: str, port: str, baudrate: int, modes: tuple[str, ...]) -> None:
        if stick not in ("im871a", "amb8465"):
            raise ValueError(f"not a serial stick: {stick}")
        self.stick = stick
        self.port = port
        self.baudrate = baudrate
        self.modes = modes
        self.where = f"{stick} on {port}"
        # Checked now: a mode the stick cannot take is a config error, not a failing receiver.
        self._configure = (im871a.set_config_request(modes) if stick == "im871a"
                           else amb8465.set_mode_request(modes))
        self._serial: serial.Serial | None = None
        self.rssi = True  # AMB8465: whether an RSSI byte follows each telegram (read from the stick)
        self._decoder: im871a.HciDecoder | amb8465.AmberDecoder = self._new_decoder()
        self._rejected_before = 0
        self._early = b""  # what came before the stick's settings were known: decoded with them

    def _new_decoder(self) -> im871a.HciDecoder | amb8465.AmberDecoder:
        return im871a.HciDecoder() if self.stick == "im871a" else amb8465.AmberDecoder(rssi=self.rssi)

    def _read_rssi_setting(self, line: serial.Serial) -> bool:
        """The AMB8465's RSSI_Enable, read (never written: it lives in the module's flash).

        A telegram that comes before the answer is kept and decoded once
        the setting is known, so none is lost for asking.
        """
        line.write(amb8465.get_request(amb8465.RSSI_ENABLE))
        line.flush()
        probe = amb8465.AmberDecoder(rssi=False)  # a confirmation never carries an RSSI byte
        seen = b""
        deadline = time.monotonic() + SETTINGS_ANSWER_S
        while (left := deadline - time.monotonic()) > 0:
            line.timeout = min(left, 0.2)
            data = line.read(1)
            if data:
                data += line.read(line.in_waiting)
            seen += data
            for message in probe.feed(data):
                value = amb8465.setting(message, amb8465.RSSI_ENABLE)
                if value is not None:
                    self._early = seen
                    return value != 0
        raise BusError(f"{self.where}: the stick did not answer the query of its RSSI_Enable setting within "
                       f"{SETTINGS_ANSWER_S:g} s (an AMB8465 in command mode at {self.baudrate} baud?)")

    @property
    def garbled(self) -> int:
        decoder = self._decoder
        now = decoder.crc_errors if isinstance(decoder, im871a.HciDecoder) else decoder.checksum_errors
        return self._rejected_before + now

    def _line(self) -> serial.Serial:
        if self._serial is None:
            try:
                line = serial.serial_for_url(self.port, baudrate=self.baudrate, timeout=1.0)
            except (serial.SerialException, OSError, ValueError) as exc:
                raise BusError(f"{self.where}: cannot open the port: {exc}") from None
            try:
                line.reset_input_buffer()
                if self.stick == "amb8465":
                    self.rssi = self._read_rssi_setting(line)
                line.write(self._configure)
                line.flush()
            except (serial.SerialException, OSError) as exc:
                line.close()
                raise BusError(f"{self.where}: cannot set the receive mode: {exc}") from None
            except BusError:
                line.close()
                raise
            self._serial = line
            self._rejected_before = self.garbled
            self._decoder = self._new_decoder()
        return self._serial

    def read(self, timeout: float) -> list[Received]:
        line = self._line()
        data, self._early = self._early, b""  # what came while the settings were asked for: no wait for it
        try:
            if not data:
                if line.timeout != timeout:
                    line.timeout = timeout
                data = line.read(1)
                if data:
                    data += line.read(line.in_waiting)
        except (serial.SerialException, OSError) as exc:
            self.close()
            raise BusError(f"{self.where}: reading failed: {exc}") from None
        if not data:
            return []
        out = []
        for message in self._decoder.feed(data):
            received = (im871a.to_received(message) if isinstance(message, im871a.HciMessage)
                        else amb8465.to_received(message))
            if received is not None:
                out.append(received)
        return out

    def close(self) -> None:
        close_quietly(self._serial)
        self._serial = None


class CommandReceiver:
    """An SDR decoder the agent runs (rtl_433 -F json, rtl_wmbus): one telegram per output line."""

    def __init__(self, command: str) -> None:
        self.command = command
        self.argv = shlex.split(command)
        self.where = f"`{self.argv[0] if self.argv else command}`"
        self.garbled = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._partial = b""

    def _running(self) -> subprocess.Popen[bytes]:
        if self._process is None:
            try:
                self._process = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                                 stderr=subprocess.DEVNULL)
            except OSError as exc:
                raise BusError(f"{self.where}: cannot start the SDR decoder: {exc.strerror}") from None
            self._partial = b""
        return self._process

    def read(self, timeout: float) -> list[Received]:
        process = self._running()
        assert process.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            ready, _, _ = select.select([process.stdout], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                return []
            chunk = os.read(process.stdout.fileno(), 65536)
            if not chunk:
                code = process.wait()
                self._process = None
                raise BusError(f"{self.where} exited with status {code}")
            *lines, self._partial = (self._partial + chunk).split(b"\n")
            if len(self._partial) > MAX_LINE:
                self._partial, self.garbled = b"", self.garbled + 1
            out = []
            for raw in lines:
                try:
                    received = parse_line(raw.decode("utf-8", "replace"))
                except (DecodeError, FrameError):
                    self.garbled += 1
                    continue
                if received is not None:
                    out.append(received)
            if out:
                return out

    def close(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=3)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
