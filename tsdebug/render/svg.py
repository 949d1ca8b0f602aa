"""SVG written from a layout, for when no Graphviz engine is installed."""

from __future__ import annotations

from xml.sax.saxutils import escape

from tsdebug.render.layout import Layout


def to_svg(layout: Layout) -> str:
    w, h = layout.width + 40, layout.height + 40
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w:.0f}" height="{h:.0f}" viewBox="0 0 {w:.0f} {h:.0f}">',
           '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="6" markerHeight="6" '
           'orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#6c757d"/></marker></defs>',
           f'<rect width="{w:.0f}" height="{h:.0f}" fill="white"/>',
           '<g transform="translate(20,20)" font-family="Helvetica, Arial, sans-serif" font-size="10">']
    for c in sorted(layout.clusters, key=lambda c: -(c.x1 - c.x0) * (c.y1 - c.y0)):
        out.append(f'<g class="cluster"><rect x="{c.x0:.1f}" y="{c.y0:.1f}" width="{c.x1 - c.x0:.1f}" '
                   f'height="{c.y1 - c.y0:.1f}" rx="6" fill="#f8f9fa" stroke="#adb5bd"/>'
                   f'<text x="{c.x0 + 6:.1f}" y="{c.y0 + 12:.1f}" fill="#495057">{escape(c.label)}</text></g>')
    for e in layout.edges:
        pts = " ".join(f"{x:.1f},{y:.1f}" for x, y in e.points)
        out.append(f'<polyline class="edge" points="{pts}" fill="none" stroke="#6c757d" marker-end="url(#arrow)"/>')
        if e.label and e.points:
            x, y = e.points[len(e.points) // 2]
            out.append(f'<text x="{x + 4:.1f}" y="{y:.1f}" fill="#343a40" font-size="9">{escape(e.label)}</text>')
    for n in layout.nodes.values():
        fill = n.fill or "#e9ecef"
        stroke = "#d62828" if n.bold else "#495057"
        out.append(f'<g class="node" id="{escape(n.id)}"><title>{escape(n.id)}</title>'
                   f'<rect x="{n.x - n.w / 2:.1f}" y="{n.y - n.h / 2:.1f}" width="{n.w:.1f}" height="{n.h:.1f}" '
                   f'rx="4" fill="{fill}" stroke="{stroke}" stroke-width="{2.5 if n.bold else 1}"/>')
        lines = n.label.split("\n")
        for i, line in enumerate(lines):
            y = n.y - (len(lines) - 1) * 6 + i * 12 + 3
            out.append(f'<text x="{n.x:.1f}" y="{y:.1f}" text-anchor="middle" fill="black">{escape(line)}</text>')
        out.append("</g>")
    out.append("</g></svg>")
    return "\n".join(out) + "\n"
