"""Models that can tell aliased inputs from equal ones (kept in a file: --eager takes a path)."""

from typing import Dict, List, Tuple

import torch
import torch.nn as nn


class SelfAttention(nn.Module):
    """``mha(x, x, x)``: MultiheadAttention tests ``query is key`` (and, under no_grad, takes
    its fused path only for self-attention)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.mha = nn.MultiheadAttention(16, 2, batch_first=True)

    def forward(self, q, k, v):
        return self.mha(q, k, v, need_weights=False)[0]


class InPlaceOnOne(nn.Module):
    """Writes one argument in place and reads the other: the same tensor twice sees the write."""

    def forward(self, a, b):
        a.mul_(2.0)
        return a + b


class RowOfWhole(nn.Module):
    """A view and its base passed side by side (``model(x, x[0])``)."""

    def forward(self, whole, row):
        row.add_(1.0)
        return whole.sum(0)


class ListAndArgument(nn.Module):
    """The same tensor inside a list and as an argument."""

    def forward(self, xs: List[torch.Tensor], y):
        y.mul_(3.0)
        return xs[0] + y


class PairOfOne(nn.Module):
    """A tuple holding one tensor twice."""

    def forward(self, pair: Tuple[torch.Tensor, torch.Tensor]):
        pair[0].add_(1.0)
        return pair[1] * 1.0


class SameInTwoKeys(nn.Module):
    """A dict whose two keys hold one tensor."""

    def forward(self, d: Dict[str, torch.Tensor]):
        d["a"].sub_(1.0)
        return d["b"] * 2.0


class TwoDtypeViews(nn.Module):
    """Two inputs viewing one storage at other offsets: ``x[:, :2]`` and ``x[:, 1:]`` overlap."""

    def forward(self, left, right):
        left.zero_()
        return right.clone()
