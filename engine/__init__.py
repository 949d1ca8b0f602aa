"""tsdebug's engine: loading, IR, interpreter, recording.  Never imports a UI library."""

from engine.errors import ArchiveError, InputError, ModelError, TsdebugError
from engine.run.machine import Breakpoints, Machine, Stop
from engine.session import RunReport, Session

__all__ = [
    "ArchiveError",
    "Breakpoints",
    "InputError",
    "Machine",
    "ModelError",
    "RunReport",
    "Session",
    "Stop",
    "TsdebugError",
]
