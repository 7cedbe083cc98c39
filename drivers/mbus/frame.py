"""M-Bus link layer (EN 13757-2): the four telegram formats, pure code.

The serial reader, the bus worker and the tests all need the same answers:
"is this a whole frame yet?", "is it intact?", "which bytes do I send to ask
meter 5 for its data?". Keeping them here, free of I/O, lets every one of
them be tested with tables and random bytes instead of hardware.

Formats on the wire:

    single character   E5
    short frame        10 C A CS 16
    control frame      68 03 03 68 C A CI CS 16
    long frame         68 L L 68 C A CI data... CS 16   (L = 3 + len(data))

CS is the arithmetic sum, modulo 256, of C, A, CI and the data.
"""

from __future__ import annotations

from dataclasses import dataclass

from drivers.core.errors import FrameError

ACK = 0xE5
SHORT_START = 0x10
LONG_START = 0x68
STOP = 0x16

# Addresses (the A field).
UNCONFIGURED_ADDRESS = 0  # factory default of a meter nobody has addressed yet
FIRST_PRIMARY_ADDRESS = 1
LAST_PRIMARY_ADDRESS = 250
NETWORK_LAYER_ADDRESS = 0xFD  # talk to the meter selected by secondary address
BROADCAST_WITH_REPLY = 0xFE  # every meter answers: only safe with one meter on the bus
BROADCAST_NO_REPLY = 0xFF

# Control field (the C field), master to slave and slave to master.
C_SND_NKE = 0x40  # link reset
C_SND_UD = 0x53  # send user data (FCV set)
C_REQ_UD2 = 0x5B  # request class 2 data (FCV set)
C_REQ_UD1 = 0x5A  # request class 1 (alarm) data
C_RSP_UD = 0x08  # response with user data
ACD_BIT = 0x20  # in a meter's answer: access demand (class 1 data waiting)
DFC_BIT = 0x10  # in a meter's answer: data flow control (the meter's buffer is full)
PRM_BIT = 0x40  # set in every frame a master sends, clear in every meter's answer
FCB_BIT = 0x20  # frame count bit: toggles between successive REQ_UD2s
FCV_BIT = 0x10  # frame count bit valid

# Control information field values used by the master.
CI_APPLICATION_RESET = 0x50
CI_DATA_SEND = 0x51
CI_SELECTION = 0x52

# A long frame holds at most 252 bytes of data (L field is at most 255).
MAX_LONG_DATA = 252
MAX_FRAME_LENGTH = MAX_LONG_DATA + 9


@dataclass(frozen=True)
class SingleChar:
    """The single acknowledge byte E5 (answer to SND_NKE, SND_UD, selection)."""

    def to_bytes(self) -> bytes:
        return bytes([ACK])


@dataclass(frozen=True)
class ShortFrame:
    """10 C A CS 16: a request without data (SND_NKE, REQ_UD2)."""

    control: int
    address: int

    def to_bytes(self) -> bytes:
        _check_byte("control", self.control)
        _check_byte("address", self.address)
        body = bytes([self.control, self.address])
        return bytes([SHORT_START]) + body + bytes([checksum(body), STOP])


@dataclass(frozen=True)
class LongFrame:
    """68 L L 68 C A CI data CS 16; with empty data it is a control frame."""

    control: int
    address: int
    ci: int
    data: bytes = b""

    @property
    def is_control_frame(self) -> bool:
        return not self.data

    def to_bytes(self) -> bytes:
        _check_byte("control", self.control)
        _check_byte("address", self.address)
        _check_byte("CI", self.ci)
        if len(self.data) > MAX_LONG_DATA:
            raise FrameError(
                f"long frame data is {len(self.data)} bytes, at most {MAX_LONG_DATA} fit"
            )
        body = bytes([self.control, self.address, self.ci]) + bytes(self.data)
        length = len(body)
        return (
            bytes([LONG_START, length, length, LONG_START]) + body + bytes([checksum(body), STOP])
        )


Frame = SingleChar | ShortFrame | LongFrame


def checksum(body: bytes) -> int:
    """Arithmetic sum of the bytes modulo 256, as the link layer defines it."""
    return sum(body) & 0xFF


def is_rsp_ud(control: int) -> bool:
    """Is this C field a meter's RSP_UD (08, with its ACD and DFC bits either
    way)? A master's frame (SND_UD 53, REQ_UD2 5B/7B: an echo, a second
    master) or anything else is not an answer to a read."""
    return control & ~(ACD_BIT | DFC_BIT) == C_RSP_UD


def _check_byte(name: str, value: int) -> None:
    if not 0 <= value <= 0xFF:
        raise FrameError(f"{name} must be a byte (0..255), got {value}")


def bytes_needed(received: bytes) -> int:
    """How many more bytes the frame that starts ``received`` needs.

    Returns 0 once ``received`` holds a whole frame (it may hold more: the
    caller cuts the frame at ``frame_length``). Raises FrameError as soon as
    the start is impossible, so a serial reader can resynchronise instead of
    waiting for a timeout.
    """
    if not received:
        return 1
    length = _expected_length(received)
    if length is None:
        return 4 - len(received)
    return max(0, length - len(received))


def frame_length(received: bytes) -> int | None:
    """Total length of the frame at the start of ``received``, if already known."""
    if not received:
        return None
    return _expected_length(received)


def _expected_length(received: bytes) -> int | None:
    start = received[0]
    if start == ACK:
        return 1
    if start == SHORT_START:
        return 5
    if start != LONG_START:
        raise FrameError(f"unexpected start byte 0x{start:02X}: expected 0x68, 0x10 or 0xE5")
    if len(received) < 2:
        return None
    length = received[1]
    if length < 3:
        raise FrameError(f"long frame L field is {length}: it must be at least 3 (C, A, CI)")
    if len(received) >= 3 and received[2] != length:
        raise FrameError(f"long frame length fields differ: 0x{length:02X} and 0x{received[2]:02X}")
    if len(received) >= 4 and received[3] != LONG_START:
        raise FrameError(f"long frame second start byte is 0x{received[3]:02X}, expected 0x68")
    return length + 6


def parse_frame(data: bytes) -> Frame:
    """Parse exactly one frame; anything malformed raises FrameError."""
    data = bytes(data)
    if not data:
        raise FrameError("empty frame: no bytes received")
    expected = _expected_length(data)
    if expected is None or len(data) < expected:
        want = expected if expected is not None else "at least 9"
        raise FrameError(f"frame truncated: {len(data)} bytes received, {want} needed")
    if len(data) > expected:
        raise FrameError(
            f"frame has {len(data) - expected} trailing bytes after the {expected}-byte frame"
        )
    if data[0] == ACK:
        return SingleChar()
    if data[-1] != STOP:
        raise FrameError(f"frame stop byte is 0x{data[-1]:02X}, expected 0x16")
    body = data[1:3] if data[0] == SHORT_START else data[4:-2]
    received_sum = data[-2]
    if checksum(body) != received_sum:
        raise FrameError(
            f"frame checksum mismatch: received 0x{received_sum:02X}, "
            f"computed 0x{checksum(body):02X}"
        )
    if data[0] == SHORT_START:
        return ShortFrame(control=body[0], address=body[1])
    return LongFrame(control=body[0], address=body[1], ci=body[2], data=bytes(body[3:]))


def split_frame(received: bytes) -> tuple[Frame, bytes] | None:
    """Cut one whole frame off the front of a receive buffer.

    Returns the parsed frame and the bytes after it, or None when the frame
    is not complete yet.
    """
    if bytes_needed(received):
        return None
    length = _expected_length(received)
    assert length is not None  # bytes_needed() returned 0, so it is known
    return parse_frame(received[:length]), bytes(received[length:])


# --- Requests the master sends ------------------------------------------------


def _check_address(address: int) -> None:
    valid = UNCONFIGURED_ADDRESS <= address <= LAST_PRIMARY_ADDRESS or address in (
        NETWORK_LAYER_ADDRESS,
        BROADCAST_WITH_REPLY,
        BROADCAST_NO_REPLY,
    )
    if not valid:
        raise FrameError(
            f"address {address} is not usable: primary addresses are 0..250, "
            "or 0xFD (selected meter), 0xFE/0xFF (broadcast)"
        )


def build_snd_nke(address: int) -> bytes:
    """SND_NKE: reset the meter's link layer (and its FCB) before a readout."""
    _check_address(address)
    return ShortFrame(C_SND_NKE, address).to_bytes()


def build_req_ud2(address: int, fcb: bool = False) -> bytes:
    """REQ_UD2: ask for the meter's class 2 (consumption) data.

    The FCB has to toggle between successive requests to the same meter;
    an unchanged FCB asks the meter to repeat its last answer (used after a
    garbled reply), a toggled one asks for the next telegram.
    """
    _check_address(address)
    control = C_REQ_UD2 | (FCB_BIT if fcb else 0)
    return ShortFrame(control, address).to_bytes()


def build_application_reset(address: int, subcode: int | None = None) -> bytes:
    """SND_UD with CI 0x50: restart the meter's telegram sequence from the first one.

    It changes no meter data; multi-telegram meters need it so a readout
    begins at the first telegram.
    """
    _check_address(address)
    data = b"" if subcode is None else bytes([subcode & 0xFF])
    return LongFrame(C_SND_UD, address, CI_APPLICATION_RESET, data).to_bytes()


def encode_secondary_address(
    identification: str,
    manufacturer: int = 0xFFFF,
    version: int = 0xFF,
    medium: int = 0xFF,
) -> bytes:
    """The 8 bytes of a selection: BCD id (LSB first), manufacturer, version, medium.

    ``identification`` is 8 characters, decimal digits or F/f for a wildcard
    nibble ("1234FFFF" selects every id starting with 1234).
    """
    if len(identification) != 8 or any(c not in "0123456789Ff" for c in identification):
        raise FrameError(
            f"secondary address id {identification!r} must be 8 characters, digits or F"
        )
    if not 0 <= manufacturer <= 0xFFFF:
        raise FrameError(f"manufacturer code must be 0..0xFFFF, got {manufacturer}")
    _check_byte("version", version)
    _check_byte("medium", medium)
    id_bytes = bytes.fromhex(identification)[::-1]
    return id_bytes + manufacturer.to_bytes(2, "little") + bytes([version, medium])


def build_select_secondary(
    identification: str,
    manufacturer: int = 0xFFFF,
    version: int = 0xFF,
    medium: int = 0xFF,
) -> bytes:
    """SND_UD to 0xFD with CI 0x52: select one meter by its secondary address.

    The selected meter then answers requests sent to address 0xFD. Wildcards
    (F nibbles, 0xFFFF manufacturer, 0xFF version/medium) drive a bus scan.
    """
    data = encode_secondary_address(identification, manufacturer, version, medium)
    return LongFrame(C_SND_UD, NETWORK_LAYER_ADDRESS, CI_SELECTION, data).to_bytes()
