"""Models for the graph view and render tests: a U-Net with submodules, a scripted greedy decoder
with a loop and a break, a small MLP.  Also written to a fixed directory and traced there for the
screen snapshots (tests/test_graph_screens.py), so the paths on screen are the same everywhere."""

import torch
from torch import nn
import torch.nn.functional as F

class Block(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(cout)
    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(x)))

class UNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc1 = Block(3, 16)
        self.enc2 = Block(16, 32)
        self.pool = nn.MaxPool2d(2)
        self.mid = Block(32, 64)
        self.up2 = nn.ConvTranspose2d(64, 32, 2, stride=2)
        self.dec2 = Block(64, 32)
        self.up1 = nn.ConvTranspose2d(32, 16, 2, stride=2)
        self.dec1 = Block(32, 16)
        self.head = nn.Conv2d(16, 2, 1)
    def forward(self, x):
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        m = self.mid(self.pool(e2))
        d2 = self.dec2(torch.cat([self.up2(m), e2], 1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], 1))
        return self.head(d1)

class Decoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 16)
        self.cell = nn.GRUCell(16, 32)
        self.out = nn.Linear(32, 20)
    def forward(self, h: torch.Tensor, steps: int = 5):
        tok = torch.zeros(h.size(0), dtype=torch.long)
        outs = []
        for i in range(steps):
            h = self.cell(self.emb(tok), h)
            logits = self.out(h)
            tok = logits.argmax(-1)
            outs.append(tok)
            if bool((tok == 0).all()):
                break
        return torch.stack(outs, 1)

class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(784, 512); self.fc2 = nn.Linear(512, 10)
    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x.flatten(1))))

def build_all(directory: str) -> dict:
    """Trace and script the models into ``directory``; returns name -> path."""
    import os
    import warnings

    torch.manual_seed(0)
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        u = UNet().eval()
        out["unet_trace"] = os.path.join(directory, "unet_trace.pt")
        torch.jit.save(torch.jit.trace(u, torch.randn(1, 3, 32, 32)), out["unet_trace"])
        out["unet_script"] = os.path.join(directory, "unet_script.pt")
        torch.jit.save(torch.jit.script(u), out["unet_script"])
        out["decoder"] = os.path.join(directory, "decoder.pt")
        torch.jit.save(torch.jit.script(Decoder().eval()), out["decoder"])
        out["mlp"] = os.path.join(directory, "mlp.pt")
        torch.jit.save(torch.jit.trace(MLP().eval(), torch.randn(1, 1, 28, 28)), out["mlp"])
    return out


class Wide(nn.Module):
    """Hundreds of parallel branches joined at the end: a very wide graph."""

    def __init__(self, n: int = 300):
        super().__init__()
        self.n = n

    def forward(self, x):
        parts = [x * float(i) for i in range(self.n)]
        return torch.stack(parts).sum(0)


class Identity(nn.Module):
    def forward(self, x):
        return x, x


class OddNames(nn.Module):
    """Submodule names a layout must not trip on: ModuleDict keys with dashes and quotes, deep nesting."""

    def __init__(self):
        super().__init__()
        self.heads = nn.ModuleDict({"a-b": nn.Linear(4, 4), 'with space': nn.Linear(4, 4)})
        inner = nn.Linear(4, 4)
        for _ in range(6):
            inner = nn.Sequential(inner, nn.ReLU())
        self.deep = inner

    def forward(self, x):
        return self.deep(self.heads["a-b"](x) + self.heads['with space'](x))


class EmptyBranches(nn.Module):
    def forward(self, x, flag: bool):
        y = x
        if flag:
            pass
        else:
            pass
        while bool(y.sum() > 100):
            break
        return y
