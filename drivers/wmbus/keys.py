"""Per-meter AES keys: the key file vendors deliver, and the lookup by meter id.

The file is CSV-like, one meter per line, as vendors send it::

    # building Złotego Wieku 7, delivered 2025-03-01
    meter_id;key
    12345678;0102030405060708090A0B0C0D0E0F11
    12345679, 11223344556677889900AABBCCDDEEFF
    00001234  ELS  A1B2C3D4E5F60718293A4B5C6D7E8F90

Fields are separated by commas, semicolons, tabs or spaces; the first field
is the meter's identification number (up to 8 digits, zero-padded), the
last one the 32-hex-digit key; fields in between (manufacturer, address)
are ignored. ``#`` starts a comment; one header line is allowed. A broken
line is reported as ``file:line: what is wrong`` and never repeats the key.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path

from drivers.core.errors import ConfigError
from drivers.wmbus.crypto import MeterKey

_SEPARATORS = re.compile(r"[,;\t ]+")
_METER_ID = re.compile(r"[0-9A-Fa-f]{1,8}")
_HEX_KEY = re.compile(r"[0-9A-Fa-f]{32}")
CREDENTIAL_NAME = "wmbus-keys"


def normalise_id(text: str) -> str | None:
    """An identification number as 8 upper-case characters, None if it is not one."""
    text = text.strip()
    if text.lower().startswith("0x"):
        text = text[2:]
    if not _METER_ID.fullmatch(text):
        return None
    return text.upper().zfill(8)


class KeyRing:
    """Keys by meter identification number, plus an optional key for every meter.

    The default key is what ``--key HEX`` gives on the command line: one
    key tried for any meter the file does not name. Its repr says how many
    keys it holds and nothing else.
    """

    def __init__(
        self, keys: Mapping[str, MeterKey] | None = None, default: MeterKey | None = None
    ) -> None:
        self._keys = dict(keys or {})
        self._default = default

    def __repr__(self) -> str:
        return f"KeyRing({len(self._keys)} meter keys{', default key' if self._default else ''})"

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, identification: object) -> bool:
        return isinstance(identification, str) and identification in self._keys

    def meters(self) -> list[str]:
        return sorted(self._keys)

    def key_for(self, identification: str) -> MeterKey | None:
        return self._keys.get(identification, self._default)

    @classmethod
    def single(cls, key: MeterKey) -> KeyRing:
        return cls(default=key)


EMPTY = KeyRing()


def parse_key_lines(lines: Iterable[str], source: str = "<keys>") -> KeyRing:
    """Parse key-file lines; ConfigError lists every bad line (``source:line: ...``)."""
    keys: dict[str, MeterKey] = {}
    where: dict[str, int] = {}
    problems: list[str] = []
    seen_data = False
    for number, raw in enumerate(lines, start=1):
        line = raw.split("#", 1)[0].strip().lstrip("\ufeff")
        if not line:
            continue
        fields = [field.strip("\"'") for field in _SEPARATORS.split(line) if field]
        meter = normalise_id(fields[0]) if fields else None
        key_text = fields[-1] if len(fields) >= 2 else ""
        if meter is None or not _HEX_KEY.fullmatch(key_text):
            if not seen_data and meter is None and not _HEX_KEY.fullmatch(key_text):
                seen_data = True  # a header line: "meter_id;key", "ID,AES key", ...
                continue
            problems.append(f"{source}:{number}: {_what_is_wrong(fields, meter)}")
            seen_data = True
            continue
        seen_data = True
        key = MeterKey.from_hex(key_text)
        if meter in keys and keys[meter] != key:
            problems.append(
                f"{source}:{number}: meter {meter} already has a different key on line "
                f"{where[meter]}; which one is right? Remove the other line."
            )
            continue
        keys[meter] = key
        where[meter] = number
    if problems:
        raise ConfigError(problems)
    return KeyRing(keys)


def _what_is_wrong(fields: list[str], meter: str | None) -> str:
    if len(fields) < 2:
        return "expected a meter id and a key separated by ',' ';' tab or space"
    if meter is None:
        return (
            f"meter id {fields[0][:12]!r} is not an identification number "
            "(up to 8 digits, as printed on the meter)"
        )
    key_text = fields[-1]
    if len(key_text) != 32:
        return (
            f"the key for meter {meter} has {len(key_text)} characters, an AES-128 key "
            "has 32 hex digits"
        )
    return f"the key for meter {meter} contains characters that are not hex digits 0-9 A-F"


def load_key_file(path: Path) -> KeyRing:
    """Read and parse a key file; an unreadable file is a ConfigError too."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read the key file: {exc.strerror}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: the key file is not UTF-8 text"]) from None
    return parse_key_lines(text.splitlines(), str(path))


def credentials_key_file(environ: Mapping[str, str] | None = None) -> Path | None:
    """The key file systemd hands over with LoadCredential=wmbus-keys:..., if any.

    The unit gives the credential a one-newline fallback (SetCredential=,
    as for the broker password): a blank credential means no key file."""
    directory = (environ if environ is not None else os.environ).get("CREDENTIALS_DIRECTORY")
    if not directory:
        return None
    candidate = Path(directory) / CREDENTIAL_NAME
    try:
        return candidate if candidate.is_file() and candidate.read_bytes().strip() else None
    except OSError:
        return candidate  # there, but unreadable: load_key_file says why


def key_file_for(explicit: Path | None, environ: Mapping[str, str] | None = None) -> Path | None:
    """A bus's key file: its ``keys_file``, else the systemd credential, else none."""
    return explicit if explicit is not None else credentials_key_file(environ)


def load_bus_keys(explicit: Path | None, environ: Mapping[str, str] | None = None) -> KeyRing:
    """The key ring of a receiver: empty when no key file is configured."""
    path = key_file_for(explicit, environ)
    return EMPTY if path is None else load_key_file(path)


def permission_problem(path: Path) -> str | None:
    """Why a key file is too open (group or others may read it), None when it is fine."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        return (
            f"{path}: the key file can be read by group or others (mode "
            f"{stat.S_IMODE(mode):o}); chmod 600 it, or deliver it as a systemd credential"
        )
    return None
