"""The config record of a wired M-Bus line, and what an M-Bus address may be."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Literal

from drivers.core.durations import Duration
from drivers.core.fields import Identifier, NonEmpty
from drivers.core.records import Rule

SECONDARY_ADDRESS = re.compile(r"[0-9]{8}")


@dataclass(frozen=True, kw_only=True)
class MbusBus:
    id: Identifier
    type: Literal["mbus"]
    # A serial port (/dev/ttyAMA0, a USB level converter) or a transparent
    # TCP-to-serial gateway as socket://host:port.
    port: NonEmpty
    baudrate: Literal[300, 600, 1200, 2400, 4800, 9600, 19200, 38400] = 2400
    parity: Literal["N", "E", "O"] = "E"  # M-Bus is 8E1; a pty (tests) only takes N
    # Per telegram; the default follows EN 13757-2 (330 bit times + 50 ms).
    timeout: Duration | None = None
    retries: Annotated[int, Rule(ge=0, le=5)] = 2

    def describe(self) -> str:
        return f"{self.port} {self.baudrate} 8{self.parity}1"


def check_address(address: object) -> str | None:
    """A primary address 1..250 (0 is a meter not yet given one), or the
    8-digit identification number as text (its secondary address)."""
    if isinstance(address, str):
        return None if SECONDARY_ADDRESS.fullmatch(address) else \
            f"a secondary address is 8 digits in quotes (got {address!r})"
    if isinstance(address, int) and not isinstance(address, bool) and 1 <= address <= 250:
        return None
    return (f"an M-Bus primary address is 1..250, or give the 8-digit secondary address in quotes "
            f"(got {address!r})")
