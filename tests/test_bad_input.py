"""Bad files and bad inputs: one clear line, exit 2, no traceback, the file unchanged."""

import hashlib
import os
import pickle
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

from tsdebug.cli import main


def digest(path):
    if os.path.isdir(path):
        return None
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *needles):
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("tsdebug: error: ")
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], lines[0]


class CallsPython(torch.nn.Module):
    """Scripts, but torch.jit.save cannot export its call into Python."""

    @torch.jit.ignore
    def helper(self, x: torch.Tensor) -> torch.Tensor:
        return x + 1

    def forward(self, x):
        return self.helper(x)


class Lin(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.l = torch.nn.Linear(2, 2)

    def forward(self, x):
        return self.l(x)


@pytest.fixture
def good(convnet):
    return convnet


def make_bad_files(tmp_path, good):
    m = Lin()
    files = {}
    files["state_dict"] = tmp_path / "sd.pt"
    torch.save(m.state_dict(), files["state_dict"])
    files["whole_module"] = tmp_path / "whole.pt"
    torch.save(m, files["whole_module"])
    files["legacy"] = tmp_path / "legacy.pt"
    torch.save(m.state_dict(), files["legacy"], _use_new_zipfile_serialization=False)
    # The first bytes of a real ONNX ModelProto: ir_version, producer "pytorch", its version.
    files["onnx"] = tmp_path / "m.onnx"
    files["onnx"].write_bytes(b"\x08\x08\x12\x07pytorch\x1a\x042.13" + b"\x3a\x00" * 8)
    data = open(good, "rb").read()
    files["truncated"] = tmp_path / "trunc.pt"
    files["truncated"].write_bytes(data[: len(data) // 2])
    corrupt = bytearray(data)
    at = data.find(b"/data/0") + 300
    corrupt[at : at + 64] = b"\0" * 64
    files["corrupt"] = tmp_path / "corrupt.pt"
    files["corrupt"].write_bytes(bytes(corrupt))
    files["empty"] = tmp_path / "empty.pt"
    files["empty"].write_bytes(b"")
    files["directory"] = tmp_path / "adir"
    files["directory"].mkdir()
    files["pickle"] = tmp_path / "obj.pkl"
    files["pickle"].write_bytes(pickle.dumps({"a": 1}))
    files["failed_save"] = tmp_path / "failed.pt"
    with pytest.raises(RuntimeError, match="Could not export Python function"):
        torch.jit.save(torch.jit.script(CallsPython()), str(files["failed_save"]))
    files["text"] = tmp_path / "notes.txt"
    files["text"].write_text("hello")
    return files


EXPECT = {
    "state_dict": "state dict",
    "whole_module": "whole nn.Module",
    "legacy": "legacy",
    "onnx": "ONNX",
    "truncated": "truncated",
    "corrupt": "corrupt",
    "empty": "empty",
    "directory": "directory",
    "pickle": "pickle",
    "text": "not a TorchScript archive",
    "failed_save": "incomplete TorchScript archive",
}


@pytest.mark.parametrize("kind", list(EXPECT))
def test_bad_files(tmp_path, good, capsys, kind):
    path = str(make_bad_files(tmp_path, good)[kind])
    before = digest(path)
    code, out, err = run_cli(capsys, "run", path)
    assert_one_line_error(code, err, EXPECT[kind])
    assert digest(path) == before


def test_missing_file(capsys, tmp_path):
    code, _, err = run_cli(capsys, "run", str(tmp_path / "nope.pt"))
    assert_one_line_error(code, err, "no such file")


def test_bad_files_json(tmp_path, good, capsys):
    path = str(make_bad_files(tmp_path, good)["state_dict"])
    code, out, err = run_cli(capsys, "run", path, "--json")
    assert code == 2
    import json

    assert "state dict" in json.loads(out)["error"]["message"]


@pytest.mark.parametrize(
    "specs,needles",
    [
        (["float32[1,4,16,16]"], ["aten::_convolution", "stem.0", "models.py", "3 channels", "float32[1,4,16,16]"]),
        (["int64[1,3,16,16]"], ["aten::_convolution", "models.py"]),
        (["float32[1,3,16,16]", "float32[2]"], ["2 inputs given", "forward(x: Tensor)"]),
        (["floot32[1,3]"], ["unknown dtype"]),
        (["what"], ["neither a file nor a spec"]),
        (["int:abc"], ["not a int"]),
        (["missing.npy"], ["no such file"]),
        (["int:3"], ["must be Tensor", "forward(x: Tensor)"]),
    ],
)
def test_bad_inputs(good, capsys, specs, needles):
    before = digest(good)
    argv = ["run", good]
    for s in specs:
        argv += ["--input", s]
    code, out, err = run_cli(capsys, *argv)
    assert_one_line_error(code, err, *needles)
    assert digest(good) == before


def test_pickled_object_input_is_refused(tmp_path, good, capsys):
    class Thing:
        pass

    path = tmp_path / "inp.pt"
    torch.save((torch.randn(1, 3, 16, 16), {"obj": Lin()}), path)
    code, _, err = run_cli(capsys, "run", good, "--inputs", str(path))
    assert_one_line_error(code, err, "weights-only")


def test_save_outputs_never_overwrites_model(good, capsys):
    before = digest(good)
    code, _, err = run_cli(capsys, "run", good, "--save-outputs", good)
    assert_one_line_error(code, err, "overwrite the model")
    assert digest(good) == before


def test_bad_device_and_library(good, capsys, tmp_path):
    code, _, err = run_cli(capsys, "run", good, "--device", "nodevice")
    assert_one_line_error(code, err, "--device")
    code, _, err = run_cli(capsys, "run", good, "--library", str(tmp_path / "libnope.so"))
    assert_one_line_error(code, err, "--library", "no such file")


def test_no_method(good, capsys):
    code, _, err = run_cli(capsys, "run", good, "--method", "nope")
    assert_one_line_error(code, err, "no method 'nope'", "forward")


OPS_PACKAGE = textwrap.dedent(
    """
    import torch
    print("tsdbgops imported")  # an import says so on the terminal: it must happen only when asked
    lib = torch.library.Library("tsdbgops", "DEF")
    lib.define("double(Tensor x) -> Tensor")
    lib.impl("double", lambda x: x * 2, "CompositeExplicitAutograd")
    """
)


def test_custom_op_archive(tmp_path):
    pkg = tmp_path / "pkgs" / "tsdbgops"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(OPS_PACKAGE)
    model_py = textwrap.dedent(
        f"""
        import sys, torch, warnings
        warnings.simplefilter("ignore")
        sys.path.insert(0, {str(tmp_path / "pkgs")!r})
        import tsdbgops
        class M(torch.nn.Module):
            def forward(self, x):
                return torch.ops.tsdbgops.double(x) + 1
        torch.jit.save(torch.jit.script(M()), {str(tmp_path / "custom.pt")!r})
        """
    )
    (tmp_path / "make_custom.py").write_text(model_py)  # scripting needs the source in a file
    subprocess.run([sys.executable, str(tmp_path / "make_custom.py")], check=True)
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    cmd = [sys.executable, "-m", "tsdebug.cli", "run", str(tmp_path / "custom.pt"), "--input", "float32[3]"]
    # Without the package: one line naming the op and what to do.
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(tmp_path))
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    assert "operator tsdbgops::double," in res.stderr and "--library" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    # Importable but not known to register operators: the archive does not choose what tsdebug imports.
    env["PYTHONPATH"] = str(tmp_path / "pkgs")
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(tmp_path))
    assert res.returncode == 2, res.stderr
    assert "tsdbgops imported" not in res.stdout + res.stderr
    assert "--import" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    # Named with --import: imported, and the run is exact.
    res = subprocess.run(cmd + ["--import", "tsdbgops", "--json"], capture_output=True, text=True, env=env,
                         cwd=str(tmp_path))
    assert res.returncode == 0, res.stderr
    import json

    report = json.loads(res.stdout)
    assert report["identical"] is True
    assert report["imported_libraries"] == ["tsdbgops"]


NATIVE_OP = textwrap.dedent(
    r"""
    #include <torch/library.h>
    #include <ATen/ATen.h>

    at::Tensor scaled_add(const at::Tensor& a, const at::Tensor& b, double s) {
      return a + b * s;
    }

    TORCH_LIBRARY(tsdbg_native, m) {
      m.def("scaled_add(Tensor a, Tensor b, float s) -> Tensor", scaled_add);
    }
    """
)


def test_library_loads_a_compiled_custom_op(tmp_path):
    """A real C++ operator library: named when missing, loaded with --library, exact."""
    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("no C++ compiler on this machine to build a custom-op library")  # Python-only machines
    build = tmp_path / "build"
    build.mkdir()
    (build / "tsdbg_native.cpp").write_text(NATIVE_OP)
    maker = textwrap.dedent(
        f"""
        import sys, torch, warnings
        warnings.simplefilter("ignore")
        from torch.utils.cpp_extension import load
        load("tsdbg_native", [{str(build / "tsdbg_native.cpp")!r}], build_directory={str(build)!r},
             is_python_module=False, verbose=False)
        class M(torch.nn.Module):
            def forward(self, x, y):
                return torch.relu(torch.ops.tsdbg_native.scaled_add(x, y, 0.5))
        torch.jit.save(torch.jit.script(M()), {str(tmp_path / "native_op.pt")!r})
        """
    )
    (tmp_path / "make_native.py").write_text(maker)
    made = subprocess.run([sys.executable, str(tmp_path / "make_native.py")], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr[-2000:]
    lib = build / "tsdbg_native.so"
    assert lib.exists()
    model = str(tmp_path / "native_op.pt")
    cmd = [sys.executable, "-m", "tsdebug.cli", "run", model, "--input", "float32[4,5]", "--input", "float32[4,5]"]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=str(tmp_path))
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert "tsdbg_native::scaled_add" in res.stderr and "--library" in res.stderr
    res = subprocess.run(cmd + ["--library", str(lib), "--json"], capture_output=True, text=True, cwd=str(tmp_path))
    assert res.returncode == 0, res.stderr
    import json

    report = json.loads(res.stdout)
    assert report["identical"] is True
    assert report["nodes_executed"] >= 2


def test_output_cut_short_by_the_reader_is_not_an_error(good):
    """`tsdebug run m.pt --json | head -c 10`: the reader leaves early; no traceback, no 'internal error'."""
    proc = subprocess.Popen([sys.executable, "-m", "tsdebug.cli", "run", good, "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # before tsdebug writes a byte
    err = proc.stderr.read().decode()
    code = proc.wait(timeout=120)
    assert "Traceback" not in err and "internal error" not in err, err
    assert code in (0, 141)


@pytest.mark.parametrize("argv", [["run"], ["run", "m.pt", "--record-budget", "lots"], ["lint", "m.pt", "--min-confidence", "some"],
                                  ["m.pt", "--seed", "x"]])
def test_usage_mistakes_are_one_line(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "error:" in err and "--help" in err, err


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version_names_tsdebug_and_torch(capsys, flag):
    assert main([flag]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith("tsdebug 0.") and f"torch {torch.__version__}" in out, out
    from engine.run import moments
    from engine.run import stepper
    built = [name for name, there in (("moments", moments.BUILT), ("stepper", stepper.BUILT)) if there]
    assert (f"C extensions: {', '.join(built)}" if built else "no C extensions") in out, out


def test_torchscript_deprecation_notes_are_silenced():
    """torch 2.11 deprecates TorchScript (DeprecationWarning), 2.14 says it again as FutureWarning, also
    from a user's Python model that diff and lint run (`torch.jit.fork`); the model's own warnings stay."""
    code = ("import warnings, engine.formats.torchscript.archive\n"
            "warnings.warn('`torch.jit.fork` is deprecated. Please use `torch.compile` instead.', FutureWarning)\n"
            "warnings.warn('`torch.jit.script` is deprecated. Please switch to `torch.compile`.', FutureWarning)\n"
            "warnings.warn('TorchScript is deprecated', DeprecationWarning)\n"
            "warnings.warn('x has 4 elements', UserWarning)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "deprecated" not in res.stderr and "x has 4 elements" in res.stderr, res.stderr


def test_custom_op_program_needs_import_like_an_archive(tmp_path):
    """A .pt2 calling an op of a package's namespace: named with what to pass, never imported unasked."""
    pkg = tmp_path / "pkgs" / "tsdbgops"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(OPS_PACKAGE + textwrap.dedent(
        """
        lib.impl("double", lambda x: torch.empty_like(x), "Meta")
        """))
    model_py = textwrap.dedent(
        f"""
        import sys, torch, warnings
        warnings.simplefilter("ignore")
        sys.path.insert(0, {str(tmp_path / "pkgs")!r})
        import tsdbgops
        class M(torch.nn.Module):
            def forward(self, x):
                return torch.ops.tsdbgops.double(x) + 1
        ep = torch.export.export(M(), (torch.randn(3),))
        torch.export.save(ep, {str(tmp_path / "custom.pt2")!r})
        """
    )
    (tmp_path / "make_custom.py").write_text(model_py)
    subprocess.run([sys.executable, str(tmp_path / "make_custom.py")], check=True, capture_output=True)
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "pkgs"))
    cmd = [sys.executable, "-m", "tsdebug.cli", "run", str(tmp_path / "custom.pt2"), "--input", "float32[3]"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(tmp_path))
    assert res.returncode == 2, res.stderr
    assert "tsdbgops imported" not in res.stdout + res.stderr  # importable, but not known: not imported
    assert "tsdbgops" in res.stderr and "--import" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    res = subprocess.run(cmd + ["--import", "tsdbgops", "--json"], capture_output=True, text=True, env=env,
                         cwd=str(tmp_path))
    assert res.returncode == 0, res.stderr
    import json

    assert json.loads(res.stdout)["identical"] is True  # the package's print is not in the JSON
