"""Graph layout and drawing for 200, 1,000 and 5,000 nodes, collapsed and full.

"First view" is what the graph view does: DOT, layout and drawing into cells
of the graph as the view shows it (modules folded until at most 400 boxes).
"Full SVG export" lays out every node.  Each engine found is measured; the
ratio is against the targets (1 s for a first view, 30 s for a full export).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
warnings.simplefilter("ignore")

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

from engine import Session  # noqa: E402
from tsdebug.render import build_dot, draw, drawn_node_ids  # noqa: E402
from tsdebug.render.grid import grid_layout  # noqa: E402
from tsdebug.render.layout import find_engine, run_engine  # noqa: E402
from tsdebug.render.scene import build_scene, fold_depth_for  # noqa: E402
from tsdebug.render.svg import grid_svg  # noqa: E402


class Cell(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x):
        return torch.tanh(self.lin(x)) * 0.5 + x  # linear, tanh, mul, add


class Stage(nn.Module):
    def __init__(self, cells: int):
        super().__init__()
        self.cells = nn.Sequential(*[Cell() for _ in range(cells)])

    def forward(self, x):
        return self.cells(x)


def model_with(nodes: int) -> nn.Module:
    cells = max(nodes // 4, 1)
    stages = max(cells // 25, 1)
    return nn.Sequential(*[Stage(cells // stages) for _ in range(stages)])


def first_view_depth(graph) -> int | None:
    return fold_depth_for(graph, 400)


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    engines = [e for e in (find_engine("dot"), find_engine("graphviz-pure")) if e[1]] + [("builtin", None)]
    print("engines:", ", ".join(e[0] for e in engines))
    with tempfile.TemporaryDirectory() as d:
        for n in (200, 1000, 5000):
            path = os.path.join(d, f"g{n}.pt")
            torch.jit.save(torch.jit.trace(model_with(n).eval(), (torch.randn(2, 8),), check_trace=False), path)
            graph = Session(path).program.root_graph("forward", inlined=True)
            drawn = len(drawn_node_ids(graph))
            depth = first_view_depth(graph)
            # the terminal view always uses tsdebug's grid layout, whatever is installed
            _, t_view = timed(lambda: draw(grid_layout(build_scene(graph, collapse=depth), compact=True)))
            print(f"{drawn:5d} nodes  terminal view (collapse {depth}) {t_view:6.2f} s  ratio {t_view / 1:5.2f}")
            for name, exe in engines:
                line = f"{drawn:5d} nodes  {name:13}"
                if n <= 1000 or name != "dot":  # dot needs ~80 s for 5,000 nodes: not timed here
                    src = build_dot(graph)
                    if exe is None:
                        _, t_full = timed(lambda: grid_svg(grid_layout(sc := build_scene(graph)), sc))
                    else:
                        _, t_full = timed(lambda: run_engine(exe, src, "svg", timeout=300))
                    line += f"   full SVG {t_full:6.2f} s  ratio {t_full / 30:5.2f}"
                print(line, flush=True)


if __name__ == "__main__":
    main()
