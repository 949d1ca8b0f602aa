"""Draw a laid-out graph into terminal cells: boxes, edges with arrows, cluster frames."""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text

from tsdebug.render.layout import Layout

#: points per cell: Graphviz sizes nodes in points (10 pt Helvetica ~6 pt a character)
SX = 1 / 6.0
SY = 1 / 8.0

FILL_STYLE = {
    "#b7e4c7": "black on #b7e4c7", "#ffd166": "bold black on #ffd166", "#ef476f": "bold white on #ef476f",
    "#f4a261": "black on #f4a261", "#dee2ff": "black on #dee2ff", "#caf0f8": "black on #caf0f8",
}


@dataclass
class Drawing:
    """Rows of characters with styles, and where each node's box is."""

    rows: list[list[str]]
    styles: list[list[str]]
    boxes: dict[str, tuple[int, int, int, int]]  # node id -> (x0, y0, x1, y1) cells

    @property
    def width(self) -> int:
        return len(self.rows[0]) if self.rows else 0

    def text(self) -> str:
        return "\n".join("".join(r).rstrip() for r in self.rows)

    def line(self, y: int) -> Text:
        t = Text(no_wrap=True)
        row, st = self.rows[y], self.styles[y]
        start = 0
        for x in range(1, len(row) + 1):
            if x == len(row) or st[x] != st[start]:
                t.append("".join(row[start:x]), style=st[start] or "")
                start = x
        return t


def draw(layout: Layout) -> Drawing:
    # boxes first, to size the canvas: a box is as wide as its label
    boxes = {}
    for n in layout.nodes.values():
        lines = n.label.split("\n") or [""]
        w = max(len(s) for s in lines) + 2
        h = len(lines) + 2
        cx, cy = int(round(n.x * SX)), int(round(n.y * SY))
        x0 = max(cx - w // 2, 0)
        y0 = max(cy - h // 2, 0)
        boxes[n.id] = (x0, y0, x0 + w - 1, y0 + h - 1)
    width = max([b[2] for b in boxes.values()] + [int(layout.width * SX)]) + 3
    height = max([b[3] for b in boxes.values()] + [int(layout.height * SY)]) + 2
    rows = [[" "] * width for _ in range(height)]
    styles = [[""] * width for _ in range(height)]

    def put(x: int, y: int, ch: str, style: str = "") -> None:
        if 0 <= y < height and 0 <= x < width:
            rows[y][x] = ch
            styles[y][x] = style

    # cluster frames, outermost first (bigger first)
    for c in sorted(layout.clusters, key=lambda c: -(c.x1 - c.x0) * (c.y1 - c.y0)):
        x0, y0 = int(c.x0 * SX), int(c.y0 * SY)
        x1, y1 = int(c.x1 * SX), int(c.y1 * SY)
        if x1 - x0 < 2 or y1 - y0 < 2:
            continue
        st = "#868e96"
        for x in range(x0 + 1, x1):
            put(x, y0, "─", st)
            put(x, y1, "─", st)
        for y in range(y0 + 1, y1):
            put(x0, y, "│", st)
            put(x1, y, "│", st)
        put(x0, y0, "╭", st), put(x1, y0, "╮", st), put(x0, y1, "╰", st), put(x1, y1, "╯", st)

    # edges: from the bottom of the tail's box to the top of the head's box
    edge_style = "#6c757d"
    for e in layout.edges:
        if e.tail not in boxes or e.head not in boxes:
            continue
        tx0, ty0, tx1, ty1 = boxes[e.tail]
        hx0, hy0, hx1, hy1 = boxes[e.head]
        sx, sy = (tx0 + tx1) // 2, ty1 + 1
        ex, ey = (hx0 + hx1) // 2, hy0 - 1
        if ey < sy:  # an edge going up (a loop's back edge): route beside
            sx, sy, ex, ey = tx1 + 1, (ty0 + ty1) // 2, hx1 + 1, (hy0 + hy1) // 2
        _route(put, sx, sy, ex, ey, edge_style)
        put(ex, ey, "▼" if ey >= sy else "▲", edge_style)

    # cluster labels over the edges that cross their frames
    for c in layout.clusters:
        x0, y0, x1, y1 = int(c.x0 * SX), int(c.y0 * SY), int(c.x1 * SX), int(c.y1 * SY)
        if x1 - x0 < 2 or y1 - y0 < 2:
            continue
        for i, ch in enumerate(f" {c.label} "[: max(x1 - x0 - 2, 0)]):
            put(x0 + 2 + i, y0, ch, "italic #adb5bd")

    # boxes on top
    for nid, (x0, y0, x1, y1) in boxes.items():
        n = layout.nodes[nid]
        fill = FILL_STYLE.get(n.fill.lower(), "")
        border = "bold" if n.bold else ""
        for x in range(x0 + 1, x1):
            put(x, y0, "─", border), put(x, y1, "─", border)
        for y in range(y0 + 1, y1):
            put(x0, y, "│", border), put(x1, y, "│", border)
            for x in range(x0 + 1, x1):
                put(x, y, " ", fill)
        put(x0, y0, "╭", border), put(x1, y0, "╮", border), put(x0, y1, "╰", border), put(x1, y1, "╯", border)
        for i, text in enumerate(n.label.split("\n")):
            for j, ch in enumerate(text[: x1 - x0 - 1]):
                put(x0 + 1 + j, y0 + 1 + i, ch, fill)
    return Drawing(rows, styles, boxes)


def _route(put, x0: int, y0: int, x1: int, y1: int, style: str) -> None:
    """Down, across, down: an orthogonal path with corners."""
    mid = y0 if y1 <= y0 else min(y0 + 1, y1)
    for y in range(y0, mid):
        put(x0, y, "│", style)
    if x0 != x1:
        step = 1 if x1 > x0 else -1
        put(x0, mid, "╰" if step > 0 else "╯", style)
        for x in range(x0 + step, x1, step):
            put(x, mid, "─", style)
        put(x1, mid, "╮" if step > 0 else "╭", style)
        start = mid + 1
    else:
        start = mid
    for y in range(start, y1):
        put(x1, y, "│", style)
