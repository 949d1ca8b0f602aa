"""The graph view (``v``): the current frame's graph drawn in terminal cells.

Layout runs in a worker and is cached per graph, collapse depth and zoom;
boxes are coloured and edges labelled with shapes when a row is shown, from
the machine's state, so stepping never waits for a new layout.  ``j``/``k``
select the next or previous box (the view follows, the inspector shows it),
``z`` switches between boxes with borders and compact one-row boxes,
``+``/``-`` expand or collapse modules, arrows pan.
"""

from __future__ import annotations

from typing import Callable

from rich.segment import Segment
from rich.style import Style
from textual.binding import Binding
from textual.geometry import Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

from tsdebug.render.terminal import Drawing

STATE_STYLE = {
    "current": Style.parse("bold black on #ffd166"),
    "diverged": Style.parse("bold white on #ef476f"),
    "error": Style.parse("bold white on #d62828"),
    "finding": Style.parse("black on #f4a261"),
    "executed": Style.parse("black on #b7e4c7"),
    "breakpoint": Style.parse("bold red"),
}
SELECTED = Style.parse("bold reverse")
STATE_ORDER = ("error", "diverged", "current", "breakpoint", "finding", "executed")


class GraphView(ScrollView, can_focus=True):
    BINDINGS = [
        Binding("plus,equals_sign", "collapse(1)", "expand modules", show=False),
        Binding("minus", "collapse(-1)", "collapse modules", show=False),
        Binding("z", "zoom", "compact / detailed boxes", show=False),
        Binding("j", "select(1)", "next box", show=False),
        Binding("k", "select(-1)", "previous box", show=False),
        Binding("up", "scroll_up", show=False),
        Binding("down", "scroll_down", show=False),
        Binding("left,h", "scroll_left", show=False),
        Binding("right,l", "scroll_right", show=False),
        Binding("enter", "activate", "show the box's node", show=False),
    ]

    class CollapseChanged(Message):
        def __init__(self, delta: int) -> None:
            super().__init__()
            self.delta = delta

    class ZoomChanged(Message):
        """``z``: the app lays the graph out again, compact or detailed."""

    class NodeChosen(Message):
        """A box was selected (``j``/``k``): its first node."""

        def __init__(self, node_id: str, activated: bool = False) -> None:
            super().__init__()
            self.node_id = node_id
            self.activated = activated

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.drawing: Drawing | None = None
        self.message_text = "no graph yet"
        # node id -> one of STATE_STYLE's keys, or "" (supplied by the app)
        self.state_of: Callable[[str], str] = lambda node_id: ""
        # (tail box id, value index) -> the text an edge shows (a shape), or "" (supplied by the app)
        self.shape_of: Callable[[str, int], str] | None = None
        self.box_nodes: dict[str, list[str]] = {}  # box id -> node ids it stands for
        self.order: list[str] = []  # box ids in program order
        self.selected: str | None = None  # box id
        self.current_node: str | None = None  # the machine's current node (supplied by the app)
        self._box_index: dict[str, str] = {}  # node id -> box id, plumbing included
        self._states: dict[str, str] = {}

    # ------------------------------------------------------------ data

    def show_drawing(self, drawing: Drawing | None, message: str = "", box_nodes: dict | None = None,
                     order: list[str] | None = None, aliases: dict | None = None) -> None:
        if drawing is not self.drawing:
            self.drawing = drawing
            self.box_nodes = box_nodes or {}
            self._box_index = dict(aliases or {})
            self._box_index.update((n, b) for b, nodes in self.box_nodes.items() for n in nodes)
            self.order = [b for b in (order or []) if drawing is not None and b in drawing.boxes]
            if self.selected not in self.box_nodes:
                self.selected = None
        self.message_text = message
        self._states = {}
        if drawing is not None:
            self.virtual_size = Size(drawing.width, drawing.height)
        else:
            self.virtual_size = Size(self.size.width, 1)
        self.refresh()

    def box_of(self, node_id: str | None) -> str | None:
        return self._box_index.get(node_id) if node_id is not None else None

    def select_node(self, node_id: str | None, follow: bool = True) -> None:
        """Mark the box holding ``node_id`` (from the program pane's selection) and bring it on screen."""
        box = self.box_of(node_id)
        if box is not None:
            self.selected = box
            if follow:
                self.follow_box(box)
            self.refresh()

    def follow(self, node_id: str | None) -> None:
        """Scroll so the node's box is on screen."""
        box = self.box_of(node_id)
        if box is not None:
            self.follow_box(box)

    def follow_box(self, box: str) -> None:
        if self.drawing is None or box not in self.drawing.boxes:
            return
        x0, y0, x1, y1 = self.drawing.boxes[box]
        region = self.scrollable_content_region  # without the scrollbars
        w, h = max(region.width, 1), max(region.height, 1)
        sx, sy = int(self.scroll_x), int(self.scroll_y)
        if not (sx <= x0 and x1 < sx + w):
            sx = max(min((x0 + x1) // 2 - w // 2, x0), 0)
        if not (sy <= y0 and y1 < sy + h):
            sy = max(y0 - h // 3, 0)
        self.scroll_to(x=sx, y=sy, animate=False, immediate=True)

    # ------------------------------------------------------------ actions

    def action_collapse(self, delta: int) -> None:
        self.post_message(self.CollapseChanged(delta))

    def action_zoom(self) -> None:
        self.post_message(self.ZoomChanged())

    def action_select(self, delta: int) -> None:
        if not self.order:
            return
        if self.selected in self.order:
            k = self.order.index(self.selected) + delta
        else:
            k = 0 if delta > 0 else len(self.order) - 1
        k = max(0, min(len(self.order) - 1, k))
        box = self.order[k]
        self.selected = box
        self.follow_box(box)
        self.refresh()
        nodes = self.box_nodes.get(box)
        if nodes:
            self.post_message(self.NodeChosen(nodes[0]))

    def action_activate(self) -> None:
        nodes = self.box_nodes.get(self.selected or "")
        if nodes:
            self.post_message(self.NodeChosen(nodes[0], activated=True))

    # ------------------------------------------------------------ drawing

    def invalidate_states(self) -> None:
        """The machine moved: box states are read again when rows are drawn."""
        self._states = {}
        self.refresh()

    def box_state(self, box: str) -> str:
        got = self._states.get(box)
        if got is None:
            states = {self.state_of(n) for n in self.box_nodes.get(box, ())}
            if self.current_node is not None and self.box_of(self.current_node) == box:
                states.add("current")  # on plumbing that runs on the way to this box
            got = next((s for s in STATE_ORDER if s in states), "")
            self._states[box] = got
        return got

    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        width = self.size.width
        base = self.rich_style
        row = scroll_y + y
        if self.drawing is None or row >= self.drawing.height:
            if self.drawing is None and y == 0:
                return Strip([Segment(self.message_text[:width], base)]).crop_extend(0, width, base)
            return Strip.blank(width, base)
        text = self.drawing.line(row, self.shape_of)
        compact = self.drawing.compact
        for x0, x1, box in self.drawing.box_rows.get(row, ()):
            state = self.box_state(box)
            if state == "breakpoint":
                text.stylize(STATE_STYLE[state], x0 - (0 if compact else 1), x1 + (0 if compact else 1))
            elif state in STATE_STYLE:
                text.stylize(STATE_STYLE[state], x0, x1)
            if box == self.selected:
                text.stylize(SELECTED, x0, x1)
        segments = list(Segment.apply_style(text.render(self.app.console), base))
        return Strip(segments).crop_extend(scroll_x, scroll_x + width, base)
