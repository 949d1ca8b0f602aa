"""The graph view (``v``): the current frame's graph drawn in terminal cells.

Layout runs in a worker and is cached per graph and collapse depth; boxes
are coloured at draw time from the machine's state, so stepping never waits
for a new layout.  Arrows pan, ``+``/``-`` change the collapse depth.
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


class GraphView(ScrollView, can_focus=True):
    BINDINGS = [
        Binding("plus,equals_sign", "collapse(1)", "expand modules", show=False),
        Binding("minus", "collapse(-1)", "collapse modules", show=False),
        Binding("up,k", "scroll_up", show=False),
        Binding("down,j", "scroll_down", show=False),
        Binding("left,h", "scroll_left", show=False),
        Binding("right,l", "scroll_right", show=False),
    ]

    class CollapseChanged(Message):
        def __init__(self, delta: int) -> None:
            super().__init__()
            self.delta = delta

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.drawing: Drawing | None = None
        self.message_text = "no graph yet"
        # node id -> one of STATE_STYLE's keys, or "" (supplied by the app)
        self.state_of: Callable[[str], str] = lambda node_id: ""
        self._row_boxes: dict[int, list[tuple[int, int, str]]] = {}

    def show_drawing(self, drawing: Drawing | None, message: str = "") -> None:
        self.drawing = drawing
        self.message_text = message
        self._row_boxes = {}
        if drawing is not None:
            for nid, (x0, y0, x1, y1) in drawing.boxes.items():
                for y in range(y0 + 1, y1):
                    self._row_boxes.setdefault(y, []).append((x0 + 1, x1, nid))
            self.virtual_size = Size(drawing.width, len(drawing.rows))
        else:
            self.virtual_size = Size(self.size.width, 1)
        self.refresh()

    def follow(self, node_id: str | None) -> None:
        """Scroll so the node's box is on screen."""
        if self.drawing is None or node_id not in self.drawing.boxes:
            return
        x0, y0, x1, y1 = self.drawing.boxes[node_id]
        w, h = self.size.width, self.size.height
        sx, sy = int(self.scroll_x), int(self.scroll_y)
        if not (sx <= x0 and x1 < sx + w):
            sx = max((x0 + x1) // 2 - w // 2, 0)
        if not (sy <= y0 and y1 < sy + h):
            sy = max(y0 - h // 3, 0)
        self.scroll_to(x=sx, y=sy, animate=False)

    def action_collapse(self, delta: int) -> None:
        self.post_message(self.CollapseChanged(delta))

    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        width = self.size.width
        base = self.rich_style
        row = scroll_y + y
        if self.drawing is None or row >= len(self.drawing.rows):
            if self.drawing is None and y == 0:
                return Strip([Segment(self.message_text[:width], base)]).crop_extend(0, width, base)
            return Strip.blank(width, base)
        text = self.drawing.line(row)
        for x0, x1, nid in self._row_boxes.get(row, ()):
            state = self.state_of(nid)
            if state in STATE_STYLE and state != "breakpoint":
                text.stylize(STATE_STYLE[state], x0, x1)
            elif state == "breakpoint":
                text.stylize(STATE_STYLE[state], x0 - 1, x1 + 1)
        segments = list(Segment.apply_style(text.render(self.app.console), base))
        return Strip(segments).crop_extend(scroll_x, scroll_x + width, base)
