"""Wired M-Bus I/O: one transaction at a time on a serial line or a
transparent TCP-to-serial gateway (pyserial's ``socket://host:port``).

Only reading commands are ever sent: SND_NKE (link reset), selection of a
secondary address, REQ_UD2 (read). Nothing here changes a meter.
"""

from __future__ import annotations

import time

import serial

from drivers.core.errors import BusError, DecodeError
from drivers.mbus import (
    NETWORK_LAYER_ADDRESS,
    LongFrame,
    SingleChar,
    Telegram,
    build_req_ud2,
    build_select_secondary,
    build_snd_nke,
    bytes_needed,
    decode_user_data,
    parse_frame,
)

MAX_TELEGRAMS = 16  # a multi-telegram readout longer than this is a meter fault


def answer_timeout(baudrate: int) -> float:
    """EN 13757-2: a meter answers within 330 bit times + 50 ms; then its
    frame takes up to 261 characters of 11 bits. Both scale with the line."""
    bit = 1 / baudrate
    return 330 * bit + 0.05


class MbusLink:
    """A read-only M-Bus master on one line. Not thread-safe: one bus worker owns it."""

    def __init__(self, port: str, baudrate: int = 2400, parity: str = "E", timeout: float | None = None,
                 retries: int = 2) -> None:
        self.port = port
        self.baudrate = baudrate
        self.parity = parity
        self.timeout = timeout if timeout is not None else answer_timeout(baudrate)
        self.retries = retries
        self.char_time = 11 / baudrate
        self._serial: serial.SerialBase | None = None
        self._fcb: dict[int, bool] = {}

    def _line(self) -> serial.SerialBase:
        if self._serial is None:
            try:
                self._serial = serial.serial_for_url(self.port, baudrate=self.baudrate, parity=self.parity,
                                                     bytesize=8, stopbits=1, timeout=self.timeout)
            except (serial.SerialException, OSError, ValueError) as exc:
                raise BusError(f"cannot open M-Bus line {self.port}: {exc}") from None
        return self._serial

    def close(self) -> None:
        if self._serial is not None:
            try:
                self._serial.close()
            except (serial.SerialException, OSError):
                pass
            self._serial = None

    def _receive(self, line: serial.SerialBase) -> bytes:
        """One frame, or BusError after the answer timeout; the frame's own
        length drives how much is read, so a whole frame costs no waiting."""
        received = b""
        started = time.monotonic()
        # Silence is decided after the answer timeout; once the first byte is
        # in, the frame itself may take up to 261 characters more.
        deadline = started + self.timeout
        while True:
            try:
                need = bytes_needed(received)
            except DecodeError as exc:
                raise BusError(f"garbled answer on {self.port}: {exc}") from None
            if need == 0:
                return received
            if time.monotonic() > deadline:
                raise BusError(f"no answer on {self.port} within {self.timeout:.2f} s"
                               if not received else f"incomplete frame on {self.port} ({len(received)} bytes)")
            chunk = line.read(need)
            if chunk and not received:
                deadline = time.monotonic() + self.timeout + 261 * self.char_time
            received += chunk

    def _transact(self, request: bytes) -> bytes:
        line = self._line()
        error: BusError | None = None
        for _attempt in range(self.retries + 1):
            try:
                line.reset_input_buffer()
                line.write(request)
                return self._receive(line)
            except BusError as exc:
                error = exc
            except (serial.SerialException, OSError) as exc:
                self.close()
                raise BusError(f"M-Bus line {self.port} failed: {exc}") from None
        assert error is not None
        raise error

    def _expect_ack(self, request: bytes, what: str) -> None:
        answer = self._transact(request)
        try:
            frame = parse_frame(answer)
        except DecodeError as exc:
            raise BusError(f"{what}: garbled answer: {exc}") from None
        if not isinstance(frame, SingleChar):
            raise BusError(f"{what}: expected the single character E5, got {type(frame).__name__}")

    def reset(self, address: int) -> None:
        """SND_NKE: the meter answers E5 and starts its FCB afresh."""
        self._expect_ack(build_snd_nke(address), f"SND_NKE to {address}")
        self._fcb[address] = True

    def select(self, identification: str) -> None:
        """Select a meter by its 8-digit secondary address (F = wildcard nibble)."""
        self._expect_ack(build_select_secondary(identification), f"selection of {identification}")
        self._fcb[NETWORK_LAYER_ADDRESS] = True

    def probe_primary(self, address: int) -> Telegram | None:
        """The first telegram of the meter at a primary address, or None when nobody answers."""
        try:
            self.reset(address)
            return self._first_telegram(address)
        except BusError:
            return None

    def probe_secondary(self, pattern: str) -> tuple[str, Telegram | None]:
        """Select by a (wildcard) pattern and read: ("none", None) when no meter
        acknowledges, ("one", telegram) for a clean answer, ("collision", None)
        when several meters answered at once."""
        try:
            self.select(pattern)
        except BusError as exc:
            return ("collision", None) if "garbled" in str(exc) else ("none", None)
        try:
            return "one", self._first_telegram(NETWORK_LAYER_ADDRESS)
        except BusError:
            return "collision", None

    def _first_telegram(self, primary: int) -> Telegram:
        answer = self._transact(build_req_ud2(primary, True))
        self._fcb[primary] = False
        try:
            frame = parse_frame(answer)
            if not isinstance(frame, LongFrame):
                raise DecodeError(f"expected RSP_UD, got {type(frame).__name__}")
            return decode_user_data(frame.ci, frame.data)
        except DecodeError as exc:
            raise BusError(f"garbled answer: {exc}") from None

    def read(self, address: int | str) -> list[Telegram]:
        """A whole readout: every telegram until the meter says no more follow."""
        if isinstance(address, str):
            self.select(address)
            primary = NETWORK_LAYER_ADDRESS
        else:
            self.reset(address)
            primary = address
        telegrams: list[Telegram] = []
        for _ in range(MAX_TELEGRAMS):
            fcb = self._fcb.get(primary, True)
            answer = self._transact(build_req_ud2(primary, fcb))
            self._fcb[primary] = not fcb
            try:
                frame = parse_frame(answer)
                if not isinstance(frame, LongFrame):
                    raise DecodeError(f"expected RSP_UD, got {type(frame).__name__}")
                telegram = decode_user_data(frame.ci, frame.data)
            except DecodeError as exc:
                raise BusError(f"unit {address}: {exc}") from None
            telegrams.append(telegram)
            if not telegram.more_records_follow:
                return telegrams
        raise BusError(f"unit {address}: more than {MAX_TELEGRAMS} telegrams in one readout")
