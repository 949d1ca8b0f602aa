"""Cases found on real archives: CUDA-made archives, TorchScript classes, ops without outputs."""

import json
import os
import warnings
from enum import Enum
from typing import Dict, List, NamedTuple, Optional, Tuple

import pytest
import torch
import torch.nn as nn

from engine import Session
from diff_models import ForksAndNoGrad as Forks
from fixtures_cuda import CudaConvNet
from tsdebug.cli import main

DATA = os.path.join(os.path.dirname(__file__), "data")


@pytest.mark.parametrize("name", ["cuda_traced_convnet.pt", "cuda_scripted_convnet.pt"])
def test_archive_saved_on_cuda_runs_on_cpu(name):
    path = os.path.join(DATA, name)
    s = Session(path)
    x = torch.randn(1, 3, 8, 8)
    s.start(values=(x,))
    report = s.run_and_compare()
    assert report.error is None and report.identical
    # and against the Python module with the archive's weights
    eager = CudaConvNet().eval()
    eager.load_state_dict(torch.jit.load(path, map_location="cpu").state_dict())
    with torch.no_grad():
        assert torch.allclose(report.outputs, eager(x), atol=1e-6)


def test_baked_cuda_device_is_a_clear_error(capsys):
    path = os.path.join(DATA, "cuda_baked_device.pt")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code = main(["run", path])
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err
    assert "cuda" in lines[0].lower() and "baked" in lines[0]


@torch.jit.script
class Boxes:
    def __init__(self, data: torch.Tensor, sizes: List[int]):
        self.data = data
        self.sizes = sizes

    def scale(self, f: float) -> "Boxes":
        self.data = self.data * f
        return self

    def count(self) -> int:
        return len(self.sizes)


class UsesClass(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = Boxes(x, [1, 2])
        b.sizes.append(3)  # mutates the object's list: count() must see 3
        b = b.scale(2.0)
        if isinstance(b, Boxes):
            return b.data + b.count()
        return x


class Warns(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        warnings.warn("scripted models always return a tuple")
        print("x has", x.numel(), "elements")
        return x + 1


class SelfAttention(nn.Module):
    """torchvision's ViT calls attention with need_weights=False: an undefined second output."""

    def __init__(self):
        super().__init__()
        self.ln = nn.LayerNorm(16)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)

    def forward(self, x):
        x = self.ln(x)
        y, _ = self.attn(x, x, x, need_weights=False)
        return y


@pytest.mark.parametrize("inline", [False, True])
def test_torchscript_class_objects(archive, inline):
    path = archive(UsesClass(), "script")
    x = torch.randn(3)
    s = Session(path, inline=inline)
    m = s.start(values=(x,))
    m.run()
    assert m.error is None
    assert torch.equal(m.outputs, x * 2 + 3)


def test_warn_and_print_are_captured(archive, capfd):
    path = archive(Warns(), "script")
    s = Session(path)
    m = s.start(values=(torch.ones(4),))
    m.run()
    assert torch.equal(m.outputs, torch.full((4,), 2.0))
    out, err = capfd.readouterr()
    assert "elements" not in out and "always return" not in err
    assert s.program.messages.lines == ["warning: scripted models always return a tuple", "x has 4 elements"]


@pytest.mark.parametrize("mode", ["trace", "script"])
def test_attention_without_weights(archive, mode):
    x = torch.randn(1, 5, 16)
    path = archive(SelfAttention(), mode, example=(x,))
    s = Session(path)
    s.start(values=(x,))
    r = s.run_and_compare()
    assert r.error is None and r.identical


def test_origin_of_traced_method_with_only_calls(archive):
    class OnlyCalls(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(3, 3)
            self.b = nn.Linear(3, 3)

        def forward(self, x):
            return self.b(self.a(x))

    path = archive(OnlyCalls(), "trace", example=(torch.randn(1, 3),))
    assert Session(path).method_kinds() == {"forward": "traced"}


@torch.jit.script
class Coder:
    """Like torchvision's BoxCoder: a class object kept as a module attribute."""

    def __init__(self, w: float):
        self.w = w
        self.calls = 0

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x * self.w


class HoldsObject(nn.Module):
    def __init__(self):
        super().__init__()
        self.coder = Coder(2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.coder.decode(x)
        if isinstance(self.coder, Coder):
            y = y + 1
        return y + self.coder.calls


@pytest.mark.parametrize("inline", [False, True])
def test_class_object_attribute(archive, inline):
    path = archive(HoldsObject(), "script")
    x = torch.randn(3)
    s = Session(path, inline=inline)
    m = s.start(values=(x,))
    m.run()
    assert m.error is None
    assert torch.equal(m.outputs, (x * 2 + 1) + 1)  # calls == 1 after decode: the object itself was mutated
    m = s.restart()
    m.run()
    assert torch.equal(m.outputs, (x * 2 + 1) + 2)  # and it stays mutated, as in torch


@torch.jit.script
class Mapper:
    def __init__(self, k: int, scales: List[float]):
        self.k = k
        self.scales = scales

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.k + self.scales[0]


class SetsObject(nn.Module):
    """Like torchvision's MultiScaleRoIAlign: builds an object on first call and keeps it."""

    map_levels: Optional[Mapper]

    def __init__(self):
        super().__init__()
        self.map_levels = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.map_levels is None:
            self.map_levels = Mapper(3, [0.5, 1.0])
        mapper = self.map_levels
        assert mapper is not None
        return mapper(x)


def test_class_object_stored_in_module(archive):
    path = archive(SetsObject(), "script")
    x = torch.randn(4)
    s = Session(path)
    s.start(values=(x,))
    r = s.run_and_compare()
    assert r.error is None and r.identical
    assert torch.equal(r.outputs, x * 3 + 0.5)


def test_run_reports_what_the_model_said_and_nothing_reaches_the_terminal(archive, capfd):
    """`tsdebug run`: the model's warnings and prints are reported, from the engine's
    run, and neither run (the native one included) writes them to the terminal."""
    import json

    path = archive(Warns(), "script")
    assert main(["run", path, "--input", "float32[4]"]) == 0
    out, err = capfd.readouterr()
    assert "said       warning: scripted models always return a tuple  (and 1 more lines)" in out
    assert "UserWarning" not in err and "always return" not in err and err == ""
    assert main(["run", path, "--input", "float32[4]", "--json"]) == 0
    out, err = capfd.readouterr()
    assert json.loads(out)["messages"] == ["warning: scripted models always return a tuple", "x has 4 elements"]
    assert err == ""


class Outputs(NamedTuple):
    doubled: torch.Tensor
    both: List[torch.Tensor]


class ReturnsStructures(nn.Module):
    def forward(self, x: torch.Tensor) -> Tuple[Dict[str, torch.Tensor], Outputs, str]:
        return {"y": x + 1, "z": x.sum()}, Outputs(x * 2, [x, x.t()]), "done"


def test_structured_outputs_are_shown_and_saved(archive, capsys, tmp_path):
    path = archive(ReturnsStructures(), "script")
    saved = str(tmp_path / "out.pt")
    assert main(["run", path, "--input", "float32[2,3]", "--seed", "1", "--save-outputs", saved]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("outputs"))
    # a dict reads as keys with values (not as a set of keys); named tuples as tuples
    assert "({'y': float32[2,3], 'z': float32[]}, (float32[2,3], [float32[2,3], float32[3,2]]), 'done')" in line
    assert "identical" in line
    d, o, s = torch.load(saved, weights_only=True)
    assert s == "done" and set(d) == {"y", "z"}
    x = o[1][0]
    assert torch.equal(o[0], x * 2) and torch.equal(o[1][1], x.t()) and torch.equal(d["y"], x + 1)
    import json

    assert main(["run", path, "--input", "float32[2,3]", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)["outputs"]["items"][0]
    assert d["kind"] == "dict" and d["keys"] == ["'y'", "'z'"] and d["items"][1]["shape"] == []


@pytest.mark.parametrize("inline", [False, True])
def test_fork_runs_as_a_call_one_can_step_into(archive, inline):
    module = Forks().eval()  # torch.jit.fork / wait, and a no_grad block after them
    path = archive(module, "script")
    x = torch.randn(2, 4)
    s = Session(path, inline=inline)
    s.start(values=(x,))
    report = s.run_and_compare()
    assert report.error is None and report.identical
    with torch.no_grad():
        assert torch.equal(report.outputs, module(x))
    m = s.restart()
    while m.current_node.kind != "prim::fork":
        m.step()
    m.step()  # into the forked graph
    assert m.current_node.id.startswith(m.frames()[-1].graph.name + "/")
    assert m.frames()[-1].graph.short_name in ("forward.fork@5", "forward[inlined].fork@5")
    m.step_out()
    fork = next(r for r in m.timeline if r.node.kind == "prim::fork")
    future = fork.outputs[0]
    assert isinstance(future, torch.futures.Future) and future.done()
    with torch.no_grad():
        assert torch.equal(future.value(), module.a(x))
    # the branch's linear ran under the module path it has in the model
    assert any(r.node.kind == "aten::linear" and r.module_path == "a.lin" for r in m.timeline)
    if inline:  # the forked graph is inlined too: no calls in it, a flat list of ops
        forked = s.program.graph_of(next(r for r in m.timeline if r.node.kind == "aten::linear").node.id)
        assert forked.inlined and not [n for n in forked.walk() if n.kind == "prim::CallMethod"]


def test_fork_archive_exits_cleanly(archive):
    """A run left torch's own Futures alive at exit, and the process aborted now and then."""
    import subprocess
    import sys

    path = archive(Forks(), "script")
    for _ in range(3):
        res = subprocess.run([sys.executable, "-m", "tsdebug.cli", "run", path, "--input", "float32[2,4]"],
                             capture_output=True, text=True, env={**os.environ, "TSDEBUG_NO_STATUS": "1"})
        assert res.returncode == 0 and res.stderr == "", res.stderr


class CorrBlock(nn.Module):
    """Methods other than forward, one calling another of its module (RAFT's correlation block)."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 4)

    def volume(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.proj(x)) * 2

    def index(self, x: torch.Tensor) -> torch.Tensor:
        return self.volume(x) + 1


class CallsMethods(nn.Module):
    def __init__(self):
        super().__init__()
        self.corr = CorrBlock()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.corr.index(x) - self.scale(x)

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        return x * 3


def test_methods_calling_methods_of_their_module_have_its_path_in_both_views(archive):
    """The inlined graph names a method's own module SELF (``corr(CorrBlock).SELF(CorrBlock).proj``):
    the path is ``corr.proj``, as in the call tree."""
    path = archive(CallsMethods(), "script")
    args = (torch.randn(2, 4),)

    def op_paths(inline):
        m = Session(path, inline=inline).start(values=args)
        assert m.run() == "finished"
        return [(r.node.kind, r.module_path) for r in m.timeline if r.node.kind.startswith("aten::")]

    tree, inlined = op_paths(False), op_paths(True)
    assert tree == inlined
    assert ("aten::linear", "corr.proj") in tree and ("aten::relu", "corr") in tree and ("aten::mul", "") in tree
    assert not any("SELF" in p for _, p in inlined)


class NoGradBlock(nn.Module):
    """``with torch.no_grad():`` in scripted code: prim::Enter / prim::Exit call the context's methods."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        with torch.no_grad():
            y = self.lin(x)
        z = self.lin(x)
        return y + z


@pytest.mark.parametrize("inline", [False, True])
@pytest.mark.parametrize("grad", [False, True])
def test_with_statement_runs_the_context_methods(archive, inline, grad):
    module = NoGradBlock().eval()
    path = archive(module, "script")
    x = torch.randn(2, 4)
    s = Session(path, inline=inline, grad=grad)
    s.start(values=(x,))
    report = s.run_and_compare()
    assert report.error is None and report.identical
    with torch.set_grad_enabled(grad):
        assert torch.equal(report.outputs, module(x))
    # the block ran without grad; after it, the run's own mode again (as in Python: TorchScript's
    # profiling executor loses the restored mode, the simple executor keeps it; both give these bits)
    linears = [r for r in s.machine.timeline if r.node.kind == "aten::linear"]
    assert [r.outputs[0].requires_grad for r in linears] == [False, grad]
    # entering the block is a step into __enter__, and the caller's grad mode is back after the run
    m = s.restart()
    while m.current_node.kind != "prim::Enter":
        m.step()
    m.step()
    assert m.frames()[-1].label.endswith("__enter__")
    m.run()
    assert torch.is_grad_enabled()


class Mode(Enum):
    FAST = 1
    SLOW = 2


class EnumArgument(nn.Module):
    def forward(self, x, mode: Mode = Mode.SLOW):
        return x * 2 if mode == Mode.SLOW else x


class EnumAttribute(nn.Module):
    def __init__(self):
        super().__init__()
        self.mode = Mode.SLOW

    def forward(self, x):
        return x * 2 if self.mode == Mode.SLOW else x


class Color(Enum):
    RED = "r"
    BLUE = "b"


class EnumRich(nn.Module):
    """Enum attributes, constants, a method taking a member, its name and value."""

    def __init__(self):
        super().__init__()
        self.mode = Mode.FAST
        self.color = Color.BLUE

    def pick(self, m: Mode) -> int:
        return m.value * 10

    def forward(self, x):
        y = x * self.pick(self.mode)
        if self.color == Color.BLUE and self.mode != Mode.SLOW:
            y = y + len(self.color.name) + len(self.color.value)
        return y


def _fresh_process_run(path: str, *extra: str):
    """``tsdebug run`` in a process that never imported the enum classes (this one has them,
    having scripted the models)."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "tsdebug.cli", "run", path, "--input", "float32[3]", *extra],
                          capture_output=True, text=True, env={**os.environ, "TSDEBUG_NO_STATUS": "1"})


def test_an_enum_argument_without_its_class_is_a_clear_error(archive):
    """torch cannot hand a forward's enum default to Python, nor take one from it."""
    from test_bad_input import assert_one_line_error

    res = _fresh_process_run(archive(EnumArgument(), "script"))
    assert_one_line_error(res.returncode, res.stderr, "the default of parameter 'mode'", "import test_real_cases (it defines Mode)")


@pytest.mark.parametrize("model", [EnumAttribute, EnumRich])
@pytest.mark.parametrize("view", [[], ["--inline"]])
def test_enums_inside_the_model_run_without_their_class(archive, model, view):
    res = _fresh_process_run(archive(model(), "script"), "--json", *view)
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["identical"] is True, report


def test_torchscript_enums_run_where_their_class_is_imported(archive):
    for model, expected in ((EnumArgument(), 2.0), (EnumAttribute(), 2.0), (EnumRich(), 15.0)):
        s = Session(archive(model, "script"))
        s.start(values=(torch.ones(3),))
        report = s.run_and_compare()
        assert report.error is None and report.identical
        assert torch.equal(report.outputs, torch.full((3,), expected))


class Noisy(nn.Module):
    """Random numbers drawn inside the model: sampling noise, dropout in training mode."""

    def __init__(self):
        super().__init__()
        self.drop = nn.Dropout(0.5)
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        n = torch.empty_like(x).normal_()
        u = torch.empty_like(x).uniform_(-1.0, 1.0)
        b = torch.empty_like(x).bernoulli_(0.5)
        return self.drop(self.lin(x + n + u + b)) + torch.randn_like(x)


@pytest.mark.parametrize("mode", ["trace", "script"])
@pytest.mark.parametrize("inline", [False, True])
def test_models_that_draw_random_numbers_compare_bit_for_bit(tmp_path, mode, inline):
    """Every run starts from the same random state: the engine's draws are torch's draws."""
    module = Noisy().train()  # dropout active: the archive keeps training mode
    x = torch.randn(3, 4)
    path = str(tmp_path / "noisy.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ts = torch.jit.trace(module, (x,), check_trace=False) if mode == "trace" else torch.jit.script(module)
        torch.jit.save(ts, path)
    s = Session(path, inline=inline)
    s.start(values=(x,))
    first = s.run_and_compare()
    assert first.error is None and first.identical
    again = s.run_and_compare()
    assert torch.equal(again.outputs, first.outputs)  # a rerun draws the same numbers
    dropout = next(r for r in s.machine.timeline if r.node.kind == "aten::dropout")
    assert (dropout.outputs[0] == 0).any()  # in training mode it did drop


class Autocast(nn.Module):
    """``with torch.autocast(...)`` in scripted code: TorchScript's executor casts the block's ops."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.out = nn.Linear(8, 4)

    def forward(self, x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = self.lin(x)
        y = y.relu_()  # overwrites the block's output: its record keeps a recipe, remade under autocast
        return self.out(y.float())


@pytest.mark.parametrize("inline", [False, True])
def test_autocast_blocks_cast_as_torch_does(archive, inline):
    path = archive(Autocast(), "script")
    x = torch.randn(3, 8)
    s = Session(path, inline=inline)
    s.start(values=(x,))
    report = s.run_and_compare()
    assert report.error is None and report.identical
    first = s.machine
    linears = [r for r in first.timeline if r.node.kind == "aten::linear"]
    assert [r.outputs[0].dtype for r in linears] == [torch.bfloat16, torch.float32]
    # the overwritten bfloat16 output, remade from its recipe, is what a copy would have kept
    copies = s.restart()
    copies.timeline.recompute = None
    copies.run()
    remade = linears[0].outputs[0]
    kept = next(r for r in copies.timeline if r.node.kind == "aten::linear").outputs[0]
    assert first.timeline.recipes >= 1 and torch.equal(remade, kept) and remade.dtype == torch.bfloat16


class Stateful(nn.Module):
    """A model that changes itself: a buffer written in place, attributes set, a list attribute
    appended to, BatchNorm's running statistics in training mode."""

    history: List[int]

    def __init__(self):
        super().__init__()
        self.register_buffer("steps", torch.zeros(1))
        self.count = 0
        self.history = []
        self.bn = nn.BatchNorm1d(4)

    def forward(self, x):
        self.steps += 1
        self.count = self.count + 1
        self.history.append(self.count)
        y = self.bn(x)
        return y * self.steps + self.count + len(self.history) + self.bn.running_mean.sum()


@pytest.mark.parametrize("inline", [False, True])
def test_every_run_starts_from_the_archives_state(tmp_path, inline):
    """A rerun (restart, run_and_compare) must not see what the previous run wrote into the module."""
    module = Stateful().train()
    path = str(tmp_path / "stateful.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(module), path)
    x = torch.randn(3, 4)
    s = Session(path, inline=inline)
    s.start(values=(x,))
    outputs = []
    for _ in range(3):
        report = s.run_and_compare()
        assert report.error is None and report.identical
        outputs.append(report.outputs)
    assert all(torch.equal(o, outputs[0]) for o in outputs)
    with torch.no_grad():
        assert torch.equal(outputs[0], module(x))  # the Python module's first call
    # and a restart puts the loaded module back as the archive has it
    s.restart()
    loaded = s.program.module
    assert torch.equal(loaded.getattr("steps"), torch.zeros(1)) and loaded.getattr("count") == 0
    assert loaded.getattr("history") == [] and int(loaded.getattr("bn").getattr("num_batches_tracked")) == 0


def test_enum_members_read_as_class_dot_name(archive):
    from engine.formats.torchscript.program import EnumMember
    from engine.run.values import summarize

    s = Session(archive(EnumRich(), "script"))
    s.start(values=(torch.ones(3),))
    s.machine.run()
    got = [summarize(r.outputs[0]).to_json() for r in s.machine.timeline
           if r.node.kind == "prim::GetAttr" and r.node.attrs["name"] == "mode"]
    assert got and got[0] == {"kind": "enum", "text": "Mode.FAST"}
    assert summarize(EnumMember("__torch__.Color", "BLUE", "b")).to_json() == {"kind": "enum", "text": "Color.BLUE"}
