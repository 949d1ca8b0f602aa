"""Align an eager run to the engine's run and find the first divergence.

Ops are aligned per module path (both runs know the module each op ran in),
in order, by a canonical op name, so that ``aten::_convolution`` meets
``conv2d`` and ``aten::add_`` meets ``__iadd__``; ops that exist on one side
only (a branch tracing froze, dropout in eval, shape plumbing) stay
unaligned instead of shifting everything after them.

The first divergence is the root cause, not the cascade: the earliest
aligned node, in execution order, whose output is not close while every
aligned node before it was.  Where the runs part without one (or before it),
``engine.check.parting`` says where; ``engine.check.outputs`` compares values,
``engine.check.places`` names the user's statements.
"""


from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from difflib import SequenceMatcher
from typing import Any

import torch

from engine.check.eager import EagerOp, EagerRun
from engine.check.outputs import (  # noqa: F401  (compare_outputs, flat_tensors: part of diff's API)
    Metrics, OutputDifference, compare, compare_outputs, flat_tensors, output_differences,
)
from engine.check.places import _located, _where, chain_of_record, lines_agree
from engine.ir import parent_module_path
from engine.run.recipes import UNINITIALIZED, described
from engine.run.timeline import StepRecord
from engine.run.values import Dropped, TensorSummary, summarize_tensor

#: Graph ops that move shapes and Python values around rather than compute.
PLUMBING = frozenset({
    "aten::size", "aten::Int", "aten::Float", "aten::ScalarImplicit", "aten::dim", "aten::len", "aten::format",
    "aten::__getitem__", "aten::append", "aten::list", "aten::warn", "aten::detach", "aten::contiguous",
    "aten::numel", "aten::Bool", "aten::eq", "aten::ne", "aten::__is__", "aten::__isnot__", "aten::__not__",
    "aten::wait",  # hands over what a fork computed: the eager run has no such op
    # an exported program's shape reads and the checks torch.export inserted
    "aten::sym_size", "aten::sym_numel", "aten::sym_stride", "aten::_assert_scalar", "aten::_assert_tensor_metadata",
    "aten::sym_constrain_range_for_size", "aten::sym_constrain_range", "aten::_assert_async",
})


_SYNONYMS = {
    "convolution": "conv", "conv1d": "conv", "conv2d": "conv", "conv3d": "conv", "conv_transpose2d": "conv",
    "addmm": "linear", "linear": "linear",
    "native_batch_norm": "batch_norm", "batch_norm": "batch_norm",
    # the same ops after torch.export's decompositions
    "native_batch_norm_legit_no_training": "batch_norm", "native_batch_norm_legit": "batch_norm",
    "native_batch_norm_legit_functional": "batch_norm", "native_layer_norm": "layer_norm",
    "softmax": "softmax", "safe_softmax": "softmax", "log_softmax": "log_softmax",
    "view": "reshape", "reshape": "reshape", "flatten": "reshape", "unsafe_view": "reshape", "reshape_alias": "reshape",
    "max_pool2d_with_indices": "max_pool2d",
    "t": "transpose", "permute": "transpose", "transpose": "transpose",
    "select": "index", "slice": "index", "getitem": "index", "index": "index",
    "iadd": "add", "radd": "add", "isub": "sub", "rsub": "sub", "imul": "mul", "rmul": "mul", "rpow": "pow",
    "ipow": "pow", "floordiv": "floor_divide", "rfloordiv": "floor_divide", "ifloordiv": "floor_divide",
    "truediv": "div", "itruediv": "div", "rtruediv": "div", "div": "div",
    "matmul": "matmul", "mm": "matmul", "bmm": "matmul",
    "lt": "lt", "gt": "gt",
}


def canon(name: str) -> str:
    """A name both sides share: ``aten::add_.Tensor`` and ``__iadd__`` -> ``add``."""
    name = name.split("::", 1)[-1].split(".", 1)[0]
    m = re.fullmatch(r"__(\w+?)__", name)
    if m:
        name = m.group(1)
    name = name.strip("_")
    if name.endswith("_") and name[:-1]:
        name = name[:-1]
    return _SYNONYMS.get(name, name)


@dataclass
class NodeDiff:
    record: StepRecord
    eager: EagerOp
    metrics: Metrics

    def to_json(self) -> dict:
        node = self.record.node
        return {
            "node": node.id,
            "kind": node.kind,
            "step": self.record.index,
            "module_path": self.record.module_path,
            "source": str(node.source) if node.source and node.source.file else None,
            "eager_op": self.eager.name,
            "eager_source": self.eager.where,
            **self.metrics.to_json(),
        }


@dataclass
class DiffReport:
    comparable: int = 0
    aligned: list[NodeDiff] = field(default_factory=list)
    pairs: list[tuple[StepRecord, EagerOp]] = field(default_factory=list)  # every aligned pair, compared or not
    grouped_records: set[int] = field(default_factory=set)  # graph nodes inside a composite the eager run made as one call
    grouped_eager: set[int] = field(default_factory=set)  # eager calls inside one fused graph op
    first: NodeDiff | None = None
    outputs_close: bool | None = None
    outputs_metrics: Metrics | None = None
    output_differences: list[OutputDifference] = field(default_factory=list)
    parting: Any = None  # engine.check.parting.Parting: where the runs part, when they do
    archive_error: Any = None  # engine.errors.ModelError: the archive raised on this input
    error_record: StepRecord | None = None  # its failing node's record
    eager_error: Any = None  # engine.check.eager.RunFailure: the reference raised on this input

    @property
    def grouped(self) -> int:
        return len(self.grouped_records)

    @property
    def unaligned_eager_before_first(self) -> list[EagerOp]:
        return self.parting.eager_only if self.first is not None and self.parting is not None else []

    @property
    def unaligned_graph_before_first(self) -> list[StepRecord]:
        return self.parting.graph_only if self.first is not None and self.parting is not None else []

    def marked_records(self) -> list[int]:
        """The steps a view marks as where the runs disagree: the divergent aligned nodes;
        without one, where the runs part (the node where shapes part, or the first the
        archive ran alone) and the archive's failing node."""
        marked = [d.record.index for d in self.divergent]
        if not marked and self.parting is not None:
            p = self.parting
            if p.shapes_part is not None:
                marked.append(p.shapes_part[0].index)
            elif p.graph_only:
                marked.append(p.graph_only[0].index)
            elif p.last_agreed is not None and self.error_record is None:
                marked.append(p.last_agreed.record.index)  # the other run went on alone after it
        if self.error_record is not None:
            marked.append(self.error_record.index)
        if not marked and not self.outputs_close:
            marked += [d.record.index for d in self.output_differences if d.record is not None][:1]
        return sorted(set(marked))

    @property
    def coverage(self) -> float:
        """Comparable graph nodes aligned to an eager op, or inside an aligned composite."""
        return min(1.0, (len(self.aligned) + self.grouped) / self.comparable) if self.comparable else 1.0

    @property
    def divergent(self) -> list[NodeDiff]:
        return [d for d in self.aligned if not d.metrics.close]

    def worst(self, n: int = 5) -> list[NodeDiff]:
        bad = self.divergent
        return sorted(bad, key=lambda d: -(d.metrics.max_rel if math.isfinite(d.metrics.max_rel) else 1e300))[:n]

    def by_node(self) -> dict[str, NodeDiff]:
        """The latest comparison per node id (for the UI's marks)."""
        return {d.record.node.id: d for d in self.aligned}


def compare_runs(records: list[StepRecord], outputs: Any, error: Any, eager: EagerRun,
                 rtol: float, atol: float) -> DiffReport:
    """Everything ``tsdebug diff`` says about two runs: the alignment, the first divergence, the
    outputs compared, and where the runs part when they do.

    ``records``/``outputs``/``error``: the engine's run (``error``: a ``ModelError`` when the
    archive raised); ``eager``: the reference run (with ``error`` set when it raised).
    """
    from engine.check.parting import Producers, find_parting  # parting reads this module's alignment

    report = align(records, eager, rtol, atol)
    report.archive_error, report.eager_error = error, eager.error
    if error is not None:
        report.error_record = next((r for r in reversed(records) if r.status == "error"), None)
    if error is None and eager.error is None:
        report.output_differences, report.outputs_metrics = output_differences(outputs, eager.outputs, rtol, atol)
        report.outputs_close = not report.output_differences
    else:
        report.outputs_close = False
    if report.first is None and report.outputs_close:
        return report
    producers = Producers(records)
    for d in report.output_differences:
        d.record = producers.of(d.ours)
    if report.first is not None:
        seeds = [report.first.record]
    elif report.error_record is not None:
        seeds = [report.error_record]
    else:
        seeds = [d.record for d in report.output_differences if d.record is not None]
    report.parting = find_parting(report, records, comparable_records(records), eager, seeds,
                                  report.error_record if report.first is None else None, producers)
    return report


def _first_tensor(values: list | None):
    if not values:
        return None
    for v in values:
        if isinstance(v, torch.Tensor):
            return v
        if isinstance(v, (list, tuple)) and v and isinstance(v[0], torch.Tensor):
            return v[0]
    return None


def _shape(t: Any) -> tuple | None:
    if isinstance(t, torch.Tensor):
        return tuple(t.shape)
    if isinstance(t, Dropped):
        return t.summary.shape
    return None


def _same_shape(rec: StepRecord, op: EagerOp) -> bool:
    a = _first_tensor(rec.outputs)
    return isinstance(a, torch.Tensor) and bool(op.outputs) and tuple(a.shape) == tuple(op.outputs[0].shape)


#: Views and copies that hand back their input whole when the output has its shape and dtype
#: (``x[:, :, :]``, a trace's ``slice(x, 0, 0, 9223372036854775807)``): the eager side has nothing for them.
_VIEWS = frozenset({"aten::slice", "aten::view", "aten::reshape", "aten::expand", "aten::to", "aten::clone",
                    "aten::alias", "aten::expand_as", "aten::view_as", "aten::reshape_as", "aten::type_as",
                    "aten::flatten"})


def comparable_records(records: list[StepRecord]) -> list[StepRecord]:
    out = []
    for r in records:
        kind = r.node.kind.split(".", 1)[0]  # an exported program's kinds name their overload: aten::add.Tensor
        if kind.startswith(("prim::", "higher_order::", "operator::", "builtins::", "math::", "torch::")) \
                or kind in PLUMBING or r.status != "done" or canon(kind) in UNINITIALIZED:
            continue
        t = _first_tensor(r.outputs)
        if t is None:
            continue
        if kind in _VIEWS and _whole(r._inputs[0] if r._inputs else None, t):
            continue
        out.append(r)
    return out


def _whole(source: Any, out: Any) -> bool:
    """``out`` is ``source`` again: the same shape and dtype (tensors, dropped or remade ones)."""
    a = _shape_and_dtype(source)
    return a is not None and a == _shape_and_dtype(out)


def _shape_and_dtype(x: Any) -> tuple | None:
    x = described(x)  # a recipe: its TensorSummary
    if isinstance(x, Dropped):
        x = x.summary
    elif isinstance(x, torch.Tensor):
        x = summarize_tensor(x, stats=False)
    return (x.shape, x.dtype) if isinstance(x, TensorSummary) else None


def align(records: list[StepRecord], eager: EagerRun, rtol: float, atol: float) -> DiffReport:
    report = DiffReport()
    graph_ops = comparable_records(records)
    report.comparable = len(graph_ops)
    if graph_ops and eager.ops and not any(op.module_path for op in eager.ops):
        # the reference knows no modules (a program torch's converter made from an inlined
        # graph): one path for both, aligned by name, shape, line and order alone
        eager = _flattened(eager)
    # A graph op of a module whose forward the eager run never entered (a method other than
    # forward, called from outside: RAFT's ``self.corr_block.index_pyramid(...)``) ran,
    # eagerly, inside the forward that called it: it joins the closest module path whose
    # forward the eager run entered, as the eager op does.
    entered = set(eager.module_outputs) | {""} if eager.by_forward else None
    by_path_g: dict[str, list[StepRecord]] = {}
    for r in graph_ops:
        p = r.module_path
        while entered is not None and p not in entered:
            p = parent_module_path(p)
        by_path_g.setdefault(p, []).append(r)
    # Each eager op joins the closest module path the graph has ops in: a fused
    # graph op (a whole encoder layer) meets the ops of the layer's submodules.
    by_path_e: dict[str, list[EagerOp]] = {}
    for op in eager.ops:
        p = op.module_path
        while p not in by_path_g and p:
            p = parent_module_path(p)
        by_path_e.setdefault(p, []).append(op)
    pairs: list[tuple[StepRecord, EagerOp]] = []
    for path, g_ops in by_path_g.items():
        e_ops = by_path_e.get(path, [])
        if e_ops:
            _align_path(g_ops, e_ops, pairs, report)
    pairs.sort(key=lambda p: p[0].index)
    for rec, op in pairs:
        a = _first_tensor(rec.outputs)
        if isinstance(a, Dropped) or a is None or not op.outputs:
            continue
        report.aligned.append(NodeDiff(rec, op, compare(a, op.outputs[0], rtol, atol)))
    for d in report.aligned:
        if not d.metrics.close:
            report.first = d
            break
    report.pairs = pairs
    return report


def _flattened(eager: EagerRun) -> EagerRun:
    """``eager`` with every graph op joining the root path too: as if only the root's forward had run."""
    return EagerRun(ops=eager.ops, outputs=eager.outputs, module_outputs={"": []}, by_forward=True)


class _PathOps:
    """The graph's and the eager run's ops on one module path, each read once: its
    name-and-shape key and, where known, the user's statement it came from."""

    def __init__(self, g_ops: list[StepRecord], e_ops: list[EagerOp]):
        self.g_ops, self.e_ops = g_ops, e_ops
        self.g_loc = [_located(r) for r in g_ops]
        self.e_loc = [_where(o) for o in e_ops]
        self.g_chain = [chain_of_record(r) for r in g_ops]
        # name and shape: a transpose of another shape is another transpose
        self.g_key = [f"{canon(r.node.kind)}:{_shape(_first_tensor(r.outputs))}" for r in g_ops]
        self.e_key = [f"{canon(o.name)}:{_shape(o.outputs[0] if o.outputs else None)}" for o in e_ops]

    def lines_agree(self, i: int, j: int) -> bool:
        """No line of the user's code tells them apart (either side may not know its line)."""
        return lines_agree(self.g_loc[i], self.e_loc[j], self.g_chain[i], self.e_ops[j].chain)

    def meets(self, i: int, j: int) -> bool:
        """Graph op ``i`` may stand for eager op ``j``: the same shape, and the same line where both know it."""
        return _same_shape(self.g_ops[i], self.e_ops[j]) and self.lines_agree(i, j)


def _align_path(g_ops: list[StepRecord], e_ops: list[EagerOp], pairs: list, report: "DiffReport") -> None:
    """Pair the graph's ops with the eager ops of one module path.

    First by name, shape and source line, where the graph node has the user's line
    (eager ops always do): that keeps a small op (``torch.tensor(0.5)``) with its own
    line rather than with a look-alike elsewhere.  The gaps between those anchors
    are then matched by name and shape alone (ops inside torch's own Python, fused
    ops, composites).
    """
    ops = _PathOps(g_ops, e_ops)
    g_tok = [f"{key}@{loc}" if loc else f"#{k}" for k, (key, loc) in enumerate(zip(ops.g_key, ops.g_loc))]
    e_tok = [f"{key}@{loc}" if loc else f"#e{k}" for k, (key, loc) in enumerate(zip(ops.e_key, ops.e_loc))]
    gi = gj = 0
    for block in SequenceMatcher(None, g_tok, e_tok, autojunk=False).get_matching_blocks():
        if gj == block.b and block.size:
            # graph nodes on the statement of the op that follows, with no eager op of their own:
            # steps of one Python call (``x[:, a:b, 0:1]`` is three slices in a trace)
            anchor = ops.g_loc[block.a]
            report.grouped_records.update(g_ops[k].index for k in range(gi, block.a) if ops.g_loc[k] == anchor)
        _align_by_name(ops, gi, block.a, gj, block.b, pairs, report)
        pairs.extend(zip(g_ops[block.a:block.a + block.size], e_ops[block.b:block.b + block.size]))
        gi, gj = block.a + block.size, block.b + block.size


def _matchable(ops: _PathOps, g0: int, g1: int, e0: int, e1: int) -> int:
    """How many of eager ops ``e0:e1`` graph ops ``g0:g1`` can stand for, in order (greedily)."""
    found, k = 0, g0
    for j in range(e0, e1):
        while k < g1 and not ops.meets(k, j):
            k += 1
        if k == g1:
            break
        found += 1
        k += 1
    return found


def _align_by_name(ops: _PathOps, g0: int, g1: int, e0: int, e1: int, pairs: list, report: "DiffReport") -> None:
    """Pair graph ops ``g0:g1`` with eager ops ``e0:e1`` by name and shape."""
    if g0 == g1 or e0 == e1:
        return
    g_ops, e_ops = ops.g_ops, ops.e_ops
    sm = SequenceMatcher(None, ops.g_key[g0:g1], ops.e_key[e0:e1], autojunk=False)
    for tag, i1, i2, j1, j2 in sm.get_opcodes():
        i1, i2, j1, j2 = i1 + g0, i2 + g0, j1 + e0, j2 + e0
        if tag == "equal":
            # a look-alike on another line of the user's code is another op
            pairs.extend((g_ops[i], e_ops[j]) for i, j in zip(range(i1, i2), range(j1, j2)) if ops.lines_agree(i, j))
        elif tag == "replace" and i2 - i1 == j2 - j1 and all(
            ops.meets(i, j) for i, j in zip(range(i1, i2), range(j1, j2))
        ):
            # one op swapped for another (relu for gelu): compare them, it may be the cause
            pairs.extend(zip(g_ops[i1:i2], e_ops[j1:j2]))
        elif tag == "replace" and i2 - i1 > j2 - j1:
            # Python-level composites (F.multi_head_attention_forward) are one call
            # eagerly and many nodes in the graph: each eager call meets the last
            # node of its run that produces its shape, the nodes before it are
            # covered; but not one another call needs (``F.normalize(q) @
            # F.normalize(k).T``: two runs of norm, clamp, expand_as, div, all of
            # one shape): the last that leaves the later calls theirs, of the kind
            # the last run ends in.
            start = i1
            for j in range(j1, j2):
                hits = [k for k in range(start, i2) if ops.meets(k, j)]
                if not hits:
                    continue
                needed = _matchable(ops, hits[0] + 1, i2, j + 1, j2)
                ending = [k for k in hits if ops.g_key[k] == ops.g_key[hits[-1]]]
                hit = next(k for k in [*reversed(ending), *reversed(hits)]
                           if _matchable(ops, k + 1, i2, j + 1, j2) >= needed)
                pairs.append((g_ops[hit], e_ops[j]))
                report.grouped_records.update(g.index for g in g_ops[start:hit])
                start = hit + 1
        elif tag == "replace" and all(g.node.kind.startswith("aten::_") for g in g_ops[i1:i2]):
            # the other way: one fused graph op (aten::_transformer_encoder_layer_fwd)
            # for many eager calls; a plain op here is a substitution, not a fusion
            start = j1
            for n, i in enumerate(range(i1, i2)):
                hits = [k for k in range(start, j2) if ops.meets(i, k)]
                if not hits:
                    continue
                hit = hits[-1] if n == i2 - i1 - 1 else hits[0]
                pairs.append((g_ops[i], e_ops[hit]))
                report.grouped_eager.update(e.index for e in e_ops[start:hit])
                start = hit + 1
