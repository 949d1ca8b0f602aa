"""The C loop (engine.run._stepper) records what the Python interpreter records, and runs exactly.

Every other test runs whichever loop is active (the C one where it was
built); these run both on the same archives and compare the timelines
record by record: nodes, frame paths, module paths, depths, statuses, the
recorded values (tensors, summaries of dropped ones, lists, objects) and the
timeline's memory accounting.
"""

import os
import subprocess
import sys

import pytest
import torch

from engine import Session
from engine.run import stepper
from engine.run.machine import Stop
from engine.run.values import Dropped, values_equal
import models as M
from test_run_exact import CASES, native, seq

needs_c = pytest.mark.skipif(not stepper.BUILT, reason="engine.run._stepper was not built (no C compiler)")


@pytest.fixture
def loop_choice():
    """Switch between the loops inside a test; the suite's setting comes back after it."""
    before = stepper.ACTIVE
    yield stepper.use
    stepper.use(before)


def same_value(a, b) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and values_equal(a, b)
    if isinstance(a, Dropped) or isinstance(b, Dropped):
        return type(a) is type(b) and a.reason == b.reason and repr(a.summary) == repr(b.summary)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return type(b) is dict and list(a) == list(b) and all(same_value(a[k], b[k]) for k in a)
    if isinstance(a, torch.futures.Future):  # a fork's result
        return isinstance(b, torch.futures.Future) and same_value(a.value(), b.value())
    if isinstance(a, (torch._C.ScriptObject, torch._C.ScriptModule)):  # each run loaded its own archive
        return type(a) is type(b) and a._type().qualified_name() == b._type().qualified_name()
    return a is b or a == b or repr(a) == repr(b)


class Recurrence(torch.nn.Module):
    def forward(self, x: torch.Tensor, n: int) -> torch.Tensor:
        for _ in range(n):
            x = torch.tanh(x * 0.9 + 0.1)
        return x


def recorded(path, args, use_c, loop_choice, **session_args):
    """The second run of a session: by then the program has resolved and cached its callees,
    so the C loop runs the calls itself (a first run hands each new call to Python)."""
    loop_choice(use_c)
    s = Session(path, **session_args)
    first = s.start(values=args)
    first_stop = first.run()
    m = s.restart()
    stop = m.run()
    assert stop == first_stop and len(m.timeline) == len(first.timeline)
    return stop, m


def assert_same_timelines(a, b) -> None:
    ta, tb = a.timeline, b.timeline
    assert len(ta) == len(tb)
    for ra, rb in zip(ta, tb):
        where = f"record {ra.index} ({ra.node.id} {ra.node.kind})"
        assert (ra.index, ra.node.id, ra.path, ra.module_path, ra.depth, ra.frame, ra.status, ra.error) == \
            (rb.index, rb.node.id, rb.path, rb.module_path, rb.depth, rb.frame, rb.status, rb.error), where
        assert ra.lazy == rb.lazy, where
        assert same_value(ra.inputs, rb.inputs), where
        assert same_value(ra.outputs, rb.outputs), where
    assert (ta.kept_bytes, ta.dropped, ta.snapshots, ta.recipes) == (tb.kept_bytes, tb.dropped, tb.snapshots,
                                                                      tb.recipes)


@needs_c
@pytest.mark.parametrize("budget", [None, 0], ids=["kept", "summaries-only"])
@pytest.mark.parametrize("inline", [False, True], ids=["call-tree", "inlined"])
@pytest.mark.parametrize("name,mode", [(n, mode) for n, (_, _, modes) in CASES.items() for mode in modes])
def test_c_loop_records_what_python_records(archive, loop_choice, name, mode, inline, budget):
    make, args, _ = CASES[name]
    torch.manual_seed(0)
    path = archive(make(), mode, example=args)
    extra = {} if budget is None else {"budget": budget}
    stop_c, with_c = recorded(path, args, True, loop_choice, inline=inline, **extra)
    stop_py, with_py = recorded(path, args, False, loop_choice, inline=inline, **extra)
    assert stop_c == stop_py == Stop.FINISHED
    assert values_equal(with_c.outputs, native(path, args))
    assert values_equal(with_py.outputs, with_c.outputs)
    assert_same_timelines(with_c, with_py)


@needs_c
@pytest.mark.parametrize("n,mode_arg", [(3, "sum"), (1, "other")])
def test_c_loop_on_scripted_control_flow_and_state(archive, loop_choice, n, mode_arg):
    """Loops, branches, lists and dicts with aliasing, SetAttr, a helper function: the same records."""
    path = archive(M.ControlFlow(), "script")
    args = (seq(2, 4), n, mode_arg)
    expected = native(path, args)
    _, with_c = recorded(path, args, True, loop_choice)
    _, with_py = recorded(path, args, False, loop_choice)
    assert values_equal(with_c.outputs, expected)
    assert with_c.outputs[2]["inner"] == 2  # b = a[0]; b.append(x) changed a
    assert_same_timelines(with_c, with_py)


@needs_c
@pytest.mark.parametrize("inline", [False, True], ids=["call-tree", "inlined"])
def test_c_loop_hands_forks_with_blocks_and_loops_to_python(archive, loop_choice, inline):
    """What the C loop leaves to the machine's handlers (fork, wait, with, loop iterations) comes out the same."""
    from diff_models import ForksAndNoGrad
    torch.manual_seed(0)
    path = archive(ForksAndNoGrad().eval(), "script")
    args = (seq(2, 4),)
    _, with_c = recorded(path, args, True, loop_choice, inline=inline)
    _, with_py = recorded(path, args, False, loop_choice, inline=inline)
    assert values_equal(with_c.outputs, native(path, args))
    assert {"prim::fork", "prim::Enter", "prim::Exit"} <= {r.node.kind for r in with_c.timeline}
    assert_same_timelines(with_c, with_py)
    loops = archive(Recurrence(), "script")
    _, with_c = recorded(loops, (seq(3), 40), True, loop_choice, inline=inline, budget=0)
    _, with_py = recorded(loops, (seq(3), 40), False, loop_choice, inline=inline, budget=0)
    assert_same_timelines(with_c, with_py)


class BadShapes(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(torch.relu(x) * 2)


@needs_c
@pytest.mark.parametrize("inline", [False, True], ids=["call-tree", "inlined"])
def test_c_loop_reports_a_models_failure_as_python_does(archive, loop_choice, inline):
    path = archive(BadShapes(), "script")
    args = (torch.randn(2, 5),)  # Linear wants 8 features
    stop_c, with_c = recorded(path, args, True, loop_choice, inline=inline)
    stop_py, with_py = recorded(path, args, False, loop_choice, inline=inline)
    assert stop_c == stop_py == Stop.ERROR
    assert with_c.error.message == with_py.error.message
    assert "mat1 and mat2 shapes cannot be multiplied" in with_c.error.message
    assert with_c.timeline[-1].status == "error"
    assert_same_timelines(with_c, with_py)


@needs_c
def test_c_loop_stops_when_cancelled(archive, loop_choice):
    """The UI cancels a long run from its own thread; the C loop checks the flag every step."""
    loop_choice(True)
    path = archive(M.ControlFlow(), "script")
    args = (seq(2, 4), 200, "sum")
    s = Session(path)
    s.start(values=args).run()  # makes the leaf ops' runners, settled after their first call
    m = s.restart()
    calls = {"n": 0}

    def cancelling(run):
        # a runner that cancels the run on the 30th op, as the UI's thread would
        def counting(args):
            calls["n"] += 1
            if calls["n"] == 30:
                m.cancel()
            return run(args)
        return counting

    for op in s.program.leaf_ops.values():
        op.run = cancelling(op.run)
    assert m.run() == Stop.CANCELLED
    assert not m.finished and calls["n"] == 30
    # and it goes on from there to the end an uncancelled run reaches
    assert m.run() == Stop.FINISHED
    assert values_equal(m.outputs, native(path, args))


@needs_c
def test_c_loop_runs_calls_once_their_callees_are_known(archive, loop_choice, monkeypatch):
    """The first run hands each new call to Python (which resolves the callee); later runs make the calls in C."""
    import engine.run.machine as machine_module
    python_calls = {"n": 0}
    handler = machine_module._HANDLERS["prim::CallMethod"]

    def counting(machine, act, node):
        python_calls["n"] += 1
        return handler(machine, act, node)

    monkeypatch.setitem(machine_module._HANDLERS, "prim::CallMethod", counting)
    make, args, _ = CASES["convnet"]
    path = archive(make(), "trace", example=args)
    loop_choice(True)
    s = Session(path)
    s.start(values=args).run()
    first = python_calls["n"]
    python_calls["n"] = 0
    m = s.restart()
    assert m.run() == Stop.FINISHED
    assert first > 5 and python_calls["n"] == 0
    assert values_equal(m.outputs, native(path, args))


@pytest.mark.parametrize("inline", [False, True], ids=["call-tree", "inlined"])
def test_continue_without_breakpoints_records_what_stepping_records(archive, inline):
    """With nothing to stop at, continue takes the whole-run loop: after a few steps, the same
    records as the step-by-step loop that breakpoints need (a predicate that never stops)."""
    path = archive(M.ControlFlow(), "script")
    args = (seq(2, 4), 4, "sum")
    machines = []
    for predicate in (None, lambda record: False):
        s = Session(path, inline=inline)
        if predicate is not None:
            s.breakpoints.predicates.append(predicate)
        m = s.start(values=args)
        for _ in range(7):
            m.step()
        assert m.continue_() == Stop.FINISHED
        machines.append(m)
    assert values_equal(machines[0].outputs, native(path, args))
    assert_same_timelines(*machines)


@needs_c
def test_c_loop_reads_the_interpreters_fields_directly():
    """configure() found every field it reads as a plain slot (else it reads by name, slowly but alike)."""
    found = stepper._stepper.slots()
    assert found and all(found.values()), [name for name, direct in found.items() if not direct]


def test_pure_python_switch(tmp_path):
    """TSDEBUG_PURE_PYTHON=1 runs the Python interpreter alone; a built C loop accepted the interpreter's classes."""
    assert stepper.BUILT == (stepper._stepper is not None), stepper.PROBLEM
    code = "import engine.run.machine, engine.run.stepper as s; print(s.ACTIVE)"
    env = dict(os.environ, TSDEBUG_PURE_PYTHON="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    env.pop("TSDEBUG_PURE_PYTHON")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(stepper.BUILT)


def test_dropped_cache_does_not_grow_with_the_run(archive):
    """Entries of dead tensors give way as their addresses are reused: not one kept per drop."""
    path = archive(Recurrence(), "script")
    sizes = []
    for n in (50, 2000):
        m = Session(path, budget=0).start(values=(torch.randn(3), n))
        assert m.run() == Stop.FINISHED
        assert m.timeline.dropped >= 3 * n
        sizes.append(len(m.timeline._dropped_cache))
    assert sizes[0] <= 160 and sizes[1] <= 1025  # 6000 drops in the long run


@needs_c
@pytest.mark.parametrize("budget", [0, 256 << 10, 2 << 20], ids=["0", "256KiB", "2MiB"])
def test_c_loop_thins_and_forgets_what_python_does(archive, loop_choice, budget):
    """Past the record budget both loops let go of the same steps: the same records thinned and
    forgotten, the same estimate of what is held, the same values where kept."""
    path = archive(Recurrence(), "script")
    args = (torch.randn(8), 4000)
    _, with_c = recorded(path, args, True, loop_choice, budget=budget)
    _, with_py = recorded(path, args, False, loop_choice, budget=budget)
    ta, tb = with_c.timeline, with_py.timeline
    assert ta.forgotten > 0
    assert (ta.first, ta.thinned, ta.record_bytes, ta.nbytes) == (tb.first, tb.thinned, tb.record_bytes, tb.nbytes)
    assert_same_timelines(with_c, with_py)
    assert values_equal(with_c.outputs, native(path, args))
