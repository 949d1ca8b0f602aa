"""The README's Python API example runs as written and does what its comments say."""

import contextlib
import io
import os
import re

import torch

import models as M
from conftest import save_archive

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def python_api_example() -> str:
    text = open(README, encoding="utf-8").read()
    section = text[text.index("## Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_python_api_example_runs(tmp_path, monkeypatch):
    save_archive(tmp_path / "model.pt", M.randomize_bn(M.ConvNet()), "trace", (torch.randn(1, 3, 224, 224),))
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    scope: dict = {}
    with contextlib.redirect_stdout(out):
        exec(compile(python_api_example(), "README.md", "exec"), scope)
    lines = out.getvalue().splitlines()
    # the batch_norm breakpoint stopped inside the stem's BatchNorm, before it ran
    assert lines[0] == "aten::batch_norm stem.1"
    # one line per record, then the report
    m, report = scope["m"], scope["report"]
    assert len(lines) == 1 + len(m.timeline) + 1
    assert lines[-1].startswith("True {")
    assert report.identical
