"""Small real models for the tests: each is saved with torch.jit.save and loaded back."""


from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.down is not None:
            identity = self.down(x)
        out += identity  # in place, as torchvision's ResNet does
        return F.relu(out, inplace=True)


class ConvNet(nn.Module):
    """A conv net with BatchNorm and residual blocks."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(inplace=True))
        self.layer1 = nn.Sequential(BasicBlock(8, 8), BasicBlock(8, 16, 2))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, classes)

    def forward(self, x):
        x = self.layer1(self.stem(x))
        return self.fc(torch.flatten(self.pool(x), 1))


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial running statistics, so BatchNorm does real work in eval."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model


class LSTMNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(6, 12, num_layers=2, batch_first=True)
        self.out = nn.Linear(12, 3)

    def forward(self, x):
        y, (h, c) = self.lstm(x)
        return self.out(y), h, c


class GRUNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(5, 7, batch_first=False)

    def forward(self, x):
        y, h = self.gru(x)
        return y.sum(0), h


class TransformerNet(nn.Module):
    def __init__(self):
        super().__init__()
        layer = nn.TransformerEncoderLayer(d_model=16, nhead=4, dim_feedforward=32, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)

    def forward(self, x):
        return self.encoder(x)


class AttentionNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)

    def forward(self, q, k):
        out, weights = self.attn(q, k, k)
        return out, weights


@torch.jit.script
def scale_sum(xs: List[torch.Tensor], factor: float) -> torch.Tensor:
    total = torch.zeros_like(xs[0])
    for x in xs:
        total = total + x * factor
    return total


class ControlFlow(nn.Module):
    """Scripted loops, branches, early return, containers, strings, SetAttr, in-place ops."""

    calls: int
    history: List[int]

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.calls = 0
        self.history = [0]

    def forward(self, x: torch.Tensor, n: int, mode: str = "sum") -> Tuple[torch.Tensor, str, Dict[str, int]]:
        self.calls += 1
        self.history.append(n)
        parts: List[torch.Tensor] = []
        for i in range(n):
            parts.append(self.lin(x) + i)
        k = 0
        while k < 3 and x.sum() > -100:
            x = x * 0.5
            k += 1
        counts: Dict[str, int] = {"parts": len(parts), "k": k}
        nested: List[List[int]] = [[1], [2]]
        inner = nested[0]
        inner.append(7)  # aliasing: must change nested[0]
        counts["inner"] = len(nested[0])
        if mode == "sum":
            y = scale_sum(parts, 0.5)
        elif mode == "max":
            y = torch.stack(parts).max(0)[0]
        else:
            return x, "early {}".format(mode), counts
        y.add_(1.0)
        y.clamp_(min=-1.0)
        label = "n={} k={} calls={}".format(n, k, self.calls)
        return y + x, label, counts

    @torch.jit.export
    def describe(self, x: torch.Tensor) -> Tuple[int, List[int]]:
        shape = x.shape
        return len(shape), list(shape)


class InPlace(nn.Module):
    def forward(self, x):
        y = x * 2
        y.add_(1)
        y[0] = 0.0
        z = torch.relu_(y)
        return z, y


class OptionalArgs(nn.Module):
    def forward(self, x: torch.Tensor, bias: Optional[torch.Tensor] = None, scale: float = 2.0) -> torch.Tensor:
        if bias is not None:
            x = x + bias
        return x * scale


class TupleInput(nn.Module):
    def forward(self, pair: Tuple[torch.Tensor, torch.Tensor], d: Dict[str, torch.Tensor]) -> torch.Tensor:
        return pair[0] + pair[1] + d["a"]


class StdConv(nn.Conv2d):
    """timm's ScaledStdConv2d: the weight is standardized on every call, so the conv never sees a parameter."""

    def __init__(self, cin: int, cout: int, k: int):
        super().__init__(cin, cout, k, padding=k // 2)
        self.gain = nn.Parameter(torch.full((cout,), 1.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = F.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None,
                              weight=self.gain, training=True, momentum=0.0, eps=1e-6).reshape_as(self.weight)
        return F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class StandardizedConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = StdConv(3, 8, 3)
        self.g = nn.Parameter(torch.full((4, 8), 0.5))
        self.head = nn.Parameter(torch.randn(4, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.adaptive_avg_pool2d(torch.relu(self.stem(x)), 1).flatten(1)
        return F.linear(y, self.head * self.g)


@torch.jit.script
def _as_clip(x: torch.Tensor) -> Tuple[torch.Tensor, int]:
    """torchvision's video models: an image becomes a one-frame clip; the helper returns a tuple."""
    dim = x.dim()
    if dim == 4:
        x = x.unsqueeze(2)
    return x, dim


class ClipNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _as_clip(x)[0]
        return self.conv(x).mean((2, 3, 4))


class FixedHead(nn.Module):
    """A conv net whose head fits one input size only (32x32)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 32 * 32, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).flatten(1))
