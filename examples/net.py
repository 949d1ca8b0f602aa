"""A small model to try tsdebug on: `python examples/net.py` writes net.pt.

A conv block with BatchNorm, a data-dependent `if` that tracing freezes to
the branch the example took, and a linear head.
"""

import sys

import torch
import torch.nn as nn


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.features(x)
        if x.mean() > 0:  # tracing keeps only the branch the example took
            y = y * 2.0
        else:
            y = y - 1.0
        return self.head(y.mean(dim=(2, 3)))


if __name__ == "__main__":
    torch.manual_seed(0)
    model = Net().eval()
    example = torch.rand(1, 3, 32, 32)  # mean > 0: the first branch
    traced = torch.jit.trace(model, example, check_trace=False)
    out = sys.argv[1] if len(sys.argv) > 1 else "net.pt"
    torch.jit.save(traced, out)
    torch.save(model.state_dict(), out.replace(".pt", "") + "_weights.pt")
    print(f"wrote {out}")
