"""SVG drawn from tsdebug's grid layout, for when no Graphviz engine is installed.

The layout is in character cells; each cell becomes ``CW`` x ``RH`` pixels and
text is set in a monospace font that fits a cell, so what the terminal shows
without overlaps the SVG shows without overlaps too.
"""

from __future__ import annotations

from xml.sax.saxutils import escape

from tsdebug.render.dot import COLORS, Overlay
from tsdebug.render.grid import GridLayout
from tsdebug.render.scene import Scene
from tsdebug.render.terminal import draw

CW, RH = 7.8, 17.0  # pixels per cell
FONT = 'font-family="DejaVu Sans Mono, Menlo, Consolas, monospace" font-size="12.5"'


def grid_svg(layout: GridLayout, scene: Scene, overlay: Overlay | None = None) -> str:
    ov = overlay or Overlay()
    pad = 12
    w, h = layout.width * CW + 2 * pad, layout.height * RH + 2 * pad

    def cx(x: float) -> float:
        return x * CW + CW / 2

    def cy(y: float) -> float:
        return y * RH + RH / 2

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w:.0f}" height="{h:.0f}" viewBox="0 0 {w:.0f} {h:.0f}">',
           f'<rect width="{w:.0f}" height="{h:.0f}" fill="white"/>',
           f'<g transform="translate({pad},{pad})" {FONT}>']
    for f in sorted(layout.frames, key=lambda f: -(f.w * f.h)):
        dash = ' stroke-dasharray="4 3"' if f.kind == "block" else ""
        fill = "none" if f.kind == "block" else "#f8f9fa"
        out.append(f'<g class="cluster"><rect x="{cx(f.x):.1f}" y="{cy(f.y):.1f}" width="{(f.w - 1) * CW:.1f}" '
                   f'height="{(f.h - 1) * RH:.1f}" rx="6" fill="{fill}" stroke="#adb5bd"{dash}/>'
                   f'<rect x="{cx(f.x + 2) - 3:.1f}" y="{cy(f.y) - 7:.1f}" width="{len(f.label) * CW + 6:.1f}" '
                   f'height="14" fill="white"/>'
                   f'<text x="{cx(f.x + 2):.1f}" y="{cy(f.y) + 4:.1f}" fill="#495057" font-style="italic" '
                   f'xml:space="preserve">{escape(f.label)}</text></g>')
    for x0, y0, x1, y1, ctl in layout.segments:
        if (x0, y0) == (x1, y1):
            continue
        dash = ' stroke-dasharray="3 3"' if ctl else ""
        out.append(f'<line class="edge" x1="{cx(x0):.1f}" y1="{cy(y0):.1f}" x2="{cx(x1):.1f}" y2="{cy(y1):.1f}" '
                   f'stroke="#6c757d" stroke-width="1.2"{dash}/>')
    for x, y in layout.arrows:
        px, py = cx(x), cy(y) + RH / 2
        out.append(f'<path d="M{px - 4:.1f},{py - 7:.1f} L{px + 4:.1f},{py - 7:.1f} L{px:.1f},{py:.1f} z" fill="#495057"/>')
    for b in layout.boxes.values():
        box = scene.boxes[b.id]
        ids = set(box.nodes)
        state = ov.state(ids)
        fill = COLORS[state] if state else (COLORS["io"] if b.kind in ("input", "output") else
                                            COLORS["module"] if b.kind == "module" else COLORS["plain"])
        stroke, sw = ("#d62828", 2.5) if ids & ov.breakpoints else (("#212529", 2.5) if ov.current in ids else
                                                                    ("#495057", 1))
        x, y = b.x * CW + 1, b.y * RH + (RH / 2 if b.h > 1 else 1)
        bw, bh = b.w * CW - 2, (b.h - 1) * RH if b.h > 1 else RH - 2
        tip = box.nodes[0] if len(box.nodes) == 1 else (box.tooltip or box.id)
        out.append(f'<g class="node" id="{escape(b.id)}"><title>{escape(tip)}</title>'
                   f'<rect x="{x:.1f}" y="{y:.1f}" width="{bw:.1f}" height="{bh:.1f}" rx="5" fill="{fill}" '
                   f'stroke="{stroke}" stroke-width="{sw}"/>')
        top = b.y + (1 if b.h > 1 else 0)
        for i, line in enumerate(b.lines):
            out.append(f'<text x="{cx(b.x) + (b.w - 1) * CW / 2:.1f}" y="{cy(top + i) + 4.5:.1f}" '
                       f'text-anchor="middle" fill="black">{escape(line)}</text>')
        out.append("</g>")
    drawing = draw(layout)
    for anchors in drawing.anchors.values():
        for a in anchors:
            text = ov.shapes.get((scene.graph.name, a.value), "")
            if not text:
                continue
            if len(text) > a.room:
                text = text[: max(a.room - 1, 0)] + "…" if a.room >= 4 else ""
            out.append(f'<text x="{a.x * CW:.1f}" y="{cy(a.y) + 4:.1f}" fill="#1c64b0" font-size="11">'
                       f'{escape(text)}</text>')
    out.append("</g></svg>")
    return "\n".join(out) + "\n"
