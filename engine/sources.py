"""Where a source file belongs: torch's own code, or the user's.

Every format names the Python lines its nodes came from (a TorchScript
node's source range, an FX node's ``stack_trace``); the frames inside torch
are skipped to find the user's line.
"""

from __future__ import annotations

import torch

#: Path fragments that mark a frame as torch's own code rather than the user's.
_TORCH_DIRS = tuple(
    {
        "/site-packages/torch/",
        "/dist-packages/torch/",
        "\\site-packages\\torch\\",
        torch.__file__.rsplit("/", 1)[0] + "/",
    }
)


def display_path(path: str) -> str:
    """A file as the screen names it: an installed package's file from the package on
    (``torch/nn/modules/pooling.py``, not the whole site-packages path), any other whole."""
    for marker in ("/site-packages/", "/dist-packages/"):
        at = path.rfind(marker)
        if at >= 0:
            return path[at + len(marker):]
    return path


def is_torch_frame(path: str) -> bool:
    return any(d in path for d in _TORCH_DIRS)


def is_user_file(path: str | None) -> bool:
    """A file of the user's Python: not torch's own, not the archive's serialized code, not
    code made at run time (``<string>``)."""
    return bool(path) and not is_torch_frame(path) and not path.startswith(("code/__torch__", "<"))


#: The most of a source file tsdebug reads; a longer file is not the user's Python as written.
MAX_SOURCE_BYTES = 8 << 20


class SourceUnreadable(Exception):
    """Why a file named as a source cannot be shown: not a regular file, too large, unreadable."""


def read_source(path: str, limit: int = MAX_SOURCE_BYTES) -> str:
    """The text of the source file ``path``, read only if it is a regular file of at most ``limit`` bytes.

    Debug info in an archive names files by path, and the path is the
    archive's word, not ours: ``/dev/zero``, a FIFO or a symlink to either
    would be read until memory runs out (or block forever), so the file is
    opened without blocking, checked to be regular on the descriptor itself
    (no swap between a check and the open), and read no further than the bound.
    Raises ``SourceUnreadable`` with the reason.
    """
    import os
    import stat

    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except OSError as exc:
        raise SourceUnreadable(f"cannot open ({exc.strerror})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SourceUnreadable("not a regular file")
        if st.st_size > limit:
            raise SourceUnreadable(f"source file too large ({st.st_size} bytes; tsdebug reads up to {limit})")
        chunks = []
        left = limit + 1
        while left > 0:
            data = os.read(fd, min(left, 1 << 20))
            if not data:
                break
            chunks.append(data)
            left -= len(data)
        if left <= 0:  # grew while read
            raise SourceUnreadable(f"source file too large (more than {limit} bytes)")
    except OSError as exc:
        raise SourceUnreadable(f"cannot read ({exc.strerror})") from None
    finally:
        os.close(fd)
    return b"".join(chunks).decode("utf-8", errors="replace")


_LINES: dict[str, tuple[tuple, list[str] | str]] = {}


def source_lines(path: str) -> list[str] | str:
    """The lines of ``path`` (no line ends), or the reason it cannot be read (a str).

    Cached per file and refreshed when its size or time changes (the UI asks
    for the same file at every step); a file that is not regular is never opened.
    """
    import os

    try:
        st = os.stat(path)
        key = (st.st_mtime_ns, st.st_size, st.st_ino, st.st_mode)
    except OSError as exc:
        return f"cannot open ({exc.strerror})"
    cached = _LINES.get(path)
    if cached is not None and cached[0] == key:
        return cached[1]
    try:
        found: list[str] | str = read_source(path).splitlines()
    except SourceUnreadable as exc:
        found = str(exc)
    if len(_LINES) > 256:
        _LINES.clear()
    _LINES[path] = (key, found)
    return found


def source_line(path: str, line: int) -> str:
    """Line ``line`` (1-based) of ``path``, '' where there is none or the file cannot be read."""
    lines = source_lines(path)
    if isinstance(lines, str) or not 0 < line <= len(lines):
        return ""
    return lines[line - 1]
