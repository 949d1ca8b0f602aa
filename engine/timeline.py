"""Every executed step as a record, within a memory budget.

Records hold references to the values a step read and wrote, so moving back
in time is moving a cursor over records.  Two things keep those references
true:

* in-place ops: before an op overwrites a tensor, every earlier record that
  holds memory the op writes gets a private copy (and so does the op's own
  input), so a record shows the value as it was at its step;
* the budget: tensors are kept until the memory they pin passes the budget,
  after which new values are kept as summaries only (``values.Dropped``) and
  counted in ``dropped``.

Memory is counted per storage, so a view of a kept tensor costs nothing, and
storages the model holds anyway (parameters, inputs) are not counted.
"""

from __future__ import annotations

import bisect
import threading
import weakref
from collections import defaultdict
from typing import Any, Iterator

import torch

from engine.ir import Node
from engine.values import Dropped, summarize

DEFAULT_BUDGET = 1 << 30  # 1 GiB


class StepRecord:
    """One executed node.

    ``path`` is the frame path: method frames with their module paths and the
    loop iterations around the node, outermost first.  ``outputs`` is None
    while a call or block entered at this step is still running.
    """

    __slots__ = ("index", "node", "path", "module_path", "depth", "inputs", "outputs", "time_ns", "status", "error",
                 "frame")

    def __init__(self, index: int, node: Node, path: tuple, module_path: str, depth: int, inputs: list,
                 frame: int = -1):
        self.index = index
        self.node = node
        self.path = path
        self.module_path = module_path
        self.depth = depth
        self.inputs = inputs
        self.outputs: list | None = None
        self.time_ns = 0
        self.status = "done"  # "done", "entered" (a block or call in progress), "error"
        self.error: str | None = None
        self.frame = frame  # index of the record that entered this step's frame (-1: the top frame)

    @property
    def node_id(self) -> str:
        return self.node.id

    def value(self, v) -> Any:
        """The recorded value of ``v`` (an input or output ``Value`` of the node)."""
        for vals, defs in ((self.outputs, self.node.outputs), (self.inputs, self.node.inputs)):
            if vals is None:
                continue
            for d, x in zip(defs, vals):
                if d == v:
                    return x
        raise KeyError(v)

    def __repr__(self) -> str:
        return f"<StepRecord #{self.index} {self.node.id} {self.node.kind}>"


_SEQUENCES = (list, tuple)


def _storage_ptr(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


class Timeline:
    def __init__(self, budget: int = DEFAULT_BUDGET):
        self.budget = budget
        self.records: list[StepRecord] = []
        self.kept_bytes = 0
        self.dropped = 0  # values kept as summaries only
        self.snapshots = 0  # copies made before in-place writes
        self._free: set[int] = set()
        # storage -> the records holding it; a storage is here once counted (or free)
        self._refs: dict[int, list] = {}
        # id(tensor) -> (weakref, Dropped): a dropped tensor read by later steps is summarized once
        self._dropped_cache: dict[int, tuple] = {}
        # node id -> indices of its records, in order (for "last value of this node");
        # built on first query and extended from there, so runs do not pay for it
        self._by_node: dict[str, list[int]] = defaultdict(list)
        self._indexed = 0
        self._index_lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> StepRecord:
        return self.records[i]

    def __iter__(self) -> Iterator[StepRecord]:
        return iter(self.records)

    @property
    def over_budget(self) -> bool:
        return self.kept_bytes > self.budget

    def mark_free(self, value: Any) -> None:
        """Memory the model holds anyway (parameters, inputs): never counted."""
        if isinstance(value, torch.Tensor):
            self._free.add(_storage_ptr(value))

    def add(self, record: StepRecord) -> StepRecord:
        records = self.records
        record.index = len(records)
        records.append(record)
        self._keep(record, record.inputs)
        if record.outputs:
            self._keep(record, record.outputs)
        return record

    def set_outputs(self, record: StepRecord, outputs: list) -> None:
        """Outputs of a call or block, known when it returns."""
        record.outputs = outputs
        self._keep(record, outputs)

    def _keep(self, record: StepRecord, values: list) -> None:
        """Count the memory the record pins, drop what is over budget, remember who holds what.

        This runs for every step: it is written for speed.  A storage in
        ``_refs`` has been counted (or is free), so a value seen before costs
        one dict lookup.
        """
        Tensor = torch.Tensor
        refs = self._refs
        for slot, value in enumerate(values):
            if isinstance(value, Tensor):
                holders = refs.get(value.untyped_storage().data_ptr())
                if holders is not None:
                    if not holders or holders[-1] is not record:
                        holders.append(record)
                    continue
                kept = self._keep_tensor(record, value)
                if kept is not value:
                    values[slot] = kept
            elif type(value) in _SEQUENCES and value and isinstance(value[0], Tensor):
                items = [self._keep_tensor(record, v) if isinstance(v, Tensor) else v for v in value]
                if any(a is not b for a, b in zip(items, value)):
                    values[slot] = items if isinstance(value, list) else tuple(items)

    def _keep_tensor(self, record: StepRecord, t: torch.Tensor):
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        holders = self._refs.get(ptr)
        if holders is None:
            if ptr not in self._free:
                nbytes = storage.nbytes()
                if self.kept_bytes + nbytes > self.budget:
                    return self._drop(t)
                self.kept_bytes += nbytes
            self._refs[ptr] = [record]
        elif not holders or holders[-1] is not record:
            holders.append(record)
        return t

    def _drop(self, t: torch.Tensor, reason: str = "over the record budget") -> Dropped:
        cached = self._dropped_cache.get(id(t))
        if cached is not None and cached[0]() is t and cached[2] == t._version:
            return cached[1]
        self.dropped += 1
        dropped = Dropped(summarize(t), reason=reason)
        key = id(t)
        cache = self._dropped_cache

        def forget(ref, key=key):
            entry = cache.get(key)
            if entry is not None and entry[0] is ref:
                del cache[key]

        cache[key] = (weakref.ref(t, forget), dropped, t._version)
        return dropped

    @property
    def by_node(self) -> dict[str, list[int]]:
        """Node id -> the indices of its records, in order."""
        with self._index_lock:  # the UI may ask while a worker thread runs the model
            records = self.records
            index = self._by_node
            end = len(records)
            for i in range(self._indexed, end):
                index[records[i].node.id].append(i)
            self._indexed = end
        return index

    def last_of(self, node_id: str, upto: int | None = None) -> StepRecord | None:
        """The latest record of a node, at or before record ``upto`` when given."""
        indices = self.by_node.get(node_id)
        if not indices:
            return None
        if upto is None:
            return self.records[indices[-1]]
        pos = bisect.bisect_right(indices, upto)
        return self.records[indices[pos - 1]] if pos else None

    def count_of(self, node_id: str, upto: int | None = None) -> int:
        indices = self.by_node.get(node_id, ())
        return len(indices) if upto is None else bisect.bisect_right(indices, upto)

    def before_write(self, t: torch.Tensor) -> Any:
        """``t``'s memory is about to be overwritten: earlier records get copies.

        Returns the copy made of ``t`` itself, if any, so the in-place op's
        own record can share it instead of copying again.
        """
        ptr = _storage_ptr(t)
        holders = self._refs.get(ptr)
        if not holders:
            return None
        self._refs[ptr] = []  # still counted; later readers register afresh
        copies: dict[int, Any] = {}

        def copy_of(x: torch.Tensor):
            snap = copies.get(id(x))
            if snap is None:
                snap = self._snapshot(x)
                copies[id(x)] = snap
            return snap

        for record in holders:
            for values in (record.inputs, record.outputs):
                if not values:
                    continue
                for slot, value in enumerate(values):
                    if isinstance(value, torch.Tensor):
                        if _storage_ptr(value) == ptr:
                            values[slot] = copy_of(value)
                    elif type(value) in (list, tuple) and value and isinstance(value[0], torch.Tensor):
                        items = [copy_of(v) if isinstance(v, torch.Tensor) and _storage_ptr(v) == ptr else v
                                 for v in value]
                        if any(a is not b for a, b in zip(items, value)):
                            values[slot] = items if isinstance(value, list) else tuple(items)
        return copies.get(id(t))

    def _snapshot(self, t: torch.Tensor):
        nbytes = t.numel() * t.element_size()
        if self.kept_bytes + nbytes > self.budget:
            return self._drop(t, reason="overwritten in place; over the record budget")
        self.snapshots += 1
        self.kept_bytes += nbytes
        copy = t.clone()
        self._refs[_storage_ptr(copy)] = []
        return copy

    def snapshot_input(self, t: torch.Tensor):
        """A copy of an in-place op's own input, taken before the op runs."""
        shared = self.before_write(t)
        if shared is not None:
            return shared  # the earlier record's copy of this very tensor: one copy serves both
        return self._snapshot(t)
