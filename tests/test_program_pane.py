"""The program pane and inspector speak the model's language (issue 18).

Real models written as a user would (tests/view_models.py: a U-Net traced, scripted and exported,
a scripted greedy decoder with ``while``/``break``, a scripted helper with dicts and string
formatting, NaN producers, an early ``return``), saved to disk, loaded, and looked at through
the debugger's own widgets driven by Textual's pilot.  Snapshots of the screens at 80x24 and
160x50 (regenerate with ``TSDEBUG_UPDATE_SNAPSHOTS=1`` and look at them as PNGs).
"""

import asyncio
import os
import re
import subprocess
import sys

import pytest
import torch

from engine import Session
from engine.view import describe, is_plumbing, user_source
from tsdebug.app import TsdebugApp, toast_text
from tsdebug.cli import build_open_parser, main as cli_main
from tsdebug.snapshots import capture, normalize
from tsdebug.widgets import Inspector, ProgramView, SourcePane

HERE = os.path.join(os.path.dirname(__file__), "snapshots")
UPDATE = bool(os.environ.get("TSDEBUG_UPDATE_SNAPSHOTS"))
FIXED = "/tmp/tsdebug-screens/pane"


@pytest.fixture(scope="module")
def models():
    """Every model, saved in a fresh process in a fixed directory (stable mangled names and paths)."""
    os.makedirs(FIXED, exist_ok=True)
    for name in ("graph_models.py", "view_models.py"):
        with open(os.path.join(os.path.dirname(__file__), name)) as f, open(os.path.join(FIXED, name), "w") as g:
            g.write(f.read())
    code = f"import sys; sys.path.insert(0, {FIXED!r}); import view_models; view_models.build_all({FIXED!r})"
    subprocess.run([sys.executable, "-W", "ignore", "-c", code], check=True)
    names = ("unet_trace", "unet_script", "decoder", "stats", "allnan", "somenan", "early", "accumulate")
    out = {n: os.path.join(FIXED, n + ".pt") for n in names}
    out["unet_export"] = os.path.join(FIXED, "unet_export.pt2")
    return out


def rows_of(session_or_graph, show_plumbing=False, program=None):
    from tsdebug.widgets.program import build_rows

    if isinstance(session_or_graph, Session):
        graph, program = session_or_graph.graph, session_or_graph.program
    else:
        graph = session_or_graph
    return [describe(r.node, graph, program) for r in build_rows(graph, set(), show_plumbing) if r.node is not None]


def args_for(path, *extra):
    return build_open_parser().parse_args([path, *extra])


async def settle(pilot, app):
    for _ in range(300):
        await pilot.pause()
        if app.state not in ("running", "loading"):
            break
        await asyncio.sleep(0.01)
    await pilot.pause()


async def press(pilot, app, *keys):
    for k in keys:
        await pilot.press(k)
        await settle(pilot, app)


def pane_lines(app) -> list[str]:
    program = app.query_one(ProgramView)
    width = program.size.width
    return [program.render_row(r, width, False).plain for r in program.rows]


# ------------------------------------------------------------ rows in the model's terms


def test_traced_unet_calls_are_named_by_their_module(models):
    s = Session(models["unet_trace"])
    s.start()
    rows = rows_of(s)
    assert rows[0] == "enc1 = Block.forward(x) → %22"
    assert "pool = MaxPool2d.forward(%22) → %26" in rows  # a reused module's forward1 reads as forward
    assert not any("GetAttr" in r or "self." in r or "___torch_mangle" in r for r in rows)
    # the list cat takes is shown inside the call, with the constant dim by name
    assert any(re.fullmatch(r"input = cat\(\[%\d+, %\d+\], dim=1\)", r) for r in rows)
    assert not any(r.startswith("%") and "= [" in r for r in rows)  # no row of its own


def test_scripted_max_pool_shows_its_arguments_by_name(models):
    s = Session(models["unet_script"])
    s.start()
    m = s.machine
    pool_call = next(n for n in s.graph.walk() if n.kind == "prim::CallMethod" and "pool" in describe(n, s.graph))
    m.run_to(pool_call.id)
    m.step()  # into MaxPool2d.forward
    graph = m.current_frame.graph
    rows = rows_of(graph, program=s.program)
    assert any(re.fullmatch(r"%\S+ = _?max_pool2d\(\S+, kernel_size=\[2, 2\], stride=\[2, 2\], padding=\[0, 0\], "
                            r"dilation=\[1, 1\], ceil_mode=False(, return_indices=False)?\)", r) for r in rows), rows


def test_exported_unet_reads_like_the_archive(models):
    s = Session(models["unet_export"])
    s.start()
    rows = rows_of(s)
    assert rows[0] == "enc1 = Block.forward(x) → relu_1"
    assert "cat = cat([conv_transpose2d, relu_3], dim=1)" in rows
    s2 = Session(models["unet_export"], inline=True)
    s2.start()
    rows = rows_of(s2)
    assert "max_pool2d = max_pool2d(relu_1, kernel_size=[2, 2], stride=[2, 2])" in rows
    # weights by their names, not their contents
    assert "conv2d = conv2d(x, enc1.conv1.weight, enc1.conv1.bias, stride=[1, 1], padding=[1, 1])" in rows


def test_decoder_loop_break_and_the_users_own_list(models):
    s = Session(models["decoder"])
    s.start(specs=["float32[2,32]", "int:5"])
    rows = rows_of(s)
    # the break's If shows the user's line, not the flag TorchScript made for it
    assert "if bool((tok == 0).all())" in rows
    assert "for i in range(steps)" in " ".join(rows)
    assert "tok = zeros([%5], dtype=torch.int64)" in rows  # dtype as torch writes it, not ScalarType 4
    # ``outs = []`` is changed by append: a value of the user's, never folded as a constant
    assert "%12 = []" in rows
    assert any(re.fullmatch(r"%\d+ = append\(%12, tok1\)", r) for r in rows)
    assert any(re.fullmatch(r"%\d+ = stack\(%12, dim=1\)", r) for r in rows)


def test_call_inputs_are_named_by_the_methods_parameters(models):
    s = Session(models["decoder"])
    s.start(specs=["float32[2,32]", "int:5"])
    from engine.view import input_params

    cell = next(n for n in s.graph.walk() if n.kind == "prim::CallMethod" and "GRUCell" in describe(n, s.graph))
    assert input_params(cell, s.graph, s.program) == ["self", "input", "hx"]
    t = Session(models["unet_trace"])
    t.start()
    first = next(n for n in t.graph.walk() if n.kind == "prim::CallMethod")
    assert input_params(first, t.graph, t.program) == ["self", "x"]  # not trace's argument_1


def test_dicts_and_string_formatting(models):
    s = Session(models["stats"])
    s.start(specs=["float32[2,4]"])
    rows = rows_of(s)
    assert any(re.fullmatch(r"stats = \{'mean': %\d+, 'max': %\d+\}", r) for r in rows), rows
    assert any(re.fullmatch(r"msg = format\('mean=\{:\.3f\} max=\{:\.3f\}', %\d+, %\d+\)", r) for r in rows), rows
    assert any(r.startswith("scale = Linear.forward(") for r in rows)


def test_early_return_flags_are_left_out(models):
    s = Session(models["early"])
    s.start(specs=["float32[1,4]", "float:100"])
    rows = rows_of(s)
    assert any(r.endswith("= if bool(x.sum() > limit)") for r in rows), rows
    assert not any("Uninitialized" in r for r in rows)
    with_plumbing = rows_of(s, show_plumbing=True)
    assert any("prim::Uninitialized" in r for r in with_plumbing)


def test_every_node_of_every_model_describes(models):
    """A hostile sweep: every node of every graph the runs reached, in both views, gives a line."""
    for name, path in models.items():
        for inline in (False, True):
            specs = {"decoder": ["float32[2,32]", "int:5"], "stats": ["float32[2,4]"], "early": ["float32[1,4]", "float:3"],
                     "allnan": ["float32[2,3]"], "somenan": ["float32[2,3]"], "accumulate": ["float32[2]"]}.get(name)
            s = Session(path, inline=inline)
            s.start(specs=specs)
            s.machine.run()
            for g in s.program.cached_graphs():
                for n in g.walk():
                    text = describe(n, g)
                    assert text and "\n" not in text, (name, n.id)
                    is_plumbing(n, g)


# ------------------------------------------------------------ stepping past plumbing


def test_first_stop_and_n_skip_plumbing_p_shows_it(models):
    async def run():
        app = TsdebugApp(args_for(models["unet_trace"]))
        async with app.run_test(size=(120, 40)) as pilot:
            await settle(pilot, app)
            m = app.machine
            # the first stop computes: no GetAttr to press n through
            assert m.current_node.kind == "prim::CallMethod"
            assert any(r.node.kind == "prim::GetAttr" for r in m.timeline)  # the machine still ran them
            await press(pilot, app, "n")
            assert describe(m.current_node, m.current_frame.graph).startswith("pool = MaxPool2d.forward(")
            lines = pane_lines(app)
            assert not any("self." in ln for ln in lines)
            # P shows the plumbing, and n then stops at it
            await press(pilot, app, "F")
            assert any("enc1 = self.enc1" in ln for ln in pane_lines(app))
            app.session.restart()
            app.after_move(None)
            await settle(pilot, app)
            await press(pilot, app, "n")
            assert app.machine.current_node.kind == "prim::GetAttr"

    asyncio.run(run())


def test_breakpoint_on_plumbing_still_stops(models):
    async def run():
        app = TsdebugApp(args_for(models["decoder"], "--input", "float32[2,32]", "--input", "int:5"))
        async with app.run_test(size=(120, 40)) as pilot:
            await settle(pilot, app)
            getattr_node = next(n for n in app.session.graph.walk() if n.kind == "prim::GetAttr")
            app.session.breakpoints.toggle_node(getattr_node.id)
            await press(pilot, app, "c")
            assert app.machine.current_node is getattr_node
            # and n from there goes on to the next node the user wrote
            await press(pilot, app, "n")
            assert not is_plumbing(app.machine.current_node, app.machine.current_frame.graph)

    asyncio.run(run())


def test_back_skips_plumbing_too(models):
    async def run():
        app = TsdebugApp(args_for(models["unet_script"]))
        async with app.run_test(size=(120, 40)) as pilot:
            await settle(pilot, app)
            await press(pilot, app, "n", "n", "n", "p")
            m = app.machine
            assert m.view is not None
            node = m.timeline[m.view].node
            assert not is_plumbing(node, app.session.program.graph_of(node.id))

    asyncio.run(run())


# ------------------------------------------------------------ sources


def test_traced_call_rows_show_the_users_file(models):
    s = Session(models["unet_trace"])
    s.start()
    calls = [n for n in s.graph.walk() if n.kind == "prim::CallMethod"]
    lines = [user_source(n, s.program).line for n in calls]
    src = open(os.path.join(FIXED, "graph_models.py")).read().splitlines()
    texts = [src[ln - 1].strip() for ln in lines]
    assert texts[0] == "e1 = self.enc1(x)"
    assert texts[1] == texts[2] == "e2 = self.enc2(self.pool(e1))"
    assert texts[-1] == "return self.head(d1)"

    async def run():
        app = TsdebugApp(args_for(models["unet_trace"]))
        async with app.run_test(size=(120, 40)) as pilot:
            await settle(pilot, app)
            pane = app.query_one(SourcePane)
            assert "file on disk" in pane.border_title and "not on disk" not in pane.border_title
            assert "e1 = self.enc1(x)" in pane.plain
            assert "graph_models.py:33" in app.query_one(Inspector).plain

    asyncio.run(run())


# ------------------------------------------------------------ values


def test_inspector_shows_this_iterations_inputs(models):
    async def run():
        app = TsdebugApp(args_for(models["accumulate"], "--input", "float32[2]"))
        async with app.run_test(size=(120, 40)) as pilot:
            await settle(pilot, app)
            m = app.machine
            x0 = app.session.inputs[0]
            add = next(n for n in app.session.graph.walk() if n.kind == "aten::add")
            seen = []
            for _ in range(3):
                app.query_one(ProgramView).select_node(add.id)
                await press(pilot, app, "u")
                assert m.current_node is add
                inspector = app.query_one(Inspector)
                node, rec, _live, _note = inspector._shown
                assert node is add and rec.status == "next"
                seen.append(rec.inputs[0].clone())
                await press(pilot, app, "n")
            for k, x in enumerate(seen):
                assert torch.equal(x, x0 + float(k)), k  # iteration k reads x0 + k, not the last iteration's

    asyncio.run(run())


def test_all_nan_tensor_shows_its_count_and_run_says_so(models, capsys):
    s = Session(models["allnan"])
    s.start(specs=["float32[2,3]"])
    s.machine.run()
    out = s.machine.outputs
    from engine.run.values import summarize

    assert "NaN 6" in summarize(out).tensor.stats_line()
    assert cli_main(["run", models["allnan"], "--input", "float32[2,3]"]) == 0
    said = capsys.readouterr().out
    assert "NaN        the output is all NaN" in said
    # a partly-NaN output is not called all NaN
    assert cli_main(["run", models["somenan"], "--input", "float32[2,3]"]) == 0
    assert "all NaN" not in capsys.readouterr().out


def test_histogram_has_counts_above_a_preview_cut_to_the_pane(models):
    async def run():
        app = TsdebugApp(args_for(models["unet_trace"]))
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(pilot, app)
            await press(pilot, app, "n")
            inspector = app.query_one(Inspector)
            text = inspector.plain
            hist = text.index("histogram")
            assert hist < text.index("preview")
            assert re.search(r"histogram  16384 finite values", text), text
            assert re.search(r"tallest bin \d+ at", text)
            # every row as drawn fits the pane: nothing wraps onto a second line
            shot = app.export_screenshot()
            assert shot  # drawn
            width = inspector.scrollable_content_region.width
            assert width < 40  # the inspector is narrow at 80x24
            preview = text[text.index("preview"):].splitlines()[1:]
            assert preview and all(len(row) <= width for row in preview), (width, preview)
            # no row of the tensor is broken across lines: each ends its brackets (or is cut with …)
            rows = [r for r in preview if r.startswith(("[", " ")) and r.strip() and r.strip() != "..."]
            assert len(rows) >= 4
            assert all(r.rstrip().endswith(("]", "…")) for r in rows), preview

    asyncio.run(run())


# ------------------------------------------------------------ notifications


def test_toasts_are_short_and_the_next_key_dismisses_them(models):
    text, timeout = toast_text("x" * 900 + "\n" + "\n".join(f"line {i}" for i in range(20)), "error", 30)
    assert len(text) <= 120 and text.count("\n") <= 2 and timeout <= 5

    async def run():
        app = TsdebugApp(args_for(models["unet_trace"]))
        async with app.run_test(size=(80, 24), notifications=True) as pilot:
            await settle(pilot, app)
            assert len(app._notifications) >= 1  # the load toast
            assert all(n.timeout <= 5 for n in app._notifications)
            await press(pilot, app, "j")
            assert len(app._notifications) == 0
            await press(pilot, app, "b")  # a key's own toast stays
            notes = list(app._notifications)
            assert len(notes) == 1 and "breakpoint set" in notes[0].message
            # the longest message the model can raise covers less than half the screen
            app.notify("RuntimeError: " + "shape mismatch " * 80 + "\n".join(["at line"] * 30), severity="error")
            for _ in range(5):
                await pilot.pause()
            from textual.widgets._toast import Toast

            toasts = list(app.screen.query(Toast))
            assert toasts and sum(t.region.height for t in toasts) < 12, [t.region for t in toasts]

    asyncio.run(run())


def test_goto_finds_nodes_by_what_the_row_says(models):
    async def run():
        app = TsdebugApp(args_for(models["unet_trace"]))
        async with app.run_test(size=(120, 40)) as pilot:
            await settle(pilot, app)
            from tsdebug.widgets.goto import search

            hits = search(app._targets(), "enc1 = Block.forward(x)")
            assert hits and hits[0].node_id.startswith("forward/")

    asyncio.run(run())


# ------------------------------------------------------------ snapshots

DECODER = ["--input", "float32[2,32]", "--input", "int:5"]
SCREENS = {
    # the traced U-Net as it opens: calls by module, the user's line on disk, the histogram first
    "pane-unet-start": ("unet_trace", [], ["n"]),
    # inside the scripted MaxPool2d: max_pool2d with its arguments by name, inputs by parameter name
    "pane-unet-maxpool": ("unet_script", [], ["n", "s"]),
    # the decoder's loop, second iteration: the if of the break, this iteration's inputs
    "pane-decoder-loop": ("decoder", DECODER, ["n"] * 4 + ["s"] + ["n"] * 13),
    # dicts and string formatting in a scripted helper
    "pane-stats": ("stats", ["--input", "float32[2,4]"], ["n"] * 6),
    # an all-NaN output: its count, and no histogram to draw
    "pane-allnan": ("allnan", ["--input", "float32[2,3]"], ["n"] * 4),
}


@pytest.mark.parametrize("size", [(80, 24), (160, 50)], ids=["80x24", "160x50"])
@pytest.mark.parametrize("screen", list(SCREENS))
def test_pane_snapshot(models, screen, size):
    model, extra, keys = SCREENS[screen]
    name = f"{screen}-{size[0]}x{size[1]}"
    svg = normalize(capture(models[model], keys, size, extra=extra, title=name))
    path = os.path.join(HERE, name + ".svg")
    if UPDATE or not os.path.exists(path):
        os.makedirs(HERE, exist_ok=True)
        with open(path, "w") as f:
            f.write(svg)
        if not UPDATE:
            pytest.fail(f"no snapshot yet: wrote {path}; check it and run again")
    with open(path) as f:
        expected = f.read()
    assert svg == expected, f"{name} changed; compare with {path} (TSDEBUG_UPDATE_SNAPSHOTS=1 to accept)"
