"""Input specs and files, stored traced shapes, inference, and `tsdebug run`."""

import json
import os

import numpy as np
import pytest
import torch

from engine import InputError, Session
from engine.formats.torchscript.archive import read_traced_inputs
from engine.inputs import parse_spec
from tsdebug.cli import main, parse_size
import models as M


def test_specs():
    t = parse_spec("float32[1,3,8,8]", seed=1)
    assert t.shape == (1, 3, 8, 8) and t.dtype == torch.float32
    assert torch.equal(t, parse_spec("float32[1,3,8,8]", seed=1))  # reproducible
    assert not torch.equal(t, parse_spec("float32[1,3,8,8]", seed=2))
    ids = parse_spec("int64[2,8]:5..9")
    assert ids.dtype == torch.int64 and int(ids.min()) >= 5 and int(ids.max()) < 9
    assert parse_spec("2x3").shape == (2, 3)
    assert parse_spec("int:3") == 3 and parse_spec("bool:true") is True
    assert parse_spec("float:0.5") == 0.5 and parse_spec("none") is None
    assert parse_spec("str:hi") == "hi"
    lst = parse_spec("[float32[3,8,8],float32[3,4,4]]")
    assert isinstance(lst, list) and [t.shape for t in lst] == [(3, 8, 8), (3, 4, 4)]
    tup = parse_spec("(int:1,[float32[2]],none)")
    assert isinstance(tup, tuple) and tup[0] == 1 and tup[1][0].shape == (2,) and tup[2] is None
    b = parse_spec("bool[4]")
    assert b.dtype == torch.bool
    with pytest.raises(InputError):
        parse_spec("int64[2]:9..1")


def test_input_files(tmp_path):
    arr = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.save(tmp_path / "a.npy", arr)
    np.savez(tmp_path / "b.npz", x=arr)
    torch.save(torch.ones(2), tmp_path / "c.pt")
    assert torch.equal(parse_spec(str(tmp_path / "a.npy")), torch.from_numpy(arr))
    assert torch.equal(parse_spec(str(tmp_path / "b.npz")), torch.from_numpy(arr))
    assert torch.equal(parse_spec(str(tmp_path / "c.pt")), torch.ones(2))
    np.savez(tmp_path / "two.npz", x=arr, y=arr)
    with pytest.raises(InputError, match="2 arrays"):
        parse_spec(str(tmp_path / "two.npz"))


def test_inputs_file_tuple_and_dict(archive, tmp_path):
    path = archive(M.ControlFlow(), "script")
    x = torch.randn(2, 4)
    torch.save((x, 2, "max"), tmp_path / "args.pt")
    s = Session(path)
    s.start(inputs_file=str(tmp_path / "args.pt"))
    assert torch.equal(s.inputs[0], x) and s.inputs[1:] == (2, "max")
    torch.save({"x": x, "n": 1}, tmp_path / "kw.pt")
    s.start(inputs_file=str(tmp_path / "kw.pt"))
    assert s.inputs[1:] == (1, "sum")  # the default filled in
    # nested values are kept as they are
    path2 = archive(M.TupleInput(), "script")
    torch.save(((x, x), {"a": x}), tmp_path / "nested.pt")
    s2 = Session(path2)
    s2.start(inputs_file=str(tmp_path / "nested.pt"))
    assert isinstance(s2.inputs[0], tuple) and isinstance(s2.inputs[1], dict)
    s2.machine.run()
    assert torch.equal(s2.machine.outputs, x * 3)


def test_traced_inputs_are_read(archive):
    path = archive(M.AttentionNet(), "trace", example=(torch.randn(2, 3, 16), torch.randn(2, 5, 16)))
    specs = read_traced_inputs(path)["forward"]
    assert [tuple(s.shape) for s in specs] == [(2, 3, 16), (2, 5, 16)]
    s = Session(path)
    s.start()
    assert "torch.jit.trace" in s.input_source
    assert s.inputs[1].shape == (2, 5, 16)


@pytest.mark.parametrize(
    "make,shape",
    [
        (M.ConvNet, (1, 3, 224, 224)),
        (M.LSTMNet, (1, 8, 6)),
        # the conv's weight is computed from the parameter (standardized), not read from it
        (M.StandardizedConvNet, (1, 3, 224, 224)),
        # through a helper's returned tuple to a 3-D conv on RGB: a 16-frame clip
        (M.ClipNet, (1, 3, 16, 224, 224)),
    ],
)
def test_inputs_inferred_for_scripted(archive, make, shape):
    path = archive(make(), "script")
    s = Session(path)
    s.start()
    assert s.input_source == "inferred from the graph"
    assert tuple(s.inputs[0].shape) == shape
    assert s.run_and_compare().identical


def test_inference_failure_names_signature(archive):
    path = archive(M.OptionalArgs(), "script")

    class Plain(torch.nn.Module):
        def forward(self, a, b):
            return a * b

    path = archive(Plain(), "script")
    with pytest.raises(InputError, match=r"forward\(a: Tensor, b: Tensor\)"):
        Session(path).start()


def test_run_text_and_exit_code(archive, capsys):
    path = archive(M.randomize_bn(M.ConvNet()), "trace", example=(torch.randn(1, 3, 16, 16),))
    assert main(["run", path]) == 0
    out = capsys.readouterr().out
    assert "identical to module(*inputs)" in out and "forward: traced" in out


def test_run_json_schema(archive, capsys, tmp_path):
    path = archive(M.ControlFlow(), "script")
    code = main(["run", path, "--input", "float32[2,4]", "--input", "int:2", "--json", "--inline",
                 "--save-outputs", str(tmp_path / "out.pt")])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    for key in ("model", "method", "view", "methods", "inputs", "input_source", "nodes_executed", "identical",
                "max_abs_diff", "engine_seconds", "native_seconds", "recorded_bytes", "dropped_values",
                "outputs", "error"):
        assert key in report
    assert report["identical"] is True and report["view"] == "inlined"
    assert report["methods"] == {"describe": "scripted", "forward": "scripted"}
    assert report["inputs"][0]["shape"] == [2, 4]
    saved = torch.load(tmp_path / "out.pt", weights_only=True)
    assert saved[1].startswith("n=2")


def test_sizes():
    assert parse_size("1GiB") == 1 << 30 and parse_size("512MB") == 512_000_000 and parse_size("0") == 0


class LongLoop(torch.nn.Module):
    def forward(self, x: torch.Tensor, n: int) -> torch.Tensor:
        for i in range(n):
            x = x + 1
        return x


def test_status_line_on_a_terminal_only(archive, tmp_path):
    """Long work shows a transient status line on a terminal's stderr, erased at the end;
    piped output never gets one."""
    import pty
    import subprocess
    import sys

    path = archive(LongLoop(), "script")
    # summaries only: the engine's run takes seconds, well past the status line's half-second wait
    cmd = [sys.executable, "-m", "tsdebug.cli", "run", path, "--input", "float32[4]", "--input", "int:60000",
           "--record-budget", "0"]
    master, slave = pty.openpty()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    out = proc.stdout.read().decode()
    assert proc.wait(timeout=300) == 0
    err = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        err += chunk
    os.close(master)
    text = err.decode(errors="replace")
    assert "running through tsdebug… " in text and " steps" in text
    assert text.endswith("\r\x1b[2K")  # erased: the report is what stays
    assert "identical to module(*inputs)" in out and "running" not in out
    piped = subprocess.run(cmd[:-2], capture_output=True, text=True, timeout=300)  # without --record-budget 0
    assert piped.returncode == 0 and piped.stderr == ""


def test_a_failure_on_a_guessed_input_says_it_was_guessed(archive, capsys):
    from tsdebug.cli import main

    path = archive(M.FixedHead(), "script")
    assert main(["run", path]) == 2
    err = capsys.readouterr().err
    assert "aten::linear" in err and "guessed from the graph: give the model's own with --input" in err
    assert main(["run", path, "--input", "float32[1,3,32,32]"]) == 0
