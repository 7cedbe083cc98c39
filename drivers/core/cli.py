"""What every protocol's commissioning verbs share on the command line:
address ranges as a technician types them, and a progress line for a long
search (a bus scan) for the person watching it."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO

from drivers.core.errors import UsageError


def parse_ranges(text: str, lowest: int, highest: int, option: str = "--addresses") -> list[int]:
    """``1-247`` or ``1,5,10-20`` -> the numbers, each within lowest..highest."""
    numbers: list[int] = []
    for part in text.split(","):
        low, sep, high = part.strip().partition("-")
        try:
            first, last = int(low), int(high) if sep else int(low)
        except ValueError:
            raise UsageError(f"{option}: cannot read {part!r}; use e.g. 1-247 or 1,5,10-20") from None
        if not (lowest <= first <= last <= highest):
            raise UsageError(f"{option}: {part!r} is outside {lowest}..{highest}")
        numbers.extend(range(first, last + 1))
    return numbers


class Progress:
    """How far a long search is. On a terminal one line is rewritten in
    place; elsewhere (a pipe, a log) a line every ``every_s`` seconds, so a
    scan of several minutes never looks hung."""

    def __init__(self, stream: TextIO, every_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._stream = stream
        self._tty = stream.isatty()
        self._every_s = every_s
        self._clock = clock
        self._last = clock()
        self._shown = False

    def update(self, text: str) -> None:
        if self._tty:
            self._stream.write("\r\x1b[K" + text)
            self._stream.flush()
            self._shown = True
        elif self._clock() - self._last >= self._every_s:
            self._last = self._clock()
            self._stream.write(f"  ... {text}\n")
            self._stream.flush()

    def clear(self) -> None:
        """Take the progress line away (before a result line, and at the end)."""
        if self._shown:
            self._stream.write("\r\x1b[K")
            self._stream.flush()
            self._shown = False
