"""Inputs that alias reach the engine, the native run and the eager model as the user's own call has them."""

import json
import os

import pytest
import torch

import alias_models as A
from engine import Session
from engine.aliasing import clone_value
from tsdebug.cli import main

HERE = os.path.dirname(__file__)
ALIAS_MODELS = os.path.join(HERE, "alias_models.py")


def _x(*shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(7))


# name -> (model, inputs builder: a fresh argument tuple with its aliasing, each call)
CASES = {
    "mha(x, x, x)": (A.SelfAttention, lambda: (lambda x: (x, x, x))(_x(2, 5, 16))),
    "same tensor twice": (A.InPlaceOnOne, lambda: (lambda x: (x, x))(_x(3, 4))),
    "a view and its base": (A.RowOfWhole, lambda: (lambda x: (x, x[0]))(_x(3, 4))),
    "in a list and as an argument": (A.ListAndArgument, lambda: (lambda x: ([x], x))(_x(3, 4))),
    "a tuple holding one tensor twice": (A.PairOfOne, lambda: (lambda x: ((x, x),))(_x(3, 4))),
    "a dict with one tensor under two keys": (A.SameInTwoKeys, lambda: (lambda x: ({"a": x, "b": x},))(_x(3, 4))),
    "overlapping slices": (A.TwoDtypeViews, lambda: (lambda x: (x[:, :2], x[:, 1:]))(_x(3, 4))),
}


def users_call(path, args):
    """What the user gets: their own ``module(*inputs)`` on the archive, inputs aliased as they made them."""
    with torch.no_grad():
        return torch.jit.load(path)(*args)


@pytest.mark.parametrize("mode", ["script", "trace"])
@pytest.mark.parametrize("case", list(CASES))
def test_run_is_the_users_own_call(archive, case, mode):
    make_model, make_args = CASES[case]
    if mode == "trace" and case not in ("mha(x, x, x)", "same tensor twice", "a view and its base",
                                        "overlapping slices"):
        pytest.skip("a trace takes tensors and tuples of them only")
    path = archive(make_model(), mode, example=make_args())
    expected = users_call(path, make_args())
    given = make_args()
    before = clone_value(given)
    s = Session(path)
    s.start(values=given)
    report = s.run_and_compare()
    assert report.error is None and report.native_error is None
    assert torch.equal(report.outputs, expected), (case, (report.outputs - expected).abs().max())
    assert torch.equal(report.native_outputs, expected)
    assert report.identical
    # nothing the user gave is modified
    for a, b in zip(_flat(given), _flat(before)):
        assert torch.equal(a, b)


def _flat(value):
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _flat(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _flat(v)]
    return []


def test_self_attention_takes_the_self_attention_path(archive):
    """Three equal tensors are not three references to one: the outputs of the two calls
    differ in their last bits, and tsdebug must give the user's."""
    path = archive(A.SelfAttention(), "script")
    x = _x(2, 5, 16)
    aliased = users_call(path, (x, x, x))
    s = Session(path)
    s.start(values=(x, x, x))
    s.machine.run()
    assert torch.equal(s.machine.outputs, aliased)
    kinds = {r.node.kind for r in s.machine.timeline.records}
    s2 = Session(path)
    s2.start(values=(x, x.clone(), x.clone()))
    s2.machine.run()
    assert kinds != {r.node.kind for r in s2.machine.timeline.records}  # another path through MHA


def test_inputs_file_keeps_the_identity_torch_load_gives(archive, tmp_path, capsys):
    path = archive(A.InPlaceOnOne(), "script")
    x = _x(3, 4)
    torch.save((x, x), tmp_path / "inputs.pt")
    out = tmp_path / "out.pt"
    code = main(["run", path, "--inputs", str(tmp_path / "inputs.pt"), "--save-outputs", str(out), "--json"])
    rep = json.loads(capsys.readouterr().out)
    assert code == 0 and rep["identical"]
    assert torch.equal(torch.load(out), users_call(path, torch.load(tmp_path / "inputs.pt")))
    assert torch.equal(torch.load(out), x * 4)


def test_views_saved_in_an_inputs_file_stay_views(archive, tmp_path, capsys):
    path = archive(A.RowOfWhole(), "script")
    x = _x(3, 4)
    torch.save({"whole": x, "row": x[0]}, tmp_path / "inputs.pt")
    out = tmp_path / "out.pt"
    code = main(["run", path, "--inputs", str(tmp_path / "inputs.pt"), "--save-outputs", str(out)])
    capsys.readouterr()
    assert code == 0
    expected = x.sum(0).clone()
    expected += torch.tensor([1.0, 1.0, 1.0, 1.0])
    assert torch.equal(torch.load(out), users_call(path, (lambda d: (d["whole"], d["row"]))(
        torch.load(tmp_path / "inputs.pt"))))
    assert torch.allclose(torch.load(out), expected)


@pytest.mark.parametrize("name", ["InPlaceOnOne", "SelfAttention"])
def test_the_eager_model_gets_the_aliasing_too(archive, name):
    """tsdebug diff: the eager Python run with the same aliasing agrees with the engine's run,
    and both are the user's own call."""
    make_model, make_args = next(v for v in CASES.values() if v[0].__name__ == name)
    path = archive(make_model(), "script")
    s = Session(path)
    s.start(values=make_args())
    result = s.diff(f"{ALIAS_MODELS}:{name}")
    assert result.report.outputs_close, result.to_json()
    assert torch.equal(result.machine.outputs, users_call(path, make_args()))
    with torch.no_grad():
        python = make_model().eval()(*make_args())
    assert torch.allclose(result.machine.outputs, python, atol=1e-6)


def test_clone_value_copies_each_storage_once():
    x = _x(4, 4)
    args = (x, x[1:3], [x, {"k": x.t()}], x)
    copy = clone_value(args)
    assert copy[0] is copy[3] and copy[2][0] is copy[0]
    assert copy[0] is not x and copy[0].untyped_storage().data_ptr() != x.untyped_storage().data_ptr()
    copy[0].fill_(5.0)
    assert bool((copy[1] == 5).all()) and bool((copy[2][1]["k"] == 5).all())
    assert not bool((x == 5).any())
    # strides and offsets as the user made them
    assert copy[1].storage_offset() == 4 and copy[2][1]["k"].stride() == (1, 4)
    # unaliased tensors stay plain clones (a small slice of a big tensor copies only itself)
    big = torch.zeros(1000)
    small = clone_value((big[:3],))[0]
    assert small.untyped_storage().nbytes() == 3 * 4
