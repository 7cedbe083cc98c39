"""Amber / Würth Elektronik AMB8465 (Metis) command framing: encode and decode, no I/O.

In command mode every message is::

    FF | command | length | payload | [RSSI] | checksum

with the checksum the XOR of all bytes before it, start byte included. A
confirmation carries the request's command with bit 0x80 set. A received
telegram comes as CMD_DATA_IND (0x03): the payload is the telegram from
the C-field on (L-field and CRCs removed) and, when RSSI output is on, one
RSSI byte follows it, not counted in the length. In transparent mode
(UART_CMD_Out_Enable off) a telegram arrives bare, L-field first, the RSSI
byte counted in the L-field.

Modes are set with CMD_SET_MODE_REQ (volatile memory only): the collector
("other") modes that receive what meters send.

Whether the RSSI byte follows a data indication is the module's
non-volatile user setting RSSI_Enable (memory position 69). A decoder
that guesses wrong loses every frame (the checksum lands one byte off), so
the host reads the setting with CMD_GET_REQ before listening, never writes
it: changing it would wear the module's flash, and reading is enough.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from drivers.core.errors import FrameError
from drivers.wmbus.received import Received

START = 0xFF
CONFIRM = 0x80
CMD_DATA_IND = 0x03
CMD_SET_MODE_REQ = 0x04
CMD_RESET_REQ = 0x05
CMD_GET_REQ = 0x0A
CMD_SERIALNO_REQ = 0x0B
CMD_FWV_REQ = 0x0C

# Receive modes of a collector for what meters transmit.
MODES: dict[frozenset[str], int] = {
    frozenset({"s1"}): 0x03,  # S2: receives S1 and S1-m
    frozenset({"s1m"}): 0x03,
    frozenset({"t1"}): 0x08,  # T2-other
    frozenset({"c1"}): 0x0E,  # C2-other
    frozenset({"c1", "t1"}): 0x09,  # C2/T2-other
}

MAX_PAYLOAD = 255
RSSI_ENABLE = 69  # memory position of the user setting RSSI_Enable (1: an RSSI byte after each telegram)


def checksum(data: bytes) -> int:
    value = 0
    for byte in data:
        value ^= byte
    return value


def rssi_dbm(raw: int) -> float:
    """The module's RSSI byte (two's complement, half-dB steps) in dBm."""
    signed = raw - 256 if raw >= 128 else raw
    return signed / 2 - 74


@dataclass(frozen=True)
class AmberMessage:
    command: int
    payload: bytes
    rssi_raw: int | None = None

    @property
    def rssi_dbm(self) -> float | None:
        return None if self.rssi_raw is None else rssi_dbm(self.rssi_raw)


def encode(message: AmberMessage) -> bytes:
    if len(message.payload) > MAX_PAYLOAD:
        raise FrameError(f"AMB8465 payload of {len(message.payload)} bytes exceeds {MAX_PAYLOAD}")
    body = bytes([START, message.command, len(message.payload)]) + message.payload
    if message.rssi_raw is not None:
        body += bytes([message.rssi_raw & 0xFF])
    return body + bytes([checksum(body)])


def set_mode_request(modes: Iterable[str]) -> bytes:
    wanted = frozenset(mode.lower() for mode in modes)
    code = MODES.get(wanted)
    if code is None:
        choices = ", ".join("+".join(sorted(m)) for m in MODES)
        raise FrameError(f"the AMB8465 cannot listen to {'+'.join(sorted(wanted))}; it can: {choices}")
    return encode(AmberMessage(CMD_SET_MODE_REQ, bytes([code])))


def get_request(position: int, length: int = 1) -> bytes:
    """CMD_GET_REQ: read ``length`` bytes of the user settings from ``position`` (nothing is written)."""
    return encode(AmberMessage(CMD_GET_REQ, bytes([position, length])))


def get_confirmation(position: int, values: bytes) -> bytes:
    """What the module answers a CMD_GET_REQ: position, length, the settings' bytes."""
    return encode(AmberMessage(CMD_GET_REQ | CONFIRM, bytes([position, len(values)]) + values))


def setting(message: AmberMessage, position: int) -> int | None:
    """The value of the user setting at ``position`` if ``message`` is the confirmation that carries it."""
    payload = message.payload
    if message.command != CMD_GET_REQ | CONFIRM or len(payload) < 3 or payload[0] > position:
        return None
    index = 2 + position - payload[0]
    return payload[index] if position - payload[0] < payload[1] and index < len(payload) else None


def telegram_indication(telegram: bytes, rssi_raw: int | None = None) -> bytes:
    """What the module sends in command mode for a received (CRC-less) telegram."""
    if not telegram or telegram[0] != len(telegram) - 1:
        raise FrameError("telegram_indication needs a CRC-less telegram whose L-field matches")
    return encode(AmberMessage(CMD_DATA_IND, telegram[1:], rssi_raw))


def transparent_telegram(telegram: bytes, rssi_raw: int | None = None) -> bytes:
    """What the module sends in transparent mode: L-field (counting RSSI) first."""
    if not telegram or telegram[0] != len(telegram) - 1:
        raise FrameError("transparent_telegram needs a CRC-less telegram whose L-field matches")
    if rssi_raw is None:
        return telegram
    return bytes([telegram[0] + 1]) + telegram[1:] + bytes([rssi_raw & 0xFF])


def to_received(message: AmberMessage) -> Received | None:
    if message.command != CMD_DATA_IND:
        return None
    return Received(bytes([len(message.payload)]) + message.payload, rssi_dbm=message.rssi_dbm,
                    crcs=False)  # the stick checks and removes them


class AmberDecoder:
    """Command-mode byte stream in, messages out; resynchronises on bad checksums.

    ``rssi`` says whether the module was configured to append an RSSI byte
    to data indications (it is not counted in the length, so the decoder
    must know). Confirmations (command | 0x80) never carry one.
    """

    def __init__(self, rssi: bool = True) -> None:
        self._rssi = rssi
        self._buffer = bytearray()
        self.discarded = 0
        self.checksum_errors = 0

    def feed(self, data: bytes) -> list[AmberMessage]:
        self._buffer += data
        messages: list[AmberMessage] = []
        while True:
            start = self._buffer.find(START)
            if start < 0:
                self.discarded += len(self._buffer)
                self._buffer.clear()
                return messages
            if start:
                self.discarded += start
                del self._buffer[:start]
            if len(self._buffer) < 3:
                return messages
            command = self._buffer[1]
            length = self._buffer[2]
            has_rssi = self._rssi and command == CMD_DATA_IND
            total = 3 + length + (1 if has_rssi else 0) + 1
            if len(self._buffer) < total:
                return messages
            frame = bytes(self._buffer[:total])
            if checksum(frame[:-1]) != frame[-1]:
                self.checksum_errors += 1
                self.discarded += 1
                del self._buffer[:1]
                continue
            del self._buffer[:total]
            rssi = frame[-2] if has_rssi else None
            messages.append(AmberMessage(command, frame[3 : 3 + length], rssi))

    @property
    def pending(self) -> int:
        return len(self._buffer)
