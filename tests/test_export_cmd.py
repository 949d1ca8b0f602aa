"""``tsdebug export``: an archive turned into a verified .pt2, or the node that blocks it named in one line."""

import hashlib
import json
import os
import textwrap
import warnings
from typing import Dict, List

import pytest
import torch
import torch.nn as nn

import models as M
from tsdebug.cli import main


def digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def save(path, module, mode="script", example=None):
    module = module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ts = torch.jit.trace(module, example, check_trace=False) if mode == "trace" else torch.jit.script(module)
        torch.jit.save(ts, str(path))
    return str(path)


class ShapeLoop(nn.Module):
    """A loop over the batch, scripted: torch's converter refuses a trip count that is not a constant."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        y = torch.zeros_like(x[0])
        for i in range(x.size(0)):
            y = y + torch.relu(self.lin(x[i]))
        return y


class DictOfLists(nn.Module):
    """A loop building a dict of lists: no constant folding makes this convertible."""

    def forward(self, x):
        groups: Dict[str, List[torch.Tensor]] = {}
        for i in range(x.size(0)):
            key = "even" if i % 2 == 0 else "odd"
            if key not in groups:
                groups[key] = []
            groups[key].append(x[i])
        return torch.stack(groups["even"]).sum(0)


class TakesInt(nn.Module):
    def forward(self, x, n: int):
        return x * n


def run_export(capsys, *argv):
    code = main(["export", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_traced_convnet_converts_bit_identically(tmp_path, capsys):
    model = save(tmp_path / "conv.pt", M.randomize_bn(M.ConvNet()), "trace", (torch.randn(1, 3, 16, 16),))
    out = str(tmp_path / "conv.pt2")
    before = digest(model)
    code, text, err = run_export(capsys, model, "-o", out)
    assert code == 0, err
    assert "bit-identical" in text and "(converter)" in text
    assert digest(model) == before
    # torch itself runs the new program and gets the archive's bits
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(torch.export.load(out).module()(x), torch.jit.load(model)(x))


def test_traced_transformer_converts_bit_identically(tmp_path, capsys):
    """The converter lifts weights as buffers that require grad: loading them without requires_grad
    makes matmul take another path and the bits differ (a real bug of our first loader)."""
    model = save(tmp_path / "enc.pt", M.TransformerNet(), "trace", (torch.randn(2, 5, 16),))
    out = str(tmp_path / "enc.pt2")
    code, text, err = run_export(capsys, model, "-o", out, "--json")
    assert code == 0, err
    report = json.loads(text)
    assert report["verified"] and report["verifications"][0]["verdict"] == "bit-identical"
    from engine import Session

    s = Session(out)
    x = torch.randn(2, 5, 16)
    s.start(values=(x,))
    m = s.restart()
    m.run()
    with torch.no_grad():
        assert torch.equal(m.outputs, torch.export.load(out).module()(x))


def test_a_shape_loop_converts_after_sizes_are_specialized(tmp_path, capsys):
    model = save(tmp_path / "loop.pt", ShapeLoop())
    out = str(tmp_path / "loop.pt2")
    code, text, err = run_export(capsys, model, "-o", out, "--input", "float32[3,4]")
    assert code == 0, err
    assert "specializing sizes" in text and "prim::Loop" in text and "bit-identical" in text
    # the loop was unrolled for 3 rows: the program must refuse 4 (it once took them and computed otherwise)
    assert main(["run", out, "--input", "float32[4,4]"]) == 2
    assert "do not fit the exported program" in capsys.readouterr().err


def test_a_dict_of_lists_loop_is_named_with_its_line(tmp_path, capsys):
    model = save(tmp_path / "dict.pt", DictOfLists())
    out = tmp_path / "dict.pt2"
    code, text, err = run_export(capsys, model, "-o", str(out), "--input", "float32[4,3]")
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "prim::Loop" in err and "test_export_cmd.py:" in err and "for i in range(x.size(0))" in err
    assert "while_loop" in err or "--eager" in err
    assert not out.exists()


def test_a_scripted_lstm_converts_or_names_its_node(tmp_path, capsys):
    model = save(tmp_path / "lstm.pt", M.LSTMNet())
    out = str(tmp_path / "lstm.pt2")
    code, text, err = run_export(capsys, model, "-o", out, "--input", "float32[2,5,6]")
    if code == 2:
        assert err.count("\n") == 1 and "prim::" in err and ".py:" in err
    else:
        assert code == 0 and "bit-identical" in text


def test_non_tensor_input_is_one_line(tmp_path, capsys):
    model = save(tmp_path / "int.pt", TakesInt())
    code, _, err = run_export(capsys, model, "-o", str(tmp_path / "int.pt2"), "--input", "float32[2]",
                              "--input", "int:3")
    assert code == 2 and err.count("\n") == 1
    assert "non-tensor input" in err and "n is" in err and "--eager" in err


def test_output_onto_the_model_is_refused(tmp_path, capsys):
    model = save(tmp_path / "conv.pt", M.randomize_bn(M.ConvNet()), "trace", (torch.randn(1, 3, 16, 16),))
    before = digest(model)
    code, _, err = run_export(capsys, model, "-o", model)
    assert code == 2 and "reads" in err
    assert digest(model) == before


def test_a_pt2_is_not_exported_again(tmp_path, capsys):
    from exported_models import export_model

    path = export_model(tmp_path / "m.pt2", "convnet")[0]
    code, _, err = run_export(capsys, path, "-o", str(tmp_path / "again.pt2"))
    assert code == 2 and "already a torch.export program" in err


EAGER = textwrap.dedent('''
    import torch
    import torch.nn as nn


    class Gate(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x):
            y = self.lin(x)
            if y.sum() > 0:
                return y.relu()
            return -y


    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x):
            return self.lin(x).tanh()
''')


def test_eager_export_of_a_data_dependent_if_names_the_users_line(tmp_path, capsys):
    src = tmp_path / "gate.py"
    src.write_text(EAGER)
    import importlib.util

    spec = importlib.util.spec_from_file_location("gate_mod", src)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.manual_seed(0)
    model = save(tmp_path / "gate.pt", mod.Gate(), "trace", (torch.randn(2, 4),))
    code, text, err = run_export(capsys, model, "-o", str(tmp_path / "gate.pt2"), "--eager", f"{src}:Gate")
    assert code == 2, text + err
    assert f"{src}:13" in err or f"{src}:13" in text  # if y.sum() > 0:
    assert "lint found the same line frozen" in text


def test_eager_export_that_works_is_verified(tmp_path, capsys):
    src = tmp_path / "plain.py"
    src.write_text(EAGER)
    import importlib.util

    spec = importlib.util.spec_from_file_location("plain_mod", src)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    model = save(tmp_path / "plain.pt", mod.Plain(), "trace", (torch.randn(2, 4),))
    out = str(tmp_path / "plain.pt2")
    code, text, err = run_export(capsys, model, "-o", out, "--eager", f"{src}:Plain")
    assert code == 0, err
    assert "torch.export.export" in text and "bit-identical" in text
    assert os.path.exists(out)


DECODER = textwrap.dedent('''
    from typing import List

    import torch
    import torch.nn as nn


    class Decoder(nn.Module):
        """A scripted greedy decoder: how many steps is an int argument."""

        def __init__(self):
            super().__init__()
            self.cell = nn.GRUCell(8, 8)
            self.out = nn.Linear(8, 5)

        def forward(self, h: torch.Tensor, steps: int) -> torch.Tensor:
            toks: List[torch.Tensor] = []
            for _ in range(steps):
                h = self.cell(h, h)
                toks.append(self.out(h).argmax(-1))
            return torch.stack(toks, 1)
''')


def test_an_int_input_fixed_by_the_export_is_said_everywhere(tmp_path, capsys):
    """A user's report: the .pt2 of a decoder refused steps=6 with a message about dimensions."""
    src = tmp_path / "decoder.py"
    src.write_text(DECODER)
    import importlib.util

    spec = importlib.util.spec_from_file_location("decoder_mod", src)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.manual_seed(0)
    model = save(tmp_path / "decoder.pt", mod.Decoder())
    out = str(tmp_path / "decoder.pt2")
    code, text, err = run_export(capsys, model, "-o", out, "--eager", f"{src}:Decoder",
                                 "--input", "float32[2,8]", "--input", "int:4")
    assert code == 0, err
    assert "takes only steps=4" in text and "bit-identical" in text
    # lint on the .pt2 names the fixed input
    assert main(["lint", out, "--json"]) == 1
    found = json.loads(capsys.readouterr().out)["findings"]
    assert [(f["kind"], f["confidence"]) for f in found] == [("specialized-input", "high")]
    assert "steps=4" in found[0]["frozen"]
    # another value is refused in one line that says why, not blamed on a dimension
    assert main(["run", out, "--input", "float32[2,8]", "--input", "int:6"]) == 2
    err = capsys.readouterr().err
    assert "steps=4 as a constant" in err and "dimension" not in err and len(err.strip().splitlines()) == 1
    # the value it was exported with still runs bit-identically
    assert main(["run", out, "--input", "float32[2,8]", "--input", "int:4"]) == 0


def _gate_archive(tmp_path):
    src = tmp_path / "gate.py"
    src.write_text(EAGER)
    import importlib.util

    spec = importlib.util.spec_from_file_location("gate_mod2", src)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.manual_seed(0)
    gate = mod.Gate()
    x = torch.randn(2, 4)
    if gate(x).sum() <= 0:
        x = -x
    return src, save(tmp_path / "gate.pt", gate, "trace", (x,))


def test_converting_a_traced_archive_says_the_frozen_branch_comes_along(tmp_path, capsys):
    src, model = _gate_archive(tmp_path)
    code, text, err = run_export(capsys, model, "-o", str(tmp_path / "gate.pt2"))
    assert code == 0, err
    assert "keeps what tracing froze" in text and f"{src}:" in text and "--eager" in text


def test_a_failed_eager_export_prints_one_line_and_no_torch_logs(tmp_path):
    """draft_export logs warnings through torch's own console handlers; the terminal is tsdebug's."""
    import subprocess
    import sys

    src, model = _gate_archive(tmp_path)
    done = subprocess.run([sys.executable, "-m", "tsdebug.cli", "export", model, "-o", str(tmp_path / "g.pt2"),
                           "--eager", f"{src}:Gate"], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, TSDEBUG_NO_STATUS="1"))
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("tsdebug: error:"), done.stderr
    assert "blocks" in done.stdout and not os.path.exists(tmp_path / "g.pt2")


def test_a_dynamic_program_is_verified_at_a_second_size(tmp_path, capsys):
    """The converter leaves the spatial sizes of a traced conv net dynamic: one size proves too little."""
    model = save(tmp_path / "conv.pt", M.randomize_bn(M.ConvNet()), "trace", (torch.randn(1, 3, 16, 16),))
    out = str(tmp_path / "conv.pt2")
    code, text, err = run_export(capsys, model, "-o", out, "--json")
    assert code == 0, err
    report = json.loads(text)
    ep = torch.export.load(out)
    dynamic = any(isinstance(d, torch.SymInt) for n in ep.graph.nodes if n.op == "placeholder"
                  and isinstance(n.meta.get("val"), torch.Tensor) for d in n.meta["val"].shape)
    assert dynamic
    sizes = [v["inputs"] for v in report["verifications"]]
    assert len(sizes) == 2 and sizes[0] != sizes[1], sizes
    assert all(v["verdict"] == "bit-identical" for v in report["verifications"])
