"""Where two runs part: the last node both agree on, then what each ran that the other did not.

An input can take a path the trace did not record: the other side of a frozen
``if``, more iterations than a loop was unrolled to, a baked size that changes
a shape.  Aligned nodes then need not diverge at all (the archive simply ran
other ops), and a first divergence, where there is one, may sit well after the
cause.  This walks back from where the difference shows (the first divergent
node, the archive's failing node, or the nodes that made the differing
outputs) through the values it was computed from, to the earliest op the
other run did not have; the last aligned node before that is the last both
agree on, and everything either side ran between it and the difference is
what it ran alone.

It reads the engine's records and ``ir.Node``s only, and the reference run
as ``EagerOp``s: any pair of runs diff aligns (the Python model, another
archive, another format) is explained the same way.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any

import torch

from engine.check.diff import _first_tensor, canon
from engine.check.eager import EagerOp, EagerRun
from engine.check.places import enclosing_statement, place_of_eager, place_of_record, places_agree
from engine.run.timeline import StepRecord
from engine.run.values import Dropped, TensorSummary

#: How many records the walk back through values may visit (a loop of 20,000 steps stays quick).
WALK_LIMIT = 20000
#: How many ops of each side ``--json`` lists (with their count): runs that part at the start can
#: differ in thousands.
JSON_OPS_SHOWN = 200


@dataclass
class Parting:
    """``last_agreed``: the last aligned node before the runs part (None: they part before any);
    ``graph_only``/``eager_only``: what each side ran after it, up to the difference, that the
    other did not; ``shapes_part``: the first op both ran on one line whose shapes or dtypes differ."""

    last_agreed: Any = None  # engine.check.diff.NodeDiff
    graph_only: list[StepRecord] = field(default_factory=list)
    eager_only: list[EagerOp] = field(default_factory=list)
    shapes_part: tuple[StepRecord, EagerOp] | None = None
    shapes_text: str = ""  # ``[4, 12] vs [2, 24]``, ``float16 vs float32``

    def to_json(self) -> dict:
        def graph(r: StepRecord) -> dict:
            src = r.node.source
            return {"node": r.node.id, "kind": r.node.kind, "step": r.index, "module_path": r.module_path,
                    "source": str(src) if src and src.file else None, "shape": shape_text(_value_of(r)),
                    "inside": enclosing_statement(place_of_record(r))}

        def eager(o: EagerOp) -> dict:
            return {"op": o.name, "source": o.where if o.file else None, "module_path": o.module_path,
                    "shape": shape_text(o.outputs[0] if o.outputs else None),
                    "inside": enclosing_statement(place_of_eager(o))}

        last = self.last_agreed
        shown = JSON_OPS_SHOWN
        return {
            "last_agreed": None if last is None else {
                "node": last.record.node.id, "kind": last.record.node.kind, "step": last.record.index,
                "module_path": last.record.module_path,
                "source": str(last.record.node.source) if last.record.node.source and last.record.node.source.file
                else None, "eager_op": last.eager.name, "eager_source": last.eager.where},
            "graph_only": [graph(r) for r in self.graph_only[:shown]],
            "graph_only_count": len(self.graph_only),
            "eager_only": [eager(o) for o in self.eager_only[:shown]],
            "eager_only_count": len(self.eager_only),
            "shapes_part": None if self.shapes_part is None else {
                **graph(self.shapes_part[0]), "eager_op": self.shapes_part[1].name,
                "eager_source": self.shapes_part[1].where, "differ": self.shapes_text},
        }


def shape_text(value: Any) -> str | None:
    """``float32[4, 12]``: a tensor's (or a dropped one's) dtype and shape."""
    d = _dtype_shape(value)
    if d is None:
        return None
    dtype, shape = d
    return f"{str(dtype).replace('torch.', '')}{list(shape)}"


def _dtype_shape(value: Any) -> tuple | None:
    if isinstance(value, torch.Tensor):
        return value.dtype, tuple(value.shape)
    if isinstance(value, Dropped):
        value = value.summary
    if isinstance(value, TensorSummary):
        return value.dtype, tuple(value.shape)
    return None


def _value_of(rec: StepRecord) -> Any:
    return _first_tensor(rec.peek_outputs())


def _leaves(value: Any, depth: int = 0) -> list:
    """The tensors (and lists of them) a recorded value holds, for identity look-ups."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)) and depth < 3:
        return [t for v in value for t in _leaves(v, depth + 1)]
    if isinstance(value, dict) and depth < 3:
        return [t for v in value.values() for t in _leaves(v, depth + 1)]
    return []


class Producers:
    """Which record made each value the engine's run holds (by identity: the record that last
    output that very object; an in-place op outputs the tensor it wrote)."""

    def __init__(self, records: list[StepRecord]):
        self.records = records
        self.by_id: dict[int, list[int]] = {}
        for r in records:
            for v in r._outputs or ():
                for t in _leaves(v):
                    self.by_id.setdefault(id(t), []).append(r.index)
                if isinstance(v, str):
                    self.by_id.setdefault(id(v), []).append(r.index)

    def of(self, value: Any, before: int | None = None) -> StepRecord | None:
        found = self.by_id.get(id(value), [])  # record indices, in order
        k = len(found) if before is None else bisect.bisect_left(found, before)
        return self.records[found[k - 1]] if k else None


def ancestors(seeds: list[StepRecord], producers: Producers, stop: set[int], comparable: set[int]) -> list[StepRecord]:
    """The comparable records the seeds' values were computed from, walking back through
    records that are not in ``stop`` (aligned nodes: the two runs agree there)."""
    found: dict[int, StepRecord] = {}
    todo = list(seeds)
    seen: set[int] = set()
    while todo and len(seen) < WALK_LIMIT:
        r = todo.pop()
        if r.index in seen:
            continue
        seen.add(r.index)
        for v in r._inputs or ():
            for t in _leaves(v):
                p = producers.of(t, before=r.index)
                if p is None or p.index in stop or p.index in seen:
                    continue
                if p.index in comparable:
                    found[p.index] = p
                todo.append(p)
    return sorted(found.values(), key=lambda r: r.index)


def find_parting(report: Any, records: list[StepRecord], graph_ops: list[StepRecord], eager: EagerRun,
                 seeds: list[StepRecord], end_record: StepRecord | None, producers: Producers) -> Parting | None:
    """Where the runs part, before ``report.first`` (the first divergence) or, without one,
    before the end of both runs; ``seeds``: the records where the difference shows;
    ``end_record``: the archive's failing record, if it raised."""
    aligned = sorted(report.pairs, key=lambda p: p[0].index)
    aligned_graph = {r.index for r, _ in aligned}
    aligned_eager = {o.index for _, o in aligned}
    first = report.first
    g_end = first.record.index if first is not None else (end_record.index if end_record is not None
                                                          else len(records))
    e_end = first.eager.index if first is not None else len(eager.ops)
    comparable = {r.index for r in graph_ops}
    before = ancestors(seeds, producers, aligned_graph, comparable)
    parts_at = min([r.index for r in before if r.index not in aligned_graph] + [g_end])
    close = {d.record.index: d for d in report.aligned if d.metrics.close}
    # the last aligned pair before the parting, in both runs' order (an eager op after the one
    # the first divergence met cannot be before it)
    last = None
    for r, o in aligned:
        if r.index < parts_at and o.index < e_end and r.index in close:
            last = close[r.index]
    g_start = last.record.index if last is not None else -1
    e_start = last.eager.index if last is not None else -1
    graph_only = [r for r in graph_ops if g_start < r.index < g_end and r.index not in aligned_graph
                  and r.index not in report.grouped_records]
    eager_only = [o for o in eager.ops[e_start + 1:e_end] if o.index not in aligned_eager
                  and o.index not in report.grouped_eager]
    if not graph_only and not eager_only and end_record is None and report.eager_error is None:
        # the divergent node is the cause itself (a changed eps, another activation), or both
        # ran the same ops and only a value no node compares differs (a string returned)
        return None
    parting = Parting(last, graph_only, eager_only)
    # the first op both ran on one line that made another shape or dtype: where the shapes part
    for r in graph_only:
        ours = _dtype_shape(_value_of(r))
        if ours is None:
            continue
        for o in eager_only:
            theirs = _dtype_shape(o.outputs[0] if o.outputs else None)
            if theirs is None or canon(r.node.kind) != canon(o.name) or not places_agree(r, o) or theirs == ours:
                continue
            parting.shapes_part = (r, o)
            parting.shapes_text = differ_text(ours, theirs)
            break
        if parting.shapes_part is not None:
            break
    return parting


def differ_text(ours: tuple, theirs: tuple) -> str:
    """``shape [4, 12] vs [2, 24]``, ``dtype float16 vs float32``, or both."""
    parts = []
    if ours[1] != theirs[1]:
        parts.append(f"shape {list(ours[1])} vs {list(theirs[1])}")
    if ours[0] != theirs[0]:
        parts.append(f"dtype {str(ours[0]).replace('torch.', '')} vs {str(theirs[0]).replace('torch.', '')}")
    return ", ".join(parts)


def grouped_lines(items: list[tuple[str, str | None, str, Any]]) -> list[tuple[list[tuple[str, str, Any]], int]]:
    """``(op, shape, where, inside)`` in run order -> runs of lines ``([(ops, where, inside), …], times)``:
    the ops of consecutive items on one statement joined on one line (an op alone on its line
    with its shape), a pattern repeated on it written once with ``×N``, and a run of lines
    repeated (a loop body over several statements, the extra iterations of a loop) given once
    with how many times it ran."""
    lines: list[list] = []
    for op, shape, where, inside in items:
        if lines and lines[-1][2] == where:
            lines[-1][0].append(op)
            lines[-1][1] = None
        else:
            lines.append([[op], shape, where, inside])
    out = []
    for ops, shape, where, inside in lines:
        n = len(ops)
        period = next(p for p in range(1, n + 1) if n % p == 0 and ops == ops[:p] * (n // p))
        text = ", ".join(ops[:period]) + (f"  ×{n // period}" if n // period > 1 else "")
        out.append((f"{text} {shape}" if shape and n == 1 else text, where, inside))
    runs: list[tuple[list, int]] = []
    i = 0
    while i < len(out):
        best_size, best_reps = 1, 1
        for size in range(1, min(8, (len(out) - i) // 2) + 1):
            reps = 1
            while out[i + reps * size:i + (reps + 1) * size] == out[i:i + size]:
                reps += 1
            if reps > 1 and size * reps > best_size * best_reps:
                best_size, best_reps = size, reps
        runs.append((out[i:i + best_size], best_reps))
        i += best_size * best_reps
    return runs
