"""The status bar: step count, current node, run state, recorded memory."""

from __future__ import annotations

from rich.text import Text
from textual.widget import Widget

from engine.run.values import human_bytes

STATE_STYLE = {"paused": "bold green", "running": "bold yellow", "finished": "bold cyan",
               "error": "bold red", "history": "bold magenta", "loading": "bold yellow"}


class StatusBar(Widget):
    """One line; redrawn in place (no layout pass) as the machine moves."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._line = Text()
        self.plain = ""

    def render(self) -> Text:
        return self._line

    def show(self, state: str, steps: int, node: str = "", kept: int = 0, budget: int = 0,
             dropped: int = 0, message: str = "") -> None:
        t = Text(no_wrap=True, overflow="ellipsis")
        t.append(f" {state} ", style=STATE_STYLE.get(state, "bold") + " reverse")
        t.append(f"  step {steps}")
        if node:
            t.append(f"  {node}", style="bold")
        if budget:
            t.append(f"  rec {human_bytes(kept)}/{human_bytes(budget)}", style="#8a8a8a")
            if dropped:
                t.append(f" ({dropped} summaries only)", style="#d7af5f")
        if message:
            t.append(f"  {message}", style="#d0d0d0")
        if t.plain != self.plain:
            self.plain = t.plain
            self._line = t
            self.refresh()
