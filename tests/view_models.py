"""Models written as a user outside the project would, for the program pane and inspector tests
(tests/test_program_pane.py): the U-Net and greedy decoder of tests/graph_models.py, a scripted
helper with dicts and string formatting, NaN producers, a scripted early ``return``.

Also written to a fixed directory and saved there for the screen snapshots, so paths on screen
are the same everywhere.
"""

from typing import Dict, List, Tuple

import torch
from torch import nn

from graph_models import Decoder, UNet  # noqa: F401  (saved from here too)


class Stats(nn.Module):
    """A scripted helper of the kind people write around a model: a dict, string formatting."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, str]:
        stats: Dict[str, torch.Tensor] = {"mean": x.mean(), "max": x.amax()}
        msg = "mean={:.3f} max={:.3f}".format(stats["mean"].item(), stats["max"].item())
        y = self.scale(x / (stats["max"] + 1e-6))
        return y, msg


class AllNaN(nn.Module):
    """log of a negative number: every element NaN."""

    def forward(self, x):
        y = torch.relu(x) + 1.0
        return torch.log(-y)


class SomeNaN(nn.Module):
    """sqrt of values either side of zero: NaN where they are negative."""

    def forward(self, x):
        return torch.sqrt(x)


class EarlyReturn(nn.Module):
    """A scripted early return inside a loop: TorchScript adds flags and an If for it."""

    def forward(self, x: torch.Tensor, limit: float) -> torch.Tensor:
        for i in range(4):
            x = x * 2.0
            if bool(x.sum() > limit):
                return x
        return x - 1.0


class Accumulate(nn.Module):
    """A loop whose body reads a different value each iteration (the inspector must show this one's)."""

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        outs: List[torch.Tensor] = []
        for i in range(3):
            x = x + 1.0
            outs.append(x * 2.0)
        return outs


def build_all(directory: str) -> dict:
    """Save every model into ``directory``; returns name -> path."""
    import os
    import warnings

    torch.manual_seed(0)
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")

        def save(name, module, example=None):
            module = module.eval()
            ts = torch.jit.trace(module, example, check_trace=False) if example is not None else torch.jit.script(module)
            out[name] = os.path.join(directory, name + ".pt")
            torch.jit.save(ts, out[name])

        save("unet_trace", UNet(), torch.randn(1, 3, 32, 32))
        save("unet_script", UNet())
        save("decoder", Decoder())
        save("stats", Stats())
        save("allnan", AllNaN())
        save("somenan", SomeNaN())
        save("early", EarlyReturn())
        save("accumulate", Accumulate())
        ep = torch.export.export(UNet().eval(), (torch.randn(1, 3, 32, 32),))
        out["unet_export"] = os.path.join(directory, "unet_export.pt2")
        torch.export.save(ep, out["unet_export"])
    return out
