"""``tsdebug diff A --against B`` across formats: an archive against a torch.export program, node by node."""

import json
import warnings

import pytest
import torch

import models as M
from engine import Session
from tsdebug.cli import main


@pytest.fixture
def pair(tmp_path):
    """A traced conv net, and .pt2 programs exported from the same Python: faithful, decomposed, changed."""
    torch.manual_seed(0)
    m = M.randomize_bn(M.ConvNet()).eval()
    x = torch.randn(1, 3, 16, 16)
    paths = {"archive": str(tmp_path / "cn.pt")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(m, (x,)), paths["archive"])
        ep = torch.export.export(m, (x,))
        paths["same"] = str(tmp_path / "same.pt2")
        torch.export.save(ep, paths["same"])
        paths["core"] = str(tmp_path / "core.pt2")
        torch.export.save(ep.run_decompositions(), paths["core"])
        m.layer1[0].bn2.eps = 0.1  # the Python changed after the archive was made
        paths["changed"] = str(tmp_path / "changed.pt2")
        torch.export.save(torch.export.export(m, (x,)), paths["changed"])
    return paths


def test_a_faithful_export_agrees_node_by_node(pair, capsys):
    assert main(["diff", pair["archive"], "--against", pair["same"], "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["coverage"] == 1.0 and out["outputs_close"] and out["first_divergence"] is None


def test_decompositions_still_align(pair, capsys):
    """conv2d against convolution, batch_norm against _native_batch_norm_legit_no_training, linear
    against addmm: aligned, not miscounted."""
    assert main(["diff", pair["archive"], "--against", pair["core"], "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["coverage"] >= 0.95, out


def test_a_changed_eps_is_found_at_its_node_on_both_sides(pair, capsys):
    assert main(["diff", pair["archive"], "--against", pair["changed"], "--json"]) == 1
    first = json.loads(capsys.readouterr().out)["first_divergence"]
    assert first["module_path"] == "layer1.0.bn2"
    assert first["kind"] == "aten::batch_norm" and first["eager_op"].startswith("aten::batch_norm")
    assert first["source"].endswith("models.py:25") and first["eager_source"].endswith("models.py:25")


def test_pt2_against_an_archive_the_other_way(pair):
    s = Session(pair["changed"])
    s.start()
    result = s.diff_against(pair["archive"])
    first = result.report.first
    assert first is not None and first.record.module_path == "layer1.0.bn2"
    assert first.record.node.kind == "aten::batch_norm.default"


def test_converted_program_without_module_paths_still_aligns(tmp_path, capsys):
    """torch's converter works on the inlined graph: its program knows no modules."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = M.randomize_bn(M.ConvNet()).eval()
        path = str(tmp_path / "cn.pt")
        torch.jit.save(torch.jit.trace(m, (torch.randn(1, 3, 16, 16),)), path)
    out = str(tmp_path / "cn.pt2")
    assert main(["export", path, "-o", out, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    v = report["verifications"][0]
    assert v["verdict"] == "bit-identical" and v["aligned"] == v["comparable"] > 10


def test_the_debugger_compares_with_another_program(pair):
    """``tsdebug MODEL --against OTHER``: e runs the other program and marks where they part; D goes there."""
    import asyncio

    from tsdebug.app import TsdebugApp
    from tsdebug.cli import build_open_parser

    async def settle(pilot, app):
        for _ in range(400):
            await pilot.pause()
            if app.state not in ("running", "loading"):
                break
            await asyncio.sleep(0.01)
        await pilot.pause()

    async def run():
        app = TsdebugApp(build_open_parser().parse_args([pair["archive"], "--against", pair["changed"]]))
        async with app.run_test(size=(120, 40)) as pilot:
            await settle(pilot, app)
            await pilot.press("e")
            await settle(pilot, app)
            first = app.diff_result.report.first
            assert first is not None and first.record.module_path == "layer1.0.bn2"
            await pilot.press("D")
            await settle(pilot, app)
            assert app.machine.current_record is first.record

    asyncio.run(run())


TRACED_IF = '''
import torch
import torch.nn as nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        y = self.features(x)
        if x.mean() > 0:
            y = y * 2.0
        else:
            y = y - 1.0
        return self.head(y.mean(dim=(2, 3)))
'''

# The same model rewritten for torch.export in a new file: the branch is a torch.cond, the lines are others.
REWRITTEN = '''
import torch
import torch.nn as nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        y = self.features(x)
        y = torch.cond(x.mean() > 0, lambda y: y * 2.0, lambda y: y - 1.0, (y,))
        return self.head(y.mean(dim=(2, 3)))
'''


def _module_from(path, name):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_a_model_rewritten_in_another_file_aligns_and_names_the_frozen_branch(tmp_path, capsys):
    """A migration: the traced archive of net.py against the .pt2 of its torch.cond rewrite in net_cond.py.
    Their lines are in different files, so lines cannot pair ops; names and shapes still do."""
    (tmp_path / "net.py").write_text(TRACED_IF)
    (tmp_path / "net_cond.py").write_text(REWRITTEN)
    torch.manual_seed(0)
    old = _module_from(tmp_path / "net.py", "net_old").Net().eval()
    new = _module_from(tmp_path / "net_cond.py", "net_new").Net().eval()
    new.load_state_dict(old.state_dict())
    pos = torch.rand(1, 3, 16, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(old, (pos,)), str(tmp_path / "net.pt"))
    torch.export.save(torch.export.export(new, (pos,)), str(tmp_path / "net.pt2"))
    neg = tmp_path / "neg.pt"
    torch.save((-pos,), neg)
    assert main(["diff", str(tmp_path / "net.pt"), "--against", str(tmp_path / "net.pt2"), "--inputs", str(neg),
                 "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    # conv, batch norm and relu pair up across the two files
    assert report["aligned_nodes"] >= 3
    parting = report["parting"]
    assert parting["last_agreed"]["kind"] == "aten::relu"
    assert [o["kind"] for o in parting["graph_only"]] == ["aten::mul"]
    assert parting["graph_only"][0]["source"].endswith("net.py:15")
    assert "aten::sub.Tensor" in [o["op"] for o in parting["eager_only"]]
    # on the input the trace saw, the two agree node by node
    pos_file = tmp_path / "pos.pt"
    torch.save((pos,), pos_file)
    assert main(["diff", str(tmp_path / "net.pt"), "--against", str(tmp_path / "net.pt2"), "--inputs",
                 str(pos_file)]) == 0


class _ImplNet(torch.nn.Module):
    """torchvision's pattern: ``forward`` calls ``_forward_impl``, which calls the layers."""

    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = torch.nn.BatchNorm2d(8)
        self.relu = torch.nn.ReLU(inplace=True)
        self.layer = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU())
        self.fc = torch.nn.Linear(8, 3)

    def _forward_impl(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer(x)
        x = torch.flatten(x.mean(dim=(2, 3), keepdim=True), 1)
        return self.fc(x)

    def forward(self, x):
        return self._forward_impl(x)


def test_ops_called_through_a_helper_method_align_across_formats(tmp_path):
    """torch.export's stack traces leave out frames a trace keeps (``_forward_impl``): the .pt2 says the
    root's ops come from ``forward``'s line, the archive from the helper's. One calls the other: they align."""
    torch.manual_seed(0)
    m = M.randomize_bn(_ImplNet()).eval()
    x = torch.randn(2, 3, 16, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(m, (x,)), str(tmp_path / "impl.pt"))
    torch.export.save(torch.export.export(m, (x,)), str(tmp_path / "impl.pt2"))
    s = Session(str(tmp_path / "impl.pt"))
    s.start()
    report = s.diff_against(str(tmp_path / "impl.pt2"), 1e-5, 1e-5).report
    assert report.comparable >= 8
    assert len(report.aligned) == report.comparable
    assert report.outputs_close and report.first is None
