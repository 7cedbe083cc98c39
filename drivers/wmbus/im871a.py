"""IMST iM871A (and iM170A) HCI framing: encode and decode, no I/O.

Every HCI message is::

    A5 | ctrl<<4 | endpoint | message id | length | payload | [timestamp 4] | [RSSI 1] | [CRC 2]

The control nibble says which optional fields follow the payload: 0x8 a
CRC-16 (X.25: reflected polynomial 0x1021, initial 0xFFFF, complemented,
least significant byte first, over everything after the start byte), 0x4
an RSSI byte, 0x2 a 32-bit timestamp. A received telegram arrives as
endpoint 2 (radio link), message 0x03 (WMBUSMSG_IND) whose payload is the
telegram from the C-field on, L-field and block CRCs removed.

The stick is configured with DEVMGMT SET_CONFIG (volatile, never NVM): the
device mode "other" (a collector) and the link mode. Configuring the stick
is not a write to any meter.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from drivers.core.errors import FrameError
from drivers.wmbus.received import Received

SOF = 0xA5
CTRL_CRC = 0x8
CTRL_RSSI = 0x4
CTRL_TIMESTAMP = 0x2

ENDPOINT_DEVMGMT = 0x01
ENDPOINT_RADIOLINK = 0x02

DEVMGMT_PING_REQ = 0x01
DEVMGMT_PING_RSP = 0x02
DEVMGMT_SET_CONFIG_REQ = 0x03
DEVMGMT_SET_CONFIG_RSP = 0x04
DEVMGMT_GET_CONFIG_REQ = 0x05
DEVMGMT_GET_CONFIG_RSP = 0x06
DEVMGMT_GET_DEVICEINFO_REQ = 0x0F
DEVMGMT_GET_DEVICEINFO_RSP = 0x10
RADIOLINK_WMBUSMSG_IND = 0x03

# Link modes of SET_CONFIG. C1 and T1 together (firmware 1.4 and later)
# share the code with the iM170A's N1a.
LINK_MODES: dict[frozenset[str], int] = {
    frozenset({"s1"}): 0x00,
    frozenset({"s1m"}): 0x01,
    frozenset({"t1"}): 0x03,
    frozenset({"c1"}): 0x06,  # C1, frame format A (format B telegrams arrive as well)
    frozenset({"c1", "t1"}): 0x0A,
}

DEVICE_MODE_OTHER = 0x00  # a collector, not a meter
IIFLAG1_DEVICE_MODE = 0x01
IIFLAG1_LINK_MODE = 0x02
IIFLAG2_AUTO_POWER_SAVING = 0x08
IIFLAG2_AUTO_RSSI = 0x10
IIFLAG2_AUTO_TIMESTAMP = 0x20

HEADER = 4
MAX_PAYLOAD = 255


def crc16_x25(data: bytes) -> int:
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x8408 if crc & 1 else crc >> 1
    return crc ^ 0xFFFF


@dataclass(frozen=True)
class HciMessage:
    endpoint: int
    message_id: int
    payload: bytes
    timestamp: int | None = None
    rssi_raw: int | None = None

    @property
    def rssi_dbm(self) -> float | None:
        """The stick's RSSI byte in dBm (its data sheet's linear fit)."""
        if self.rssi_raw is None:
            return None
        return round(self.rssi_raw * 8.0 / 15.0 - 380.0 / 3.0, 1)


def encode(message: HciMessage, crc: bool = True) -> bytes:
    if len(message.payload) > MAX_PAYLOAD:
        raise FrameError(f"HCI payload of {len(message.payload)} bytes exceeds {MAX_PAYLOAD}")
    control = (CTRL_CRC if crc else 0) | (CTRL_RSSI if message.rssi_raw is not None else 0)
    control |= CTRL_TIMESTAMP if message.timestamp is not None else 0
    body = bytearray([(control << 4) | (message.endpoint & 0x0F), message.message_id])
    body.append(len(message.payload))
    body += message.payload
    if message.timestamp is not None:
        body += message.timestamp.to_bytes(4, "little")
    if message.rssi_raw is not None:
        body.append(message.rssi_raw & 0xFF)
    if crc:
        body += crc16_x25(bytes(body)).to_bytes(2, "little")
    return bytes([SOF]) + bytes(body)


def set_config_request(modes: Iterable[str]) -> bytes:
    """SET_CONFIG: collector, the given link modes, RSSI and timestamp attached, no sleep."""
    wanted = frozenset(mode.lower() for mode in modes)
    code = LINK_MODES.get(wanted)
    if code is None:
        choices = ", ".join("+".join(sorted(m)) for m in LINK_MODES)
        raise FrameError(f"the iM871A cannot listen to {'+'.join(sorted(wanted))}; it can: {choices}")
    payload = bytes(
        [
            0x00,  # volatile: the stick's NVM is never written
            IIFLAG1_DEVICE_MODE | IIFLAG1_LINK_MODE,
            DEVICE_MODE_OTHER,
            code,
            IIFLAG2_AUTO_POWER_SAVING | IIFLAG2_AUTO_RSSI | IIFLAG2_AUTO_TIMESTAMP,
            0x00,  # power saving off: a collector listens all the time
            0x01,  # RSSI on every received telegram
            0x01,  # timestamp on every received telegram
        ]
    )
    return encode(HciMessage(ENDPOINT_DEVMGMT, DEVMGMT_SET_CONFIG_REQ, payload))


def ping_request() -> bytes:
    return encode(HciMessage(ENDPOINT_DEVMGMT, DEVMGMT_PING_REQ, b""))


def telegram_indication(
    telegram: bytes, rssi_raw: int | None = None, timestamp: int | None = None, crc: bool = True
) -> bytes:
    """What the stick sends for a received telegram (CRC-less, from its L-field)."""
    if not telegram or telegram[0] != len(telegram) - 1:
        raise FrameError("telegram_indication needs a CRC-less telegram whose L-field matches")
    message = HciMessage(ENDPOINT_RADIOLINK, RADIOLINK_WMBUSMSG_IND, telegram[1:], timestamp, rssi_raw)
    return encode(message, crc)


def to_received(message: HciMessage) -> Received | None:
    """The telegram inside a WMBUSMSG_IND, None for any other message."""
    if message.endpoint != ENDPOINT_RADIOLINK or message.message_id != RADIOLINK_WMBUSMSG_IND:
        return None
    return Received(
        bytes([len(message.payload)]) + message.payload,
        rssi_dbm=message.rssi_dbm,
        receiver_timestamp=message.timestamp,
        crcs=False,  # the stick checks and removes them
    )


class HciDecoder:
    """Byte stream in, HCI messages out; resynchronises on garbage and bad CRCs.

    Bytes arrive in arbitrary chunks from a serial port. A start byte
    followed by a message whose CRC fails is taken for noise: the decoder
    skips that one byte and looks for the next 0xA5. ``discarded`` counts
    bytes thrown away, ``crc_errors`` messages rejected.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.discarded = 0
        self.crc_errors = 0

    def feed(self, data: bytes) -> list[HciMessage]:
        self._buffer += data
        messages: list[HciMessage] = []
        while True:
            start = self._buffer.find(SOF)
            if start < 0:
                self.discarded += len(self._buffer)
                self._buffer.clear()
                return messages
            if start:
                self.discarded += start
                del self._buffer[:start]
            if len(self._buffer) < HEADER:
                return messages
            control = self._buffer[1] >> 4
            length = self._buffer[3]
            total = HEADER + length
            total += 4 if control & CTRL_TIMESTAMP else 0
            total += 1 if control & CTRL_RSSI else 0
            total += 2 if control & CTRL_CRC else 0
            if len(self._buffer) < total:
                return messages
            frame = bytes(self._buffer[:total])
            if control & CTRL_CRC and crc16_x25(frame[1:-2]) != int.from_bytes(frame[-2:], "little"):
                self.crc_errors += 1
                self.discarded += 1
                del self._buffer[:1]
                continue
            del self._buffer[:total]
            messages.append(_parse(frame, control, length))

    @property
    def pending(self) -> int:
        return len(self._buffer)


def _parse(frame: bytes, control: int, length: int) -> HciMessage:
    position = HEADER + length
    timestamp = None
    rssi = None
    if control & CTRL_TIMESTAMP:
        timestamp = int.from_bytes(frame[position : position + 4], "little")
        position += 4
    if control & CTRL_RSSI:
        rssi = frame[position]
    return HciMessage(frame[1] & 0x0F, frame[2], frame[HEADER:HEADER + length], timestamp, rssi)
