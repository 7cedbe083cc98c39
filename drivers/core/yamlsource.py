"""YAML with line numbers, strictly: every value keeps where it came from.

PyYAML's safe loader forgets positions and silently lets a later duplicate
key win. A technician's duplicated key is a mistake we must report, and every
report must name the line, so we walk the composed node tree ourselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

Path_ = tuple[str | int, ...]


@dataclass(frozen=True)
class Located:
    """Parsed YAML plus the line of every key path (1-based)."""

    data: Any
    lines: dict[Path_, int]

    def line_of(self, path: Path_) -> int:
        """Line of the deepest known prefix of ``path`` (1 if nothing matches)."""
        for cut in range(len(path), -1, -1):
            line = self.lines.get(tuple(path[:cut]))
            if line is not None:
                return line
        return 1


class YamlProblem(Exception):
    """The text is not YAML we accept; ``line`` says where."""

    def __init__(self, line: int, message: str) -> None:
        self.line = line
        self.message = message
        super().__init__(f"line {line}: {message}")


def load_located(text: str) -> Located:
    loader: yaml.SafeLoader | None = None
    try:
        loader = yaml.SafeLoader(text)
        root = loader.get_single_node()
        lines: dict[Path_, int] = {}
        data = _build(loader, root, (), lines) if root is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        reason = exc.problem or str(exc)
        if "\\t" in reason or "\t" in reason:
            reason += " (YAML does not allow tabs for indentation; use spaces)"
        raise YamlProblem(line, reason) from None
    except yaml.YAMLError as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise YamlProblem(1, f"not a YAML text: {reason}") from None
    finally:
        if loader is not None:
            loader.dispose()
    return Located(data, lines)


def _build(loader: yaml.SafeLoader, node: yaml.Node, path: Path_, lines: dict[Path_, int]) -> Any:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)  # resolves "<<" merge keys
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                raise YamlProblem(key_node.start_mark.line + 1, "a key must be a plain value")
            if key in result:
                first = lines.get(path + (key,), 0)
                raise YamlProblem(
                    key_node.start_mark.line + 1,
                    f"duplicate key {key!r} (first defined on line {first}); "
                    "a later value would silently replace the earlier one",
                )
            lines[path + (key,)] = key_node.start_mark.line + 1
            result[key] = _build(loader, value_node, path + (key,), lines)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [
            _build(loader, item, path + (index,), lines) for index, item in enumerate(node.value)
        ]
    return loader.construct_object(node, deep=True)
