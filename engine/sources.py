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
