"""Rendering: a scene from the IR (labels, clusters, edges), DOT for Graphviz, tsdebug's own grid
layout, SVG/PNG/PDF export, drawing into terminal cells."""

from tsdebug.render.dot import Overlay, build_dot, drawn_node_ids, scene_dot
from tsdebug.render.export import export, overlay_from_session
from tsdebug.render.grid import GridLayout, grid_layout
from tsdebug.render.labels import Labeler
from tsdebug.render.layout import Layout, engine_note, find_engine, layout
from tsdebug.render.scene import Scene, build_scene, labeler_for
from tsdebug.render.terminal import Drawing, draw

__all__ = ["Drawing", "GridLayout", "Labeler", "Layout", "Overlay", "Scene", "build_dot", "build_scene", "draw",
           "drawn_node_ids", "engine_note", "export", "find_engine", "grid_layout", "labeler_for", "layout",
           "overlay_from_session", "scene_dot"]
