"""The call stack: method frames with module paths and loop iterations."""

from __future__ import annotations

from rich.text import Text
from textual.message import Message
from textual.widgets import OptionList
from textual.widgets.option_list import Option

from engine.run.machine import FrameInfo


class CallStack(OptionList):
    class FrameChosen(Message):
        def __init__(self, index: int) -> None:
            super().__init__()
            self.index = index

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.frames: list[FrameInfo] = []

    def show(self, frames: list[FrameInfo], history_path: tuple | None = None) -> None:
        key = (history_path, tuple((f.graph.name, f.module_path, tuple(f.loops)) for f in frames))
        if key == getattr(self, "_key", None):
            return  # same stack: skip the re-layout
        self._key = key
        self.frames = frames
        self.clear_options()
        if history_path is not None:
            self.add_option(Option(Text(" › ".join(history_path) + "  (recorded)", style="italic"), id="h"))
            return
        for i, f in enumerate(reversed(frames)):
            t = Text(no_wrap=True)
            t.append(f.graph.short_name, style="bold" if i == 0 else "")
            if f.module_path:
                t.append(f"  {f.module_path}", style="#af87d7")
            if f.loops:
                t.append("  " + " ".join(f"iter {n}" for n in f.loops), style="#d7af5f")
            self.add_option(Option(t, id=str(len(frames) - 1 - i)))
        if frames:
            self.highlighted = 0

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        if event.option.id and event.option.id != "h":
            self.post_message(self.FrameChosen(int(event.option.id)))
