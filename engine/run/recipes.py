"""Recipes: how to make again a recorded value that an in-place op overwrote.

Before an in-place op writes a tensor, the timeline gives every earlier
record that holds its memory the value as it was.  Where the op that made the
value is deterministic and its recorded inputs are intact (or recipes
themselves), that value is an ``Overwritten`` recipe, run when the record is
first read, instead of a copy made while the model runs.  ``Recompute``
decides where a recipe is sound and runs it.
"""

from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from engine.run.values import Dropped, summarize_tensor

if TYPE_CHECKING:
    from engine.run.timeline import StepRecord

_SEQUENCES = (list, tuple)


class Overwritten:
    """A recorded tensor that a later in-place op overwrote, kept as how to make it again.

    ``producer`` is the record of the op that made it and ``slot`` the output;
    the producer's recorded inputs are intact (or recipes themselves), so
    running its op again gives the same bits.  Made by
    ``Timeline.before_write``; run once, on first read.
    """

    __slots__ = ("_producer", "slot", "recompute", "depth", "meta", "_value")

    def __init__(self, producer: StepRecord, slot: int, recompute: "Recompute", depth: int, original: torch.Tensor):
        # Weakly: the producer's own outputs hold this recipe, and a cycle
        # would keep a finished run's tensors until the cyclic collector ran.
        self._producer = weakref.ref(producer)
        self.slot = slot
        self.recompute = recompute
        self.depth = depth
        self.meta = summarize_tensor(original, stats=False)  # to check the remade value by, and say what it was
        self._value: Any = None

    @property
    def producer(self) -> StepRecord | None:
        """The record of the op that made the value (None once its timeline is gone)."""
        return self._producer()

    def value(self) -> Any:
        if self._value is None:
            try:
                producer = self.producer
                if producer is None:
                    raise ValueError("its run was discarded")
                made = self.recompute(producer, self.slot)
                if not isinstance(made, torch.Tensor) or tuple(made.shape) != self.meta.shape \
                        or summarize_tensor(made, stats=False).dtype != self.meta.dtype:
                    raise ValueError("it came out with another shape or dtype")
            except Exception as exc:  # shown as a dropped value, never as a traceback
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                made = Dropped(self.meta, reason=f"overwritten in place; could not be made again ({reason})")
            self._value = made
        return self._value


def holds(values: list, x: Any) -> bool:
    """``x`` itself is among ``values`` (or in a list or tuple among them)."""
    for v in values:
        if v is x or (type(v) in _SEQUENCES and any(item is x for item in v)):
            return True
    return False


def map_leaves(value: Any, fn) -> Any:
    """``value`` with ``fn`` applied to everything that is not a list, tuple or
    dict, at any depth; containers are rebuilt only where something changed."""
    tp = type(value)
    if tp is list or tp is tuple:
        items = [map_leaves(v, fn) for v in value]
        if all(a is b for a, b in zip(items, value)):
            return value
        return items if tp is list else tuple(items)
    if tp is dict:
        new = {k: map_leaves(v, fn) for k, v in value.items()}
        if all(new[k] is v for k, v in value.items()):
            return value
        return new
    return fn(value)


def _run(x: Any) -> Any:
    return x.value() if type(x) is Overwritten else x


def _meta(x: Any) -> Any:
    return x.meta if type(x) is Overwritten else x


def resolved(value: Any) -> Any:
    """``value`` with its recipes run (inside containers too)."""
    return map_leaves(value, _run)


def described(value: Any) -> Any:
    """``value`` with its recipes shown by shape and dtype, without running them."""
    return map_leaves(value, _meta)


#: Values an op can be run again on: immutable, or guarded (tensors by the
#: in-place protocol, lists by the mutation log).
_SCALARS = (int, float, bool, str, type(None), torch.device, torch.dtype, torch.layout, torch.memory_format)


#: Ops whose output is whatever was in memory: made again it would differ, and compared
#: (``diff``) its bits mean nothing.  Their names in torch's Python and after ``aten::``.
UNINITIALIZED = frozenset({"empty", "empty_like", "new_empty", "empty_strided", "new_empty_strided",
                           "empty_permuted"})
_UNINITIALIZED = frozenset(f"aten::{name}" for name in UNINITIALIZED)


class Recompute:
    """Runs a recorded leaf op again on its recorded inputs (for ``Overwritten``).

    Holds the program, not the machine, so that a timeline does not keep its
    machine alive.
    """

    #: a recipe chain longer than this is cut with a copy
    MAX_DEPTH = 16

    def __init__(self, program: Any, grad: bool = False):
        self.program = program
        self.grad = grad

    def can_remake(self, record: StepRecord, mutated: dict[int, int]) -> int | None:
        """The recipe depth if ``record``'s outputs can be made again, else None."""
        node = record.node
        if record.status != "done" or not node.kind.startswith("aten::") or node.schema is None \
                or node.kind in _UNINITIALIZED:
            return None
        op = self.program.leaf(node)
        if not op.deterministic or op.mutates:
            return None
        if op.writes_now(record._inputs) != op.writes:
            return None  # in training mode it updates running statistics: run again, it would again
        depth = 0
        for value in record._inputs:
            kind = type(value)
            if kind is Overwritten:
                depth = max(depth, value.depth)
            elif isinstance(value, torch.Tensor):
                if value.device.type != "cpu":
                    return None  # CUDA kernels may be nondeterministic
            elif kind in _SEQUENCES:
                if kind is list and mutated.get(id(value), -1) >= record.index:
                    return None  # changed since the op read it
                for x in value:
                    if not (isinstance(x, _SCALARS) or isinstance(x, torch.Tensor) or type(x) is Overwritten):
                        return None
            elif not isinstance(value, _SCALARS):
                return None
        depth += 1
        return depth if depth <= self.MAX_DEPTH else None

    def __call__(self, record: StepRecord, slot: int) -> Any:
        op = self.program.leaf(record.node)
        args = [resolved(a) for a in record._inputs]
        for i in op.writes:
            if isinstance(args[i], torch.Tensor):
                args[i] = args[i].clone()  # the recipe's input is shared: write into a copy
        with torch.set_grad_enabled(self.grad), torch.jit.optimized_execution(False), \
                autocast_regions(getattr(record, "autocast", ())):
            return op.run(args)[slot]


@dataclass(frozen=True)
class AutocastRegion:
    """An open ``with torch.autocast(...)`` block of the program: its ops run under eager autocast."""

    device: str
    dtype: torch.dtype
    enabled: bool

    @staticmethod
    def of(obj: Any) -> "AutocastRegion | None":
        """The region a ``prim::Enter`` opens, if ``obj`` is TorchScript's autocast object."""
        qualname = getattr(obj, "qualname", "")
        attrs = getattr(obj, "attrs", None)
        if not qualname.endswith("autocast_mode.autocast") or not isinstance(attrs, dict):
            return None
        dtype = _SCALAR_TYPES.get(attrs.get("fast_dtype"))
        device = attrs.get("device")
        if dtype is None or not isinstance(device, str):
            return None
        return AutocastRegion(device, dtype, bool(attrs.get("_enabled", True)))


@contextlib.contextmanager
def autocast_regions(regions: tuple):
    """Eager autocast as the program's open autocast blocks say, outermost first."""
    with contextlib.ExitStack() as stack:
        for r in regions:
            stack.enter_context(torch.autocast(device_type=r.device, dtype=r.dtype, enabled=r.enabled))
        yield


#: TorchScript holds dtypes as c10::ScalarType numbers
_SCALAR_TYPES = {0: torch.uint8, 1: torch.int8, 2: torch.int16, 3: torch.int32, 4: torch.int64, 5: torch.float16,
                 6: torch.float32, 7: torch.float64, 9: torch.complex64, 10: torch.complex128, 11: torch.bool,
                 15: torch.bfloat16}
