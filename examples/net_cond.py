"""examples/net.py rewritten for torch.export: the `if` on tensor data is a torch.cond (see docs/migrating.md)."""

import torch
import torch.nn as nn


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.features(x)
        y = torch.cond(x.mean() > 0, lambda y: y * 2.0, lambda y: y - 1.0, (y,))
        return self.head(y.mean(dim=(2, 3)))
