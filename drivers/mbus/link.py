"""Wired M-Bus I/O: one transaction at a time on a serial line or a
transparent TCP-to-serial gateway (pyserial's ``socket://host:port``).

Only reading commands are ever sent: SND_NKE (link reset), selection of a
secondary address, REQ_UD2 (read). Nothing here changes a meter.

An answer is taken only when it is the addressed meter's RSP_UD: a meter's
C field (not a master's frame: an echo, a second master), the A field of the
primary address polled, and, for a meter selected by its secondary address,
the identification number selected. Anything else is a MismatchedReply,
never a value. What arrives between transactions (a late answer, noise) is
drained, but at most FLOOD_BYTES of it: a line carrying more is flooded by a
device, and is closed so the next poll starts on a freshly opened line.
"""

from __future__ import annotations

import errno
import time

import serial

from drivers.core.errors import BusError, DecodeError, MismatchedReply
from drivers.core.ports import close_quietly
from drivers.mbus.frame import (
    MAX_FRAME_LENGTH,
    NETWORK_LAYER_ADDRESS,
    LongFrame,
    SingleChar,
    build_req_ud2,
    build_select_secondary,
    build_snd_nke,
    bytes_needed,
    is_rsp_ud,
    parse_frame,
)
from drivers.mbus.telegram import Telegram, decode_user_data

MAX_TELEGRAMS = 16  # a multi-telegram readout longer than this is a meter fault
FLOOD_BYTES = 4 * MAX_FRAME_LENGTH  # more than a few frames' worth between two transactions: a flood


def answer_timeout(baudrate: int) -> float:
    """EN 13757-2: a meter answers within 330 bit times + 50 ms; then its
    frame takes up to 261 characters of 11 bits. Both scale with the line."""
    bit = 1 / baudrate
    return 330 * bit + 0.05


class _Flooded(Exception):
    """More bytes waiting on the line than any answer could be."""


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
        self._serial: serial.Serial | None = None
        self._fcb: dict[int, bool] = {}
        self.idle_reconnects = 0  # a TCP gateway had closed the idle connection: reopened and asked again
        self.floods = 0  # times the line was closed because a device flooded it

    def _line(self) -> serial.Serial:
        if self._serial is None:
            try:
                # exclusive: a second master (another agent started by hand)
                # cannot open the line while this one holds it.
                self._serial = serial.serial_for_url(self.port, baudrate=self.baudrate, parity=self.parity,
                                                     bytesize=8, stopbits=1, timeout=self.timeout, exclusive=True)
            except (serial.SerialException, OSError, ValueError) as exc:
                if getattr(exc, "errno", None) in (errno.EAGAIN, errno.EWOULDBLOCK):
                    raise BusError(f"cannot open M-Bus line {self.port}: the port is in use by another process "
                                   "(another retrofit-agent, or a terminal program?); a line has one master") from None
                raise BusError(f"cannot open M-Bus line {self.port}: {exc}") from None
        return self._serial

    def close(self) -> None:
        close_quietly(self._serial)
        self._serial = None

    def _drain(self, line: serial.Serial) -> None:
        """Drop what arrived since the last answer, but never more than
        FLOOD_BYTES (pyserial's own reset of a socket:// line reads for as
        long as bytes keep coming)."""
        dropped = 0
        while waiting := line.in_waiting:
            dropped += len(line.read(min(waiting, FLOOD_BYTES)))
            if dropped > FLOOD_BYTES:
                raise _Flooded

    def _receive(self, line: serial.Serial, who: str) -> bytes:
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
                raise BusError(f"{who} on {self.port}: garbled answer: {exc}") from None
            if need == 0:
                return received
            if time.monotonic() > deadline:
                raise BusError(f"{who} on {self.port}: no answer within {self.timeout:.2f} s" if not received
                               else f"{who} on {self.port}: incomplete frame ({len(received)} bytes)")
            chunk = line.read(need)
            if chunk and not received:
                deadline = time.monotonic() + self.timeout + 261 * self.char_time
            received += chunk

    def _transact(self, request: bytes, who: str) -> bytes:
        error: BusError | None = None
        reopened = False
        attempts = 0
        while attempts <= self.retries:
            reused = self._serial is not None
            line = self._line()
            try:
                self._drain(line)
                line.write(request)
                answer = self._receive(line, who)
            except _Flooded:
                self.close()
                self.floods += 1
                raise BusError(f"{who} on {self.port}: more than {FLOOD_BYTES} bytes arrived unasked (a device "
                               "floods the line); line closed") from None
            except BusError as exc:
                error = exc
                attempts += 1
                continue
            except (serial.SerialException, OSError) as exc:
                self.close()
                if reused and not reopened:
                    # A TCP gateway closes connections idle for a while; the
                    # request never reached the line: ask again at once.
                    reopened = True
                    continue
                raise BusError(f"{who}: M-Bus line {self.port} failed: {exc}") from None
            if reopened:
                self.idle_reconnects += 1
            return answer
        assert error is not None
        raise error

    def _answer(self, answer: bytes, who: str, primary: int | None = None,
                identification: str | None = None) -> Telegram:
        """The telegram of an answer that is the addressed meter's RSP_UD.

        ``primary``: the A field the answer must carry (None after a
        selection: meters answer 0xFD with their own primary address).
        ``identification``: the secondary address the telegram must carry."""
        try:
            frame = parse_frame(answer)
        except DecodeError as exc:
            raise BusError(f"{who} on {self.port}: garbled answer: {exc}") from None
        if not isinstance(frame, LongFrame):
            raise BusError(f"{who} on {self.port}: expected RSP_UD, got {type(frame).__name__}")
        if not is_rsp_ud(frame.control):
            raise MismatchedReply(f"{who} on {self.port}: a frame with control field 0x{frame.control:02X} came "
                                  "instead of a meter's answer (RSP_UD, 0x08): an echo or a second master on the "
                                  "line; ignored", "control")
        if primary is not None and frame.address != primary:
            raise MismatchedReply(f"{who} on {self.port}: the answer names address {frame.address}, not "
                                  f"{primary}: another meter answered; ignored", "address")
        try:
            telegram = decode_user_data(frame.ci, frame.data)
        except DecodeError as exc:
            raise BusError(f"{who} on {self.port}: {exc}") from None
        carried = telegram.header.identification
        if identification is not None and carried is not None and carried.upper() != identification.upper():
            raise MismatchedReply(f"{who} on {self.port}: the selected meter's telegram carries identification "
                                  f"{carried}: another meter answered the selection; ignored", "meter")
        return telegram

    def _expect_ack(self, request: bytes, what: str) -> None:
        answer = self._transact(request, what)
        try:
            frame = parse_frame(answer)
        except DecodeError as exc:
            raise BusError(f"{what} on {self.port}: garbled answer: {exc}") from None
        if not isinstance(frame, SingleChar):
            raise BusError(f"{what} on {self.port}: expected the single character E5, got {type(frame).__name__}")

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
        if primary == NETWORK_LAYER_ADDRESS:
            who, expected = "the selected meter", None
        else:
            who, expected = f"meter {primary}", primary
        answer = self._transact(build_req_ud2(primary, True), who)
        self._fcb[primary] = False
        return self._answer(answer, who, primary=expected)

    def read(self, address: int | str) -> list[Telegram]:
        """A whole readout: every telegram until the meter says no more follow."""
        if isinstance(address, str):
            self.select(address)
            primary = NETWORK_LAYER_ADDRESS
        else:
            self.reset(address)
            primary = address
        who = f"meter {address}"
        telegrams: list[Telegram] = []
        carried: set[str] = set()
        for _ in range(MAX_TELEGRAMS):
            fcb = self._fcb.get(primary, True)
            answer = self._transact(build_req_ud2(primary, fcb), who)
            self._fcb[primary] = not fcb
            if isinstance(address, str):
                telegram = self._answer(answer, who, identification=address)
            else:
                telegram = self._answer(answer, who, primary=address)
            if telegram.header.identification is not None:
                carried.add(telegram.header.identification.upper())
            if len(carried) > 1:
                raise MismatchedReply(f"{who} on {self.port}: one readout mixes the telegrams of meters "
                                      f"{', '.join(sorted(carried))}; ignored", "meter")
            telegrams.append(telegram)
            if not telegram.more_records_follow:
                return telegrams
        raise BusError(f"{who} on {self.port}: more than {MAX_TELEGRAMS} telegrams in one readout")
