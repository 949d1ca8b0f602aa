"""The Textual application: ``tsdebug MODEL``.

The app drives ``engine.Session``; it never re-implements engine logic.  Every
move of the machine runs in a worker thread, so the screen stays live, and
Esc or Ctrl+C cancels a running ``continue`` where it is.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from functools import partial
from typing import Any, Callable

from textual import events
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.reactive import reactive
from textual.widgets import Footer

from engine import Session, Stop, TsdebugError
from engine.ir import Node
from engine.run.values import short_text
from engine.view import describe, step_past_plumbing, unmangle
from tsdebug.widgets import CallStack, Inspector, ProgramView, RowState, SourcePane, StatusBar
from tsdebug.widgets.graphview import GraphView
from tsdebug.widgets.goto import GotoScreen, Target
from tsdebug.widgets.help import HelpScreen
from tsdebug.widgets.prompt import PromptScreen
from tsdebug.widgets.breakpoints import BreakpointsScreen
from tsdebug.widgets.commands import TsdebugCommands
from tsdebug.widgets.evaluate import EvaluateScreen
from tsdebug.widgets.watches import WatchList

#: Keys of the program pane and inspector, for the help screen (the app's own
#: bindings are listed from BINDINGS).
PANE_KEYS = [
    ("↑ ↓ j k", "move the selection"),
    ("PgUp PgDn Home End", "page, first, last row"),
    ("Enter / double click", "show the selected node's last value"),
    ("f", "fold or unfold the If/Loop block, or the module group (inlined view), at the selection"),
    ("M", "show or hide module paths"),
    ("F", "show TorchScript's plumbing (attribute reads, constant lists, break flags); n then stops at it"),
    ("x", "expand large lists, tuples and dicts in the inspector"),
    ("Tab / Shift+Tab", "move between panes"),
    ("graph (v): j k, z, + -", "select the next or previous box, zoom out or in, expand or fold modules"),
    ("watches: Delete / d", "remove the highlighted watch"),
    ("breakpoints (B): ↓ then Delete / d", "remove the highlighted breakpoint"),
    ("ctrl+p", "command palette: every command by name; Screenshot saves an SVG in the current folder"),
]

#: Key names as the help and the palette show them.
_KEY_TEXT = {"question_mark": "?", "slash": "/", "full_stop": ".", "right_square_bracket": "]",
             "left_square_bracket": "[", "exclamation_mark": "!", "colon": ":"}


def key_text(keys: str) -> str:
    """``exclamation_mark,colon`` -> ``! :``."""
    return " ".join(_KEY_TEXT.get(k, k) for k in keys.split(","))


class TsdebugApp(App):
    CSS_PATH = "app.tcss"
    TITLE = "tsdebug"
    COMMANDS = App.COMMANDS | {TsdebugCommands}

    BINDINGS = [
        Binding("n", "step_over", "next"),
        Binding("s", "step_into", "step"),
        Binding("r", "step_out", "return"),
        Binding("c", "continue", "cont"),
        Binding("p", "step_back", "back"),
        Binding("P", "back_over", "back over a call: a whole call, If or Loop as one step", show=False),
        Binding("b", "toggle_breakpoint", "break"),
        Binding("B", "breakpoints", "breakpoints: list and delete; set on a kind, FILE:LINE, a condition (if EXPR)",
                show=False),
        Binding("exclamation_mark,colon", "evaluate", "evaluate an expression over the values here (%x.1.abs().max())",
                show=False),
        Binding("W", "watch", "watch an expression: shown and updated at every step (again: removed)", show=False),
        Binding("w", "break_nan", "break on NaN/Inf", show=False),
        Binding("u", "run_to", "run until the selected node", show=False),
        Binding("g", "goto", "goto"),
        Binding("slash", "search", "search", show=False),
        Binding("i", "set_inputs", "inputs", show=False),
        Binding("R", "restart", "restart", show=False),
        Binding("e", "eager", "eager comparison on/off (needs --eager)", show=False),
        Binding("C", "cpp_check", "C++ check: run in libtorch, compare with Python bit for bit", show=False),
        Binding("D", "first_divergence", "jump to the first divergence", show=False),
        Binding("L", "findings", "findings: what tracing froze (lint)", show=False),
        Binding("v", "toggle_graph", "graph view (j/k select, z compact, +/- collapse, arrows pan)", show=False),
        Binding("right_square_bracket", "next_divergence", "next divergence", show=False),
        Binding("left_square_bracket", "prev_divergence", "previous divergence", show=False),
        Binding("full_stop", "show_current", "select the current node", show=False),
        Binding("question_mark", "help", "help"),
        Binding("q", "quit", "quit"),
        Binding("escape", "cancel", "cancel a running continue", show=False),
        Binding("ctrl+c", "cancel", "cancel a running continue", show=False, priority=True),
    ]

    state: reactive[str] = reactive("loading")

    def __init__(self, args: argparse.Namespace, session: Session | None = None):
        super().__init__()
        self.args = args
        self.session = session
        self._terminal: int | None = None  # the tty read for keys, watched once mounted
        self.load_error: str | None = None
        self.display_frame: int | None = None  # a frame chosen in the call stack
        self.browsing: str | None = None  # a node reached with "go to", outside the stack
        self.last_search = ""
        self._move_started = 0.0
        self._shown_key: tuple | None = None
        self._messages_seen = 0  # lines of the model's prints and warnings already shown
        self.diff_result = None  # engine.session.DiffResult, once ``e`` ran the comparison
        self.cpp_report = None  # engine.check.cpp.CppReport, once ``C`` ran the C++ check
        self._parting_records: set[int] = set()  # steps where the runs part, marked beside divergent ones
        self.compare_on = False
        self._diffs_by_record: dict = {}
        self.watches: list[str] = []  # expressions of the watch list (W), evaluated at every step
        self.evaluated: list[str] = []  # lines typed in the evaluate screen (!), for recall
        self._breakpoint_book = None  # engine.run.breaks.BreakpointBook, made on first use

    def notify(self, message: str, *, title: str = "", severity: str = "information",
               timeout: float | None = None, markup: bool = False) -> None:
        """A toast, as plain text by default: messages hold types and shapes (``List[Tensor]``,
        ``float32[1,3]``) that markup would read as tags and drop.  Toasts stay a few seconds, a few
        lines (the status bar keeps the whole message), and the next key dismisses them."""
        message, timeout = toast_text(message, severity, timeout)
        older = list(self._notifications)
        for note in older[: max(len(older) - TOAST_MAX + 1, 0)]:
            self._unnotify(note, refresh=False)  # the newest stay; the status bar has said the rest
        super().notify(message, title=title, severity=severity, timeout=timeout, markup=markup)

    async def on_event(self, event) -> None:
        # A toast is read by the time the next key comes: it must not cover the panes.  Cleared here,
        # before the key reaches a binding, so the toast that key raises stays.
        if isinstance(event, events.Key) and not event.is_forwarded and len(self._notifications):
            for note in list(self._notifications):
                self._unnotify(note, refresh=False)
            self._refresh_notifications()
        await super().on_event(event)

    def _past_plumbing(self, stop: Any, backward: bool = False) -> Any:
        """The stop moved past TorchScript's plumbing, unless P shows it (engine.view.step_past_plumbing)."""
        if self.query_one(ProgramView).show_plumbing or self.machine is None or isinstance(stop, TsdebugError):
            return stop
        return step_past_plumbing(self.machine, self.session.program, stop, backward)

    # ---------------------------------------------------------------- layout

    def compose(self) -> ComposeResult:
        with Horizontal(id="main"):
            with Vertical(id="left"):
                yield ProgramView(id="program")
                yield GraphView(id="graph")
                yield SourcePane(id="source")
            with Vertical(id="right"):
                yield Inspector(id="inspector")
                yield WatchList(id="watches")
                yield CallStack(id="stack")
        yield StatusBar(id="status")
        yield Footer()

    def on_resize(self, event) -> None:
        # Small terminals give the program pane the rows.
        small = event.size.height < 30
        self.query_one(SourcePane).styles.height = 7 if small else 9
        self.query_one(CallStack).styles.height = 5 if small else 7

    def on_mount(self) -> None:
        program = self.query_one(ProgramView)
        program.border_title = "program"
        program.state_of = self.row_state
        graph_view = self.query_one(GraphView)
        graph_view.display = False
        graph_view.border_title = "graph"
        graph_view.state_of = self.box_state
        self.query_one(Inspector).border_title = "inspector"
        self.query_one(Inspector).graph_of = self._graph_of_node
        self.query_one(CallStack).border_title = "call stack"
        watches = self.query_one(WatchList)
        watches.border_title = "watches (W, Delete)"
        watches.display = False
        self.query_one(SourcePane).border_title = "source"
        program.focus()
        self._terminal = _terminal_fd()
        self.set_interval(0.2, self._tick)
        if self.session is None:
            self.status("loading", message=f"loading {self.args.model} …")
            self.run_worker(self._load, thread=True, exclusive=True, group="move")
        else:
            self._loaded()

    # --------------------------------------------------------------- loading

    def _load(self) -> None:
        args = self.args
        try:
            session = Session(
                args.model, device=args.device, libraries=tuple(args.library), method=args.method,
                imports=tuple(getattr(args, "imports", ())),
                inline=args.inline, grad=args.grad, budget=args.record_budget, seed=args.seed,
            )
        except TsdebugError as exc:
            self.call_from_thread(self._load_failed, exc.message)
            return
        except Exception as exc:  # a bug, shown as one line rather than a traceback
            self.call_from_thread(self._load_failed, f"internal error: {type(exc).__name__}: {exc}")
            return
        self.session = session
        try:
            session.start(specs=args.input or None, inputs_file=args.inputs)
        except TsdebugError as exc:
            self.load_error = exc.message
        self.call_from_thread(self._loaded)

    def _load_failed(self, message: str) -> None:
        self.load_error = message
        self.state = "error"
        self.query_one(ProgramView).border_title = "program (nothing loaded)"
        self.query_one(Inspector).show(None, None)
        self.query_one(SourcePane).update(message)
        self.status("error", message=message)
        self.notify(message, title="cannot open the model", severity="error", timeout=30)

    def _loaded(self) -> None:
        session = self.session
        self.title = f"tsdebug {session.path}"
        kinds = ", ".join(f"{m}: {k}" for m, k in session.method_kinds().items())
        if self.load_error:
            self.state = "error"
            self.notify(f"{self.load_error}\nPress i to give inputs.", title="inputs", severity="error", timeout=30)
            self.query_one(ProgramView).show_graph(session.graph)
            self.status("error", message=self.load_error)
            return
        self.notify(f"{kinds}\ninputs: {session.input_source}", title=session.path, timeout=4)
        self._past_plumbing(Stop.STEP)  # the first stop is the first node that computes
        self.after_move(None)

    # ------------------------------------------------------------ view model

    @property
    def machine(self):
        return self.session.machine if self.session is not None else None

    def frame_start(self) -> int:
        """Index of the record that entered the frame on screen (-1: the top frame)."""
        m = self.machine
        if m is None:
            return -1
        if m.view is not None:
            return m.timeline[m.view].frame
        frames = m.frames()
        if not frames:
            return -1
        idx = self.display_frame if self.display_frame is not None else len(frames) - 1
        return frames[idx].start

    def _graph_of_node(self, node: Node):
        program = self.query_one(ProgramView)
        if program.graph is not None and program.graph.find(node.id) is node:
            return program.graph
        return self.session.program.graph_of(node.id) if self.session is not None else None

    def row_state(self, node: Node) -> RowState:
        m = self.machine
        if m is None:
            return RowState()
        bps = self.session.breakpoints
        bp = node.id in bps.nodes or node.kind in bps.kinds
        tl = m.timeline
        upto = m.view
        start = self.frame_start() if self.browsing is None else -1
        count = tl.count_of(node.id, upto) - (tl.count_of(node.id, start) if start >= 0 else 0)
        rec = tl.last_of(node.id, upto) if count > 0 else None
        output = ""
        outs = rec.peek_outputs() if rec is not None else None  # a shape to show: no recipe needs running
        if outs:
            output = short_text(outs[0], 28)
        current = m.current_node is node
        error = m.error is not None and m.error.node is node
        if error:
            output = "raised"
        diverged = False
        if self.compare_on and self.diff_result is not None and rec is not None:
            d = self._diffs_by_record.get(rec.index)
            diverged = (d is not None and not d.metrics.close) or rec.index in self._parting_records
        return RowState(executed=count, output=output, breakpoint=bp, current=current, error=error,
                        path=rec.module_path if rec is not None else "", diverged=diverged)

    def status(self, state: str | None = None, message: str = "") -> None:
        m = self.machine
        bar = self.query_one(StatusBar)
        if m is None:
            bar.show(state or self.state, 0, message=message)
            return
        node = m.current_node
        where = ""
        if node is not None:
            where = f"{node.kind} {unmangle(node.id)}"
            if m.view is not None:
                where = f"#{m.view}/{len(m.timeline) - 1} {where}"
        tl = m.timeline
        bar.show(state or self.state, len(tl), where, tl.nbytes, m.budget, tl.dropped, message,
                 thinned=tl.thinned, forgotten=tl.forgotten)

    def after_move(self, stop: Any, name: str = "") -> None:
        """Bring every pane up to date with the machine."""
        m = self.machine
        if m is None:
            return
        self.state = m.state
        self.display_frame = None
        self.browsing = None
        program = self.query_one(ProgramView)
        stack = self.query_one(CallStack)
        if m.view is not None:
            rec = m.timeline[m.view]
            graph = self.session.program.graph_of(rec.node.id)
            stack.show([], history_path=rec.path)
            program.show_graph(graph, select=rec.node.id)
            program.border_title = f"program · {graph.short_name} · recorded step {m.view}"
        else:
            frames = m.frames()
            stack.show(frames)
            if frames:
                top = frames[-1]
                program.show_graph(top.graph, select=top.node.id if top.node else None)
                program.border_title = f"program · {top.graph.short_name}" + (f" · {top.module_path}" if top.module_path else "")
            else:
                program.show_graph(self.session.graph)
                last = next((r for r in reversed(m.timeline.records) if r.node.kind != "prim::Constant" and r.depth == 1), None)
                if last is not None:
                    program.select_node(last.node.id)
                program.border_title = f"program · {self.session.graph.short_name} · finished"
        program.refresh_rows()
        self.show_selected()
        self.refresh_watches()
        graph_view = self.query_one(GraphView)
        if graph_view.display:
            self._refresh_graph_view()
            graph_view.refresh()
        said = self.session.program.messages.lines
        if len(said) > self._messages_seen:
            # what the model printed or warned on the way (prim::Print, warnings.warn)
            new = said[self._messages_seen:]
            self._messages_seen = len(said)
            text = "\n".join(line[:200] for line in new[-3:])
            if len(new) > 3:
                text = f"… {len(new) - 3} more\n" + text
            self.notify(text, title="the model said", timeout=8)
        message = ""
        if isinstance(stop, TsdebugError):
            message = stop.message
            self.notify(stop.message, severity="error", timeout=15)
        elif stop == Stop.BREAKPOINT:
            message = "breakpoint"
            detail = getattr(m, "stop_reason_detail", "")
            self.notify(detail or "breakpoint", timeout=3)
        elif stop == Stop.CANCELLED:
            message = "cancelled"
            self.notify("stopped where it was", title="cancelled", timeout=3)
        elif stop == Stop.ERROR or (m.error is not None and stop is not None):
            message = m.error.message if m.error else ""
            self.notify(message, title="the model raised", severity="error", timeout=20)
        elif stop == Stop.FINISHED and name:
            message = f"finished: outputs {short_text(m.outputs, 40)}; R restarts"
            self.notify(message, timeout=5)
        self.status(message=message)

    def show_selected(self) -> None:
        m = self.machine
        program = self.query_one(ProgramView)
        node = program.selected_node
        inspector = self.query_one(Inspector)
        source = self.query_one(SourcePane)
        if node is None or m is None:
            inspector.show(None, None)
            source.show(None)
            return
        tl = m.timeline
        key = (node.id, len(tl), m.view, m.error is not None, self.display_frame, self.browsing, self.compare_on)
        if key == self._shown_key:
            return  # already on screen (a move and its selection message both ask)
        self._shown_key = key
        start = self.frame_start() if self.browsing is None else -1
        rec = tl.last_of(node.id, m.view)
        if rec is not None and rec.index <= start:
            rec = None
        live = None
        note = ""
        if m.view is None and node is m.live_node and m.current_frame is not None:
            # about to run: its inputs are known now (in a loop, this iteration's, not the last one's)
            env = m.current_frame.env
            from engine.run.timeline import StepRecord

            rec = StepRecord(len(tl), node, m.current_path, node.module_path or m.current_frame.module_path,
                             len(m.stack), [env[v.index] for v in node.inputs])
            rec.status = "next"
            note = ""
        if m.error is not None and m.error.node is node:
            note = m.error.message
        reference = None
        if self.compare_on and self.diff_result is not None and rec is not None:
            reference = self._diffs_by_record.get(rec.index)
        inspector.show(node, rec, live, note, reference)
        loc = program.nearest_source(node)
        source.show(loc, m.user_location(node) if m.view is None and loc is node.source else None)

    def on_program_view_node_selected(self, event: ProgramView.NodeSelected) -> None:
        if self.state in ("running", "loading"):
            return
        self.show_selected()
        if event.activated:
            self.query_one(Inspector).scroll_home(animate=False)

    def on_call_stack_frame_chosen(self, event: CallStack.FrameChosen) -> None:
        m = self.machine
        if m is None or m.view is not None:
            return
        frames = m.frames()
        if not 0 <= event.index < len(frames):
            return
        self.display_frame = event.index
        f = frames[event.index]
        program = self.query_one(ProgramView)
        program.show_graph(f.graph, select=f.node.id if f.node else None)
        program.border_title = f"program · {f.graph.short_name}" + (f" · {f.module_path}" if f.module_path else "")
        program.focus()

    def _tick(self) -> None:
        if self._terminal is not None and not os.isatty(self._terminal):
            # The terminal is gone (its window closed, a tmux server killed) and no SIGHUP came:
            # Textual would read end-of-file from it forever, a core at 100%.
            self._terminal = None
            if self.machine is not None:
                self.machine.cancel()
            self.exit(return_code=129)
            return
        if self.state == "running" and self.machine is not None:
            self.status("running", message=f"{time.perf_counter() - self._move_started:.1f}s  (Esc cancels)")

    # ------------------------------------------------------------------ moves

    def _move(self, name: str, fn: Callable[[], str]) -> None:
        m = self.machine
        if m is None or self.state in ("running", "loading"):
            self.bell()
            return
        if m.error is not None and name not in ("back",):
            self.notify(f"{m.error.message}\nR restarts, i sets new inputs.", title="the model raised",
                        severity="error", timeout=8)
            return
        self._move_started = time.perf_counter()
        node = m.current_node
        if name in ("step", "next") and m.view is None and node is not None and not node.is_control:
            # One leaf op: run it here, without a thread hop (keys stay snappy).
            self._move_worker(name, fn, sync=True)
            return
        self.state = "running"
        self.run_worker(partial(self._move_worker, name, fn), thread=True, exclusive=True, group="move")

    def _move_worker(self, name: str, fn: Callable[[], str], sync: bool = False) -> None:
        try:
            stop: Any = fn()
        except TsdebugError as exc:
            stop = exc
        except Exception as exc:  # never a traceback in front of the user
            stop = TsdebugError(f"internal error in {name}: {type(exc).__name__}: {exc}")
        if sync:
            self.after_move(stop, name)
        else:
            self.call_from_thread(self.after_move, stop, name)

    def action_step_over(self) -> None:
        self._move("next", lambda: self._past_plumbing(self.machine.step_over()))

    def action_step_into(self) -> None:
        self._move("step", lambda: self._past_plumbing(self.machine.step()))

    def action_step_out(self) -> None:
        self._move("return", lambda: self._past_plumbing(self.machine.step_out()))

    def action_continue(self) -> None:
        self._move("continue", lambda: self.machine.continue_())

    def action_back_over(self) -> None:
        m = self.machine
        if m is None or self.state in ("running", "loading"):
            return
        before = m.view
        m.back_over()
        if m.view == before:
            self.notify("at the first recorded step", timeout=2)
        self.after_move(None, "back")

    def action_step_back(self) -> None:
        m = self.machine
        if m is None or self.state in ("running", "loading"):
            return
        before = m.view
        self._past_plumbing(m.back(), backward=True)
        if m.view == before:
            gone = m.timeline.forgotten_note()
            self.notify(gone or "at the first recorded step", timeout=5 if gone else 2)
        self.after_move(None, "back")

    def action_run_to(self) -> None:
        node = self.query_one(ProgramView).selected_node
        if node is None:
            return
        graph = self.session.program.graph_of(node.id)
        if graph is not None and graph.inlined != self.session.inline:
            self.notify("that node belongs to the other view (--inline): the machine never reaches it",
                        severity="warning", timeout=5)
            return
        self._move("until", lambda: self.machine.run_to(node.id))

    def action_cancel(self) -> None:
        if self.state == "running" and self.machine is not None:
            self.machine.cancel()
        elif isinstance(self.screen, (HelpScreen, PromptScreen, GotoScreen, EvaluateScreen, BreakpointsScreen)):
            self.screen.dismiss(None)
        elif self.machine is not None and self.machine.view is not None:
            self.machine.go_live()
            self.after_move(None)
        else:
            self.notify("q quits", timeout=2)

    # ------------------------------------------------------------ breakpoints

    def action_toggle_breakpoint(self) -> None:
        node = self.query_one(ProgramView).selected_node
        if node is None or self.session is None:
            return
        on = self.session.breakpoints.toggle_node(node.id)
        self.notify(f"breakpoint {'set on' if on else 'removed from'} {node.kind} {node.id}", timeout=3)
        self.query_one(ProgramView).refresh_rows()

    @property
    def breakpoint_book(self):
        """The engine's editor of the session's breakpoints (it walks the program's graphs once)."""
        from engine.run.breaks import BreakpointBook

        book = self._breakpoint_book
        if book is None or book.breakpoints is not self.session.breakpoints:
            book = self._breakpoint_book = BreakpointBook(self.session.breakpoints, self.session.program,
                                                          self.session.method, self.session.inline)
        return book

    def action_breakpoints(self) -> None:
        """The breakpoint list: see and delete; set by kind, FILE:LINE, node id, condition (``B``)."""
        if self.session is None:
            return
        from engine.run.breaks import BreakpointError

        book = self.breakpoint_book
        selected = self.query_one(ProgramView).selected_node

        def add(text: str) -> tuple[str, bool]:
            try:
                message = book.add(text, selected)
            except BreakpointError as exc:
                return exc.message, False
            self.query_one(ProgramView).refresh_rows()
            return message, True

        def remove(key: str) -> str:
            message = book.remove(key)
            self.query_one(ProgramView).refresh_rows()
            return message

        def entries() -> list[tuple[str, str]]:
            return [(e.key, e.text) for e in book.entries()]

        kind = book.example_kind()
        line = book.example_line(selected)
        placeholder = f"{kind}   {line}   {line} if %name.sum() > 0   if EXPR (on the selected node)   nan"
        where = f"{selected.kind} {selected.id}" if selected is not None else "none"
        hint = f"selected node: {where}; kinds here include {', '.join(list(book.kinds)[:4])}"
        self.push_screen(BreakpointsScreen(add, remove, entries, placeholder, hint))

    def action_break_nan(self) -> None:
        if self.session is None:
            return
        bps = self.session.breakpoints
        bps.nan_inf = not bps.nan_inf
        self.notify(f"break when an output holds NaN or Inf: {'on' if bps.nan_inf else 'off'}", timeout=3)

    # --------------------------------------------------------------- finding

    def _targets(self) -> list[Target]:
        """Every node of every graph the program can run in this view (callees not reached yet too)."""
        out = []
        for g in self.breakpoint_book.graphs:
            for n in g.walk():
                if n.kind == "prim::Constant":
                    continue
                try:
                    names = describe(n, g)
                except Exception:  # an unusual node: its value names still find it
                    names = " ".join(v.name for v in n.outputs)
                out.append(Target(n.id, n.kind, n.module_path or g.short_name, names))
        return out

    def action_goto(self) -> None:
        """Find a node in any frame and go there: its first run in the history, else run until it runs."""
        if self.session is None or self.state in ("running", "loading"):
            return

        def done(node_id: str | None) -> None:
            if not node_id:
                return
            m = self.machine
            if m is None or self.load_error:
                return
            here = len(m.timeline)
            graph = self.breakpoint_book.graph_of(node_id)
            label = f"{graph.node(node_id).kind} {node_id}" if graph is not None else node_id

            def go() -> str:
                stop = m.go_to(node_id)
                if stop == "never":
                    self.call_from_thread(self.notify, f"{label} never ran on these inputs; back where you were "
                                          f"(in the recorded history)", title="go to", timeout=8)
                return stop

            self._move("goto", go)

        self.push_screen(GotoScreen(self._targets()), done)

    def action_search(self) -> None:
        program = self.query_one(ProgramView)

        def done(query: str | None) -> None:
            if query is None:
                return
            query = query.strip() or self.last_search
            if not query:
                return
            self.last_search = query
            q = query.lower()
            rows = program.rows
            n = len(rows)
            for k in range(1, n + 1):
                i = (program.selected + k) % n
                r = rows[i]
                text = (program.describe(r.node) + " " + r.node.label() + " " + (r.node.module_path or "")) \
                    if r.node else (r.header or "")
                if q in text.lower():
                    program.selected = i
                    program.scroll_to_selected()
                    return
            self.notify(f"{query!r} not found in {program.graph.short_name}", timeout=3)

        self.push_screen(PromptScreen("search this graph (/ then Enter repeats)", "", f"last: {self.last_search}" if self.last_search else ""), done)

    def action_show_current(self) -> None:
        self.after_move(None)

    # ---------------------------------------------------------------- inputs

    def action_set_inputs(self) -> None:
        if self.session is None or self.state in ("running", "loading"):
            return
        sig = self.session.signature_text()

        def done(text: str | None) -> None:
            if text is None:
                return
            specs = text.split()
            try:
                self.session.start(specs=specs or None)
            except TsdebugError as exc:
                self.notify(exc.message, title="inputs not changed", severity="error", timeout=15)
                return
            self.load_error = None
            self.notify(f"inputs: {self.session.input_source}", timeout=5)
            self.after_move(None)

        self.push_screen(PromptScreen(
            f"inputs for {sig}", " ".join(self.args.input or []),
            "one spec per parameter: float32[1,3,224,224] 1x3x32x32 int64[2,8]:0..100 int:3 bool:true file.pt; empty = default",
        ), done)

    def action_restart(self) -> None:
        if self.session is None or self.state in ("running", "loading"):
            return
        try:
            self.session.restart()
        except TsdebugError as exc:
            self.notify(exc.message, severity="error")
            return
        self.notify("restarted", timeout=2)
        self.after_move(None)

    def action_eager(self) -> None:
        """Run the eager Python model beside the archive; mark where they disagree."""
        if self.session is None or self.state in ("running", "loading"):
            return
        if self.diff_result is not None:
            self.compare_on = not self.compare_on
            self._shown_key = None
            self.notify(f"eager comparison {'on' if self.compare_on else 'off'}", timeout=2)
            self.after_move(None)
            return
        against = getattr(self.args, "against", None)
        if not getattr(self.args, "eager", None) and not against:
            self.notify("The eager comparison needs the Python model: start tsdebug with "
                        "--eager package.module:Name or --eager path/to/file.py:Name "
                        "(a class or a function returning the nn.Module), or another program with "
                        "--against OTHER.pt2.", title="eager comparison", timeout=10)
            return
        from engine.check.eager import parse_eager_args

        args = self.args
        self.state = "running"
        self._move_started = time.perf_counter()

        def work() -> None:
            try:
                if against:
                    result = self.session.diff_against(against, args.rtol, args.atol)
                else:
                    result = self.session.diff(args.eager, parse_eager_args(args.eager_arg), args.eager_weights,
                                               args.rtol, args.atol)
            except TsdebugError as exc:
                self.call_from_thread(self._eager_done, None, exc.message)
                return
            except Exception as exc:
                self.call_from_thread(self._eager_done, None, f"internal error: {type(exc).__name__}: {exc}")
                return
            self.call_from_thread(self._eager_done, result, "")

        self.run_worker(work, thread=True, exclusive=True, group="move")

    def _eager_done(self, result, error: str) -> None:
        if result is None:
            self.state = self.machine.state if self.machine else "error"
            self.notify(error, title="eager comparison", severity="error", timeout=15)
            self.status(message=error)
            return
        self.diff_result = result
        self._diffs_by_record = {d.record.index: d for d in result.report.aligned}
        # without a divergent aligned node, the node where the runs part is the one to mark
        self._parting_records = set(result.report.marked_records()) - {d.record.index for d in result.report.aligned}
        self.compare_on = True
        r = result.report
        hit = self.machine.breakpoint_in_history(0) if self.machine is not None else None
        if hit is not None:
            # a breakpoint set: the comparison stops where the run would have stopped
            self.machine.view = hit
            self.notify(f"{self.machine.stop_reason_detail}; c goes on, D jumps to the first divergence",
                        title="stopped at a breakpoint", timeout=8)
        if r.first is None and r.outputs_close:
            msg = f"no divergence; {r.coverage:.0%} of comparable nodes aligned"
        elif r.first is None:
            msg = _parting_message(r)
        else:
            n = r.first.record.node
            msg = f"first divergence: {n.kind} {n.id} ({len(r.divergent)} diverging); D jumps there, ] and [ walk them"
        self.notify(msg, title="eager comparison", timeout=10)
        self.after_move(None)

    def action_cpp_check(self) -> None:
        """Run the archive in libtorch (tsdebug cpp) on the session's inputs; say how it compares."""
        if self.session is None or self.state in ("running", "loading"):
            return
        from engine.check import cpp

        self.state = "running"
        self._move_started = time.perf_counter()
        libraries = tuple(getattr(self.args, "library", ()) or ())

        def work() -> None:
            try:
                report = cpp.check(self.session, libraries)
            except TsdebugError as exc:
                self.call_from_thread(self._cpp_done, None, exc.message)
                return
            except Exception as exc:
                self.call_from_thread(self._cpp_done, None, f"internal error: {type(exc).__name__}: {exc}")
                return
            self.call_from_thread(self._cpp_done, report, "")

        self.notify("building (once) and running the C++ runner…", title="C++ check", timeout=3)
        self.run_worker(work, thread=True, exclusive=True, group="move")

    def _cpp_done(self, report, error: str) -> None:
        self.state = self.machine.state if self.machine else "error"
        self.cpp_report = report
        if report is None:
            self.notify(error, title="C++ check", severity="error", timeout=15)
            self.status(message=error)
            return
        ok = report.exit_code() == 0
        self.notify(report.summary(), title="C++ check", severity="information" if ok else "error", timeout=15)
        if report.cpp_error_node:
            # the runner names a node of the inlined graph: the same op on the same line in the view
            wanted = self.session.graph.find(report.cpp_error_node)
            if wanted is None:
                wanted = next((n for n in self.session.graph.walk() if n.kind == report.cpp_error_kind
                               and n.source and f"{n.source.file}:{n.source.line}" == report.cpp_error_source), None)
            if wanted is not None:
                self.query_one(ProgramView).select_node(wanted.id)
                self.show_selected()
        else:
            self.after_move(None)
        # the verdict stays on the status line until the next move (the toast goes after a few seconds)
        self.status(message=report.summary())

    def _divergent_steps(self) -> list[int]:
        if self.diff_result is None:
            return []
        return self.diff_result.report.marked_records()

    def _view_step(self, index: int) -> None:
        m = self.machine
        if m is None or not 0 <= index < len(m.timeline):
            return
        if index < m.timeline.first:
            self.notify(m.timeline.forgotten_note(), severity="warning", timeout=5)
            return
        m.view = index
        self.after_move(None, "divergence")

    def action_first_divergence(self) -> None:
        steps = self._divergent_steps()
        if not steps:
            self.notify("no divergence to go to" if self.diff_result else "press e first (needs --eager)", timeout=3)
            return
        self.compare_on = True
        self._view_step(steps[0])

    def _walk(self, forward: bool) -> None:
        steps = self._divergent_steps()
        m = self.machine
        if not steps or m is None:
            self.action_first_divergence()
            return
        here = m.view if m.view is not None else -1
        later = [i for i in steps if (i > here if forward else i < here)]
        if not later:
            self.notify("no more divergences that way", timeout=2)
            return
        self._view_step(later[0] if forward else later[-1])

    def action_next_divergence(self) -> None:
        self._walk(True)

    def action_prev_divergence(self) -> None:
        self._walk(False)

    def action_findings(self) -> None:
        """What tracing froze; choosing one shows its nodes and line."""
        if self.session is None or self.state in ("running", "loading"):
            return
        from engine.check.lint import lint_session
        from tsdebug.widgets.findings import FindingsScreen

        if getattr(self, "_lint", None) is None:
            try:
                self._lint = lint_session(self.session)
            except Exception as exc:  # lint is advice: never take the debugger down
                self.notify(f"lint failed: {type(exc).__name__}: {exc}", severity="error")
                return
        report = self._lint
        if not report.findings:
            self.notify("no findings: nothing frozen by tracing" + (f" ({'; '.join(report.notes)})" if report.notes else ""),
                        title="lint", timeout=6)
            return

        def chosen(index: int | None) -> None:
            if index is None:
                return
            finding = report.findings[index]
            self.show_finding(finding)

        self.push_screen(FindingsScreen(report.findings, report.notes), chosen)

    def show_finding(self, finding) -> None:
        program = self.query_one(ProgramView)
        node_id = finding.nodes[0] if finding.nodes else None
        graph = self.session.program.graph_of(node_id) if node_id else None
        if graph is not None:
            self.browsing = node_id
            program.show_graph(graph, select=node_id)
            program.border_title = f"program · {graph.short_name} · finding: {finding.kind} (. returns)"
            self._shown_key = None
            self.show_selected()
        if finding.file and finding.line:
            from engine.ir import SourceLoc

            self.query_one(SourcePane).show(SourceLoc(finding.file, finding.line, "traced", text=finding.text))
        self.notify(f"{finding.kind} at {finding.where}: {finding.frozen}\n{finding.evidence}", title="finding",
                    timeout=10)
        program.focus()

    # ------------------------------------------------------------ graph view

    def box_state(self, node_id: str) -> str:
        program = self.query_one(ProgramView)
        graph = program.graph
        node = graph.find(node_id) if graph is not None else None
        if node is None:
            return ""
        st = self.row_state(node)
        if st.current:
            return "current"
        if st.error:
            return "error"
        if st.diverged:
            return "diverged"
        if st.breakpoint:
            return "breakpoint"
        if getattr(self, "_lint", None) is not None and any(node_id in f.nodes for f in self._lint.findings):
            return "finding"
        return "executed" if st.executed else ""

    def action_toggle_graph(self) -> None:
        program = self.query_one(ProgramView)
        view = self.query_one(GraphView)
        if view.display:
            view.display = False
            program.display = True
            program.focus()
            return
        program.display = False
        view.display = True
        view.focus()
        self._refresh_graph_view()

    def _graph_receiver(self, graph) -> str:
        """The module path of the frame running ``graph`` (weights for its labels), '' for the root."""
        m = self.machine
        if m is None or m.view is not None:
            return ""
        for f in reversed(m.frames()):
            if f.graph is graph:
                return f.module_path or ""
        return ""

    def _refresh_graph_view(self) -> None:
        """Lay out the program pane's graph (cached) in a worker; colour it from the machine."""
        view = self.query_one(GraphView)
        program = self.query_one(ProgramView)
        graph = program.graph
        if graph is None or not view.display:
            return
        graph_state = self.__dict__.setdefault("_graph_state", {"collapse": None, "compact": None})
        receiver = self._graph_receiver(graph)
        cache = self.__dict__.setdefault("_drawings", {})
        key = (graph.name, receiver, graph_state["collapse"], graph_state["compact"])
        if key in cache:
            drawing, note, box_nodes, order, aliases = cache[key]
            view.shape_of = self._shape_reader(graph)
            view.show_drawing(drawing, note, box_nodes, order, aliases)
            current_node = self.machine.current_node if self.machine is not None and self.machine.view is None else None
            view.current_node = current_node.id if current_node is not None else None
            view.invalidate_states()
            view.border_title = f"graph · {graph.short_name} · {note}"
            selected = program.selected_node
            current = self.machine.current_node if self.machine else None
            target = selected.id if selected is not None else (current.id if current else None)
            view.select_node(target, follow=False)
            box = view.box_of(target)
            if box is not None:
                self.call_after_refresh(view.follow_box, box)
            return
        view.show_drawing(None, f"laying out {graph.short_name} …")
        collapse, compact = graph_state["collapse"], graph_state["compact"]
        pane_rows = max(view.size.height, 10)
        session = self.session

        def work() -> None:
            from tsdebug.render import draw, grid_layout
            from tsdebug.render.scene import build_scene, fold_depth_for, labeler_for

            lab = labeler_for(session, graph, receiver)
            depth = collapse
            if depth is None:
                # never make the user wait on a huge layout: fold modules until it is small
                depth = fold_depth_for(graph, 400, lab)
            scene = build_scene(graph, lab, depth)
            drawing = draw(grid_layout(scene, compact=bool(compact)))
            zoom = compact
            if compact is None and drawing.height > pane_rows * 1.5:
                drawing = draw(grid_layout(scene, compact=True))  # zoomed out: one row a box
                zoom = True
            note = f"{scene.box_count()} boxes" + (" · zoomed out (z)" if zoom else " · z zooms out")
            if depth is not None:
                note += f" · modules below depth {depth} folded (+/-)"
            box_nodes = {b.id: b.nodes for b in scene.boxes.values() if b.nodes}
            self.call_from_thread(self._graph_ready, key, (drawing, note, box_nodes, scene.box_order(), scene.alias))

        self.run_worker(work, thread=True, exclusive=True, group="graph")

    def _shape_reader(self, graph):
        """What an edge of ``graph`` says: the shape of the value its tail made, as last recorded in this frame."""
        from tsdebug.render.labels import shape_text

        m = self.machine
        if m is None:
            return None
        start = self.frame_start() if m.view is None else -1
        memo: dict = {}
        inputs = {v.index: k for k, v in enumerate(a for a in graph.inputs
                                                   if not (a.type.startswith("__torch__.") or a.name.startswith("self")))}
        root = graph is self.session.graph

        def shape_of(tail: str, value: int) -> str:
            got = memo.get(value)
            if got is not None:
                return got
            text = ""
            node = graph.producer(value)
            if node is not None:
                rec = m.timeline.last_of(node.id, m.view)
                if rec is not None and rec.index > start:
                    outs = rec.peek_outputs()
                    if outs and value in node.out_idx:
                        k = node.out_idx.index(value)
                        if k < len(outs):
                            text = shape_text(outs[k])
            elif value in inputs and root and self.session.inputs is not None:
                k = inputs[value]
                if k < len(self.session.inputs):
                    text = shape_text(self.session.inputs[k])
            memo[value] = text
            return text

        return shape_of

    def _graph_ready(self, key, result) -> None:
        self.__dict__.setdefault("_drawings", {})[key] = result
        self._refresh_graph_view()

    def on_graph_view_collapse_changed(self, event: GraphView.CollapseChanged) -> None:
        state = self.__dict__.setdefault("_graph_state", {"collapse": None, "compact": None})
        current = state["collapse"] if state["collapse"] is not None else 3
        state["collapse"] = max(0, current + event.delta)
        self._refresh_graph_view()

    def on_graph_view_zoom_changed(self, event: GraphView.ZoomChanged) -> None:
        state = self.__dict__.setdefault("_graph_state", {"collapse": None, "compact": None})
        view = self.query_one(GraphView)
        shown = view.drawing.compact if view.drawing is not None else bool(state["compact"])
        state["compact"] = not shown
        self._refresh_graph_view()

    def on_graph_view_node_chosen(self, event: GraphView.NodeChosen) -> None:
        program = self.query_one(ProgramView)
        program.select_node(event.node_id)
        self.show_selected()

    def action_help(self) -> None:
        app_keys = [(key_text(b.key), b.description) for b in self.BINDINGS]
        self.push_screen(HelpScreen([("debugger", app_keys), ("panes", PANE_KEYS)]))

    def key_label(self, keys: str) -> str:
        return key_text(keys)

    # ------------------------------------------------------- evaluate, watch

    def _scope(self):
        """The values of the frame on screen as of the step on screen (engine.run.evaluate.Scope)."""
        from engine.run.evaluate import live_scope

        m = self.machine
        if m is None or self.load_error:
            return None
        return live_scope(m, self.display_frame if m.view is None else None)

    def evaluate_text(self, text: str, short: bool = False) -> tuple[str, bool, Any]:
        """(what to show, evaluated, the value) for an expression at the step on screen; ``short``:
        the error in a few words."""
        from engine.run.evaluate import EvalError, describe, evaluate

        scope = self._scope()
        if scope is None:
            return "nothing is running", False, None
        try:
            value = evaluate(text, scope)
        except EvalError as exc:
            return exc.short if short else exc.message, False, None
        except Exception as exc:  # never a traceback in front of the user
            return f"internal error: {type(exc).__name__}: {exc}", False, None
        return describe(value), True, value

    def action_evaluate(self) -> None:
        if self.session is None or self.state in ("running", "loading"):
            return
        scope = self._scope()
        if scope is None:
            self.notify("nothing to evaluate over: no run", timeout=3)
            return
        m = self.machine
        node = m.current_node
        where = f"{scope.graph.short_name}" + (f", before {node.kind} {node.id}" if node is not None and m.view is None
                                                else f", after {node.kind} {node.id}" if node is not None else "")
        from engine.run.evaluate import value_names_in

        values = value_names_in(scope.graph)
        example = next((n for n, v in values.items() if v.type.startswith("Tensor")), "")
        self.push_screen(EvaluateScreen(self.evaluate_text, where, list(values), self.evaluated, example))

    def action_watch(self) -> None:
        if self.session is None or self.state in ("running", "loading"):
            return

        def done(text: str | None) -> None:
            if text is None:
                return
            text = text.strip()
            if not text:
                return
            if text in self.watches:
                self.watches.remove(text)
                self.notify(f"watch removed: {text}", timeout=3)
            else:
                self.watches.append(text)
            self.refresh_watches()

        now = ", ".join(self.watches)
        self.push_screen(PromptScreen("watch an expression (%name for a value; the same again removes it)", "",
                                      f"watching: {now}" if now else "e.g. %x.1.abs().max()"), done)

    def refresh_watches(self) -> None:
        """Evaluate the watches at the step on screen (only while there are some to show)."""
        view = self.query_one(WatchList)
        view.display = bool(self.watches)
        if not self.watches:
            return
        view.show([(w, *self.evaluate_text(w, short=True)[:2]) for w in self.watches])
        view.styles.height = min(len(self.watches), 6) + 2

    def on_watch_list_removed(self, event: WatchList.Removed) -> None:
        if 0 <= event.index < len(self.watches):
            removed = self.watches.pop(event.index)
            self.notify(f"watch removed: {removed}", timeout=3)
            self.refresh_watches()
            if not self.watches:
                self.query_one(ProgramView).focus()

    # ---------------------------------------------------------- the palette

    def get_system_commands(self, screen):
        """Textual's own palette commands; its Screenshot (to the Downloads folder, named from the title,
        which holds the model's path) replaced by one that saves in the current folder and says where."""
        from textual.app import SystemCommand

        for command in super().get_system_commands(screen):
            if command.title == "Screenshot":
                yield SystemCommand("Screenshot", "Save an SVG screenshot of the screen in the current folder",
                                    lambda: self.set_timer(0.1, self.save_screen_svg))
            else:
                yield command

    def save_screen_svg(self) -> str | None:
        """The screen as an SVG file in the current folder (``tsdebug-<model>-<time>.svg``); None if it failed."""
        stem = os.path.splitext(os.path.basename(self.session.path))[0] if self.session is not None else "screen"
        name = f"tsdebug-{stem}-{time.strftime('%Y%m%d-%H%M%S')}.svg"
        try:
            path = self.save_screenshot(filename=name, path=os.getcwd())
        except OSError as exc:
            self.notify(f"cannot save the screenshot: {exc}", severity="error", timeout=8)
            return None
        self.notify(f"saved {path}", title="screenshot", timeout=6)
        return path


def open_debugger(args: argparse.Namespace) -> int:
    """Run the UI; returns the exit code (129 when the terminal went away under it)."""
    app = TsdebugApp(args)
    app.run()
    return app.return_code or 0


#: How long a toast stays, and how much of it shows: never half the screen at 80x24.
TOAST_SECONDS = {"information": 3.0, "warning": 4.0, "error": 5.0}
TOAST_LINES = 3
TOAST_CHARS = 120
TOAST_MAX = 2


def toast_text(message: str, severity: str = "information", timeout: float | None = None) -> tuple[str, float]:
    """The message cut to a few lines and its timeout to a few seconds (the status bar keeps it whole)."""
    lines = str(message).splitlines() or [""]
    if len(lines) > TOAST_LINES:
        lines = lines[: TOAST_LINES - 1] + [f"… {len(lines) - TOAST_LINES + 1} more lines"]
    text = "\n".join(lines)
    if len(text) > TOAST_CHARS:
        text = text[: TOAST_CHARS - 1] + "…"
    cap = TOAST_SECONDS.get(severity, 3.0)
    return text, min(timeout, cap) if timeout is not None else cap


def _terminal_fd() -> int | None:
    """The terminal the UI reads keys from, to notice when it goes away; None without one."""
    try:
        fd = sys.__stdin__.fileno()
    except (AttributeError, ValueError, OSError):
        return None
    return fd if os.isatty(fd) else None


def _parting_message(report) -> str:
    """The ``e`` notice when no aligned node diverges but the outputs differ (or a run raised)."""
    if report.archive_error is not None:
        return f"the archive raised where the Python did not: {report.archive_error.message}; D jumps there"
    if report.eager_error is not None:
        e = report.eager_error
        return f"the Python raised {e.kind} at {e.where} where the archive did not: {e.message}"
    what = report.output_differences[0].what if report.output_differences else "the outputs differ"
    p = report.parting
    if p is None:
        return f"outputs differ ({what}); no aligned node diverges"
    after = f"after {p.last_agreed.record.node.kind} {p.last_agreed.record.node.id}" if p.last_agreed else "at the start"
    alone = f"; the Python ran {len(p.eager_only)} op(s) the archive did not" if p.eager_only else ""
    return f"outputs differ ({what}); the runs part {after}{alone}; D jumps there"
