"""Pilot tests: drive the debugger's keys on real saved models."""

import asyncio
from typing import List

import torch

from tsdebug.app import TsdebugApp
from tsdebug.cli import build_open_parser
from tsdebug.widgets import CallStack, Inspector, ProgramView, StatusBar
from tsdebug.widgets.goto import GotoScreen, fuzzy_score
from tsdebug.widgets.help import HelpScreen
from tsdebug.widgets.breakpoints import BreakpointsScreen


def args_for(path, *extra):
    return build_open_parser().parse_args([path, *extra])


async def settle(pilot, app):
    """Wait until the machine's worker has finished and the screen caught up."""
    for _ in range(200):
        await pilot.pause()
        if app.state not in ("running", "loading"):
            break
        await asyncio.sleep(0.01)
    await pilot.pause()


def test_step_into_over_out_and_back(convnet):
    async def run():
        app = TsdebugApp(args_for(convnet))
        async with app.run_test(size=(120, 40)) as pilot:
            await settle(pilot, app)
            m = app.machine
            assert app.state == "paused"
            program = app.query_one(ProgramView)
            assert program.graph.name == "forward"
            # step until a call, then into it
            while m.current_node.kind != "prim::CallMethod":
                await pilot.press("s")
                await settle(pilot, app)
            await pilot.press("s")
            await settle(pilot, app)
            assert len(m.frames()) == 2
            assert program.graph is m.frames()[-1].graph
            stack = app.query_one(CallStack)
            assert stack.option_count == 2
            # step over runs a whole call
            depth = len(m.frames())
            while m.current_node.kind != "prim::CallMethod":
                await pilot.press("n")
                await settle(pilot, app)
            await pilot.press("n")
            await settle(pilot, app)
            assert len(m.frames()) == depth
            # return to the caller
            await pilot.press("r")
            await settle(pilot, app)
            assert len(m.frames()) == 1
            steps = len(m.timeline)
            # back in time, then forward again
            await pilot.press("p")
            await settle(pilot, app)
            assert m.view is not None and app.state == "history"
            viewed = m.current_node
            assert program.selected_node is viewed
            await pilot.press("s")
            await settle(pilot, app)
            assert len(m.timeline) == steps  # moving through history runs nothing
            assert m.view is None

    asyncio.run(run())


def test_breakpoint_continue_and_inspect(convnet):
    async def run():
        app = TsdebugApp(args_for(convnet, "--inline"))
        async with app.run_test(size=(120, 40)) as pilot:
            await settle(pilot, app)
            program = app.query_one(ProgramView)
            m = app.machine
            target = next(i for i, r in enumerate(program.rows) if r.node and r.node.kind == "aten::linear")
            program.selected = target
            await pilot.press("b")
            assert program.rows[target].node.id in app.session.breakpoints.nodes
            await pilot.press("c")
            await settle(pilot, app)
            assert m.current_node.kind == "aten::linear"
            assert "breakpoint" in app.query_one(StatusBar).plain
            # inspect the input about to go in: a tensor with statistics
            inspector = app.query_one(Inspector)
            text = inspector.plain
            assert "aten::linear" in text and "float32[1,16]" in text and "min" in text
            # the executed rows show their outputs
            conv_row = next(r for r in program.rows if r.node and r.node.kind == "aten::_convolution")
            assert program.state_of(conv_row.node).output.startswith("float32[1,8,16,16]")
            await pilot.press("c")
            await settle(pilot, app)
            assert app.state == "finished"

    asyncio.run(run())


def test_kind_and_nan_breakpoints(archive):
    class Logs(torch.nn.Module):
        def forward(self, x):
            y = torch.relu(x) - 1
            return torch.log(y).sum()

    path = archive(Logs(), "script")

    async def run():
        app = TsdebugApp(args_for(path, "--input", "float32[8]"))
        async with app.run_test(size=(100, 30)) as pilot:
            await settle(pilot, app)
            await pilot.press("w")
            assert app.session.breakpoints.nan_inf
            await pilot.press("c")
            await settle(pilot, app)
            assert app.machine.timeline[-1].node.kind == "aten::log"
            await pilot.press("w", "R")
            await settle(pilot, app)
            await pilot.press("B")
            await pilot.pause()
            assert isinstance(app.screen, BreakpointsScreen)
            inp = app.screen.query_one("#breakpoints-input")
            inp.value = "aten::sum"
            await pilot.press("enter")
            await pilot.pause()
            assert "aten::sum" in app.session.breakpoints.kinds
            await pilot.press("escape")
            await pilot.pause()
            await pilot.press("c")
            await settle(pilot, app)
            assert app.machine.current_node.kind == "aten::sum"

    asyncio.run(run())


def test_goto_search_help_and_inputs(control):
    async def run():
        app = TsdebugApp(args_for(control, "--input", "float32[2,4]", "--input", "int:2"))
        async with app.run_test(size=(120, 40)) as pilot:
            await settle(pilot, app)
            await pilot.press("question_mark")
            await pilot.pause()
            assert isinstance(app.screen, HelpScreen)
            await pilot.press("escape")
            await pilot.pause()
            await pilot.press("g")
            await pilot.pause()
            assert isinstance(app.screen, GotoScreen)
            app.screen.query_one("#goto-input").value = "aten::format"
            await pilot.pause()
            await pilot.press("enter")
            await settle(pilot, app)  # g goes there: the machine runs until the node is next
            assert app.machine.current_node.kind == "aten::format"
            program = app.query_one(ProgramView)
            assert program.selected_node.kind == "aten::format"
            await pilot.press("slash")
            await pilot.pause()
            app.screen.query_one("#prompt-input").value = "stack"
            await pilot.press("enter")
            await pilot.pause()
            assert "stack" in program.selected_node.kind
            # new inputs restart the machine
            await pilot.press("i")
            await pilot.pause()
            app.screen.query_one("#prompt-input").value = "float32[3,4] int:5 str:max"
            await pilot.press("enter")
            await settle(pilot, app)
            assert app.session.inputs[1:] == (5, "max") and app.session.inputs[0].shape == (3, 4)
            await pilot.press("c")
            await settle(pilot, app)
            assert app.state == "finished"
            assert app.machine.outputs[1].startswith("n=5")
            # bad inputs: a message, the old inputs stay
            await pilot.press("i")
            await pilot.pause()
            app.screen.query_one("#prompt-input").value = "nonsense"
            await pilot.press("enter")
            await pilot.pause()
            assert app.session.inputs[1] == 5

    asyncio.run(run())


def test_model_error_stays_open(convnet):
    async def run():
        app = TsdebugApp(args_for(convnet, "--input", "float32[1,5,16,16]"))
        async with app.run_test(size=(100, 30)) as pilot:
            await settle(pilot, app)
            await pilot.press("c")
            await settle(pilot, app)
            assert app.state == "error"
            m = app.machine
            program = app.query_one(ProgramView)
            assert program.selected_node is m.error.node
            assert program.state_of(m.error.node).error
            assert "5 channels" in app.query_one(StatusBar).plain or "channels" in m.error.message
            # fix the inputs and carry on
            await pilot.press("i")
            await pilot.pause()
            app.screen.query_one("#prompt-input").value = "float32[1,3,16,16]"
            await pilot.press("enter")
            await settle(pilot, app)
            await pilot.press("c")
            await settle(pilot, app)
            assert app.state == "finished"

    asyncio.run(run())


def test_bad_file_stays_open(tmp_path):
    bad = tmp_path / "weights.pt"
    torch.save({"w": torch.ones(2)}, bad)

    async def run():
        app = TsdebugApp(args_for(str(bad)))
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(pilot, app)
            assert app.state == "error"
            assert "state dict" in app.load_error
            await pilot.press("n", "c", "b", "g")  # nothing to do, nothing breaks
            await pilot.pause()
            assert app.is_running

    asyncio.run(run())


def test_cancel_a_long_continue(archive):
    class Spin(torch.nn.Module):
        def forward(self, x: torch.Tensor, n: int) -> torch.Tensor:
            for i in range(n):
                x = x + 1
            return x

    path = archive(Spin(), "script")

    async def run():
        app = TsdebugApp(args_for(path, "--input", "float32[2]", "--input", "int:100000000"))
        async with app.run_test(size=(100, 30)) as pilot:
            await settle(pilot, app)
            await pilot.press("c")
            await asyncio.sleep(0.3)
            await pilot.pause()
            assert app.state == "running"
            await pilot.press("escape")
            await settle(pilot, app)
            assert app.state == "paused"
            assert not app.machine.finished and len(app.machine.timeline) > 10

    asyncio.run(run())


def test_fold_blocks(control):
    async def run():
        app = TsdebugApp(args_for(control, "--input", "float32[2,4]", "--input", "int:2"))
        async with app.run_test(size=(120, 40)) as pilot:
            await settle(pilot, app)
            program = app.query_one(ProgramView)
            n_rows = len(program.rows)
            loop_row = next(i for i, r in enumerate(program.rows) if r.node and r.node.kind == "prim::Loop")
            program.selected = loop_row
            await pilot.press("f")
            assert len(program.rows) < n_rows
            await pilot.press("f")
            assert len(program.rows) == n_rows

    asyncio.run(run())


def test_fuzzy_score():
    assert fuzzy_score("conv", "aten::conv2d") == 6
    assert fuzzy_score("acd", "aten::conv2d") >= 1000
    assert fuzzy_score("zz", "aten::conv2d") is None


def test_eager_comparison_keys(archive):
    import os

    import diff_models as D

    torch.manual_seed(0)
    path = archive(D.FrozenBranch(), "trace", example=(torch.rand(2, 6) + 0.5,))
    eager = os.path.join(os.path.dirname(__file__), "diff_models.py") + ":FrozenBranch"

    async def run():
        # without --eager: it says what it needs, nothing runs
        app = TsdebugApp(args_for(path, "--input", "float32[2,6]:-1..-0.5"))
        async with app.run_test(size=(120, 40)) as pilot:
            await settle(pilot, app)
            await pilot.press("e")
            await settle(pilot, app)
            assert app.diff_result is None and app.state == "paused"
        app = TsdebugApp(args_for(path, "--input", "float32[2,6]:-1..-0.5", "--eager", eager))
        async with app.run_test(size=(120, 40)) as pilot:
            await settle(pilot, app)
            await pilot.press("e")
            await settle(pilot, app)
            assert app.diff_result is not None and app.compare_on
            await pilot.press("D")
            await settle(pilot, app)
            program = app.query_one(ProgramView)
            node = program.selected_node
            assert node.kind == "aten::tanh"
            assert program.state_of(node).diverged
            assert "eager reference (DIFFERS)" in app.query_one(Inspector).plain
            await pilot.press("right_square_bracket")
            await settle(pilot, app)
            later = app.machine.view
            assert later is not None and later > app.diff_result.report.first.record.index
            await pilot.press("left_square_bracket")
            await settle(pilot, app)
            assert app.machine.view == app.diff_result.report.first.record.index
            await pilot.press("e")  # off again: no marks
            await settle(pilot, app)
            assert not program.state_of(node).diverged

    asyncio.run(run())


def test_findings_pane(archive):
    import trap_models as T

    path = archive(T.DataBranch(), "trace", example=(torch.ones(2, 3),))

    async def run():
        from tsdebug.widgets import SourcePane
        from tsdebug.widgets.findings import FindingsScreen

        app = TsdebugApp(args_for(path))
        async with app.run_test(size=(120, 40)) as pilot:
            await settle(pilot, app)
            await pilot.press("L")
            await pilot.pause()
            assert isinstance(app.screen, FindingsScreen)
            await pilot.press("enter")
            await pilot.pause()
            finding = app._lint.findings[0]
            assert finding.kind == "frozen-branch"
            program = app.query_one(ProgramView)
            assert program.selected_node.id == finding.nodes[0]
            assert T.DataBranch.LINE in app.query_one(SourcePane).plain

    asyncio.run(run())


def test_module_groups_fold_in_the_inlined_view(convnet):
    async def run():
        app = TsdebugApp(args_for(convnet, "--inline"))
        async with app.run_test(size=(120, 40)) as pilot:
            await settle(pilot, app)
            program = app.query_one(ProgramView)
            headers = [i for i, r in enumerate(program.rows) if r.group]
            assert any(program.rows[i].header.endswith("layer1.0.conv1") for i in headers)
            n_rows = len(program.rows)
            target = next(i for i in headers if program.rows[i].header.endswith("layer1.0.bn1"))
            program.selected = target + 1  # a node inside the group
            await pilot.press("f")
            assert len(program.rows) < n_rows
            assert program.rows[program.selected].header.startswith("▸")
            await pilot.press("f")
            assert len(program.rows) == n_rows
            # stepping onto a node in a folded group unfolds it
            program.selected = target
            await pilot.press("f")
            await pilot.press("c")
            await settle(pilot, app)

    asyncio.run(run())


class TakesImageList(torch.nn.Module):
    def forward(self, images: List[torch.Tensor]) -> torch.Tensor:
        return torch.stack(images).sum()


def test_messages_with_brackets_are_shown_whole(archive):
    """Types and shapes hold square brackets: a toast must not read them as markup."""
    from textual.widgets._toast import Toast

    path = archive(TakesImageList(), "script")

    async def run():
        app = TsdebugApp(args_for(path))
        async with app.run_test(size=(100, 30), notifications=True) as pilot:
            await settle(pilot, app)
            assert app.state == "error"
            assert "images: List[Tensor]" in app.load_error
            for _ in range(20):
                await pilot.pause()
                toasts = list(app.screen.query(Toast))
                if toasts:
                    break
            shown = " ".join(str(t.render()) for t in toasts)
            assert "List[Tensor]" in shown.replace("\n", " ")
            # the example fits the parameter: a list of images
            assert "--input '[float32[3,224,224]]'" in app.load_error

    asyncio.run(run())


def test_findings_pane_lists_the_surest_first(archive):
    """A self.training check traced in eval mode (low) after a branch on data (medium)."""
    import trap_models as T

    class Both(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.flag = T.TrainingFlag()
            self.data = T.DataBranch()

        def forward(self, x):
            return self.data(self.flag(x))

    path = archive(Both(), "trace", example=(torch.ones(2, 3),))

    async def run():
        from textual.widgets import Label, OptionList

        app = TsdebugApp(args_for(path))
        async with app.run_test(size=(120, 40)) as pilot:
            await settle(pilot, app)
            await pilot.press("L")
            await pilot.pause()
            head = str(app.screen.query(Label).first().render())
            assert head.startswith("2 findings (1 medium, 1 low) of what tracing froze"), head
            options = app.screen.query_one(OptionList)
            first = options.get_option_at_index(0)
            assert "frozen-branch" in str(first.prompt) and "medium" in str(first.prompt)
            await pilot.press("enter")
            await pilot.pause()
            assert app.query_one(ProgramView).selected_node.id in app._lint.findings[int(first.id)].nodes

    asyncio.run(run())


def test_ui_quits_when_its_terminal_goes_away():
    """A terminal closed under the UI without a SIGHUP reaching it (`make demo` in a tmux pane whose
    server is killed): Textual reads end-of-file from it forever, a core at 100%; the UI quits."""
    import fcntl
    import os
    import pty
    import select
    import struct
    import subprocess
    import sys
    import termios
    import time

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    # a new session: the pty is not its controlling terminal, so closing it sends no SIGHUP
    proc = subprocess.Popen([sys.executable, "-m", "tsdebug.cli", "demo"], stdin=slave, stdout=slave, stderr=slave,
                            start_new_session=True, env={**os.environ, "TERM": "xterm-256color"})
    os.close(slave)
    try:
        screen, deadline = b"", time.monotonic() + 90
        while b"inspector" not in screen and time.monotonic() < deadline and proc.poll() is None:
            if select.select([master], [], [], 0.5)[0]:
                screen += os.read(master, 65536)
        assert b"inspector" in screen, screen[-2000:]
    finally:
        os.close(master)  # the terminal goes away
    try:
        assert proc.wait(timeout=30) == 129
    finally:
        proc.kill()
