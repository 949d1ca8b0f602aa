"""Expressions over the values at a step: pdb's ``p expr``, watches, conditional breakpoints.

An expression is Python with ``%name`` standing for a value of the graph on
screen, by its TorchScript (or exported) name: ``%x.1.abs().max()``,
``torch.allclose(%a, %b)``.  A name is read as the longest run of
``[\\w.]`` after the ``%`` that is a value of the graph, so ``%x.1.abs()``
is the value ``x.1`` and then ``.abs()``.

What a name means is what the timeline holds for that value as of the step:
the output of the latest record of its node in the frame, the frame's
arguments for a graph input.  Tensors are handed to the expression as
clones, under ``torch.no_grad()``, so no expression can change what was
recorded.  The namespace holds ``torch``, ``math``, ``F``
(``torch.nn.functional``) and a few builtins; it is a convenience, not a
sandbox: whoever debugs a model already runs its code.
"""

from __future__ import annotations

import builtins
import difflib
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from engine.errors import TsdebugError, first_error_line
from engine.ir import Graph, Value, walk_block
from engine.run.values import Dropped, TensorSummary, ValueSummary

if TYPE_CHECKING:
    from engine.run.machine import Machine
    from engine.run.timeline import StepRecord

#: ``%`` and a run of name characters; the name itself is the longest prefix (at a dot) the graph has.
_REFERENCE = re.compile(r"%([A-Za-z0-9_][\w.]*)")

_SAFE_BUILTINS = {name: getattr(builtins, name) for name in (
    "abs", "all", "any", "bool", "dict", "divmod", "enumerate", "filter", "float", "int", "isinstance", "len",
    "list", "map", "max", "min", "pow", "range", "repr", "reversed", "round", "set", "slice", "sorted", "str",
    "sum", "tuple", "type", "zip", "True", "False", "None",
)}


class EvalError(TsdebugError):
    """An expression that cannot be read or evaluated: one line to show, and ``short``, a few words
    for where there is no room (a watch's row)."""

    def __init__(self, message: str, short: str = ""):
        super().__init__(message)
        self.short = short or message


@dataclass
class Scope:
    """The values of one frame's graph as of one step.

    ``start`` is the index of the record that entered the frame (-1: the top
    frame); records of this frame's activation come after it.  ``upto`` is
    the last record counted (None: the whole timeline, the live head).
    ``env`` is the live frame's environment when the scope is the live
    frame (loop counters and carried values are only there).
    """

    machine: "Machine"
    graph: Graph
    start: int = -1
    upto: int | None = None
    env: list | None = None
    activations: tuple = ()  # the live frame's blocks in progress (their loop counters)
    record: "StepRecord | None" = None  # the step the scope is at, in history (its path gives loop counters)

    def names(self) -> dict[str, Value]:
        """Value name -> value, for every value of the graph (inputs, block parameters, outputs)."""
        return value_names_in(self.graph)

    def value_of(self, name: str) -> Any:
        """What ``%name`` holds as of the step; EvalError says why there is nothing."""
        v = self.names().get(name)
        if v is None:
            raise EvalError(f"%{name}: no value of that name in {self.graph.short_name}{_did_you_mean(name, self.names())}",
                            f"%{name}: not in {self.graph.short_name}")
        m = self.machine
        node = self.graph.producer(v)
        if node is not None:
            if node.kind == "prim::Constant":
                return node.attrs.get("value")
            rec = m.timeline.last_of(node.id, self.upto)
            if rec is None or rec.index <= self.start:
                raise EvalError(f"%{name} is not computed yet at this step ({node.kind} {node.id} has not run)",
                                f"%{name}: not computed yet")
            outs = rec.outputs
            if outs is None:
                raise EvalError(f"%{name} is not computed yet: its {node.kind} is still running", f"%{name}: not computed yet")
            k = node.outputs.index(v)
            if k >= len(outs):
                raise EvalError(f"%{name}: {node.kind} {node.id} recorded no such output")
            return _kept(name, outs[k])
        # a graph input or a block parameter: no node made it
        if self.env is not None:
            x = self.env[v.index]
            if x is not None:
                return _kept(name, x)
        k = next((i for i, a in enumerate(self.graph.inputs) if a is v), None)
        if k is None:
            trip = self._loop_counter(v)
            if trip is not None:
                return trip
            read = self._read_in_iteration(v)
            if read is not None:
                return _kept(name, read[0])
            raise EvalError(f"%{name} is a block parameter (a loop counter or carried value): "
                            f"it is only known while its block runs, at the live step")
        if self.start >= 0:
            args = m.timeline[self.start].inputs
            if k < len(args):
                return _kept(name, args[k])
        elif self.graph is m.graph:
            bound = m.program.bind(m.method, m.graph, m.inputs, m.params)
            if k < len(bound):
                return _kept(name, bound[k])
        raise EvalError(f"%{name}: this frame's argument was not recorded")


    def _iteration_path(self, v: Value) -> tuple | None:
        """The frame path of the loop iteration ``v`` (a loop body's parameter) belongs to, at this step."""
        for act in reversed(self.activations):
            if act.kind == "loop" and v in act.block.params:
                return act.path
        rec = self.record
        if rec is None:
            return None
        owners, parent = _block_tree(self.graph)
        depth = 0  # loops passed, innermost first
        block = parent.get(rec.node.id)
        positions = [k for k, p in enumerate(rec.path) if isinstance(p, str) and p.startswith("iter ")]
        while block is not None:
            owner = owners.get(id(block))
            if owner is None:
                return None
            if owner.kind == "prim::Loop":
                if v in block.params:
                    return rec.path[:positions[-1 - depth] + 1] if depth < len(positions) else None
                depth += 1
            block = parent.get(owner.id)
        return None

    def _read_in_iteration(self, v: Value) -> tuple | None:
        """A loop-carried value as the latest step of its iteration that read it recorded it (a 1-tuple).

        The interpreter keeps a block's parameters only until their last use;
        a record keeps the inputs it read, as they were."""
        prefix = self._iteration_path(v)
        if prefix is None:
            return None
        tl = self.machine.timeline
        last = len(tl) - 1 if self.upto is None else self.upto
        if self.record is not None:
            last = max(last, self.record.index)  # the step's own inputs, read as it ran
        n = len(prefix)
        for i in range(last, self.start, -1):
            rec = tl[i]
            if rec.frame != self.start or tuple(rec.path[:n]) != tuple(prefix):
                if rec.frame == self.start and len(rec.path) <= n:
                    break  # out of the iteration: before it began
                continue
            for k, w in enumerate(rec.node.inputs):
                if w is v:
                    ins = rec.inputs
                    if k < len(ins):
                        return (ins[k],)
        return None

    def _loop_counter(self, v: Value) -> int | None:
        """A ``prim::Loop``'s iteration counter (its body's first parameter), when ``v`` is one in progress.

        The interpreter drops a counter the body never reads, as TorchScript
        does; the trip count is kept by the loop's activation, and in a
        record's path (``iter 2``)."""
        for act in reversed(self.activations):
            if act.kind == "loop" and act.block.params and act.block.params[0] is v:
                return act.trip
        rec = self.record
        if rec is None:
            return None
        owners, parent = _block_tree(self.graph)
        loops = []  # the loops around the record's node in its frame, innermost first
        block = parent.get(rec.node.id)
        while block is not None:
            owner = owners.get(id(block))
            if owner is None:
                break
            if owner.kind == "prim::Loop":
                loops.append(block)
            block = parent.get(owner.id)
        iters = [p for p in reversed(rec.path) if isinstance(p, str) and p.startswith("iter ")]
        for j, block in enumerate(loops):
            if block.params and block.params[0] is v and j < len(iters):
                return int(iters[j].split()[1])
        return None


def _block_tree(graph: Graph) -> tuple[dict, dict]:
    """id(block) -> the node owning it; node id -> the block holding it (worked out once a graph)."""
    got = graph.__dict__.get("_block_tree")
    if got is None:
        owners: dict[int, Any] = {}
        parent: dict[str, Any] = {}
        stack = [graph.body]
        while stack:
            block = stack.pop()
            for n in block.nodes:
                parent[n.id] = block
                for b in n.blocks:
                    owners[id(b)] = n
                    stack.append(b)
        got = graph.__dict__["_block_tree"] = (owners, parent)
    return got


def _kept(name: str, x: Any) -> Any:
    if isinstance(x, Dropped):
        raise EvalError(f"%{name} was not kept ({x.reason}; --record-budget keeps more): {x.summary.short()} "
                        f"{x.summary.stats_line()}".rstrip(), f"%{name}: not kept ({x.summary.short()})")
    if isinstance(x, (TensorSummary, ValueSummary)):
        raise EvalError(f"%{name} was not kept (only its summary): {x.short()}")
    return x


def _did_you_mean(name: str, names: dict) -> str:
    close = difflib.get_close_matches(name, list(names), n=3, cutoff=0.5)
    return f" (did you mean {', '.join('%' + c for c in close)}?)" if close else ""


def live_scope(machine: "Machine", frame_index: int | None = None) -> Scope | None:
    """The scope of the step on screen: the viewed record's frame in history, else a live frame
    (``frame_index`` into ``machine.frames()``, default the innermost)."""
    if machine.view is not None:
        rec = machine.timeline[machine.view]
        return record_scope(machine, rec, before=False)
    frames = machine.frames()
    if not frames:  # finished: the root graph as the run left it
        return Scope(machine, machine.graph, -1, None, None)
    idx = len(frames) - 1 if frame_index is None else frame_index
    bodies = [k for k, a in enumerate(machine.stack) if a.kind == "body"]
    if idx >= len(bodies):
        return Scope(machine, frames[idx].graph, frames[idx].start)
    first = bodies[idx]
    last = bodies[idx + 1] if idx + 1 < len(bodies) else len(machine.stack)
    acts = tuple(machine.stack[first:last])  # the frame's body and the blocks open in it
    return Scope(machine, frames[idx].graph, frames[idx].start, None, acts[0].frame.env, acts)


def record_scope(machine: "Machine", rec: "StepRecord", before: bool = True) -> Scope:
    """The scope of ``rec``'s frame just before it ran (``before``) or just after."""
    graph = machine.program.graph_of(rec.node.id) or machine.graph
    return Scope(machine, graph, rec.frame, rec.index - 1 if before else rec.index, record=rec)


@dataclass
class Expression:
    """An expression compiled once: its Python code and the value names it reads."""

    text: str
    code: Any
    references: tuple[tuple[str, str], ...]  # (value name, the identifier standing for it)

    def evaluate(self, scope: Scope) -> Any:
        """The value of the expression; EvalError (one line) when it cannot be had."""
        namespace: dict[str, Any] = {"__builtins__": _SAFE_BUILTINS, "torch": torch, "math": math,
                                     "F": torch.nn.functional}
        for name, ident in self.references:
            namespace[ident] = _private(scope.value_of(name))
        try:
            with torch.no_grad():
                return eval(self.code, namespace)
        except EvalError:
            raise
        except Exception as exc:
            raise EvalError(f"{self.text}: {type(exc).__name__}: {first_error_line(exc)}") from None


def _private(x: Any) -> Any:
    """A copy the expression may change freely: recorded tensors are cloned (in containers too)."""
    if isinstance(x, torch.Tensor):
        return x.detach().clone()
    if isinstance(x, list):
        return [_private(v) for v in x]
    if isinstance(x, tuple):
        return tuple(_private(v) for v in x)
    if isinstance(x, dict):
        return {k: _private(v) for k, v in x.items()}
    return x


def compile_expression(text: str, names: dict[str, Value] | None = None) -> Expression:
    """Read ``text``; ``%name`` references are matched against ``names`` when given (a graph's values),
    else a name runs to the last word character before an opening parenthesis or an operator."""
    text = text.strip()
    if not text:
        raise EvalError("an empty expression: type Python with %name for a value, e.g. %x.1.abs().max()")
    refs: dict[str, str] = {}
    out: list[str] = []
    pos = 0
    quoted = _string_spans(text)
    for m in _REFERENCE.finditer(text):
        if any(a <= m.start() < b for a, b in quoted):
            continue  # inside a string literal ('%d' % 3)
        out.append(text[pos:m.start()])
        run = m.group(1)
        name = _longest_name(run, names)
        ident = refs.get(name)
        if ident is None:
            ident = refs[name] = f"_v{len(refs)}"
        out.append(ident)
        pos = m.start() + 1 + len(name)
    out.append(text[pos:])
    source = "".join(out)
    try:
        code = compile(source, "<expression>", "eval")
    except SyntaxError as exc:
        raise EvalError(f"{text}: not a Python expression ({exc.msg})") from None
    return Expression(text, code, tuple(refs.items()))


def _string_spans(text: str) -> list[tuple[int, int]]:
    """Where the string literals of ``text`` are (character offsets); none if it does not tokenize."""
    import io
    import tokenize

    spans = []
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type == tokenize.STRING and tok.start[0] == tok.end[0] == 1:
                spans.append((tok.start[1], tok.end[1]))
    except (tokenize.TokenError, SyntaxError, IndentationError):
        pass
    return spans


def _longest_name(run: str, names: dict | None) -> str:
    """``x.1.abs`` -> ``x.1`` when the graph has ``x.1``; without names, digits after dots stay in the name."""
    parts = run.split(".")
    if names:
        for n in range(len(parts), 0, -1):
            cand = ".".join(parts[:n])
            if cand in names:
                return cand
    # no graph to ask: a TorchScript name is a word and numeric suffixes (x.1, input.5)
    n = 1
    while n < len(parts) and parts[n].isdigit():
        n += 1
    return ".".join(parts[:n])


def evaluate(text: str, scope: Scope) -> Any:
    """``text`` evaluated over ``scope``'s values (one call: compile and run)."""
    return compile_expression(text, scope.names()).evaluate(scope)


class Condition:
    """A breakpoint's condition: an expression true where the machine should stop.

    Called by the machine with itself (live: the frame about to run the
    node) or with a record (history: the frame as it was before that record
    ran).  A condition that raises stops the run, and says why in ``error``.
    """

    takes_record = True

    def __init__(self, text: str, names: dict[str, Value] | None = None):
        self.expression = compile_expression(text, names)
        self.text = self.expression.text
        self.error = ""

    def __call__(self, machine: "Machine", record: "StepRecord | None" = None) -> bool:
        scope = record_scope(machine, record) if record is not None else live_scope(machine)
        try:
            got = self.expression.evaluate(scope)
            self.error = ""
            if isinstance(got, torch.Tensor):
                if got.numel() != 1:
                    raise EvalError(f"{self.text}: gave a tensor of {got.numel()} elements, not one truth value "
                                    f"(use .any() or .all())")
                got = got.item()
            return bool(got)
        except EvalError as exc:
            self.error = exc.message
            raise

    def __str__(self) -> str:
        return self.text


def value_names_in(graph: Graph) -> dict[str, Value]:
    """Every value name of ``graph``: inputs, block parameters, node outputs (worked out once a graph)."""
    got = graph.__dict__.get("_values_by_name")
    if got is None:
        got = {v.name: v for v in graph.inputs}
        for v in graph.body.params:
            got.setdefault(v.name, v)
        for n in walk_block(graph.body):
            for v in n.outputs:
                got.setdefault(v.name, v)
            for b in n.blocks:
                for v in b.params:
                    got.setdefault(v.name, v)
        graph.__dict__["_values_by_name"] = got
    return got


def describe(value: Any, limit: int = 160) -> str:
    """An expression's value in one line, summarised as the inspector does tensors:
    a number as itself, a tensor as its shape, dtype and statistics (or its values, when a few)."""
    from engine.run.values import fmt_float, short_text, summarize_tensor

    if isinstance(value, torch.Tensor):
        if value.numel() == 1 and value.dim() == 0:
            x = value.item()
            shown = fmt_float(x) if isinstance(x, float) else repr(x)
            # a 0-d tensor is a number to whoever reads it; a dtype other than the usual is worth a word
            return shown if value.dtype in (torch.float32, torch.int64, torch.bool) else f"{shown} ({short_text(value)})"
        if 0 < value.numel() <= 8 and value.layout == torch.strided:
            items = ", ".join(fmt_float(v) if isinstance(v, float) else repr(v) for v in value.flatten().tolist())
            return f"{short_text(value)}  [{items}]"[:limit]
        s = summarize_tensor(value)
        return f"{s.short()}  {s.stats_line()}".rstrip()[:limit]
    if isinstance(value, float):
        return fmt_float(value)
    if isinstance(value, (bool, int, str, type(None))):
        return repr(value)[:limit]
    return short_text(value, limit)
