"""The breakpoint list (``B``): every breakpoint, one a row, Delete removes; the input above sets more.

What the input accepts is read by the engine (``engine.run.breaks.BreakpointBook``):
an op kind, ``FILE:LINE``, a node id, ``... if EXPR``, ``if EXPR`` for the
selected node, ``nan``.  The app hands in ``add(text) -> (message, ok)``,
``remove(key) -> message`` and ``entries() -> [(key, text)]``.
"""

from __future__ import annotations

from typing import Callable

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label, OptionList
from textual.widgets.option_list import Option


class BreakpointsScreen(ModalScreen[None]):
    # Delete and d reach the screen from the list only: the input keeps its own keys
    BINDINGS = [Binding("escape", "dismiss_screen", "close"), Binding("down", "focus_list", show=False),
                Binding("delete,d,backspace", "delete", "remove the highlighted breakpoint", show=False)]

    def __init__(self, add: Callable[[str], tuple[str, bool]], remove: Callable[[str], str],
                 entries: Callable[[], list[tuple[str, str]]], placeholder: str, hint: str) -> None:
        super().__init__()
        self.add_text = add
        self.remove_key = remove
        self.list_entries = entries
        self.placeholder = placeholder
        self.hint = hint

    def compose(self) -> ComposeResult:
        with Vertical(id="breakpoints-box"):
            yield Label("breakpoints (Enter sets, the same again removes; ↓ then Delete removes one; Esc closes)",
                        markup=False)
            yield Input(placeholder=self.placeholder, id="breakpoints-input")
            yield Label(self.hint, markup=False, classes="hint", id="breakpoints-message")
            yield OptionList(id="breakpoints-list")

    def on_mount(self) -> None:
        self.refill()

    def refill(self) -> None:
        rows = self.query_one("#breakpoints-list", OptionList)
        at = rows.highlighted
        rows.clear_options()
        entries = self.list_entries()
        for key, text in entries:
            rows.add_option(Option(text, id=key))
        if not entries:
            rows.add_option(Option("no breakpoints", id="", disabled=True))
        else:
            rows.highlighted = min(at or 0, len(entries) - 1)

    def say(self, message: str, ok: bool = True) -> None:
        label = self.query_one("#breakpoints-message", Label)
        label.update(message)
        label.set_class(not ok, "error")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        message, ok = self.add_text(event.value)
        self.say(message, ok)
        if ok:
            event.input.value = ""
        self.refill()

    def action_delete(self) -> None:
        rows = self.query_one("#breakpoints-list", OptionList)
        if rows.highlighted is None:
            return
        key = rows.get_option_at_index(rows.highlighted).id
        if key:
            self.say(self.remove_key(key))
            self.refill()

    def action_focus_list(self) -> None:
        self.query_one("#breakpoints-list", OptionList).focus()

    def action_dismiss_screen(self) -> None:
        self.dismiss(None)
