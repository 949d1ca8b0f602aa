"""The interpreter's whole-run loop in C (``engine/run/_stepper.c``), where it was built.

With summaries only, most of a conv net's overhead is the Python run for
each step: dispatch, the step record, the accounting of each value.
``engine.run._stepper`` does that for the common nodes (constants, list and
tuple construction, a module's GetAttr, leaf ops, method calls and the
return from them or from an If branch) and for ``Timeline.add``, and hands
every other node to the machine's own handlers.  ``Machine.run`` and
``Timeline.add``/``set_outputs`` take it while ``ACTIVE``.  The Python code
in engine/run/machine.py and engine/run/timeline.py is the reference it follows and
what runs without it: the C part is optional (setup.py builds it when a C
compiler is there), ``TSDEBUG_PURE_PYTHON=1`` turns it off, and the tests
run models both ways and compare the timelines.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import torch

from engine import ir
from engine.run import leaf, timeline

try:
    from engine.run import _stepper
except ImportError:  # built without a C compiler
    _stepper = None

#: Whether the C loop is there to use: built, and it accepted the classes it was handed.
BUILT = _stepper is not None
#: Whether ``Machine.run`` and the timeline use the C loop now.
ACTIVE = False
#: Why a built C loop refused the classes it was handed (then tsdebug runs the Python loop).
PROBLEM: str | None = None


def configure(handlers: dict[str, Callable], run_leaf: Callable, run_getattr: Callable,
              module_members: frozenset, frame: type, activation: type) -> None:
    """Hand the C loop the machine's handlers and tables (engine.run.machine calls this once)."""
    global BUILT, PROBLEM
    if _stepper is None:
        return
    if getattr(_stepper, "RECORD_CHUNK", None) != timeline.RECORD_CHUNK:  # a build from before records were counted
        BUILT = False
        PROBLEM = "engine.run._stepper counts records by another chunk than engine.run.timeline; rebuild it"
        return
    try:
        # the classes whose slots the C side reads at their offsets
        classes = {"Frame": frame, "Activation": activation, "Node": ir.Node, "Block": ir.Block, "Value": ir.Value,
                   "LeafOp": leaf.LeafOp, "StepRecord": timeline.StepRecord}
        _stepper.configure(timeline.StepRecord, torch.Tensor, torch._C.ScriptModule, timeline._NOT_TENSORS,
                           module_members, handlers, run_leaf, run_getattr, timeline.COPY_LIMIT, classes)
    except Exception as exc:  # e.g. a StepRecord with fields this build does not know: the Python loop
        BUILT = False
        PROBLEM = f"{type(exc).__name__}: {exc}"
        return
    use(os.environ.get("TSDEBUG_PURE_PYTHON", "") in ("", "0"))


def use(on: bool) -> bool:
    """Run with the C loop (where built) or with the Python code; returns the previous setting."""
    global ACTIVE
    previous = ACTIVE
    ACTIVE = bool(on) and BUILT
    timeline._FAST = _stepper if ACTIVE else None
    return previous


def run(machine: Any) -> bool:
    """``Machine.run``'s loop; True when it stopped because the machine was cancelled."""
    return _stepper.run(machine)
