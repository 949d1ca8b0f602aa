"""Values overwritten in place are kept as recipes (the op that made them, run
again on read) instead of copies; they must read back bit for bit as the copies
would, and fall back to copies wherever running the op again could differ."""

import gc
import warnings
import weakref
from typing import Dict, List, Optional

import pytest
import torch
import torch.nn as nn

from engine import Session
from engine.run.recipes import Overwritten
from engine.run.values import Dropped
from engine.run.values import values_equal
import models as M


class ViewsAndChains(nn.Module):
    def forward(self, x):
        y = x * 3  # made by an op: a recipe when overwritten
        flat = y.view(-1)  # a view of y: overwritten with it
        z = flat[1:4]
        before = z * 1
        y.add_(1)  # overwrites y, flat and z
        acc = x + 0
        for _ in range(40):  # a chain of in-place ops on one storage, longer than any recipe chain
            acc.mul_(0.5).add_(x)
        return y, before, acc


class MutatedList(nn.Module):
    def forward(self, x):
        reps: List[int] = [2, 1]
        y = x.repeat(reps)  # reads the list...
        reps[0] = 3  # ...which changes before y is overwritten
        z = y * 1
        y.add_(1)
        w = x.repeat(reps)
        return y, z, w


class MutatedBigList(nn.Module):
    def forward(self, x, n: int):
        values: List[int] = []
        for i in range(n):
            values.append(i)
        t = torch.tensor(values)  # reads a list too big to be recorded as a copy...
        values[0] = 7  # ...which changes before t is overwritten: making t again would differ
        t.add_(1)
        return t + x.sum().long(), values


class FilledBuffer(nn.Module):
    def forward(self, x):
        buf = torch.empty(x.shape[0], 4)  # uninitialized: running empty again would give other bits
        buf.fill_(2.0)
        return buf + x.sum()


def record_values(machine):
    return [(r.node.id, r.inputs, r.outputs) for r in machine.timeline]


def run_twice(path, args):
    """The same run with recipes, and with copies only."""
    with_recipes = Session(path).start(values=args)
    assert with_recipes.run() == "finished", with_recipes.error
    copies = Session(path).start(values=args)
    copies.timeline.recompute = None
    assert copies.run() == "finished", copies.error
    assert copies.timeline.recipes == 0
    return with_recipes, copies


def comparable(values):
    """Module objects differ between sessions: compare them by type."""
    return [v._type().qualified_name() if isinstance(v, torch._C.ScriptObject) else v for v in values or []]


def assert_same_history(a, b):
    ra, rb = record_values(a), record_values(b)
    assert len(ra) == len(rb)
    for (ida, ina, outa), (idb, inb, outb) in zip(ra, rb):
        assert ida == idb
        assert values_equal(comparable(ina), comparable(inb)), ida
        assert values_equal(comparable(outa), comparable(outb)), ida


@pytest.mark.parametrize("mode", ["trace", "script"])
def test_conv_net_overwrites_are_recipes_and_read_back_exactly(archive, mode):
    args = (torch.randn(2, 3, 16, 16),)
    path = archive(M.randomize_bn(M.ConvNet()), mode, example=args)
    recipes, copies = run_twice(path, args)
    # BatchNorm outputs overwritten by ReLU(inplace=True): no copy made for them
    assert recipes.timeline.recipes >= 3
    assert recipes.timeline.snapshots < copies.timeline.snapshots
    assert recipes.timeline.kept_bytes < copies.timeline.kept_bytes
    raw = [r for r in recipes.timeline if r.node.kind == "aten::batch_norm"]
    assert any(isinstance(r._outputs[0], Overwritten) for r in raw)
    assert_same_history(recipes, copies)
    # stepping back onto a batch_norm shows the value from before relu_
    bn = raw[0]
    assert bool((bn.outputs[0] < 0).any())


def test_views_and_long_chains(archive):
    args = (torch.randn(3, 4),)
    path = archive(ViewsAndChains(), "script")
    recipes, copies = run_twice(path, args)
    assert recipes.timeline.recipes > 0
    assert recipes.timeline.snapshots > 0  # the chain is cut with copies
    depths = [v.depth for r in recipes.timeline for v in (r._inputs or []) + (r._outputs or [])
              if isinstance(v, Overwritten)]
    assert depths and max(depths) <= 16  # (read before the values are: reading runs the recipes)
    assert_same_history(recipes, copies)
    view_rec = next(r for r in recipes.timeline if r.node.kind == "aten::view")
    assert torch.equal(view_rec.outputs[0], (args[0] * 3).view(-1))


def test_lists_are_recorded_as_they_were(archive):
    """The record of an op keeps its list as the op saw it, so a recipe stays right
    after the program changes its own list."""
    args = (torch.randn(2, 3),)
    path = archive(MutatedList(), "script")
    recipes, copies = run_twice(path, args)
    rep = next(r for r in recipes.timeline if r.node.kind == "aten::repeat")
    assert rep._inputs[1] == [2, 1]  # as repeat read it, though the program's list is [3, 1] now
    assert isinstance(rep._outputs[0], Overwritten)
    assert torch.equal(rep.outputs[0], args[0].repeat(2, 1))
    assert_same_history(recipes, copies)


def test_a_big_list_changed_after_its_op_ran_means_a_copy(archive):
    from engine.run.timeline import COPY_LIMIT

    n = COPY_LIMIT + 10
    args = (torch.randn(2), n)
    path = archive(MutatedBigList(), "script")
    recipes, copies = run_twice(path, args)
    made = next(r for r in recipes.timeline if r.node.kind == "aten::tensor")
    assert made._inputs[0] is not None and len(made._inputs[0]) == n
    assert not isinstance(made._outputs[0], Overwritten)  # the list it read has changed since
    assert torch.equal(made.outputs[0], torch.arange(n))
    assert_same_history(recipes, copies)


def test_containers_in_history_are_as_they_were(archive):
    class Appends(nn.Module):
        def forward(self, x):
            acc: List[torch.Tensor] = []
            seen: Dict[str, int] = {}
            for i in range(3):
                acc.append(x * i)
                seen[str(i)] = i
            return torch.stack(acc), seen

    path = archive(Appends(), "script")
    m = Session(path).start(values=(torch.ones(2),))
    m.run()
    made = next(r for r in m.timeline if r.node.kind == "prim::ListConstruct")
    assert made.outputs[0] == []
    appends = [r for r in m.timeline if r.node.kind == "aten::append"]
    assert [len(r.inputs[0]) for r in appends] == [0, 1, 2]
    assert [len(r.outputs[0]) for r in appends] == [1, 2, 3]
    assert torch.equal(appends[1].outputs[0][1], torch.ones(2))
    sets = [r for r in m.timeline if r.node.kind == "aten::_set_item"]
    assert [dict(r.inputs[0]) for r in sets] == [{}, {"0": 0}, {"0": 0, "1": 1}]


def test_budget_zero_still_keeps_summaries(archive):
    args = (torch.randn(2, 3, 16, 16),)
    path = archive(M.randomize_bn(M.ConvNet()), "trace", example=args)
    m = Session(path, budget=0).start(values=args)
    m.run()
    assert m.timeline.kept_bytes == 0
    assert m.timeline.recipes == 0  # nothing kept to make them from


def test_uninitialized_memory_is_copied_not_remade(archive):
    args = (torch.randn(3, 5),)
    path = archive(FilledBuffer(), "script")
    recipes, copies = run_twice(path, args)
    empty = next(r for r in recipes.timeline if r.node.kind == "aten::empty")
    assert not isinstance(empty._outputs[0], Overwritten)
    fill = next(r for r in recipes.timeline if r.node.kind == "aten::fill_")
    # what fill_ overwrote, as it was: bit for bit (uninitialized memory may hold NaNs)
    assert torch.equal(fill.inputs[0].view(torch.int32), empty.outputs[0].view(torch.int32))


def conv_net_run(archive):
    """A traced conv net with BatchNorm outputs overwritten by ReLU(inplace=True), run once."""
    args = (torch.randn(2, 3, 16, 16),)
    path = archive(M.randomize_bn(M.ConvNet()), "trace", example=args)
    session = Session(path)
    machine = session.start(values=args)
    machine.run()
    return session, machine


def bn_recipe(machine):
    """The first BatchNorm record whose output is a recipe, not yet run."""
    return next(r for r in machine.timeline if r.node.kind == "aten::batch_norm" and isinstance(r._outputs[0], Overwritten))


def test_a_recipe_that_fails_reads_as_a_dropped_value(archive):
    _, m = conv_net_run(archive)
    rec = bn_recipe(m)
    recipe = rec._outputs[0]
    recipe.producer._inputs[0] = "not a tensor any more"  # as if the recorded input were lost
    value = rec.outputs[0]
    assert isinstance(value, Dropped)
    assert "could not be made again" in value.reason
    assert value.summary.shape == (2, 8, 16, 16)


def test_a_finished_run_is_freed_without_the_cyclic_collector(archive):
    """Records holding recipes of themselves must not form reference cycles:
    a dropped run's tensors are freed at once, not whenever gc next runs."""
    s, m = conv_net_run(archive)
    assert m.timeline.recipes > 0
    first = weakref.ref(m.timeline.records[0])
    holders = [weakref.ref(r) for r in m.timeline if any(isinstance(v, Overwritten) for v in r._outputs or ())]
    assert holders
    activations = [weakref.ref(t) for r in m.timeline if r.node.kind.startswith("aten::")
                   for t in r._outputs or () if isinstance(t, torch.Tensor)]
    gc.collect()
    gc.disable()
    try:
        s.machine = None
        del m
        assert first() is None
        assert all(h() is None for h in holders)
        assert activations and all(t() is None for t in activations)
    finally:
        gc.enable()


def test_shapes_are_shown_without_running_recipes(archive):
    _, m = conv_net_run(archive)
    rec = bn_recipe(m)
    from engine.run.values import short_text

    assert short_text(rec.peek_outputs()[0]) == "float32[2,8,16,16]"
    assert isinstance(rec._outputs[0], Overwritten)  # still a recipe: nothing was run
    assert short_text(rec.outputs[0]) == "float32[2,8,16,16]"


class ReturnsItsInput(nn.Module):
    def forward(self, x, items: List[torch.Tensor]):
        y = x.contiguous()  # x is contiguous: y is x itself
        z = y * 1
        first = items[0]  # the very tensor inside the list
        w = first * 1
        x.add_(1)  # overwrites the input, its alias y, and (below) the list item
        items[0].mul_(2)
        return z, y, w


def test_an_op_that_returned_its_input_is_not_its_maker(archive):
    """The input was not made by any recorded op: copies, not recipes of themselves."""
    args = (torch.randn(3, 4), [torch.randn(2), torch.randn(2)])
    path = archive(ReturnsItsInput(), "script")
    recipes, copies = run_twice(path, args)
    for r in recipes.timeline:
        for v in (r._inputs or []) + (r._outputs or []):
            assert not isinstance(v, Overwritten), r.node.kind
    assert_same_history(recipes, copies)
    contiguous = next(r for r in recipes.timeline if r.node.kind == "aten::contiguous")
    assert torch.equal(contiguous.outputs[0], args[0])  # as it was before add_
    assert not isinstance(contiguous.outputs[0], Dropped)


class TrainingNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        return torch.relu_(self.bn(self.conv(x)))


def test_a_norm_in_training_mode_is_copied_not_remade(tmp_path):
    """Run again, it would update the module's running statistics a second time."""
    args = (torch.randn(2, 3, 8, 8),)
    path = str(tmp_path / "training_norm.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer warns about training mode; that is the point here
        torch.jit.save(torch.jit.trace(TrainingNorm().train(), args, check_trace=False), path)
    m = Session(path).start(values=args)
    m.run()
    bn = next(r for r in m.timeline if r.node.kind == "aten::batch_norm")
    assert bn._inputs[5] is True
    assert not isinstance(bn._outputs[0], Overwritten)
    stats = m.program.module.getattr("bn").getattr("running_mean")
    before = stats.clone()
    for r in m.timeline:
        _ = r.inputs, r.outputs  # reading the history changes nothing
    assert torch.equal(stats, before)


class InPlaceZoo(nn.Module):
    """Many ways to overwrite memory that earlier steps read or made."""

    def forward(self, x, idx: torch.Tensor):
        a = x * 2
        b = a[1:]  # a view of a slice
        c = a.t()  # a transposed view
        d = torch.cat([a, b], 0)
        a.masked_fill_(a > 1.0, 1.0)  # overwrites a, b and c
        e = d.index_put_((idx,), torch.ones(idx.shape[0], x.shape[1]))  # in place on a cat output
        f = torch.stack([e[0], e[1]])
        parts: List[torch.Tensor] = [f * 1, f + 1]
        parts[0].clamp_(min=0.0)
        g = parts[1].unsqueeze(0)
        parts[1].sub_(parts[0])  # overwrites g's storage
        h = torch.softmax(x, dim=1)
        for i in range(3):
            h.mul_(0.5).add_(float(i))
        maybe: List[Optional[torch.Tensor]] = [None, x * 3]  # a tensor that is not the first item
        kept = maybe[1]
        if kept is not None:
            kept.add_(1)
        return a, b, c, d, e, f, g, h, parts, maybe


def test_many_in_place_patterns_read_back_as_copies_would(archive):
    args = (torch.randn(4, 3), torch.tensor([0, 2]))
    path = archive(InPlaceZoo(), "script")
    recipes, copies = run_twice(path, args)
    assert recipes.timeline.recipes >= 5
    assert_same_history(recipes, copies)
    from engine.session import clone_value
    native = torch.jit.load(path)(*clone_value(args))
    assert values_equal(recipes.outputs, native)


class Nested(nn.Module):
    def forward(self, x):
        inner = [x * 2, x * 3]
        outer: List[List[torch.Tensor]] = [inner]
        table: Dict[str, List[torch.Tensor]] = {"a": [x + 1]}
        inner[0].add_(100)  # overwrites a tensor two levels down in `outer`
        table["a"][0].mul_(0)
        return outer, table


def test_tensors_inside_nested_containers_are_kept_as_they_were(archive):
    args = (torch.ones(3),)
    path = archive(Nested(), "script")
    recipes, copies = run_twice(path, args)
    outer = next(r for r in recipes.timeline if r.node.kind == "prim::ListConstruct"
                 and r.outputs and type(r.outputs[0]) is list and r.outputs[0] and type(r.outputs[0][0]) is list)
    assert torch.equal(outer.outputs[0][0][0], torch.full((3,), 2.0))  # before add_(100)
    table = next(r for r in recipes.timeline if r.node.kind == "prim::DictConstruct")
    assert torch.equal(table.outputs[0]["a"][0], torch.full((3,), 2.0))  # before mul_(0)
    assert_same_history(recipes, copies)
    # the nested tensors are counted in the record budget
    zero = Session(path, budget=0).start(values=args)
    zero.run()
    assert zero.timeline.kept_bytes == 0
    assert any(isinstance(t, Dropped) for r in zero.timeline if r.node.kind == "prim::ListConstruct"
               for v in r.outputs for t in (v if isinstance(v, list) else [v]) for t in (t if isinstance(t, list) else [t]))
