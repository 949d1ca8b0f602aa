"""The bundled example model that ``tsdebug demo`` (and ``make demo``) opens.

It is built from the modules below on first use and cached, so the demo
shows a real archive: calls into submodules, a scripted ``If`` and ``Loop``,
a tensor with ``-inf`` values worth inspecting, and a branch that tracing
froze (``if x.mean() > 0`` in ``DemoNet.forward``).
"""

from __future__ import annotations

import os
import warnings

import torch
import torch.nn as nn

DEMO_VERSION = 1


class ConvBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)))


class Refiner(nn.Module):
    """Scripted: its loop and branch stay real control flow in the archive."""

    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Linear(dim, dim)
        self.steps = 3

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for i in range(self.steps):
            update = torch.tanh(self.proj(h))
            if bool(update.abs().max() > 0.5):
                h = h + 0.5 * update
            else:
                h = h + update
        return h


class DemoNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = ConvBlock(3, 8)
        self.body = ConvBlock(8, 8)
        self.refine = torch.jit.script(Refiner(8))
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        y = self.body(self.stem(x))
        # Tracing freezes this branch: only the side taken for the example runs later.
        if x.mean() > 0:
            y = y * 2.0
        else:
            y = y - 1.0
        logp = torch.log(y)  # -inf where relu gave zeros: a tensor worth a look
        pooled = torch.where(torch.isfinite(logp), logp, torch.zeros_like(logp)).mean(dim=(2, 3))
        return self.head(self.refine(pooled)).softmax(dim=-1)


def cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "tsdebug")


def build_demo(path: str) -> str:
    torch.manual_seed(0)
    model = DemoNet().eval()
    example = torch.rand(1, 3, 32, 32) + 0.1  # positive mean: the `if` takes its first branch
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, example)
        # a private temporary file per run: first-time demos started at once must not share one
        import tempfile

        fd, tmp = tempfile.mkstemp(prefix=".demo-", suffix=".pt", dir=os.path.dirname(os.path.abspath(path)))
        os.close(fd)
        try:
            torch.jit.save(traced, tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return path


def demo_archive() -> str:
    """The demo archive's path, built on first use.

    Keyed by this file's place and text: the archive records the source path
    it was traced from, which the debugger shows.
    """
    import hashlib

    here = os.path.abspath(__file__)
    with open(here, "rb") as f:
        key = hashlib.sha1(here.encode() + f.read()).hexdigest()[:10]
    path = os.path.join(cache_dir(), f"demo-v{DEMO_VERSION}-torch{torch.__version__.split('+')[0]}-{key}.pt")
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        build_demo(path)
    return path
