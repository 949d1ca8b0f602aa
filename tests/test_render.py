"""tsdebug render and the graph view: DOT, SVG with overlays, terminal drawing, fallbacks."""

import os
import subprocess
import sys

from engine import Session
from tsdebug.cli import main
from tsdebug.render import build_dot, draw, drawn_node_ids, export, overlay_from_session
from tsdebug.render.layout import builtin_layout, find_engine, parse_json, run_engine
import trap_models as T

HERE = os.path.dirname(__file__)


def engines():
    found = []
    for name in ("dot", "graphviz-pure"):
        eng, path = find_engine(name)
        if path:
            found.append((eng, path))
    return found


def test_dot_holds_every_node_and_lays_out(convnet):
    s = Session(convnet)
    graph = s.program.root_graph("forward", inlined=True)
    src = build_dot(graph)
    ids = drawn_node_ids(graph)
    assert len(ids) > 20
    for nid in ids:
        assert f'"{nid}"' in src
    # every engine at hand parses it and places every node
    for name, path in engines():
        lay = parse_json(run_engine(path, src, "json"), name)
        assert set(ids) <= set(lay.nodes), name
    lay = builtin_layout(src)
    assert set(ids) <= set(lay.nodes)
    assert any(c.label == "layer1.0" for c in lay.clusters)


def test_svg_export_with_overlays(convnet, tmp_path):
    s = Session(convnet, inline=True)
    m = s.start()
    while m.current_node.kind != "aten::batch_norm":
        m.step()
    graph = s.program.root_graph("forward", inlined=True)
    s.breakpoints.toggle_node(m.current_node.id)
    overlay = overlay_from_session(s, graph)
    assert m.current_node.id == overlay.current and overlay.executed
    for engine in [e for e, _ in engines()] + ["builtin"]:
        out = tmp_path / f"g-{engine}.svg"
        export(graph, str(out), overlay=overlay, engine=engine if engine != "builtin" else "none")
        svg = out.read_text()
        assert "#b7e4c7" in svg.lower() and "#ffd166" in svg.lower(), engine  # executed, current
        assert "#d62828" in svg.lower(), engine  # breakpoint border
        for nid in drawn_node_ids(graph):
            assert nid in svg, (engine, nid)


def test_collapse_folds_modules(convnet):
    s = Session(convnet)
    graph = s.program.root_graph("forward", inlined=True)
    src = build_dot(graph, collapse=1)
    assert '"module:layer1"' in src and "ops" in src
    assert '"module:stem"' in src
    assert src.count("tooltip=") < build_dot(graph).count("tooltip=")


GOLDEN = os.path.join(HERE, "snapshots", "branch-graph.txt")


def test_terminal_drawing_golden(archive):
    path = archive(T.DataBranch(), "script")
    graph = Session(path).program.root_graph("forward")
    text = draw(builtin_layout(build_dot(graph, legend=False))).text().rstrip() + "\n"
    if os.environ.get("TSDEBUG_UPDATE_SNAPSHOTS") or not os.path.exists(GOLDEN):
        with open(GOLDEN, "w") as f:
            f.write(text)
    with open(GOLDEN) as f:
        assert text == f.read()
    # the If's branches are frames with their nodes inside
    assert "then" in text and "else" in text and "aten::add" in text and "aten::sub" in text
    assert "▼" in text and "╭" in text


def test_render_without_graphviz(convnet, tmp_path):
    """No dot on PATH and no graphviz-pure: the built-in layout writes SVG and says so."""
    env = dict(os.environ, PATH="/nonexistent", TSDEBUG_NO_GRAPHVIZ_PURE="1")
    out = tmp_path / "g.svg"
    res = subprocess.run([sys.executable, "-m", "tsdebug.cli", "render", convnet, "-o", str(out)],
                         capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    assert "built-in" in res.stdout and "graphviz" in res.stdout
    assert out.read_text().startswith("<svg")
    res = subprocess.run([sys.executable, "-m", "tsdebug.cli", "render", convnet, "-o", str(tmp_path / "g.png")],
                         capture_output=True, text=True, env=env)
    assert res.returncode == 2 and "needs Graphviz" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_render_cli_run_and_formats(convnet, tmp_path, capsys):
    out = tmp_path / "g.dot"
    assert main(["render", convnet, "-o", str(out), "--run"]) == 0
    src = out.read_text()
    assert "1×8×16×16" in src  # shapes on edges from the run
    assert main(["render", convnet, "-o", str(tmp_path / "g.svg"), "--collapse", "1"]) == 0
    assert "layout:" in capsys.readouterr().out
    assert main(["render", convnet, "-o", convnet]) == 2


def test_graph_view_in_the_debugger(convnet):
    import asyncio

    from tsdebug.app import TsdebugApp
    from tsdebug.cli import build_open_parser
    from tsdebug.widgets.graphview import GraphView

    async def run():
        app = TsdebugApp(build_open_parser().parse_args([convnet]))
        async with app.run_test(size=(120, 40)) as pilot:
            for _ in range(100):
                await pilot.pause()
                if app.state == "paused":
                    break
            from tsdebug.render.dot import HIDDEN

            while app.machine.current_node.kind in HIDDEN:  # attribute reads are not drawn
                await pilot.press("n")
            await pilot.press("v")
            view = app.query_one(GraphView)
            for _ in range(200):
                await pilot.pause()
                if view.drawing is not None:
                    break
                await asyncio.sleep(0.02)
            assert view.display and view.drawing is not None
            current = app.machine.current_node.id
            assert current in view.drawing.boxes
            assert view.state_of(current) == "current"
            await pilot.press("v")
            assert not view.display

    asyncio.run(run())
