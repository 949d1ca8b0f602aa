"""The findings pane (``L``): what tracing froze, from ``engine.lint``.

Choosing a finding shows its nodes in the program pane and its line in the
source pane.
"""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Label, OptionList
from textual.widgets.option_list import Option

from engine.lint import Finding

KIND_STYLE = {"frozen-branch": "bold red", "unrolled-loop": "bold yellow", "baked-shape": "bold magenta",
              "baked-scalar": "bold magenta", "baked-device": "bold red", "python-state": "bold cyan",
              "trace-warning": "yellow"}


class FindingsScreen(ModalScreen[int | None]):
    BINDINGS = [Binding("escape,q,L", "close", "close")]

    def __init__(self, findings: list[Finding], notes: list[str]) -> None:
        super().__init__()
        self.findings = findings
        self.notes = notes

    def compose(self) -> ComposeResult:
        with Vertical(id="findings-box"):
            head = f"{len(self.findings)} finding(s): what tracing froze (Enter shows it, Esc closes)"
            yield Label(head, markup=False)
            for note in self.notes:
                yield Label(note, markup=False, classes="hint")
            options = []
            for i, f in enumerate(self.findings):
                t = Text(no_wrap=True, overflow="ellipsis")
                t.append(f"{f.kind:14}", style=KIND_STYLE.get(f.kind, "bold"))
                t.append(f" {f.where}", style="#87afd7")
                if f.module_path:
                    t.append(f" [{f.module_path}]", style="#af87d7")
                t.append(f"  {f.frozen}")
                if f.text:
                    t.append(f"   {f.text}", style="#8a8a8a")
                options.append(Option(t, id=str(i)))
            yield OptionList(*options, id="findings-list")

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(int(event.option.id))

    def action_close(self) -> None:
        self.dismiss(None)
