"""Unit tests of agent/records.py: checking parsed YAML against frozen records; JSON Schema."""

import datetime as dt
import re
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.config import Config, GatewayConfig, MqttConfig
from drivers.core.records import Invalid, Parse, Rule, dotted, json_schema, validate

pytestmark = pytest.mark.timeout(30)
Byte = Annotated[int, Rule(ge=0, le=255)]


@dataclass(frozen=True, kw_only=True)
class Scalars:
    i: int = 0
    f: float = 0.0
    b: bool = False
    s: str = ""
    p: Path = Path("x")
    d: Decimal = Decimal(0)


@dataclass(frozen=True, kw_only=True)
class Serial:
    baud: Literal[9600, 19200] = 9600
    flag: Literal[1] = 1
    name: str | None = "x"
    address: int | Annotated[str, Rule(pattern=r"[0-9]{8}")] = 0


@dataclass(frozen=True, kw_only=True)
class Tcp:
    type: Literal["tcp"]
    host: str


@dataclass(frozen=True, kw_only=True)
class Rtu:
    type: Literal["rtu"]
    port: str


@dataclass(frozen=True, kw_only=True)
class Site:
    bus: Tcp | Rtu


@dataclass(frozen=True, kw_only=True)
class Inner:
    n: Byte


@dataclass(frozen=True, kw_only=True)
class Outer:
    name: str
    inner: Inner
    items: tuple[Inner, ...] = ()
    triple: tuple[str, int, int] = ("a", 1, 2)
    rates: dict[str, Annotated[float, Rule(gt=0)]] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Ruled:
    pos: Annotated[float, Rule(gt=0)] = 1.0
    text: Annotated[str, Rule(min_length=1)] = "x"
    many: Annotated[tuple[int, ...], Rule(min_length=2)] = (1, 2)
    digits: Annotated[str, Rule(pattern=r"[0-9]{3}", explain="three digits, please")] = "123"
    code: Annotated[str, Rule(pattern=r"ab|cd")] = "ab"
    step: Annotated[Decimal, Rule(gt=0)] = Decimal(1)


def halve(value: Any) -> float:
    if not isinstance(value, str) or not value.endswith("h"):
        raise ValueError(f"expected hours like 2h, got {value!r}")
    return float(value[:-1]) / 2


@dataclass(frozen=True, kw_only=True)
class Parsed:
    half: Annotated[float, Parse(halve, {"type": "string"}), Rule(le=10)]


@dataclass(frozen=True, kw_only=True)
class Window:
    start: int
    end: int

    def __post_init__(self) -> None:
        if self.end < self.start:
            raise ValueError("end must not be before start")


@dataclass(frozen=True, kw_only=True)
class Span:
    window: Window


def problems(cls: type, data: Any) -> list[tuple[tuple, str, str]]:
    with pytest.raises(Invalid) as caught:
        validate(cls, data)
    return [(p.loc, p.kind, p.message) for p in caught.value.problems]


def rejects(cls: type, data: Any) -> bool:
    try:
        validate(cls, data)
    except Invalid:
        return True
    return False


# Scalars

@pytest.mark.parametrize("value", [True, 1.0, "1"])
def test_int_rejects_bool_float_and_text(value: Any) -> None:
    assert problems(Scalars, {"i": value}) == [
        (("i",), "invalid", f"expected a whole number (got {value!r})")]


def test_float_accepts_int_and_converts_but_rejects_bool() -> None:
    value = validate(Scalars, {"f": 3}).f
    assert value == 3.0 and type(value) is float
    assert rejects(Scalars, {"f": True})


@pytest.mark.parametrize("value", [1, 0, "true", "yes", None])
def test_bool_is_only_true_or_false(value: Any) -> None:
    assert problems(Scalars, {"b": value}) == [
        (("b",), "invalid", f"expected true or false (got {value!r})")]


def test_str_and_path() -> None:
    assert validate(Scalars, {"s": "hi", "p": "/dev/x"}) == Scalars(s="hi", p=Path("/dev/x"))
    assert rejects(Scalars, {"s": 5}) and rejects(Scalars, {"p": ""}) and rejects(Scalars, {"p": 3})


@pytest.mark.parametrize(("raw", "exact"), [(3, "3"), (0.1, "0.1"), ("0.001", "0.001")])
def test_decimal_is_exact(raw: Any, exact: str) -> None:
    assert str(validate(Scalars, {"d": raw}).d) == exact


def test_decimal_rejects_bool_and_garbage() -> None:
    assert rejects(Scalars, {"d": True}) and rejects(Scalars, {"d": "ten"})


# Literal, Optional, unions

def test_literal_compares_type_as_well_as_value() -> None:
    assert validate(Serial, {"baud": 19200}).baud == 19200
    assert problems(Serial, {"baud": "9600"}) == [
        (("baud",), "invalid", "expected one of 9600, 19200 (got '9600')")]
    assert problems(Serial, {"flag": True}) == [(("flag",), "invalid", "expected 1 (got True)")]


def test_optional_accepts_none() -> None:
    assert validate(Serial, {"name": None}).name is None


def test_plain_union_arms_tried_in_order() -> None:
    assert validate(Serial, {"address": 5}).address == 5
    assert validate(Serial, {"address": "12345678"}).address == "12345678"
    [(loc, kind, message)] = problems(Serial, {"address": "1234"})
    assert (loc, kind) == (("address",), "invalid")
    assert "expected a whole number" in message and "must match [0-9]{8}" in message


def test_tagged_union_picks_record_by_type() -> None:
    assert validate(Site, {"bus": {"type": "rtu", "port": "p"}}).bus == Rtu(type="rtu", port="p")
    assert validate(Site, {"bus": {"type": "tcp", "host": "h"}}).bus == Tcp(type="tcp", host="h")


def test_tagged_union_type_missing_and_unknown() -> None:
    assert problems(Site, {"bus": {"host": "h"}}) == [(("bus",), "tag_missing", "needs a 'type' (tcp, rtu)")]
    assert problems(Site, {"bus": {"type": "udp"}}) == [
        (("bus",), "tag_unknown", "unknown type 'udp'; use one of tcp, rtu")]


def test_tagged_union_unhashable_type_is_a_problem() -> None:
    assert problems(Site, {"bus": {"type": ["tcp"]}})[0][:2] == (("bus",), "tag_unknown")


@dataclass(frozen=True, kw_only=True)
class Heat:
    model: Literal["heat"]
    kw: float


@dataclass(frozen=True, kw_only=True)
class Room:
    model: Literal["room"]
    setpoint: float = 21.0


@dataclass(frozen=True, kw_only=True)
class Plant:
    devices: tuple[Heat | Room, ...]


def test_records_are_told_apart_by_any_key_they_all_fix() -> None:
    assert validate(Plant, {"devices": [{"model": "room"}, {"model": "heat", "kw": 5}]}).devices == (
        Room(model="room"), Heat(model="heat", kw=5.0))
    assert problems(Plant, {"devices": [{"model": "fridge"}, {"model": "heat", "kw": "lots"}]}) == [
        (("devices", 0), "tag_unknown", "unknown model 'fridge'; use one of heat, room"),
        (("devices", 1, "kw"), "invalid", "expected a number (got 'lots')")]


@dataclass(frozen=True, kw_only=True)
class Fault:
    for_: float | None = field(default=None, metadata={"key": "for"})
    at: dt.datetime | None = None
    share: Annotated[float, Rule(gt=0, lt=1)] = 0.5


def test_a_key_that_is_not_a_python_name_and_date_times() -> None:
    fault = validate(Fault, {"for": 3, "at": "2025-01-14T06:00:00Z"})
    assert fault.for_ == 3.0 and fault.at == dt.datetime(2025, 1, 14, 6, tzinfo=dt.UTC)
    assert validate(Fault, {"at": dt.date(2025, 1, 14)}).at == dt.datetime(2025, 1, 14)
    assert problems(Fault, {"for_": 3}) == [(("for_",), "unknown_key", ("unknown key (did you mean 'for'?); "
                                                                     "allowed here: at, for, share"))]
    assert [p[2] for p in problems(Fault, {"at": 1736834400, "share": 1})] == [
        "expected a date-time like 2025-01-12T21:00:00Z (got 1736834400)", "must be less than 1 (got 1.0)"]
    assert json_schema(Fault)["properties"]["for"] == {"anyOf": [{"type": "number"}, {"type": "null"}],
                                                       "default": None}
    assert json_schema(Fault)["properties"]["share"]["exclusiveMaximum"] == 1


# Containers, nesting, defaults, keys

def test_nested_records_tuples_dicts_and_defaults() -> None:
    data = {"name": "o", "inner": {"n": 1}, "items": [{"n": 2}], "rates": {"a": 1}}
    assert validate(Outer, data) == Outer(
        name="o", inner=Inner(n=1), items=(Inner(n=2),), rates={"a": 1.0})
    assert validate(Outer, {"name": "o", "inner": {"n": 1}}).rates == {}


def test_fixed_length_tuple_wrong_length() -> None:
    data = {"name": "o", "inner": {"n": 1}, "triple": ["a", 1]}
    assert problems(Outer, data) == [(("triple",), "invalid", "expected a list of 3 (got 2)")]


def test_item_and_dict_value_locs() -> None:
    data = {"name": "o", "inner": {"n": 1}, "items": [{"n": 1}, {"n": 300}],
            "rates": {"ok": 1, "bad": 0}}
    assert [p[0] for p in problems(Outer, data)] == [("items", 1, "n"), ("rates", "bad")]


def test_missing_and_unknown_keys() -> None:
    assert problems(Outer, {"name": "o", "inner": {}}) == [
        (("inner", "n"), "missing", "required key is missing")]
    assert problems(Outer, {"name": "o", "inner": {"n": 1, "m": 2}}) == [
        (("inner", "m"), "unknown_key", "unknown key; allowed here: n")]


def test_every_problem_reported_at_once() -> None:
    data = {"inner": {"n": -1}, "items": [{"n": 1, "x": 0}]}
    assert [p[:2] for p in problems(Outer, data)] == [
        (("name",), "missing"), (("inner", "n"), "invalid"), (("items", 0, "x"), "unknown_key")]


@pytest.mark.parametrize(("loc", "text"), [
    (("devices", 1, "address"), "devices[1].address"), (("uplink", "mqtt"), "uplink.mqtt"),
    ((), "(top level)"), ((0, "a"), "[0].a")])
def test_dotted(loc: tuple, text: str) -> None:
    assert dotted(loc) == text


def test_post_init_value_error_is_one_problem_at_record() -> None:
    assert problems(Span, {"window": {"start": 5, "end": 1}}) == [
        (("window",), "invalid", "end must not be before start")]


# Rule and Parse

def test_bounds() -> None:
    assert problems(Inner, {"n": -1}) == [(("n",), "invalid", "must be at least 0 (got -1)")]
    assert problems(Inner, {"n": 256}) == [(("n",), "invalid", "must be at most 255 (got 256)")]
    assert problems(Ruled, {"pos": 0}) == [
        (("pos",), "invalid", "must be greater than 0 (got 0.0)")]


def test_min_length_on_str_and_tuple() -> None:
    assert problems(Ruled, {"text": ""}) == [(("text",), "invalid", "must not be empty (got '')")]
    [(loc, _, message)] = problems(Ruled, {"many": [1]})
    assert loc == ("many",) and message.startswith("needs at least 2 items")


def test_pattern_is_full_match_and_uses_explain() -> None:
    assert problems(Ruled, {"digits": "1234"}) == [
        (("digits",), "invalid", "three digits, please (got '1234')")]
    assert rejects(Ruled, {"code": "abcd"}) and rejects(Ruled, {"code": "xab"})
    assert validate(Ruled, {"code": "cd"}).code == "cd"


def test_parse_runs_before_rules() -> None:
    assert validate(Parsed, {"half": "8h"}).half == 4.0
    assert problems(Parsed, {"half": "30h"}) == [
        (("half",), "invalid", "must be at most 10 (got 15.0)")]


def test_parse_value_error_becomes_message() -> None:
    assert problems(Parsed, {"half": 3}) == [
        (("half",), "invalid", "expected hours like 2h, got 3")]


def test_nan_float_fails_bounds() -> None:
    assert rejects(Ruled, {"pos": float("nan")})


def test_nan_decimal_fails_bounds() -> None:
    assert problems(Ruled, {"step": "NaN"})[0][:2] == (("step",), "invalid")


def test_large_bound_printed_exactly() -> None:
    [(_, _, message)] = problems(MqttConfig, {"host": "h", "max_message_bytes": 300_000_000})
    assert message == "must be at most 268435455 (got 300000000)"


# JSON Schema

def test_schema_of_record() -> None:
    schema = json_schema(Outer)
    assert schema["required"] == ["name", "inner"] and schema["additionalProperties"] is False
    assert schema["properties"]["inner"] == {"$ref": "#/$defs/Inner"}
    assert schema["properties"]["items"] == {
        "type": "array", "items": {"$ref": "#/$defs/Inner"}, "default": []}
    assert schema["$defs"]["Inner"]["properties"]["n"] == {
        "type": "integer", "minimum": 0, "maximum": 255}


def test_schema_literal_union_and_pattern() -> None:
    props = json_schema(Serial)["properties"]
    assert props["baud"] == {"enum": [9600, 19200], "default": 9600}
    assert props["name"]["anyOf"] == [{"type": "string"}, {"type": "null"}]
    assert props["address"]["anyOf"] == [
        {"type": "integer"}, {"type": "string", "pattern": "^(?:[0-9]{8})$"}]
    assert json_schema(Ruled)["properties"]["code"]["pattern"] == "^(?:ab|cd)$"


def patterns(node: Any) -> list[str]:
    if isinstance(node, list):
        return [p for v in node for p in patterns(v)]
    if not isinstance(node, dict):
        return []
    own = [node["pattern"]] if isinstance(node.get("pattern"), str) else []
    return own + [p for v in node.values() for p in patterns(v)]


def test_config_schema_patterns_compile() -> None:
    found = patterns(json_schema(Config))
    assert len(found) >= 3
    for pattern in found:
        re.compile(pattern)


@pytest.mark.parametrize("value", ["elec-main", "a", "x" * 64, "a b", "x" * 65, "-a", "a/b", ""])
def test_identifier_schema_pattern_agrees_with_validation(value: str) -> None:
    pattern = json_schema(Config)["$defs"]["GatewayConfig"]["properties"]["id"]["pattern"]
    valid = not rejects(GatewayConfig, {"id": value, "site": "s"})
    assert (re.search(pattern, value) is not None) == valid


@pytest.mark.parametrize("value", ["buildings", "a/b.c", "a//b", "/a", "a/", "a b"])
def test_topic_prefix_schema_pattern_agrees_with_validation(value: str) -> None:
    pattern = json_schema(Config)["$defs"]["MqttConfig"]["properties"]["topic_prefix"]["pattern"]
    valid = not rejects(MqttConfig, {"host": "h", "topic_prefix": value})
    assert (re.search(pattern, value) is not None) == valid


# Property-based

@given(st.integers(min_value=-(2**70), max_value=2**70))
def test_bounded_int_accepted_iff_in_range(v: int) -> None:
    assert (not rejects(Inner, {"n": v})) == (0 <= v <= 255)
