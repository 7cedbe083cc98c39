"""The architecture holds (issue 16): agent/ never names a protocol.

What a protocol is (its config records, link, reader, profiles, load,
probe and scan) lives in its package under drivers/ and reaches the agent
through drivers/registry.py. A protocol's name or class in agent/'s code
meant a second place to edit for the next protocol; comments and
docstrings may name them. The import layers themselves (agent over the
protocol packages over drivers.core, drivers never importing agent) are the
import-linter contract in pyproject.toml, which .ci/run checks.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize

from tests.support import REPO

PROTOCOL = re.compile(r"m-?bus|modbus|rs-?485|telegram|register", re.IGNORECASE)


def _docstring_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                    and isinstance(first.value.value, str):
                lines.update(range(first.lineno, (first.end_lineno or first.lineno) + 1))
    return lines


def protocol_words(source: str) -> list[tuple[int, str]]:
    """(line, token) of every name or string in code that names a protocol."""
    skip = _docstring_lines(ast.parse(source))
    found = []
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type in (tokenize.NAME, tokenize.STRING) and token.start[0] not in skip \
                and PROTOCOL.search(token.string):
            found.append((token.start[0], token.string))
    return found


def test_the_check_finds_protocol_names_in_code_and_not_in_comments_or_docstrings() -> None:
    source = ('"""Reads Modbus meters."""\n'
              "from drivers.modbus.link import tcp_link  # Modbus TCP\n"
              "def f() -> str:\n"
              '    """An M-Bus line."""\n'
              '    return f"bus {1} is an M-Bus line"\n')
    assert [word for _, word in protocol_words(source)] == ["modbus", 'f"bus {1} is an M-Bus line"']


def test_agent_code_names_no_protocol() -> None:
    offending = {str(path.relative_to(REPO)): words for path in sorted((REPO / "agent").glob("*.py"))
                 if (words := protocol_words(path.read_text(encoding="utf-8")))}
    assert offending == {}, "protocol knowledge belongs in its package under drivers/"
