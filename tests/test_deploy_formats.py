"""Archives as they are shipped: frozen, quantized (static and dynamic), saved for the lite interpreter.

Each runs through the engine in both views with the same bits as the loaded
archive and as the Python module it came from.
"""

import os
import subprocess
import sys
import warnings

import pytest
import torch
import torch.ao.quantization as Q
import torch.nn as nn

from engine import Session
from tsdebug.cli import main
from test_bad_input import assert_one_line_error, digest
import models as M


class QuantNet(nn.Module):
    """Eager-mode static quantization: quantized conv+relu and linear between (de)quant stubs."""

    def __init__(self):
        super().__init__()
        self.quant = Q.QuantStub()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(8 * 8 * 8, 10)
        self.dequant = Q.DeQuantStub()

    def forward(self, x):
        x = self.relu(self.conv(self.quant(x)))
        return self.dequant(self.fc(x.flatten(1)))


def quantized_net() -> nn.Module:
    torch.manual_seed(0)
    net = QuantNet().eval()
    with warnings.catch_warnings():  # torch's deprecation notes on its quantization API
        warnings.simplefilter("ignore")
        net.qconfig = Q.get_default_qconfig("fbgemm")
        Q.fuse_modules(net, [["conv", "relu"]], inplace=True)
        Q.prepare(net, inplace=True)
        net(torch.randn(8, 3, 8, 8))  # calibration
        Q.convert(net, inplace=True)
    return net


class Recurrent(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(16, 32, batch_first=True)
        self.fc = nn.Linear(32, 4)

    def forward(self, x):
        y, _ = self.lstm(x)
        return self.fc(y[:, -1])


def dynamic_quantized_lstm() -> nn.Module:
    torch.manual_seed(0)
    return Q.quantize_dynamic(Recurrent().eval(), {nn.LSTM, nn.Linear}, dtype=torch.qint8)


def export(module: nn.Module, mode: str, example: tuple, path, freeze: bool = False, lite: bool = False) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ts = torch.jit.trace(module, example, check_trace=False) if mode == "trace" else torch.jit.script(module)
        if freeze:
            ts = torch.jit.freeze(ts)
        if lite:
            ts._save_for_lite_interpreter(str(path))
        else:
            torch.jit.save(ts, str(path))
    return str(path)


def assert_exact(path: str, module: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        expected = module(x)
    for inline in (False, True):
        s = Session(path, inline=inline)
        s.start(values=(x,))
        report = s.run_and_compare()
        assert report.error is None and report.identical, (inline, report.error)
        assert torch.equal(report.outputs, expected)


@pytest.mark.parametrize("mode", ["trace", "script"])
def test_frozen_archive(tmp_path, mode):
    net = M.randomize_bn(M.ConvNet()).eval()
    x = torch.randn(1, 3, 16, 16)
    path = export(net, mode, (x,), tmp_path / "frozen.pt", freeze=True)
    frozen = torch.jit.load(path)
    # freezing folds BatchNorm into the convolutions: compare with the frozen archive, not the Python module
    with torch.no_grad():
        expected = frozen(x)
    assert not any(n.kind() == "prim::GetAttr" for n in frozen.graph.nodes())
    for inline in (False, True):
        s = Session(path, inline=inline)
        s.start(values=(x,))
        report = s.run_and_compare()
        assert report.error is None and report.identical
        assert torch.equal(report.outputs, expected)


@pytest.mark.parametrize("mode", ["trace", "script"])
def test_static_quantized_archive(tmp_path, mode):
    net = quantized_net()
    x = torch.randn(1, 3, 8, 8)
    path = export(net, mode, (x,), tmp_path / f"q_{mode}.pt")
    assert_exact(path, net, x)
    s = Session(path)
    m = s.start(values=(x,))
    m.run()
    quantized = [r for r in m.timeline for o in r.outputs if isinstance(o, torch.Tensor) and o.is_quantized]
    assert quantized, "the run never saw a quantized tensor"


@pytest.mark.parametrize("mode", ["trace", "script"])
def test_dynamic_quantized_lstm(tmp_path, mode):
    net = dynamic_quantized_lstm()
    x = torch.randn(2, 5, 16)
    path = export(net, mode, (x,), tmp_path / f"dq_{mode}.pt")
    assert_exact(path, net, x)


def test_archive_saved_for_the_lite_interpreter(tmp_path):
    net = M.randomize_bn(M.ConvNet()).eval()
    x = torch.randn(1, 3, 16, 16)
    path = export(net, "script", (x,), tmp_path / "m.ptl", lite=True)
    assert_exact(path, net, x)


def test_quantized_archive_prints_no_torch_noise(tmp_path):
    """Loading quantized constants makes torch's C++ print a deprecation warning straight to
    stderr, once per process: a fresh process shows whether it reaches the terminal."""
    path = export(quantized_net(), "trace", (torch.randn(1, 3, 8, 8),), tmp_path / "q.pt")
    cmd = [sys.executable, "-m", "tsdebug.cli", "run", path, "--input", "float32[1,3,8,8]"]
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TSDEBUG_NO_STATUS": "1"})
    assert res.returncode == 0, res.stderr
    assert "identical" in res.stdout
    assert res.stderr == ""


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="optimize_for_inference needs MKLDNN")
def test_optimize_for_inference_archive_is_explained(tmp_path, capsys):
    """torch.jit.optimize_for_inference saves MKLDNN constants without their values: torch cannot load it."""
    net = M.randomize_bn(M.ConvNet()).eval()
    path = str(tmp_path / "ofi.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.optimize_for_inference(torch.jit.script(net)), path)
    with pytest.raises(RuntimeError):
        torch.jit.load(path)
    before = digest(path)
    code = main(["run", path])
    assert_one_line_error(code, capsys.readouterr().err, "optimize_for_inference", "before")
    assert digest(path) == before


def test_inputs_of_scripted_quantized_archives_are_inferred(tmp_path):
    """Scripted archives keep no example shapes: the input comes from the first quantized
    conv's or linear's packed weights, behind the float input's quantize_per_tensor."""
    path = export(quantized_net(), "script", (), tmp_path / "q.pt")
    s = Session(path)
    s.start()
    assert s.input_source == "inferred from the graph"
    assert s.inputs[0].dtype == torch.float32 and tuple(s.inputs[0].shape[:2]) == (1, 3)
    torch.manual_seed(0)
    mlp = Q.quantize_dynamic(nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 2)).eval(), {nn.Linear},
                             dtype=torch.qint8)
    path = export(mlp, "script", (), tmp_path / "dq.pt")
    s = Session(path)
    s.start()
    assert tuple(s.inputs[0].shape) == (1, 16)
    assert s.run_and_compare().identical
