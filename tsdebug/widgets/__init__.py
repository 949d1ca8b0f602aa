"""Widgets of the debugger screen, one per file."""

from tsdebug.widgets.callstack import CallStack
from tsdebug.widgets.inspector import Inspector
from tsdebug.widgets.program import ProgramView, RowState
from tsdebug.widgets.source import SourcePane
from tsdebug.widgets.statusbar import StatusBar

__all__ = ["CallStack", "Inspector", "ProgramView", "RowState", "SourcePane", "StatusBar"]
