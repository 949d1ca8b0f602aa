"""Every executed step as a record, within a memory budget.

Records hold references to the values a step read and wrote, so moving back
in time is moving a cursor over records.  Two things keep those references
true:

* in-place ops: before an op overwrites a tensor, every earlier record that
  holds memory the op writes is given the value as it was: a recipe
  (``engine.run.recipes``) when the op that made the value can make it again,
  else a private copy.  The in-place op's own input shares it.  Recipes are
  run when a record is read, so a conv net whose activations are
  overwritten by ``relu_`` pays for no copies while it runs;
* containers: lists and dicts are recorded as copies, since the program goes
  on changing its own;
* the budget covers everything the timeline holds: the tensors it keeps and
  the records themselves.  Tensors are kept while both fit, after which new
  values are kept as summaries only (``values.Dropped``) and counted in
  ``dropped``.  Records are counted a chunk (``RECORD_CHUNK`` steps) at a
  time, by sampling a few of the chunk's records (no per-step cost).  Past
  the budget the oldest records are thinned (their values let go, the step
  kept: ``values.THINNED``), which frees the tensors only they held; past
  that the oldest steps are forgotten outright (``first``, ``forgotten``):
  ``timeline[i]`` below ``first`` raises ``ForgottenStep``, and moving back
  says so rather than pretending.

Memory is counted per storage, so a view of a kept tensor costs nothing, and
storages the model holds anyway (parameters, inputs) are not counted.
"""

from __future__ import annotations

import bisect
import random
import sys
import threading
import weakref
from array import array
from collections import defaultdict
from typing import Any, Iterator

import torch

from engine.ir import Node
from engine.run.recipes import Overwritten, Recompute, described, holds, map_leaves, resolved
from engine.run.values import THINNED, Dropped, NotRecorded, human_bytes, summarize_tensor

DEFAULT_BUDGET = 1 << 30  # 1 GiB

#: Records are counted and thinned this many at a time (engine/run/_stepper.c knows it too).
RECORD_CHUNK = 1024
#: One record in this many of a chunk is measured for the chunk's estimate.
SAMPLE_STRIDE = 32
#: Which ones: scattered, the same for every chunk (a regular stride would see one node of a
#: loop whose body is a divisor of it long, and nothing else).
_SAMPLED = sorted(random.Random(14).sample(range(RECORD_CHUNK), RECORD_CHUNK // SAMPLE_STRIDE))
#: Per record, what sampling does not see: its slot in ``records``, its entry in the node index
#: and in a storage's holders, and the allocator's rounding (calibrated against the RSS growth
#: of an endless loop, tests/test_memory.py).
RECORD_OVERHEAD = 40
#: A kept tensor object besides its storage's bytes (the Python object, the TensorImpl, the
#: StorageImpl, the allocation's rounding): measured, about 620 for a small CPU tensor.
TENSOR_OBJECT_BYTES = 600


class ForgottenStep(IndexError):
    """A step the timeline no longer holds: forgotten to stay within the record budget."""


class StepRecord:
    """One executed node.

    ``path`` is the frame path: method frames with their module paths and the
    loop iterations around the node, outermost first.  ``outputs`` is None
    while a call or block entered at this step is still running.
    """

    # ``autocast`` is set only on ops run inside autocast blocks (read with getattr)
    __slots__ = ("index", "node", "path", "module_path", "depth", "_inputs", "_outputs", "time_ns", "status", "error",
                 "frame", "lazy", "autocast", "__weakref__")

    def __init__(self, index: int, node: Node, path: tuple, module_path: str, depth: int, inputs: list,
                 frame: int = -1):
        self.index = index
        self.node = node
        self.path = path
        self.module_path = module_path
        self.depth = depth
        self._inputs = inputs
        self._outputs: list | None = None
        self.time_ns = 0
        self.status = "done"  # "done", "entered" (a block or call in progress), "error"
        self.error: str | None = None
        self.frame = frame  # index of the record that entered this step's frame (-1: the top frame)
        self.lazy = False  # holds ``Overwritten`` recipes, run on first read

    # The interpreter and the timeline use ``_inputs``/``_outputs`` directly;
    # everyone else reads values, with recipes run.

    @property
    def inputs(self) -> list:
        if self.lazy:
            self._materialize()
        return self._inputs

    @inputs.setter
    def inputs(self, values: list) -> None:
        self._inputs = values

    @property
    def outputs(self) -> list | None:
        if self.lazy:
            self._materialize()
        return self._outputs

    @outputs.setter
    def outputs(self, values: list | None) -> None:
        self._outputs = values

    def peek_outputs(self) -> list | None:
        """The outputs without running recipes, for shape-only displays.

        A value overwritten in place and kept as a recipe shows as the
        ``TensorSummary`` (shape, dtype, no statistics) of what it stands for.
        """
        outs = self._outputs
        if not self.lazy or not outs:
            return outs
        return [described(v) for v in outs]

    def _materialize(self) -> None:
        self.lazy = False
        for values in (self._inputs, self._outputs):
            if values:
                for slot, v in enumerate(values):
                    values[slot] = resolved(v)

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


_NOT_TENSORS = frozenset({int, float, bool, str, type(None), torch.device, torch.dtype, torch._C.ScriptModule,
                          torch._C.ScriptObject})
#: Lists and dicts are recorded as copies (the program goes on changing its
#: own), up to this many items in all; bigger ones are recorded as they are.
COPY_LIMIT = 1024


def _storage_ptr(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


_CONTAINER_TYPES = frozenset({list, dict, tuple})


def container_copy(value: Any) -> Any:
    """Lists and dicts (nested ones too) copied, tensors and other values shared; the
    value itself when it holds more than ``COPY_LIMIT`` items."""
    tp = type(value)
    if len(value) <= COPY_LIMIT:
        # the common case, on the hot path: flat (no containers inside)
        for x in (value.values() if tp is dict else value):
            if type(x) in _CONTAINER_TYPES:
                break
        else:
            return value if tp is tuple else (list(value) if tp is list else dict(value))
    room = [COPY_LIMIT]

    def copy(v: Any) -> Any:
        tp = type(v)
        if tp is list or tp is dict or tp is tuple:
            room[0] -= len(v)
            if room[0] < 0:
                raise OverflowError
            if tp is dict:
                return {k: copy(x) for k, x in v.items()}
            items = [copy(x) for x in v]
            if tp is tuple:
                return v if all(a is b for a, b in zip(items, v)) else tuple(items)
            return items
        return v

    try:
        return copy(value)
    except OverflowError:
        return value


_getsizeof = sys.getsizeof
_FLOAT_BYTES = _getsizeof(1.0)
_INT_BYTES = _getsizeof(1 << 20)
#: Bytes a record is taken to cost before the first chunk is measured.
_FIRST_GUESS = 400


def _value_bytes(v: Any, room: list, tensor_bytes: int) -> int:
    """Memory a recorded value costs the timeline beyond what others hold (tensor storages aside).

    ``tensor_bytes``: what a tensor object counts for (a tensor is counted where
    it was made, in its step's outputs; the steps that read it share it).
    """
    tp = type(v)
    if tp is int:
        return 0 if -5 <= v <= 256 else _getsizeof(v)
    if tp is float:
        return _FLOAT_BYTES
    if tp is Dropped:
        summary = v.summary
        return (_getsizeof(v) + _getsizeof(summary) + _getsizeof(summary.shape)
                + (4 * _FLOAT_BYTES if summary.min is not None else 0))
    if tp is list or tp is tuple or tp is dict:
        n = _getsizeof(v)
        items = v.values() if tp is dict else v
        for x in items:
            room[0] -= 1
            if room[0] < 0:
                break
            n += _value_bytes(x, room, tensor_bytes)
        return n
    if tp in _NOT_TENSORS or tp is NotRecorded:
        return 0
    if isinstance(v, torch.Tensor):
        return tensor_bytes
    if tp is Overwritten:
        return _getsizeof(v) + _getsizeof(v.meta) + _getsizeof(v.meta.shape)
    return 0


def record_bytes(record: StepRecord) -> int:
    """What one record costs in memory: itself, its numbers, its value lists and what only they hold."""
    # its index and step time: ints of their own (counted whatever their size, so that the
    # estimate, and what it decides, is the same for the same run in C and in Python)
    n = _getsizeof(record) + RECORD_OVERHEAD + 2 * _INT_BYTES
    room = [4 * COPY_LIMIT]
    for values, tensor_bytes in ((record._inputs, 0), (record._outputs, TENSOR_OBJECT_BYTES)):
        if values and type(values) is not tuple:  # a tuple: the shared thinned form
            n += _value_bytes(values, room, tensor_bytes)
    return n


_THINNED_VALUES: dict[int, tuple] = {}


def _thinned(n: int) -> tuple:
    """``n`` values, thinned out: one shared tuple per length."""
    found = _THINNED_VALUES.get(n)
    if found is None:
        found = _THINNED_VALUES[n] = (THINNED,) * n
    return found


#: Dead entries of the dropped cache are swept when it grows past this (and then past twice its live size).
_DROPPED_SWEEP = 1024

#: ``engine.run._stepper`` while ``engine.run.stepper`` has the C loop on: ``add`` and
#: ``set_outputs`` hand over to it (``_keep`` below is what it follows).
_FAST: Any = None


class Timeline:
    def __init__(self, budget: int = DEFAULT_BUDGET, recompute: Recompute | None = None):
        self.budget = budget
        self.recompute = recompute
        self.recipes = 0  # overwritten values kept as recipes instead of copies
        # id(list or dict) -> index of the last record that mutated it
        self._mutated: dict[int, int] = {}
        self.records: list[StepRecord] = []
        self.kept_bytes = 0
        self.dropped = 0  # values kept as summaries only
        self.snapshots = 0  # copies made before in-place writes
        self._free: set[int] = set()
        # storage -> the records holding it; a storage is here once counted (or free)
        self._refs: dict[int, list] = {}
        # The records' own memory, counted a chunk at a time: per chunk of RECORD_CHUNK
        # steps still held (oldest first), its estimated bytes
        self.record_bytes = 0
        self._chunk_bytes: list[int] = []
        self._first = 0  # steps before this are forgotten; records[k] is step _first + k
        self.thinned_upto = 0  # steps before this are thinned (their values let go)
        self.thinned_bytes = 0
        # id(tensor) -> (weakref, Dropped): a dropped tensor read by later steps is summarized once
        self._dropped_cache: dict[int, tuple] = {}
        self._sweep_dropped_at = _DROPPED_SWEEP
        # node id -> indices of its records, in order (for "last value of this node");
        # built on first query and extended from there, so runs do not pay for it
        self._by_node: dict[str, array] = defaultdict(lambda: array("q"))
        self._by_node_forgotten: dict[str, int] = {}  # node id -> its records forgotten
        self._indexed = 0
        self._index_lock = threading.Lock()

    def __len__(self) -> int:
        """The steps recorded since the start, forgotten ones included (the next step's index)."""
        return self._first + len(self.records)

    def __getitem__(self, i: int) -> StepRecord:
        if i < 0:
            return self.records[i]
        first = self._first
        if i < first:
            raise ForgottenStep(self.forgotten_note())
        return self.records[i - first]

    def __iter__(self) -> Iterator[StepRecord]:
        """The records still held, oldest first."""
        return iter(self.records)

    def since(self, start: int) -> list[StepRecord]:
        """The records of steps ``start`` on (those still held)."""
        return self.records[max(start - self._first, 0):]

    @property
    def first(self) -> int:
        """The first step still recorded: steps before it were forgotten."""
        return self._first

    @property
    def forgotten(self) -> int:
        return self._first

    @property
    def thinned(self) -> int:
        """Steps still recorded whose values were let go."""
        return max(self.thinned_upto - self._first, 0)

    def forgotten_note(self) -> str:
        """What moving back into the forgotten steps finds, in one line."""
        if not self._first:
            return ""
        return (f"steps 0–{self._first - 1} are no longer recorded (record budget {human_bytes(self.budget)}); "
                "a bigger --record-budget keeps more")

    @property
    def nbytes(self) -> int:
        """The memory the timeline holds: kept tensors and the records, the chunk in progress estimated."""
        partial = len(self.records) % RECORD_CHUNK
        per_record = self._chunk_bytes[-1] // RECORD_CHUNK if self._chunk_bytes else _FIRST_GUESS
        return self.kept_bytes + self.record_bytes + partial * per_record

    @property
    def over_budget(self) -> bool:
        return self.kept_bytes + self.record_bytes > self.budget

    def mark_free(self, value: Any) -> None:
        """Memory the model holds anyway (parameters, inputs): never counted."""
        if isinstance(value, torch.Tensor):
            self._free.add(_storage_ptr(value))

    def add_module_tensor(self, record: StepRecord, t: torch.Tensor) -> int:
        """Add a GetAttr's record whose output is a parameter or buffer of the module.

        What ``mark_free`` and ``add`` do for it, with one look at the storage
        (every module's forward reads its weights this way).  The input, an
        object, pins nothing.  Returns the storage's key.
        """
        ptr = t.untyped_storage().data_ptr()
        self._free.add(ptr)
        records = self.records
        record.index = self._first + len(records)
        records.append(record)
        self._hold(ptr, record)
        if not len(records) % RECORD_CHUNK:
            self._grew()
        return ptr

    def add(self, record: StepRecord) -> StepRecord:
        if _FAST is not None:  # engine.run.stepper: the same, in C
            return _FAST.add(self, record)
        records = self.records
        record.index = self._first + len(records)
        records.append(record)
        self._keep(record, record._inputs)
        if record._outputs:
            self._keep(record, record._outputs)
        if not len(records) % RECORD_CHUNK:
            self._grew()
        return record

    def set_outputs(self, record: StepRecord, outputs: list) -> None:
        """Outputs of a call or block, known when it returns."""
        record._outputs = outputs
        if _FAST is not None:
            _FAST.keep(self, record, outputs)
        else:
            self._keep(record, outputs)

    def note_mutation(self, containers: list) -> None:
        """These lists or dicts are about to be changed (by the step recorded next)."""
        index = len(self)
        for c in containers:
            self._mutated[id(c)] = index

    def _keep(self, record: StepRecord, values: list) -> None:
        """Count the memory the record pins, drop what is over budget, remember who holds what.

        This runs for every step: it is written for speed.  A storage in
        ``_refs`` has been counted (or is free), so a value seen before costs
        one dict lookup.
        """
        Tensor = torch.Tensor
        refs = self._refs
        dropped_cache = self._dropped_cache
        for slot, value in enumerate(values):
            tp = type(value)
            if tp in _NOT_TENSORS:  # most values; cheaper than isinstance on torch.Tensor
                continue
            if tp in _CONTAINER_TYPES:
                values[slot] = self._keep_container(record, value)
            elif isinstance(value, Tensor):
                if dropped_cache:  # over budget: most tensors read again were dropped when made
                    cached = dropped_cache.get(id(value))  # _dropped_before, inlined
                    if cached is not None and cached[0]() is value and cached[2] == value._version:
                        values[slot] = cached[1]
                        continue
                holders = refs.get(value.untyped_storage().data_ptr())
                if holders is not None:  # _hold, inlined: seen before, the common case of this loop
                    if not holders or holders[-1] is not record:
                        holders.append(record)
                    continue
                kept = self._keep_tensor(record, value)
                if kept is not value:
                    values[slot] = kept

    def _keep_container(self, record: StepRecord, value: list | tuple | dict) -> Any:
        """What the record keeps of a list, tuple or dict: a copy as it is now, its tensors kept."""
        tp = type(value)
        if tp is dict:
            return map_leaves(container_copy(value), lambda x: self._keep_leaf(record, x))
        # One look at the items: containers inside, tensors inside.
        Tensor = torch.Tensor
        nested = tensors = False
        for x in value:
            tx = type(x)
            if tx in _NOT_TENSORS:
                continue
            if tx in _CONTAINER_TYPES:
                nested = True
            elif isinstance(x, Tensor):
                tensors = True
        # As it is now: the program may change its own list later.
        if nested:
            return map_leaves(container_copy(value), lambda x: self._keep_leaf(record, x))
        if tp is list and len(value) <= COPY_LIMIT:
            value = value.copy()
        if tensors:
            items = [self._keep_tensor(record, v) if isinstance(v, Tensor) else v for v in value]
            if any(a is not b for a, b in zip(items, value)):
                value = items if tp is list else tuple(items)
        return value

    def _keep_leaf(self, record: StepRecord, x: Any) -> Any:
        return self._keep_tensor(record, x) if type(x) not in _NOT_TENSORS and isinstance(x, torch.Tensor) else x

    def _keep_tensor(self, record: StepRecord, t: torch.Tensor):
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in self._refs and ptr not in self._free:  # first seen: counted, or over the budget
            nbytes = storage.nbytes()
            if self.kept_bytes + self.record_bytes + nbytes > self.budget:
                return self._drop(t)
            self.kept_bytes += nbytes
        self._hold(ptr, record)
        return t

    def _hold(self, ptr: int, record: StepRecord) -> None:
        """``record`` holds the storage at ``ptr`` (once, however many of its values do)."""
        holders = self._refs.get(ptr)
        if holders is None:
            self._refs[ptr] = [record]
        elif not holders or holders[-1] is not record:
            holders.append(record)

    def _dropped_before(self, t: torch.Tensor) -> Dropped | None:
        """The summary ``t`` was dropped as, if it was and has not been written since."""
        cached = self._dropped_cache.get(id(t))
        if cached is not None and cached[0]() is t and cached[2] == t._version:
            return cached[1]
        return None

    def _drop(self, t: torch.Tensor, reason: str = "over the record budget") -> Dropped:
        cached = self._dropped_before(t)
        if cached is not None:
            return cached
        self.dropped += 1
        dropped = Dropped(summarize_tensor(t), reason=reason)
        # No callback per tensor to remove its entry when it dies (a closure and a weakref
        # callback per drop cost more than the sweep): the lookup checks that the tensor is
        # still this one, and dead entries are swept once the cache has doubled.
        cache = self._dropped_cache
        cache[id(t)] = (weakref.ref(t), dropped, t._version)
        if len(cache) > self._sweep_dropped_at:
            for key in [key for key, entry in cache.items() if entry[0]() is None]:
                del cache[key]
            self._sweep_dropped_at = max(_DROPPED_SWEEP, 2 * len(cache))
        return dropped

    @property
    def by_node(self) -> dict[str, array]:
        """Node id -> the indices of its records still held, in order."""
        with self._index_lock:  # the UI may ask while a worker thread runs the model
            records = self.records
            index = self._by_node
            first = self._first
            end = first + len(records)
            for i in range(max(self._indexed, first), end):
                index[records[i - first].node.id].append(i)
            self._indexed = end
        return index

    def last_of(self, node_id: str, upto: int | None = None) -> StepRecord | None:
        """The latest record of a node, at or before record ``upto`` when given (None: forgotten or never run)."""
        indices = self.by_node.get(node_id)
        if not indices:
            return None
        if upto is None:
            return self[indices[-1]]
        pos = bisect.bisect_right(indices, upto)
        return self[indices[pos - 1]] if pos else None

    def count_of(self, node_id: str, upto: int | None = None) -> int:
        """How many times the node ran (up to record ``upto``), forgotten steps included."""
        indices = self.by_node.get(node_id, ())
        gone = self._by_node_forgotten.get(node_id, 0)
        if upto is None:
            return gone + len(indices)
        if upto < self._first:
            return gone if indices or gone else 0  # (as many as ran by then: not known past forgetting)
        return gone + bisect.bisect_right(indices, upto)

    # ------------------------------------------------------------ the budget over records

    def _grew(self) -> None:
        """A chunk of records is complete: count it, and thin or forget the oldest past the budget.

        Called once per ``RECORD_CHUNK`` steps (by ``add`` and by the C loop), so
        the sampling and what it may set off cost nothing per step.
        """
        records = self.records
        start = len(records) - RECORD_CHUNK
        sampled = 0
        for k in _SAMPLED:
            sampled += record_bytes(records[start + k])
        estimate = sampled * SAMPLE_STRIDE
        self._chunk_bytes.append(estimate)
        self.record_bytes += estimate
        if self.kept_bytes + self.record_bytes > self.budget:
            self._fit()

    def _fit(self) -> None:
        """Back under three quarters of the budget (room to go on without refitting at every chunk).

        Oldest first: thin the records (their values go, and the tensors
        only they held with them), keeping at most half the budget for thinned
        records by forgetting the oldest of those.  The newest complete chunk
        is thinned only when it alone is over, and never forgotten: stepping
        back a little always finds the steps (and the chunk in progress, its
        values).
        """
        target = self.budget - self.budget // 4
        chunks = self._chunk_bytes
        while self.kept_bytes + self.record_bytes > target:
            thinned_chunks = (self.thinned_upto - self._first) // RECORD_CHUNK
            if thinned_chunks >= len(chunks) and len(chunks) <= 1:
                break  # only the newest chunk left, thinned: its steps stay
            if thinned_chunks and (self.thinned_bytes > self.budget // 2 or thinned_chunks >= len(chunks)):
                if len(chunks) > 1:
                    self._forget_chunk()
                    continue
            if thinned_chunks >= len(chunks):
                break
            self._thin_chunk(thinned_chunks)
            if self.kept_bytes:
                self._recount()  # the tensors the thinned records held alone are free now
        # who holds what, from the records still holding values: the others are let go
        # (a parameter's holders would otherwise keep every GetAttr record alive)
        self._recount()
        self._sweep_dropped()
        first = self._first
        mutated = self._mutated
        for key in [key for key, index in mutated.items() if index < first]:
            del mutated[key]

    def _thin_chunk(self, k: int) -> None:
        """Let go of the values of the ``k``-th chunk still held (the oldest not yet thinned)."""
        records = self.records
        start = k * RECORD_CHUNK
        gone = _thinned
        for rec in records[start:start + RECORD_CHUNK]:
            rec.lazy = False
            ins = rec._inputs
            if ins is not None:
                rec._inputs = gone(len(ins))
            outs = rec._outputs
            if outs is not None:
                rec._outputs = gone(len(outs))
        sampled = 0
        for offset in _SAMPLED:
            sampled += record_bytes(records[start + offset])
        estimate = sampled * SAMPLE_STRIDE
        self.record_bytes += estimate - self._chunk_bytes[k]
        self._chunk_bytes[k] = estimate
        self.thinned_bytes += estimate
        self.thinned_upto = self._first + start + RECORD_CHUNK

    def _forget_chunk(self) -> None:
        """Forget the oldest chunk of steps entirely."""
        records = self.records
        estimate = self._chunk_bytes.pop(0)
        self.record_bytes -= estimate
        was_thinned = self.thinned_upto > self._first
        if was_thinned:
            self.thinned_bytes -= estimate
        with self._index_lock:
            forgotten = self._by_node_forgotten
            unindexed = self._indexed - self._first
            if unindexed < RECORD_CHUNK:  # steps the index never saw: counted as they go
                for rec in records[max(unindexed, 0):RECORD_CHUNK]:
                    node_id = rec.node.id
                    forgotten[node_id] = forgotten.get(node_id, 0) + 1
            del records[:RECORD_CHUNK]
            self._first += RECORD_CHUNK
            first = self._first
            for node_id, indices in self._by_node.items():
                if indices and indices[0] < first:
                    pos = bisect.bisect_left(indices, first)
                    forgotten[node_id] = forgotten.get(node_id, 0) + pos
                    del indices[:pos]
            self._indexed = max(self._indexed, first)
        self.thinned_upto = max(self.thinned_upto, self._first)

    def _recount(self) -> None:
        """Count the kept tensors again from the records still holding values, and who holds what.

        Run after records let values go (not per step): a storage only
        thinned or forgotten records held is no longer counted, nor listed.
        (A loop, not a recursive closure: a closure naming itself is a cycle,
        and the cyclic collector is off while the model runs, so the old
        holders, and every record they list, would outlive it.)
        """
        free = self._free
        refs: dict[int, list] = {}
        kept = 0
        Tensor = torch.Tensor
        not_tensors = _NOT_TENSORS
        containers = _CONTAINER_TYPES
        first_detailed = max(self.thinned_upto - self._first, 0)
        for record in self.records[first_detailed:]:
            for values in (record._inputs, record._outputs):
                if not values:
                    continue
                todo = list(values)
                while todo:
                    value = todo.pop()
                    tp = type(value)
                    if tp in not_tensors:
                        continue
                    if tp in containers:
                        todo.extend(value.values() if tp is dict else value)
                        continue
                    if not isinstance(value, Tensor):
                        continue
                    storage = value.untyped_storage()
                    ptr = storage.data_ptr()
                    holders = refs.get(ptr)
                    if holders is None:
                        refs[ptr] = [record]
                        if ptr not in free:
                            kept += storage.nbytes()
                    elif holders[-1] is not record:
                        holders.append(record)
        self._refs = refs
        self.kept_bytes = kept

    def _sweep_dropped(self) -> None:
        cache = self._dropped_cache
        for key in [key for key, entry in cache.items() if entry[0]() is None]:
            del cache[key]

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
        # The ops that made tensors on this storage, where they can make them again.
        makers: dict[int, tuple[StepRecord, int, int]] = {}
        if self.recompute is not None:
            for record in holders:
                outs = record._outputs
                if not outs:
                    continue
                depth = None
                for k, v in enumerate(outs):
                    if isinstance(v, torch.Tensor) and id(v) not in makers and _storage_ptr(v) == ptr \
                            and v.device.type == "cpu" and not holds(record._inputs, v):
                        # (CUDA kernels may be nondeterministic; an op that handed back
                        # its own input, like ``contiguous``, did not make it)
                        if depth is None:
                            depth = self.recompute.can_remake(record, self._mutated) or 0
                        if depth:
                            makers[id(v)] = (record, k, depth)
        kept: dict[int, Any] = {}

        def as_it_was(x: torch.Tensor):
            before = kept.get(id(x))
            if before is None:
                maker = makers.get(id(x))
                if maker is not None:
                    before = Overwritten(maker[0], maker[1], self.recompute, maker[2], x)
                    self.recipes += 1
                else:
                    before = self._snapshot(x)
                kept[id(x)] = before
            return before

        def on_storage(x: Any) -> Any:
            if type(x) not in _NOT_TENSORS and isinstance(x, torch.Tensor) and _storage_ptr(x) == ptr:
                return as_it_was(x)
            return x

        for record in holders:
            for values in (record._inputs, record._outputs):
                if not values:
                    continue
                for slot, value in enumerate(values):
                    if isinstance(value, torch.Tensor):
                        if _storage_ptr(value) == ptr:
                            values[slot] = as_it_was(value)
                            record.lazy = True
                    elif type(value) in _CONTAINER_TYPES:
                        new = map_leaves(value, on_storage)
                        if new is not value:
                            values[slot] = new
                            record.lazy = True
        return kept.get(id(t))

    def _snapshot(self, t: torch.Tensor):
        nbytes = t.numel() * t.element_size()
        if self.kept_bytes + self.record_bytes + nbytes > self.budget:
            return self._drop(t, reason="overwritten in place; over the record budget")
        self.snapshots += 1
        self.kept_bytes += nbytes
        copy = t.clone()
        self._refs[_storage_ptr(copy)] = []
        return copy

    def snapshot_input(self, t: torch.Tensor):
        """An in-place op's own input as it was before the op runs (a copy or a recipe)."""
        shared = self.before_write(t)
        if shared is not None:
            return shared  # what the earlier records were given for this very tensor: one serves all
        return self._snapshot(t)
