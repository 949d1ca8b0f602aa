"""The interpreter: frames, a program counter, stepping and breakpoints.

One ``step`` executes one node.  A ``prim::If``, a ``prim::Loop`` iteration
or a call is a step onto the first node inside it; ``step_over`` runs the
whole node.  ``prim::Constant`` nodes have no effect to watch, so they run
(and are recorded) on the way to the next node rather than as stops.

``step`` dispatches on the node's kind to one small method per family, the
way ``torch.fx.Interpreter.run_node`` does: leaf ops go to ``engine.formats.torchscript.ops``;
control flow, calls and attributes are the interpreter's own.

The machine executes in its own time; ``back`` and the forward moves that
follow it move a view cursor over the timeline's records instead, until the
view reaches the live head again.
"""

from __future__ import annotations

import gc
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch

from engine.run import stepper
from engine.errors import ModelError, TsdebugError, first_error_line
from engine.sources import is_torch_frame
from engine.ir import (AUTOCAST, CALL_MODULE, COND, INVOKE_SUBGRAPH, MAP, SET_GRAD, WHILE_LOOP, Block, Graph, Node,
                       SourceLoc, Value)
from engine.formats.torchscript.ops import ModelRaised
from engine.formats.torchscript.program import (ClassInstance, ObjectRef, Program, is_enum_type, is_script_class_copy, read_enum_attr,
                            read_object_attr, store_instance, write_object_attr)
from engine.run.recipes import AutocastRegion, Recompute, autocast_regions
from engine.run.timeline import DEFAULT_BUDGET, StepRecord, Timeline, container_copy
from engine.run.values import Dropped, iter_tensors, summarize

_perf_ns = time.perf_counter_ns


class Stop:
    """Why a run command returned."""

    STEP = "step"
    BREAKPOINT = "breakpoint"
    FINISHED = "finished"
    ERROR = "error"
    CANCELLED = "cancelled"
    HISTORY = "history"  # moved within recorded history


class Frame:
    """One method or function activation."""

    __slots__ = ("graph", "env", "module_path", "label", "paths", "start")

    def __init__(self, graph: Graph, module_path: str, label: str):
        self.graph = graph
        self.start = -1  # index of the record that entered this frame (-1: the top frame)
        self.env: list = [None] * graph.num_values
        self.module_path = module_path
        self.label = label
        # value index -> module path, for module objects fetched by GetAttr
        self.paths: dict[int, str] = {}


class Activation:
    """A block in progress: a method body, an If branch or a Loop iteration."""

    __slots__ = ("frame", "block", "pc", "kind", "owner", "record", "trip", "max_trip", "path", "t0", "carry")

    def __init__(self, frame: Frame, block: Block, kind: str, path: tuple, owner: Node | None = None,
                 record: StepRecord | None = None):
        self.frame = frame
        self.block = block
        self.pc = 0
        self.kind = kind  # "body", "then", "else", "loop"; "while-cond", "while-body", "map", "block"
        self.owner = owner
        self.record = record
        self.trip = 0
        self.max_trip = 0
        self.path = path
        self.t0 = 0
        self.carry: Any = None  # what a while_loop, map or grad/autocast block keeps between its blocks


@dataclass
class FrameInfo:
    """One line of the call stack as the UI shows it."""

    label: str
    module_path: str
    graph: Graph
    node: Node | None
    loops: list[int] = field(default_factory=list)
    start: int = -1  # index of the record that entered the frame


@dataclass
class Breakpoints:
    """Where ``continue_`` stops.

    ``nodes`` and ``kinds`` stop before the node runs; ``nan_inf`` and
    ``predicates`` (functions of the step record) stop after it ran.  A node
    breakpoint may carry a condition: a function of the machine, true to stop
    (``engine.run.evaluate.Condition`` reads a recorded step too, ``takes_record``).
    """

    nodes: dict[str, Callable | None] = field(default_factory=dict)
    kinds: set[str] = field(default_factory=set)
    nan_inf: bool = False
    predicates: list[Callable[[StepRecord], bool]] = field(default_factory=list)
    # ``file:line`` -> the node breakpoints set for it (``b file:line``), removed together
    lines: dict[str, list[str]] = field(default_factory=dict)

    def toggle_node(self, node_id: str) -> bool:
        if node_id in self.nodes:
            del self.nodes[node_id]
            for where, ids in list(self.lines.items()):
                if node_id in ids:
                    ids.remove(node_id)
                    if not ids:
                        del self.lines[where]
            return False
        self.nodes[node_id] = None
        return True

    def set_line(self, where: str, node_ids: list[str], condition: Callable | None = None) -> None:
        """Breakpoints on every node of a source line, listed (and removed) as one."""
        self.lines[where] = list(node_ids)
        for i in node_ids:
            self.nodes[i] = condition

    def remove_line(self, where: str) -> None:
        for i in self.lines.pop(where, []):
            self.nodes.pop(i, None)

    def toggle_kind(self, kind: str) -> bool:
        if kind in self.kinds:
            self.kinds.discard(kind)
            return False
        self.kinds.add(kind)
        return True

    def __bool__(self) -> bool:
        return bool(self.nodes or self.kinds or self.nan_inf or self.predicates)


def has_nan_inf(values: Iterable) -> bool:
    """Any NaN or Inf in these values: tensors, or the summaries of values dropped over the budget."""
    for v in values:
        for x in (v if type(v) in (list, tuple) else (v,)):
            if isinstance(x, Dropped) and (x.summary.nan or x.summary.inf):
                return True
        for t in iter_tensors(v):
            if (t.is_floating_point() or t.is_complex()) and t.numel() and not bool(torch.isfinite(t).all()):
                return True
    return False


class ModuleState:
    """What runs change in the loaded module, kept as it was, to put back before the next run.

    A model may write its buffers in place (BatchNorm's running statistics in
    training mode, a step counter) or set attributes; torch's run of the same
    inputs starts from the archive's state, so every engine run must too.
    Only what a run writes is kept: a copy of a tensor before its first
    write, an attribute's value before its first set.
    """

    def __init__(self) -> None:
        # storage pointer -> (the storage, a copy of its bytes): views of any shape restore whole
        self._storages: dict[int, tuple[Any, Any]] = {}
        self._attrs: dict[tuple, Any] = {}

    def before_tensor_write(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key not in self._storages:
            self._storages[key] = (storage, storage.clone())

    def before_setattr(self, obj: Any, name: str) -> None:
        key = (obj, name)
        if key not in self._attrs:
            try:
                self._attrs[key] = obj.getattr(name)
            except Exception:
                pass

    def restore(self) -> None:
        for storage, original in self._storages.values():
            storage.copy_(original)
        for (obj, name), value in self._attrs.items():
            try:
                obj.setattr(name, value)
            except Exception:
                pass


class Machine:
    """Executes one method of a program on one set of inputs.

    ``inline=True`` executes the inlined graph (no calls, module paths on
    each node) instead of the call tree.
    """

    def __init__(
        self,
        program: Program,
        inputs: tuple = (),
        *,
        method: str = "forward",
        inline: bool = False,
        grad: bool = False,
        budget: int = DEFAULT_BUDGET,
        breakpoints: Breakpoints | None = None,
        module_state: ModuleState | None = None,
        params: list | None = None,
    ):
        self.program = program
        self.params = params  # the method's parameters (engine.inputs.Param), for programs that take keywords
        self.module_state = module_state
        self.method = method
        self.inline = inline
        self.grad = grad
        self.budget = budget
        self.breakpoints = breakpoints if breakpoints is not None else Breakpoints()
        self.graph = program.root_graph(method, inlined=inline)
        self._leaf_ops = program.leaf_ops  # read directly on the hot path
        self._cancel = False
        self.restart(inputs)

    # ------------------------------------------------------------------ state

    def restart(self, inputs: tuple | None = None) -> None:
        """Back to the first node; new inputs if given."""
        if inputs is not None:
            self.inputs = tuple(inputs)
        self.timeline = Timeline(self.budget, Recompute(self.program, self.grad))
        self.stack: list[Activation] = []
        self.outputs: Any = None
        self.error: ModelError | None = None
        self.finished = False
        self.view: int | None = None
        self.stop_reason_detail = ""
        self._attr_overlay: dict[tuple, Any] = {}
        self._object_nodes: set[str] = set()  # GetAttr nodes that yield class objects
        self._autocast: list[AutocastRegion] = []  # open ``with torch.autocast(...)`` blocks, innermost last
        self._module_storages: set[int] = set()  # tensors read from module attributes
        self._grad_modes: list[bool] = []  # grad mode set by the blocks open now (wrap_with_set_grad_enabled)
        frame = Frame(self.graph, "", self.method)
        # the program binds its root graph's inputs: self and the inputs (an archive), or the
        # program's state and the flattened inputs (an exported program)
        values = self.program.bind(self.method, self.graph, self.inputs, self.params)
        for t in self.program.state_tensors():
            self._module_storages.add(t.untyped_storage().data_ptr())
            self.timeline.mark_free(t)
        for v, x in zip(self.graph.inputs, values):
            frame.env[v.index] = x
            if isinstance(x, torch._C.ScriptModule):
                frame.paths[v.index] = ""
                continue
            self.timeline.mark_free(x)
            for t in iter_tensors(x):
                self.timeline.mark_free(t)
        act = Activation(frame, self.graph.body, "body", (self.method,))
        self.stack.append(act)
        with self._context():
            self._settle()

    @property
    def state(self) -> str:
        if self.error is not None:
            return "error"
        if self.finished:
            return "finished"
        if self.view is not None:
            return "history"
        return "paused"

    @property
    def live_node(self) -> Node | None:
        """The node the machine will execute next."""
        if not self.stack:
            return None
        act = self.stack[-1]
        return act.block.nodes[act.pc] if act.pc < len(act.block.nodes) else None

    @property
    def current_node(self) -> Node | None:
        """The node under the cursor: the live node, or the viewed record's node."""
        if self.view is not None:
            return self.timeline[self.view].node
        return self.live_node

    @property
    def current_record(self) -> StepRecord | None:
        return self.timeline[self.view] if self.view is not None else None

    @property
    def current_frame(self) -> Frame | None:
        return self.stack[-1].frame if self.stack else None

    @property
    def current_path(self) -> tuple:
        if self.view is not None:
            return self.timeline[self.view].path
        return self.stack[-1].path if self.stack else ()

    def frames(self) -> list[FrameInfo]:
        """The live call stack, outermost first, each with its loop iterations."""
        out: list[FrameInfo] = []
        for act in self.stack:
            node = act.block.nodes[act.pc] if act.pc < len(act.block.nodes) else None
            if act.kind == "body":
                out.append(FrameInfo(act.frame.label, act.frame.module_path, act.frame.graph, node,
                                     start=act.frame.start))
            else:
                if act.kind in _LOOP_KINDS:
                    out[-1].loops.append(act.trip)
                out[-1].node = node
        return out

    def value(self, v: Value, frame: Frame | None = None) -> Any:
        """The live value of ``v`` in ``frame`` (default: the current one)."""
        frame = frame or self.current_frame
        if frame is None:
            raise KeyError(v)
        return frame.env[v.index]

    def last_record_of(self, node_id: str, before: int | None = None) -> StepRecord | None:
        """The latest record of a node (up to record ``before`` when given)."""
        return self.timeline.last_of(node_id, before)

    def cancel(self) -> None:
        """Ask a running ``continue_``/``run`` to stop at the next step (thread-safe)."""
        self._cancel = True

    def _context(self):
        return _ExecContext(self._grad_modes[-1] if self._grad_modes else self.grad)

    # --------------------------------------------------------------- execution

    def _settle(self) -> None:
        """Close finished blocks and run constants until the cursor is on a node."""
        stack = self.stack
        while stack:
            act = stack[-1]
            nodes = act.block.nodes
            if act.pc >= len(nodes):
                self._exit_block(act)
                continue
            node = nodes[act.pc]
            if node.kind == "prim::Constant":
                self._run_constant(act, node)
                continue
            return
        self.finished = True

    def _record(self, act: Activation, node: Node, inputs: list) -> StepRecord:
        frame = act.frame
        return StepRecord(0, node, act.path, node.module_path or frame.module_path, len(self.stack), inputs,
                          frame.start)

    def _exit_block(self, act: Activation) -> None:
        env = act.frame.env
        returns = [env[v.index] for v in act.block.returns]
        if act.kind in _BLOCK_ENDS:
            returns = _BLOCK_ENDS[act.kind](self, act, returns)
            if returns is None:  # the node goes on: another block or iteration
                return
        if act.kind == "loop":
            act.trip += 1
            cond, carried = returns[0], returns[1:]
            if cond and act.trip < act.max_trip:
                block = act.block
                env[block.params[0].index] = act.trip
                for v, x in zip(block.params[1:], carried):
                    env[v.index] = x
                act.pc = 0
                act.path = act.path[:-1] + (f"iter {act.trip}",)
                return
            returns = carried
        self.stack.pop()
        record = act.record
        if act.kind == "body" and not self.stack:
            self.outputs = self.program.outputs_of(self.method, returns)
            self._flush_attrs()
            return
        owner = act.owner
        if owner.kind == "prim::fork":
            returns = [_completed_future(returns[0] if len(returns) == 1 else tuple(returns))]
        parent = self.stack[-1]
        penv = parent.frame.env
        for i, x in zip(owner.out_idx, returns):
            penv[i] = x
        if record is not None:
            record.time_ns = _perf_ns() - act.t0
            record.status = "done"
            self.timeline.set_outputs(record, returns)  # a list of its own, built above
        for i in parent.block.frees[parent.pc]:
            penv[i] = None
        parent.pc += 1

    def user_location(self, node: Node) -> SourceLoc | None:
        """The node's source line, or, inside torch's own modules, the user's call site."""
        src = node.source
        if src is not None and src.file and not is_torch_frame(src.file):
            return src
        for act in reversed(self.stack):
            rec = act.record
            if act.kind == "body" and rec is not None:
                s = rec.node.source
                if s is not None and s.file and not is_torch_frame(s.file):
                    return s
        return src

    @staticmethod
    def _advance(act: Activation) -> None:
        """Past the current node: drop the values it was the last to use."""
        env = act.frame.env
        for i in act.block.frees[act.pc]:
            env[i] = None
        act.pc += 1

    def _fail(self, node: Node, exc: BaseException, record: StepRecord) -> None:
        msg = str(exc) if isinstance(exc, ModelRaised) else first_error_line(exc)
        enum = re.search(r"Enum<([\w.]+)>", msg)
        if enum is not None or (node.schema and "AnyEnumType" in node.schema):
            # torch hands a TorchScript enum to Python only as an instance of its Python class,
            # which a loaded archive does not bring along
            name = enum.group(1) if enum else "an enum"
            msg = f"the model uses the TorchScript enum {name}, which tsdebug cannot run yet ({msg})"
        baked = next((a for a in record.inputs if isinstance(a, torch.device) and a.type == "cuda"), None)
        if baked is not None and not torch.cuda.is_available():
            msg = (f"the graph has the device {baked} baked in (torch.jit.trace on a GPU records "
                   f"device=x.device as a constant) and this machine has no CUDA; re-export the model "
                   f"on the CPU or script it ({msg})")
        loc = self.user_location(node)
        module = record.module_path
        where = f" in {module}" if module else ""
        if loc is not None and loc.file:
            where += f" at {loc}"
        shapes = ", ".join(summarize(x).short() for x in record.inputs)
        if len(shapes) > 240:
            shapes = shapes[:239] + "…"
        detail = f"inputs: {shapes}"
        if node.schema:
            detail += f"; schema: {node.schema}"
        err = ModelError(f"{node.kind} (node {node.id}){where}: {msg}; {detail}", node=node, detail=detail)
        record.status = "error"
        record.error = err.message
        self.error = err

    def _run_leaf(self, act: Activation, node: Node) -> None:
        # The hot path: one call per executed op.
        frame = act.frame
        env = frame.env
        args = [env[i] for i in node.in_idx]
        op = self._leaf_ops.get(node) or self.program.leaf(node)
        writes = op.writes_now(args) if op.training_writes else op.writes
        rec_inputs = self._inputs_before_write(args, writes) if writes else args
        if op.mutates:
            # the op changes these lists or dicts: its record keeps them as they were
            self.timeline.note_mutation([args[i] for i in op.mutates])
            if rec_inputs is args:
                rec_inputs = list(args)
            for i in op.mutates:
                rec_inputs[i] = container_copy(args[i])
        record = StepRecord(0, node, act.path, node.module_path or frame.module_path, len(self.stack),
                            rec_inputs, frame.start)
        if writes:
            record.lazy = True  # its inputs may be recipes (``recipes.Overwritten``)
        t0 = _perf_ns()
        try:
            if self._autocast:
                record.autocast = tuple(self._autocast)
                with autocast_regions(record.autocast):
                    outs = op.run(args)
            else:
                outs = op.run(args)
        except Exception as exc:  # the model's own failure, shown on its node
            record.time_ns = _perf_ns() - t0
            self.timeline.add(record)
            self._fail(node, exc, record)
            return
        record.time_ns = _perf_ns() - t0
        for i, x in zip(node.out_idx, outs):
            env[i] = x
        record._outputs = outs
        self.timeline.add(record)
        for i in act.block.frees[act.pc]:
            env[i] = None
        act.pc += 1

    def _inputs_before_write(self, args: list, writes: tuple[int, ...]) -> list:
        """The op overwrites these inputs: the record keeps them as they were (copies or recipes)."""
        rec_inputs = list(args)
        for i in writes:
            a = args[i]
            if isinstance(a, torch.Tensor):
                if self.module_state is not None and a.untyped_storage().data_ptr() in self._module_storages:
                    self.module_state.before_tensor_write(a)  # a buffer or parameter of the module
                rec_inputs[i] = self.timeline.snapshot_input(a)
            elif isinstance(a, (list, tuple)):
                rec_inputs[i] = [self.timeline.snapshot_input(t) if isinstance(t, torch.Tensor) else t for t in a]
        return rec_inputs

    def _run_construct(self, act: Activation, node: Node) -> None:
        """``prim::ListConstruct``/``TupleConstruct``: a new list or tuple of the inputs.

        A traced conv net builds four such lists of constants per convolution
        (stride, padding, …): the leaf path's checks are not needed for them.
        """
        frame = act.frame
        env = frame.env
        args = [env[i] for i in node.in_idx]
        record = StepRecord(0, node, act.path, node.module_path or frame.module_path, len(self.stack), args,
                            frame.start)
        t0 = _perf_ns()
        value = args.copy() if node.kind == "prim::ListConstruct" else tuple(args)
        record.time_ns = _perf_ns() - t0
        env[node.out_idx[0]] = value
        record._outputs = [value]
        self.timeline.add(record)
        for i in act.block.frees[act.pc]:
            env[i] = None
        act.pc += 1

    def _run_constant(self, act: Activation, node: Node) -> None:
        # A constant's value is in the IR: nothing to record, nothing to watch.
        env = act.frame.env
        env[node.out_idx[0]] = node.attrs.get("value")
        for i in act.block.frees[act.pc]:  # _advance, inlined: half the nodes of a traced graph are constants
            env[i] = None
        act.pc += 1

    def _get_attr(self, obj: Any, name: str, node: Node) -> Any:
        if isinstance(obj, ObjectRef):
            return read_object_attr(self.program.attr_chains, obj, name, node.handle.output().type())
        key = (obj, name)
        value = self._attr_overlay.get(key) if self._attr_overlay else None
        if value is None:
            if node.id in self._object_nodes:
                return self._object_ref(obj, name, node)
            try:
                value = obj.getattr(name)
            except RuntimeError:
                ty = node.handle.output().type()
                if is_enum_type(ty):
                    return read_enum_attr(self.program.attr_chains, obj, (), name, ty)
                if "__torch__." not in node.outputs[0].type:  # not a class object
                    raise
                self._object_nodes.add(node.id)  # a class object torch cannot hand over
                return self._object_ref(obj, name, node)
            if is_script_class_copy(value):
                # a copy, not the object: refer to the object by its path instead
                self._object_nodes.add(node.id)
                return self._object_ref(obj, name, node)
            if isinstance(value, (list, dict)):
                # getattr hands out copies of containers; keep one, so that
                # mutations through it are seen by later reads.
                self._attr_overlay[key] = value
        return value

    @staticmethod
    def _object_ref(obj: Any, name: str, node: Node) -> ObjectRef:
        declared = node.outputs[0].type
        if declared.startswith("Optional[") and declared.endswith("]"):
            declared = declared[len("Optional["):-1]
        return ObjectRef(obj, ((name, node.handle.output().type()),), declared)

    def _flush_attrs(self) -> None:
        """Write mutated container attributes back into the module objects."""
        for (obj, name), value in self._attr_overlay.items():
            try:
                if self.module_state is not None:
                    self.module_state.before_setattr(obj, name)
                obj.setattr(name, value)
            except Exception:
                pass

    def _run_getattr(self, act: Activation, node: Node) -> None:
        frame = act.frame
        obj = frame.env[node.in_idx[0]]
        name = node.attrs["name"]
        record = StepRecord(0, node, act.path, node.module_path or frame.module_path, len(self.stack), [obj],
                            frame.start)
        t0 = _perf_ns()
        value = None
        if type(obj) is torch._C.ScriptModule and not self._attr_overlay:
            # A module's parameter, buffer or submodule: every layer of every model reads its
            # weights this way.  Anything else (a container, a class object, None, a failure)
            # takes _get_attr's way below.
            try:
                value = obj.getattr(name)
            except RuntimeError:
                pass
            if type(value) not in _MODULE_MEMBERS:
                value = None
        if value is None:
            try:
                value = self._get_attr(obj, name, node)
            except Exception as exc:
                self.timeline.add(record)
                self._fail(node, exc, record)
                return
        record.time_ns = _perf_ns() - t0
        out = node.out_idx[0]
        frame.env[out] = value
        record._outputs = [value]
        if isinstance(value, torch.Tensor):
            self._module_storages.add(self.timeline.add_module_tensor(record, value))
        else:
            if isinstance(value, torch._C.ScriptModule):
                parent = frame.paths.get(node.in_idx[0], frame.module_path)
                frame.paths[out] = f"{parent}.{name}" if parent else name
            self.timeline.add(record)
        env = frame.env  # what _advance does, inlined: a model reads its weights this way at every layer
        for i in act.block.frees[act.pc]:
            env[i] = None
        act.pc += 1

    def _run_setattr(self, act: Activation, node: Node) -> None:
        env = act.frame.env
        obj, value = env[node.in_idx[0]], env[node.in_idx[1]]
        name = node.attrs["name"]
        record = self._record(act, node, [obj, value])
        try:
            if isinstance(obj, ObjectRef):
                write_object_attr(self.program.attr_chains, obj, name, value, node.handle.inputsAt(1).type())
            elif isinstance(value, ClassInstance) and not isinstance(obj, ClassInstance):
                store_instance(obj, name, value)
            else:
                if self.module_state is not None and isinstance(obj, torch._C.ScriptModule):
                    self.module_state.before_setattr(obj, name)
                obj.setattr(name, value)
        except Exception as exc:
            self.timeline.add(record)
            self._fail(node, exc, record)
            return
        if isinstance(obj, ObjectRef):
            pass
        elif isinstance(value, (list, dict)):
            self._attr_overlay[(obj, name)] = value
        else:
            self._attr_overlay.pop((obj, name), None)
        record.outputs = []
        self.timeline.add(record)
        self._advance(act)

    def _enter(self, act: Activation, node: Node, block: Block, kind: str, inputs: list,
               frame: Frame | None = None, path: tuple | None = None) -> Activation:
        record = self._record(act, node, inputs)
        record.status = "entered"
        self.timeline.add(record)
        new = Activation(frame or act.frame, block, kind, path or act.path, owner=node, record=record)
        new.t0 = _perf_ns()
        self.stack.append(new)
        return new

    def _run_if(self, act: Activation, node: Node) -> None:
        cond = act.frame.env[node.in_idx[0]]
        branch = 0 if cond else 1
        self._enter(act, node, node.blocks[branch], "then" if branch == 0 else "else", [cond])

    def _run_loop(self, act: Activation, node: Node) -> None:
        env = act.frame.env
        args = [env[i] for i in node.in_idx]
        max_trip, cond, carried = args[0], args[1], args[2:]
        if not cond or max_trip <= 0:
            record = self._record(act, node, args)
            record.outputs = list(carried)
            self.timeline.add(record)
            for i, x in zip(node.out_idx, carried):
                env[i] = x
            self._advance(act)
            return
        body = node.blocks[0]
        new = self._enter(act, node, body, "loop", args, path=act.path + ("iter 0",))
        new.max_trip = max_trip
        env[body.params[0].index] = 0
        for v, x in zip(body.params[1:], carried):
            env[v.index] = x

    def _push_frame(self, act: Activation, node: Node, graph: Graph, args: list, module_path: str,
                    label: str, record_inputs: list) -> None:
        frame = Frame(graph, module_path, label)
        for v, x in zip(graph.inputs, args):
            frame.env[v.index] = x
        if graph.inputs and args and isinstance(args[0], torch._C.ScriptModule):
            frame.paths[graph.inputs[0].index] = module_path
        new = self._enter(act, node, graph.body, "body", record_inputs, frame=frame, path=act.path + (label,))
        frame.start = new.record.index

    def _run_call_method(self, act: Activation, node: Node) -> None:
        frame = act.frame
        args = [frame.env[i] for i in node.in_idx]
        obj = args[0]
        try:
            graph = self.program.callee_graph(node, obj)
        except TsdebugError as exc:
            record = self._record(act, node, args)
            self.timeline.add(record)
            self._fail(node, exc, record)
            return
        module_path = frame.paths.get(node.in_idx[0], frame.module_path)
        label = f"{module_path}.{node.callee}" if module_path else node.callee
        self._push_frame(act, node, graph, args, module_path, label, args)

    def _run_enter(self, act: Activation, node: Node) -> None:
        """``with obj:`` begins: ``prim::Enter`` calls ``obj.__enter__()`` (``torch.no_grad()`` in scripted code)."""
        obj = act.frame.env[node.in_idx[0]]
        region = AutocastRegion.of(obj)
        if region is not None:
            # TorchScript's executor rewrites the ops of an autocast block to cast as eager
            # autocast does; here they run under eager autocast itself
            self._autocast.append(region)
        self._call_object_method(act, node, obj, "__enter__", [obj])

    def _run_exit(self, act: Activation, node: Node) -> None:
        """``with obj:`` ends: ``prim::Exit`` calls ``obj.__exit__(None, None, None)``."""
        obj = act.frame.env[node.in_idx[0]]
        if self._autocast and AutocastRegion.of(obj) is not None:
            self._autocast.pop()
        self._call_object_method(act, node, obj, "__exit__", [obj, None, None, None])

    def _call_object_method(self, act: Activation, node: Node, obj: Any, method: str, args: list) -> None:
        frame = act.frame
        try:
            graph = self.program.method_graph(obj, method)
        except TsdebugError as exc:
            record = self._record(act, node, [obj])
            self.timeline.add(record)
            self._fail(node, exc, record)
            return
        args = (args + [None] * len(graph.inputs))[:len(graph.inputs)]
        own_path = frame.paths.get(node.in_idx[0])  # a module's path; a context object has none
        label = f"{own_path}.{method}" if own_path else graph.short_name
        self._push_frame(act, node, graph, args, own_path or frame.module_path, label, [obj])

    def _run_fork(self, act: Activation, node: Node) -> None:
        """``torch.jit.fork``: the forked graph runs here and now, as a call one can step into.

        Run in place of asynchronously: its result is what ``wait`` would
        return, and the inputs it reads are those the fork was given.  The
        node's output is a completed ``Future`` holding the result (see
        ``_exit_block``).
        """
        frame = act.frame
        args = [frame.env[i] for i in node.in_idx]
        try:
            # the path of the module handed to the fork (``torch.jit.fork(self.a, x)``): an inlined
            # forked graph names its modules from it
            graph = self.program.fork_graph(node, frame.paths.get(node.in_idx[0], frame.module_path)
                                            if node.in_idx else frame.module_path)
        except TsdebugError as exc:
            record = self._record(act, node, args)
            self.timeline.add(record)
            self._fail(node, exc, record)
            return
        new_frame = Frame(graph, frame.module_path, "fork")
        for v, i, x in zip(graph.inputs, node.in_idx, args):
            new_frame.env[v.index] = x
            if i in frame.paths:  # a module handed to the forked code keeps its path
                new_frame.paths[v.index] = frame.paths[i]
        new = self._enter(act, node, graph.body, "body", args, frame=new_frame, path=act.path + (graph.name,))
        new_frame.start = new.record.index

    def _run_call_function(self, act: Activation, node: Node) -> None:
        frame = act.frame
        args = [frame.env[i] for i in node.in_idx[1:]]
        try:
            graph = self.program.function_graph(node.callee)
        except TsdebugError as exc:
            record = self._record(act, node, args)
            self.timeline.add(record)
            self._fail(node, exc, record)
            return
        self._push_frame(act, node, graph, args, frame.module_path, graph.name, args)

    # -------------------------------------------- exported programs' module calls and subgraphs

    def _run_call_module(self, act: Activation, node: Node) -> None:
        """A module call regrouped from an exported program's flat graph: a frame like a method call's."""
        frame = act.frame
        args = [frame.env[i] for i in node.in_idx]
        try:
            graph = self.program.callee_graph(node, None)
        except TsdebugError as exc:
            record = self._record(act, node, args)
            self.timeline.add(record)
            self._fail(node, exc, record)
            return
        self._push_frame(act, node, graph, args, node.module_path, f"{node.module_path}.forward", args)

    @staticmethod
    def _bind(env: list, block: Block, values: Iterable) -> None:
        for v, x in zip(block.params, values):
            env[v.index] = x

    def _run_cond(self, act: Activation, node: Node) -> None:
        """``torch.cond(pred, true_fn, false_fn, operands)``: a step into the branch ``pred`` picks."""
        env = act.frame.env
        args = [env[i] for i in node.in_idx]
        branch = 0 if bool(args[0]) else 1
        block = node.blocks[branch]
        self._bind(env, block, args[1:])
        self._enter(act, node, block, "then" if branch == 0 else "else", args)

    def _run_while_loop(self, act: Activation, node: Node) -> None:
        """``while_loop(cond_fn, body_fn, carried, additional)``: the cond block, then the body while it is True.

        Each test of the condition and each iteration of the body is a block
        one steps into (``iter N`` in the path, like a ``prim::Loop``).
        """
        env = act.frame.env
        args = [env[i] for i in node.in_idx]
        n = node.attrs.get("carried", len(args))
        cond = node.blocks[0]
        new = self._enter(act, node, cond, "while-cond", args, path=act.path + ("iter 0",))
        new.carry = [args[:n], args[n:]]  # carried values, additional inputs (every block takes both)
        self._bind(env, cond, args)

    def _run_map(self, act: Activation, node: Node) -> None:
        """``map(fn, xs, *args)``: the body once per row of ``xs``, the results stacked."""
        env = act.frame.env
        args = [env[i] for i in node.in_idx]
        n = node.attrs.get("mapped", 1)
        xs, rest = args[:n], args[n:]
        rows = xs[0].shape[0] if xs and isinstance(xs[0], torch.Tensor) else 0
        body = node.blocks[0]
        if rows == 0:
            record = self._record(act, node, args)
            self.timeline.add(record)
            self._fail(node, ValueError("map over an empty dimension (torch.export does not allow it either)"),
                       record)
            return
        new = self._enter(act, node, body, "map", args, path=act.path + ("iter 0",))
        new.carry = (xs, rest, [], rows)
        self._bind(env, body, [x[0] for x in xs] + rest)

    def _run_subgraph_block(self, act: Activation, node: Node) -> None:
        """A subgraph run once: ``invoke_subgraph``, or a block with grad mode or autocast set."""
        env = act.frame.env
        args = [env[i] for i in node.in_idx]
        block = node.blocks[0]
        new = self._enter(act, node, block, "block", args)
        if node.kind == SET_GRAD:
            enabled = bool(node.attrs.get("grad_enabled"))
            self._grad_modes.append(enabled)
            torch.set_grad_enabled(enabled)
            new.carry = "grad"
        elif node.kind == AUTOCAST:
            device, dtype, enabled, _cache = node.attrs["autocast"]
            self._autocast.append(AutocastRegion(device, dtype, enabled))
            new.carry = "autocast"
        self._bind(env, block, args)

    def _step_live(self) -> None:
        act = self.stack[-1]
        node = act.block.nodes[act.pc]
        _HANDLERS.get(node.kind, Machine._run_leaf)(self, act, node)
        if self.error is None:
            self._settle()

    # ------------------------------------------------------------ public moves

    def _can_run(self) -> str | None:
        if self.error is not None:
            return Stop.ERROR
        if self.finished:
            return Stop.FINISHED
        return None

    def step(self) -> str:
        """Execute one node (entering blocks and calls)."""
        if self.view is not None:
            return self._history_forward(lambda rec, start: True)
        stop = self._can_run()
        if stop:
            return stop
        with self._context():
            self._step_live()
        return self._can_run() or Stop.STEP

    def step_over(self) -> str:
        """Execute the current node whole: a call, an If or a Loop included."""
        if self.view is not None:
            depth = self.timeline[self.view].depth
            return self._history_forward(lambda rec, start: rec.depth <= depth)
        stop = self._can_run()
        if stop:
            return stop
        depth = len(self.stack)
        return self._run_while(lambda: len(self.stack) > depth)

    def step_out(self) -> str:
        """Run until the current method returns (to the end in the top frame)."""
        if self.view is not None:
            self.view = None
        stop = self._can_run()
        if stop:
            return stop
        body = max(i for i, a in enumerate(self.stack) if a.kind == "body")
        return self._run_while(lambda: len(self.stack) > body)

    def continue_(self) -> str:
        """Run until a breakpoint, an error or the end."""
        if self.view is not None:
            hit = self.breakpoint_in_history(self.view + 1)
            if hit is not None:
                self.view = hit
                return Stop.BREAKPOINT
            self.view = None
        stop = self._can_run()
        if stop:
            return stop
        if not self.breakpoints:
            return self.run()  # nothing to stop at: the whole-run loop (engine.run._stepper's, where built)
        return self._run_while(lambda: True)

    def run_to(self, node_id: str) -> str:
        """Run until the cursor is on ``node_id`` (or a breakpoint, an error, the end)."""
        self.view = None
        stop = self._can_run()
        if stop:
            return stop
        return self._run_while(lambda: self.live_node is None or self.live_node.id != node_id)

    def go_to(self, node_id: str) -> str:
        """To the first time ``node_id`` runs: its first record (history) if it ran, else run until it is next.

        Stops on the way at breakpoints, as ``run_to`` does.  A node the run
        never reaches returns ``"never"``, the view back on the step the
        move started from (the run is recorded to its end).
        """
        for i in self.timeline.by_node.get(node_id, ()):
            if self._navigable(self.timeline[i]):
                self.view = i
                return Stop.HISTORY
        if self.view is not None:  # not recorded yet: from the live head
            self.view = None
        here = len(self.timeline)
        stop = self.run_to(node_id)
        if self.error is None and self.live_node is not None and self.live_node.id == node_id:
            return Stop.STEP
        if stop in (Stop.BREAKPOINT, Stop.CANCELLED):
            return stop
        if stop != Stop.ERROR:
            for i in range(here, len(self.timeline)):
                if self._navigable(self.timeline[i]):
                    self.view = i
                    break
            return "never"
        return stop

    def run(self) -> str:
        """Run to the end, ignoring breakpoints: the fast path for whole runs."""
        self.view = None
        stop = self._can_run()
        if stop:
            return stop
        self._cancel = False
        stack = self.stack
        handlers = _HANDLERS
        leaf = Machine._run_leaf
        with self._context():
            if stepper.ACTIVE:  # the same loop in C, for the common nodes (engine/run/stepper.py)
                if stepper.run(self):
                    return Stop.CANCELLED
            while stack and self.error is None:
                if self._cancel:
                    self._cancel = False
                    return Stop.CANCELLED
                act = stack[-1]
                nodes = act.block.nodes
                if act.pc >= len(nodes):
                    self._exit_block(act)
                    continue
                node = nodes[act.pc]
                handlers.get(node.kind, leaf)(self, act, node)
            if not stack:
                self.finished = True
        return self._can_run() or Stop.FINISHED

    def breakpoint_in_history(self, start: int = 0) -> int | None:
        """The first recorded step from ``start`` where a run would have stopped at a breakpoint.

        A node breakpoint's condition is read as it was before that step ran;
        ``stop_reason_detail`` says which breakpoint it was.
        """
        if not self.breakpoints:
            return None
        for i in range(max(start, 0), len(self.timeline)):
            rec = self.timeline[i]
            if not self._navigable(rec):
                continue
            if self._breaks_before(rec.node, rec):
                self.stop_reason_detail = self._break_detail(rec.node, "at")
                return i
            if self._breaks_after(rec, recorded=True):
                self.stop_reason_detail = self._break_detail(rec.node, "after")
                return i
        return None

    def _break_detail(self, node: Node, where: str) -> str:
        cond = self.breakpoints.nodes.get(node.id)
        error = getattr(cond, "error", "") if cond is not None else ""
        if error:
            return f"breakpoint {where} {node.id}: its condition failed ({error})"
        if cond is not None:
            return f"breakpoint {where} {node.id}: {cond}"
        return f"breakpoint {where} {node.kind} ({node.id})"

    def _breaks_before(self, node: Node, record: StepRecord | None = None) -> bool:
        """A breakpoint on ``node`` (about to run live, or as recorded in ``record``)."""
        bp = self.breakpoints
        if node.id in bp.nodes:
            cond = bp.nodes[node.id]
            if cond is None:
                return True
            try:
                # a Condition (engine.run.evaluate) reads a recorded step's values; a plain function sees the machine
                if record is not None and getattr(cond, "takes_record", False):
                    return bool(cond(self, record))
                return bool(cond(self))
            except Exception:  # a condition that cannot be read stops the run, and says so
                return True
        return node.kind in bp.kinds

    def _breaks_after(self, record: StepRecord | None, recorded: bool = False) -> bool:
        if record is None:
            return False
        bp = self.breakpoints
        # ``_outputs``: just computed, so live values; reading ``outputs`` would
        # also run the recipes of an in-place op's inputs.  A record read later
        # (``recorded``) may have been overwritten since: its ``outputs`` are as they were.
        outs = record.outputs if recorded else record._outputs
        if bp.nan_inf and outs and has_nan_inf(outs):
            return True
        for pred in bp.predicates:
            try:
                if pred(record):
                    return True
            except Exception:
                continue
        return False

    def _run_while(self, keep_going: Callable[[], bool]) -> str:
        """Step while ``keep_going()``; stop early at breakpoints, errors, the end."""
        self._cancel = False
        check_after = self.breakpoints.nan_inf or bool(self.breakpoints.predicates)
        check_before = bool(self.breakpoints.nodes or self.breakpoints.kinds)
        with self._context():
            while True:
                n_before = len(self.timeline)
                self._step_live()
                if self.error is not None:
                    return Stop.ERROR
                if check_after:
                    for rec in self.timeline.since(n_before):
                        if self._breaks_after(rec):
                            self.stop_reason_detail = self._break_detail(rec.node, "after")
                            return Stop.BREAKPOINT
                if self.finished:
                    return Stop.FINISHED
                if check_before and self._breaks_before(self.live_node):
                    self.stop_reason_detail = self._break_detail(self.live_node, "at")
                    return Stop.BREAKPOINT
                if not keep_going():
                    return Stop.STEP
                if self._cancel:
                    self._cancel = False
                    return Stop.CANCELLED

    # ------------------------------------------------------------------ history

    def _navigable(self, rec: StepRecord) -> bool:
        return rec.node.kind != "prim::Constant"

    def back(self) -> str:
        """Move the view one step back in the recorded history.

        Steps the timeline forgot (past the record budget) are not there to
        move to: at the first one still recorded, ``stop_reason_detail`` says
        which steps are gone.
        """
        start = len(self.timeline) if self.view is None else self.view
        first = self.timeline.first
        for i in range(start - 1, first - 1, -1):
            if self._navigable(self.timeline[i]):
                self.view = i
                return Stop.HISTORY
        if first:
            self.stop_reason_detail = self.timeline.forgotten_note()
        return Stop.HISTORY if self.view is not None else Stop.STEP

    def back_over(self) -> str:
        """One step back over a call, an If or a Loop as a whole: ``back`` to the previous step of
        this frame's block (or the block's own node, at its first step), as ``step_over`` goes forward."""
        if self.view is not None:
            depth = self.timeline[self.view].depth
            start = self.view
        else:
            depth = len(self.stack) or 1  # finished: back over the top frame's steps
            start = len(self.timeline)
        for i in range(start - 1, -1, -1):
            rec = self.timeline[i]
            if self._navigable(rec) and rec.depth <= depth:
                self.view = i
                return Stop.HISTORY
        return Stop.HISTORY if self.view is not None else Stop.STEP

    def _history_forward(self, accept: Callable[[StepRecord, int], bool], or_live: bool = False) -> str:
        start = self.view
        for i in range(start + 1, len(self.timeline)):
            rec = self.timeline[i]
            if self._navigable(rec) and accept(rec, start):
                self.view = i
                return Stop.HISTORY
        self.view = None  # back at the live head
        return Stop.STEP

    def go_live(self) -> None:
        self.view = None


#: What a GetAttr on a module yields in the common case, which needs none of _get_attr's checks.
_MODULE_MEMBERS = frozenset({torch.nn.Parameter, torch.Tensor, torch._C.ScriptModule})

#: One method per node family; everything else is a leaf op.  Plain functions,
#: not bound methods: a dict of bound methods on the machine would be a
#: reference cycle, and a finished run's tensors would wait for the cyclic
#: collector instead of being freed when the machine is dropped.
_HANDLERS: dict[str, Callable[[Machine, Activation, Node], None]] = {
    "prim::If": Machine._run_if,
    "prim::Loop": Machine._run_loop,
    "prim::CallMethod": Machine._run_call_method,
    "prim::CallFunction": Machine._run_call_function,
    "prim::fork": Machine._run_fork,
    "prim::Enter": Machine._run_enter,
    "prim::Exit": Machine._run_exit,
    "prim::GetAttr": Machine._run_getattr,
    "prim::SetAttr": Machine._run_setattr,
    "prim::Constant": Machine._run_constant,
    "prim::ListConstruct": Machine._run_construct,
    "prim::TupleConstruct": Machine._run_construct,
    CALL_MODULE: Machine._run_call_module,
    COND: Machine._run_cond,
    WHILE_LOOP: Machine._run_while_loop,
    MAP: Machine._run_map,
    SET_GRAD: Machine._run_subgraph_block,
    AUTOCAST: Machine._run_subgraph_block,
    INVOKE_SUBGRAPH: Machine._run_subgraph_block,
}


def _end_while_cond(machine: Machine, act: Activation, returns: list) -> list | None:
    """The condition of a ``while_loop`` was tested: into the body, or the loop's results."""
    carried, additional = act.carry
    if not bool(returns[0]):
        return list(carried)
    body = act.owner.blocks[1]
    act.block, act.kind, act.pc = body, "while-body", 0
    Machine._bind(act.frame.env, body, list(carried) + list(additional))
    return None


def _end_while_body(machine: Machine, act: Activation, returns: list) -> list | None:
    """An iteration of a ``while_loop`` ended: its results are the next test's inputs."""
    act.carry[0] = list(returns)
    act.trip += 1
    cond = act.owner.blocks[0]
    act.block, act.kind, act.pc = cond, "while-cond", 0
    act.path = act.path[:-1] + (f"iter {act.trip}",)
    Machine._bind(act.frame.env, cond, list(returns) + list(act.carry[1]))
    return None


def _end_map(machine: Machine, act: Activation, returns: list) -> list | None:
    """A row of a ``map`` is done: the next row, or the rows' results stacked."""
    xs, rest, outs, rows = act.carry
    outs.append(list(returns))
    act.trip += 1
    if act.trip < rows:
        act.pc = 0
        act.path = act.path[:-1] + (f"iter {act.trip}",)
        Machine._bind(act.frame.env, act.block, [x[act.trip] for x in xs] + list(rest))
        return None
    return [torch.stack([row[k] for row in outs]) for k in range(len(outs[0]))]


def _end_block(machine: Machine, act: Activation, returns: list) -> list | None:
    """A subgraph block ended: the grad mode or autocast it set is undone."""
    if act.carry == "grad":
        machine._grad_modes.pop()
        torch.set_grad_enabled(machine._grad_modes[-1] if machine._grad_modes else machine.grad)
    elif act.carry == "autocast":
        machine._autocast.pop()
    return returns


#: Activations that iterate: the call stack shows their trip count.
_LOOP_KINDS = frozenset({"loop", "while-cond", "while-body", "map"})

#: How the blocks of exported programs' higher-order ops end (``Machine._exit_block``).
_BLOCK_ENDS: dict[str, Callable[[Machine, Activation, list], list | None]] = {
    "while-cond": _end_while_cond,
    "while-body": _end_while_body,
    "map": _end_map,
    "block": _end_block,
}


stepper.configure(_HANDLERS, Machine._run_leaf, Machine._run_getattr, _MODULE_MEMBERS, Frame, Activation)


def _completed_future(value: Any) -> torch.futures.Future:
    """What ``prim::fork`` returns, made after the forked graph ran: ``aten::wait`` gives ``value``."""
    future: torch.futures.Future = torch.futures.Future()
    future.set_result(value)
    return future


class _ExecContext:
    """Grad mode, TorchScript's simple executor and no cyclic GC for one public call.

    Records are many small objects: the cyclic collector would rescan the
    whole timeline again and again as it grows (quadratic in the run's
    length), and they hold no cycles.  Collection resumes after the call.
    """

    __slots__ = ("grad", "_grad_prev", "_opt", "_gc_was_enabled")

    def __init__(self, grad: bool):
        self.grad = grad

    def __enter__(self):
        self._gc_was_enabled = gc.isenabled()
        gc.disable()
        self._grad_prev = torch.is_grad_enabled()
        torch.set_grad_enabled(self.grad)
        # The simple executor compiles one-node functions in ~50 us instead of ~6 ms.
        self._opt = torch.jit.optimized_execution(False)
        self._opt.__enter__()
        return self

    def __exit__(self, *exc):
        self._opt.__exit__(*exc)
        torch.set_grad_enabled(self._grad_prev)
        if self._gc_was_enabled:
            gc.enable()
        return False
