"""Small real models exported with torch.export for the .pt2 tests (each: module, args, kwargs, dynamic shapes)."""

import torch
import torch.nn as nn
from torch.export import Dim

import models as M


class ResidualBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x))) + x


class ConvNet(nn.Module):
    """Conv, BatchNorm with non-trivial statistics, residual blocks, pooling, a head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.layers = nn.Sequential(ResidualBlock(8), ResidualBlock(8))
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        y = self.layers(self.stem(x))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1))


class Branchy(nn.Module):
    """torch.cond on the input's data: both branches call submodules."""

    def __init__(self):
        super().__init__()
        self.up = nn.Linear(4, 4)
        self.down = nn.Linear(4, 4)

    def forward(self, x):
        def pos(x):
            return self.up(x).relu()

        def neg(x):
            return self.down(x).sin() * 2

        return torch.cond(x.sum() > 0, pos, neg, (x,))


class CountDown(nn.Module):
    """torch while_loop: double x until the counter reaches n."""

    def forward(self, x, n):
        def cond(i, x):
            return i < n

        def body(i, x):
            return i + 1, x * 2 + 1

        return torch._higher_order_ops.while_loop(cond, body, (torch.zeros((), dtype=torch.long), x))


class Counter(nn.Module):
    """BatchNorm in training mode and a counter buffer: the run writes its buffers."""

    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm1d(4)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def forward(self, x):
        self.steps += 1
        return self.bn(x), self.steps * 3


class DictKwargs(nn.Module):
    """A dict input, a keyword-only input, several outputs of several kinds."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(6, 3)

    def forward(self, x, extra, *, scale):
        y = self.proj(x) * extra["w"] + extra["b"]
        return {"y": y * scale, "norm": y.norm(dim=-1)}, y.argmax(-1)


class GradAutocast(nn.Module):
    """``with torch.no_grad()`` and ``with torch.autocast`` blocks inside forward."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        with torch.no_grad():
            y = self.lin(x).relu()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            z = self.lin(y) @ y.T
        return y, z


class MapRows(nn.Module):
    def forward(self, xs, y):
        from torch._higher_order_ops.map import map as hmap

        def body(x, y):
            return x.sin() + y

        return hmap(body, xs, y)


def encoder():
    torch.manual_seed(0)
    return nn.TransformerEncoderLayer(16, 4, 32, batch_first=True, dropout=0.0)


#: name -> (module factory, args, kwargs, dynamic_shapes)
MODELS = {
    "convnet": (lambda: M.randomize_bn(ConvNet()), (torch.randn(2, 3, 12, 12),), None, None),
    "encoder": (encoder, (torch.randn(2, 5, 16),), None, None),
    "cond": (Branchy, (torch.randn(3, 4),), None, None),
    "while": (CountDown, (torch.randn(3), torch.tensor(4)), None, None),
    "dynamic": (lambda: M.randomize_bn(ConvNet()), (torch.randn(2, 3, 12, 12),), None,
                ({0: Dim("batch", min=1, max=16)},)),
    "counter": (Counter, (torch.randn(6, 4),), None, None),
    "dict_kwargs": (DictKwargs, (torch.randn(2, 6), {"w": torch.tensor(1.5), "b": torch.randn(3)}),
                    {"scale": torch.tensor(0.5)}, None),
    "grad_autocast": (GradAutocast, (torch.randn(3, 4),), None, None),
    "map": (MapRows, (torch.randn(3, 4), torch.randn(4)), None, None),
    "lstm": (M.LSTMNet, (torch.randn(2, 7, 6),), None, None),
}


def export_model(path, name, train=False):
    """Export ``MODELS[name]`` with torch.export and save it at ``path``; returns (path, module, args, kwargs)."""
    factory, args, kwargs, dynamic = MODELS[name]
    torch.manual_seed(0)
    module = factory()
    module = module.train() if train or name == "counter" else module.eval()
    ep = torch.export.export(module, args, kwargs or {}, dynamic_shapes=dynamic)
    torch.export.save(ep, str(path))
    return str(path), module, args, kwargs or {}
