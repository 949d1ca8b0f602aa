"""Draw a grid layout into terminal cells: boxes, frames, edges with junctions and arrows.

The drawing is made once per layout; node states (current, executed...)
and the shapes on edges are put on it when a row is shown
(``Drawing.line``), so stepping never lays out again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from rich.text import Text

from tsdebug.render.grid import GridLayout

N, E, S, W = 1, 2, 4, 8
LINES = {
    N: "│", S: "│", N | S: "│", E: "─", W: "─", E | W: "─",
    S | E: "╭", S | W: "╮", N | E: "╰", N | W: "╯",
    N | S | E: "├", N | S | W: "┤", S | E | W: "┬", N | E | W: "┴", N | S | E | W: "┼",
}

EDGE = "#8b949e"
CONTROL = "#6e7681"
ARROW = "bold #c9d1d9"
FRAME = "#6e7681"
BLOCK_FRAME = "#8a7f5a"
TITLE = "italic #9aa4b2"
BORDER = "#adb5bd"
LABEL = "#79c0ff"
KIND_STYLE = {
    "input": "black on #caf0f8", "output": "black on #caf0f8", "module": "black on #dee2ff",
    "call": "", "control": "", "op": "",
}
COMPACT_STYLE = {
    "input": "black on #caf0f8", "output": "black on #caf0f8", "module": "black on #dee2ff",
    "call": "white on #3a4556", "control": "white on #4a4032", "op": "white on #30363d",
    # op families, tinted as Netron colours layers: weights blue, norms green, activations red
    "layer": "white on #24406a", "norm": "white on #2b4a33", "act": "white on #5c2a2a", "shape": "white on #3d3a46",
    "other": "white on #30363d",
}
#: the same families on the border of a box, in the detailed view
BORDER_STYLE = {"layer": "#6f9bd8", "norm": "#79b486", "act": "#d07f7f", "shape": "#a59fb5"}


@dataclass
class Anchor:
    """Free cells right of an edge where its shape can be written."""

    x: int
    y: int
    room: int
    tail: str
    value: int


@dataclass
class Drawing:
    """Rows of characters with styles; where each box is; where shapes may go."""

    rows: list[list[str]]
    styles: list[list[str]]
    boxes: dict[str, tuple[int, int, int, int]]  # box id -> (x0, y0, x1, y1) cells, inclusive
    compact: bool = False
    anchors: dict[int, list[Anchor]] = field(default_factory=dict)  # row -> anchors in it
    box_rows: dict[int, list[tuple[int, int, str]]] = field(default_factory=dict)  # row -> (x0, x1, box id)

    @property
    def width(self) -> int:
        return len(self.rows[0]) if self.rows else 0

    @property
    def height(self) -> int:
        return len(self.rows)

    def text(self) -> str:
        return "\n".join("".join(r).rstrip() for r in self.rows)

    def line(self, y: int, shape_of: Callable[[str, int], str] | None = None) -> Text:
        row, st = self.rows[y], self.styles[y]
        anchors = self.anchors.get(y)
        if anchors and shape_of is not None:
            row, st = list(row), list(st)
            for a in anchors:
                text = shape_of(a.tail, a.value)
                if not text:
                    continue
                if len(text) > a.room:
                    text = text[: max(a.room - 1, 0)] + "…" if a.room >= 4 else ""
                for k, ch in enumerate(text):
                    row[a.x + k] = ch
                    st[a.x + k] = LABEL
        t = Text(no_wrap=True, end="")
        start = 0
        for x in range(1, len(row) + 1):
            if x == len(row) or st[x] != st[start]:
                t.append("".join(row[start:x]), style=st[start] or "")
                start = x
        return t


def draw(layout: GridLayout) -> Drawing:
    width, height = layout.width + 1, layout.height
    rows = [[" "] * width for _ in range(height)]
    styles = [[""] * width for _ in range(height)]

    def put(x: int, y: int, ch: str, style: str = "") -> None:
        if 0 <= y < height and 0 <= x < width:
            rows[y][x] = ch
            styles[y][x] = style

    # frames, outermost first
    for f in sorted(layout.frames, key=lambda f: -(f.w * f.h)):
        x0, y0, x1, y1 = f.x, f.y, f.x + f.w - 1, f.y + f.h - 1
        dashed = f.kind == "block"
        st = BLOCK_FRAME if dashed else FRAME
        h, v = ("┄", "┆") if dashed else ("─", "│")
        for x in range(x0 + 1, x1):
            put(x, y0, h, st)
            put(x, y1, h, st)
        for y in range(y0 + 1, y1):
            put(x0, y, v, st)
            put(x1, y, v, st)
        put(x0, y0, "╭", st), put(x1, y0, "╮", st), put(x0, y1, "╰", st), put(x1, y1, "╯", st)

    # edges: each cell collects the directions its segments leave in, then gets one character
    dirs: dict[tuple[int, int], int] = {}
    control_cells: set[tuple[int, int]] = set()
    for x0, y0, x1, y1, ctl in layout.segments:
        if y0 == y1:
            a, b = sorted((x0, x1))
            for x in range(a, b + 1):
                bit = (E if x < b else 0) | (W if x > a else 0)
                dirs[(x, y0)] = dirs.get((x, y0), 0) | bit
                if ctl:
                    control_cells.add((x, y0))
        else:
            a, b = sorted((y0, y1))
            for y in range(a, b + 1):
                bit = (S if y < b else 0) | (N if y > a else 0)
                dirs[(x0, y)] = dirs.get((x0, y), 0) | bit
                if ctl:
                    control_cells.add((x0, y))
    for (x, y), bits in dirs.items():
        if bits:
            put(x, y, LINES[bits], CONTROL if (x, y) in control_cells else EDGE)
    for x, y in layout.arrows:
        put(x, y, "▼", ARROW)

    # titles on their frames (no edge crosses them: ports keep right of titles)
    for f in layout.frames:
        text = f" {f.label} "[: max(f.w - 4, 0)]
        for i, ch in enumerate(text):
            put(f.x + 2 + i, f.y, ch, TITLE)

    # boxes on top
    boxes: dict[str, tuple[int, int, int, int]] = {}
    box_rows: dict[int, list[tuple[int, int, str]]] = {}
    for b in layout.boxes.values():
        x0, y0, x1, y1 = b.x, b.y, b.x + b.w - 1, b.y + b.h - 1
        boxes[b.id] = (x0, y0, x1, y1)
        if layout.compact:
            st = COMPACT_STYLE.get(b.category or b.kind, COMPACT_STYLE.get(b.kind, ""))
            text = f" {b.lines[0]} "
            for i, ch in enumerate(text[: b.w]):
                put(x0 + i, y0, ch, st)
            box_rows.setdefault(y0, []).append((x0, x1 + 1, b.id))
            continue
        fill = KIND_STYLE.get(b.kind, "")
        edge = BORDER_STYLE.get(b.category, BORDER)
        for x in range(x0 + 1, x1):
            put(x, y0, "─", edge), put(x, y1, "─", edge)
        for y in range(y0 + 1, y1):
            put(x0, y, "│", edge), put(x1, y, "│", edge)
            for x in range(x0 + 1, x1):
                put(x, y, " ", fill)
            box_rows.setdefault(y, []).append((x0 + 1, x1, b.id))
        put(x0, y0, "╭", edge), put(x1, y0, "╮", edge), put(x0, y1, "╰", edge), put(x1, y1, "╯", edge)
        inner = b.w - 2
        for i, text in enumerate(b.lines):
            pad = (inner - len(text)) // 2
            for j, ch in enumerate(text[:inner]):
                put(x0 + 1 + pad + j, y0 + 1 + i, ch, fill)

    # where shapes can go: blank cells right of each edge's start, up to the next drawn cell
    anchors: dict[int, list[Anchor]] = {}
    for lb in layout.labels:
        x, y = lb.x, lb.y
        if not (0 <= y < height and 0 < x < width) or rows[y][x - 1] != " " and rows[y][x - 1] not in "│▼":
            continue
        room = 0
        while x + room < width and rows[y][x + room] == " ":
            room += 1
        room -= 1  # keep a blank after the text
        if room >= 3:
            anchors.setdefault(y, []).append(Anchor(x, y, room, lb.tail, lb.value))
    return Drawing(rows, styles, boxes, layout.compact, anchors, box_rows)
