"""A transient status line on stderr while the CLI does long work.

Shown only when stderr is a terminal (never in pipes, files or CI logs), only
after the work has taken half a second, and erased when it ends, so the
command's own output is what stays on the screen.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time
from typing import Callable, TextIO

class Status:
    """``with Status() as status: status.show("running… "); ...``.

    ``show`` takes a string or a function returning one; a function is
    called again at each refresh, so a step counter can move.
    """

    def __init__(self, stream: TextIO | None = None, delay: float = 0.5, interval: float = 0.2):
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = _is_terminal(self.stream) and not os.environ.get("TSDEBUG_NO_STATUS")
        self.delay = delay
        self.interval = interval
        self._text: Callable[[], str] = lambda: ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._drawn = False

    def show(self, text: "str | Callable[[], str]") -> None:
        self._text = text if callable(text) else (lambda: text)

    def __enter__(self) -> "Status":
        if self.enabled:
            self._thread = threading.Thread(target=self._loop, name="tsdebug-status", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> bool:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._drawn:
            self._write("\r\x1b[2K")
        return False

    def _loop(self) -> None:
        start = time.monotonic()
        while not self._stop.wait(self.interval):
            if time.monotonic() - start < self.delay:
                continue
            try:
                text = self._text()
            except Exception:  # the status line must never take the command down
                continue
            width = max(20, shutil.get_terminal_size((80, 24)).columns - 1)
            self._write("\r\x1b[2K" + text[:width])
            self._drawn = True

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            pass


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def steps_of(session) -> Callable[[], str]:
    """``running through tsdebug… 12,345 steps`` for the session's live machine."""

    def text() -> str:
        machine = session.machine
        n = len(machine.timeline) if machine is not None else 0
        return f"running through tsdebug… {n:,} steps"

    return text
