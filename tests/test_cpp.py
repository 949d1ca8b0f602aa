"""tsdebug cpp: the archive run in libtorch (a C++ process) against Python's module(*inputs).

The runner is compiled once per test session into a private cache (TSDEBUG_CACHE_DIR); tests
that need it are skipped, with the reason, where no C++ compiler or no torch headers exist.
"""

import json
import os
import shutil
import subprocess
from typing import Dict, List, Optional, Tuple

import pytest
import torch
import torch.nn as nn

from conftest import save_archive
from engine import Session
from engine.check import cpp
from engine.check.cpp.emit import emit
from engine.check.cpp.scan import scan_graphs
from engine.formats.torchscript.convert import convert_graph
from tsdebug.cli import main


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """Every test builds into (and reuses) one runner of this session, never the user's cache."""
    old = os.environ.get("TSDEBUG_CACHE_DIR")
    os.environ["TSDEBUG_CACHE_DIR"] = str(tmp_path_factory.mktemp("tsdebug-cache"))
    yield
    if old is None:
        os.environ.pop("TSDEBUG_CACHE_DIR", None)
    else:
        os.environ["TSDEBUG_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def built(private_cache):
    try:
        return cpp.runner()
    except cpp.CppUnavailable as exc:
        pytest.skip(f"no C++ toolchain: {exc.message}")


# ------------------------------------------------------------------ models

class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.Conv2d(8, 8, 3, stride=2), nn.ReLU())
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        return self.head(self.body(x).mean((2, 3)))


def convnet(tmp_path):
    torch.manual_seed(0)
    net = ConvNet().eval()
    with torch.no_grad():
        net.body[1].running_mean.uniform_(-1, 1)
        net.body[1].running_var.uniform_(0.5, 2)
    return save_archive(tmp_path / "conv.pt", net, "trace", (torch.randn(1, 3, 20, 20),))


class Mixed(nn.Module):
    """Loops, non-tensor inputs and outputs of every container kind."""

    def forward(self, x: torch.Tensor, n: int, tag: str, xs: List[torch.Tensor], d: Dict[str, torch.Tensor],
                pair: Tuple[int, float], bias: Optional[torch.Tensor] = None):
        out: List[torch.Tensor] = []
        for i in range(n):
            out.append(torch.tanh(x * float(i) + xs[i % len(xs)].sum()))
        y = d["w"] @ out[-1]
        if bias is not None:
            y = y + bias
        for _ in range(n):
            tag = tag + "!"
        return {"y": y, "first": out[0]}, tag, n * pair[0], out, pair[1] * 2.0


def mixed_inputs():
    g = torch.Generator().manual_seed(1)
    return (torch.randn(4, generator=g), 3, "ok", [torch.randn(2, generator=g), torch.randn(3, generator=g)],
            {"w": torch.randn(2, 4, generator=g)}, (2, 0.25), None)


def test_a_traced_conv_net_gives_the_same_bits_in_cpp(built, tmp_path, capsys):
    path = convnet(tmp_path)
    assert main(["cpp", path, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["identical"] is True and out["cpp_error"] is None
    assert out["requirements"] == []
    assert out["cpp_load_seconds"] > 0 and out["cpp_run_seconds"] > 0 and out["python_run_seconds"] > 0
    assert out["cpp_outputs"]["shape"] == [1, 5] and out["threads"] == torch.get_num_threads()
    # and against torch itself: what the runner returned is module(*inputs), bit for bit
    s = Session(path)
    s.start()
    report = cpp.check(s)
    assert torch.equal(report.cpp_outputs, torch.jit.load(path)(*s.inputs))


def test_a_scripted_model_with_loops_and_non_tensor_values(built, tmp_path, capsys):
    path = save_archive(tmp_path / "mixed.pt", Mixed())
    inputs = tmp_path / "inputs.pt"
    torch.save(mixed_inputs(), inputs)
    assert main(["cpp", path, "--inputs", str(inputs)]) == 0
    text = capsys.readouterr().out
    assert "identical to Python's module(*inputs)" in text and "needs      nothing beyond libtorch" in text
    s = Session(path)
    s.start(values=mixed_inputs())
    r = cpp.check(s)
    ref = torch.jit.load(path)(*mixed_inputs())
    got = r.cpp_outputs
    assert got[1:3] == ("ok!!!", 6) and got[4] == 0.5
    assert set(got[0]) == {"y", "first"} and torch.equal(got[0]["y"], ref[0]["y"])
    assert len(got[3]) == 3 and all(torch.equal(a, b) for a, b in zip(got[3], ref[3]))


def test_the_second_check_does_not_compile(built, tmp_path):
    again = cpp.runner()
    assert not again.built and again.path == built.path and os.path.isfile(again.path)
    s = Session(convnet(tmp_path))
    s.start()
    assert cpp.check(s).built is False


# A custom op defined in Python (torch.library): Python runs it, a C++ program cannot see it.
@torch.library.custom_op("tsdebug_cpp_test::scale", mutates_args=())
def _scale(x: torch.Tensor) -> torch.Tensor:
    return x * 3


class UsesPythonOp(nn.Module):
    def forward(self, x):
        return torch.ops.tsdebug_cpp_test.scale(x).relu() + 1


def test_an_op_registered_from_python_is_named_statically_and_fails_in_cpp(tmp_path, capsys):
    path = save_archive(tmp_path / "pyop.pt", UsesPythonOp())
    # the static part needs no compiler
    assert main(["cpp", path, "--check-only"]) == 1
    text = capsys.readouterr().out
    assert "tsdebug_cpp_test::scale: registered from Python" in text and "C++ cannot provide it" in text
    assert "test_cpp.py:" in text  # the line that calls it
    try:
        cpp.toolchain()
    except cpp.CppUnavailable:
        pytest.skip("no C++ toolchain for the run half")
    s = Session(path)
    s.start(values=(torch.randn(5),))
    r = cpp.check(s)
    assert r.python_error is None and r.outputs is not None  # Python runs it
    assert r.cpp_error_stage == "load" and "Unknown builtin op: tsdebug_cpp_test::scale" in r.cpp_error
    assert r.cpp_error_kind == "tsdebug_cpp_test::scale" and r.cpp_error_source.startswith(__file__)
    assert r.exit_code() == 1


# ------------------------------------------------------------ own cases

class Noisy(nn.Module):
    """A model that draws random numbers: C++ seeds its generator apart from Python's."""

    def forward(self, x):
        return x + torch.rand_like(x)


def test_random_draws_differ_in_cpp_and_the_report_says_where(built, tmp_path, capsys):
    path = save_archive(tmp_path / "noisy.pt", Noisy())
    torch.manual_seed(1234)
    assert main(["cpp", path, "--input", "float32[3,3]"]) == 1
    text = capsys.readouterr().out
    assert "DIFFERENT from Python's module(*inputs)" in text and "output: max abs" in text


class IndexesOut(nn.Module):
    def forward(self, x, i: int):
        y = x.relu()
        return y[i]  # raises for i out of range, in both languages


def test_a_model_raising_in_cpp_names_the_node_and_line(built, tmp_path, capsys):
    path = save_archive(tmp_path / "raises.pt", IndexesOut())
    s = Session(path)
    s.start(values=(torch.randn(2, 3), 7))
    r = cpp.check(s)
    assert r.python_error is not None and r.exit_code() == 2  # the input's fault: both fail
    assert r.cpp_error_stage == "run" and "index 7 out of range" in r.cpp_error
    assert r.cpp_error_source and r.cpp_error_source.endswith(f"test_cpp.py:{IndexesOut.forward.__code__.co_firstlineno + 2}")
    assert r.cpp_error_kind == "aten::select"


def test_a_python_call_left_by_tracing_is_named():
    class Triple(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 3

        @staticmethod
        def backward(ctx, g):
            return g * 3

    class Net(nn.Module):
        def forward(self, x):
            return Triple.apply(x) + 1

    traced = torch.jit.trace(Net(), torch.randn(2), check_trace=False)  # torch.jit.save refuses this one
    reqs = scan_graphs([convert_graph(traced.graph, "forward", "forward")])
    assert [(r.kind, r.name, r.blocks_cpp) for r in reqs] == [("python", "Triple", True)]


def test_a_library_that_is_not_one_is_one_line(tmp_path, capsys):
    fake = tmp_path / "libfake.so"
    fake.write_text("not an ELF file")
    path = convnet(tmp_path)
    assert main(["cpp", path, "--library", str(fake)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "libfake.so" in err[0] and "cannot load" in err[0]


def test_no_compiler_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    path = convnet(tmp_path)
    assert main(["cpp", path]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no C++ compiler" in err[0] and "apt-get install g++" in err[0]
    assert main(["cpp", path, "--check-only"]) == 0  # the static check still works


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not installed")
def test_emit_writes_an_app_that_cmake_builds_and_runs(built, tmp_path, capsys):
    path = save_archive(tmp_path / "mixed.pt", Mixed())
    inputs = tmp_path / "inputs.pt"
    torch.save(mixed_inputs()[:6], inputs)
    app = tmp_path / "app"
    assert main(["cpp", path, "--inputs", str(inputs), "--check-only", "--emit", str(app)]) == 0
    assert "emitted" in capsys.readouterr().out
    main_cpp = (app / "main.cpp").read_text()
    assert "c10::impl::GenericList list(c10::TensorType::get())" in main_cpp and 'std::string("ok")' in main_cpp
    cmake = (app / "CMakeLists.txt").read_text()
    assert "find_package(Torch REQUIRED)" in cmake
    build = app / "build"
    env = dict(os.environ, MAKEFLAGS="-j2")
    for cmd in (["cmake", "-S", str(app), "-B", str(build)], ["cmake", "--build", str(build)]):
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    ran = subprocess.run([str(build / "model_app")], capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    assert "ok!!!" in ran.stdout and "CPUFloatType{2}" in ran.stdout


async def _press_C_and_wait(pilot, app) -> None:
    """Once the debugger is paused, press C and wait for the C++ report."""
    import asyncio

    for _ in range(600):
        await pilot.pause()
        if app.state == "paused" and app.machine is not None:
            break
        await asyncio.sleep(0.05)
    await pilot.press("C")
    for _ in range(1200):
        await pilot.pause()
        if app.cpp_report is not None:
            break
        await asyncio.sleep(0.05)


def test_the_debugger_runs_the_cpp_check_on_C_and_goes_to_the_failing_node(built, tmp_path):
    import asyncio

    from tsdebug.app import TsdebugApp
    from tsdebug.cli import build_open_parser
    from tsdebug.widgets import ProgramView

    path = save_archive(tmp_path / "pyop.pt", UsesPythonOp())

    async def run():
        app = TsdebugApp(build_open_parser().parse_args([path, "--input", "float32[4]"]))
        async with app.run_test(size=(120, 40)) as pilot:
            await _press_C_and_wait(pilot, app)
            r = app.cpp_report
            assert r is not None and r.exit_code() == 1 and "fails in C++ at load" in r.summary()
            program = app.query_one(ProgramView)
            assert program.selected_node.kind == "tsdebug_cpp_test::scale"
            assert app.state == "paused"  # the debugger stays usable
            await pilot.pause(5)  # the toast is gone by now; the verdict stays on the status line
            from tsdebug.widgets import StatusBar

            assert "fails in C++ at load" in str(app.query_one(StatusBar).render())

    asyncio.run(run())


def test_the_verdict_of_an_identical_run_stays_on_the_status_line(built, convnet):
    """Seen by hand: C on an archive that runs identically showed its verdict for 3 s, then nothing."""
    import asyncio

    from tsdebug.app import TsdebugApp
    from tsdebug.cli import build_open_parser
    from tsdebug.widgets import StatusBar

    async def run():
        app = TsdebugApp(build_open_parser().parse_args([convnet]))
        async with app.run_test(size=(120, 40)) as pilot:
            await _press_C_and_wait(pilot, app)
            assert app.cpp_report is not None and app.cpp_report.exit_code() == 0
            await pilot.pause(5)
            assert "identical" in str(app.query_one(StatusBar).render())

    asyncio.run(run())


OPS_SOURCE = r"""
#include <torch/library.h>
#include <ATen/ATen.h>

#include <torch/custom_class.h>

at::Tensor twice_plus(const at::Tensor& x, double b) { return x * 2 + b; }

struct Offset : torch::CustomClassHolder {
  double by;
  explicit Offset(double by) : by(by) {}
  at::Tensor apply(const at::Tensor& x) { return x + by; }
};

TORCH_LIBRARY(tsdebug_cpp_ops, m) {
  m.def("twice_plus(Tensor x, float b) -> Tensor", &twice_plus);
  m.class_<Offset>("Offset").def(torch::init<double>()).def("apply", &Offset::apply);
}
"""


@pytest.fixture(scope="session")
def ops_library(built, tmp_path_factory):
    """A compiled operator library (TORCH_LIBRARY), as torchvision's _C.so is one."""
    from engine.check.cpp.build import compile_command

    folder = tmp_path_factory.mktemp("ops")
    source, lib = folder / "ops.cpp", folder / "libtsdebug_cpp_ops.so"
    source.write_text(OPS_SOURCE)
    cmd = compile_command(built.toolchain, str(source), str(lib))
    cmd.insert(1, "-shared")
    cmd.insert(1, "-fPIC")
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    torch.ops.load_library(str(lib))
    return str(lib)


class UsesLibraryOp(nn.Module):
    def forward(self, x):
        return torch.ops.tsdebug_cpp_ops.twice_plus(x, 0.5).sin()


class UsesCustomClass(nn.Module):
    def forward(self, x):
        offset = torch.classes.tsdebug_cpp_ops.Offset(1.5)
        return offset.apply(x).cos()


def test_an_op_from_a_compiled_library_runs_in_cpp_with_library(ops_library, tmp_path, capsys):
    path = save_archive(tmp_path / "libop.pt", UsesLibraryOp())
    assert main(["cpp", path, "--input", "float32[6]", "--library", ops_library, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["identical"] is True and out["libraries"] == [ops_library]
    [req] = out["requirements"]
    assert req["provider"] == "library" and req["library"] == ops_library and f"--library {ops_library}" in req["what"]
    # without it the C++ program fails to load the archive, and says which op it lacks
    assert main(["cpp", path, "--input", "float32[6]"]) == 1
    text = capsys.readouterr().out
    assert "fails at load: Unknown builtin op: tsdebug_cpp_ops::twice_plus" in text


def test_the_cache_key_follows_torch_compiler_and_source(built):
    import dataclasses

    from engine.check.cpp.build import cache_key

    tc = built.toolchain
    assert cache_key(tc) == cache_key(tc) and built.path.endswith(cache_key(tc))
    assert cache_key(dataclasses.replace(tc, compiler_version=tc.compiler_version + " (patched)")) != cache_key(tc)
    assert cache_key(dataclasses.replace(tc, torch_dir="/elsewhere/torch")) != cache_key(tc)


class Strided(nn.Module):
    def forward(self, a, b: List[torch.Tensor]):
        return a @ b[0], a.stride()


def test_strided_inputs_reach_cpp_with_their_strides(built, tmp_path):
    path = save_archive(tmp_path / "strided.pt", Strided())
    g = torch.Generator().manual_seed(3)
    a = torch.randn(64, 48, generator=g).t()  # a transposed view: kernels choose their path by strides
    b = torch.randn(128, 70, generator=g)[::2, ::3]
    s = Session(path)
    s.start(values=(a, [b]))
    r = cpp.check(s)
    assert r.identical, r.summary()
    assert r.cpp_outputs[1] == [1, 48] == list(a.stride())  # the C++ side saw the same strides as Python
    # a shape error in both runs: the node named is the matmul the traceback underlines, not b[0]
    s.start(values=(a, [b[:5]]))
    r = cpp.check(s)
    assert r.exit_code() == 2 and "cannot be multiplied" in r.cpp_error and r.cpp_error_kind == "aten::matmul"


def test_an_exported_program_is_refused_in_one_line(tmp_path, capsys):
    class Lin(nn.Module):
        def forward(self, x):
            return x * 2

    ep = torch.export.export(Lin(), (torch.randn(3),))
    path = str(tmp_path / "lin.pt2")
    torch.export.save(ep, path)
    assert main(["cpp", path]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "torch.export program" in err[0]


def test_a_custom_class_from_a_compiled_library_is_named_and_runs_in_cpp(ops_library, tmp_path):
    path = save_archive(tmp_path / "cls.pt", UsesCustomClass())
    s = Session(path, libraries=(ops_library,))
    s.start(values=(torch.randn(4),))
    r = cpp.check(s, (ops_library,))
    assert r.identical, r.summary()
    [req] = [q for q in r.requirements if q.kind == "class"]
    assert req.name == "tsdebug_cpp_ops.Offset" and req.library == ops_library and not req.blocks_cpp


def test_a_python_extension_library_is_named_as_one_cpp_cannot_load(ops_library):
    """torchvision's wheel ships its ops in a Python extension (it links libtorch_python.so): a C++ program
    cannot load it, and the scan must say so rather than offer --library with it (seen by hand on
    torchvision 0.29's _C_stable.so: the runner failed with 'libtorch_python.so: cannot open')."""
    from engine.check.cpp.scan import needs_python

    assert needs_python(torch._C.__file__)  # torch's own Python extension
    assert not needs_python(ops_library)  # a TORCH_LIBRARY library built against libtorch alone
    assert not needs_python("/nonexistent/lib.so")
