"""The source pane: the Python line that produced the node, with its neighbours.

Read from the file on disk when it exists; otherwise from what the archive
holds (scripted archives keep the lines around each statement, traced ones
the Python stack of each op).  The title says which.
"""

from __future__ import annotations

import os

from rich.text import Text
from textual.widget import Widget

from engine.ir import SourceLoc
from engine.sources import display_path, source_lines

CONTEXT = 6


class SourcePane(Widget):
    """A fixed window on the source: redrawn in place, no scrolling or layout pass."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._content = Text()
        self.plain = ""

    def render(self) -> Text:
        return self._content

    def update(self, content) -> None:
        self._content = content if isinstance(content, Text) else Text(str(content))
        self._content.no_wrap = True
        self._content.overflow = "ellipsis"
        self.plain = self._content.plain
        self.refresh()

    def show(self, loc: SourceLoc | None, caller: SourceLoc | None = None) -> None:
        """``caller``: the user's call site, shown when ``loc`` is inside torch itself."""
        from engine.sources import is_torch_frame

        own = loc is not None and loc.file and loc.origin in ("scripted", "traced") and not is_torch_frame(loc.file)
        if own or caller is None or caller is loc or not caller.file:
            shown, extra = loc, ""
        else:
            shown = caller
            extra = f"  (the call site; the op is at {os.path.basename(loc.file)}:{loc.line})" if loc and loc.file else "  (the call site)"
        if shown is None or not shown.file:
            self.border_title = "source"
            self.update(Text("This node has no source location in the archive.", style="italic #8a8a8a"))
            return
        text = Text(no_wrap=True, overflow="ellipsis")
        on_disk = source_lines(shown.file) if os.path.exists(shown.file) else None
        if isinstance(on_disk, str) and not shown.context:
            # named by the archive but not a file we read (a device, a FIFO, too large): say so
            self.border_title = f"{display_path(shown.file)}:{shown.line}  · not shown: {on_disk}{extra}"
            text.append(f"{shown.file} is not shown: {on_disk}.", style="italic #8a8a8a")
            self.update(text)
            return
        absent = f"file on disk not read: {on_disk}" if isinstance(on_disk, str) else "file not on disk"
        if isinstance(on_disk, list):
            self.border_title = f"{display_path(shown.file)}:{shown.line}  · file on disk{extra}"
            before = max((self.size.height - 2) // 2, 1) if self.size.height else CONTEXT
            first = max(1, shown.line - before)
            for n in range(first, shown.line + CONTEXT * 2 + 1):
                if n > len(on_disk):
                    break
                style = "reverse bold" if n == shown.line else ""
                text.append(f"{n:5d}  ", style="#8a8a8a")
                text.append(on_disk[n - 1] + "\n", style=style)
        elif shown.context:
            self.border_title = f"{display_path(shown.file)}:{shown.line}  · from the archive ({absent}){extra}"
            for ln in shown.context.splitlines():
                style = "reverse bold" if shown.text and ln.strip() == shown.text else ""
                text.append(ln + "\n", style=style)
        else:
            self.border_title = f"{display_path(shown.file)}:{shown.line}  · from the archive ({absent}){extra}"
            if shown.stack:
                text.append("Python stack recorded by torch.jit.trace (innermost first):\n", style="italic")
                for f, ln, fn in shown.stack:
                    mark = "reverse" if (f, ln) == (shown.file, shown.line) else ""
                    text.append(f"  {f}:{ln}  {fn}\n", style=mark)
            else:
                text.append("(no source text in the archive)", style="italic #8a8a8a")
        self.update(text)
