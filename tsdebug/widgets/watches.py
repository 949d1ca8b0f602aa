"""The watch list: expressions (``W``) and their values at the step on screen, updated as one steps."""

from __future__ import annotations

from rich.text import Text
from textual.binding import Binding
from textual.message import Message
from textual.widgets import OptionList
from textual.widgets.option_list import Option


class WatchList(OptionList):
    """One row a watch: ``expr = value``; an error (not computed yet, not kept) in the muted colour."""

    BINDINGS = [Binding("delete,d,backspace", "remove", "remove the watch", show=False)]

    class Removed(Message):
        def __init__(self, index: int) -> None:
            super().__init__()
            self.index = index

    def show(self, rows: list[tuple[str, str, bool]]) -> None:
        """``rows``: (expression, value text, ok) for each watch, in order."""
        highlighted = self.highlighted
        self.clear_options()
        for expr, text, ok in rows:
            label = Text(no_wrap=True, overflow="ellipsis")
            label.append(expr, style="bold")
            label.append(" = " if ok else "  ")
            label.append(text, style="" if ok else "italic #8a8a8a")
            self.add_option(Option(label))
        if rows:
            self.highlighted = min(highlighted or 0, len(rows) - 1)

    def action_remove(self) -> None:
        if self.highlighted is not None:
            self.post_message(self.Removed(self.highlighted))
