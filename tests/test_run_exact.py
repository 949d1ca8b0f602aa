"""A full run through the engine gives the same bits as module(*inputs), in both views."""

import pytest
import torch

from engine import Session
from engine.session import clone_value
from engine.run.values import values_equal
import models as M


def native(path, args, method="forward"):
    module = torch.jit.load(path)
    with torch.no_grad():
        return getattr(module, method)(*clone_value(args))


def engine_run(path, args, inline, method="forward"):
    s = Session(path, inline=inline, method=method)
    m = s.start(values=args)
    assert m.run() == "finished", m.error
    return m.outputs, m


def seq(*shape):
    g = torch.Generator().manual_seed(sum(shape))
    return torch.randn(*shape, generator=g)


CASES = {
    "convnet": (lambda: M.randomize_bn(M.ConvNet()), (seq(2, 3, 16, 16),), ("trace", "script")),
    "lstm": (M.LSTMNet, (seq(2, 5, 6),), ("trace", "script")),
    "gru": (M.GRUNet, (seq(4, 3, 5),), ("trace", "script")),
    "transformer": (M.TransformerNet, (seq(2, 5, 16),), ("trace", "script")),
    "attention": (M.AttentionNet, (seq(2, 3, 16), seq(2, 4, 16)), ("trace", "script")),
    "inplace": (M.InPlace, (seq(3, 4),), ("trace", "script")),
}


@pytest.mark.parametrize("inline", [False, True], ids=["call-tree", "inlined"])
@pytest.mark.parametrize(
    "name,mode", [(n, mode) for n, (_, _, modes) in CASES.items() for mode in modes]
)
def test_engine_matches_native(archive, name, mode, inline):
    make, args, _ = CASES[name]
    torch.manual_seed(0)
    path = archive(make(), mode, example=args)
    expected = native(path, args)
    got, machine = engine_run(path, args, inline)
    assert values_equal(got, expected)
    assert len(machine.timeline) > 5


@pytest.mark.parametrize("inline", [False, True], ids=["call-tree", "inlined"])
@pytest.mark.parametrize("n,mode_arg", [(3, "sum"), (2, "max"), (1, "other"), (0, "other")])
def test_scripted_control_flow(archive, inline, n, mode_arg):
    torch.manual_seed(0)
    path = archive(M.ControlFlow(), "script")
    args = (seq(2, 4), n, mode_arg)
    expected = native(path, args)
    got, machine = engine_run(path, args, inline)
    assert values_equal(got, expected)
    # The nested-list aliasing (inner.append changes nested[0]) was kept.
    assert got[2]["inner"] == 2


def test_scripted_state_and_other_method(archive):
    path = archive(M.ControlFlow(), "script")
    s = Session(path)
    m = s.start(values=(seq(2, 4), 2, "sum"))
    m.run()
    # SetAttr and the list attribute mutation reached the module.
    assert s.program.module.getattr("calls") == 1
    assert s.program.module.getattr("history") == [0, 2]
    # A restart starts from the archive's state again (as torch's run of a fresh load does).
    m = s.restart()
    assert s.program.module.getattr("calls") == 0 and s.program.module.getattr("history") == [0]
    m.run()
    assert "calls=1" in m.outputs[1]
    assert s.program.module.getattr("history") == [0, 2]
    other = Session(path, method="describe")
    mo = other.start(values=(seq(2, 3, 5),))
    mo.run()
    assert mo.outputs == (3, [2, 3, 5])


def test_optional_and_default_arguments(archive):
    path = archive(M.OptionalArgs(), "script")
    x = seq(3)
    for args in [(x,), (x, torch.ones(3)), (x, None, 3.0)]:
        s = Session(path)
        m = s.start(values=args)
        m.run()
        full = s.inputs
        assert values_equal(m.outputs, native(path, full))


def test_tuple_and_dict_inputs(archive):
    path = archive(M.TupleInput(), "script")
    args = ((seq(2), seq(2)), {"a": seq(2)})
    got, _ = engine_run(path, args, inline=False)
    assert values_equal(got, native(path, args))


def test_grad_mode_is_respected(archive):
    path = archive(M.LSTMNet(), "script")
    s = Session(path, grad=True)
    m = s.start(values=(seq(1, 3, 6),))
    m.run()
    assert m.outputs[0].requires_grad
    s2 = Session(path)
    m2 = s2.start(values=(seq(1, 3, 6),))
    m2.run()
    assert not m2.outputs[0].requires_grad


@pytest.mark.parametrize("name,mode", [("convnet", "trace"), ("inplace", "script"), ("lstm", "script"),
                                       ("transformer", "trace")])
def test_repeated_runs_on_the_checked_fast_path(archive, name, mode):
    """The first run checks each op's direct overload call against its compiled
    function; later runs use the winner, in-place ops included, and stay exact."""
    make, args, _ = CASES[name]
    torch.manual_seed(0)
    path = archive(make(), mode, example=args)
    expected = native(path, args)
    s = Session(path)
    s.start(values=args)
    for _ in range(3):
        m = s.restart()
        assert m.run() == "finished", m.error
        assert values_equal(m.outputs, expected)
    fast = {node.kind for node, op in s.program.leaf_ops.items() if op.run.__name__ in ("call", "direct")}
    assert fast, "no op took the direct path"
    if name == "inplace":
        assert {"aten::add_", "aten::relu_"} <= fast
        recs = {r.node.kind: r for r in m.timeline}
        assert torch.equal(recs["aten::mul"].outputs[0], args[0] * 2)  # kept as it was before add_
        assert torch.equal(recs["aten::add_"].inputs[0], args[0] * 2)


@pytest.mark.parametrize("inline", [False, True], ids=["call-tree", "inlined"])
def test_a_traced_row_loop_on_another_row_count_raises_as_torch_does(archive, inline):
    """``for b in boxes:`` traced on 3 rows unpacks exactly 3: 5 rows raise natively, so in the engine too."""
    import trap_models as T

    path = archive(T.RowFilter(), "trace", example=(T.BOXES,))
    boxes = torch.rand(5, 5) + 0.6
    with pytest.raises(RuntimeError, match="Expected 3 elements in a list but found 5"):
        native(path, (boxes,))
    s = Session(path, inline=inline)
    m = s.start(values=(boxes,))
    assert m.run() == "error"
    assert m.error.node.kind == "prim::ListUnpack" and "Expected 3 elements in a list but found 5" in m.error.message
