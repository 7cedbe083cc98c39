"""YAML with line numbers, strictly and within bounds: every value keeps where it came from.

PyYAML's safe loader forgets positions and silently lets a later duplicate
key win. A technician's duplicated key is a mistake we must report, and every
report must name the line, so we walk the composed node tree ourselves.

A config or profile is also input we must survive, broken or hostile. Three
bounds keep loading fast and small whatever the text (each breach is a
:class:`YamlProblem` with a line, never a MemoryError or RecursionError):

- size: at most ``MAX_BYTES`` of text;
- nesting: at most ``MAX_DEPTH`` levels, checked on the event stream before
  anything is composed (PyYAML's composer recurses once per level, and its
  pure-Python scanner slows down quadratically with the depth of flow
  brackets: 20,000 ``[`` took 23 s to scan);
- expansion: at most ``MAX_VALUES`` values once every alias is expanded. An
  alias is a reference, so nine anchors of nine aliases each ("billion
  laughs") are 600 bytes that expand to 10^9 values; a recursive alias
  (``&a [*a]``) expands without end. Both are found on the node graph, each
  node visited once, before a single value is built.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import yaml

Path_ = tuple[str | int, ...]

# A large building's config (1,000 devices) is about 100 KB; a profile 20 KB.
MAX_BYTES = 1024 * 1024
# A config nests 5 levels, a profile's test vectors 6.
MAX_DEPTH = 32
# 12,000 devices written out in full are about 160,000 values.
MAX_VALUES = 250_000

_COLLECTION_STARTS = (yaml.MappingStartEvent, yaml.SequenceStartEvent)
_COLLECTION_ENDS = (yaml.MappingEndEvent, yaml.SequenceEndEvent)
# libyaml's parser when PyYAML was built with it: about 20 times faster at
# reading events (the nesting check reads them all) than PyYAML's own.
_FAST_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_T = TypeVar("_T")


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
    """Values and the line of each key path; raises YamlProblem."""
    def located(loader: yaml.SafeLoader, root: yaml.Node | None) -> Located:
        lines: dict[Path_, int] = {}
        return Located(_build(loader, root, (), lines) if root is not None else None, lines)

    return _load(text, yaml.SafeLoader, located)


def load_plain(text: str) -> Any:
    """Values only (as ``yaml.safe_load`` gives them) within the same bounds,
    with libyaml's parser when available; raises YamlProblem."""
    return _load(text, _FAST_LOADER,
                 lambda loader, root: loader.construct_document(root) if root is not None else None)


def _load(text: str, loader_class: type[yaml.SafeLoader],
          construct: Callable[[yaml.SafeLoader, yaml.Node | None], _T]) -> _T:
    loader: yaml.SafeLoader | None = None
    try:
        if len(text) > MAX_BYTES:
            raise YamlProblem(1, f"the text is {len(text):,} characters long; at most {MAX_BYTES:,} are read "
                                 "(is this the right file?)")
        _check_nesting(text, loader_class)
        loader = loader_class(text)
        root = loader.get_single_node()
        if root is not None:
            _check_expansion(root)
        return construct(loader, root)
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


def _check_nesting(text: str, loader_class: type[yaml.SafeLoader]) -> None:
    """Stop at the first collection nested deeper than MAX_DEPTH, before the
    composer (recursive) or the pure-Python scanner (quadratic) pay for the
    rest. libyaml reads the events when it can; where it finds the text
    broken, the loader that builds the values reads them, so the problem is
    reported in its words."""
    try:
        _nesting(text, _FAST_LOADER)
    except yaml.YAMLError:
        if loader_class is _FAST_LOADER:
            raise
        _nesting(text, loader_class)


def _nesting(text: str, loader_class: type[yaml.SafeLoader]) -> None:
    loader = loader_class(text)
    next_event: Callable[[], yaml.Event] = loader.get_event  # PyYAML's stubs leave it untyped
    try:
        depth = 0
        while loader.check_event():
            event = next_event()
            if isinstance(event, _COLLECTION_STARTS):
                depth += 1
                if depth > MAX_DEPTH:
                    raise YamlProblem(event.start_mark.line + 1 if event.start_mark else 1,
                                      f"nested more than {MAX_DEPTH} levels deep; a config or profile needs a few")
            elif isinstance(event, _COLLECTION_ENDS):
                depth -= 1
    finally:
        loader.dispose()


def _check_expansion(root: yaml.Node) -> None:
    """Count the values and the depth the node graph has once aliases are
    expanded, visiting each node once (iteratively: the graph may be deeper
    than the text through aliases of aliases)."""
    size: dict[int, int] = {}  # node id -> values below it, itself included, expanded
    depth: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            children = list(_children(node))
            size[key] = 1 + sum(size[id(c)] for c in children)
            depth[key] = 1 + max((depth[id(c)] for c in children), default=0)
            on_path.discard(key)
            if size[key] > MAX_VALUES:
                raise YamlProblem(node.start_mark.line + 1,
                                  f"the aliases here expand to more than {MAX_VALUES:,} values; "
                                  "write the values out, or refer to fewer anchors")
            if depth[key] > MAX_DEPTH:
                raise YamlProblem(node.start_mark.line + 1,
                                  f"with its aliases expanded this is nested more than {MAX_DEPTH} levels deep")
            continue
        if key in size:
            continue
        on_path.add(key)
        stack.append((node, True))
        for child in _children(node):
            if id(child) in on_path:
                raise YamlProblem(child.start_mark.line + 1,
                                  "a value contains an alias of itself (a recursive alias); it would never end")
            if id(child) not in size:
                stack.append((child, False))


def _children(node: yaml.Node) -> Iterator[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            yield key_node
            yield value_node
    elif isinstance(node, yaml.SequenceNode):
        yield from node.value


_MERGE_TAG = "tag:yaml.org,2002:merge"


def _build(loader: yaml.SafeLoader, node: yaml.Node, path: Path_, lines: dict[Path_, int]) -> Any:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        result: dict[Any, Any] = {}
        merged: list[yaml.Node] = []
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:  # "<<: *defaults": below, under the mapping's own keys
                merged.extend(value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node])
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                raise YamlProblem(key_node.start_mark.line + 1, "a key must be a plain value")
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                raise YamlProblem(key_node.start_mark.line + 1, "a key must be a plain value")
            key_path = cast(Path_, (*path, key))  # a float, bool or null key is reported by the validator
            if key in result:
                first = lines.get(key_path, 0)
                raise YamlProblem(
                    key_node.start_mark.line + 1,
                    f"duplicate key {key!r} (first defined on line {first}); "
                    "a later value would silently replace the earlier one",
                )
            lines[key_path] = key_node.start_mark.line + 1
            result[key] = _build(loader, value_node, key_path, lines)
        # YAML's merge keys: the mapping's own keys win, then the merged
        # mappings in the order given (the first that has a key wins).
        for source in merged:
            if not isinstance(source, yaml.MappingNode):
                raise YamlProblem(source.start_mark.line + 1, "'<<' merges a mapping or a list of mappings")
            source_lines: dict[Path_, int] = {}
            for key, value in _build(loader, source, path, source_lines).items():
                if key not in result:
                    result[key] = value
                    prefix = len(path) + 1
                    lines.update((p, n) for p, n in source_lines.items() if p[:prefix] == (*path, key))
        return result
    if isinstance(node, yaml.SequenceNode):
        return [
            _build(loader, item, path + (index,), lines) for index, item in enumerate(node.value)
        ]
    return loader.construct_object(node, deep=True)
