"""pdb and pudb habits: evaluate (!), watches (W), the breakpoint list (B), go to any frame (g),
back over a call (P), e stopping at a breakpoint, the command palette; on real saved models."""

import asyncio
import inspect
import os

import pytest
import torch
import torch.nn as nn

from engine import Session
from engine.run.breaks import BreakpointBook, BreakpointError
from engine.run.evaluate import EvalError, evaluate, live_scope
from engine.run.values import fmt_float
from test_ui import args_for, settle
from tsdebug.app import TsdebugApp
from tsdebug.widgets import ProgramView
from tsdebug.widgets.breakpoints import BreakpointsScreen
from tsdebug.widgets.evaluate import EvaluateScreen
from tsdebug.widgets.watches import WatchList


class Loopy(nn.Module):
    """Scripted: a loop whose branch depends on the data, a submodule called on one line."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(3):
            x = self.lin(x) * 2.0  # the line of the b FILE:LINE test
            if bool(x.sum() > 0):
                x = torch.relu(x)
            else:
                x = x - 1.0
        return x


LIN_LINE = inspect.getsourcelines(Loopy.forward)[1] + 2
THIS_FILE = os.path.basename(__file__)


@pytest.fixture
def loopy(archive):
    torch.manual_seed(0)
    return archive(Loopy(), "script")


async def type_text(pilot, text):
    await pilot.press(*text)


async def evaluate_in_ui(pilot, app, text):
    """Open ! (if needed), type ``text``, Enter; returns (the value, the screen)."""
    if not isinstance(app.screen, EvaluateScreen):
        await pilot.press("exclamation_mark")
        await pilot.pause()
    await type_text(pilot, text)
    await pilot.press("enter")
    await pilot.pause()
    return app.screen.last_value, app.screen


async def breakpoint_command(pilot, app, text):
    """Type ``text`` in the breakpoints screen (B); returns the message it shows."""
    if not isinstance(app.screen, BreakpointsScreen):
        await pilot.press("B")
        await pilot.pause()
    app.screen.query_one("#breakpoints-input").value = ""  # a refused line stays there to be edited
    await type_text(pilot, text)
    await pilot.press("enter")
    await pilot.pause()
    return str(app.screen.query_one("#breakpoints-message").content)


def watch_rows(app):
    return [str(o.prompt) for o in app.query_one(WatchList).options]


# ------------------------------------------------------------------ evaluate


def test_evaluate_gives_torchs_numbers(convnet):
    async def run():
        app = TsdebugApp(args_for(convnet))
        async with app.run_test(size=(120, 40)) as pilot:
            await settle(pilot, app)
            x = app.session.inputs[0]
            value, screen = await evaluate_in_ui(pilot, app, "%x.1.abs().max()")
            assert torch.equal(value, x.abs().max())
            # torch itself, names by value
            value, _ = await evaluate_in_ui(pilot, app, "torch.allclose(%x.1, %x.1 * 1.0)")
            assert value is True
            log = " ".join(str(w.content) for w in screen.query(".evaluate-entry"))
            assert "True" in log and "%x.1.abs().max()" in log
            # not computed yet: one line that says so
            later = next(n for n in app.machine.graph.walk() if n.kind == "aten::linear" or
                         n.kind == "prim::CallMethod").outputs[0].name
            await evaluate_in_ui(pilot, app, f"%{later}.sum()")
            entries = list(screen.query(".evaluate-entry"))
            assert "not computed yet" in str(entries[-1].content)
            await evaluate_in_ui(pilot, app, "%nope + 1")
            assert "no value of that name" in str(list(screen.query(".evaluate-entry"))[-1].content)
            # Up recalls the lines typed before, kept when the screen opens again
            await pilot.press("up")
            assert screen.query_one("#evaluate-input").value == "%nope + 1"
            await pilot.press("up")
            assert screen.query_one("#evaluate-input").value == f"%{later}.sum()"
            await pilot.press("escape")
            await pilot.pause()
            await pilot.press("exclamation_mark")
            await pilot.pause()
            screen = app.screen
            await pilot.press("up")
            assert screen.query_one("#evaluate-input").value == "%nope + 1"
            screen.query_one("#evaluate-input").value = ""
            await pilot.press("escape")
            await pilot.pause()
            assert not isinstance(app.screen, EvaluateScreen)

    asyncio.run(run())


def test_evaluate_after_steps_matches_the_op(convnet):
    """Into the first conv: its output, evaluated, is torch's conv of its input."""
    s = Session(convnet)
    s.start()
    m = s.machine
    while m.current_node is None or m.current_node.kind != "aten::_convolution":
        m.step()
    node = m.current_node
    m.step()  # the conv ran, and its frame returned: back in history, the step after it
    m.back()
    assert m.timeline[m.view].node is node
    out = node.outputs[0].name
    inp = node.inputs[0].name
    w = node.inputs[1].name
    b = node.inputs[2].name
    scope = live_scope(m)
    got = evaluate(f"%{out}", scope)
    want = torch.nn.functional.conv2d(evaluate(f"%{inp}", scope), evaluate(f"%{w}", scope), evaluate(f"%{b}", scope),
                                      padding=1)
    assert torch.allclose(got, want, atol=1e-6)
    assert float(evaluate(f"(%{out} - F.conv2d(%{inp}, %{w}, %{b}, padding=1)).abs().max()", scope)) < 1e-5


def test_evaluate_cannot_change_what_was_recorded(convnet):
    """A hostile expression: in-place ops on a value change a copy; no import, no open."""
    s = Session(convnet)
    s.start()
    m = s.machine
    for _ in range(3):
        m.step()
    scope = live_scope(m)
    before = evaluate("%x.1", scope).clone()
    evaluate("%x.1.add_(100)", scope)
    evaluate("%x.1.zero_()", scope)
    assert torch.equal(evaluate("%x.1", scope), before)
    assert torch.equal(s.inputs[0], before)
    for bad in ("__import__('os').system('true')", "open('/etc/passwd')"):
        with pytest.raises(EvalError) as err:
            evaluate(bad, scope)
        assert "\n" not in err.value.message and "NameError" in err.value.message
    with pytest.raises(EvalError) as err:
        evaluate("%x.1 +", scope)
    assert "not a Python expression" in err.value.message
    with pytest.raises(EvalError) as err:
        evaluate("%x1.sum()", scope)
    assert "did you mean %x.1" in err.value.message


def test_evaluate_says_a_value_was_not_kept(convnet):
    """A user's report: over the record budget, a value's name says so, with its summary."""
    s = Session(convnet, budget=0)
    s.start()
    m = s.machine
    while m.current_node is None or m.current_node.kind != "aten::_convolution":
        m.step()
    node = m.current_node
    m.step()
    m.back()
    with pytest.raises(EvalError) as err:
        evaluate(f"%{node.outputs[0].name}.sum()", live_scope(m))
    assert "not kept" in err.value.message and "record-budget" in err.value.message


# ------------------------------------------------------------------- watches


def test_watch_updates_after_n(loopy):
    async def run():
        app = TsdebugApp(args_for(loopy, "--input", "float32[2,4]"))
        async with app.run_test(size=(120, 40)) as pilot:
            await settle(pilot, app)
            m = app.machine
            assert not app.query_one(WatchList).display
            await pilot.press("W")
            await pilot.pause()
            await type_text(pilot, "%x.1.sum()")
            await pilot.press("enter")
            await settle(pilot, app)
            assert app.query_one(WatchList).display
            first = watch_rows(app)
            assert first == [f"%x.1.sum() = {fmt_float(float(app.session.inputs[0].sum()))}"]
            # a watch on the loop's carried value: changes as the loop goes round
            await pilot.press("W")
            await pilot.pause()
            loop = next(n for n in m.graph.walk() if n.kind == "prim::Loop")
            carried = loop.blocks[0].params[1].name
            await type_text(pilot, f"%{carried}.abs().sum()")
            await pilot.press("enter")
            await settle(pilot, app)
            seen = set()
            for _ in range(12):
                await pilot.press("s")
                await settle(pilot, app)
                rows = watch_rows(app)
                assert len(rows) == 2
                seen.add(rows[1])
            assert len(seen) >= 2  # it followed the steps
            # the value the watch shows is the engine's at that step
            if m.view is None and m.current_frame is not None and m.current_frame.env[loop.blocks[0].params[1].index] is not None:
                want = m.current_frame.env[loop.blocks[0].params[1].index].abs().sum()
                assert watch_rows(app)[1].endswith(f"= {fmt_float(float(want))}")
            # a value made inside the loop: not computed yet, then, after n runs its node, torch's number
            await pilot.press("R")
            await settle(pilot, app)
            m = app.machine
            call = next(n for n in loop.blocks[0].nodes if n.kind == "prim::CallMethod")
            made = call.outputs[0].name
            await pilot.press("W")
            await pilot.pause()
            await type_text(pilot, f"%{made}.sum()")
            await pilot.press("enter")
            await settle(pilot, app)
            assert "not computed yet" in watch_rows(app)[2]
            for _ in range(20):
                if m.current_node is call:
                    break
                await pilot.press("s")  # into the loop
                await settle(pilot, app)
            assert m.current_node is call
            assert "not computed yet" in watch_rows(app)[2]
            await pilot.press("n")
            await settle(pilot, app)
            want = m.timeline.last_of(call.id).outputs[0].sum()
            assert watch_rows(app)[2] == f"%{made}.sum() = {fmt_float(float(want))}"
            app.watches.pop()
            # Delete in the list removes one
            app.query_one(WatchList).focus()
            app.query_one(WatchList).highlighted = 0
            await pilot.press("delete")
            await pilot.pause()
            assert app.watches == [f"%{carried}.abs().sum()"]

    asyncio.run(run())


# --------------------------------------------------------------- breakpoints


def test_conditional_breakpoint_stops_only_when_it_holds(loopy):
    async def run():
        app = TsdebugApp(args_for(loopy, "--input", "float32[2,4]"))
        async with app.run_test(size=(120, 40)) as pilot:
            await settle(pilot, app)
            m = app.machine
            loop = next(n for n in m.graph.walk() if n.kind == "prim::Loop")
            counter = loop.blocks[0].params[0].name
            call = next(n for n in loop.blocks[0].nodes if n.kind == "prim::CallMethod")
            message = await breakpoint_command(pilot, app, f"{call.id} if %{counter} == 2")
            assert "if" in message and call.id in message
            await pilot.press("escape")
            await pilot.pause()
            await pilot.press("c")
            await settle(pilot, app)
            assert m.current_node is call and m.frames()[-1].loops == [2]
            await pilot.press("c")
            await settle(pilot, app)
            assert app.state == "finished"  # iterations 0 and 1 did not stop; neither did anything after

    asyncio.run(run())


def test_b_file_line_stops_at_every_node_of_that_line(loopy):
    s = Session(loopy, method="forward")
    book = BreakpointBook(s.breakpoints, s.program)
    message = book.add(f"{THIS_FILE}:{LIN_LINE}")
    ids = s.breakpoints.lines[f"{THIS_FILE}:{LIN_LINE}"]
    assert ids and "node(s)" in message
    s.start(values=(torch.randn(2, 4),))
    m = s.machine
    stops = []
    while m.continue_() == "breakpoint":
        stops.append(m.live_node)
        assert m.live_node.source.line == LIN_LINE
    assert len(stops) == 3 * len(ids)  # every node of the line, every iteration
    # the list shows it as one; deleting it removes every node's
    entries = book.entries()
    assert [e.text.split(":")[0] for e in entries] == [f"line {THIS_FILE}"]
    book.remove(entries[0].key)
    assert not s.breakpoints
    with pytest.raises(BreakpointError) as err:
        book.add(f"{THIS_FILE}:1")
    assert "no node" in err.value.message


def test_b_file_line_from_the_screen_and_delete(loopy):
    async def run():
        app = TsdebugApp(args_for(loopy, "--input", "float32[2,4]"))
        async with app.run_test(size=(120, 40)) as pilot:
            await settle(pilot, app)
            message = await breakpoint_command(pilot, app, f"{THIS_FILE}:{LIN_LINE}")
            assert f"{THIS_FILE}:{LIN_LINE}" in message
            lst = app.screen.query_one("#breakpoints-list")
            assert lst.option_count == 1
            await pilot.press("down")  # to the list
            await pilot.press("d")
            await pilot.pause()
            assert not app.session.breakpoints
            await pilot.press("escape")
            await pilot.pause()

    asyncio.run(run())


def test_B_rejects_a_kind_the_program_lacks_and_suggests(convnet):
    async def run():
        app = TsdebugApp(args_for(convnet))
        async with app.run_test(size=(120, 40)) as pilot:
            await settle(pilot, app)
            await pilot.press("B")
            await pilot.pause()
            screen = app.screen
            # the example in the prompt is a kind this program has
            example = screen.placeholder.split()[0]
            assert example == "aten::_convolution"
            message = await breakpoint_command(pilot, app, "aten::conv2d")
            assert "no aten::conv2d" in message and "aten::_convolution" in message
            assert not app.session.breakpoints.kinds
            message = await breakpoint_command(pilot, app, example)
            assert app.session.breakpoints.kinds == {"aten::_convolution"}
            await pilot.press("escape")
            await pilot.pause()
            await pilot.press("c")
            await settle(pilot, app)
            assert app.machine.current_node.kind == "aten::_convolution"

    asyncio.run(run())


def test_condition_that_fails_stops_and_says_why(loopy):
    """A user's typo that only the run can catch (a method the tensor lacks): the run stops there, and says so."""
    s = Session(loopy)
    s.start(values=(torch.randn(2, 4),))
    book = BreakpointBook(s.breakpoints, s.program)
    call = next(n for n in s.graph.walk() if n.kind == "prim::CallMethod")
    with pytest.raises(BreakpointError):
        book.add(f"{call.id} if %nope > 0")  # names are checked when it is set
    book.add(f"{call.id} if %x.1.no_such_method() > 0")
    m = s.machine
    assert m.continue_() == "breakpoint"
    assert "condition failed" in m.stop_reason_detail and "no_such_method" in m.stop_reason_detail


# ------------------------------------------------------------------ go to, P


def test_g_finds_a_node_in_a_callee_and_goes_there(convnet):
    async def run():
        app = TsdebugApp(args_for(convnet))
        async with app.run_test(size=(120, 40)) as pilot:
            await settle(pilot, app)
            m = app.machine
            # no BatchNorm has run (nor been converted): its graph is found all the same
            assert not any(r.node.kind == "aten::batch_norm" for r in m.timeline)
            await pilot.press("g")
            await pilot.pause()
            await type_text(pilot, "batch_norm")
            await pilot.press("enter")
            await settle(pilot, app)
            assert m.current_node.kind == "aten::batch_norm"
            program = app.query_one(ProgramView)
            assert program.graph.name.endswith("BatchNorm2d.forward")
            assert program.selected_node is m.current_node
            # again: it ran now, so g goes to its first run in the history
            target = m.current_node.id
            await pilot.press("n")
            await pilot.press("n")
            await settle(pilot, app)
            await pilot.press("g")
            await pilot.pause()
            await type_text(pilot, target)
            await pilot.press("enter")
            await settle(pilot, app)
            assert m.view is not None and m.timeline[m.view].node.id == target

    asyncio.run(run())


class Guarded(nn.Module):
    """A guard for inputs that never come: its branch never runs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x * 2.0
        if bool((y < -1000.0).any()):
            y = y - 1.0
        return y.relu()


def test_g_on_a_node_that_never_runs(archive):
    """g to a node in a branch the inputs never take: it says so and leaves you where you were."""
    s = Session(archive(Guarded(), "script"))
    s.start(values=(torch.randn(3, 3),))
    m = s.machine
    branch = next(n for n in s.graph.walk() if n.kind == "prim::If")
    sub = next(n for n in branch.blocks[0].nodes if n.kind == "aten::sub")
    m.step()
    here = m.live_node
    assert m.go_to(sub.id) == "never"
    assert m.finished and m.timeline[m.view].node is here
    assert not any(r.node.id == sub.id for r in m.timeline)
    # a node that does run, from the history: its first record
    relu = next(n for n in s.graph.walk() if n.kind == "aten::relu")
    assert m.go_to(relu.id) == "history" and m.timeline[m.view].node is relu


def test_P_steps_back_over_a_call(convnet):
    """P from the step after a call lands on the call itself; p would land on the call's last node."""
    s = Session(convnet)
    s.start()
    m = s.machine
    while m.current_node.kind != "prim::CallMethod":
        m.step()
    call = m.current_node
    depth = len(m.stack)
    m.step_over()
    after = m.current_node
    assert len(m.stack) == depth
    m.back()
    inside = m.timeline[m.view]
    assert inside.depth > depth  # p: the last node run inside the call
    m.go_live()
    m.back_over()
    assert m.timeline[m.view].node is call  # P: the whole call is one step
    m.back_over()
    assert m.timeline[m.view].index < m.timeline.by_node[call.id][0] and m.timeline[m.view].depth <= depth
    # and n forward again from there passes the call whole, back to where P started
    m.step_over()
    assert m.timeline[m.view].node is call
    m.step_over()
    assert m.view is None and m.current_node is after
    # at the end: back over the top frame's last step (the head's call), not into it
    m.run()
    m.back_over()
    last = m.timeline[m.view]
    assert last.depth == 1 and last.node.kind != "prim::Constant"


def test_P_and_colon_keys(convnet):
    async def run():
        app = TsdebugApp(args_for(convnet))
        async with app.run_test(size=(120, 40)) as pilot:
            await settle(pilot, app)
            m = app.machine
            while m.current_node.kind != "prim::CallMethod":
                await pilot.press("s")
                await settle(pilot, app)
            call = m.current_node
            await pilot.press("n")
            await settle(pilot, app)
            await pilot.press("P")
            await settle(pilot, app)
            assert app.state == "history" and m.timeline[m.view].node is call
            assert app.query_one(ProgramView).selected_node is call
            await pilot.press("colon")  # : evaluates too
            await pilot.pause()
            assert isinstance(app.screen, EvaluateScreen)
            await pilot.press("escape")
            await pilot.pause()
            await pilot.press("question_mark")
            await pilot.pause()
            from tsdebug.widgets.help import HelpScreen

            assert isinstance(app.screen, HelpScreen)
            keys = {k for k, _ in app.screen.sections[0][1]}
            assert {"! :", "W", "P", "B"} <= keys

    asyncio.run(run())


# --------------------------------------------------------------- e, palette


def test_e_stops_at_the_breakpoint(archive):
    import diff_models as D

    torch.manual_seed(0)
    path = archive(D.FrozenBranch(), "trace", example=(torch.rand(2, 6) + 0.5,))
    eager = os.path.join(os.path.dirname(__file__), "diff_models.py") + ":FrozenBranch"

    async def run():
        app = TsdebugApp(args_for(path, "--input", "float32[2,6]:-1..-0.5", "--eager", eager))
        async with app.run_test(size=(120, 40)) as pilot:
            await settle(pilot, app)
            m = app.machine
            kinds = {n.kind for n in m.graph.walk()}
            kind = "aten::tanh" if "aten::tanh" in kinds else sorted(k for k in kinds if k.startswith("aten::"))[0]
            await breakpoint_command(pilot, app, kind)
            await pilot.press("escape")
            await pilot.pause()
            await pilot.press("e")
            await settle(pilot, app)
            m = app.machine
            assert app.diff_result is not None
            first = min(i for i, r in enumerate(m.timeline) if r.node.kind == kind)
            assert m.view == first  # where c from the start would have stopped
            assert app.query_one(ProgramView).selected_node.kind == kind

    asyncio.run(run())


def test_palette_lists_our_commands_and_screenshot_saves(convnet, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    async def run():
        from textual.command import CommandPalette
        from textual.widgets import OptionList

        app = TsdebugApp(args_for(convnet))
        async with app.run_test(size=(120, 40)) as pilot:
            await settle(pilot, app)
            await pilot.press("ctrl+p")
            await pilot.pause()
            assert isinstance(app.screen, CommandPalette)
            await type_text(pilot, "evaluate")
            for _ in range(50):
                await pilot.pause()
                await asyncio.sleep(0.02)
                lst = app.screen.query_one(OptionList)
                if lst.option_count:
                    break
            texts = [str(lst.get_option_at_index(i).prompt) for i in range(lst.option_count)]
            assert any("evaluate an expression" in t for t in texts)
            await pilot.press("enter")
            await pilot.pause()
            await pilot.pause()
            assert isinstance(app.screen, EvaluateScreen)  # the command ran its key's action
            await pilot.press("escape")
            await pilot.pause()
            await pilot.press("ctrl+p")
            await pilot.pause()
            await type_text(pilot, "screenshot")
            for _ in range(50):
                await pilot.pause()
                await asyncio.sleep(0.02)
                if app.screen.query_one(OptionList).option_count:
                    break
            await pilot.press("enter")
            for _ in range(50):
                await asyncio.sleep(0.02)
                await pilot.pause()
                if list(tmp_path.glob("*.svg")):
                    break
            saved = list(tmp_path.glob("tsdebug-*.svg"))
            assert len(saved) == 1 and "<svg" in saved[0].read_text()[:400]

    asyncio.run(run())


# ----------------------------------------------------------- torch.export


def test_exported_program_evaluate_kinds_and_goto(tmp_path):
    from exported_models import export_model

    path, module, args, kwargs = export_model(tmp_path / "convnet.pt2", "convnet")
    s = Session(path)
    s.start()
    book = BreakpointBook(s.breakpoints, s.program)
    # an exported conv is aten::conv2d (an overload of it): the text a traced archive refuses is right here
    assert "aten::conv2d.default" in book.kinds
    with pytest.raises(BreakpointError) as err:
        book.add("aten::_convolution")
    assert "aten::conv2d.default" in err.value.message
    assert "aten::conv2d.default" in book.add("aten::conv2d")
    assert s.breakpoints.kinds == {"aten::conv2d.default"}
    assert book.example_kind() in book.kinds
    book.add("aten::conv2d")  # the same again: off
    assert not s.breakpoints
    m = s.machine
    node = next(n for g in book.graphs if g is not s.graph for n in g.walk() if n.kind.startswith("aten::batch_norm"))
    assert m.go_to(node.id) == "step" and m.live_node is node
    scope = live_scope(m)
    x = node.inputs[0].name
    got = evaluate(f"%{x}.abs().max()", scope)
    assert torch.equal(got, evaluate(f"%{x}", scope).abs().max())


# ------------------------------------------------------------------ snapshots
# The demo archive (tsdebug/demo.py), traced in a fresh process in a fixed folder so names and
# paths on screen are the same everywhere.  Regenerate with TSDEBUG_UPDATE_SNAPSHOTS=1 and look
# at the SVGs as PNGs (rsvg-convert) before accepting them.

SNAPSHOTS = os.path.join(os.path.dirname(__file__), "snapshots")


def typed(text):
    return list(text) + ["enter"]


PDB_SCREENS = {
    # ! at the multiply: a value, torch's own function over two values, one not computed yet
    "pdb-evaluate": ["n"] * 2 + ["exclamation_mark"] + typed("%14.abs().max()") + typed("torch.allclose(%14, %14 * 1.0)")
    + typed("%y.1.sum()"),
    # two watches, stepped past the first's node: one a value, one not computed yet
    "pdb-watches": ["n"] + ["W"] + typed("%14.mean()") + ["W"] + typed("%y.1.abs().max()") + ["n"],
    # B: a line and a kind set, then a kind the traced program does not have, refused with the closest
    "pdb-breakpoints": ["n"] + ["B"] + typed("demo_model.py:60") + typed("aten::relu") + typed("aten::conv2d"),
    # g from the first step to a node in a frame not entered yet (the stem's BatchNorm): the machine went there
    "pdb-goto": ["g"] + typed("batch_norm"),
}


@pytest.fixture(scope="module")
def demo():
    from tsdebug.snapshots import build_demo_in

    return build_demo_in()


@pytest.mark.parametrize("size", [(80, 24), (160, 50)], ids=["80x24", "160x50"])
@pytest.mark.parametrize("screen", list(PDB_SCREENS))
def test_pdb_snapshot(demo, screen, size):
    from tsdebug.snapshots import capture, normalize

    name = f"{screen}-{size[0]}x{size[1]}"
    svg = normalize(capture(demo, PDB_SCREENS[screen], size, title=name))
    path = os.path.join(SNAPSHOTS, name + ".svg")
    if os.environ.get("TSDEBUG_UPDATE_SNAPSHOTS") or not os.path.exists(path):
        os.makedirs(SNAPSHOTS, exist_ok=True)
        with open(path, "w") as f:
            f.write(svg)
        if not os.environ.get("TSDEBUG_UPDATE_SNAPSHOTS"):
            pytest.fail(f"no snapshot yet: wrote {path}; check it and run again")
    with open(path) as f:
        assert svg == f.read(), f"{name} changed; compare with {path} (TSDEBUG_UPDATE_SNAPSHOTS=1 to accept)"


def test_exported_program_in_the_ui(tmp_path):
    """A .pt2 in the debugger: B offers and refuses kinds by the program's own names, g reaches a callee."""
    from exported_models import export_model

    path = export_model(tmp_path / "convnet.pt2", "convnet")[0]

    async def run():
        app = TsdebugApp(args_for(path))
        async with app.run_test(size=(120, 40)) as pilot:
            await settle(pilot, app)
            await pilot.press("B")
            await pilot.pause()
            example = app.screen.placeholder.split()[0]
            assert example in app.breakpoint_book.kinds
            message = await breakpoint_command(pilot, app, "aten::_convolution")
            assert "no aten::_convolution" in message and "aten::conv2d.default" in message
            await pilot.press("escape")
            await pilot.pause()
            await pilot.press("g")
            await pilot.pause()
            await type_text(pilot, "batch_norm")
            await pilot.press("enter")
            await settle(pilot, app)
            m = app.machine
            assert m.current_node.kind.startswith("aten::batch_norm") and len(m.frames()) > 1
            x = m.current_node.inputs[0].name
            value, _ = await evaluate_in_ui(pilot, app, f"%{x}.abs().max()")
            assert torch.equal(value, m.current_frame.env[m.current_node.inputs[0].index].abs().max())

    asyncio.run(run())


def test_inlined_view_kinds_and_lines(convnet):
    """--inline: one graph, the same kinds; FILE:LINE finds the ops of a submodule's line there too."""
    s = Session(convnet, inline=True)
    s.start()
    book = BreakpointBook(s.breakpoints, s.program, inlined=True)
    assert book.graphs == [s.graph]
    assert "aten::_convolution" in book.kinds
    line = book.example_line()
    message = book.add(line)
    assert "node(s) in 1 graph(s)" in message
    m = s.machine
    assert m.continue_() == "breakpoint"
    assert m.live_node.id in s.breakpoints.lines[line]


def test_scripted_transformer_every_frame_before_it_runs(archive):
    """A third-party style model, scripted: nn.TransformerEncoder calls functions (F.multi_head_attention_forward)
    and layers in a loop over a ModuleList; g and B see into all of it before anything ran."""
    import models as M

    torch.manual_seed(0)
    # with grad on, the layers take the slow path (in eval without grad: one fused op)
    s = Session(archive(M.TransformerNet().eval(), "script"), grad=True)
    s.start(values=(torch.randn(2, 5, 16),))
    book = BreakpointBook(s.breakpoints, s.program)
    names = {g.short_name for g in book.graphs}
    assert {"TransformerEncoderLayer.forward", "functional.multi_head_attention_forward"} <= names
    assert not any(r.node.kind == "aten::scaled_dot_product_attention" for r in s.machine.timeline)
    # a kind only a function deep down has: set, then c stops there; torch's op over the values it reads
    # (constants among them) gives what the engine recorded
    assert "on" in book.add("scaled_dot_product_attention")
    m = s.machine
    assert m.continue_() == "breakpoint" and m.live_node.kind == "aten::scaled_dot_product_attention"
    node = m.live_node
    ins = [f"%{v.name}" for v in node.inputs]  # query, key, value, mask, dropout, causal; then keywords
    call = f"torch.ops.aten.scaled_dot_product_attention({', '.join(ins[:6])}, scale={ins[6]}, enable_gqa={ins[7]})"
    got = evaluate(call, live_scope(m))
    m.step()
    want = m.timeline.last_of(node.id).outputs[0]
    assert torch.allclose(got, want.detach(), atol=1e-6)


def test_conditions_read_the_history_as_it_was(loopy):
    """What e does after a run: the first recorded step where a conditional breakpoint held, the loop
    counter and the values read as they were before that step ran; 'if EXPR' on the selected node."""
    s = Session(loopy)
    s.start(values=(torch.randn(2, 4),))
    book = BreakpointBook(s.breakpoints, s.program)
    loop = next(n for n in s.graph.walk() if n.kind == "prim::Loop")
    call = next(n for n in loop.blocks[0].nodes if n.kind == "prim::CallMethod")
    book.add(f"{call.id} if %{loop.blocks[0].params[0].name} == 1")
    m = s.machine
    m.run()  # no stops: a whole run, as e makes
    hit = m.breakpoint_in_history(0)
    assert hit is not None and m.timeline[hit].node is call and m.timeline[hit].path[-1] == "iter 1"
    # the value the call reads, as of that step, is the one recorded as its input
    m.view = hit
    carried = call.inputs[1].name
    got = evaluate(f"%{carried}", live_scope(m))
    assert torch.equal(got, m.timeline[hit].inputs[1])
    # 'if EXPR' alone: on the selected node; one that never holds never stops
    book.remove(f"node:{call.id}")
    assert "if" in book.add("if %x.1.abs().sum() > 1e9", selected=call)
    assert m.breakpoint_in_history(0) is None
    s.restart()
    assert s.machine.continue_() == "finished"


def test_hostile_lines_get_one_line_answers(convnet):
    """Whatever is typed in B or !: a one-line answer, never a traceback; '%' in a string is no value."""
    s = Session(convnet)
    s.start()
    book = BreakpointBook(s.breakpoints, s.program)
    node = s.machine.current_node
    for text in ["", "::", ":", "a:b:c", "if (", "if %", "forward/999", "x.py:abc", "nan if %x.1 > 0", ":0",
                 "aten::", "🙂", "a if b if c", "prim::Constant", f"{node.id} if %zz > 0"]:
        with pytest.raises(BreakpointError) as err:
            book.add(text, node)
        assert err.value.message and "\n" not in err.value.message, text
    assert not s.breakpoints
    scope = live_scope(s.machine)
    for text in ["", "%", "%%", "%x.1.", "(%x.1", "1/0", "%x.1.no_such()", "%x.1[99]", "import os"]:
        with pytest.raises(EvalError) as err:
            evaluate(text, scope)
        assert err.value.message and "\n" not in err.value.message, text
    assert evaluate("'%d' % 3", scope) == "3"
    assert torch.equal(evaluate("%x.1 % 2", scope), s.inputs[0] % 2)
