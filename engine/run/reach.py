"""Every graph a program can run, found without running it: for ``g``, ``B kind`` and ``b file:line``.

A machine converts a callee's graph when it first calls it; a search over
the graphs converted so far misses every frame the run has not reached yet.
Here the call tree is walked from the root graph: module attributes are
read the way the interpreter reads them (``prim::GetAttr`` on a module
gives the submodule), so each ``prim::CallMethod`` resolves to its
receiver's method graph; functions and forked subgraphs are resolved by
name.  A call whose receiver only a run can tell (an interface, an object
built at run time) is skipped; the graphs the machine has converted are
added, so nothing the run reached is missed.  An exported program builds
all its callee graphs with the root.
"""

from __future__ import annotations

import difflib
import os
from typing import Any

import torch

from engine.ir import CALL_MODULE, Graph, Node


def program_graphs(program: Any, method: str = "forward", inlined: bool = False) -> list[Graph]:
    """The root graph of ``method`` and every graph it can call, in the view given (call tree or inlined)."""
    root = program.root_graph(method, inlined=inlined)
    seen: dict[int, Graph] = {id(root): root}
    order = [root]
    if getattr(program, "format", "torchscript") != "exported":
        module = getattr(program, "module", None)
        work: list[tuple[Graph, Any, str]] = [(root, module, "")]
        while work:
            graph, self_obj, path = work.pop()
            for callee, obj, sub_path in _callees(program, graph, self_obj, path):
                if id(callee) not in seen:
                    seen[id(callee)] = callee
                    order.append(callee)
                    work.append((callee, obj, sub_path))
    for g in program.cached_graphs():
        if g.inlined == inlined and id(g) not in seen:
            seen[id(g)] = g
            order.append(g)
    return order


def _callees(program: Any, graph: Graph, self_obj: Any, path: str):
    """(graph, receiver, module path) for each call in ``graph`` that can be resolved without running."""
    objects: dict[int, Any] = {}
    paths: dict[int, str] = {}
    if graph.inputs and self_obj is not None and isinstance(self_obj, torch._C.ScriptModule):
        objects[graph.inputs[0].index] = self_obj
        paths[graph.inputs[0].index] = path
    for node in graph.walk():
        kind = node.kind
        try:
            if kind == "prim::GetAttr" and node.in_idx and node.in_idx[0] in objects:
                value = objects[node.in_idx[0]].getattr(node.attrs["name"])
                if isinstance(value, torch._C.ScriptModule):
                    objects[node.out_idx[0]] = value
                    parent = paths.get(node.in_idx[0], "")
                    paths[node.out_idx[0]] = f"{parent}.{node.attrs['name']}" if parent else node.attrs["name"]
            elif kind == "prim::CallMethod" and node.in_idx and node.in_idx[0] in objects:
                obj = objects[node.in_idx[0]]
                yield program.callee_graph(node, obj), obj, paths.get(node.in_idx[0], path)
            elif kind == "prim::CallFunction" and node.callee:
                yield program.function_graph(node.callee), None, path
            elif kind == "prim::fork":
                yield program.fork_graph(node, path), None, path
            elif kind == CALL_MODULE:
                yield program.callee_graph(node, None), None, node.module_path
        except Exception:  # a receiver or callee only a run can tell: the run's own graphs cover it
            continue


def op_kinds(graphs: list[Graph]) -> dict[str, int]:
    """Op kind -> how many nodes of it the graphs hold (constants left out)."""
    counts: dict[str, int] = {}
    for g in graphs:
        for n in g.walk():
            if n.kind != "prim::Constant":
                counts[n.kind] = counts.get(n.kind, 0) + 1
    return counts


def resolve_kind(text: str, kinds: dict[str, int]) -> tuple[list[str], list[str]]:
    """The kinds ``text`` names and, when none, the closest kinds the program has.

    ``relu`` is ``aten::relu``; ``aten::add`` is every overload an exported
    program has of it (``aten::add.Tensor``, ``aten::add.Scalar``)."""
    text = text.strip()
    if text in kinds:
        return [text], []
    for name in ([text] if "::" in text else [f"{ns}::{text}" for ns in ("aten", "prim", "quantized")]):
        if name in kinds:
            return [name], []
        overloads = sorted(k for k in kinds if k.startswith(name + "."))
        if overloads:
            return overloads, []
    op = text.split("::", 1)[-1].lstrip("_").lower()
    names = list(kinds)
    # an op's name inside another's (conv2d, _convolution): by the first letters of the op's name, commonest first
    close = [k for k in sorted(names, key=lambda k: -kinds[k])
             if len(op) >= 3 and k.split("::", 1)[-1].lstrip("_").lower()[:4] == op[:4]]
    for k in difflib.get_close_matches(text, names, n=3, cutoff=0.7):
        if k not in close:
            close.append(k)
    return [], close[:4]


def nodes_at_line(graphs: list[Graph], where: str) -> tuple[list[Node], str | None]:
    """Every node whose source line is ``where`` (``file.py:12``, a path or its ending, or ``:12`` for any file);
    and an error line when ``where`` cannot be read."""
    file, sep, line_text = where.strip().rpartition(":")
    if not sep or not line_text.strip().isdigit():
        return [], f"{where!r}: give FILE:LINE (model.py:12)"
    line = int(line_text)
    file = file.strip()
    found: list[Node] = []
    for g in graphs:
        for n in g.walk():
            if n.kind == "prim::Constant":
                continue
            loc = n.source
            if loc is None or loc.line != line or not loc.file:
                continue
            if not file or _same_file(loc.file, file):
                found.append(n)
    return found, None


def _same_file(recorded: str, given: str) -> bool:
    if recorded == given:
        return True
    r = recorded.replace("\\", "/")
    g = given.replace("\\", "/")
    return r.endswith("/" + g.lstrip("./")) or os.path.basename(r) == g
