"""The files tsdebug reads and the files it writes, kept apart.

Every file the user gives us to read (the model, ``--inputs``, an input file,
the eager model's source, its weights, a library) goes through
``check_regular`` first: a FIFO or a device would block ``open`` or ``read``
forever, a directory cannot be read.  It is then noted with ``note_read``.
Every file tsdebug writes goes through ``atomic_write``: it refuses a path that
is (through a symlink or a hard link too) one of the files read, and writes a
private temporary file beside the target, renamed over it only once complete,
so a failed write (a full disk) leaves nothing half-written.
"""

from __future__ import annotations

import os
import stat
import tempfile
from typing import Callable

from engine.errors import TsdebugError

#: (st_dev, st_ino) -> the path as the user named it, for every file read in this process
_READ: dict[tuple[int, int], str] = {}
_READ_REAL: dict[str, str] = {}


def reset_reads() -> None:
    """Forget the files read (the CLI starts each command afresh)."""
    _READ.clear()
    _READ_REAL.clear()


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def check_regular(path: str, what: str) -> os.stat_result:
    """``path`` is a regular file (following symlinks), checked without opening it; else a one-line error.

    ``what`` names the file in the message (``"--inputs"``, ``"the model"``...).
    """
    named = f"{what} {path}" if what else path
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise TsdebugError(f"{named}: no such file") from None
    except OSError as exc:
        raise TsdebugError(f"{named}: cannot read ({exc.strerror or exc})") from None
    if not stat.S_ISREG(st.st_mode):
        raise TsdebugError(f"{named} is {_kind(st.st_mode)}, not a regular file; give a file")
    return st


def note_read(path: str) -> None:
    """Remember that tsdebug reads ``path``: no output may land on it."""
    try:
        st = os.stat(path)
    except OSError:
        return
    _READ[(st.st_dev, st.st_ino)] = path
    _READ_REAL[os.path.realpath(path)] = path


def read_regular(path: str, what: str) -> str:
    """``check_regular`` then ``note_read``; returns ``path``."""
    check_regular(path, what)
    note_read(path)
    return path


def read_file_of(path: str | None) -> str | None:
    """The file tsdebug read that ``path`` is (by real path, or by device and inode: a hard link), else None."""
    if not path:
        return None
    found = _READ_REAL.get(os.path.realpath(path))
    if found is not None:
        return found
    try:
        st = os.stat(path)
    except OSError:
        return None
    return _READ.get((st.st_dev, st.st_ino))


def check_output(path: str, flag: str) -> str:
    """Refuse an output path that is a file tsdebug read, or whose folder is missing; returns the folder."""
    read = read_file_of(path)
    if read is not None:
        same = "" if os.path.abspath(read) == os.path.abspath(path) else f" ({read})"
        raise TsdebugError(f"{flag} {path} is a file tsdebug reads{same}; it would be overwritten: "
                           "choose another file")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise TsdebugError(f"{flag} {path}: the folder {folder} does not exist")
    if os.path.isdir(path):
        raise TsdebugError(f"{flag} {path} is a directory; give a file name")
    try:
        st = os.stat(path)
    except OSError:
        st = None
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise TsdebugError(f"{flag} {path} is {_kind(st.st_mode)}; give a regular file to write")
    return folder


def atomic_write(path: str, write: Callable[[str], None], flag: str) -> None:
    """``write(tmp)`` into a private temporary file beside ``path``, then rename it over ``path``.

    Refused (one line) when ``path`` is a file tsdebug read; a failed write
    (no space, no permission) removes the temporary file and says so.
    """
    folder = check_output(path, flag)
    try:
        # the target's extension kept: writers choose the format by it (render's svg/png, a .pt2)
        fd, tmp = tempfile.mkstemp(prefix=".tsdebug-", suffix=os.path.splitext(path)[1] or ".tmp", dir=folder)
    except OSError as exc:
        raise TsdebugError(f"{flag} {path}: cannot write in {folder} ({exc.strerror or exc})") from None
    os.close(fd)
    try:
        write(tmp)
        if os.path.exists(path):
            try:  # keep the target's permissions, as an in-place write would
                os.chmod(tmp, stat.S_IMODE(os.stat(path).st_mode))
            except OSError:
                pass
        else:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except OSError as exc:
        raise TsdebugError(f"{flag} {path}: cannot write ({exc.strerror or exc})") from None
    except RuntimeError as exc:  # torch.save's C++ writer: "basic_ios::clear: iostream error" on a full disk
        reason = "no space left on the device" if _disk_full(folder) else str(exc).strip().splitlines()[0]
        raise TsdebugError(f"{flag} {path}: cannot write ({reason})") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _disk_full(folder: str) -> bool:
    try:
        st = os.statvfs(folder)
    except OSError:
        return False
    return st.f_bavail == 0


def write_bytes(path: str, data: bytes, flag: str) -> None:
    """``atomic_write`` of ``data``."""

    def put(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    atomic_write(path, put, flag)


__all__ = ["check_regular", "note_read", "read_regular", "read_file_of", "check_output", "atomic_write",
           "write_bytes", "reset_reads"]
