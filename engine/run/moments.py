"""Min, max, sum and sum of squares of a CPU tensor in one pass (``engine/run/_moments.c``).

``values`` summarizes every tensor a run records; this is its fast path.  The
C part is optional (``BUILT``: setup.py builds it when a C compiler is
there).  The pass runs in torch's own OpenMP team, found here among the
loaded libraries (Linux); ``AVAILABLE`` says both are there.  Elsewhere
``values`` uses torch's reductions: a single-threaded pass next to torch's
multi-threaded ops is slower than they are (see the C file).
"""

from __future__ import annotations

import ctypes
import os
import sys

import torch

try:
    from engine.run import _moments
except ImportError:  # built without a C compiler
    _moments = None

BUILT = _moments is not None
#: The OpenMP library whose team runs the pass, or None.
OPENMP_LIBRARY: str | None = None
#: Whether ``values`` takes the one-pass statistics (the extension is built and torch's team found).
AVAILABLE = False


def one_pass(flat: torch.Tensor) -> tuple[float, float, float, float]:
    """(min, max, sum, sum of squares) of a contiguous float32/float64 CPU tensor with elements.

    A NaN is skipped by min and max but makes the sum NaN: when any of the
    four is not finite, count with torch.
    """
    return _moments.moments(flat.data_ptr(), flat.numel(), flat.dtype == torch.float64, torch.get_num_threads())


def _torch_openmp() -> tuple[str, int, int, int] | None:
    """The OpenMP library torch loaded and the addresses of the three functions the pass needs."""
    if not sys.platform.startswith("linux") or not torch.backends.openmp.is_available():
        return None
    try:
        with open("/proc/self/maps") as maps:
            # address, perms, offset, device, inode, then the path (which may hold spaces)
            fields = (line.rstrip("\n").split(None, 5) for line in maps)
            paths = sorted({f[5] for f in fields if len(f) == 6 and f[5].startswith("/")
                            and "omp" in f[5].rsplit("/", 1)[-1]})
    except OSError:
        return None
    for path in paths:
        try:  # RTLD_NOLOAD: only a library already in the process, never a new one
            lib = ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
            names = ("GOMP_parallel", "omp_get_thread_num", "omp_get_num_threads")
            addresses = [ctypes.cast(getattr(lib, name), ctypes.c_void_p).value for name in names]
        except (OSError, AttributeError):
            continue
        if all(addresses):
            return (path, *addresses)
    return None


def _join_torchs_team() -> str | None:
    """Hand the C side torch's OpenMP functions; the library's path, or None where there is none."""
    found = _torch_openmp()
    if found is None:
        return None
    _moments.use_openmp(*found[1:])
    return found[0]


if _moments is not None:
    OPENMP_LIBRARY = _join_torchs_team()
    AVAILABLE = OPENMP_LIBRARY is not None
