"""tsdebug diff: the engine's run against the eager Python model."""

import json
import os

import pytest
import torch

from engine import Session
from engine.check.diff import comparable_records
from tsdebug.cli import main
import diff_models as D
import models as M

HERE = os.path.dirname(__file__)
DIFF_MODELS = os.path.join(HERE, "diff_models.py")
MODELS = os.path.join(HERE, "models.py")


def diff_json(capsys, *argv):
    code = main(["diff", *argv, "--json"])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if out.strip() else None), err


def test_frozen_branch(archive, capsys):
    torch.manual_seed(0)
    path = archive(D.FrozenBranch(), "trace", example=(torch.rand(2, 6) + 0.5,))
    # the example's branch: no divergence
    code, rep, _ = diff_json(capsys, path, "--eager", f"{DIFF_MODELS}:FrozenBranch", "--input", "float32[2,6]:0.5..1")
    assert code == 0 and rep["first_divergence"] is None and rep["coverage"] >= 0.95
    # the other branch: the first divergence is the node right after the frozen branch
    code, rep, _ = diff_json(capsys, path, "--eager", f"{DIFF_MODELS}:FrozenBranch", "--input", "float32[2,6]:-1..-0.5")
    assert code == 1
    first = rep["first_divergence"]
    assert first["kind"] == "aten::tanh" and first["eager_op"] == "tanh"
    assert first["source"].endswith("diff_models.py:22")
    # and the Python that ran instead names the line of the `if`
    lines = {e["source"].rsplit(":", 1)[1] for e in rep["eager_only_before_first"]}
    assert "18" in lines and "21" in lines  # `if x.mean() > 0` and `y = y - 1.0`
    graph_only = rep["graph_only_before_first"]
    assert [g["kind"] for g in graph_only] == ["aten::mul"] and graph_only[0]["source"].endswith(":19")


@pytest.mark.parametrize("mode", ["trace", "script"])
def test_changed_eps_names_the_layer(archive, capsys, mode):
    torch.manual_seed(0)
    path = archive(D.Stack(), mode, example=(torch.randn(4, 8),))
    code, rep, _ = diff_json(capsys, path, "--eager", f"{DIFF_MODELS}:Stack", "--eager-arg", "eps=0.5",
                             "--input", "float32[4,8]")
    assert code == 1
    first = rep["first_divergence"]
    assert first["kind"] == "aten::layer_norm" and first["module_path"] == "blocks.1.norm"
    assert first["step"] < min(w["step"] for w in rep["worst"] if w["node"] != first["node"]) or len(rep["worst"]) == 1


@pytest.mark.parametrize("mode", ["trace", "script"])
def test_swapped_activation_names_the_activation(archive, capsys, mode):
    torch.manual_seed(0)
    path = archive(D.Stack(), mode, example=(torch.randn(4, 8),))
    code, rep, _ = diff_json(capsys, path, "--eager", f"{DIFF_MODELS}:Stack", "--eager-arg", "act='gelu'",
                             "--input", "float32[4,8]")
    assert code == 1
    first = rep["first_divergence"]
    assert first["kind"] == "aten::relu" and first["eager_op"] == "gelu"
    assert first["module_path"] == "blocks.1"


CLEAN = {
    "ConvNet": ((1, 3, 16, 16), lambda: M.randomize_bn(M.ConvNet())),
    "TransformerNet": ((2, 5, 16), M.TransformerNet),
    "LSTMNet": ((2, 5, 6), M.LSTMNet),
}


@pytest.mark.parametrize("mode", ["trace", "script"])
@pytest.mark.parametrize("name", list(CLEAN))
def test_clean_models_agree(archive, capsys, name, mode):
    shape, make = CLEAN[name]
    torch.manual_seed(0)
    path = archive(make(), mode, example=(torch.randn(*shape),))
    code, rep, err = diff_json(capsys, path, "--eager", f"{MODELS}:{name}",
                               "--input", f"float32[{','.join(map(str, shape))}]")
    assert code == 0, err
    assert rep["first_divergence"] is None and rep["outputs_close"]
    assert rep["coverage"] >= 0.95, rep


def test_text_report(archive, capsys):
    torch.manual_seed(0)
    path = archive(D.FrozenBranch(), "trace", example=(torch.rand(2, 6) + 0.5,))
    code = main(["diff", path, "--eager", f"{DIFF_MODELS}:FrozenBranch", "--input", "float32[2,6]:-1..-0.5"])
    out = capsys.readouterr().out
    assert code == 1
    assert "first divergence" in out and "aten::tanh" in out and "diff_models.py:18" in out


@pytest.mark.parametrize(
    "spec,needle",
    [
        (f"{DIFF_MODELS}:Extra", "weights do not fit"),
        (f"{DIFF_MODELS}:broken_factory", "config file missing"),
        (f"{DIFF_MODELS}:Nope", "has no 'Nope'"),
        ("no_such_package_xyz.mod:Net", "importing no_such_package_xyz.mod failed"),
        ("missing.py:Net", "no such file"),
    ],
)
def test_eager_errors(archive, capsys, spec, needle):
    path = archive(D.Stack(), "script")
    code = main(["diff", path, "--eager", spec, "--input", "float32[4,8]"])
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in err


def test_scripted_helpers_run_as_python(archive):
    """--eager imports with TorchScript off: @torch.jit.script functions stay Python."""
    path = archive(M.ControlFlow(), "script")
    s = Session(path)
    s.start(values=(torch.randn(2, 4), 2, "sum"))
    result = s.diff(f"{MODELS}:ControlFlow")
    assert result.report.outputs_close
    assert result.report.coverage >= 0.9


def test_against_another_archive(archive, capsys):
    torch.manual_seed(0)
    model = D.Stack()
    traced = archive(model, "trace", example=(torch.randn(4, 8),), name="traced.pt")
    scripted = archive(model, "script", name="scripted.pt")
    code, rep, err = diff_json(capsys, traced, "--against", scripted, "--input", "float32[4,8]")
    assert code == 0, err
    assert rep["first_divergence"] is None and rep["coverage"] >= 0.95
    # a second version of the export with one LayerNorm changed
    changed = D.Stack()
    changed.load_state_dict(model.state_dict())
    changed.blocks[1].norm.eps = 0.5
    v2 = archive(changed, "script", name="v2.pt")
    code, rep, err = diff_json(capsys, traced, "--against", v2, "--input", "float32[4,8]")
    assert code == 1
    assert rep["first_divergence"]["kind"] == "aten::layer_norm"
    assert rep["first_divergence"]["module_path"] == "blocks.1.norm"


def test_diff_needs_a_reference(archive, capsys):
    path = archive(D.Stack(), "script")
    code = main(["diff", path])
    err = capsys.readouterr().err
    assert code == 2 and "--eager" in err and "--against" in err


def test_json_stays_json_when_the_python_prints(archive, capsys):
    """The eager model's prints go to stderr under --json: stdout is one JSON object."""
    torch.manual_seed(0)
    path = archive(D.Chatty(), "trace", example=(torch.randn(2, 6),))
    capsys.readouterr()  # what tracing it printed here
    code, rep, err = diff_json(capsys, path, "--eager", f"{DIFF_MODELS}:Chatty", "--input", "float32[2,6]")
    assert code == 0 and rep is not None and rep["first_divergence"] is None
    assert "forward got (2, 6)" in err


def test_forks_and_with_blocks_align_whole(archive, capsys):
    torch.manual_seed(0)
    path = archive(D.ForksAndNoGrad(), "script")
    code, rep, err = diff_json(capsys, path, "--eager", f"{DIFF_MODELS}:ForksAndNoGrad", "--input", "float32[2,4]")
    assert code == 0, err
    assert rep["first_divergence"] is None and rep["outputs_close"]
    assert rep["coverage"] == 1.0 and rep["comparable_nodes"] == 6, rep


@pytest.mark.parametrize("mode", ["trace", "script"])
def test_methods_other_than_forward_align_where_they_are_called(archive, capsys, mode):
    """``self.corr.lookup(x)`` runs in the graph as corr's method, eagerly inside the caller's forward
    (no forward of corr ran): its ops are compared all the same, and a change inside it is found there."""
    torch.manual_seed(0)
    path = archive(D.CallsAModulesMethods(), mode, example=(torch.randn(3, 4),))
    code, rep, err = diff_json(capsys, path, "--eager", f"{DIFF_MODELS}:CallsAModulesMethods", "--input", "float32[3,4]")
    assert code == 0, err
    assert rep["first_divergence"] is None and rep["coverage"] == 1.0, rep
    code, rep, err = diff_json(capsys, path, "--eager", f"{DIFF_MODELS}:CallsAModulesMethods",
                               "--eager-arg", "scale=3.0", "--input", "float32[3,4]")
    assert code == 1, err
    first = rep["first_divergence"]
    assert first["kind"] == "aten::mul" and first["source"].endswith("diff_models.py:226"), first


def test_two_composites_of_one_shape_meet_their_own_calls(archive, capsys):
    """Each eager F.normalize meets the div that ends its own run of nodes, not the other's."""
    torch.manual_seed(0)
    path = archive(D.CosineAttention(), "trace", example=(torch.randn(2, 5, 8),))
    code, rep, err = diff_json(capsys, path, "--eager", f"{DIFF_MODELS}:CosineAttention", "--input", "float32[2,5,8]")
    assert code == 0, err
    assert rep["first_divergence"] is None and rep["worst"] == [], rep["first_divergence"]
    assert rep["coverage"] == 1.0, rep


@pytest.mark.parametrize("mode", ["trace", "script"])
def test_random_draws_agree_with_the_eager_model(archive, capsys, mode):
    torch.manual_seed(0)
    path = archive(D.Sampler(), mode, example=(torch.randn(2, 4),))
    code, rep, err = diff_json(capsys, path, "--eager", f"{DIFF_MODELS}:Sampler", "--input", "float32[2,4]")
    assert code == 0, err
    assert rep["first_divergence"] is None and rep["outputs_close"] and rep["outputs"]["max_abs"] == 0


@pytest.mark.parametrize("mode", ["trace", "script"])
def test_uninitialized_memory_is_not_compared(archive, capsys, mode):
    """torch.empty's output is whatever the allocator had: not a divergence, on either side."""
    path = archive(D.EmptyThenFilled(), mode, example=(torch.randn(3, 4),))
    code, rep, err = diff_json(capsys, path, "--eager", f"{DIFF_MODELS}:EmptyThenFilled", "--input", "float32[3,4]")
    assert code == 0, err
    assert rep["first_divergence"] is None and rep["outputs_close"]
    session = Session(path)
    session.start(values=(torch.randn(3, 4),))
    session.machine.run()
    kinds = {r.node.kind for r in comparable_records(session.machine.timeline.records)}
    assert kinds and not kinds & {"aten::empty", "aten::empty_like"}, kinds


def test_ops_meet_their_own_source_lines(archive, capsys):
    """Traced on the skipped side; eagerly the branch runs ops of the same names and shapes
    before the ones the graph has: the graph's ops meet the eager ops of their own line."""
    path = archive(D.LookAlikes(), "trace", example=(-torch.ones(2, 4),))
    code, rep, err = diff_json(capsys, path, "--eager", f"{DIFF_MODELS}:LookAlikes", "--input", "float32[2,4]:1..2")
    assert code == 1, err
    first = rep["first_divergence"]
    with open(DIFF_MODELS) as f:
        line = next(n for n, text in enumerate(f, 1) if text.strip() == D.LookAlikes.SCALE_LINE)
    assert first["kind"] == "aten::mul" and first["eager_source"].endswith(f"diff_models.py:{line}"), first


def test_non_persistent_buffers_come_from_the_archive(archive, capsys):
    model = D.NonPersistent()
    model.offsets.fill_(7.0)  # the archive's value, not the one the class builds
    path = archive(model, "trace", example=(torch.randn(2, 4),))
    code, rep, err = diff_json(capsys, path, "--eager", f"{DIFF_MODELS}:NonPersistent", "--input", "float32[2,4]")
    assert code == 0, err
    assert rep["outputs_close"] and rep["outputs"]["max_abs"] == 0 and rep["first_divergence"] is None


def test_a_shared_module_is_compared_call_by_call(archive, capsys):
    path = archive(D.SharedModule(), "script")
    code, rep, err = diff_json(capsys, path, "--eager", f"{DIFF_MODELS}:SharedModule", "--input", "float32[2,4]")
    assert code == 0, err
    assert rep["first_divergence"] is None and rep["coverage"] == 1.0, rep


@pytest.mark.parametrize("mode", ["trace", "script"])
def test_a_statement_over_several_lines_is_one_place(archive, capsys, mode):
    path = archive(D.LongStatement(), mode, example=(torch.randn(2, 8),))
    code, rep, err = diff_json(capsys, path, "--eager", f"{DIFF_MODELS}:LongStatement", "--input", "float32[2,8]")
    assert code == 0, err
    assert rep["first_divergence"] is None and rep["coverage"] == 1.0, rep


def test_whole_views_are_not_compared(archive, capsys):
    path = archive(D.Chunks(), "trace", example=(torch.randn(2, 6, 8),))
    code, rep, err = diff_json(capsys, path, "--eager", f"{DIFF_MODELS}:Chunks", "--input", "float32[2,6,8]")
    assert code == 0, err
    assert rep["first_divergence"] is None and rep["coverage"] == 1.0, rep


def test_drift_that_does_not_reach_the_outputs_is_called_rounding(archive, capsys, tmp_path):
    torch.manual_seed(0)
    model = D.Signs()
    path = archive(model, "script")
    drifted = {k: v + 1e-4 for k, v in model.state_dict().items()}
    torch.save(drifted, tmp_path / "drifted.pt")
    code = main(["diff", path, "--eager", f"{DIFF_MODELS}:Signs", "--eager-weights", str(tmp_path / "drifted.pt"),
                 "--input", "float32[2,4]"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "aten::linear" in out and "off by rounding only" in out, out
