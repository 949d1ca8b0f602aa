"""The README and docs/python-api.md say what tsdebug does: their examples run as written."""

import contextlib
import io
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

import models as M
from conftest import save_archive

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
PYTHON_API = os.path.join(ROOT, "docs", "python-api.md")


def python_api_example() -> str:
    text = open(PYTHON_API, encoding="utf-8").read()
    return re.search(r"```python\n(.*?)```", text, re.S).group(1)


def test_python_api_example_runs(tmp_path, monkeypatch):
    save_archive(tmp_path / "model.pt", M.randomize_bn(M.ConvNet()), "trace", (torch.randn(1, 3, 224, 224),))
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    scope: dict = {}
    with contextlib.redirect_stdout(out):
        exec(compile(python_api_example(), "python-api.md", "exec"), scope)
    lines = out.getvalue().splitlines()
    # the batch_norm breakpoint stopped inside the stem's BatchNorm, before it ran
    assert lines[0] == "aten::batch_norm stem.1"
    # one line per record, then the report
    m, report = scope["m"], scope["report"]
    assert len(lines) == 1 + len(m.timeline) + 1
    assert lines[-1].startswith("True {")
    assert report.identical


# Commands of the README that run to an end by themselves (serve waits for a browser; cpp needs a compiler).
_RUNNABLE = ("run", "diff", "lint", "export", "render")
_TIME = re.compile(r"\d+(\.\d+)? ?(ms|µs|s)\b")


def readme_sessions(path: str = README) -> list[tuple[str, list[str]]]:
    """Each ```console block of a page: its ``$`` command and the lines it shows."""
    text = open(path, encoding="utf-8").read()
    sessions = []
    for block in re.findall(r"```console\n(.*?)```", text, re.S):
        lines = block.rstrip("\n").splitlines()
        assert lines[0].startswith("$ "), lines[0]
        sessions.append((lines[0][2:], lines[1:]))
    return sessions


def _pattern(line: str) -> re.Pattern:
    """A README line as a pattern: ``...`` stands for what was left out, times for any time."""
    parts = [_TIME.sub("TIME", p) for p in line.split("...")]
    return re.compile(".*".join(re.escape(p).replace("TIME", r"\d+(\.\d+)? ?(ms|µs|s)") for p in parts))


@pytest.fixture(scope="module")
def checkout_copy(tmp_path_factory):
    """Where a user stands after the README's set-up: examples/ and the net.pt it writes."""
    here = tmp_path_factory.mktemp("readme")
    shutil.copytree(os.path.join(ROOT, "examples"), here / "examples")
    subprocess.run([sys.executable, "examples/net.py"], cwd=here, check=True, capture_output=True)
    return here


@pytest.mark.parametrize("command, shown", [s for s in readme_sessions() if s[0].split()[1] in _RUNNABLE],
                         ids=lambda v: v if isinstance(v, str) else "")
def test_readme_example_prints_what_the_readme_shows(checkout_copy, command, shown):
    """Every line the README shows appears, in order, in what the command prints there."""
    _check_session(checkout_copy, command, shown)


def test_the_migration_walk_prints_what_it_shows(tmp_path):
    """docs/migrating.md, its commands run in order in one folder, as a team would."""
    shutil.copytree(os.path.join(ROOT, "examples"), tmp_path / "examples")
    subprocess.run([sys.executable, "examples/net.py"], cwd=tmp_path, check=True, capture_output=True)
    sessions = readme_sessions(os.path.join(ROOT, "docs", "migrating.md"))
    assert [c.split()[1] for c, _ in sessions] == ["lint", "export", "export", "export", "diff", "run"]
    for command, shown in sessions:
        _check_session(tmp_path, command, shown, codes=(0, 1, 2))


def _check_session(where, command: str, shown: list[str], codes: tuple = (0, 1)) -> None:
    argv = command.split()
    assert argv[0] == "tsdebug"
    env = dict(os.environ, TSDEBUG_NO_STATUS="1")
    done = subprocess.run([sys.executable, "-m", "tsdebug.cli", *argv[1:]], cwd=where, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode in codes, done.stderr
    # paths are printed whole; the pages show them from the checkout
    printed = (done.stdout + done.stderr).replace(f"{where}{os.sep}", "").splitlines()
    at = 0
    for line in shown:
        if line.strip() == "...":
            continue
        pat = _pattern(line)
        while at < len(printed) and not pat.fullmatch(printed[at]):
            at += 1
        assert at < len(printed), f"README line not printed by `{command}`:\n{line}\n--- printed:\n" + "\n".join(
            printed)
        at += 1
