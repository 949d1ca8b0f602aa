"""Lay out DOT: Graphviz's ``dot``, else ``graphviz-pure``, else a small built-in layout.

Every caller is told which engine ran (``Layout.engine``) and, when it is not
``dot``, how to get it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field

POINTS_PER_INCH = 72.0


class LayoutError(Exception):
    pass


@dataclass
class LNode:
    id: str
    label: str
    x: float  # centre, points, y grows downwards
    y: float
    w: float
    h: float
    fill: str = ""
    bold: bool = False


@dataclass
class LCluster:
    id: str
    label: str
    x0: float
    y0: float
    x1: float
    y1: float


@dataclass
class LEdge:
    tail: str
    head: str
    points: list[tuple[float, float]]
    label: str = ""


@dataclass
class Layout:
    engine: str  # "dot", "graphviz-pure" or "builtin"
    width: float
    height: float
    nodes: dict[str, LNode] = field(default_factory=dict)
    clusters: list[LCluster] = field(default_factory=list)
    edges: list[LEdge] = field(default_factory=list)


def find_engine(prefer: str | None = None) -> tuple[str, str | None]:
    """``("dot", path)``, ``("graphviz-pure", path)`` or ``("builtin", None)``."""
    candidates = []
    if prefer in (None, "dot"):
        candidates.append(("dot", shutil.which("dot")))
    if prefer in (None, "graphviz-pure") and not os.environ.get("TSDEBUG_NO_GRAPHVIZ_PURE"):
        here = os.path.join(os.path.dirname(sys.executable), "graphviz-pure")
        candidates.append(("graphviz-pure", shutil.which("graphviz-pure") or (here if os.path.exists(here) else None)))
    for name, path in candidates:
        if path:
            return name, path
    return "builtin", None


def engine_note(engine: str) -> str:
    """One line: which layout engine ran and how to get the better one."""
    if engine == "dot":
        return "layout: Graphviz dot"
    if engine == "graphviz-pure":
        return ("layout: graphviz-pure (Graphviz's dot is not installed; "
                "apt-get install graphviz for the reference engine and PDF export)")
    return ("layout: tsdebug's built-in layered layout (no Graphviz found; pip install graphviz-pure "
            "or apt-get install graphviz for better layouts and PNG/PDF export)")


def run_engine(path: str, dot_source: str, fmt: str, timeout: float = 600) -> bytes:
    try:
        res = subprocess.run([path, f"-T{fmt}"], input=dot_source.encode(), capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise LayoutError(f"{os.path.basename(path)} took longer than {timeout:.0f} s; collapse modules (--collapse)") from None
    if res.returncode != 0:
        first = res.stderr.decode(errors="replace").strip().splitlines()
        raise LayoutError(f"{os.path.basename(path)} failed: {first[0] if first else 'exit ' + str(res.returncode)}")
    return res.stdout


# ------------------------------------------------------------ -Tjson parsing

_FILL = re.compile(r'fillcolor="?(#[0-9a-fA-F]{6})')


def parse_json(data: bytes, engine: str) -> Layout:
    doc = json.loads(data)
    bb = [float(v) for v in doc.get("bb", "0,0,0,0").split(",")]
    height = bb[3]

    def flip(x: float, y: float) -> tuple[float, float]:
        return x, height - y

    out = Layout(engine, bb[2], height)
    objects = doc.get("objects", [])
    by_gvid = {}
    for obj in objects:
        if "nodes" in obj or obj.get("name", "").startswith("cluster"):
            if "bb" in obj:
                x0, y0, x1, y1 = (float(v) for v in obj["bb"].split(","))
                (ax, ay), (bx, by) = flip(x0, y1), flip(x1, y0)
                out.clusters.append(LCluster(obj.get("name", ""), obj.get("label", ""), ax, ay, bx, by))
            continue
        if "pos" not in obj:
            continue
        x, y = (float(v) for v in obj["pos"].split(","))
        fx, fy = flip(x, y)
        node = LNode(obj["name"], obj.get("label", obj["name"]).replace("\\n", "\n"), fx, fy,
                     float(obj.get("width", 0.5)) * POINTS_PER_INCH, float(obj.get("height", 0.3)) * POINTS_PER_INCH,
                     obj.get("fillcolor", ""), obj.get("penwidth", "1") not in ("1", "1.0", ""))
        out.nodes[node.id] = node
        by_gvid[obj.get("_gvid")] = node.id
    for e in doc.get("edges", []):
        tail, head = by_gvid.get(e.get("tail")), by_gvid.get(e.get("head"))
        if tail is None or head is None or e.get("style") == "invis":
            continue
        pts = []
        pos = e.get("pos", "")
        for part in pos.split():
            if part.startswith(("e,", "s,")):
                continue
            try:
                x, y = (float(v) for v in part.split(","))
                pts.append(flip(x, y))
            except ValueError:
                continue
        out.edges.append(LEdge(tail, head, pts, e.get("label", "")))
    return out


# ------------------------------------------------------------ built-in layout

_NODE = re.compile(r'^\s*"((?:[^"\\]|\\.)*)"\s*\[(.*)\];\s*$')
_EDGE = re.compile(r'^\s*"((?:[^"\\]|\\.)*)"\s*->\s*"((?:[^"\\]|\\.)*)"(?:\s*\[(.*)\])?;\s*$')
_ATTR = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|[^,\s]+)')
_CLUSTER = re.compile(r'^\s*subgraph\s+"(cluster[^"]*)"\s*\{\s*$')
_LABEL = re.compile(r'^\s*label=("(?:[^"\\]|\\.)*")')


def _unq(text: str) -> str:
    if text.startswith('"') and text.endswith('"'):
        text = text[1:-1]
    return text.replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\")


def builtin_layout(dot_source: str) -> Layout:
    """A layered layout in Python: ranks by longest path, order by first appearance.

    Good enough to read a graph when no Graphviz is installed; clusters are
    the boxes around their members.
    """
    nodes: dict[str, dict] = {}
    edges: list[tuple[str, str, str]] = []
    cluster_stack: list[tuple[str, str]] = []
    members: dict[str, list[str]] = {}
    cluster_labels: dict[str, str] = {}
    for line in dot_source.splitlines():
        m = _CLUSTER.match(line)
        if m:
            cluster_stack.append((m.group(1), ""))
            members[m.group(1)] = []
            continue
        if line.strip() == "}" and cluster_stack:
            cluster_stack.pop()
            continue
        lm = _LABEL.match(line)
        if lm and cluster_stack:
            cluster_labels[cluster_stack[-1][0]] = _unq(lm.group(1))
            continue
        m = _EDGE.match(line)
        if m:
            attrs = dict(_ATTR.findall(m.group(3) or ""))
            if attrs.get("style") == "invis":
                continue
            edges.append((_unq('"' + m.group(1) + '"'), _unq('"' + m.group(2) + '"'), _unq(attrs.get("label", '""'))))
            continue
        m = _NODE.match(line)
        if m and not line.strip().startswith(("graph", "node", "edge")):
            nid = _unq('"' + m.group(1) + '"')
            attrs = dict(_ATTR.findall(m.group(2)))
            nodes[nid] = {"label": _unq(attrs.get("label", nid)), "fill": _unq(attrs.get("fillcolor", "")),
                          "bold": "penwidth" in attrs}
            for cid, _ in cluster_stack:
                members[cid].append(nid)
    for t, h, _ in edges:
        for n in (t, h):
            nodes.setdefault(n, {"label": n, "fill": "", "bold": False})
    order = list(nodes)
    rank = {n: 0 for n in order}
    preds: dict[str, list[str]] = {n: [] for n in order}
    for t, h, _ in edges:
        preds[h].append(t)
    index = {n: i for i, n in enumerate(order)}
    for n in order:  # nodes are in program order: one pass settles forward edges
        for p in preds[n]:
            if index[p] < index[n]:
                rank[n] = max(rank[n], rank[p] + 1)
    layers: dict[int, list[str]] = {}
    for n in order:
        layers.setdefault(rank[n], []).append(n)
    out = Layout("builtin", 0, 0)
    y = 20.0
    for r in sorted(layers):
        x = 20.0
        row_h = 0.0
        for n in layers[r]:
            label = nodes[n]["label"]
            w = max(len(s) for s in label.split("\n")) * 6.5 + 16
            h = 18.0 * len(label.split("\n")) + 6
            out.nodes[n] = LNode(n, label, x + w / 2, y + h / 2, w, h, nodes[n]["fill"], nodes[n]["bold"])
            x += w + 18
            row_h = max(row_h, h)
        out.width = max(out.width, x + 20)
        y += row_h + 36
    out.height = y + 20
    for t, h, label in edges:
        a, b = out.nodes[t], out.nodes[h]
        out.edges.append(LEdge(t, h, [(a.x, a.y + a.h / 2), (b.x, b.y - b.h / 2)], label))
    for cid, mem in members.items():
        pts = [out.nodes[m] for m in mem if m in out.nodes]
        if not pts:
            continue
        out.clusters.append(LCluster(cid, cluster_labels.get(cid, ""), min(p.x - p.w / 2 for p in pts) - 8,
                                     min(p.y - p.h / 2 for p in pts) - 16, max(p.x + p.w / 2 for p in pts) + 8,
                                     max(p.y + p.h / 2 for p in pts) + 8))
    return out


def layout(dot_source: str, engine: str | None = None) -> Layout:
    name, path = find_engine(engine)
    if path is None:
        return builtin_layout(dot_source)
    return parse_json(run_engine(path, dot_source, "json"), name)
