"""Go to a node (``g``): fuzzy search over ids, kinds, module paths and value names."""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, OptionList
from textual.widgets.option_list import Option

MAX_RESULTS = 200


@dataclass(frozen=True)
class Target:
    node_id: str
    kind: str
    path: str
    names: str

    @property
    def haystack(self) -> str:
        return f"{self.node_id} {self.kind} {self.path} {self.names}".lower()


def fuzzy_score(query: str, text: str) -> int | None:
    """Characters of ``query`` in order inside ``text``; lower is better, None if absent."""
    if not query:
        return 0
    at = text.find(query)
    if at >= 0:
        return at  # a plain substring beats any scattered match
    pos, gaps = -1, 0
    for ch in query:
        nxt = text.find(ch, pos + 1)
        if nxt < 0:
            return None
        gaps += nxt - pos - 1
        pos = nxt
    return 1000 + gaps


def search(targets: list[Target], query: str, limit: int = MAX_RESULTS) -> list[Target]:
    q = query.lower().strip()
    scored = []
    for t in targets:
        s = fuzzy_score(q, t.haystack)
        if s is not None:
            scored.append((s, len(scored), t))
    scored.sort(key=lambda x: (x[0], x[1]))
    return [t for _, _, t in scored[:limit]]


class GotoScreen(ModalScreen[str | None]):
    BINDINGS = [Binding("escape", "cancel", "cancel"), Binding("down", "focus_list", show=False)]

    def __init__(self, targets: list[Target], title: str = "go to node") -> None:
        super().__init__()
        self.targets = targets
        self.title_text = title

    def compose(self) -> ComposeResult:
        with Vertical(id="goto-box"):
            yield Input(placeholder=f"{self.title_text}: id, kind, module path or value name", id="goto-input")
            yield OptionList(id="goto-list")

    def on_mount(self) -> None:
        self._fill("")

    def _fill(self, query: str) -> None:
        lst = self.query_one("#goto-list", OptionList)
        lst.clear_options()
        for t in search(self.targets, query):
            label = Text(no_wrap=True)
            label.append(t.kind, style="bold")
            label.append(f"  {t.node_id}", style="#8a8a8a")
            if t.path:
                label.append(f"  {t.path}", style="#af87d7")
            if t.names:
                label.append(f"  {t.names}", style="#87afd7")
            lst.add_option(Option(label, id=t.node_id))
        if lst.option_count:
            lst.highlighted = 0

    def on_input_changed(self, event: Input.Changed) -> None:
        self._fill(event.value)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        lst = self.query_one("#goto-list", OptionList)
        if lst.option_count and lst.highlighted is not None:
            self.dismiss(lst.get_option_at_index(lst.highlighted).id)
        else:
            self.app.bell()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)

    def action_focus_list(self) -> None:
        self.query_one("#goto-list", OptionList).focus()

    def action_cancel(self) -> None:
        self.dismiss(None)
