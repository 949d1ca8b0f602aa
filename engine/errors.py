"""Typed, user-facing failures.

Every error a user can cause (a bad file, a bad input, an op that raised inside
the model) is one of these, with a one-line ``message``.  The CLI prints that
line and exits 2; the UI shows it and stays open.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.ir import Node


class TsdebugError(Exception):
    """Base class: ``str(err)`` is the one line to show the user."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class ArchiveError(TsdebugError):
    """The file is missing, unreadable, or not a TorchScript archive."""


class InputError(TsdebugError):
    """An input spec or input file is wrong."""


class ModelError(TsdebugError):
    """An operation raised while the model ran; carries the failing node."""

    def __init__(self, message: str, node: "Node | None" = None, detail: str = ""):
        super().__init__(message)
        self.node = node
        self.detail = detail


class EagerError(TsdebugError):
    """The eager reference model could not be imported, built or run."""


MAX_MESSAGE = 300


def _shorten(text: str) -> str:
    """Long torch messages (dispatch-key lists) cut to their first sentence."""
    text = " ".join(text.split())
    if len(text) <= MAX_MESSAGE:
        return text
    cut = text.find(". ", 40)
    if 0 < cut < MAX_MESSAGE:
        return text[: cut + 1]
    return text[: MAX_MESSAGE - 1] + "…"


def first_error_line(exc: BaseException) -> str:
    return _shorten(_first_error_line(exc))


def _first_error_line(exc: BaseException) -> str:
    """The informative line of a torch exception.

    Errors raised inside the TorchScript interpreter carry a traceback of
    serialized and original code before the real message; the message is the
    text after the last ``Error: ``.
    """
    text = str(exc).strip()
    if "Traceback of TorchScript" in text or "The following operation failed" in text:
        lines = [ln for ln in text.splitlines() if ln.strip()]
        for i in range(len(lines) - 1, -1, -1):
            ln = lines[i].strip()
            if re_error_prefix(ln):
                rest = ln.split(": ", 1)[1] if ": " in ln else ln
                tail = " ".join(x.strip() for x in lines[i + 1 :])
                return (rest + (" " + tail if tail else "")).strip()
        return lines[-1].strip() if lines else type(exc).__name__
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    # Torch's own multi-line messages put the gist first.
    return lines[0]


def re_error_prefix(line: str) -> bool:
    head = line.split(": ", 1)[0]
    return head.endswith("Error") or head.endswith("Exception")
