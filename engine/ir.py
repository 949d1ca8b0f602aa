"""The project's own IR of a TorchScript method graph.

Built once from a ``torch._C.Graph`` by ``engine.formats.torchscript.convert``; everything above the
converter and the op runner sees only these classes.  Values are numbered
densely per graph so that a frame's environment is a plain list.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Iterator

#: In ``Node.source_cell``: the source is read on first use.
UNREAD = object()

#: A module call an exported program's flat graph is regrouped into (its callee graph holds the call's nodes).
CALL_MODULE = "prim::CallModule"

#: Higher-order ops of exported programs whose subgraphs are nested blocks the machine steps into.
COND = "higher_order::cond"
WHILE_LOOP = "higher_order::while_loop"
MAP = "higher_order::map_impl"
SET_GRAD = "higher_order::wrap_with_set_grad_enabled"
AUTOCAST = "higher_order::wrap_with_autocast"
INVOKE_SUBGRAPH = "higher_order::invoke_subgraph"
SUBGRAPH_KINDS = frozenset({COND, WHILE_LOOP, MAP, SET_GRAD, AUTOCAST, INVOKE_SUBGRAPH})

#: Node kinds the interpreter runs itself instead of handing to torch.
CONTROL_KINDS = frozenset({"prim::If", "prim::Loop", "prim::CallMethod", "prim::CallFunction", CALL_MODULE}) \
    | SUBGRAPH_KINDS


@dataclass(frozen=True, slots=True)
class SourceLoc:
    """Where a node came from in the user's Python.

    ``origin`` is ``"scripted"`` (the archive holds the source text around the
    line, in ``context``) or ``"traced"`` (the archive holds the Python stack of
    the op, in ``stack``, innermost first; ``file``/``line`` is the innermost
    frame outside torch itself).
    """

    file: str | None
    line: int | None
    origin: str
    text: str | None = None
    context: str | None = None
    stack: tuple[tuple[str, int, str], ...] = ()
    function: str | None = None

    def short(self) -> str:
        if not self.file:
            return "?"
        return f"{os.path.basename(self.file)}:{self.line}"

    def __str__(self) -> str:
        return f"{self.file}:{self.line}" if self.file else "?"


@dataclass(frozen=True, slots=True)
class Value:
    """An SSA value: ``index`` is its slot in a frame's environment."""

    index: int
    name: str
    type: str

    def __str__(self) -> str:
        return f"%{self.name}"


@dataclass(frozen=True, slots=True, eq=False)
class Block:
    """A list of nodes with parameters and returned values.

    ``frees[i]`` lists the values (by index) whose last use in this block is
    node ``i``: the interpreter drops them after that node, as TorchScript's
    own interpreter does, so memory is reused the same way.
    """

    id: str
    params: tuple[Value, ...]
    nodes: tuple["Node", ...]
    returns: tuple[Value, ...]
    frees: tuple[tuple[int, ...], ...] = ()


@dataclass(frozen=True, slots=True, eq=False)
class Node:
    """One operation.

    ``id`` is stable across reloads of the same archive: the graph name and the
    path of block and node indices (``forward/12/b1/3``).  ``callee`` names the
    method (``prim::CallMethod``) or the qualified function
    (``prim::CallFunction``) to run; the graph itself is resolved lazily by the
    program.  ``handle`` is the ``torch._C.Node`` for the op runner alone.
    """

    id: str
    kind: str
    inputs: tuple[Value, ...]
    outputs: tuple[Value, ...]
    attrs: dict[str, Any]
    blocks: tuple[Block, ...]
    schema: str | None
    source_cell: list  # [SourceLoc | None] or [UNREAD, reader]: see ``source``
    module_path: str
    callee: str | None
    in_idx: tuple[int, ...]
    out_idx: tuple[int, ...]
    handle: Any = field(default=None, repr=False, compare=False)

    @property
    def source(self) -> SourceLoc | None:
        """Where the node came from in the user's Python.

        A format that reads sources slowly (TorchScript's source ranges) puts
        ``[UNREAD, reader]`` in ``source_cell``; ``reader(node)`` runs on
        first use.
        """
        cell = self.source_cell
        if cell[0] is UNREAD:
            cell[0] = cell[1](self)
            del cell[1:]
        return cell[0]

    @property
    def is_control(self) -> bool:
        return self.kind in CONTROL_KINDS

    @property
    def op_name(self) -> str:
        """``aten::conv2d`` -> ``conv2d``."""
        return self.kind.split("::", 1)[-1]

    def label(self) -> str:
        """A short one-line description: ``%y = aten::relu(%x)``."""
        outs = ", ".join(f"%{v.name}" for v in self.outputs)
        ins = ", ".join(f"%{v.name}" for v in self.inputs)
        attr = ""
        if self.kind == "prim::Constant" and "value" in self.attrs:
            attr = f"[{short_repr(self.attrs['value'])}]"
        elif "name" in self.attrs:
            attr = f"[{self.attrs['name']}]"
        head = f"{outs} = " if outs else ""
        return f"{head}{self.kind}{attr}({ins})"


@dataclass(eq=False)
class Graph:
    """One method (or function) graph, converted."""

    name: str  # "forward", "Conv2d.forward", "helper", "forward[inlined]"
    qualname: str  # torch's qualified name of the method or function
    inputs: tuple[Value, ...]
    outputs: tuple[Value, ...]
    body: Block
    num_values: int
    inlined: bool = False
    handle: Any = field(default=None, repr=False)  # the torch._C.Graph, kept alive
    _by_id: dict[str, Node] = field(default_factory=dict, repr=False)
    _producers: dict[int, Node] = field(default_factory=dict, repr=False)
    _origin: str | None = field(default=None, repr=False)

    #: nodes whose source is read to tell a traced graph from a scripted one
    ORIGIN_SAMPLE = 64

    @property
    def origin(self) -> str:
        """``"traced"``, ``"scripted"`` or ``"unknown"``, from the source of the first nodes.

        Worked out on first use: reading source ranges is slow, and a traced
        model has a graph per module instance that nobody asks about.
        """
        if self._origin is None:
            counts = {"traced": 0, "scripted": 0}
            sampled = 0
            for n in self.walk():
                if n.kind == "prim::Constant":
                    continue
                src = n.source
                if src is not None and src.origin in counts:
                    counts[src.origin] += 1
                    sampled += 1
                    if sampled >= self.ORIGIN_SAMPLE:
                        break
            traced, scripted = counts["traced"], counts["scripted"]
            self._origin = "unknown" if not (traced or scripted) else ("traced" if traced >= scripted else "scripted")
        return self._origin

    @origin.setter
    def origin(self, value: str) -> None:
        self._origin = value

    @property
    def short_name(self) -> str:
        """``torch.nn.modules.conv.___torch_mangle_3.Conv2d.forward`` -> ``Conv2d.forward``."""
        parts = [p for p in self.name.split(".") if not p.startswith("___torch_mangle")]
        return ".".join(parts[-2:]) if len(parts) > 2 else ".".join(parts)

    def walk(self) -> Iterator[Node]:
        """Every node in execution (program text) order, nested blocks included."""
        yield from walk_block(self.body)

    def node(self, node_id: str) -> Node:
        if not self._by_id:
            self._by_id.update((n.id, n) for n in self.walk())
        return self._by_id[node_id]

    def producer(self, value: "Value | int") -> Node | None:
        """The node whose output ``value`` (or value index) is; None for graph and block inputs."""
        if not self._producers:
            self._producers.update((o.index, n) for n in self.walk() for o in n.outputs)
        return self._producers.get(value if isinstance(value, int) else value.index)

    def find(self, node_id: str) -> Node | None:
        try:
            return self.node(node_id)
        except KeyError:
            return None

    def __len__(self) -> int:
        return sum(1 for _ in self.walk())


def parent_module_path(path: str) -> str:
    """``layer1.0.conv1`` -> ``layer1.0``; the root's (``""``) is the root."""
    return path.rsplit(".", 1)[0] if "." in path else ""


def _uses(node: Node) -> set[int]:
    """Values a node reads, directly or anywhere inside its blocks."""
    used = set(node.in_idx)
    for b in node.blocks:
        used.update(v.index for v in b.returns)
        for inner in b.nodes:
            used |= _uses(inner)
    return used


def last_uses(params: tuple[Value, ...], nodes: tuple[Node, ...], returns: tuple[Value, ...]) -> tuple[tuple[int, ...], ...]:
    """Per node of a block, the values defined in the block that die after it.

    A value used inside a nested block (a loop body) dies after the node that
    holds the block, so it survives every iteration.  Returned values never
    die here: the block's owner reads them when the block ends.
    """
    defined: dict[int, int] = {v.index: 0 for v in params}
    for i, n in enumerate(nodes):
        for o in n.out_idx:
            defined[o] = i
    last: dict[int, int] = {}
    for i, n in enumerate(nodes):
        for v in _uses(n):
            if v in defined:
                last[v] = i
    keep = {v.index for v in returns}
    frees: list[list[int]] = [[] for _ in nodes]
    for v, at in defined.items():
        if v in keep:
            continue
        i = last.get(v, at)
        if nodes:
            frees[max(i, at)].append(v)
    return tuple(tuple(f) for f in frees)


def walk_block(block: Block) -> Iterator[Node]:
    for n in block.nodes:
        yield n
        for b in n.blocks:
            yield from walk_block(b)


def short_repr(value: Any, limit: int = 40) -> str:
    """A compact one-line repr for attribute and constant display."""
    try:
        import torch

        if isinstance(value, torch.Tensor):
            dims = "x".join(str(d) for d in value.shape) or "scalar"
            if value.numel() == 1:
                return f"tensor({value.item()!r})"
            return f"Tensor[{dims}]"
    except Exception:  # pragma: no cover - torch always importable in the engine
        pass
    text = repr(value)
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text
