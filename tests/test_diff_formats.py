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
