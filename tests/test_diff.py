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


# ------------------------------------------------------------------------------------------------
# Inputs that take a path the trace did not record: the report says where the two runs part.


def line_in(text: str) -> int:
    """The line of diff_models.py whose stripped text is ``text``."""
    with open(DIFF_MODELS) as f:
        return next(n for n, t in enumerate(f, 1) if t.strip() == text)


def at(text: str) -> str:
    return f"diff_models.py:{line_in(text)}"


def traced(archive, cls, example, mode="trace"):
    torch.manual_seed(0)
    return archive(cls(), mode, example=example)


def diff_of(capsys, path, cls, *inputs):
    return diff_json(capsys, path, "--eager", f"{DIFF_MODELS}:{cls.__name__}", *inputs)


def test_a_branch_whose_sides_end_the_forward_is_explained(archive, capsys):
    path = traced(archive, D.BranchAtTheEnd, (torch.ones(2, 6),))
    code, rep, err = diff_of(capsys, path, D.BranchAtTheEnd, "--input", "float32[2,6]:-1..-0.5")
    assert code == 1, err
    assert rep["first_divergence"] is None
    p = rep["parting"]
    assert p["last_agreed"]["kind"] == "aten::linear" and p["last_agreed"]["module_path"] == "lin"
    assert [(g["kind"], g["source"].rsplit("/", 1)[1]) for g in p["graph_only"]] == [("aten::mul", at(D.BranchAtTheEnd.TAKEN))]
    assert p["graph_only"][0]["inside"] == {"statement": D.BranchAtTheEnd.IF, "line": line_in(D.BranchAtTheEnd.IF)}
    eager = [(e["op"], e["source"].rsplit("/", 1)[1]) for e in p["eager_only"]]
    assert ("sub", at(D.BranchAtTheEnd.OTHER)) in eager and ("gt", at(D.BranchAtTheEnd.IF)) in eager
    main(["diff", path, "--eager", f"{DIFF_MODELS}:BranchAtTheEnd", "--input", "float32[2,6]:-1..-0.5"])
    out = capsys.readouterr().out
    assert "where they part" in out and "the last node both agree on" in out
    assert f"in '{D.BranchAtTheEnd.IF}' at line {line_in(D.BranchAtTheEnd.IF)}" in out, out


def test_a_loop_unrolled_to_fewer_steps_shows_the_steps_the_python_ran_on(archive, capsys):
    path = traced(archive, D.StepsOverTime, (torch.randn(3, 4),))
    code, rep, err = diff_of(capsys, path, D.StepsOverTime, "--input", "float32[5,4]")
    assert code == 1, err
    p = rep["parting"]
    assert p["last_agreed"]["kind"] == "aten::tanh" and p["last_agreed"]["source"].endswith(at(D.StepsOverTime.BODY))
    assert p["graph_only"] == []
    extra = p["eager_only"]
    assert [e["op"] for e in extra].count("linear") == 2  # steps 4 and 5
    assert all(e["source"].endswith(at(D.StepsOverTime.BODY)) for e in extra)
    assert all(e["inside"]["statement"] == D.StepsOverTime.LOOP for e in extra)
    main(["diff", path, "--eager", f"{DIFF_MODELS}:StepsOverTime", "--input", "float32[5,4]"])
    out = capsys.readouterr().out
    assert "linear, add, tanh  ×2" in out, out


def test_a_baked_batch_is_a_shape_difference_with_the_node_where_shapes_part(archive, capsys):
    path = traced(archive, D.BakedBatch, (torch.randn(4, 3, 4),))
    code, rep, err = diff_of(capsys, path, D.BakedBatch, "--input", "float32[2,6,4]")
    assert code == 1, err
    (only,) = rep["output_differences"]
    assert only["kind"] == "shape" and only["what"] == "shape [4, 12] vs [2, 24]" and only["node_kind"] == "aten::view"
    part = rep["parting"]["shapes_part"]
    assert part["kind"] == "aten::view" and part["source"].endswith(at(D.BakedBatch.VIEW))
    assert part["differ"] == "shape [4, 12] vs [2, 24]" and part["eager_op"] == "view"
    main(["diff", path, "--eager", f"{DIFF_MODELS}:BakedBatch", "--input", "float32[2,6,4]"])
    out = capsys.readouterr().out
    assert "outputs    DIFFER: shape [4, 12] vs [2, 24]" in out and "max abs inf" not in out, out
    assert f"shapes part at aten::view" in out


def test_a_baked_topk_is_explained_and_raising_where_the_python_does_not_is_a_difference(archive, capsys):
    example = (torch.tensor([[1.5, -2.0, 3.0], [4.0, -5.0, 6.0]]) - 1.0,)  # four elements above 1 after +1
    path = traced(archive, D.BakedTopK, example)
    code, rep, err = diff_of(capsys, path, D.BakedTopK, "--input", "float32[2,3]:0..1")
    assert code == 1, err
    part = rep["parting"]["shapes_part"]
    assert part["kind"] == "aten::topk" and part["differ"] == "shape [4] vs [6]"
    # three elements: the archive's k = 4 is out of range, the Python's k is 3
    code, rep, err = diff_of(capsys, path, D.BakedTopK, "--input", "float32[1,3]:0..1")
    assert code == 1, err
    e = rep["archive_error"]
    assert e["kind"] == "aten::topk" and e["source"].endswith(at(D.BakedTopK.TOPK)) and "out of range" in e["message"]
    assert rep["eager_error"] is None and rep["outputs_close"] is False
    assert rep["parting"]["last_agreed"]["kind"] == "aten::flatten"
    main(["diff", path, "--eager", f"{DIFF_MODELS}:BakedTopK", "--input", "float32[1,3]:0..1"])
    out = capsys.readouterr().out
    assert "outputs    none from the archive: it raised at aten::topk" in out and "out of range" in out


def test_a_rank_test_frozen_on_a_2d_example(archive, capsys):
    path = traced(archive, D.RankBranch, (torch.randn(3, 4),))
    code, rep, err = diff_of(capsys, path, D.RankBranch, "--input", "float32[3,5,4]")
    assert code == 1, err
    assert rep["output_differences"][0]["what"] == "shape [3, 5, 2] vs [3, 2]"
    p = rep["parting"]
    mean = next(e for e in p["eager_only"] if e["op"] == "mean")
    assert mean["source"].endswith(at(D.RankBranch.BODY)) and mean["inside"]["statement"] == D.RankBranch.IF
    assert p["shapes_part"]["kind"] == "aten::linear" and p["shapes_part"]["source"].endswith(at(D.RankBranch.HEAD))


def test_a_while_unrolled_shows_the_python_s_extra_iterations_before_the_first_divergence(archive, capsys):
    path = traced(archive, D.HalveWhileLarge, (torch.ones(2, 4),))
    code, rep, err = diff_of(capsys, path, D.HalveWhileLarge, "--input", "float32[2,4]:5..9")
    assert code == 1, err
    assert rep["first_divergence"]["kind"] == "aten::add"  # the cause is before it, not the cascade after
    divs = [e for e in rep["parting"]["eager_only"] if e["op"] == "div"]
    assert divs and all(e["inside"]["statement"] == D.HalveWhileLarge.WHILE for e in divs)
    assert rep["eager_only_before_first"] == [
        {"op": e["op"], "source": e["source"], "module_path": e["module_path"]} for e in rep["parting"]["eager_only"]]


def test_the_python_raising_where_the_archive_does_not_is_a_difference(archive, capsys):
    path = traced(archive, D.ChecksItsInput, (torch.ones(2, 4),))
    code, rep, err = diff_of(capsys, path, D.ChecksItsInput, "--input", "float32[2,4]:-1..-0.5")
    assert code == 1, err
    e = rep["eager_error"]
    assert e["kind"] == "AssertionError" and e["message"] == "expects non-negative inputs"
    assert e["source"].endswith(at(D.ChecksItsInput.CHECK))
    assert [g["kind"] for g in rep["parting"]["graph_only"]] == ["aten::linear", "aten::relu"]
    main(["diff", path, "--eager", f"{DIFF_MODELS}:ChecksItsInput", "--input", "float32[2,4]:-1..-0.5"])
    out = capsys.readouterr().out
    assert "outputs    none from the Python: it raised AssertionError at" in out


@pytest.mark.parametrize("cls,ours,theirs", [
    (D.Reports, "'alpha={:.3f}'", "'alpha="),  # TorchScript's str.format ignores format specs
    (D.Prints, "'0.33333333333333331'", "'0.3333333333333333'"),  # and str(float) prints 17 digits
])
def test_values_that_are_not_tensors_are_compared(archive, capsys, cls, ours, theirs):
    path = archive(cls(), "script")
    code, rep, err = diff_of(capsys, path, cls, "--input", "float32[1,4]")
    assert code == 1, err
    (d,) = rep["output_differences"]
    assert d["where"] == "output[1]" and d["what"].startswith(f"{ours} vs {theirs}"), d
    assert d["node_kind"] in ("aten::format", "aten::str")


def test_a_branch_two_statements_above_the_divergence_is_named(archive, capsys):
    """The divergence is at the add where the branch's result meets agreeing ops: walking back
    through its inputs finds the frozen branch, not the op just before."""
    path = traced(archive, D.BranchFarFromTheCause, (torch.ones(2, 4),))
    code, rep, err = diff_of(capsys, path, D.BranchFarFromTheCause, "--input", "float32[2,4]:-2..-1")
    assert code == 1, err
    assert rep["first_divergence"]["kind"] == "aten::add"
    p = rep["parting"]
    assert [(g["kind"], g["module_path"]) for g in p["graph_only"]] == [("aten::linear", "a")]
    assert ("linear", "b") in [(e["op"], e["module_path"]) for e in p["eager_only"]]
    assert p["graph_only"][0]["inside"]["statement"] == D.BranchFarFromTheCause.IF


def test_a_dtype_difference_is_said_as_such(archive, capsys):
    path = traced(archive, D.DtypeBranch, (torch.ones(2, 4),))
    code, rep, err = diff_of(capsys, path, D.DtypeBranch, "--input", "float32[2,4]:20..30")
    assert code == 1, err
    assert rep["output_differences"][0]["what"].startswith("dtype float32 vs float16")
    assert ("half", line_in("return y.half()")) in [(e["op"], int(e["source"].rsplit(":", 1)[1]))
                                                     for e in rep["parting"]["eager_only"]]


def test_against_another_archive_the_runs_part_too(archive, capsys):
    """A traced export against a scripted one of the same model: the baked batch shows as a shape
    difference at the view; the traced row loop's unpack raising where the scripted loop runs is one too."""
    torch.manual_seed(0)
    model = D.BakedBatch()
    t = archive(model, "trace", example=(torch.randn(4, 3, 4),), name="t.pt")
    s = archive(model, "script", name="s.pt")
    code, rep, err = diff_json(capsys, t, "--against", s, "--input", "float32[2,6,4]")
    assert code == 1, err
    assert rep["output_differences"][0]["what"] == "shape [4, 12] vs [2, 24]"
    assert rep["parting"]["shapes_part"]["kind"] == "aten::view"
    import trap_models as T

    rows_t = archive(T.RowFilter(), "trace", example=(T.BOXES,), name="rows_t.pt")
    rows_s = archive(T.RowFilter(), "script", name="rows_s.pt")
    code, rep, err = diff_json(capsys, rows_t, "--against", rows_s, "--input", "float32[5,5]:0.6..1")
    assert code == 1, err
    assert rep["archive_error"]["kind"] == "prim::ListUnpack" and rep["eager_error"] is None
    code, rep, err = diff_json(capsys, rows_s, "--against", rows_t, "--input", "float32[5,5]:0.6..1")
    assert code == 1, err
    assert rep["archive_error"] is None and "ListUnpack" in rep["eager_error"]["message"]


def test_both_runs_raising_is_the_input_s_fault(archive, capsys):
    path = traced(archive, D.BakedBatch, (torch.randn(4, 3, 4),))
    code, rep, err = diff_of(capsys, path, D.BakedBatch, "--input", "float32[2,6,5]")
    assert code == 2 and "tsdebug: error:" in err


def test_the_ui_marks_where_the_runs_part(archive):
    """``e`` then ``D`` on a baked batch: no aligned node diverges; the view where shapes part is marked."""
    import asyncio

    from tsdebug.app import TsdebugApp
    from tsdebug.cli import build_open_parser
    from tsdebug.widgets import ProgramView

    path = traced(archive, D.BakedBatch, (torch.randn(4, 3, 4),))

    async def run():
        app = TsdebugApp(build_open_parser().parse_args(
            [path, "--input", "float32[2,6,4]", "--eager", f"{DIFF_MODELS}:BakedBatch"]))
        async with app.run_test(size=(120, 40)) as pilot:
            for key in ("", "e", "D"):
                if key:
                    await pilot.press(key)
                for _ in range(300):
                    await pilot.pause()
                    if app.state not in ("running", "loading"):
                        break
                    await asyncio.sleep(0.01)
            assert app.diff_result.report.first is None
            program = app.query_one(ProgramView)
            node = program.selected_node
            assert node.kind == "aten::view" and program.state_of(node).diverged

    asyncio.run(run())
