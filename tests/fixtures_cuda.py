"""Models whose archives were made on a CUDA machine (scripts/device_check.py).

The archives live in tests/data/; the modules here are the same Python, so
the CPU tests can compare against them.
"""

import os

import torch
import torch.nn as nn


class CudaConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        y = torch.relu(self.bn(self.conv(x)))
        return self.fc(y.mean((2, 3)))


class BakedDevice(nn.Module):
    """``device=x.device`` becomes a ``cuda:0`` constant when traced on a GPU."""

    def forward(self, x):
        offset = torch.arange(x.shape[-1], device=x.device, dtype=x.dtype)
        return x + offset


def make_cuda_fixtures(out_dir: str) -> dict:
    torch.manual_seed(0)
    made = {}
    x = torch.randn(1, 3, 8, 8, device="cuda")
    net = CudaConvNet().eval().cuda()
    traced = torch.jit.trace(net, (x,), check_trace=False)
    torch.jit.save(traced, os.path.join(out_dir, "cuda_traced_convnet.pt"))
    made["cuda_traced_convnet.pt"] = "traced on cuda:0"
    scripted = torch.jit.script(CudaConvNet().eval().cuda())
    torch.jit.save(scripted, os.path.join(out_dir, "cuda_scripted_convnet.pt"))
    made["cuda_scripted_convnet.pt"] = "scripted, parameters on cuda:0"
    baked = torch.jit.trace(BakedDevice(), (torch.randn(2, 5, device="cuda"),), check_trace=False)
    torch.jit.save(baked, os.path.join(out_dir, "cuda_baked_device.pt"))
    made["cuda_baked_device.pt"] = str(baked.graph)
    return made
