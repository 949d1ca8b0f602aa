"""The traced ops, grouped by the user's function and module instance that produced them."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from engine.sources import is_torch_frame
from engine.ir import Graph, Node, parent_module_path

@dataclass
class _Op:
    """One traced op, as seen from one user frame on its stack."""

    seq: int  # position in the graph
    node: Node
    line: int
    module_path: str
    # the frames between the op and this one ((file, line), op side first): ops of one
    # iteration that come from one call on ``line`` differ here, iterations do not
    inner: tuple = ()


def _model_frames(node: Node) -> list[tuple[str, int, str]]:
    """The op's stack inside the model: frames from the op out to the trace call, not beyond."""
    src = node.source
    if src is None or src.origin != "traced":
        return []
    frames = []
    for f in src.stack:
        if f[0].replace("\\", "/").endswith("torch/jit/_trace.py"):
            break  # the caller of torch.jit.trace is not the model
        frames.append(f)
    return frames


_PLUMBING_KINDS = frozenset({"prim::Constant", "prim::GetAttr", "prim::ListConstruct", "prim::TupleConstruct",
                             "prim::NumToTensor", "aten::Int", "prim::TupleUnpack", "prim::ListUnpack"})


def _collect(graph: Graph) -> dict[tuple[str, str, str], list[_Op]]:
    """(file, function, module path) -> ops produced on lines of that function, in order.

    Walking an op's stack outwards, every ``Module._call_impl`` frame is a
    module boundary: the frames beyond it run in the parent module.
    """
    events: dict[tuple[str, str, str], list[_Op]] = defaultdict(list)
    for seq, node in enumerate(graph.walk()):
        if node.kind in _PLUMBING_KINDS:
            continue
        path = node.module_path
        inner: tuple = ()
        for file, line, func in _model_frames(node):
            if is_torch_frame(file):
                if func == "_call_impl":
                    path = parent_module_path(path)
                continue
            events[(file, func, path)].append(_Op(seq, node, line, path, inner))
            inner = inner + ((file, line),)
    return events


def _unbound_rows(graph: Graph) -> dict[str, int]:
    """``aten::unbind`` node id -> how many rows the trace unpacked it into (iterating over a
    tensor, ``for b in boxes:``, unbinds it once and hands the loop one row per iteration)."""
    rows: dict[str, int] = {}
    for n in graph.walk():
        if n.kind == "prim::ListUnpack" and n.inputs:
            p = graph.producer(n.inputs[0])
            if p is not None and p.kind == "aten::unbind":
                rows[p.id] = len(n.outputs)
    return rows
