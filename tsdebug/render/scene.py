"""What a graph drawing holds, before any layout: boxes, nested clusters, edges.

One ``Scene`` serves every renderer (DOT for Graphviz, the built-in grid
layout for the terminal and for SVG without Graphviz).

- A box is a drawn node (its label from ``labels.Labeler``), a graph input,
  the output, or a collapsed module call: all of that call's nodes, nested
  blocks included, folded into one box.
- A cluster is one *run* of a module's nodes (a module called twice is two
  clusters, as it ran twice), or one block of an ``If``/``Loop``.  A module
  run that would hold a single box is no cluster: its name joins the box's
  label (``conv1 · conv 3→16, 3x3, s1``).
- Edges pass through the plumbing that is not drawn (constants, attribute
  reads, list construction); a value an ``If`` or ``Loop`` returns comes
  from the nodes inside its blocks that made it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from engine.ir import Block, Graph, Node, Value, walk_block
from tsdebug.render.labels import HIDDEN, Labeler, class_name, input_label

BLOCK_NAMES = {"prim::If": ("then", "else"), "prim::Loop": ("body",)}

CATEGORIES = {
    **dict.fromkeys(("conv", "convT", "linear", "matmul", "mm", "bmm", "addmm", "einsum", "embedding", "lstm", "gru",
                     "rnn_tanh", "gru_cell", "lstm_cell", "scaled_dot_product_attention"), "layer"),
    **dict.fromkeys(("batchnorm", "layernorm", "groupnorm", "instancenorm", "rms_norm"), "norm"),
    **dict.fromkeys(("relu", "gelu", "silu", "sigmoid", "tanh", "softmax", "log_softmax", "hardtanh", "leaky_relu",
                     "elu", "hardswish", "hardsigmoid", "mish", "softplus"), "act"),
    **dict.fromkeys(("maxpool", "avgpool", "adaptive", "cat", "stack", "flatten", "reshape", "view", "permute",
                     "transpose", "upsample_nearest2d", "upsample_bilinear2d", "interpolate"), "shape"),
}


@dataclass
class SBox:
    id: str
    lines: list[str]
    kind: str  # "op", "call", "module", "control", "input", "output"
    nodes: list[str] = field(default_factory=list)  # node ids it stands for, first = the one to select
    tooltip: str = ""

    @property
    def category(self) -> str:
        """What family an op is of, for its colour (as Netron colours layers): conv, norm, act, pool, other."""
        if self.kind != "op":
            return self.kind
        word = self.lines[0].split(" · ")[-1].split(" ", 1)[0]
        return CATEGORIES.get(word.rstrip("_"), "other")


@dataclass
class SCluster:
    id: str
    label: str
    kind: str  # "root", "module", "block"
    items: list = field(default_factory=list)  # SBox | SCluster, in program order
    path: str = ""  # module path, for module clusters


@dataclass
class SEdge:
    tail: str  # box id
    head: str  # box id, or a cluster id for the edge from an If/Loop to its block
    value: int | None = None  # the value (index in the scene's graph) the tail's node made
    control: bool = False


@dataclass
class Scene:
    graph: Graph
    root: SCluster
    boxes: dict[str, SBox]
    clusters: dict[str, SCluster]
    edges: list[SEdge]
    box_of_node: dict[str, str]
    #: nodes not drawn (constants, attribute reads, list plumbing) -> the box of the node they run on the
    #: way to: where the current node is shown while the machine stands on one of them
    alias: dict[str, str] = field(default_factory=dict)

    def box_order(self) -> list[str]:
        """Box ids in program order (inputs first, output last)."""
        out: list[str] = []

        def walk(c: SCluster) -> None:
            for it in c.items:
                if isinstance(it, SBox):
                    out.append(it.id)
                else:
                    walk(it)

        walk(self.root)
        return out

    def box_count(self) -> int:
        return len(self.boxes)


def _is_self(v: Value) -> bool:
    return v.type.startswith("__torch__.") or v.name.startswith("self")


def _depth(path: str) -> int:
    return path.count(".") + 1 if path else 0


def _under(path: str, prefix: str) -> bool:
    return prefix == "" or path == prefix or path.startswith(prefix + ".")


class SceneBuilder:
    def __init__(self, graph: Graph, labeler: Labeler | None = None, collapse: int | None = None,
                 plumbing: bool = False):
        self.graph = graph
        self.lab = labeler or Labeler(graph)
        self.collapse = collapse
        self.plumbing = plumbing
        self.boxes: dict[str, SBox] = {}
        self.clusters: dict[str, SCluster] = {}
        self.box_of_node: dict[str, str] = {}
        # by the node itself: ids are meant to be unique, but a box must not depend on it
        self.box_for: dict[Node, str] = {}
        self.block_owner: dict[str, Node] = {}  # block id -> its If/Loop
        self.param_of: dict[int, tuple[Node, int]] = {}  # block param value index -> (owner, position)
        self.counting = False  # count_boxes: no labels
        self._classes: dict[str, str] | None = None

    @property
    def classes(self) -> dict[str, str]:
        if self._classes is None:
            self._classes = self._module_classes()
        return self._classes

    # ------------------------------------------------------------ helpers

    def _visible(self, n: Node) -> bool:
        return self.plumbing or n.kind not in HIDDEN

    def _module_classes(self) -> dict[str, str]:
        """Module path -> class name, from the attribute reads of submodules (TorchScript's GetAttr)."""
        out: dict[str, str] = {}
        for n in self.graph.walk():
            if n.kind == "prim::GetAttr" and n.outputs and n.outputs[0].type.startswith("__torch__."):
                rel = self.lab.attr_path(n.outputs[0])
                if rel:
                    out[rel] = class_name(n.outputs[0].type)
            elif n.kind == "prim::CallModule":
                out[str(n.attrs.get("module", ""))] = class_name(str(n.attrs.get("type", "")))
        return out

    def _path_of(self, n: Node) -> str:
        """A node's module path; an ``If``/``Loop`` of an inlined scripted graph has none (torch gives its
        nodes no module hierarchy), so it takes the path of what computed its condition."""
        if n.module_path or not n.blocks or not self.graph.inlined or not n.inputs:
            return n.module_path
        producer = self.graph.producer(n.inputs[0 if n.kind == "prim::If" else 1])
        return producer.module_path if producer is not None else ""

    def _folded(self, path: str) -> str | None:
        """The module a node of ``path`` is folded into, or None: modules deeper than ``collapse`` fold."""
        if self.collapse is None or _depth(path) <= self.collapse:
            return None
        return ".".join(path.split(".")[: self.collapse + 1])

    def _module_label(self, path: str, within: str) -> str:
        name = path[len(within) + 1:] if within and path.startswith(within + ".") else path
        cls = self.classes.get(self.lab.full_path(path)) or self.classes.get(path, "")
        return f"{name} · {cls}" if cls else name

    # ------------------------------------------------------------ boxes and clusters

    def count_boxes(self) -> int:
        """How many boxes the scene would have (no edges worked out): to choose a collapse depth."""
        root = SCluster("root", "", "root")
        self.counting = True
        self._fill(root, self.graph.body, "", "")
        return len(self.boxes) + 1 + sum(1 for v in self.graph.inputs if not _is_self(v))

    def build(self) -> Scene:
        g = self.graph
        root = SCluster("root", g.short_name, "root")
        self.clusters["root"] = root
        for v in g.inputs:
            if _is_self(v):
                continue
            box = SBox("in:" + v.name, [input_label(v)], "input", tooltip=v.name)
            self.boxes[box.id] = box
            root.items.append(box)
        self._fill(root, g.body, "", "")
        out = SBox("output", ["output"], "output")
        self.boxes[out.id] = out
        root.items.append(out)
        self._count_ops()
        self._dissolve(root)
        edges = self._edges()
        alias: dict[str, str] = {}
        self._aliases(g.body, alias, None)
        return Scene(g, root, self.boxes, self.clusters, edges, self.box_of_node, alias)

    def _aliases(self, block: Block, alias: dict[str, str], owner_box: str | None) -> None:
        pending: list[str] = []
        last = owner_box
        for n in block.nodes:
            box = self.box_for.get(n)
            if box is None:
                pending.append(n.id)
                continue
            for p in pending:
                alias[p] = box
            pending = []
            last = box
            for b in n.blocks:
                self._aliases(b, alias, box)
        for p in pending:  # plumbing at a block's end: the box before it
            if last is not None:
                alias[p] = last

    def _fill(self, container: SCluster, block: Block, base: str, key: str) -> None:
        """Put a block's visible nodes into ``container`` (whose module path is ``base``)."""
        stack: list[tuple[str, SCluster]] = []  # open module clusters: (path, cluster)
        folded_box: SBox | None = None
        folded_path: str | None = None
        for n in block.nodes:
            if not self._visible(n):
                continue
            path = self._path_of(n)
            path = path if _under(path, base) else base
            fold = self._folded(path)
            if fold is not None and _depth(fold) <= _depth(base):
                fold = None  # inside a block of a node already at this depth: draw it
            if fold is not None:
                if folded_box is not None and folded_path == fold:
                    self._fold_into(folded_box, n)
                    continue
                item_path = fold.rsplit(".", 1)[0] if "." in fold else ""
                item_path = item_path if _under(item_path, base) else base
                parent = self._open(container, stack, item_path, base)
                within = stack[-1][0] if stack else base
                bid = f"module:{fold}@{n.id}"
                while bid in self.boxes:
                    bid += "~"
                box = SBox(bid, [] if self.counting else [self._module_label(fold, within)], "module")
                detail = "" if self.counting else self.lab.module_detail(fold, self.classes.get(fold, ""))
                if detail:
                    box.lines.append(detail)
                self.boxes[box.id] = box
                parent.items.append(box)
                self._fold_into(box, n)
                folded_box, folded_path = box, fold
                continue
            folded_box = folded_path = None
            parent = self._open(container, stack, path, base)
            kind = "call" if n.kind in ("prim::CallMethod", "prim::CallModule", "prim::CallFunction") else (
                "control" if n.blocks else "op")
            bid = n.id
            k = 1
            while bid in self.boxes:  # two nodes with one id (seen in exported call trees): two boxes still
                k += 1
                bid = f"{n.id}~{k}"
            box = SBox(bid, [] if self.counting else self.lab.lines(n), kind, [n.id], tooltip=n.id)
            self.boxes[box.id] = box
            self.box_of_node[n.id] = box.id
            self.box_for[n] = box.id
            parent.items.append(box)
            names = BLOCK_NAMES.get(n.kind, ())
            for j, b in enumerate(n.blocks):
                self.block_owner[b.id] = n
                for i, p in enumerate(b.params):
                    self.param_of[p.index] = (n, i)
                if not any(self._visible(m) for m in walk_block(b)):
                    continue  # an empty branch: nothing to frame
                name = names[j] if j < len(names) else f"block {j}"
                if n.kind == "prim::Loop":
                    name = "loop body"
                cl = SCluster("block:" + b.id, name, "block")
                self.clusters[cl.id] = cl
                parent.items.append(cl)
                self._fill(cl, b, path, b.id)

    def _fold_into(self, box: SBox, n: Node) -> None:
        box.nodes.append(n.id)
        self.box_of_node[n.id] = box.id
        self.box_for[n] = box.id
        for b in n.blocks:
            self.block_owner[b.id] = n
            for i, p in enumerate(b.params):
                self.param_of[p.index] = (n, i)
            for inner in walk_block(b):
                box.nodes.append(inner.id)
                self.box_of_node[inner.id] = box.id
                self.box_for[inner] = box.id
                for bb in inner.blocks:
                    self.block_owner[bb.id] = inner
                    for i, p in enumerate(bb.params):
                        self.param_of[p.index] = (inner, i)
        box.tooltip = ""

    def _count_ops(self) -> None:
        """A collapsed module without key sizes says how many ops it folds."""
        for box in self.boxes.values():
            if box.kind != "module" or len(box.lines) > 1:
                continue
            ops = sum(1 for nid in box.nodes if (m := self.graph.find(nid)) is not None and m.kind not in HIDDEN)
            box.lines.append("1 op" if ops == 1 else f"{ops} ops")
            box.tooltip = f"{len(box.nodes)} nodes"

    def _open(self, container: SCluster, stack: list, path: str, base: str) -> SCluster:
        """The cluster a node of module ``path`` goes in, opening and closing module runs."""
        while stack and not _under(path, stack[-1][0]):
            stack.pop()
        top = stack[-1][0] if stack else base
        parent = stack[-1][1] if stack else container
        if path != top and _under(path, top):
            parts = path.split(".")
            start = _depth(top)
            for k in range(start + 1, len(parts) + 1):
                sub = ".".join(parts[:k])
                within = stack[-1][0] if stack else base
                cl = SCluster(f"cluster:{sub}@{len(self.clusters)}",
                              "" if self.counting else self._module_label(sub, within), "module", path=sub)
                self.clusters[cl.id] = cl
                parent.items.append(cl)
                stack.append((sub, cl))
                parent = cl
        return parent

    def _dissolve(self, c: SCluster) -> None:
        """A module run holding one box is that box, its name joined to the label."""
        for i, it in enumerate(c.items):
            if not isinstance(it, SCluster):
                continue
            self._dissolve(it)
            if it.kind == "module" and len(it.items) == 1 and isinstance(it.items[0], SBox):
                box = it.items[0]
                name = it.label.split(" · ", 1)[0]
                if box.kind not in ("module", "call"):  # those already say their module's name
                    box.lines[0] = f"{name} · {box.lines[0]}"
                c.items[i] = box
                del self.clusters[it.id]

    # ------------------------------------------------------------ edges

    def _edges(self) -> list[SEdge]:
        g = self.graph
        inputs = {v.index: v for v in g.inputs}
        memo: dict[int, list[tuple[str, int | None]]] = {}

        def sources(index: int, depth: int = 0) -> list[tuple[str, int | None]]:
            got = memo.get(index)
            if got is not None:
                return got
            memo[index] = []  # a cycle through a loop's carried values ends here
            out: list[tuple[str, int | None]] = []
            if depth > 60:
                return out
            v = inputs.get(index)
            if v is not None:
                if not _is_self(v):
                    out = [("in:" + v.name, index)]
                memo[index] = out
                return out
            if index in self.param_of:
                owner, pos = self.param_of[index]
                box = self.box_for.get(owner)
                if owner.kind == "prim::Loop":
                    if pos == 0:
                        out = [(box, None)] if box else []
                    elif pos + 1 < len(owner.inputs):
                        out = sources(owner.inputs[pos + 1].index, depth + 1)
                elif box:
                    out = [(box, None)]
                memo[index] = out
                return out
            n = g.producer(index)
            if n is None:
                return out
            box = self.box_for.get(n)
            if box is not None and n.kind not in ("prim::If", "prim::Loop"):
                out = [(box, index)]
            elif n.kind in ("prim::If", "prim::Loop") and box is not None and box.startswith("module:"):
                out = [(box, index)]
            elif n.kind in ("prim::If", "prim::Loop"):
                j = n.outputs.index(next(o for o in n.outputs if o.index == index))
                offset = 1 if n.kind == "prim::Loop" else 0
                for b in n.blocks:
                    if j + offset < len(b.returns):
                        out.extend(sources(b.returns[j + offset].index, depth + 1))
                if n.kind == "prim::Loop" and j + 2 < len(n.inputs):
                    out.extend(sources(n.inputs[j + 2].index, depth + 1))
                if not out and box is not None:
                    out = [(box, index)]
            elif n.kind in ("prim::GetAttr", "prim::Constant"):
                out = []
            else:  # plumbing: the values it carries
                for i in n.in_idx:
                    out.extend(sources(i, depth + 1))
            seen = set()
            out = [s for s in out if not (s in seen or seen.add(s))]
            memo[index] = out
            return out

        edges: list[SEdge] = []
        seen: set[tuple] = set()

        def add(tail: str, head: str, value: int | None, control: bool = False) -> None:
            if tail == head or (tail, head, value) in seen:
                return
            seen.add((tail, head, value))
            edges.append(SEdge(tail, head, value, control))

        # ops that write an argument in place (``append(list, x)``, ``add_``): later readers of
        # that value depend on the write, which dataflow alone does not show
        writers: dict[int, str] = {}
        for n in g.walk():
            head = self.box_for.get(n)
            if head is None:
                continue
            for i in n.in_idx:
                found = sources(i)
                for tail, value in found:
                    add(tail, head, value)
                writer = writers.get(i)
                if writer is not None and writer != head and not any(t == writer for t, _ in found):
                    add(writer, head, None)
            for k in _written_args(n):
                if k < len(n.in_idx):
                    for root in _roots(g, n.in_idx[k]):
                        writers[root] = head
            if n.blocks and not head.startswith("module:"):
                for b in n.blocks:
                    cid = "block:" + b.id
                    if cid in self.clusters:
                        add(head, cid, None, control=True)
        for v in g.outputs:
            for tail, value in sources(v.index):
                add(tail, "output", value)
        return edges


def _written_args(n: Node) -> list[int]:
    """Positions of the arguments a node's schema marks as written (``Tensor(a!) self``)."""
    from tsdebug.render.labels import schema_args

    return [k for k, (ty, _name, _d) in enumerate(schema_args(n.schema)) if "!" in ty]


def _roots(g: Graph, index: int) -> list[int]:
    """The value itself, and the values a view or list element of it came from, one step back."""
    out = [index]
    n = g.producer(index)
    if n is not None and n.kind in ("aten::__getitem__", "aten::select", "aten::slice", "aten::view",
                                    "aten::narrow", "prim::TupleIndex") and n.in_idx:
        out.append(n.in_idx[0])
    return out


def build_scene(graph: Graph, labeler: Labeler | None = None, collapse: int | None = None,
                plumbing: bool = False) -> Scene:
    """The boxes, clusters and edges of ``graph``; modules deeper than ``collapse`` folded into boxes."""
    return SceneBuilder(graph, labeler, collapse, plumbing).build()


def labeler_for(session: Any, graph: Graph, receiver: str = "") -> Labeler:
    """A ``Labeler`` reading weight shapes from the session's program (its state dict)."""
    state: Mapping[str, Any] = {}
    try:
        state = session.loaded.state_dict()
    except Exception:  # a program without one: labels without sizes
        state = {}
    return Labeler(graph, state, receiver)


def fold_depth_for(graph: Graph, limit: int, labeler: Labeler | None = None,
                   depths: Iterable[int | None] = (None, 4, 3, 2, 1, 0)) -> int | None:
    """The deepest collapse depth whose drawing has at most ``limit`` boxes."""
    lab = labeler or Labeler(graph)
    last = None
    for d in depths:
        last = d
        if SceneBuilder(graph, lab, d).count_boxes() <= limit:
            return d
    return last
