"""The config record of a wireless M-Bus receiver, and what a radio meter's address is.

A receiver is a USB stick on a serial port (IMST iM871A, Amber AMB8465;
bus ``type: wmbus``) or an SDR whose decoder prints one telegram per line
(rtl_433 -F json, rtl_wmbus) from a command the agent starts (``type:
wmbus-sdr``). It is one bus: it hears one transmission at a time. A device's address on it is the meter's
identification number as printed on the meter (8 characters, in quotes:
YAML reads 00012345 as an octal number).

The per-meter AES keys are never in the config: a key file (the CSV shape
vendors deliver) comes as the systemd credential ``wmbus-keys``, or from
``keys_file`` when the agent runs outside systemd (commissioning, tests).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from drivers.core.fields import Identifier, NonEmpty
from drivers.core.records import Parse

METER_ID = re.compile(r"[0-9A-Fa-f]{8}")
# The mode combinations both sticks can listen to (drivers/wmbus/im871a.py, amb8465.py).
MODE_SETS = (frozenset({"t1"}), frozenset({"c1"}), frozenset({"c1", "t1"}), frozenset({"s1"}))
DEFAULT_BAUDRATE = {"im871a": 57600, "amb8465": 9600}


def parse_mode(value: object) -> str:
    """``T1``, ``t1`` -> ``t1``; the radio modes a collector listens to."""
    if not isinstance(value, str) or value.lower() not in ("t1", "c1", "s1"):
        raise ValueError(f"expected a radio mode t1, c1 or s1 (got {value!r})")
    return value.lower()


Mode = Annotated[str, Parse(parse_mode, {"enum": ["t1", "c1", "s1", "T1", "C1", "S1"]})]


def _check_modes(modes: tuple[str, ...]) -> None:
    if frozenset(modes) not in MODE_SETS:
        raise ValueError(f"modes {'+'.join(modes) or '(none)'}: a receiver listens to t1, c1, t1 and c1 "
                         "together, or s1")


def _check_keys_file(path: Path | None) -> None:
    if path is not None and not path.is_absolute():
        raise ValueError(f"keys_file {path}: give an absolute path (the agent does not run where the config is)")


@dataclass(frozen=True, kw_only=True)
class WmbusBus:
    """A receiver stick on a serial port."""

    id: Identifier
    type: Literal["wmbus"]
    stick: Literal["im871a", "amb8465"]
    port: NonEmpty
    # The stick's UART speed; absent: its factory setting (iM871A 57600, AMB8465 9600).
    baudrate: Literal[9600, 19200, 38400, 57600, 115200] | None = None
    # What the meters send: T1 (most water meters, HCAs), C1 (newer ones), both, or S1.
    modes: tuple[Mode, ...] = ("t1",)
    # Outside systemd only: the per-meter key file (meter id, key). Under
    # systemd the key file comes as the credential `wmbus-keys`.
    keys_file: Path | None = None

    def __post_init__(self) -> None:
        _check_modes(self.modes)
        _check_keys_file(self.keys_file)

    @property
    def serial_baudrate(self) -> int:
        return self.baudrate or DEFAULT_BAUDRATE[self.stick]

    def describe(self) -> str:
        modes = "+".join(mode.upper() for mode in sorted(self.modes))
        return f"{self.stick} on {self.port} {self.serial_baudrate} 8N1, {modes}"


@dataclass(frozen=True, kw_only=True)
class WmbusSdrBus:
    """An SDR receiver: the agent runs its decoder and reads one telegram per output line."""

    id: Identifier
    type: Literal["wmbus-sdr"]
    # The decoder's command line: `rtl_433 -F json -f 868.95M -s 1.6M -Y minmax`, `rtl_wmbus`, ...
    # Its standard output is rtl_433 JSON or rtl_wmbus lines; it is started
    # again (with a growing pause) when it exits.
    command: NonEmpty
    # Outside systemd only, as for a stick.
    keys_file: Path | None = None

    modes = ("t1", "c1")  # what the SDR decoders hear at 868.95 MHz (for `scan`)

    def __post_init__(self) -> None:
        _check_keys_file(self.keys_file)

    def describe(self) -> str:
        return f"SDR decoder `{self.command}`"


AnyWmbusBus = WmbusBus | WmbusSdrBus


def check_address(address: object) -> str | None:
    """The meter's identification number: 8 digits in quotes."""
    if isinstance(address, str) and METER_ID.fullmatch(address):
        return None
    if isinstance(address, int) and not isinstance(address, bool):
        return (f"a radio meter's address is its 8-digit identification number in quotes, e.g. "
                f"\"{address:08d}\" (YAML reads a number with leading zeros as octal) (got {address!r})")
    return f"a radio meter's address is its 8-digit identification number in quotes (got {address!r})"
