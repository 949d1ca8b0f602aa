"""``tsdebug render``: export a graph, with what a session found drawn on it."""

from __future__ import annotations

import os
from typing import Any

from engine.run.values import short_text
from tsdebug.render.dot import Overlay, build_dot
from tsdebug.render.layout import LayoutError, builtin_layout, find_engine, run_engine
from tsdebug.render.svg import to_svg

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
                    text = short_text(x, 40)
                    if "[" in text and not text.startswith(("[", "(")):
                        ov.shapes[(graph.name, v.index)] = text[text.index("["):].strip("[]").replace(",", "×")
            if rec.node.kind == "prim::Loop":
                body = rec.node.blocks[0]
                first = next((n for n in body.nodes if n.kind != "prim::Constant"), None)
                if first is not None:
                    ov.trips[rec.node.id] = m.timeline.count_of(first.id)
        if m.current_node is not None:
            ov.current = m.current_node.id
    ov.breakpoints = set(session.breakpoints.nodes)
    if diff is not None:
        records = diff.machine.timeline.records
        ov.diverged = {records[i].node.id for i in diff.report.marked_records()}
    if findings is not None:
        ov.findings = {n for f in findings.findings for n in f.nodes}
    return ov


def export(graph: Any, out: str, fmt: str | None = None, overlay: Overlay | None = None,
           collapse: int | None = None, engine: str | None = None) -> tuple[str, int]:
    """Write ``graph`` to ``out``; returns (the engine that laid it out, boxes drawn)."""
    fmt = (fmt or os.path.splitext(out)[1].lstrip(".") or "svg").lower()
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
    source = build_dot(graph, overlay, collapse)
    boxes = source.count("tooltip=")
    if fmt == "dot":
        with open(out, "w") as f:
            f.write(source)
        return "none", boxes
    name, path = find_engine(engine)
    if engine is None and name == "dot" and boxes > 2000 and fmt in ("svg", "png"):
        # dot needs minutes on thousands of nodes (about 80 s for 5,000); the Rust port, seconds
        pure, pure_path = find_engine("graphviz-pure")
        if pure_path:
            name, path = pure, pure_path
    if path is None:
        if fmt != "svg":
            raise LayoutError(f"{fmt.upper()} export needs Graphviz: apt-get install graphviz (or pip install "
                              "graphviz-pure for PNG); SVG and DOT work without it")
        data = to_svg(builtin_layout(source)).encode()
    else:
        if fmt == "pdf" and name == "graphviz-pure":
            raise LayoutError("PDF export needs Graphviz's dot (apt-get install graphviz); graphviz-pure writes SVG and PNG")
        data = run_engine(path, source, fmt)
    with open(out, "wb") as f:
        f.write(data)
    return name, boxes
