"""Frozen records validated from parsed YAML, and their JSON Schema.

The config and the device profiles are plain frozen dataclasses whose type
hints say what a file may contain; :func:`validate` checks a parsed document
against them and reports every problem at once, each with the path of keys
that leads to it. This is the small part of a validation framework the agent
needs: on a Raspberry Pi the framework itself would cost more memory (about
20 MB of RSS) than the rest of the agent.

Hints understood: ``int``, ``float``, ``str``, ``bool``, ``Path``,
``Decimal``, ``datetime``, ``Literal[...]``, ``X | None``, unions (of
records told apart by a key each of them fixes with a Literal, such as a
bus's ``type``, or of plain forms tried in turn), ``tuple[X, ...]``,
``dict[K, V]``, nested records, and ``Annotated[X, Rule(...) | Parse(...)]``
for bounds, patterns and conversions such as durations. A field whose key in
the file is not a Python name (``for``) says so with
``field(metadata={"key": "for"})``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from drivers.core.errors import did_you_mean

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class Rule:
    """Bounds and shape of a value (``Annotated[int, Rule(ge=1, le=247)]``)."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    min_length: int | None = None
    pattern: str | None = None
    # What to tell a technician when the pattern does not match.
    explain: str | None = None


@dataclass(frozen=True, eq=False)  # hashed by identity: type hints are hashed
class Parse:
    """Convert the raw value before it is checked (e.g. "15m" -> 900.0);
    ``fn`` raises ValueError with a message for the technician."""

    fn: Callable[[Any], Any]
    schema: dict[str, Any]


@dataclass(frozen=True)
class Problem:
    loc: Loc
    kind: str  # missing, unknown_key, tag_missing, tag_unknown, invalid
    message: str


class Invalid(Exception):
    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(f"{dotted(p.loc)}: {p.message}" for p in problems))
        self.problems = problems


def dotted(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def validate(cls: type, data: Any) -> Any:
    """An instance of the record ``cls`` made from ``data``; Invalid lists every problem."""
    problems: list[Problem] = []
    value = _check(cls, data, (), problems)
    if problems:
        raise Invalid(problems)
    return value


@cache
def hints(cls: type) -> dict[str, Any]:
    """Field name -> type hint (with Annotated extras) of a record class."""
    return typing.get_type_hints(cls, include_extras=True)


def key_of(field: dataclasses.Field[Any]) -> str:
    """The field's key in the file (its name unless metadata says otherwise)."""
    return str(field.metadata.get("key", field.name))


def field_names(cls: type) -> list[str]:
    """The keys a record accepts, as the file spells them."""
    return [key_of(f) for f in dataclasses.fields(cls)]


def is_record(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


class _Bad:
    """Marks a value that failed; its problems are already recorded."""


_BAD = _Bad()


def _describe_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return f"a list of {len(value)}"
    return "a mapping" if isinstance(value, dict) else repr(value)


def _number(bound: float) -> str:
    """A bound as a technician would write it: 268435455, 0.1."""
    return str(int(bound)) if bound == int(bound) else repr(bound)


def _check(tp: Any, value: Any, loc: Loc, problems: list[Problem]) -> Any:
    origin = typing.get_origin(tp)
    if origin is Annotated:
        base, *extras = typing.get_args(tp)
        for extra in extras:
            if isinstance(extra, Parse):
                try:
                    value = extra.fn(value)
                except ValueError as exc:
                    problems.append(Problem(loc, "invalid", str(exc)))
                    return _BAD
        value = _check(base, value, loc, problems)
        if value is _BAD:
            return _BAD
        for extra in extras:
            if isinstance(extra, Rule) and (message := _broken_rule(extra, value)):
                problems.append(Problem(loc, "invalid", f"{message} (got {_describe_value(value)})"))
                return _BAD
        return value
    if origin is Literal:
        allowed = typing.get_args(tp)
        if any(value == a and type(value) is type(a) for a in allowed):
            return value
        choices = ", ".join(repr(a) for a in allowed)
        problems.append(Problem(loc, "invalid", f"expected {'one of ' if len(allowed) > 1 else ''}{choices} "
                                                f"(got {_describe_value(value)})"))
        return _BAD
    if origin in (Union, types.UnionType):
        return _check_union(typing.get_args(tp), value, loc, problems)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            problems.append(Problem(loc, "invalid", f"expected a list (got {_describe_value(value)})"))
            return _BAD
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            item_types = [args[0]] * len(value)
        elif len(value) != len(args):
            problems.append(Problem(loc, "invalid", f"expected a list of {len(args)} (got {len(value)})"))
            return _BAD
        else:
            item_types = list(args)
        items = [_check(t, item, (*loc, i), problems)
                 for i, (t, item) in enumerate(zip(item_types, value, strict=True))]
        return _BAD if any(i is _BAD for i in items) else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            problems.append(Problem(loc, "invalid", f"expected a mapping (got {_describe_value(value)})"))
            return _BAD
        key_type, value_type = typing.get_args(tp)
        out = {}
        for key, item in value.items():
            checked_key = _check(key_type, key, (*loc, key), problems)
            checked = _check(value_type, item, (*loc, key), problems)
            out[checked_key] = checked
        return _BAD if _BAD in out or any(v is _BAD for v in out.values()) else out
    if is_record(tp):
        return _check_record(tp, value, loc, problems)
    return _check_scalar(tp, value, loc, problems)


def _check_record(cls: type, value: Any, loc: Loc, problems: list[Problem]) -> Any:
    if not isinstance(value, dict):
        problems.append(Problem(loc, "invalid", f"expected a mapping of keys (got {_describe_value(value)})"))
        return _BAD
    fields = {key_of(f): f for f in dataclasses.fields(cls)}
    unknown = [key for key in value if key not in fields]
    for key in unknown:
        problems.append(Problem((*loc, key), "unknown_key", f"unknown key{did_you_mean(str(key), fields)}; "
                                f"allowed here: {', '.join(sorted(fields))}"))
    kwargs = {}
    failed = bool(unknown)
    for key, field in fields.items():
        if key in value:
            checked = _check(hints(cls)[field.name], value[key], (*loc, key), problems)
            failed |= checked is _BAD
            kwargs[field.name] = checked
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            problems.append(Problem((*loc, key), "missing", "required key is missing"))
            failed = True
    if failed:
        return _BAD
    try:
        return cls(**kwargs)
    except ValueError as exc:  # a record's own check across its fields (__post_init__)
        problems.append(Problem(loc, "invalid", str(exc)))
        return _BAD


def _check_union(arms: tuple[Any, ...], value: Any, loc: Loc, problems: list[Problem]) -> Any:
    if value is None and type(None) in arms:
        return None
    arms = tuple(a for a in arms if a is not type(None))
    if len(arms) == 1:
        return _check(arms[0], value, loc, problems)
    key = _tag_key(arms)
    if key is not None:
        tagged = {tag: arm for arm in arms for tag in _tags(arm, key)}
        choices = ", ".join(str(t) for t in tagged)
        if not isinstance(value, dict):
            problems.append(Problem(loc, "invalid", f"expected a mapping of keys (got {_describe_value(value)})"))
            return _BAD
        if key not in value:
            problems.append(Problem(loc, "tag_missing", f"needs a '{key}' ({choices})"))
            return _BAD
        tag = value[key]
        arm = tagged.get(tag) if isinstance(tag, (str, int)) and not isinstance(tag, bool) else None
        if arm is None:
            problems.append(Problem(loc, "tag_unknown", f"unknown {key} {tag!r}; use one of {choices}"))
            return _BAD
        return _check(arm, value, loc, problems)
    messages = []
    for arm in arms:
        attempt: list[Problem] = []
        checked = _check(arm, value, loc, attempt)
        if not attempt:
            return checked
        messages += [p.message for p in attempt]
    problems.append(Problem(loc, "invalid", "; or ".join(dict.fromkeys(messages))))
    return _BAD


def _tags(cls: type, key: str) -> tuple[Any, ...]:
    field = next((f for f in dataclasses.fields(cls) if key_of(f) == key), None)
    tp = hints(cls).get(field.name) if field else None
    return typing.get_args(tp) if typing.get_origin(tp) is Literal else ()


def _tag_key(arms: tuple[Any, ...]) -> str | None:
    """The key that tells these records apart: one that each of them fixes
    with a Literal ('type' first). None for a union of plain forms."""
    if not arms or not all(is_record(a) for a in arms):
        return None
    keys = [k for k in field_names(arms[0]) if all(_tags(a, k) for a in arms)]
    return "type" if "type" in keys else (keys[0] if keys else None)


def _check_scalar(tp: Any, value: Any, loc: Loc, problems: list[Problem]) -> Any:
    ok: Any = _BAD
    if tp is bool:
        ok = value if isinstance(value, bool) else _BAD
        wanted = "true or false"
    elif tp is int:
        ok = value if isinstance(value, int) and not isinstance(value, bool) else _BAD
        wanted = "a whole number"
    elif tp is float:
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
        ok = float(value) if numeric else _BAD
        wanted = "a number"
    elif tp is str:
        ok = value if isinstance(value, str) else _BAD
        wanted = "text"
    elif tp is Path:
        ok = Path(value) if isinstance(value, str) and value else _BAD
        wanted = "a path"
    elif tp is Decimal:
        wanted = "a number"
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            try:
                ok = Decimal(str(value))
            except InvalidOperation:
                ok = _BAD
            if ok is not _BAD and ok.is_nan():
                ok = _BAD
    elif tp is dt.datetime:
        ok, wanted = _datetime(value), "a date-time like 2025-01-12T21:00:00Z"
    elif tp is Any or tp is object:
        return value
    else:
        raise TypeError(f"records: no check for {tp!r}")
    if ok is _BAD:
        problems.append(Problem(loc, "invalid", f"expected {wanted} (got {_describe_value(value)})"))
    return ok


def _datetime(value: Any) -> Any:
    """A date-time from YAML (a timestamp it parsed, a date, ISO 8601 text);
    _BAD when it is none of these (a bare number is not taken for one)."""
    if isinstance(value, dt.datetime):
        return value
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day)
    if isinstance(value, str):
        try:
            return dt.datetime.fromisoformat(value.strip())
        except ValueError:
            return _BAD
    return _BAD


def _broken_rule(rule: Rule, value: Any) -> str | None:
    if rule.ge is not None and value < rule.ge:
        return f"must be at least {_number(rule.ge)}"
    if rule.gt is not None and value <= rule.gt:
        return f"must be greater than {_number(rule.gt)}"
    if rule.le is not None and value > rule.le:
        return f"must be at most {_number(rule.le)}"
    if rule.lt is not None and value >= rule.lt:
        return f"must be less than {_number(rule.lt)}"
    if rule.min_length is not None and len(value) < rule.min_length:
        return "must not be empty" if rule.min_length == 1 else f"needs at least {rule.min_length} items"
    if rule.pattern is not None and not re.fullmatch(rule.pattern, value):
        return rule.explain or f"must match {rule.pattern}"
    return None


# --- JSON Schema ---------------------------------------------------------------------------------

def json_schema(cls: type) -> dict[str, Any]:
    """JSON Schema (2020-12) of the record ``cls``, for editors."""
    defs: dict[str, Any] = {}
    root = _record_schema(cls, defs)
    return {**root, "$defs": {name: defs[name] for name in sorted(defs)}} if defs else root


def _record_schema(cls: type, defs: dict[str, Any]) -> dict[str, Any]:
    properties: dict[str, Any] = {}
    required = []
    for field in dataclasses.fields(cls):
        prop = _schema(hints(cls)[field.name], defs)
        key = key_of(field)
        if field.default is not dataclasses.MISSING:
            default = _json_default(field.default)
            if default is not dataclasses.MISSING:
                prop = {**prop, "default": default}
        elif field.default_factory is dataclasses.MISSING:
            required.append(key)
        properties[key] = prop
    schema: dict[str, Any] = {"type": "object", "title": cls.__name__, "properties": properties,
                              "additionalProperties": False}
    if required:
        schema["required"] = required
    return schema


def _json_default(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, tuple) and not value:
        return []
    if isinstance(value, (Path, Decimal)):
        return str(value)
    return dataclasses.MISSING  # a record default: described by its own schema


def _schema(tp: Any, defs: dict[str, Any]) -> dict[str, Any]:
    origin = typing.get_origin(tp)
    if origin is Annotated:
        base, *extras = typing.get_args(tp)
        parse = next((e for e in extras if isinstance(e, Parse)), None)
        schema = json.loads(json.dumps(parse.schema)) if parse else _schema(base, defs)
        for extra in extras:
            if isinstance(extra, Rule):
                # A parsed value (a duration) is bounded in its numeric form.
                for target in [a for a in schema.get("anyOf", []) if a.get("type") == "number"] or [schema]:
                    target.update({key: value for key, value in (
                        ("minimum", extra.ge), ("exclusiveMinimum", extra.gt), ("maximum", extra.le),
                        ("exclusiveMaximum", extra.lt),
                        ("minLength" if target.get("type") == "string" else "minItems", extra.min_length),
                        ("pattern", extra.pattern and f"^(?:{extra.pattern})$")) if value is not None})
        return schema
    if origin is Literal:
        return {"enum": list(typing.get_args(tp))}
    if origin in (Union, types.UnionType):
        arms = [_schema(a, defs) for a in typing.get_args(tp)]
        return {"anyOf": arms}
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return {"type": "array", "items": _schema(args[0], defs)}
        return {"type": "array", "prefixItems": [_schema(a, defs) for a in args], "items": False}
    if origin is dict:
        return {"type": "object", "additionalProperties": _schema(typing.get_args(tp)[1], defs)}
    if is_record(tp):
        if tp.__name__ not in defs:
            defs[tp.__name__] = {}  # reserve: records may nest
            defs[tp.__name__] = _record_schema(tp, defs)
        return {"$ref": f"#/$defs/{tp.__name__}"}
    simple = {bool: "boolean", int: "integer", float: "number", str: "string", Path: "string",
              type(None): "null"}
    if tp in simple:
        return {"type": simple[tp]}
    if tp is Decimal:
        return {"anyOf": [{"type": "number"}, {"type": "string"}]}
    if tp is dt.datetime:
        return {"type": "string", "format": "date-time"}
    return {}
