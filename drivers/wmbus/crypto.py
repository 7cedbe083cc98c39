"""AES for wireless M-Bus: the key type, CBC, CTR, CMAC and the OMS key derivation.

Every primitive comes from ``cryptography``; this module only arranges
blocks the way EN 13757-7 and OMS Volume 2 say. ``MeterKey`` holds a key and
never shows it: not in repr, str, format, pickling or an exception.
"""

from __future__ import annotations

import hashlib
from typing import NoReturn

from cryptography.hazmat.primitives.ciphers import Cipher
from cryptography.hazmat.primitives.ciphers.algorithms import AES
from cryptography.hazmat.primitives.ciphers.modes import CBC, CTR, ECB
from cryptography.hazmat.primitives.cmac import CMAC

KEY_LENGTH = 16
BLOCK = 16

# Derivation constants of KDF-A (EN 13757-7 9.6.1): key for encryption or
# for the MAC, in the direction meter -> partner.
DC_ENCRYPTION_FROM_METER = 0x00
DC_MAC_FROM_METER = 0x01
KDF_PADDING = bytes([0x07] * 7)


class MeterKey:
    """A 128-bit AES key that never prints itself.

    ``fingerprint`` (8 hex digits of its SHA-256) lets a technician tell two
    keys apart, or check a key file against the vendor's list, without the
    key itself being shown anywhere.
    """

    __slots__ = ("_key",)
    _key: bytes

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_LENGTH:
            raise ValueError(f"an AES-128 key has {KEY_LENGTH} bytes, got {len(key)}")
        object.__setattr__(self, "_key", bytes(key))

    @classmethod
    def from_hex(cls, text: str) -> MeterKey:
        """A key from 32 hex digits; the error never repeats the text."""
        cleaned = text.strip().replace(" ", "").replace(":", "")
        if len(cleaned) != 2 * KEY_LENGTH:
            raise ValueError(
                f"a key is {2 * KEY_LENGTH} hex digits, this one has {len(cleaned)} characters"
            )
        try:
            return cls(bytes.fromhex(cleaned))
        except ValueError:
            raise ValueError("a key may contain only hex digits 0-9 and A-F") from None

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError("MeterKey is immutable")

    def __repr__(self) -> str:
        return f"MeterKey(fingerprint={self.fingerprint})"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __reduce__(self) -> NoReturn:
        raise TypeError("a MeterKey is not pickled: it would leave the process in clear")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MeterKey) and self._key == other._key

    def __hash__(self) -> int:
        return hash(self._key)

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self._key).hexdigest()[:8]

    def secret(self) -> bytes:
        """The key bytes, for the cipher only. Never log or print them."""
        return self._key


def cbc_decrypt(key: MeterKey | bytes, iv: bytes, data: bytes) -> bytes:
    secret = key.secret() if isinstance(key, MeterKey) else key
    decryptor = Cipher(AES(secret), CBC(iv)).decryptor()
    return decryptor.update(data) + decryptor.finalize()


def cbc_encrypt(key: MeterKey | bytes, iv: bytes, data: bytes) -> bytes:
    secret = key.secret() if isinstance(key, MeterKey) else key
    encryptor = Cipher(AES(secret), CBC(iv)).encryptor()
    return encryptor.update(data) + encryptor.finalize()


def ctr_crypt(key: MeterKey, counter_block: bytes, data: bytes) -> bytes:
    """AES-CTR (encryption and decryption are the same operation)."""
    cipher = Cipher(AES(key.secret()), CTR(counter_block)).encryptor()
    return cipher.update(data) + cipher.finalize()


def ecb_block(key: bytes, block: bytes) -> bytes:
    encryptor = Cipher(AES(key), ECB()).encryptor()
    return encryptor.update(block) + encryptor.finalize()


def cmac(key: MeterKey | bytes, data: bytes) -> bytes:
    secret = key.secret() if isinstance(key, MeterKey) else key
    mac = CMAC(AES(secret))
    mac.update(data)
    return mac.finalize()


def kdf_a(master: MeterKey, constant: int, counter: bytes, meter_id: bytes) -> bytes:
    """KDF-A: CMAC(master, DC || message counter || meter id || 07 x 7).

    ``counter`` is the 4 message-counter bytes as transmitted (least
    significant first), ``meter_id`` the 4 identification bytes as
    transmitted. The result is an ephemeral key for one message.
    """
    return cmac(master, bytes([constant]) + counter + meter_id + KDF_PADDING)
