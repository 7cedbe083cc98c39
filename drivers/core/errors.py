"""The project's exception hierarchy: a leaf module, imported from anywhere.

Every error names what happened, to which device or key, and what to do.
Code that catches errors catches these, never bare ``Exception``.
"""

from __future__ import annotations

from collections.abc import Iterable


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest choice, or '' when none is close.

    Case is ignored (a technician types the model as printed on the meter:
    ``SDM630``), and a word that is part of exactly one choice names it
    (``sdm72`` -> ``eastron-sdm72``). difflib is imported here, on the error
    path only: the running agent never needs it."""
    import difflib

    by_lower = {choice.lower(): choice for choice in choices}
    lowered = word.lower()
    if lowered in by_lower:
        return f" (did you mean {by_lower[lowered]!r}?)"
    containing = [choice for low, choice in by_lower.items() if len(lowered) >= 3 and lowered in low]
    if len(containing) == 1:
        return f" (did you mean {containing[0]!r}?)"
    guess = difflib.get_close_matches(lowered, list(by_lower), n=1)
    return f" (did you mean {by_lower[guess[0]]!r}?)" if guess else ""


class RetrofitError(Exception):
    """Base of every error this project raises on purpose."""


class ConfigError(RetrofitError):
    """A configuration file is unusable; carries one problem per line."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class ProfileError(RetrofitError):
    """A device profile file is malformed or missing."""


class DecodeError(RetrofitError):
    """Bytes or registers from a meter could not be turned into values."""


class FrameError(DecodeError):
    """A link-layer frame is malformed: length, checksum, start or stop byte."""


class BusError(RetrofitError):
    """A transaction on a bus failed: timeout, no answer, garbled reply."""


class MismatchedReply(BusError):
    """A reply that does not answer the request sent: another function code,
    unit, transaction, register count, address or meter. Never a value.

    ``kind`` names the mismatch in a word, so repeats can be counted without
    logging each one."""

    def __init__(self, message: str, kind: str) -> None:
        self.kind = kind
        super().__init__(message)


class ExceptionResponse(BusError):
    """The device answered with a Modbus exception (e.g. 02 illegal address)."""

    def __init__(self, message: str, code: int) -> None:
        self.code = code
        super().__init__(message)


class PortUnavailable(BusError):
    """The port or host cannot be used at all (missing, no permission,
    settings it refuses, nothing listening): not the same as a silent
    meter, and said at once instead of after a scan of empty answers."""

    def __init__(self, message: str, settings_refused: bool = False) -> None:
        self.settings_refused = settings_refused  # another baud rate or parity may still open
        super().__init__(message)


class UsageError(RetrofitError):
    """The command line itself is wrong (missing or contradicting options)."""


class InputUnreadable(RetrofitError):
    """A file a command was given to read cannot be read."""


class StorageError(RetrofitError):
    """The local buffer cannot be opened or written."""
