"""The findings pane (``L``): what tracing froze, from ``engine.check.lint``.

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

from engine.check.lint import CONFIDENCES, Finding

KIND_STYLE = {"frozen-branch": "bold red", "unrolled-loop": "bold yellow", "baked-shape": "bold magenta",
              "baked-scalar": "bold magenta", "baked-device": "bold red", "python-state": "bold cyan",
              "trace-warning": "yellow"}


CONFIDENCE_STYLE = {"high": "bold", "medium": "", "low": "#8a8a8a"}


class FindingsScreen(ModalScreen[int | None]):
    BINDINGS = [Binding("escape,q,L", "close", "close")]

    def __init__(self, findings: list[Finding], notes: list[str]) -> None:
        super().__init__()
        self.findings = findings
        self.notes = notes

    def compose(self) -> ComposeResult:
        with Vertical(id="findings-box"):
            counts = ", ".join(f"{n} {c}" for c in reversed(CONFIDENCES)
                               if (n := sum(f.confidence == c for f in self.findings)))
            head = (f"{len(self.findings)} finding{'s' if len(self.findings) != 1 else ''} ({counts}) of what "
                    "tracing froze, surest first; Enter shows one, Esc closes")
            yield Label(head, markup=False)
            for note in self.notes:
                yield Label(note, markup=False, classes="hint")
            options = []
            # the surest first: a model full of eval-mode ``self.training`` checks (low) keeps
            # its one frozen branch on data (medium) at the top
            order = sorted(range(len(self.findings)), key=lambda i: -CONFIDENCES.index(self.findings[i].confidence))
            for i in order:
                f = self.findings[i]
                t = Text(no_wrap=True, overflow="ellipsis")
                t.append(f"{f.kind:14}", style=KIND_STYLE.get(f.kind, "bold"))
                t.append(f" {f.confidence:6}", style=CONFIDENCE_STYLE.get(f.confidence, ""))
                t.append(f" {_short(f.where)}", style="#87afd7")
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


def _short(where: str) -> str:
    """An installed package's file from its package down (``timm/models/mobilevit.py:539``)."""
    for marker in ("site-packages/", "dist-packages/"):
        if marker in where:
            return where.split(marker, 1)[1]
    return where
