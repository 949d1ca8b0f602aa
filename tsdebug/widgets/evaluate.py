"""Evaluate an expression at the current step (``!``): pdb's ``p expr``, pudb's shell.

The screen stays open: each Enter evaluates the line and adds it, with its
value, to the log under the input; Up and Down recall earlier lines; Esc
closes.  The evaluation itself is the engine's (``engine.run.evaluate``),
handed in by the app as ``evaluate(text) -> (value text, ok, value)``.
"""

from __future__ import annotations

from typing import Any, Callable

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Input, Label, Static


class EvaluateScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape", "dismiss_screen", "close"),
                Binding("up", "recall(-1)", show=False), Binding("down", "recall(1)", show=False)]

    def __init__(self, evaluate: Callable[[str], tuple[str, bool, Any]], where: str, names: list[str],
                 history: list[str], example: str = "") -> None:
        super().__init__()
        self.example = example  # a tensor's name, for the placeholder
        self.evaluate_text = evaluate
        self.where = where
        self.names = names
        self.history = history  # the app's: earlier lines, kept between openings
        self._recall = len(history)
        self.last_value: Any = None  # the latest value, as the engine computed it

    def compose(self) -> ComposeResult:
        with Vertical(id="evaluate-box"):
            yield Label(f"evaluate at {self.where}", markup=False)
            example = self.example or (self.names[0] if self.names else "x")
            yield Input(placeholder=f"%{example}.abs().max()   torch.allclose(%a, %b)   (torch, math, F)",
                        id="evaluate-input")
            shown = " ".join(f"%{n}" for n in self.names[:40]) + (" …" if len(self.names) > 40 else "")
            yield Label(f"values: {shown}" if shown else "no values in this frame", markup=False, classes="hint")
            yield VerticalScroll(id="evaluate-log")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        if not text:
            return
        if not self.history or self.history[-1] != text:
            self.history.append(text)
        self._recall = len(self.history)
        shown, ok, value = self.evaluate_text(text)
        if ok:
            self.last_value = value
        line = Text(no_wrap=False)
        line.append("> ", style="bold #87afd7")
        line.append(text, style="bold")
        line.append("\n")
        line.append(shown, style="" if ok else "#d75f5f")
        log = self.query_one("#evaluate-log", VerticalScroll)
        log.mount(Static(line, classes="evaluate-entry"))
        log.scroll_end(animate=False)
        event.input.value = ""

    def action_recall(self, delta: int) -> None:
        if not self.history:
            return
        self._recall = max(0, min(len(self.history), self._recall + delta))
        box = self.query_one("#evaluate-input", Input)
        box.value = self.history[self._recall] if self._recall < len(self.history) else ""
        box.cursor_position = len(box.value)

    def action_dismiss_screen(self) -> None:
        self.dismiss(None)
