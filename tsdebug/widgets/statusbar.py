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
             dropped: int = 0, message: str = "", thinned: int = 0, forgotten: int = 0) -> None:
        """``kept``: all the timeline holds (records and tensors); ``thinned``/``forgotten``: the
        steps whose values, or which whole, it let go of to stay within ``budget``."""
        t = Text(no_wrap=True, overflow="ellipsis")
        t.append(f" {state} ", style=STATE_STYLE.get(state, "bold") + " reverse")
        t.append(f"  step {steps}")
        if node:
            t.append(f"  {node}", style="bold")
        if budget or kept:
            t.append(f"  rec {human_bytes(kept)}/{human_bytes(budget)}", style="#8a8a8a")
            if dropped:
                t.append(f" ({dropped} summaries only)", style="#d7af5f")
            if forgotten:
                t.append(f" · {_count(forgotten)} steps forgotten", style="#d7af5f")
            if thinned:
                t.append(f" · {_count(thinned)} thinned", style="#d7af5f")
        if message:
            t.append(f"  {message}", style="#d0d0d0")
        if t.plain != self.plain:
            self.plain = t.plain
            self._line = t
            self.refresh()


def _count(n: int) -> str:
    """``12288`` -> ``12k``: the status bar has one line."""
    if n < 10_000:
        return str(n)
    if n < 10_000_000:
        return f"{n // 1000}k"
    return f"{n // 1_000_000}M"
