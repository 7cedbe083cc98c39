"""Layers between the link and the application: ELL, AFL, TPL, and their security.

After the link layer a telegram is a chain of CI-introduced layers
(EN 13757-7, OMS Volume 2):

* the extended link layer, ELL (CI 0x8C-0x8F): communication control,
  access number, optionally a receiver address and a session number; with
  a session number whose ENC bits say so, the rest is AES-128-CTR encrypted
  and protected by a CRC of its own (0x8D, 0x8F);
* the authentication and fragmentation layer, AFL (CI 0x90): message
  counter and AES-CMAC over the transport layer, used by security mode 7;
* the transport layer, TPL: no header (0x78), short header (0x7A: access
  number, status, configuration) or long header (0x72: the meter's own
  address first), whose configuration field names the security mode:
  5 (AES-128-CBC, IV from address and access number) or 7 (AES-128-CBC,
  IV 0, key derived per message from the master key and the AFL counter,
  message authenticated by the AFL MAC).

Decryption is checked the way the standard provides: the 0x2F2F that
every encrypted block run begins with, the ELL payload CRC, the AFL MAC.
A missing or wrong key, or a mode this code does not implement, is not an
exception: ``unwrap`` returns a ``Security`` with that state and no
application data, so a caller cannot mistake it for a reading. Malformed
structure raises DecodeError.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from drivers.core.errors import DecodeError
from drivers.wmbus import crypto
from drivers.wmbus.crc import crc16_en13757
from drivers.wmbus.keys import KeyRing
from drivers.wmbus.link import LinkAddress, LinkFrame, address_from_bytes

CI_AFL = 0x90
ELL_LENGTHS = {0x8C: 2, 0x8D: 6, 0x8E: 10, 0x8F: 14}  # bytes after the CI
ELL_WITH_SESSION = frozenset({0x8D, 0x8F})
ELL_WITH_RECEIVER = frozenset({0x8E, 0x8F})

# TPL header size by CI, from device (EN 13757-7 table 2). Long headers
# carry the meter's address; short ones use the link layer's.
TPL_SHORT = frozenset({0x61, 0x65, 0x67, 0x6A, 0x6E, 0x74, 0x7A, 0x7B, 0x7D, 0x7F, 0x88, 0x8A,
                       0x9E, 0xC1, 0xC4})
TPL_LONG = frozenset({0x60, 0x64, 0x68, 0x6B, 0x6F, 0x72, 0x73, 0x75, 0x7C, 0x7E, 0x87, 0x8B,
                      0x9F, 0xC2, 0xC5})
TPL_NONE = frozenset({0x66, 0x69, 0x70, 0x71, 0x78, 0x79, 0x89})
TPL_CIS = TPL_SHORT | TPL_LONG | TPL_NONE

FULL_FRAME = frozenset({0x72, 0x78, 0x7A})
COMPACT_FRAME = frozenset({0x73, 0x79, 0x7B})
FORMAT_FRAME = frozenset({0x69, 0x6A, 0x6B})
NO_APPLICATION = frozenset({0x8A, 0x8B})
APPLICATION_ERROR = frozenset({0x6E, 0x6F, 0x70})
ALARM = frozenset({0x71, 0x74, 0x75})

CHECK_BYTES = b"\x2f\x2f"
RECEIVER_DECRYPTED = "already decrypted by the receiver (its check holds without decrypting)"

# AFL message control: authentication type -> MAC length (AES-CMAC-128 truncated)
_AFL_MAC_LENGTHS = {0: 0, 3: 2, 4: 4, 5: 8, 6: 12, 7: 16}


class SecurityState(StrEnum):
    NONE = "none"  # not encrypted
    DECRYPTED = "decrypted"
    NO_KEY = "no_key"
    WRONG_KEY = "wrong_key"
    UNSUPPORTED = "unsupported"


@dataclass(frozen=True)
class Security:
    """What protected the telegram and whether it could be opened.

    ``mode`` is the TPL security mode (0 none, 5, 7, ...); ``layer`` says
    where the encryption sat: ``tpl`` or ``ell`` (AES-CTR of the extended
    link layer). ``reason`` explains the states that give no data.
    """

    state: SecurityState
    mode: int = 0
    layer: str | None = None
    encrypted_bytes: int = 0
    reason: str | None = None

    @property
    def readable(self) -> bool:
        return self.state in (SecurityState.NONE, SecurityState.DECRYPTED)


PLAIN = Security(SecurityState.NONE)


@dataclass(frozen=True)
class ExtendedLinkLayer:
    ci: int
    communication_control: int
    access_number: int
    receiver: LinkAddress | None = None
    session_number: int | None = None

    @property
    def encryption(self) -> int:
        """ENC field of the session number: 0 none, 1 AES-128-CTR."""
        return 0 if self.session_number is None else (self.session_number >> 29) & 0x07


@dataclass(frozen=True)
class AuthenticationLayer:
    fragmentation_control: int
    message_control: int | None
    key_information: int | None
    message_counter: bytes | None  # 4 bytes as transmitted
    mac: bytes | None
    message_length: int | None
    authenticated: bytes  # MCL..ML as transmitted: the start of the MAC input

    @property
    def fragment_id(self) -> int:
        return self.fragmentation_control & 0xFF

    @property
    def more_fragments(self) -> bool:
        return bool(self.fragmentation_control & 0x4000)


@dataclass(frozen=True)
class TransportHeader:
    """TPL header; ``address`` only for long headers (the meter behind an adapter)."""

    ci: int
    access_number: int | None = None
    status: int | None = None
    configuration: int | None = None
    configuration_extension: int | None = None
    address: LinkAddress | None = None

    @property
    def security_mode(self) -> int:
        return 0 if self.configuration is None else (self.configuration >> 8) & 0x1F

    @property
    def encrypted_blocks(self) -> int:
        return 0 if self.configuration is None else (self.configuration >> 4) & 0x0F


@dataclass(frozen=True)
class Unwrapped:
    """Everything below the application layer, and the application bytes when readable."""

    ell: ExtendedLinkLayer | None
    afl: AuthenticationLayer | None
    tpl: TransportHeader | None
    security: Security
    application: bytes  # after the TPL header, decrypted; empty unless readable


class _Cursor:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def left(self) -> int:
        return len(self.data) - self.pos

    def take(self, count: int, what: str) -> bytes:
        if count > self.left():
            raise DecodeError(f"{what} needs {count} bytes, only {self.left()} are left")
        chunk = self.data[self.pos : self.pos + count]
        self.pos += count
        return chunk

    def byte(self, what: str) -> int:
        return self.take(1, what)[0]

    def peek(self) -> int | None:
        return self.data[self.pos] if self.pos < len(self.data) else None

    def rest(self) -> bytes:
        chunk = self.data[self.pos :]
        self.pos = len(self.data)
        return chunk


def unwrap(link: LinkFrame, keys: KeyRing) -> Unwrapped:
    """Walk ELL, AFL and TPL; decrypt and check what is encrypted."""
    cursor = _Cursor(link.payload)
    ell: ExtendedLinkLayer | None = None
    afl: AuthenticationLayer | None = None
    if cursor.peek() in ELL_LENGTHS:
        ell = _read_ell(cursor)
        if ell.encryption:
            opened = _open_ell(link, ell, cursor.rest(), keys)
            if isinstance(opened, Security):
                return Unwrapped(ell, None, None, opened, b"")
            plain, reason = opened
            cursor = _Cursor(plain)
            ell_security = Security(
                SecurityState.DECRYPTED, layer="ell", encrypted_bytes=len(plain) + 2, reason=reason
            )
        else:
            ell_security = PLAIN
    else:
        ell_security = PLAIN
    if cursor.left() == 0:
        return Unwrapped(ell, None, None, ell_security, b"")
    if cursor.peek() == CI_AFL:
        afl = _read_afl(cursor)
        if afl.fragment_id or afl.more_fragments:
            reason = (
                f"fragment {afl.fragment_id} of a fragmented message (AFL): reassembly "
                "is not implemented"
            )
            return Unwrapped(ell, afl, None, Security(SecurityState.UNSUPPORTED, reason=reason), b"")
        if cursor.left() == 0:
            raise DecodeError("AFL (CI 0x90) with no transport layer after it")
    tpl_start = cursor.pos
    tpl = _read_tpl(cursor, link.address)
    body = cursor.rest()
    mode = tpl.security_mode
    if mode == 0:
        return Unwrapped(ell, afl, tpl, ell_security, body)
    meter = tpl.address or link.address
    if mode == 5:
        security, application = _open_mode5(meter, tpl, body, keys)
    elif mode == 7:
        tpdu = cursor.data[tpl_start:]
        security, application = _open_mode7(meter, tpl, afl, tpdu, body, keys)
    else:
        security = Security(
            SecurityState.UNSUPPORTED,
            mode=mode,
            layer="tpl",
            reason=f"security mode {mode} is not implemented (supported: 0, 5, 7)",
        )
        application = b""
    return Unwrapped(ell, afl, tpl, security, application)


# --- extended link layer -----------------------------------------------------------


def _read_ell(cursor: _Cursor) -> ExtendedLinkLayer:
    ci = cursor.byte("ELL CI")
    fields = cursor.take(ELL_LENGTHS[ci], f"extended link layer (CI 0x{ci:02X})")
    receiver = address_from_bytes(fields[2:10]) if ci in ELL_WITH_RECEIVER else None
    session = None
    if ci in ELL_WITH_SESSION:
        session = int.from_bytes(fields[-4:], "little")
    return ExtendedLinkLayer(ci, fields[0], fields[1], receiver, session)


def _open_ell(
    link: LinkFrame, ell: ExtendedLinkLayer, encrypted: bytes, keys: KeyRing
) -> tuple[bytes, str | None] | Security:
    """AES-128-CTR of the ELL; the payload CRC inside tells a wrong key.

    The plain payload, with why it needed no decrypting (None when it did).
    """
    if ell.encryption != 1:
        return Security(
            SecurityState.UNSUPPORTED,
            layer="ell",
            reason=f"ELL encryption {ell.encryption} is reserved (only 1, AES-CTR, is defined)",
        )
    if len(encrypted) < 3:
        raise DecodeError("encrypted ELL payload shorter than its CRC and a CI field")
    key = keys.key_for(link.address.identification)
    if key is None:
        if _ell_plain(encrypted):
            return encrypted[2:], RECEIVER_DECRYPTED
        return Security(
            SecurityState.NO_KEY,
            layer="ell",
            encrypted_bytes=len(encrypted),
            reason=f"no key for meter {link.address.identification}",
        )
    assert ell.session_number is not None
    counter = (
        link.address.raw
        + bytes([ell.communication_control])
        + ell.session_number.to_bytes(4, "little")
        + b"\x00\x00\x00"  # frame number 0, block counter 0
    )
    plain = crypto.ctr_crypt(key, counter, encrypted)
    if int.from_bytes(plain[:2], "little") != crc16_en13757(plain[2:]):
        if _ell_plain(encrypted):
            return encrypted[2:], RECEIVER_DECRYPTED
        return Security(
            SecurityState.WRONG_KEY,
            layer="ell",
            encrypted_bytes=len(encrypted),
            reason="ELL payload CRC does not match after decryption",
        )
    return plain[2:], None


def _ell_plain(payload: bytes) -> bool:
    """Did the receiver decrypt it already? (a stick holding the key does: its CRC holds as it is)."""
    return int.from_bytes(payload[:2], "little") == crc16_en13757(payload[2:])


# --- authentication and fragmentation layer ---------------------------------------------


def _read_afl(cursor: _Cursor) -> AuthenticationLayer:
    cursor.byte("AFL CI")
    length = cursor.byte("AFL length")
    fields = _Cursor(cursor.take(length, "AFL"))
    fcl = int.from_bytes(fields.take(2, "AFL fragmentation control"), "little")
    start = fields.pos
    mcl = fields.byte("AFL message control") if fcl & 0x2000 else None
    ki = int.from_bytes(fields.take(2, "AFL key information"), "little") if fcl & 0x0200 else None
    counter = fields.take(4, "AFL message counter") if fcl & 0x0800 else None
    mac = None
    if fcl & 0x0400:
        if mcl is None:
            raise DecodeError("AFL announces a MAC but no message control field to size it")
        at = mcl & 0x0F
        if at not in _AFL_MAC_LENGTHS:
            raise DecodeError(f"AFL authentication type {at} is reserved or not AES-CMAC")
        mac = fields.take(_AFL_MAC_LENGTHS[at], "AFL MAC")
    authenticated_prefix = fields.data[start : fields.pos - (len(mac) if mac else 0)]
    ml = int.from_bytes(fields.take(2, "AFL message length"), "little") if fcl & 0x1000 else None
    if ml is not None:
        authenticated_prefix += fields.data[fields.pos - 2 : fields.pos]
    return AuthenticationLayer(fcl, mcl, ki, counter, mac, ml, authenticated_prefix)


# --- transport layer and its security ----------------------------------------------------


def _read_tpl(cursor: _Cursor, link_address: LinkAddress) -> TransportHeader:
    ci = cursor.byte("CI")
    if ci not in TPL_CIS:
        # Manufacturer specific (0xA0-0xB7) and anything unknown: no header
        # we can read; the application layer will say it is not supported.
        return TransportHeader(ci)
    if ci in TPL_NONE:
        return TransportHeader(ci)
    address = None
    if ci in TPL_LONG:
        raw = cursor.take(8, f"long transport header (CI 0x{ci:02X})")
        # On the wire: id(4) manufacturer(2) version type; as an address: M then A.
        address = address_from_bytes(raw[4:6] + raw[0:4] + raw[6:8])
    access, status = cursor.take(2, f"transport header (CI 0x{ci:02X})")
    configuration = int.from_bytes(cursor.take(2, "configuration field"), "little")
    extension = None
    if (configuration >> 8) & 0x1F == 7:
        extension = cursor.byte("configuration field extension (mode 7)")
        if extension & 0x40:
            cursor.byte("key version (mode 7)")
    return TransportHeader(ci, access, status, configuration, extension, address)


def _already_plain(body: bytes) -> bool:
    return body[:2] == CHECK_BYTES


def _encrypted_length(tpl: TransportHeader, body: bytes) -> int:
    blocks = tpl.encrypted_blocks
    length = 16 * blocks if blocks else len(body) - len(body) % 16
    if length > len(body):
        raise DecodeError(
            f"configuration field announces {blocks} encrypted blocks ({length} bytes), "
            f"the telegram has {len(body)} bytes after its header"
        )
    if length == 0:
        raise DecodeError("encrypted telegram without a whole 16-byte block to decrypt")
    return length


def _open_mode5(
    meter: LinkAddress, tpl: TransportHeader, body: bytes, keys: KeyRing
) -> tuple[Security, bytes]:
    length = _encrypted_length(tpl, body)
    key = keys.key_for(meter.identification)
    if key is None:
        if _already_plain(body):
            return _decrypted_by_receiver(5, length), body
        return Security(
            SecurityState.NO_KEY, 5, "tpl", length, f"no key for meter {meter.identification}"
        ), b""
    assert tpl.access_number is not None
    iv = meter.raw + bytes([tpl.access_number]) * 8
    plain = crypto.cbc_decrypt(key, iv, body[:length])
    if plain[:2] != CHECK_BYTES:
        if _already_plain(body):
            return _decrypted_by_receiver(5, length), body
        return Security(
            SecurityState.WRONG_KEY, 5, "tpl", length, "decrypted data does not start with 2F2F"
        ), b""
    return Security(SecurityState.DECRYPTED, 5, "tpl", length), plain + body[length:]


def _open_mode7(
    meter: LinkAddress,
    tpl: TransportHeader,
    afl: AuthenticationLayer | None,
    tpdu: bytes,
    body: bytes,
    keys: KeyRing,
) -> tuple[Security, bytes]:
    length = _encrypted_length(tpl, body)
    kdf = ((tpl.configuration_extension or 0) >> 4) & 0x03
    if kdf not in (0, 1):
        return Security(
            SecurityState.UNSUPPORTED, 7, "tpl", length, f"key derivation function {kdf} is reserved"
        ), b""
    if kdf == 1 and (afl is None or afl.message_counter is None):
        return Security(
            SecurityState.UNSUPPORTED,
            7,
            "tpl",
            length,
            "mode 7 with key derivation needs the AFL message counter, which is missing",
        ), b""
    master = keys.key_for(meter.identification)
    if master is None:
        if _already_plain(body):
            return _decrypted_by_receiver(7, length), body
        return Security(
            SecurityState.NO_KEY, 7, "tpl", length, f"no key for meter {meter.identification}"
        ), b""
    if kdf == 1:
        assert afl is not None and afl.message_counter is not None
        encryption_key = crypto.kdf_a(
            master, crypto.DC_ENCRYPTION_FROM_METER, afl.message_counter, meter.id_bytes
        )
        mac_key = crypto.kdf_a(master, crypto.DC_MAC_FROM_METER, afl.message_counter, meter.id_bytes)
    else:
        encryption_key = mac_key = master.secret()
    if afl is not None and afl.mac:
        expected = crypto.cmac(mac_key, afl.authenticated + tpdu)[: len(afl.mac)]
        if expected != afl.mac:
            if _already_plain(body):  # a receiver that decrypted cannot mend the MAC
                return _decrypted_by_receiver(7, length), body
            return Security(
                SecurityState.WRONG_KEY, 7, "tpl", length, "AFL MAC does not match"
            ), b""
    plain = crypto.cbc_decrypt(encryption_key, bytes(16), body[:length])
    if plain[:2] != CHECK_BYTES:
        if _already_plain(body):
            return _decrypted_by_receiver(7, length), body
        return Security(
            SecurityState.WRONG_KEY, 7, "tpl", length, "decrypted data does not start with 2F2F"
        ), b""
    return Security(SecurityState.DECRYPTED, 7, "tpl", length), plain + body[length:]


def _decrypted_by_receiver(mode: int, length: int) -> Security:
    return Security(
        SecurityState.DECRYPTED,
        mode,
        "tpl",
        length,
        "already decrypted by the receiver (the data starts with 2F2F)",
    )
