"""From a poll's answers to point values: the one decoding path shared by
the bus worker and `retrofit-agent probe`.

Most points decode from their own registers. A point with a scale register
(SunSpec's ``*_SF``) needs another register's exponent, which may come in
another request of the same poll, so exponents are taken from every answer
first, and the last one seen is kept for a poll whose exponent request failed.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal

from drivers.modbus.codec import BlockDecoder, Number, Value
from drivers.modbus.plan import ReadRequest
from drivers.modbus.profile import ModbusPoint

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


# Per point of a request: the point, its decoder, its byte offset in the
# answer, and the name of its exponent register (None when it has none).
Step = tuple[ModbusPoint, BlockDecoder, int, str | None]


class AnswerDecoder:
    """Decoders of one device's points, chosen once; exponents remembered."""

    def __init__(self, points: Iterable[ModbusPoint]) -> None:
        self.decoders: dict[str, BlockDecoder] = {p.name: p.block_decoder() for p in with_exponent_registers(points)}
        self.exponents: dict[str, int] = {}
        self._steps: dict[int, tuple[ReadRequest, list[Step]]] = {}

    def _steps_for(self, request: ReadRequest) -> list[Step]:
        """What to do for each point of a request, worked out once per plan."""
        known = self._steps.get(id(request))
        if known is not None and known[0] is request:
            return known[1]
        steps = []
        for point in request.points:
            if point.name.startswith(EXPONENT_PREFIX):
                continue
            source = point.scale_source
            steps.append((point, self.decoders[point.name], 2 * (point.address - request.start),
                          f"{EXPONENT_PREFIX}{source[0]}:{source[1]}" if source else None))
        if len(self._steps) > 256:  # plans changed many times (learned holes): start afresh
            self._steps.clear()
        self._steps[id(request)] = (request, steps)
        return steps

    def take_exponents(self, answers: Iterable[tuple[ReadRequest, bytes]]) -> None:
        for request, answer in answers:
            for point in request.points:
                if point.name.startswith(EXPONENT_PREFIX):
                    value = self.decoders[point.name](answer, 2 * (point.address - request.start))
                    if isinstance(value, int):  # an int16 register: always
                        self.exponents[point.name] = value

    def values(self, request: ReadRequest, answer: bytes) -> list[tuple[ModbusPoint, Value | None]]:
        """(point, value) of every point in one answer; hidden exponent points left out."""
        exponents = self.exponents
        return [(point, decode(answer, at) if exponent is None
                 else scaled_by_exponent(_number(decode(answer, at)), exponents.get(exponent)))
                for point, decode, at, exponent in self._steps_for(request)]


def _number(value: Value | None) -> Number | None:
    """A value a scale register applies to: numbers only (a profile gives text no scale)."""
    return None if isinstance(value, str) else value
