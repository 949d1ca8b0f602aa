"""The user's Python as lint reads it: files parsed once, spans of statements, helpers' call sites."""

from __future__ import annotations

import ast
import os
from functools import lru_cache

from engine.sources import read_source

@lru_cache(maxsize=256)
def _parse(path: str) -> tuple[ast.Module | None, list[str]]:
    if not os.path.isfile(path):  # stat only: a FIFO planted at a source path would block open forever
        return None, []
    try:
        text = read_source(path)  # a regular file, read up to a bound: the archive names the path
        return ast.parse(text), text.splitlines()
    except Exception:
        return None, []


def _functions(tree: ast.Module) -> list[ast.FunctionDef]:
    return [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def _called_name(call: ast.Call) -> str | None:
    """The function a call names in this file: ``f(...)`` or ``self.f(...)``."""
    f = call.func
    if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id == "self":
        return f.attr
    return f.id if isinstance(f, ast.Name) else None


@lru_cache(maxsize=256)
def _literal_arguments(path: str) -> dict[str, set[str]]:
    """Per private helper of the file (``_split_heads``), the parameters every call in the file
    passes as a literal (``self._split_heads(q, n, d, True)``): fixed at each call site.

    Private only: a public function may also be called from other files with other values.
    """
    tree, _ = _parse(path)
    if tree is None:
        return {}
    params: dict[str, list[str]] = {}
    for fn in _functions(tree):
        if fn.name.startswith("_") and not fn.name.startswith("__"):
            names = [a.arg for a in fn.args.posonlyargs + fn.args.args]
            params[fn.name] = names[1:] if names[:1] == ["self"] else names
    literal: dict[str, set[str]] = {}
    seen: set[str] = set()
    for call in ast.walk(tree):
        if not isinstance(call, ast.Call):
            continue
        name = _called_name(call)
        if name not in params:
            continue
        passed = dict(zip(params[name], call.args))
        passed.update((k.arg, k.value) for k in call.keywords if k.arg)
        here = {p for p, v in passed.items() if isinstance(v, ast.Constant)}
        literal[name] = here if name not in seen else literal[name] & here
        seen.add(name)
    return literal


def _span(nodes: list[ast.stmt]) -> tuple[int, int] | None:
    if not nodes:
        return None
    return nodes[0].lineno, max(getattr(n, "end_lineno", n.lineno) for n in nodes)


def _in(span: tuple[int, int] | None, line: int) -> bool:
    return span is not None and span[0] <= line <= span[1]


def _src(expr: ast.AST, lines: list[str]) -> str:
    try:
        return ast.unparse(expr)
    except Exception:
        return ""


def _line_text(src) -> str | None:
    if src is None or not src.file or not os.path.exists(src.file):
        return None
    _, lines = _parse(src.file)
    return lines[src.line - 1].strip() if src.line and src.line <= len(lines) else None
