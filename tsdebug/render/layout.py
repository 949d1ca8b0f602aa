"""Graphviz engines: Graphviz's ``dot``, else ``graphviz-pure``; without either, tsdebug's own
grid layout (``tsdebug.render.grid``) draws the graph.

Every caller is told which engine ran and, when it is not ``dot``, how to get it.
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
            "or apt-get install graphviz for PNG/PDF export)")


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


def layout(dot_source: str, engine: str | None = None) -> Layout:
    """``dot_source`` laid out by Graphviz's dot or graphviz-pure (``-Tjson``); LayoutError without either."""
    name, path = find_engine(engine)
    if path is None:
        raise LayoutError("no Graphviz engine: apt-get install graphviz or pip install graphviz-pure")
    return parse_json(run_engine(path, dot_source, "json"), name)
