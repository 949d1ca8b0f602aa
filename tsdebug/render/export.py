"""``tsdebug render``: export a graph, with what a session found drawn on it."""

from __future__ import annotations

import os
from typing import Any

from tsdebug.render.dot import Overlay, scene_dot
from tsdebug.render.grid import grid_layout
from tsdebug.render.labels import Labeler, shape_text
from tsdebug.render.layout import LayoutError, find_engine, run_engine
from tsdebug.render.scene import build_scene
from tsdebug.render.svg import grid_svg

FORMATS = ("svg", "png", "pdf", "dot")


def overlay_from_session(session: Any, graph: Any, diff: Any = None, findings: Any = None) -> Overlay:
    """Executed and current nodes, breakpoints, shapes and trip counts from the session's machine."""
    ov = Overlay()
    m = session.machine
    if m is not None:
        for rec in m.timeline.records:
            ov.executed.add(rec.node.id)
            outs = rec.peek_outputs()  # shapes only: no recipe needs running
            if outs:
                for v, x in zip(rec.node.outputs, outs):
                    text = shape_text(x)
                    if text:
                        ov.shapes[(graph.name, v.index)] = text
            if rec.node.kind == "prim::Loop":
                body = rec.node.blocks[0]
                first = next((n for n in body.nodes if n.kind != "prim::Constant"), None)
                if first is not None:
                    ov.trips[rec.node.id] = m.timeline.count_of(first.id)
        if m.current_node is not None:
            ov.current = m.current_node.id
        if session.inputs is not None and graph.inputs:
            args = [v for v in graph.inputs if not (v.type.startswith("__torch__.") or v.name.startswith("self"))]
            for v, x in zip(args, session.inputs):
                text = shape_text(x)
                if text:
                    ov.shapes[(graph.name, v.index)] = text
    ov.breakpoints = set(session.breakpoints.nodes)
    if diff is not None:
        records = diff.machine.timeline.records
        ov.diverged = {records[i].node.id for i in diff.report.marked_records()}
    if findings is not None:
        ov.findings = {n for f in findings.findings for n in f.nodes}
    return ov


def export(graph: Any, out: str, fmt: str | None = None, overlay: Overlay | None = None,
           collapse: int | None = None, engine: str | None = None, labeler: Labeler | None = None) -> tuple[str, int]:
    """Write ``graph`` to ``out``; returns (the engine that laid it out, boxes drawn).

    ``engine``: ``"dot"``, ``"graphviz-pure"``, ``"builtin"`` (tsdebug's grid layout), or None for the
    best one installed."""
    fmt = (fmt or os.path.splitext(out)[1].lstrip(".") or "svg").lower()
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
    scene = build_scene(graph, labeler, collapse)
    source = scene_dot(scene, overlay)
    boxes = scene.box_count()
    if fmt == "dot":
        with open(out, "w") as f:
            f.write(source)
        return "none", boxes
    name, path = find_engine(engine) if engine != "builtin" else ("builtin", None)
    if engine is None and name == "dot" and boxes > 2000 and fmt in ("svg", "png"):
        # dot needs minutes on thousands of nodes (about 80 s for 5,000); the Rust port, seconds
        pure, pure_path = find_engine("graphviz-pure")
        if pure_path:
            name, path = pure, pure_path
    if path is None:
        if fmt != "svg":
            raise LayoutError(f"{fmt.upper()} export needs Graphviz: apt-get install graphviz (or pip install "
                              "graphviz-pure for PNG); SVG and DOT work without it")
        data = grid_svg(grid_layout(scene), scene, overlay).encode()
    else:
        if fmt == "pdf" and name == "graphviz-pure":
            raise LayoutError("PDF export needs Graphviz's dot (apt-get install graphviz); graphviz-pure writes SVG and PNG")
        data = run_engine(path, source, fmt)
    with open(out, "wb") as f:
        f.write(data)
    return name, boxes
