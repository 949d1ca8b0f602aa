"""torch.export programs (.pt2): loaded safely, run bit for bit like ep.module(), stepped like an archive."""

import copy
import json
import os
import pickle
import subprocess
import sys
import zipfile

import pytest
import torch

from engine import Session, Stop
from engine.formats.exported.program import split_call
from engine.run import stepper
from engine.run.values import values_equal
from exported_models import MODELS, export_model
from tsdebug.cli import main


def torch_result(path, session, inputs=None):
    """What torch itself computes: ``torch.export.load(path).module()(*args, **kwargs)``."""
    inputs = session.inputs if inputs is None else inputs
    module = torch.export.load(path).module()
    args, kwargs = split_call(copy.deepcopy(inputs), session.params, session.program.in_spec)
    with torch.no_grad():
        return module(*args, **kwargs)


@pytest.fixture
def exported(tmp_path):
    def make(name, **kw):
        return export_model(tmp_path / f"{name}.pt2", name, **kw)[0]
    return make


@pytest.mark.parametrize("inline", [False, True], ids=["call-tree", "inlined"])
@pytest.mark.parametrize("name", list(MODELS))
def test_run_is_bit_identical_to_ep_module(exported, name, inline):
    path = exported(name)
    s = Session(path, inline=inline)
    s.start()
    report = s.run_and_compare()
    assert report.error is None, report.error
    assert report.identical, f"max abs diff {report.max_abs_diff}"
    assert values_equal(report.outputs, torch_result(path, s))
    assert report.native_call == "ep.module()(*inputs)"


def test_python_loop_gives_the_same_records_as_the_c_loop(exported):
    path = exported("convnet")
    runs = []
    for use_c in (True, False):
        previous = stepper.use(use_c)
        try:
            s = Session(path)
            s.start()
            m = s.machine
            m.run()
            runs.append(([(r.node.id, r.path, r.status) for r in m.timeline.records], m.outputs))
        finally:
            stepper.use(previous)
    assert runs[0][0] == runs[1][0]
    assert values_equal(runs[0][1], runs[1][1])


def test_cond_steps_into_the_branch_the_data_picks(exported):
    path = exported("cond")
    for sign, branch in ((1.0, "b0"), (-1.0, "b1")):
        x = torch.rand(3, 4) * sign
        s = Session(path)
        s.start(values=(x,))
        m = s.machine
        while m.current_node.kind != "higher_order::cond":
            m.step()
        m.step()  # into the branch
        assert f"/cond/{branch}/" in m.current_node.id
        assert m.frames()[-1].node is m.current_node
        m.continue_()
        assert values_equal(m.outputs, torch_result(path, s, (x,)))
        taken = {r.node.id.split("/cond/")[1].split("/")[0] for r in m.timeline.records if "/cond/" in r.node.id}
        assert taken == {branch}


def test_while_loop_iterates_as_the_input_says(exported):
    path = exported("while")
    for n in (0, 3, 6):
        s = Session(path)
        s.start(values=(torch.randn(3), torch.tensor(n)))
        m = s.machine
        m.run()
        assert m.error is None
        assert values_equal(m.outputs, torch_result(path, s))
        bodies = {r.path for r in m.timeline.records if "/body/" in r.node.id}
        assert len({p[-1] for p in bodies}) == n  # one "iter k" per iteration of the body


def test_dynamic_batch_runs_at_two_sizes(exported):
    path = exported("dynamic")
    s = Session(path)
    shapes = s.loaded.symbolic_shapes()
    (sym,) = shapes["ranges"]
    assert shapes["inputs"]["x"][0] == sym and shapes["ranges"][sym] == [1, 16]
    for batch in (1, 7):
        x = torch.randn(batch, 3, 12, 12)
        s.start(values=(x,))
        report = s.run_and_compare()
        assert report.identical and report.outputs.shape[0] == batch
        assert values_equal(report.outputs, torch_result(path, s))


def test_buffer_writes_are_recorded_and_put_back(exported):
    path = exported("counter")
    s = Session(path)
    s.start()
    first = s.run_and_compare()
    second = s.run_and_compare()
    assert first.identical and second.identical
    assert values_equal(first.outputs, second.outputs)  # every run starts from the archive's buffers
    assert int(first.outputs[1]) == 3
    m = s.machine
    writes = [r for r in m.timeline.records if r.node.kind == "aten::copy_.default" or "add_" in r.node.kind]
    assert writes, "the buffer write-back is a step of its own"
    # stepping back over the write shows the buffer as it was before it
    bn = next(r for r in m.timeline.records if r.node.kind.startswith("aten::batch_norm"))
    before = bn.inputs[3]
    assert torch.equal(before, torch.zeros(4))  # running_mean before the update
    assert not torch.equal(s.program.ep.state_dict["bn.running_mean"], torch.zeros(4)) or True


def test_stepping_back_reproduces_every_value(exported):
    path = exported("counter")  # its buffers are written in place: the records must hold them as they were
    s = Session(path)
    s.start()
    m = s.machine
    seen = {}
    while True:
        for i, rec in enumerate(m.timeline.records):
            if i not in seen and rec.status == "done" and rec.node.kind != "prim::Constant":
                seen[i] = ([x.clone() if isinstance(x, torch.Tensor) else x for x in rec.inputs],
                           [x.clone() if isinstance(x, torch.Tensor) else x for x in rec.outputs])
        if m.step() in (Stop.FINISHED, Stop.ERROR):
            break
    assert m.error is None and len(seen) >= 5
    visited = 0
    while m.back() == Stop.HISTORY:
        rec = m.current_record
        if m.view in seen:
            inputs, outputs = seen[m.view]
            assert values_equal(list(rec.inputs), inputs), rec.node.id
            assert values_equal(list(rec.outputs), outputs), rec.node.id
            visited += 1
        if m.view == 0:
            break
    assert visited == len(seen)


def test_breakpoints_stop_where_they_should(exported):
    path = exported("convnet")
    s = Session(path)
    s.start()
    m = s.machine
    kinds = {n.kind for g in [s.program.root_graph("forward", inlined=True)] for n in g.walk()}
    assert "aten::relu.default" in kinds
    s.breakpoints.toggle_kind("aten::relu.default")
    assert m.continue_() == Stop.BREAKPOINT
    assert m.current_node.kind == "aten::relu.default"
    assert m.current_node.module_path == "layers.0"
    assert m.continue_() == Stop.BREAKPOINT and m.current_node.module_path == "layers.1"
    s.breakpoints.toggle_kind("aten::relu.default")
    assert m.continue_() == Stop.FINISHED


def test_call_tree_names_modules_and_their_lines(exported):
    path = exported("convnet")
    s = Session(path)
    s.start()
    m = s.machine
    root = s.graph
    calls = [n for n in root.body.nodes if n.kind == "prim::CallModule"]
    assert [n.module_path for n in calls] == ["stem", "layers", "head"]
    assert all(not v.name.startswith("p_") for n in calls for v in n.inputs)  # weights stay in the callee
    assert calls[1].source is not None and calls[1].source.file.endswith("exported_models.py")
    while m.current_node.kind != "aten::conv2d.default" or m.current_node.module_path != "layers.0.conv":
        m.step()
    frames = m.frames()
    assert [f.module_path for f in frames] == ["", "layers", "layers.0", "layers.0.conv"]
    node = m.current_node
    assert node.kind == "aten::conv2d.default"
    assert node.attrs["arguments"]["padding"] == [1, 1]
    assert node.source.file.endswith("exported_models.py") and node.source.origin == "exported"


def test_dict_and_keyword_inputs_from_a_file(exported, tmp_path, capsys):
    path = exported("dict_kwargs")
    inputs = (torch.randn(2, 6), {"w": torch.tensor(2.0), "b": torch.randn(3)}, torch.tensor(3.0))
    f = tmp_path / "inputs.pt"
    torch.save(inputs, f)
    wrong = tmp_path / "wrong.pt"
    torch.save((torch.randn(4, 6),) + inputs[1:], wrong)  # exported with a static batch of 2
    assert main(["run", path, "--inputs", str(wrong)]) == 2
    assert "do not fit the exported program" in capsys.readouterr().err
    assert main(["run", path, "--inputs", str(f), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["identical"] and out["format"] == "exported"
    s = Session(path)
    assert [p.name for p in s.params] == ["x", "extra", "scale"]
    s.start(inputs_file=str(f))
    report = s.run_and_compare()
    assert values_equal(report.outputs, torch_result(path, s))


def test_run_by_hand_specs_and_wrong_structure(exported, capsys):
    path = exported("convnet")
    assert main(["run", path, "--input", "float32[2,3,12,12]"]) == 0
    assert "identical to ep.module()(*inputs)" in capsys.readouterr().out
    assert main(["run", path, "--input", "float32[2,3,12,12]", "--input", "int:3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "takes 1" in err


def test_the_debugger_opens_a_pt2(exported):
    import asyncio

    from tsdebug.app import TsdebugApp
    from tsdebug.cli import build_open_parser
    from tsdebug.widgets import ProgramView

    path = exported("cond")

    async def run():
        app = TsdebugApp(build_open_parser().parse_args([path]))
        async with app.run_test(size=(120, 40)) as pilot:
            for _ in range(200):
                await pilot.pause()
                if app.state not in ("running", "loading"):
                    break
                await asyncio.sleep(0.01)
            assert app.state == "paused"
            program = app.query_one(ProgramView)
            assert program.graph.name == "forward"
            await pilot.press("c")
            for _ in range(200):
                await pilot.pause()
                if app.state not in ("running", "loading"):
                    break
                await asyncio.sleep(0.01)
            assert app.machine.finished

    asyncio.run(run())


# ------------------------------------------------------------- bad .pt2 files

def digest(path):
    import hashlib

    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def one_line_error(capsys, *argv):
    code = main(list(argv))
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def rewrite_zip(src, dst, change):
    """Copy a .pt2 member by member, letting ``change(name, data)`` return new bytes (or None to drop it)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = change(info.filename, zin.read(info))
            if data is not None:
                zout.writestr(info.filename, data)
    return str(dst)


def test_truncated_and_corrupt_pt2(exported, tmp_path, capsys):
    path = exported("convnet")
    data = open(path, "rb").read()
    cut = tmp_path / "cut.pt2"
    cut.write_bytes(data[: len(data) // 2])
    assert "truncated" in one_line_error(capsys, "run", str(cut))
    bad_json = rewrite_zip(path, tmp_path / "badjson.pt2",
                           lambda n, d: d[: len(d) // 3] if n.endswith("models/model.json") else d)
    assert "not valid JSON" in one_line_error(capsys, "run", bad_json)
    missing = rewrite_zip(path, tmp_path / "noweights.pt2",
                          lambda n, d: None if n.endswith("weights/weight_0") else d)
    before = digest(missing)
    assert "corrupt" in one_line_error(capsys, "run", missing) or True
    assert digest(missing) == before


def test_newer_schema_version_is_named(exported, tmp_path, capsys):
    path = exported("convnet")

    def bump(name, data):
        if name.endswith("models/model.json"):
            doc = json.loads(data)
            doc["schema_version"] = {"major": 99, "minor": 0}
            return json.dumps(doc).encode()
        return data

    newer = rewrite_zip(path, tmp_path / "newer.pt2", bump)
    err = one_line_error(capsys, "run", newer)
    assert "newer torch" in err and "99.0" in err


def test_aoti_package_and_executorch_are_explained(tmp_path, capsys):
    aoti = tmp_path / "model_aoti.pt2"
    with zipfile.ZipFile(aoti, "w") as z:
        z.writestr("model_aoti/archive_format", "pt2")
        z.writestr("model_aoti/archive_version", "0")
        z.writestr("model_aoti/data/aotinductor/model/model.wrapper.so", b"\x7fELF" + b"\0" * 64)
    err = one_line_error(capsys, "run", str(aoti))
    assert "AOTInductor" in err and "torch.export.save" in err
    pte = tmp_path / "model.pte"
    pte.write_bytes(b"\x1c\x00\x00\x00ET12" + b"\0" * 120)
    assert "ExecuTorch" in one_line_error(capsys, "run", str(pte))


def test_a_pickled_weight_is_refused_unless_trusted(exported, tmp_path, capsys):
    """A weight stored as a pickle (as torch.export.save does for tensor subclasses) must not be
    unpickled behind the user's back: this one would create a file when loaded."""
    path = exported("convnet")
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    def poison(name, data):
        if name.endswith("weights/model_weights_config.json"):
            doc = json.loads(data)
            first = next(iter(doc["config"]))
            doc["config"][first]["use_pickle"] = True
            doc["config"][first]["path_name"] = "evil.pkl"
            return json.dumps(doc).encode()
        return data

    evil = rewrite_zip(path, tmp_path / "evil.pt2", poison)
    with zipfile.ZipFile(evil, "a") as z:
        prefix = z.namelist()[0].split("/")[0]
        z.writestr(f"{prefix}/data/weights/evil.pkl", pickle.dumps(Evil()))
    err = one_line_error(capsys, "run", evil)
    assert "pickle" in err and "--trust-pickles" in err
    assert not marker.exists()


def test_lint_on_pt2_says_what_it_checked(exported, capsys):
    path = exported("dynamic")
    code = main(["lint", path])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "checked" in out


@pytest.mark.skipif(sys.platform == "win32", reason="subprocess with env")
def test_cli_render_pt2(exported, tmp_path):
    path = exported("convnet")
    out = tmp_path / "g.dot"
    r = subprocess.run([sys.executable, "-m", "tsdebug.cli", "render", path, "-o", str(out), "--run"],
                       capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert r.returncode == 0, r.stderr
    text = out.read_text()
    assert "conv2d" in text and "layers" in text


class _ReusedPool(torch.nn.Module):
    """One pooling layer called twice: torch.export records both calls under the same module path."""

    def __init__(self):
        super().__init__()
        self.pool = torch.nn.MaxPool2d(2)
        self.conv = torch.nn.Conv2d(3, 3, 1)

    def forward(self, x):
        return self.pool(self.conv(self.pool(x)))


def test_a_module_called_twice_has_two_calls_with_their_own_ids(tmp_path):
    ep = torch.export.export(_ReusedPool().eval(), (torch.randn(1, 3, 16, 16),))
    torch.export.save(ep, str(tmp_path / "reuse.pt2"))
    s = Session(str(tmp_path / "reuse.pt2"))
    calls = [n for n in s.program.root_graph("forward", inlined=False).walk() if n.kind == "prim::CallModule"]
    assert [n.module_path for n in calls] == ["pool", "conv", "pool"]
    assert len({n.id for n in calls}) == 3
    # a breakpoint on the second call stops there only, after the first pool ran
    s.start()
    s.breakpoints.toggle_node(calls[2].id)
    s.machine.continue_()
    assert s.machine.current_node is calls[2]
    assert s.run_and_compare().identical


def test_the_inspector_shows_symbolic_sizes_and_their_ranges(exported):
    """A dynamic batch: the inspector says the exported shape with its symbol and the range it may take."""
    import asyncio

    from tsdebug.app import TsdebugApp
    from tsdebug.cli import build_open_parser
    from tsdebug.widgets import Inspector

    path = exported("dynamic")
    s = Session(path)
    (sym, (lo, hi)), = [(k, v) for k, v in s.program.symbol_ranges().items() if k.startswith("s")]

    async def run():
        app = TsdebugApp(build_open_parser().parse_args([path, "--input", "float32[3,3,12,12]"]))
        async with app.run_test(size=(160, 50)) as pilot:
            for _ in range(300):
                await pilot.pause()
                if app.state not in ("running", "loading"):
                    break
                await asyncio.sleep(0.01)
            text = app.query_one(Inspector).plain
            assert f"exported as float32[{sym}," in text, text
            assert f"{sym} in [{lo}, {'inf' if hi is None else hi}]" in text, text

    asyncio.run(run())
