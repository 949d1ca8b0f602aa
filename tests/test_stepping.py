"""Stepping into and over calls, blocks and loops; history; breakpoints."""

import math

import torch

from engine import Session, Stop
from engine.run.values import Dropped, summarize, values_equal
import models as M


def x4():
    return torch.randn(2, 4, generator=torch.Generator().manual_seed(1))


def step_until(machine, pred, limit=10_000):
    for _ in range(limit):
        if pred(machine.current_node):
            return machine.current_node
        assert machine.step() in (Stop.STEP, Stop.FINISHED)
    raise AssertionError("never reached")


def test_first_stop_is_not_a_constant(convnet):
    m = Session(convnet).start()
    assert m.current_node.kind != "prim::Constant"
    # constants before it already ran (their values are in the IR; no records)
    assert len(m.timeline) == 0
    assert all(m.current_frame.env[n.out_idx[0]] is not None or n.attrs.get("value") is None
               for n in m.graph.body.nodes[: 3] if n.kind == "prim::Constant")


def test_step_into_call_and_out(convnet):
    m = Session(convnet).start()
    call = step_until(m, lambda n: n.kind == "prim::CallMethod")
    assert m.step() == Stop.STEP
    frames = m.frames()
    assert len(frames) == 2
    assert frames[-1].module_path in ("stem", "layer1", "fc")
    assert frames[-1].graph.name.endswith(".forward")
    # module paths nest as we step deeper
    step_until(m, lambda n: n.kind == "prim::CallMethod")
    m.step()
    assert m.frames()[-1].module_path == frames[-1].module_path + ".0"
    assert m.step_out() == Stop.STEP
    assert len(m.frames()) == 2
    assert m.step_out() == Stop.STEP
    assert len(m.frames()) == 1
    rec = m.last_record_of(call.id)
    assert rec.outputs is not None and isinstance(rec.outputs[0], torch.Tensor)


def test_step_over_runs_the_whole_call(convnet):
    m = Session(convnet).start()
    call = step_until(m, lambda n: n.kind == "prim::CallMethod")
    depth = len(m.frames())
    assert m.step_over() == Stop.STEP
    assert len(m.frames()) == depth
    assert m.last_record_of(call.id).status == "done"


def test_module_paths_in_both_views(convnet):
    for inline in (False, True):
        m = Session(convnet, inline=inline).start()
        m.run()
        convs = [r for r in m.timeline if r.node.kind == "aten::_convolution"]
        paths = [r.module_path for r in convs]
        assert paths[0] == "stem.0"
        assert "layer1.0.conv1" in paths and "layer1.1.down.0" in paths


def test_if_branch_and_loop_iterations(control):
    m = Session(control).start(values=(x4(), 3, "sum"))
    step_until(m, lambda n: n.kind == "prim::Loop")
    m.step()
    assert m.current_path[-1] == "iter 0"
    assert m.frames()[-1].loops == [0]
    # run the body once: the next iteration is back at its first node
    first = m.current_node
    m.step()
    step_until(m, lambda n: n is first)
    assert m.current_path[-1] == "iter 1"
    assert m.frames()[-1].loops == [1]
    # step over the If: the branch runs whole
    step_until(m, lambda n: n.kind == "prim::If" and n.source and "mode ==" in (n.source.text or ""))
    depth = len(m.stack)
    m.step()
    assert len(m.stack) == depth + 1  # inside the branch
    assert m.stack[-1].kind == "then"


def test_step_into_scripted_function(control):
    m = Session(control).start(values=(x4(), 2, "sum"))
    step_until(m, lambda n: n.kind == "prim::CallFunction")
    m.step()
    assert m.frames()[-1].graph.name == "models.scale_sum"
    m.step_out()
    assert m.frames()[-1].graph.name == "forward"


def test_history_reproduces_recorded_values(control):
    m = Session(control).start(values=(x4(), 3, "sum"))
    m.run()
    first = [(r.node.id, r.outputs) for r in m.timeline]
    # a second, independent run (the model has state: a fresh load) records the same values
    m2 = Session(control).start(values=(x4(), 3, "sum"))
    m2.run()
    second = [(r.node.id, r.outputs) for r in m2.timeline]
    assert [a for a, _ in first] == [b for b, _ in second]
    compared = 0
    for (_, a), (_, b) in zip(first, second):
        if any(isinstance(v, torch.ScriptObject) for v in a or []):
            continue  # module objects of two loads are different objects
        assert values_equal(a, b)
        compared += 1
    assert compared > 20
    # stepping back visits records in reverse, each showing its recorded node
    seen = []
    while True:
        m2.back()
        seen.append(m2.view)
        if m2.view == min(i for i, r in enumerate(m2.timeline) if r.node.kind != "prim::Constant"):
            break
    assert seen == sorted(seen, reverse=True)
    assert m2.current_record.node is m2.timeline[m2.view].node
    # and forward again to the live head
    while m2.view is not None:
        m2.step()
    assert m2.state == "finished"


def test_in_place_inputs_are_snapshots(archive):
    path = archive(M.InPlace(), "script")
    x = torch.ones(3, 4)
    m = Session(path).start(values=(x,))
    m.run()
    recs = {r.node.kind: r for r in m.timeline}
    mul = recs["aten::mul"]
    add_ = recs["aten::add_"]
    # aten::mul's output was later overwritten in place; its record kept the old value
    assert torch.equal(mul.outputs[0], torch.full((3, 4), 2.0))
    assert torch.equal(add_.inputs[0], torch.full((3, 4), 2.0))
    assert torch.equal(add_.outputs[0][1], torch.full((4,), 3.0))
    assert m.timeline.snapshots + m.timeline.recipes >= 2  # copies, or recipes that remake the value


def test_budget_keeps_summaries_and_says_so(convnet):
    m = Session(convnet, budget=0).start()
    m.run()
    assert m.timeline.kept_bytes == 0
    assert m.timeline.dropped > 0
    conv = next(r for r in m.timeline if r.node.kind == "aten::_convolution")
    assert isinstance(conv.outputs[0], Dropped)
    assert conv.outputs[0].summary.shape == (1, 8, 16, 16)
    # the summaries kept in place of the tensors are those of the tensors themselves
    kept = Session(convnet).start()
    kept.run()
    pairs = [(a, b) for ra, rb in zip(m.timeline, kept.timeline) for a, b in zip(ra.outputs, rb.outputs)
             if isinstance(a, Dropped)]
    assert len({id(a) for a, _ in pairs}) == m.timeline.dropped  # a call's record shares its callee's
    for dropped, tensor in pairs:
        assert dropped.summary == summarize(tensor).tensor
        exact = tensor.double()
        assert dropped.summary.min == float(tensor.min()) and dropped.summary.max == float(tensor.max())
        assert math.isclose(dropped.summary.mean, float(exact.mean()), rel_tol=1e-5, abs_tol=1e-7)
        assert math.isclose(dropped.summary.std, float(exact.std()), rel_tol=1e-4, abs_tol=1e-7)


def test_breakpoint_on_node_and_kind(convnet):
    s = Session(convnet, inline=True)
    m = s.start()
    target = [n for n in s.graph.walk() if n.kind == "aten::batch_norm"][1]
    s.breakpoints.toggle_node(target.id)
    assert m.continue_() == Stop.BREAKPOINT
    assert m.current_node is target
    s.breakpoints.toggle_node(target.id)
    s.breakpoints.toggle_kind("aten::linear")
    assert m.continue_() == Stop.BREAKPOINT
    assert m.current_node.kind == "aten::linear"
    assert m.continue_() == Stop.FINISHED


def test_breakpoint_inside_callee_stops_step_over(convnet):
    s = Session(convnet)
    m = s.start()
    step_until(m, lambda n: n.kind == "prim::CallMethod")
    s.breakpoints.toggle_kind("aten::_convolution")
    assert m.step_over() == Stop.BREAKPOINT
    assert m.current_node.kind == "aten::_convolution"
    assert len(m.frames()) > 1


def test_breakpoint_on_nan_and_predicate(archive):
    class Logs(torch.nn.Module):
        def forward(self, x):
            y = x - 1
            z = torch.log(y)
            return z.sum()

    path = archive(Logs(), "script")
    s = Session(path)
    s.breakpoints.nan_inf = True
    m = s.start(values=(torch.tensor([0.5, 2.0]),))
    assert m.continue_() == Stop.BREAKPOINT
    last = m.timeline[-1]
    assert last.node.kind == "aten::log"
    assert math.isnan(last.outputs[0][0].item())
    # Over the record budget the values are summaries: their NaN counts still stop the run.
    s0 = Session(path, budget=0)
    s0.breakpoints.nan_inf = True
    m0 = s0.start(values=(torch.tensor([0.5, 2.0]),))
    assert m0.continue_() == Stop.BREAKPOINT
    assert m0.timeline[-1].node.kind == "aten::log"
    assert isinstance(m0.timeline[-1].outputs[0], Dropped)
    s.breakpoints.nan_inf = False
    s.breakpoints.predicates.append(lambda rec: rec.node.kind == "aten::sum")
    m = s.restart()
    assert m.continue_() == Stop.BREAKPOINT
    assert m.timeline[-1].node.kind == "aten::sum"


def test_conditional_node_breakpoint(control):
    s = Session(control)
    m = s.start(values=(x4(), 4, "sum"))
    body_add = next(n for n in s.graph.walk() if n.kind == "aten::add" and n.source and "self.lin(x) + i" in (n.source.text or ""))
    s.breakpoints.nodes[body_add.id] = lambda mach: mach.frames()[-1].loops == [2]
    assert m.continue_() == Stop.BREAKPOINT
    assert m.frames()[-1].loops == [2]


def test_run_to(convnet):
    s = Session(convnet, inline=True)
    m = s.start()
    target = [n for n in s.graph.walk() if n.kind == "aten::relu_"][-1]
    assert m.run_to(target.id) == Stop.STEP
    assert m.current_node is target


def test_error_stays_on_failing_node(archive):
    path = archive(M.ConvNet(), "script")
    s = Session(path)
    m = s.start(specs=["float32[1,4,16,16]"])
    assert m.continue_() == Stop.ERROR
    assert m.error.node.kind in ("aten::conv2d", "aten::_convolution")
    assert "models.py" in m.error.message
    assert "expected input[1, 4, 16, 16] to have 3 channels" in m.error.message
    assert m.current_node is m.error.node
    assert m.step() == Stop.ERROR
    # restart with good inputs recovers
    m = s.restart(values=(torch.randn(1, 3, 16, 16),))
    assert m.run() == Stop.FINISHED


def test_raise_exception_is_a_model_error(archive):
    class Checks(torch.nn.Module):
        def forward(self, x):
            if x.dim() != 2:
                raise ValueError("expected a matrix")
            return x

    path = archive(Checks(), "script")
    m = Session(path).start(values=(torch.ones(3),))
    assert m.run() == Stop.ERROR
    assert "ValueError: expected a matrix" in m.error.message


def test_cancel_stops_a_running_continue(control):
    s = Session(control)
    m = s.start(values=(x4(), 50, "sum"))
    calls = {"n": 0}

    def cancel_later(rec):
        calls["n"] += 1
        if calls["n"] == 20:
            m.cancel()
        return False

    s.breakpoints.predicates.append(cancel_later)
    assert m.continue_() == Stop.CANCELLED
    assert not m.finished
