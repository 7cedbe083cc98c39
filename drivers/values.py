"""From a poll's answers to point values: the one decoding path shared by
the bus worker and `retrofit-agent probe`.

Most points decode from their own registers. A point with a scale register
(SunSpec's ``*_SF``) needs another register's exponent, which may come in
another request of the same poll, so exponents are taken from every answer
first, and the last one seen is kept for a poll whose exponent request failed.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from decimal import Decimal

from drivers.codec import BlockDecoder, Number, Value
from drivers.plan import ReadRequest
from drivers.profile import ModbusPoint

EXPONENT_PREFIX = "_exponent:"
NOT_IMPLEMENTED = -32768  # SunSpec: the meter has no such value


def with_exponent_registers(points: Iterable[ModbusPoint]) -> tuple[ModbusPoint, ...]:
    """The points plus, read alongside them, each scale register they need
    (one hidden int16 point per register, however many points share it)."""
    points = tuple(points)
    sources = dict.fromkeys(p.scale_source for p in points if p.scale_source is not None)
    hidden = tuple(ModbusPoint(name=f"{EXPONENT_PREFIX}{table}:{address}", table=table, address=address,
                               type="int16", unit="", kind="gauge") for table, address in sources)
    return points + hidden


def scaled_by_exponent(value: Number | None, exponent: int | None) -> Number | None:
    """value x 10^exponent, exactly; None when the exponent is missing or says
    "not implemented"."""
    if value is None or exponent is None or exponent == NOT_IMPLEMENTED or not -20 <= exponent <= 20:
        return None
    exact = Decimal(repr(value) if isinstance(value, float) else value).scaleb(exponent)
    return int(exact) if exact == exact.to_integral_value() else float(exact)


class AnswerDecoder:
    """Decoders of one device's points, chosen once; exponents remembered."""

    def __init__(self, points: Iterable[ModbusPoint]) -> None:
        self.decoders: dict[str, BlockDecoder] = {p.name: p.block_decoder() for p in with_exponent_registers(points)}
        self.exponents: dict[str, int] = {}

    def take_exponents(self, answers: Iterable[tuple[ReadRequest, bytes]]) -> None:
        for request, answer in answers:
            for point in request.points:
                if point.name.startswith(EXPONENT_PREFIX):
                    value = self.decoders[point.name](answer, 2 * (point.address - request.start))
                    self.exponents[point.name] = int(value)

    def values(self, request: ReadRequest, answer: bytes) -> Iterator[tuple[ModbusPoint, Value | None]]:
        """(point, value) of every point in one answer; hidden exponent points left out."""
        decoders = self.decoders
        start = request.start
        for point in request.points:
            name = point.name
            if name.startswith(EXPONENT_PREFIX):
                continue
            value = decoders[name](answer, 2 * (point.address - start))
            if point.scale_register is not None:
                table, address = point.scale_source  # type: ignore[misc]
                value = scaled_by_exponent(value, self.exponents.get(f"{EXPONENT_PREFIX}{table}:{address}"))  # type: ignore[arg-type]
            yield point, value
