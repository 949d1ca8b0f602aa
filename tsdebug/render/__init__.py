"""Rendering: DOT from the IR, layout, SVG/PNG/PDF export, drawing into terminal cells."""

from tsdebug.render.dot import Overlay, build_dot, drawn_node_ids
from tsdebug.render.export import export, overlay_from_session
from tsdebug.render.layout import Layout, engine_note, find_engine, layout
from tsdebug.render.terminal import Drawing, draw

__all__ = ["Drawing", "Layout", "Overlay", "build_dot", "draw", "drawn_node_ids", "engine_note", "export",
           "find_engine", "layout", "overlay_from_session"]
