"""Where in the user's Python an op of either run came from: statements, the blocks around them.

Both runs name the statement an op came from by ``file:line`` of its first
line (a call over several lines is one place), and an op of one run alone by
the ``if``/``for``/``while`` around it.
"""

from __future__ import annotations

import ast
import os
from functools import lru_cache

from engine.check.eager import EagerOp
from engine.run.timeline import StepRecord
from engine.sources import is_user_file, read_source

def _located(rec: StepRecord) -> str | None:
    """``file:line`` of a graph node written in the user's Python (not inside torch), else None."""
    src = rec.node.source
    if src is None or not src.line or not is_user_file(src.file):
        return None
    return _place(src.file, src.line)


@lru_cache(maxsize=256)
def _parsed(path: str) -> tuple[ast.Module | None, list[str]]:
    """The user's file, parsed once (None where it cannot be read or parsed)."""
    if not os.path.isfile(path):  # stat only: a FIFO planted at a source path would block open forever
        return None, []
    try:
        text = read_source(path)  # a regular file, read up to a bound: the archive names the path
        return ast.parse(text), text.splitlines()
    except Exception:
        return None, []


@lru_cache(maxsize=256)
def _statement_starts(path: str) -> dict[int, int]:
    """Line -> the first line of the statement it belongs to (for a compound statement, of
    its header): a call over several lines is one place, whichever of its lines torch or
    Python names (TorchScript says where the expression starts, a frame where the call is)."""
    tree, _ = _parsed(path)
    if tree is None:
        return {}
    spans = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.stmt):
            continue
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.stmt):
            end = body[0].lineno - 1  # the header of an if, for, with, def …
        else:
            end = getattr(node, "end_lineno", node.lineno) or node.lineno
        spans.append((node.lineno, max(end, node.lineno)))
    starts: dict[int, int] = {}
    for first, last in sorted(spans, key=lambda sp: sp[0] - sp[1]):  # widest first, innermost wins
        for line in range(first, last + 1):
            starts[line] = first
    return starts


@lru_cache(maxsize=256)
def _blocks(path: str) -> list[tuple[int, int, str]]:
    """The file's ``if``/``for``/``while``/``with``/``try`` statements: (first line, last line, header),
    innermost last for each line."""
    tree, lines = _parsed(path)
    if tree is None:
        return []
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.If, ast.For, ast.While, ast.With, ast.Try, ast.AsyncFor, ast.AsyncWith)):
            out.append((node.lineno, getattr(node, "end_lineno", node.lineno) or node.lineno, _header(node, lines)))
    return sorted(out, key=lambda b: b[0] - b[1])


def _header(node: ast.stmt, lines: list[str]) -> str:
    """``if x.mean() > 0:`` as the code says it, without a comment beside it."""
    try:
        if isinstance(node, ast.If):
            return f"{'elif' if lines[node.lineno - 1].lstrip().startswith('elif') else 'if'} {ast.unparse(node.test)}:"
        if isinstance(node, (ast.For, ast.AsyncFor)):
            return f"for {ast.unparse(node.target)} in {ast.unparse(node.iter)}:"
        if isinstance(node, ast.While):
            return f"while {ast.unparse(node.test)}:"
        if isinstance(node, (ast.With, ast.AsyncWith)):
            return f"with {', '.join(ast.unparse(i) for i in node.items)}:"
    except Exception:
        pass
    return lines[node.lineno - 1].strip() if node.lineno <= len(lines) else ""


def enclosing_statement(place: str | None) -> dict | None:
    """The innermost ``if``/``for``/``while`` … around ``file:line`` (its header's text and line):
    the frozen branch or the unrolled loop an op of one run alone belongs to."""
    if not place:
        return None
    path, _, line = place.rpartition(":")
    if not line.isdigit():
        return None
    n = int(line)
    for first, last, header in reversed(_blocks(path)):  # innermost first
        if first <= n <= last:
            return {"statement": header, "line": first}
    return None


def place_of_record(rec: StepRecord) -> str | None:
    """``file:line`` of the user's statement a graph node came from (None: not the user's code)."""
    return _located(rec)


def place_of_eager(op: EagerOp) -> str | None:
    return _where(op)


def places_agree(rec: StepRecord, op: EagerOp) -> bool:
    """No line of the user's code tells the two apart (either may not know its line)."""
    return lines_agree(_located(rec), _where(op), chain_of_record(rec), op.chain)


def chain_of_record(rec: StepRecord) -> frozenset[str]:
    """``file:line`` of every user frame on the node's recorded Python stack (its callers included)."""
    src = rec.node.source
    if src is None or not src.stack:
        return frozenset()
    return frozenset(_place(f, n) for f, n, _func in src.stack if n and is_user_file(f))


def lines_agree(a: str | None, b: str | None, a_chain: frozenset = frozenset(),
                b_chain: frozenset = frozenset()) -> bool:
    """Two ``file:line`` places could be one statement: either is unknown; they are equal; one is a caller
    of the other (torch.export's stack traces leave out frames a trace keeps: torchvision's
    ``_forward_impl``); or they are in different files (a model rewritten in a new file for torch.export:
    its lines say nothing of the old's)."""
    if a is None or b is None or a == b or a in b_chain or b in a_chain:
        return True
    return a.rpartition(":")[0] != b.rpartition(":")[0]


def _place(path: str, line: int) -> str:
    """``file:line`` of the statement that line belongs to: how both sides name where an op came from."""
    return f"{path}:{_statement_starts(path).get(line, line)}"


def _where(e: EagerOp) -> str | None:
    return _place(e.file, e.line) if e.file and e.line else None
