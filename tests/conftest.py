import os
import sys
import warnings

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

import models as M  # noqa: E402  (tests/ is on the path now)
warnings.filterwarnings("ignore", category=DeprecationWarning)
torch.set_num_threads(2)


def save_archive(path, module, mode="script", example=None):
    """Trace or script ``module``, save it with torch.jit.save, return the path."""
    module = module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if mode == "trace":
            ts = torch.jit.trace(module, example, check_trace=False)
        else:
            ts = torch.jit.script(module)
        torch.jit.save(ts, str(path))
    return str(path)


@pytest.fixture
def archive(tmp_path):
    counter = {"n": 0}

    def make(module, mode="script", example=None, name=None):
        counter["n"] += 1
        path = tmp_path / (name or f"model{counter['n']}_{mode}.pt")
        return save_archive(path, module, mode, example)

    return make


@pytest.fixture
def convnet(archive):
    """A traced conv net with BatchNorm (non-trivial statistics) and residual blocks."""
    return archive(M.randomize_bn(M.ConvNet()), "trace", example=(torch.randn(1, 3, 16, 16),))


@pytest.fixture
def control(archive):
    """Scripted loops, branches, lists, dicts, SetAttr and a second method."""
    return archive(M.ControlFlow(), "script")
