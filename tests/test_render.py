"""tsdebug render and the graph view: labels, scenes, DOT, the grid layout, SVG, terminal drawing."""

import asyncio
import os
import re
import subprocess
import sys

import pytest
import torch

import graph_models as G
import models as M
import trap_models as T
from engine import Session
from tsdebug.cli import main
from tsdebug.render import build_dot, build_scene, draw, drawn_node_ids, export, grid_layout, labeler_for, \
    overlay_from_session
from tsdebug.render.layout import find_engine, parse_json, run_engine
from tsdebug.render.scene import SBox, SCluster

HERE = os.path.dirname(__file__)


def engines():
    found = []
    for name in ("dot", "graphviz-pure"):
        eng, path = find_engine(name)
        if path:
            found.append((eng, path))
    return found


@pytest.fixture
def unet(archive):
    torch.manual_seed(0)
    return archive(G.UNet(), "trace", example=(torch.randn(1, 3, 32, 32),), name="unet.pt")


@pytest.fixture
def decoder(archive):
    torch.manual_seed(0)
    return archive(G.Decoder(), "script", name="decoder.pt")


def scene_of(path, inline=True, collapse=None, **kw):
    s = Session(path, inline=inline)
    g = s.graph
    return s, build_scene(g, labeler_for(s, g), collapse)


def labels(scene):
    return [" / ".join(b.lines) for b in scene.boxes.values()]


# ------------------------------------------------------------ what boxes say


def test_labels_name_what_each_node_is_for(unet, archive):
    _, sc = scene_of(unet)
    text = labels(sc)
    # key attributes of ops, from the weights the archive holds and the constant arguments
    assert "conv1 · conv 3→16, 3x3, s1" in text
    assert "up2 · convT 64→32, 2x2, s2" in text
    assert "pool · maxpool 2x2, s2" in text and "bn1 · batchnorm 16" in text and "cat dim=1" in text
    assert "x" in text and not any("x.1" in t or ": Tensor" in t for t in text)  # inputs by parameter name
    assert not any("aten::" in t or "prim::" in t for t in text)
    # the call tree: a call says the submodule and its class, and a leaf module's sizes
    _, calls = scene_of(unet, inline=False)
    text = labels(calls)
    assert "enc1 · Block" in text and "pool · MaxPool2d" in text
    assert "head · Conv2d / 16→2, 1x1" in text and "up1 · ConvTranspose2d / 32→16, 2x2" in text
    mlp = archive(G.MLP(), "trace", example=(torch.randn(1, 1, 28, 28),))
    assert "fc1 · linear 784→512" in labels(scene_of(mlp)[1]) and "fc2 · linear 512→10" in labels(scene_of(mlp)[1])


def test_labels_of_a_scripted_loop(decoder):
    _, sc = scene_of(decoder, inline=False)
    text = labels(sc)
    assert "for i in range(steps)" in text  # the loop says what it loops over, from the source
    assert "if bool((tok == 0).all())" in text
    assert "steps : int" in text and "h" in text
    assert "emb · Embedding / 20×16" in text and "cell · GRUCell / 16→32" in text and "out · Linear / 32→20" in text
    body = next(c for c in sc.clusters.values() if c.label == "loop body")
    assert any(isinstance(it, SBox) and it.lines[0] == "argmax dim=-1" for it in body.items)
    # the list the loop appends to reaches the stack after the loop (a write, not dataflow)
    stack = next(b for b in sc.boxes.values() if b.lines[0] == "stack dim=1")
    append = next(b for b in sc.boxes.values() if b.lines[0] == "append")
    assert any(e.tail == append.id and e.head == stack.id for e in sc.edges)


def test_labels_of_an_exported_program_match(tmp_path):
    """A .pt2 gives the same ir.Node kinds with constants in attrs: the same boxes."""
    torch.manual_seed(0)
    model = G.UNet().eval()
    ep = torch.export.export(model, (torch.randn(1, 3, 32, 32),))
    path = str(tmp_path / "unet.pt2")
    torch.export.save(ep, path)
    _, sc = scene_of(path)
    text = " | ".join(labels(sc))
    assert "conv 3→16, 3x3, s1" in text and "maxpool 2x2, s2" in text and "cat dim=1" in text
    assert "batchnorm 16" in text and "convT 64→32, 2x2, s2" in text
    # its call tree: one box a module call; pool is called twice (both calls have one node id there)
    _, calls = scene_of(path, inline=False)
    text = labels(calls)
    assert "enc1 · Block" in text and text.count("pool · MaxPool2d") == 2 and "up1 · ConvTranspose2d / 32→16, 2x2" in text
    for compact in (False, True):
        check_grid(calls, grid_layout(calls, compact=compact))


# ------------------------------------------------------------ clusters and collapsing


def _walk(c):
    for it in c.items:
        yield it
        if isinstance(it, SCluster):
            yield from _walk(it)


def test_collapse_folds_whole_modules(unet, convnet):
    _, sc = scene_of(unet, collapse=0)
    boxes = [b for b in sc.boxes.values() if b.kind == "module"]
    assert {b.lines[0] for b in boxes} >= {"enc1 · Block", "mid · Block", "dec2 · Block", "pool · MaxPool2d"}
    # all of a module's ops are in its box: no cluster of the same name beside it, no op left outside
    assert not [c for c in sc.clusters.values() if c.kind == "module"]
    enc1 = next(b for b in boxes if b.lines[0] == "enc1 · Block")
    assert enc1.lines[1] == "6 ops"
    # pool runs twice: two boxes, and no edge goes back into an earlier box
    assert sum(1 for b in boxes if b.lines[0] == "pool · MaxPool2d") == 2
    order = {b: k for k, b in enumerate(sc.box_order())}
    assert all(order[e.tail] < order[e.head] for e in sc.edges)
    # depth 1: the blocks of layer1 are boxes inside the cluster of layer1
    s, sc = scene_of(convnet, collapse=1)
    layer1 = next(c for c in sc.clusters.values() if c.label.startswith("layer1"))
    assert [it.lines[0] for it in layer1.items] == ["0 · BasicBlock", "1 · BasicBlock"]
    assert build_dot(s.graph, collapse=1).count("tooltip=") < build_dot(s.graph).count("tooltip=")


def test_a_module_run_of_one_op_is_a_box_not_a_cluster(unet):
    _, sc = scene_of(unet)
    names = [c.label for c in sc.clusters.values()]
    assert "enc1 · Block" in names and not any(n.startswith(("conv1", "bn1", "pool")) for n in names)


def test_scripted_branches_stay_in_their_module(archive):
    """torch gives the If nodes of an inlined scripted graph no module path: they go where their condition was read."""
    torch.manual_seed(0)
    path = archive(G.UNet(), "script")
    _, sc = scene_of(path)
    enc1 = next(c for c in sc.clusters.values() if c.label == "enc1 · Block")
    inside = [it.lines[0] if isinstance(it, SBox) else it.label for it in _walk(enc1)]
    assert any(t.startswith("if self.training") for t in inside)
    top = [it.lines[0] for it in sc.root.items if isinstance(it, SBox)]
    assert not any(t.startswith("if ") for t in top)


# ------------------------------------------------------------ the grid layout


def check_grid(scene, lay):
    """Boxes apart, inside their frames; edges around boxes and titles; inputs on top, output at the bottom."""
    rects = {b.id: (b.x, b.y, b.x + b.w - 1, b.y + b.h - 1) for b in lay.boxes.values()}
    items = list(rects.items())
    for i, (a, ra) in enumerate(items):
        for b, rb in items[i + 1:]:
            assert ra[2] < rb[0] or rb[2] < ra[0] or ra[3] < rb[1] or rb[3] < ra[1], (a, b)
    frames = {f.id: f for f in lay.frames}
    parent = {}

    def note(c):
        for it in c.items:
            parent[it.id] = c.id
            if isinstance(it, SCluster):
                note(it)
    note(scene.root)
    for bid, (x0, y0, x1, y1) in rects.items():
        c = parent[bid]
        while c != "root":
            f = frames[c]
            assert f.x < x0 and x1 < f.x + f.w - 1 and f.y < y0 and y1 < f.y + f.h - 1, (bid, c)
            c = parent[c]
    cells = set()
    for x0, y0, x1, y1, _ in lay.segments:
        for x in range(min(x0, x1), max(x0, x1) + 1):
            for y in range(min(y0, y1), max(y0, y1) + 1):
                cells.add((x, y))
    for bid, (x0, y0, x1, y1) in rects.items():
        # a compact box is one row: its outgoing edge starts under its text, at its centre
        inner = {(x, y) for x in range(x0, x1 + 1) for y in range(y0 + 1, y1)} if not lay.compact else \
            {(x, y0) for x in range(x0, x1 + 1) if x != x0 + (x1 - x0 + 1) // 2}
        assert not inner & cells, bid
    for f in lay.frames:
        title = {(f.x + 2 + i, f.y) for i in range(len(f.label) + 2)}
        assert not title & cells, f.label
    tops = [b.y for b in lay.boxes.values()]
    for b in lay.boxes.values():
        if b.kind == "input":
            assert b.y == min(tops)
        if b.kind == "output":
            assert b.y == max(tops)


@pytest.mark.parametrize("compact", [False, True])
def test_grid_layout_is_readable(unet, decoder, convnet, control, compact):
    for path, inline in ((unet, True), (unet, False), (decoder, False), (decoder, True), (convnet, True),
                         (control, False), (control, True)):
        _, sc = scene_of(path, inline=inline)
        lay = grid_layout(sc, compact=compact)
        check_grid(sc, lay)
        text = draw(lay).text()
        assert "▼" in text


def test_terminal_drawing_golden(archive):
    path = archive(T.DataBranch(), "script")
    s = Session(path)
    graph = s.graph
    text = draw(grid_layout(build_scene(graph, labeler_for(s, graph)))).text().rstrip() + "\n"
    golden = os.path.join(HERE, "snapshots", "branch-graph.txt")
    if os.environ.get("TSDEBUG_UPDATE_SNAPSHOTS") or not os.path.exists(golden):
        with open(golden, "w") as f:
            f.write(text)
    with open(golden) as f:
        assert text == f.read()
    # the If's branches are frames with their nodes inside, and the join has a junction
    assert "then" in text and "else" in text and "add" in text and "sub" in text
    assert "▼" in text and "╭" in text and re.search("[┬┴├┤]", text)


# ------------------------------------------------------------ DOT, SVG, the render command


def test_dot_holds_every_node_and_lays_out(convnet):
    s = Session(convnet)
    graph = s.program.root_graph("forward", inlined=True)
    src = build_dot(graph)
    ids = drawn_node_ids(graph)
    assert len(ids) > 20
    for nid in ids:
        assert f'"{nid}"' in src
    for name, path in engines():
        lay = parse_json(run_engine(path, src, "json"), name)
        assert set(ids) <= set(lay.nodes), name
    sc = build_scene(graph)
    lay = grid_layout(sc)
    assert set(ids) <= set(lay.boxes)
    assert any(f.label.startswith("layer1") for f in lay.frames)


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
        export(graph, str(out), overlay=overlay, engine=engine, labeler=labeler_for(s, graph))
        svg = out.read_text()
        assert "#b7e4c7" in svg.lower() and "#ffd166" in svg.lower(), engine  # executed, current
        assert "#d62828" in svg.lower(), engine  # breakpoint border
        for nid in drawn_node_ids(graph):
            assert nid in svg, (engine, nid)
        assert "conv 3→8, 3x3, s1" in svg and "1×8×16×16" in svg, engine  # labels and shapes


def test_render_without_graphviz(unet, tmp_path):
    """No dot on PATH and no graphviz-pure: the built-in layout writes SVG and says so."""
    env = dict(os.environ, PATH="/nonexistent", TSDEBUG_NO_GRAPHVIZ_PURE="1")
    out = tmp_path / "g.svg"
    res = subprocess.run([sys.executable, "-m", "tsdebug.cli", "render", unet, "-o", str(out), "--run"],
                         capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    assert "built-in" in res.stdout and "graphviz" in res.stdout
    svg = out.read_text()
    assert svg.startswith("<svg") and "conv1 · conv 3→16, 3x3, s1" in svg and "1×16×32×32" in svg
    # readable: top to bottom, input at the top and output at the bottom, no two boxes overlap
    rects = [tuple(float(v) for v in m) for m in re.findall(
        r'<g class="node" id="[^"]*"><title>[^<]*</title><rect x="([\d.]+)" y="([\d.]+)" '
        r'width="([\d.]+)" height="([\d.]+)"', svg)]
    assert len(rects) == 39
    for i, a in enumerate(rects):
        for b in rects[i + 1:]:
            assert a[0] + a[2] <= b[0] or b[0] + b[2] <= a[0] or a[1] + a[3] <= b[1] or b[1] + b[3] <= a[1]
    y_in = float(re.search(r'id="in:x[^"]*"><title>[^<]*</title><rect x="[\d.]+" y="([\d.]+)"', svg).group(1))
    y_out = float(re.search(r'id="output"><title>[^<]*</title><rect x="[\d.]+" y="([\d.]+)"', svg).group(1))
    assert y_in == min(r[1] for r in rects) and y_out == max(r[1] for r in rects)
    res = subprocess.run([sys.executable, "-m", "tsdebug.cli", "render", unet, "-o", str(tmp_path / "g.png")],
                         capture_output=True, text=True, env=env)
    assert res.returncode == 2 and "needs Graphviz" in res.stderr and len(res.stderr.strip().splitlines()) == 1


@pytest.mark.skipif(find_engine("dot")[1] is None, reason="Graphviz's dot is not installed (apt-get install graphviz)")
def test_render_with_dot(unet, decoder, tmp_path, capsys):
    out = tmp_path / "u.svg"
    assert main(["render", unet, "-o", str(out), "--run"]) == 0
    assert "Graphviz dot" in capsys.readouterr().out
    svg = out.read_text()
    assert "conv1 · conv 3→16, 3x3, s1" in svg and "1×16×32×32" in svg and "enc1 · Block" in svg
    assert main(["render", decoder, "-o", str(tmp_path / "d.png"), "--input", "float32[2,32]", "--input", "int:5",
                 "--run", "--call-tree"]) == 0
    assert (tmp_path / "d.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.skipif(find_engine("graphviz-pure")[1] is None, reason="graphviz-pure is not installed")
def test_render_with_graphviz_pure(unet, tmp_path):
    env = dict(os.environ, PATH=os.path.dirname(sys.executable))
    res = subprocess.run([sys.executable, "-m", "tsdebug.cli", "render", unet, "-o", str(tmp_path / "g.svg"),
                          "--collapse", "0"], capture_output=True, text=True, env=env)
    assert res.returncode == 0 and "graphviz-pure" in res.stdout, res.stderr
    assert "enc1 · Block" in (tmp_path / "g.svg").read_text()


def test_render_cli_run_and_formats(convnet, tmp_path, capsys):
    out = tmp_path / "g.dot"
    assert main(["render", convnet, "-o", str(out), "--run"]) == 0
    src = out.read_text()
    assert "1×8×16×16" in src  # shapes on edges from the run
    assert main(["render", convnet, "-o", str(tmp_path / "g.svg"), "--collapse", "1"]) == 0
    assert "layout:" in capsys.readouterr().out
    assert main(["render", convnet, "-o", convnet]) == 2


# ------------------------------------------------------------ the graph view in the debugger


async def _open_graph(pilot, app, keys=()):
    from tsdebug.widgets.graphview import GraphView

    for _ in range(200):
        await pilot.pause()
        if app.state == "paused":
            break
        await asyncio.sleep(0.02)
    for k in keys:
        await pilot.press(k)
    await pilot.press("v")
    view = app.query_one(GraphView)
    for _ in range(300):
        await pilot.pause()
        if view.drawing is not None:
            break
        await asyncio.sleep(0.02)
    await pilot.pause()
    return view


def visible_boxes(view):
    sx, sy = int(view.scroll_x), int(view.scroll_y)
    region = view.scrollable_content_region
    w, h = region.width, region.height
    return [b for b, (x0, y0, x1, y1) in view.drawing.boxes.items()
            if sx <= x0 and x1 < sx + w and sy <= y0 and y1 < sy + h]


def test_graph_view_in_the_debugger(convnet):
    from tsdebug.app import TsdebugApp
    from tsdebug.cli import build_open_parser
    from tsdebug.render.labels import HIDDEN

    async def run():
        app = TsdebugApp(build_open_parser().parse_args([convnet]))
        async with app.run_test(size=(120, 40)) as pilot:
            for _ in range(100):
                await pilot.pause()
                if app.state == "paused":
                    break
            while app.machine.current_node.kind in HIDDEN:  # attribute reads are not drawn
                await pilot.press("n")
            view = await _open_graph(pilot, app)
            assert view.display and view.drawing is not None
            current = app.machine.current_node.id
            box = view.box_of(current)
            assert box in view.drawing.boxes and view.box_state(box) == "current"
            assert box in visible_boxes(view)
            await pilot.press("v")
            assert not view.display

    asyncio.run(run())


def test_graph_view_uses_the_pane_and_follows_the_selection(unet):
    """At 120x40 the inlined U-Net shows many boxes (compact); j/k select boxes, the inspector and the view follow."""
    from tsdebug.app import TsdebugApp
    from tsdebug.cli import build_open_parser
    from tsdebug.widgets import ProgramView

    async def run():
        app = TsdebugApp(build_open_parser().parse_args([unet, "--inline"]))
        async with app.run_test(size=(120, 40)) as pilot:
            view = await _open_graph(pilot, app)
            assert view.drawing.compact
            assert len(visible_boxes(view)) >= 10
            program = app.query_one(ProgramView)
            first = view.selected
            for _ in range(30):
                await pilot.press("j")
            await pilot.pause()
            assert view.selected != first and view.selected in visible_boxes(view)
            node = program.selected_node
            assert node is not None and view.box_of(node.id) == view.selected
            await pilot.press("k")
            await pilot.pause()
            assert view.box_of(program.selected_node.id) == view.selected
            # z: boxes with borders, fewer on screen
            await pilot.press("z")
            for _ in range(100):
                await pilot.pause()
                if view.drawing is not None and not view.drawing.compact:
                    break
                await asyncio.sleep(0.02)
            assert not view.drawing.compact and view.selected in visible_boxes(view)

    asyncio.run(run())


def test_graph_view_at_80x24_opens_on_the_current_node_with_shapes(unet):
    from tsdebug.app import TsdebugApp
    from tsdebug.cli import build_open_parser

    async def run():
        app = TsdebugApp(build_open_parser().parse_args([unet, "--inline"]))
        async with app.run_test(size=(80, 24)) as pilot:
            for _ in range(200):
                await pilot.pause()
                if app.state == "paused":
                    break
                await asyncio.sleep(0.02)
            while app.machine.current_node.kind != "aten::cat":  # deep in the graph, off its first screen
                app.machine.step()
            app.after_move(None)
            view = await _open_graph(pilot, app)
            box = view.box_of(app.machine.current_node.id)
            assert box is not None and box in visible_boxes(view)
            rows = [view.drawing.line(y, view.shape_of).plain for y in range(view.drawing.height)]
            assert any("1×32×16×16" in r for r in rows)  # what ran so far carries its shapes

    asyncio.run(run())


# ------------------------------------------------------------ cases the layout was not designed around


def test_a_transformer_layer_traced(archive):
    """A third-party style block: attention, layer norms, feed-forward, residuals."""
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True).eval()
    path = archive(layer, "trace", example=(torch.randn(1, 5, 16),))
    for inline in (True, False):
        _, sc = scene_of(path, inline=inline)
        text = " | ".join(labels(sc))
        if inline:
            assert "layernorm 16" in text and "linear 16→32" in text and "linear 32→16" in text
        for compact in (False, True):
            check_grid(sc, grid_layout(sc, compact=compact))


def test_hostile_graphs_lay_out(archive, tmp_path):
    """Very wide, empty, odd module names, branches with nothing in them, labels longer than a pane."""
    wide = archive(G.Wide(300), "trace", example=(torch.randn(2, 3),))
    _, sc = scene_of(wide)
    assert sc.box_count() > 300
    lay = grid_layout(sc, compact=True)
    check_grid(sc, lay)
    assert lay.width > 300 * 3 and lay.height < 40  # side by side, not stacked
    ident = archive(G.Identity(), "script")
    _, sc = scene_of(ident)
    check_grid(sc, grid_layout(sc))
    assert [e.tail for e in sc.edges] == ["in:x.1"]  # straight from the input to the output
    odd = archive(G.OddNames(), "trace", example=(torch.randn(2, 4),))
    for collapse in (None, 0, 2, 5):
        _, sc = scene_of(odd, collapse=collapse)
        check_grid(sc, grid_layout(sc))
        src = build_dot(Session(odd, inline=True).graph, collapse=collapse)
        for engine, exe in engines():
            parse_json(run_engine(exe, src, "json"), engine)  # odd names stay inside DOT strings
    _, sc = scene_of(odd, collapse=None)
    assert any("with space" in t for t in labels(sc)) and any("a-b" in t for t in labels(sc))
    empty = archive(G.EmptyBranches(), "script")
    for inline in (True, False):
        _, sc = scene_of(empty, inline=inline)
        check_grid(sc, grid_layout(sc))
    # a label longer than any pane is cut in the terminal, kept whole in DOT
    _, sc = scene_of(archive(G.MLP(), "script"))
    box = next(b for b in sc.boxes.values() if b.kind == "op")
    box.lines[0] = "x" * 300
    lay = grid_layout(sc)
    assert max(b.w for b in lay.boxes.values()) <= 44
    check_grid(sc, lay)
