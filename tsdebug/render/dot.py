"""DOT from the IR: clusters for modules and for If/Loop blocks, overlays from a run.

Constants, attribute reads and list/tuple plumbing are not drawn (their
edges pass through to the values they carry) unless ``plumbing=True``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from engine.ir import Block, Graph, Node, parent_module_path

HIDDEN = frozenset({"prim::Constant", "prim::GetAttr", "prim::ListConstruct", "prim::TupleConstruct",
                    "prim::ListUnpack", "prim::TupleUnpack", "prim::NumToTensor", "aten::Int"})

#: Overlay colours: fills readable with black text on light and dark viewers.
COLORS = {
    "executed": "#b7e4c7",
    "current": "#ffd166",
    "breakpoint": "#d62828",  # border
    "diverged": "#ef476f",
    "finding": "#f4a261",
    "plain": "#e9ecef",
    "module": "#dee2ff",
}


@dataclass
class Overlay:
    """What a session knows about the nodes: node ids in each set."""

    executed: set[str] = field(default_factory=set)
    current: str | None = None
    breakpoints: set[str] = field(default_factory=set)
    diverged: set[str] = field(default_factory=set)
    findings: set[str] = field(default_factory=set)
    shapes: dict[tuple[str, int], str] = field(default_factory=dict)  # (graph name, value index) -> "1x3x8x8"
    trips: dict[str, int] = field(default_factory=dict)  # loop node id -> iterations


def q(text: str) -> str:
    """A DOT quoted string."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def node_label(node: Node) -> str:
    label = node.kind
    if node.kind in ("prim::CallMethod", "prim::GetAttr", "prim::SetAttr"):
        label += f"[{node.attrs.get('name', '')}]"
    elif node.kind == "prim::CallFunction":
        label += f"[{(node.callee or '').rsplit('.', 1)[-1]}]"
    extras = []
    for k, v in node.attrs.items():
        if k in ("name", "value", "function"):
            continue
        text = str(v)
        if len(text) <= 16:
            extras.append(f"{k}={text}")
    if extras:
        label += "\n" + " ".join(extras[:2])
    return label


@dataclass
class _Box:
    """A drawn node: a real node, or a collapsed module."""

    id: str
    label: str
    nodes: list[Node]
    path: str  # module path the box sits in


class DotBuilder:
    def __init__(self, graph: Graph, overlay: Overlay | None = None, collapse: int | None = None,
                 plumbing: bool = False, legend: bool = True):
        self.graph = graph
        self.overlay = overlay or Overlay()
        self.collapse = collapse
        self.plumbing = plumbing
        self.legend = legend
        self.lines: list[str] = []
        self.box_of: dict[str, _Box] = {}
        self.drawn: list[_Box] = []

    # ------------------------------------------------------------ boxes

    def _visible(self, node: Node) -> bool:
        return self.plumbing or node.kind not in HIDDEN

    def _collapsed_path(self, path: str) -> str | None:
        if self.collapse is None or not path:
            return None
        parts = path.split(".")
        if len(parts) <= self.collapse:
            return None
        return ".".join(parts[: self.collapse]) if self.collapse > 0 else ""

    def _assign(self, nodes: tuple[Node, ...], in_block: bool) -> None:
        for n in nodes:
            if not self._visible(n):
                continue
            folded = self._collapsed_path(n.module_path)
            if folded is not None:
                key = f"module:{folded}"
                box = self.box_of.get(key)
                if box is None:
                    box = _Box(key, folded or "model", [], parent_module_path(folded))
                    self.box_of[key] = box
                    self.drawn.append(box)
                box.nodes.append(n)
                self.box_of[n.id] = box
                for b in n.blocks:  # a folded module hides its blocks too
                    for inner in _walk(b):
                        if self._visible(inner):
                            box.nodes.append(inner)
                            self.box_of[inner.id] = box
                continue
            box = _Box(n.id, node_label(n), [n], n.module_path)
            self.box_of[n.id] = box
            self.drawn.append(box)
            for b in n.blocks:
                self._assign(b.nodes, True)

    # ------------------------------------------------------------- build

    def build(self) -> str:
        g = self.graph
        self.lines = [
            f"digraph {q(g.name)} {{",
            '  graph [rankdir=TB, fontname="Helvetica", fontsize=11, nodesep=0.25, ranksep=0.35, bgcolor="white"];',
            '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=10, '
            f'fillcolor="{COLORS["plain"]}", color="#495057", fontcolor="black", margin="0.08,0.03", height=0.3];',
            '  edge [fontname="Helvetica", fontsize=9, color="#6c757d", fontcolor="#343a40", arrowsize=0.6];',
        ]
        # graph inputs
        for v in g.inputs[1:]:
            self.lines.append(f'  {q("in:" + v.name)} [label={q(v.name + " : " + v.type)}, shape=ellipse, '
                              f'fillcolor="#caf0f8"];')
        self._assign(g.body.nodes, False)
        # nested If/Loop blocks become clusters inside their node's module cluster
        self._emit_block(g.body, indent="  ")
        self._emit_edges()
        self.lines.append('  "output" [label="output", shape=ellipse, fillcolor="#caf0f8"];')
        for v in g.outputs:
            src = self._source_boxes(v.index)
            for s in src:
                self.lines.append(f"  {q(s)} -> \"output\";")
        if self.legend:
            self._emit_legend()
        self.lines.append("}")
        return "\n".join(self.lines) + "\n"

    def _emit_block(self, block: Block, indent: str) -> None:
        """Nodes of a block, grouped into module clusters (by path) and block clusters."""
        tree: dict[str, list] = defaultdict(list)  # module path -> items (boxes or (node, block index))
        order: list[str] = []
        seen_boxes: set[str] = set()
        for n in block.nodes:
            box = self.box_of.get(n.id)
            if box is None:
                continue
            path = box.path if box.id.startswith("module:") else n.module_path
            if path not in tree:
                order.append(path)
            if box.id in seen_boxes:
                continue
            seen_boxes.add(box.id)
            tree[path].append(box)
            if box.nodes[0] is n and n.blocks and not box.id.startswith("module:"):
                tree[path].append(n)  # its blocks follow it
        self._emit_tree(tree, order, indent)

    def _emit_tree(self, tree: dict[str, list], order: list[str], indent: str) -> None:
        # nest module paths: a cluster per path prefix
        paths = sorted(set(order), key=lambda p: (p.count("."), p))
        children: dict[str, list[str]] = defaultdict(list)
        roots = []
        for p in paths:
            parent = None
            for other in paths:
                if other != p and (other == "" or p.startswith(other + ".")) and (parent is None or len(other) > len(parent)):
                    parent = other
            if parent is None or p == "":
                roots.append(p)
            else:
                children[parent].append(p)

        def emit(path: str, ind: str) -> None:
            open_cluster = bool(path)
            if open_cluster:
                cid = "cluster_m_" + _safe(path) + f"_{len(self.lines)}"
                self.lines.append(f"{ind}subgraph {q(cid)} {{")
                self.lines.append(f'{ind}  label={q(path)}; style="rounded,filled"; fillcolor="#f8f9fa"; '
                                  f'color="#adb5bd"; fontcolor="#495057";')
                ind = ind + "  "
            for item in tree.get(path, []):
                if isinstance(item, _Box):
                    self._emit_box(item, ind)
                else:
                    self._emit_blocks_of(item, ind)
            for c in children.get(path, []):
                emit(c, ind)
            if open_cluster:
                self.lines.append(ind[:-2] + "}")

        for r in roots:
            emit(r, indent)

    def _emit_blocks_of(self, node: Node, ind: str) -> None:
        names = {"prim::If": ("then", "else"), "prim::Loop": ("body",)}.get(node.kind, ())
        for j, b in enumerate(node.blocks):
            name = names[j] if j < len(names) else f"block {j}"
            if node.kind == "prim::Loop" and node.id in self.overlay.trips:
                name = f"loop ×{self.overlay.trips[node.id]}"
            elif node.kind == "prim::Loop":
                name = "loop body"
            cid = "cluster_b_" + _safe(b.id)
            self.lines.append(f"{ind}subgraph {q(cid)} {{")
            self.lines.append(f'{ind}  label={q(name)}; style="dashed,rounded"; color="#868e96"; fontcolor="#495057";')
            self._emit_block(b, ind + "  ")
            # an empty block still gets a point, so the branch shows
            if not any(self.box_of.get(n.id) for n in b.nodes):
                self.lines.append(f'{ind}  {q("empty:" + b.id)} [label="", shape=point, width=0.05];')
            self.lines.append(f"{ind}}}")

    def _emit_box(self, box: _Box, ind: str) -> None:
        ov = self.overlay
        ids = {n.id for n in box.nodes}
        attrs = []
        if box.id.startswith("module:"):
            label = f"{box.label}\n{len(box.nodes)} ops"
            attrs.append(f'fillcolor="{COLORS["module"]}"')
            attrs.append('style="filled"')
        else:
            label = box.label
        fill = None
        if ids & ov.diverged:
            fill = COLORS["diverged"]
        elif ov.current in ids:
            fill = COLORS["current"]
        elif ids & ov.findings:
            fill = COLORS["finding"]
        elif ids & ov.executed:
            fill = COLORS["executed"]
        if fill:
            attrs = [a for a in attrs if not a.startswith("fillcolor")] + [f'fillcolor="{fill}"']
        if ids & ov.breakpoints:
            attrs.append(f'color="{COLORS["breakpoint"]}", penwidth=2.5')
        if ov.current in ids:
            attrs.append("penwidth=2.5")
        tooltip = box.nodes[0].id if len(box.nodes) == 1 else box.id
        extra = (", " + ", ".join(attrs)) if attrs else ""
        self.lines.append(f"{ind}{q(box.id)} [label={q(label)}, tooltip={q(tooltip)}{extra}];")

    def _source_boxes(self, value_index: int, depth: int = 0) -> list[str]:
        """The drawn boxes a value comes from (through hidden plumbing)."""
        for v in self.graph.inputs[1:]:
            if v.index == value_index:
                return ["in:" + v.name]
        node = self.graph.producer(value_index)
        if node is None or depth > 20:
            return []
        box = self.box_of.get(node.id)
        if box is not None:
            return [box.id]
        out: list[str] = []
        if node.kind in ("prim::GetAttr", "prim::Constant"):
            return out
        for i in node.in_idx:
            out.extend(self._source_boxes(i, depth + 1))
        return out

    def _emit_edges(self) -> None:
        seen: set[tuple[str, str]] = set()
        for n in self.graph.walk():
            box = self.box_of.get(n.id)
            if box is None:
                continue
            for v in n.inputs:
                for src in self._source_boxes(v.index):
                    if src == box.id or (src, box.id) in seen:
                        continue
                    seen.add((src, box.id))
                    shape = self.overlay.shapes.get((self.graph.name, v.index))
                    label = f" [label={q(shape)}]" if shape else ""
                    self.lines.append(f"  {q(src)} -> {q(box.id)}{label};")

    def _emit_legend(self) -> None:
        self.lines.append('  subgraph "cluster_legend" {')
        self.lines.append('    label="legend"; style="rounded"; color="#ced4da"; fontcolor="#495057";')
        items = [("executed", COLORS["executed"], ""), ("current", COLORS["current"], ", penwidth=2.5"),
                 ("breakpoint", COLORS["plain"], f', color="{COLORS["breakpoint"]}", penwidth=2.5'),
                 ("diverged from eager", COLORS["diverged"], ""), ("lint finding", COLORS["finding"], ""),
                 ("collapsed module", COLORS["module"], "")]
        keys = []
        for name, fill, extra in items:
            key = "legend:" + name
            keys.append(q(key))
            self.lines.append(f'    {q(key)} [label={q(name)}, fillcolor="{fill}"{extra}];')
        self.lines.append(f"    {{ rank=same; {'; '.join(keys)}; }}")
        self.lines.append("  }")


def _walk(block: Block):
    for n in block.nodes:
        yield n
        for b in n.blocks:
            yield from _walk(b)


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text)


def build_dot(graph: Graph, overlay: Overlay | None = None, collapse: int | None = None,
              plumbing: bool = False, legend: bool = True) -> str:
    """The DOT source of ``graph`` with ``overlay``; modules deeper than ``collapse`` folded."""
    return DotBuilder(graph, overlay, collapse, plumbing, legend).build()


def drawn_node_ids(graph: Graph, plumbing: bool = False) -> list[str]:
    """Node ids that a full (uncollapsed) drawing holds."""
    return [n.id for n in graph.walk() if plumbing or n.kind not in HIDDEN]
