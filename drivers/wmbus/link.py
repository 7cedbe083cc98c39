"""EN 13757-4 data link layer: frame formats A and B, block CRCs, the header.

A telegram starts with the L-field, then C (what kind of message), M (the
manufacturer, three letters packed in two bytes) and A (identification
number, version, device type), then the CI field and the rest. On air every
block carries a CRC-16; receivers deliver telegrams with those CRCs or
without them (most USB sticks strip them), so ``parse_link`` finds out which
by length and by checking the CRCs, and strips them. A telegram whose CRC
fails is a FrameError: its bytes cannot be trusted.

The repeated-telegram filter (``RepeatFilter``) lives here too: a telegram
relayed by a repeater, or sent twice by the meter, is the same link-layer
content and is dropped once.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from enum import StrEnum

from drivers.core.errors import FrameError
from drivers.mbus.telegram import manufacturer_code, medium_name
from drivers.wmbus.crc import crc16_en13757

HEADER_LENGTH = 10  # L C M M A A A A A A
BLOCK_LENGTH = 16  # data bytes per block after the first, format A
FORMAT_B_FIRST_CRC_END = 126  # format B: block 1 + block 2 end here, then their CRC
FORMAT_B_SECOND_BLOCK_START = 128
SHORT_TOLERANCE = 2  # bytes a CRC-less telegram may fall short of its L-field

C_FIELDS: dict[int, str] = {
    0x00: "ACK",
    0x01: "NACK",
    0x06: "CNF_IR",
    0x08: "RSP_UD",
    0x18: "RSP_UD",
    0x28: "RSP_UD",
    0x38: "RSP_UD",
    0x44: "SND_NR",
    0x46: "SND_IR",
    0x47: "ACC_NR",
    0x48: "ACC_DMD",
}


class FrameFormat(StrEnum):
    A = "A"
    B = "B"


@dataclass(frozen=True)
class LinkAddress:
    """A meter's (or radio adapter's) address: M-field and A-field.

    ``identification`` is the 8-digit BCD number as text, as printed on the
    meter. ``raw`` is the 8 bytes M+A as on the wire: the first half of a
    mode 5 IV and of the ELL counter block.
    """

    manufacturer: str
    identification: str
    version: int
    device_type: int
    raw: bytes

    @property
    def medium(self) -> str:
        return medium_name(self.device_type)

    @property
    def id_bytes(self) -> bytes:
        return self.raw[2:6]


@dataclass(frozen=True)
class LinkFrame:
    """One telegram with its CRCs checked and removed.

    ``payload`` starts at the CI field. ``frame_format`` is A or B when the
    CRCs were present (they tell the format), None when the receiver had
    already stripped them. ``trailing`` counts bytes after the L-field's end
    that were ignored (some receivers append RSSI bytes); ``missing`` the
    bytes short of the L-field's count in a telegram without CRCs (a
    receiver that counts its RSSI byte in L and strips it, or drops the last
    byte): up to SHORT_TOLERANCE are accepted, the rest decoded as far as it
    goes, its records checked as always.
    """

    c_field: int
    address: LinkAddress
    payload: bytes
    frame_format: FrameFormat | None
    trailing: int = 0
    missing: int = 0  # bytes the L-field announces that did not come (at most SHORT_TOLERANCE)

    @property
    def message_type(self) -> str:
        return C_FIELDS.get(self.c_field, f"0x{self.c_field:02X}")

    @property
    def ci(self) -> int:
        return self.payload[0]


def address_from_bytes(raw: bytes) -> LinkAddress:
    """M (2 bytes) + A (6 bytes): manufacturer, id, version, device type."""
    if len(raw) != 8:
        raise FrameError(f"an address needs 8 bytes (M and A fields), got {len(raw)}")
    return LinkAddress(
        manufacturer=manufacturer_code(int.from_bytes(raw[0:2], "little")),
        identification=raw[2:6][::-1].hex().upper(),
        version=raw[6],
        device_type=raw[7],
        raw=bytes(raw),
    )


def format_a_length(l_field: int) -> int:
    """Bytes on air, CRCs included, of a format A telegram with this L-field."""
    data_after_header = max(0, l_field - (HEADER_LENGTH - 1))
    blocks = -(-data_after_header // BLOCK_LENGTH)
    return HEADER_LENGTH + 2 + data_after_header + 2 * blocks


def _format_a_blocks(frame: bytes) -> list[tuple[int, int]]:
    """(start, end) of every data block of a format A frame, CRC after each."""
    blocks = [(0, HEADER_LENGTH)]
    position = HEADER_LENGTH + 2
    while position < len(frame):
        end = min(position + BLOCK_LENGTH, len(frame) - 2)
        blocks.append((position, end))
        position = end + 2
    return blocks


def _format_b_blocks(frame: bytes) -> list[tuple[int, int]]:
    if len(frame) <= FORMAT_B_SECOND_BLOCK_START:
        return [(0, len(frame) - 2)]
    return [(0, FORMAT_B_FIRST_CRC_END), (FORMAT_B_SECOND_BLOCK_START, len(frame) - 2)]


def _bad_block(frame: bytes, blocks: list[tuple[int, int]]) -> int | None:
    """Index of the first block whose CRC fails, None when all are good."""
    for index, (start, end) in enumerate(blocks):
        if end < start or end + 2 > len(frame):
            return index
        if crc16_en13757(frame[start:end]) != int.from_bytes(frame[end : end + 2], "big"):
            return index
    return None


def _strip(frame: bytes, blocks: list[tuple[int, int]]) -> bytes:
    return b"".join(frame[start:end] for start, end in blocks)


def strip_crcs(frame: bytes, frame_format: FrameFormat) -> bytes:
    """The telegram without its block CRCs; FrameError when one fails."""
    blocks = _format_a_blocks(frame) if frame_format is FrameFormat.A else _format_b_blocks(frame)
    bad = _bad_block(frame, blocks)
    if bad is not None:
        raise FrameError(
            f"format {frame_format.value} block {bad + 1} CRC error: the telegram was "
            "damaged on air (or the format is not what the receiver says)"
        )
    body = _strip(frame, blocks)
    return bytes([len(body) - 1]) + body[1:]


def _first_block_ok(frame: bytes) -> bool:
    return crc16_en13757(frame[:HEADER_LENGTH]) == int.from_bytes(
        frame[HEADER_LENGTH : HEADER_LENGTH + 2], "big"
    )


def _looks_like(frame: bytes, frame_format: FrameFormat) -> bool:
    blocks = _format_a_blocks(frame) if frame_format is FrameFormat.A else _format_b_blocks(frame)
    return _bad_block(frame, blocks) is None


def parse_link(frame: bytes, frame_format: FrameFormat | None = None, crcs: bool | None = None) -> LinkFrame:
    """Check and strip the link layer of one telegram (starting at the L-field).

    ``frame_format`` is given when the receiver knows it (a stick set to
    C1 format B); otherwise the CRCs are looked for: the length a format A
    frame with CRCs would have, or a valid format B CRC at the end. With
    ``crcs=False`` (a receiver that removed them) they are not looked for.
    """
    frame = bytes(frame)
    if len(frame) < HEADER_LENGTH + 1:
        raise FrameError(
            f"a wireless M-Bus telegram has at least 11 bytes (L C M A CI), got {len(frame)}"
        )
    l_field = frame[0]
    with_a_crcs = format_a_length(l_field)
    detected: FrameFormat | None = None
    body = frame
    trailing = 0
    missing = 0
    if frame_format is not None:
        end = with_a_crcs if frame_format is FrameFormat.A else l_field + 1
        if len(frame) < end:
            raise FrameError(
                f"format {frame_format.value} telegram with L-field {l_field} needs {end} bytes, "
                f"got {len(frame)}"
            )
        trailing = len(frame) - end
        body = strip_crcs(frame[:end], frame_format)
        detected = frame_format
    elif crcs is False:
        body, trailing, missing = _as_counted(frame, l_field)
    elif len(frame) >= with_a_crcs and _first_block_ok(frame):
        # The header block's CRC holds: format A with CRCs, every block must hold.
        trailing = len(frame) - with_a_crcs
        body = strip_crcs(frame[:with_a_crcs], FrameFormat.A)
        detected = FrameFormat.A
    elif len(frame) == l_field + 1 and l_field >= 12 and _looks_like(frame, FrameFormat.B):
        body = strip_crcs(frame, FrameFormat.B)
        detected = FrameFormat.B
    elif len(frame) == with_a_crcs:
        strip_crcs(frame, FrameFormat.A)  # a damaged header block: raises, naming it
    else:
        body, trailing, missing = _as_counted(frame, l_field)
    if len(body) < HEADER_LENGTH + 1:
        raise FrameError(
            f"L-field {body[0]} leaves no CI field: a telegram has at least L C M A CI"
        )
    return LinkFrame(
        c_field=body[1],
        address=address_from_bytes(body[2:10]),
        payload=body[10:],
        frame_format=detected,
        trailing=trailing,
        missing=missing,
    )


def _as_counted(frame: bytes, l_field: int) -> tuple[bytes, int, int]:
    """A CRC-less telegram as its L-field counts it: (body, bytes after it, bytes short of it)."""
    if len(frame) >= l_field + 1:
        return frame[: l_field + 1], len(frame) - (l_field + 1), 0
    if l_field + 1 - len(frame) <= SHORT_TOLERANCE:
        return frame, 0, l_field + 1 - len(frame)
    raise FrameError(
        f"telegram shorter than its L-field says: L={l_field} announces {l_field} bytes "
        f"after it, {len(frame) - 1} came"
    )


def add_crcs(telegram: bytes, frame_format: FrameFormat) -> bytes:
    """The on-air form of a CRC-less telegram (L-field adjusted for format B).

    Simulators and tests build telegrams with it; the receive side never
    needs it.
    """
    telegram = bytes(telegram)
    if len(telegram) != telegram[0] + 1:
        raise FrameError("add_crcs needs a telegram whose L-field matches its length")
    if frame_format is FrameFormat.A:
        out = bytearray(telegram[:HEADER_LENGTH])
        out += crc16_en13757(telegram[:HEADER_LENGTH]).to_bytes(2, "big")
        for start in range(HEADER_LENGTH, len(telegram), BLOCK_LENGTH):
            block = telegram[start : start + BLOCK_LENGTH]
            out += block + crc16_en13757(block).to_bytes(2, "big")
        return bytes(out)
    body = telegram[1:]
    first_room = FORMAT_B_FIRST_CRC_END - 1  # data bytes after L that fit before the first CRC
    if len(body) <= first_room:
        length = len(body) + 2
        head = bytes([length]) + body
        return head + crc16_en13757(head).to_bytes(2, "big")
    length = len(body) + 4
    if length > 255:
        raise FrameError(f"telegram of {len(telegram)} bytes is too long for format B")
    head = bytes([length]) + body[:first_room]
    rest = body[first_room:]
    return (
        head
        + crc16_en13757(head).to_bytes(2, "big")
        + rest
        + crc16_en13757(rest).to_bytes(2, "big")
    )


# --- repeated telegrams ------------------------------------------------------------


class RepeatFilter:
    """Drops a telegram heard again within ``window_s`` (repeater, retransmission).

    A repeater relays a telegram unchanged except for its hop-count bits
    (ELL communication control H, TPL configuration field H and R), so
    those are masked before the content is compared. Memory is bounded:
    at most ``capacity`` fingerprints, the oldest forgotten first. The
    window keeps a meter whose access number wrapped round (256 telegrams
    later) from being taken for a repeat. Pure: the caller passes the time.
    """

    def __init__(self, capacity: int = 4096, window_s: float = 120.0) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._capacity = capacity
        self._window_s = window_s
        self._seen: OrderedDict[bytes, float] = OrderedDict()
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._seen)

    def is_repeat(self, frame: LinkFrame, now: float) -> bool:
        """True when this telegram was already seen within the window."""
        key = fingerprint(frame)
        first_seen = self._seen.get(key)
        if first_seen is not None and now - first_seen <= self._window_s:
            self.dropped += 1
            return True
        self._seen[key] = now
        self._seen.move_to_end(key)
        while len(self._seen) > self._capacity:
            self._seen.popitem(last=False)
        return False


_ELL_CIS = frozenset({0x8C, 0x8D, 0x8E, 0x8F})
_TPL_CF_OFFSET = {0x7A: 3, 0x72: 11, 0x8A: 3, 0x8B: 11}  # offset of the CF after the CI
_ELL_LENGTH = {0x8C: 3, 0x8D: 9, 0x8E: 11, 0x8F: 17}  # CI included


def fingerprint(frame: LinkFrame) -> bytes:
    """Digest of what a repeater does not change: address and payload, hop bits masked."""
    payload = bytearray(frame.payload)
    offset = 0
    if payload and payload[0] in _ELL_CIS and len(payload) > 1:
        payload[1] &= ~0x10 & 0xFF  # ELL CC: hop count H
        offset = _ELL_LENGTH[payload[0]]
    if offset < len(payload):
        cf = _TPL_CF_OFFSET.get(payload[offset])
        if cf is not None and offset + cf < len(payload):
            payload[offset + cf] &= 0xFC  # TPL CF: H and R
    digest = hashlib.blake2b(digest_size=16)
    digest.update(frame.address.raw)
    digest.update(bytes([frame.c_field]))
    digest.update(payload)
    return digest.digest()
