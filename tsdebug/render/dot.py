"""DOT from a scene: clusters for module runs and If/Loop blocks, overlays from a run.

Constants, attribute reads and list/tuple plumbing are not drawn (their
edges pass through to the values they carry) unless ``plumbing=True``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.ir import Graph
from tsdebug.render.labels import HIDDEN, Labeler
from tsdebug.render.scene import SBox, SCluster, Scene, build_scene

#: Overlay colours: fills readable with black text on light and dark viewers.
COLORS = {
    "executed": "#b7e4c7",
    "current": "#ffd166",
    "breakpoint": "#d62828",  # border
    "diverged": "#ef476f",
    "finding": "#f4a261",
    "plain": "#e9ecef",
    "module": "#dee2ff",
    "io": "#caf0f8",
}


@dataclass
class Overlay:
    """What a session knows about the nodes: node ids in each set."""

    executed: set[str] = field(default_factory=set)
    current: str | None = None
    breakpoints: set[str] = field(default_factory=set)
    diverged: set[str] = field(default_factory=set)
    findings: set[str] = field(default_factory=set)
    shapes: dict[tuple[str, int], str] = field(default_factory=dict)  # (graph name, value index) -> "1×3×8×8"
    trips: dict[str, int] = field(default_factory=dict)  # loop node id -> iterations

    def state(self, ids: set[str]) -> str:
        """The overlay state a box holding ``ids`` shows: diverged, current, finding, executed or ''."""
        if ids & self.diverged:
            return "diverged"
        if self.current in ids:
            return "current"
        if ids & self.findings:
            return "finding"
        if ids & self.executed:
            return "executed"
        return ""


def q(text: str) -> str:
    """A DOT quoted string."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text)


class DotWriter:
    def __init__(self, scene: Scene, overlay: Overlay | None = None, legend: bool = True):
        self.scene = scene
        self.overlay = overlay or Overlay()
        self.legend = legend
        self.lines: list[str] = []

    def build(self) -> str:
        g = self.scene.graph
        self.lines = [
            f"digraph {q(g.name)} {{",
            '  graph [rankdir=TB, fontname="Helvetica", fontsize=11, nodesep=0.25, ranksep=0.35, bgcolor="white", '
            'labeljust=l];',
            '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=10, '
            f'fillcolor="{COLORS["plain"]}", color="#495057", fontcolor="black", margin="0.08,0.03", height=0.3];',
            '  edge [fontname="Helvetica", fontsize=9, color="#6c757d", fontcolor="#343a40", arrowsize=0.6];',
        ]
        self._emit_items(self.scene.root, "  ")
        self._emit_edges()
        if self.legend:
            self._emit_legend()
        self.lines.append("}")
        return "\n".join(self.lines) + "\n"

    def _emit_items(self, c: SCluster, ind: str) -> None:
        for it in c.items:
            if isinstance(it, SBox):
                self._emit_box(it, ind)
                continue
            self.lines.append(f"{ind}subgraph {q('cluster_' + _safe(it.id))} {{")
            label = it.label
            if it.kind == "block" and it.id.startswith("block:"):
                owner = it.id[len("block:"):].rsplit("/b", 1)[0]
                if owner in self.overlay.trips:
                    label = f"{label} ×{self.overlay.trips[owner]}"
            style = 'style="dashed,rounded"; color="#868e96"' if it.kind == "block" else \
                'style="rounded,filled"; fillcolor="#f8f9fa"; color="#adb5bd"'
            self.lines.append(f'{ind}  label={q(label)}; {style}; fontcolor="#495057";')
            self._emit_items(it, ind + "  ")
            self.lines.append(f"{ind}}}")

    def _emit_box(self, box: SBox, ind: str) -> None:
        ov = self.overlay
        ids = set(box.nodes)
        attrs = []
        if box.kind in ("input", "output"):
            attrs += ["shape=ellipse", f'fillcolor="{COLORS["io"]}"']
        elif box.kind == "module":
            attrs += [f'fillcolor="{COLORS["module"]}"', 'style="filled"']
        state = ov.state(ids)
        if state:
            attrs = [a for a in attrs if not a.startswith("fillcolor")] + [f'fillcolor="{COLORS[state]}"']
        if ids & ov.breakpoints:
            attrs.append(f'color="{COLORS["breakpoint"]}", penwidth=2.5')
        if ov.current in ids:
            attrs.append("penwidth=2.5")
        tooltip = box.nodes[0] if len(box.nodes) == 1 else (box.tooltip or box.id)
        extra = (", " + ", ".join(attrs)) if attrs else ""
        self.lines.append(f"{ind}{q(box.id)} [label={q(chr(10).join(box.lines))}, tooltip={q(tooltip)}{extra}];")

    def _emit_edges(self) -> None:
        g = self.scene.graph
        for e in self.scene.edges:
            if e.control:
                # to the block's first box: DOT has no edges to clusters without compound=true
                first = _first_box(self.scene.clusters[e.head])
                if first is not None:
                    self.lines.append(f"  {q(e.tail)} -> {q(first)} [style=dashed, color=\"#adb5bd\"];")
                continue
            shape = self.overlay.shapes.get((g.name, e.value)) if e.value is not None else None
            label = f" [label={q(shape)}]" if shape else ""
            self.lines.append(f"  {q(e.tail)} -> {q(e.head)}{label};")

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


def _first_box(c: SCluster) -> str | None:
    for it in c.items:
        if isinstance(it, SBox):
            return it.id
        got = _first_box(it)
        if got is not None:
            return got
    return None


def build_dot(graph: Graph, overlay: Overlay | None = None, collapse: int | None = None,
              plumbing: bool = False, legend: bool = True, labeler: Labeler | None = None) -> str:
    """The DOT source of ``graph`` with ``overlay``; modules deeper than ``collapse`` folded."""
    return DotWriter(build_scene(graph, labeler, collapse, plumbing), overlay, legend).build()


def scene_dot(scene: Scene, overlay: Overlay | None = None, legend: bool = True) -> str:
    return DotWriter(scene, overlay, legend).build()


def drawn_node_ids(graph: Graph, plumbing: bool = False) -> list[str]:
    """Node ids that a full (uncollapsed) drawing holds."""
    return [n.id for n in graph.walk() if plumbing or n.kind not in HIDDEN]


__all__ = ["COLORS", "HIDDEN", "Overlay", "build_dot", "drawn_node_ids", "scene_dot"]
