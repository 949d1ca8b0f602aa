"""Convert an ExportedProgram's ``torch.fx.Graph`` into ``engine.ir``.

An ExportedProgram is one flat graph: placeholders for the parameters,
buffers, constants and user inputs (the graph signature says which), then
``call_function`` nodes, then the output.  Conversion runs in two passes.

The first (``_FxReader``) reads the FX graph once into plain ``_Op``
records: each call becomes one op whose inputs are the FX nodes its
arguments mention (constants stay in the op's argument template, named by
the schema); ``operator.getitem`` on a multi-output op folds into that op's
outputs; higher-order ops with subgraphs (``cond``, ``while_loop``, ``map``,
``wrap_with_set_grad_enabled``, ``wrap_with_autocast``, ``invoke_subgraph``)
hold their subgraphs as nested blocks whose parameters are the subgraph's
placeholders.  Buffer and user-input mutations become ``aten::copy_.default``
writes before the return, as ``ep.module()`` does.

The second builds ``ir.Graph`` objects from those records, in one of two
views: the flat graph (``inlined``), or the call tree reconstructed from each
node's ``nn_module_stack`` (each run of nodes inside one module call becomes
a ``prim::CallModule`` node whose callee graph holds them, the way
``torch.export.unflatten`` rebuilds submodules), so stepping over a module
call, the call stack and module paths read as they do for a TorchScript
archive.
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx

from engine.errors import ArchiveError
from engine.ir import (AUTOCAST, CALL_MODULE, COND, INVOKE_SUBGRAPH, MAP, SET_GRAD, SUBGRAPH_KINDS, UNREAD,
                       WHILE_LOOP, Block, Graph, Node, SourceLoc, Value, last_uses)
from engine.sources import is_torch_frame, is_user_file

_FRAME = re.compile(r'^\s*File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<func>\S+)')


# ----------------------------------------------------------------- sources

def parse_stack_trace(text: str | None) -> SourceLoc | None:
    """An FX node's ``stack_trace`` (a Python traceback, outermost frame first) as a ``SourceLoc``.

    ``file``/``line`` is the innermost frame outside torch; ``stack`` lists
    the frames innermost first, as for a traced TorchScript node.
    """
    if not text:
        return None
    frames: list[tuple[str, int, str]] = []
    code: dict[int, str] = {}
    lines = text.splitlines()
    for i, ln in enumerate(lines):
        m = _FRAME.match(ln)
        if m:
            frames.append((m["file"], int(m["line"]), m["func"]))
            if i + 1 < len(lines) and not _FRAME.match(lines[i + 1]):
                code[len(frames) - 1] = lines[i + 1].strip()
    if not frames:
        return None
    pick = None
    for k in range(len(frames) - 1, -1, -1):
        if is_user_file(frames[k][0]):
            pick = k
            break
    if pick is None:
        pick = next((k for k in range(len(frames) - 1, -1, -1) if not is_torch_frame(frames[k][0])), len(frames) - 1)
    file, line, func = frames[pick]
    return SourceLoc(file=file, line=line, origin="exported", text=code.get(pick),
                     stack=tuple(reversed(frames)), function=func)


def _read_source(node: Node) -> SourceLoc | None:
    op = node.handle
    if op is None:
        return None
    if op.call_of is not None:
        return _call_site(op.call_of, op.stack)
    loc = parse_stack_trace(op.stack_trace)
    if (loc is None or not is_user_file(loc.file)) and op.fallback_trace:
        outer = parse_stack_trace(op.fallback_trace)  # a subgraph's node: the higher-order op's own line
        if outer is not None:
            return outer
    return loc


# ------------------------------------------------------------- module paths

_INDEX = re.compile(r"\[(?:'([^']*)'|\"([^\"]*)\"|(\d+))\]")


def module_path_of(path: str) -> str:
    """``L['self'].layers[0].conv`` or ``layers.0.conv`` -> ``layers.0.conv``."""
    path = path.strip()
    for root in ("L['self']", 'L["self"]', "L__self__", "self"):
        if path == root:
            return ""
        if path.startswith(root + "."):
            path = path[len(root) + 1:]
            break
        if path.startswith(root + "["):
            path = path[len(root):]
            break
    path = _INDEX.sub(lambda m: "." + (m.group(1) or m.group(2) or m.group(3)), path)
    path = path.replace("._modules.", ".").lstrip(".")
    return path


def short_type(type_name: str) -> str:
    """``torch.nn.modules.conv.Conv2d`` -> ``Conv2d``."""
    return type_name.rsplit(".", 1)[-1] if type_name else ""


def module_stack(meta: dict) -> tuple[tuple[str, str, str], ...]:
    """``nn_module_stack`` as ((key, path, type), ...), outermost first, the root left out."""
    stack = meta.get("nn_module_stack") or {}
    out = []
    for key, entry in stack.items():
        try:
            path, ty = entry[0], entry[1]
        except Exception:
            continue
        path = module_path_of(str(path))
        if not path:
            continue
        out.append((str(key), path, ty if isinstance(ty, str) else getattr(ty, "__qualname__", str(ty))))
    return tuple(out)


# --------------------------------------------------------------- first pass

class Ref:
    """In an argument template: the op's ``index``-th input value."""

    __slots__ = ("index",)

    def __init__(self, index: int):
        self.index = index

    def __repr__(self) -> str:
        return f"Ref({self.index})"


@dataclass(eq=False)
class _Op:
    """One node, read from FX: what the second pass builds an ``ir.Node`` from."""

    name: str  # the FX node's name: unique in its FX graph
    kind: str
    ins: list[int]  # value ids (global across the program)
    outs: list[int]
    attrs: dict[str, Any]
    schema: str | None
    stack: tuple[tuple[str, str, str], ...]
    stack_trace: str | None = None
    fallback_trace: str | None = None
    blocks: list["_Block"] = field(default_factory=list)
    target: Any = None  # what a leaf calls
    template: tuple = ((), {})  # (args, kwargs) with Ref(i) for inputs
    picks: tuple[int, ...] | None = None  # folded getitem indices: outputs are result[i] for these
    writes: tuple[int, ...] = ()  # inputs (positions in ins) whose tensors the op overwrites
    source_fn: str | None = None  # the torch function or module class the op came from
    call_of: "_Op | None" = None  # a module call: its first op, whose stack trace holds the call's line


@dataclass(eq=False)
class _Block:
    name: str
    params: list[int]
    ops: list[_Op]
    returns: list[int]


@dataclass
class _ValueInfo:
    name: str
    type: str


def _type_of(meta_val: Any) -> str:
    if isinstance(meta_val, torch.Tensor):
        return "Tensor"
    if isinstance(meta_val, torch.SymInt) or isinstance(meta_val, int) and not isinstance(meta_val, bool):
        return "int"
    if isinstance(meta_val, torch.SymFloat) or isinstance(meta_val, float):
        return "float"
    if isinstance(meta_val, torch.SymBool) or isinstance(meta_val, bool):
        return "bool"
    if isinstance(meta_val, (list, tuple)):
        inner = {_type_of(v) for v in meta_val}
        return f"{'List' if isinstance(meta_val, list) else 'Tuple'}[{inner.pop() if len(inner) == 1 else 'Any'}]"
    if meta_val is None:
        return "NoneType"
    return type(meta_val).__name__


def _callable_kind(target: Any) -> str:
    """``torch.ops.aten.add.Tensor`` -> ``aten::add.Tensor``; ``operator.mul`` -> ``operator::mul``."""
    if isinstance(target, torch._ops.OpOverload):
        ns, name = target._schema.name.split("::", 1)
        return f"{ns}::{name}.{target._overloadname}"
    if isinstance(target, torch._ops.OpOverloadPacket):
        return target._qualified_op_name
    if isinstance(target, torch._ops.HigherOrderOperator):
        return f"higher_order::{target.name()}"
    module = getattr(target, "__module__", None) or ""
    module = {"_operator": "operator", "builtins": "builtins"}.get(module, module)
    return f"{module or 'python'}::{getattr(target, '__name__', type(target).__name__)}"


#: Arguments a norm overwrites in training mode although its schema does not mark them (``aten::batch_norm``).
_RUNNING_STATS = ("running_mean", "running_var")
_TRAINING_FLAGS = ("training", "use_input_stats")


def _written_inputs(target: Any, args: tuple, kwargs: dict, refs: list) -> tuple[int, ...]:
    """Positions in the op's inputs whose tensors the op overwrites: ``Tensor(a!)`` in its schema, and
    a norm's running statistics when it runs in training mode."""
    if not isinstance(target, torch._ops.OpOverload):
        return ()
    out: list[int] = []
    schema_args = list(target._schema.arguments)

    def value_of(i: int, arg: Any) -> Any:
        return kwargs.get(arg.name) if arg.kwarg_only or i >= len(args) else args[i]

    training = next((value_of(i, a) for i, a in enumerate(schema_args) if a.name in _TRAINING_FLAGS), False)
    for i, arg in enumerate(schema_args):
        alias = arg.alias_info
        written = alias is not None and alias.is_write
        if not written and arg.name in _RUNNING_STATS and training is not False:
            written = True  # True, or decided at run time (a Ref): keep a copy either way
        if not written:
            continue
        for r in _refs_in(value_of(i, arg)):
            out.append(r.index)
    return tuple(sorted(set(out)))


def _shape_text(val: Any) -> str | None:
    """An output's ``val`` as the exported graph knows it: ``float32[s77,4,8,8]`` (symbols kept)."""
    if isinstance(val, torch.Tensor):
        return f"{str(val.dtype).replace('torch.', '')}[{','.join(str(d) for d in val.shape)}]"
    if isinstance(val, (torch.SymInt, torch.SymFloat, torch.SymBool)):
        return str(val)
    return None


def _refs_in(value: Any):
    if isinstance(value, Ref):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _refs_in(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _refs_in(v)


def named_constants(target: Any, args: tuple, kwargs: dict) -> dict[str, Any]:
    """The op's constant arguments by their schema names (what the program pane shows inline)."""
    out: dict[str, Any] = {}
    schema_args = list(target._schema.arguments) if isinstance(target, torch._ops.OpOverload) else []
    for i, a in enumerate(args):
        name = schema_args[i].name if i < len(schema_args) else f"arg{i}"
        if not any(True for _ in _refs_in(a)):
            out[name] = a
    for k, v in kwargs.items():
        if not any(True for _ in _refs_in(v)):
            out[k] = v
    return out


class _FxReader:
    """First pass: FX nodes to ``_Op`` records, values numbered across the whole program."""

    def __init__(self, ep: Any):
        self.ep = ep
        self.root = ep.graph_module
        self.values: list[_ValueInfo] = []

    def new_value(self, name: str, ty: str) -> int:
        self.values.append(_ValueInfo(name, ty))
        return len(self.values) - 1

    def read_graph(self, gm: torch.fx.GraphModule, name: str, outer_trace: str | None = None,
                   params: list[int] | None = None) -> _Block:
        """One FX graph as a block; ``params``: value ids its placeholders take (new ones when None)."""
        graph = gm.graph
        env: dict[torch.fx.Node, Any] = {}
        block_params: list[int] = []
        ops: list[_Op] = []
        returns: list[int] = []
        folded = self._folded(graph)
        placeholders = [n for n in graph.nodes if n.op == "placeholder"]
        for k, n in enumerate(placeholders):
            if params is not None and k < len(params):
                vid = params[k]
            else:
                vid = self.new_value(n.name, _type_of(n.meta.get("val")))
            env[n] = vid
            block_params.append(vid)
        for n in graph.nodes:
            if n.op == "placeholder":
                continue
            if n.op == "get_attr":
                env[n] = ("attr", n.target)
                continue
            if n.op == "output":
                flat = torch.fx.node.map_arg(n.args[0], lambda x: x)
                for x in _flatten(flat):
                    if isinstance(x, torch.fx.Node):
                        returns.append(self._value_of(env, x, ops, n, gm))
                    else:
                        returns.append(self._constant(ops, x, n.name, outer_trace))
                continue
            if n.op == "call_function" and n.target is operator.getitem and n.args[0] in folded:
                producer_op, positions = env[n.args[0]]
                env[n] = producer_op.outs[positions[n.args[1]]]
                continue
            if n.op != "call_function":
                raise ArchiveError(f"the exported graph has a {n.op} node ({n.name}), which tsdebug cannot run; "
                                   "export with torch.export.export (not a traced fx.GraphModule)")
            op = self._call(n, env, gm, outer_trace, folded.get(n))
            ops.append(op)
            if n in folded:
                env[n] = (op, {idx: k for k, idx in enumerate(folded[n])})
            else:
                env[n] = op.outs[0]
        return _Block(name, block_params, ops, returns)

    def _folded(self, graph: torch.fx.Graph) -> dict[torch.fx.Node, tuple[int, ...]]:
        """Multi-output nodes whose every use is ``getitem(node, int)``: their outputs are those items."""
        out = {}
        for n in graph.nodes:
            if n.op != "call_function" or n.target is operator.getitem or not n.users:
                continue
            if all(u.op == "call_function" and u.target is operator.getitem and u.args[0] is n
                   and isinstance(u.args[1], int) and not u.kwargs for u in n.users):
                out[n] = tuple(sorted({u.args[1] for u in n.users}))
        return out

    def _value_of(self, env: dict, x: torch.fx.Node, ops: list, at: torch.fx.Node, gm: Any) -> int:
        got = env[x]
        if isinstance(got, int):
            return got
        if isinstance(got, tuple) and got and got[0] == "attr":  # a tensor attribute read by get_attr
            value = _fetch_attr(gm, got[1])
            vid = self._constant(ops, value, x.name, None)
            env[x] = vid
            return vid
        raise ArchiveError(f"the exported graph uses {x.name} as a value at {at.name}; tsdebug cannot run it")

    def _constant(self, ops: list, value: Any, name: str, trace: str | None) -> int:
        vid = self.new_value(name, _type_of(value))
        ops.append(_Op(name=f"{name}_const", kind="prim::Constant", ins=[], outs=[vid], attrs={"value": value},
                       schema=None, stack=(), stack_trace=trace))
        return vid

    def _template(self, value: Any, env: dict, ins: list, ops: list, gm: Any, at: torch.fx.Node) -> Any:
        if isinstance(value, torch.fx.Node):
            ins.append(self._value_of(env, value, ops, at, gm))
            return Ref(len(ins) - 1)
        if isinstance(value, (list, tuple)):
            items = [self._template(v, env, ins, ops, gm, at) for v in value]
            return items if isinstance(value, list) else tuple(items)
        if isinstance(value, dict):
            return {k: self._template(v, env, ins, ops, gm, at) for k, v in value.items()}
        return value

    def _call(self, n: torch.fx.Node, env: dict, gm: Any, outer_trace: str | None,
              picks: tuple[int, ...] | None) -> _Op:
        target = n.target
        kind = _callable_kind(target)
        meta = n.meta
        stack_trace = meta.get("stack_trace")
        source_fn = None
        if meta.get("source_fn_stack"):
            try:
                source_fn = str(meta["source_fn_stack"][-1][1])
            except Exception:
                source_fn = None
        elif meta.get("torch_fn"):
            try:
                source_fn = str(meta["torch_fn"][1])
            except Exception:
                source_fn = None
        stack = module_stack(meta)
        ops_before: list[_Op] = []
        if kind in SUBGRAPH_KINDS:
            op = self._higher_order(n, kind, env, gm, ops_before, stack_trace or outer_trace)
        else:
            ins: list[int] = []
            args = self._template(tuple(n.args), env, ins, ops_before, gm, n)
            kwargs = self._template(dict(n.kwargs), env, ins, ops_before, gm, n)
            schema = str(target._schema) if isinstance(target, torch._ops.OpOverload) else None
            op = _Op(name=n.name, kind=kind, ins=ins, outs=[], attrs={"arguments": named_constants(target, args, kwargs)},
                     schema=schema, stack=stack, target=target, template=(args, kwargs),
                     writes=_written_inputs(target, args, kwargs, ins))
        op.stack = stack
        op.stack_trace = stack_trace
        op.fallback_trace = outer_trace
        op.source_fn = source_fn
        val = meta.get("val")
        shapes = [_shape_text(v) for v in (val if isinstance(val, (list, tuple)) else [val])]
        if picks is not None:
            shapes = [shapes[i] if i < len(shapes) else None for i in picks]
        if any(shapes) and any(s and any(c.isalpha() for c in s.split("[", 1)[-1]) for s in shapes):
            op.attrs["symbolic_shape"] = ", ".join(s or "?" for s in shapes)  # only where a dim is a symbol
        if picks is not None:
            op.picks = picks
            vals = val if isinstance(val, (list, tuple)) else [None] * (max(picks) + 1)
            users = {u.args[1]: u.name for u in n.users}
            op.outs = [self.new_value(users.get(i, f"{n.name}_{i}"), _type_of(vals[i] if i < len(vals) else None))
                       for i in picks]
        elif not op.outs:
            op.outs = [self.new_value(n.name, _type_of(val))]
        return _with_pending(op, ops_before)  # constants the template needed (tensor attributes) go first

    def _subgraph(self, env: dict, x: Any, gm: Any) -> torch.fx.GraphModule:
        got = env.get(x) if isinstance(x, torch.fx.Node) else None
        if isinstance(got, tuple) and got and got[0] == "attr":
            sub = _fetch_attr(gm, got[1])
            if isinstance(sub, torch.fx.GraphModule):
                return sub
        raise ArchiveError(f"a higher-order op's subgraph ({x}) is not a graph module; tsdebug cannot step it")

    def _refs(self, values: Any, env: dict, ops: list, gm: Any, at: torch.fx.Node) -> list[int]:
        out = []
        for v in _flatten(values):
            if isinstance(v, torch.fx.Node):
                out.append(self._value_of(env, v, ops, at, gm))
            else:
                out.append(self._constant(ops, v, f"{at.name}_arg{len(out)}", None))
        return out

    def _higher_order(self, n: torch.fx.Node, kind: str, env: dict, gm: Any, ops: list,
                      trace: str | None) -> _Op:
        args = n.args
        attrs: dict[str, Any] = {}
        blocks: list[_Block] = []
        if kind == COND:
            pred, true_fn, false_fn, operands = args[:4]
            ins = self._refs([pred], env, ops, gm, n) + self._refs(operands, env, ops, gm, n)
            for j, fn in enumerate((true_fn, false_fn)):
                blocks.append(self.read_graph(self._subgraph(env, fn, gm), f"b{j}", trace))
        elif kind == WHILE_LOOP:
            cond_fn, body_fn, carried, additional = args[:4]
            ins = self._refs(carried, env, ops, gm, n) + self._refs(additional, env, ops, gm, n)
            attrs["carried"] = len(_flatten(carried))
            blocks.append(self.read_graph(self._subgraph(env, cond_fn, gm), "cond", trace))
            blocks.append(self.read_graph(self._subgraph(env, body_fn, gm), "body", trace))
        elif kind == MAP:
            fn, xs, pos = args[:3]
            ins = self._refs(xs, env, ops, gm, n) + self._refs(pos, env, ops, gm, n)
            attrs["mapped"] = len(_flatten(xs))
            blocks.append(self.read_graph(self._subgraph(env, fn, gm), "body", trace))
        elif kind == SET_GRAD:
            enabled, fn, *rest = args
            attrs["grad_enabled"] = bool(enabled)
            ins = self._refs(rest, env, ops, gm, n)
            blocks.append(self.read_graph(self._subgraph(env, fn, gm), "body", trace))
        elif kind == AUTOCAST:
            device_type, dtype, enabled, cache_enabled, fn, *rest = args
            attrs["autocast"] = (device_type, dtype, bool(enabled), bool(cache_enabled))
            ins = self._refs(rest, env, ops, gm, n)
            blocks.append(self.read_graph(self._subgraph(env, fn, gm), "body", trace))
        else:  # INVOKE_SUBGRAPH
            fn, identifier, *operands = args
            attrs["identifier"] = identifier
            ins = self._refs(operands, env, ops, gm, n)
            blocks.append(self.read_graph(self._subgraph(env, fn, gm), "body", trace))
        return _Op(name=n.name, kind=kind, ins=ins, outs=[], attrs=attrs, schema=None, stack=(), blocks=blocks)


def _with_pending(op: _Op, before: list[_Op]) -> _Op:
    op._before = before  # type: ignore[attr-defined]
    return op


def _flatten(value: Any) -> list:
    if isinstance(value, (list, tuple)):
        out = []
        for v in value:
            out.extend(_flatten(v))
        return out
    return [value]


def _fetch_attr(gm: Any, target: str) -> Any:
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


# ------------------------------------------------------ mutations and signature

@dataclass
class Signature:
    """What the placeholders and outputs of the root graph are (from ``ep.graph_signature``)."""

    inputs: list[tuple[str, str, str | None]]  # (placeholder, kind, target): kind in parameter, buffer, ...
    user_inputs: list[str]  # placeholders of user inputs, in order
    outputs: list[tuple[str, str, str | None]]  # (output index name, kind, target)


def read_signature(ep: Any) -> Signature:
    sig = ep.graph_signature
    kinds = {"PARAMETER": "parameter", "BUFFER": "buffer", "CONSTANT_TENSOR": "constant",
             "CUSTOM_OBJ": "object", "USER_INPUT": "user input", "TOKEN": "token"}
    inputs = []
    for spec in sig.input_specs:
        name = getattr(spec.arg, "name", None) or str(spec.arg)
        inputs.append((name, kinds.get(spec.kind.name, spec.kind.name.lower()), spec.target))
    outputs = []
    for spec in sig.output_specs:
        name = getattr(spec.arg, "name", None) or str(spec.arg)
        outputs.append((name, spec.kind.name.lower(), spec.target))
    return Signature(inputs, [n for n, k, _ in inputs if k == "user input"], outputs)


def read_program(ep: Any) -> tuple[_Block, list[_ValueInfo], Signature]:
    """First pass over the whole program; the root block's returns are the user outputs only, the
    mutated buffers and inputs written back first with ``copy_`` as ``ep.module()`` does."""
    reader = _FxReader(ep)
    root = reader.read_graph(ep.graph_module, "forward")
    root.ops = _expand_pending(root.ops)
    signature = read_signature(ep)
    by_placeholder = dict(zip([n for n, _k, _t in signature.inputs], root.params))
    target_placeholder = {t: n for n, k, t in signature.inputs if t is not None}
    user_returns: list[int] = []
    for (name, kind, target), vid in zip(signature.outputs, root.returns):
        if kind in ("buffer_mutation", "user_input_mutation"):
            dest = target_placeholder.get(target) if kind == "buffer_mutation" else target
            dest_vid = by_placeholder.get(dest) if dest is not None else None
            if dest_vid is None:
                raise ArchiveError(f"the program mutates {target!r}, which is not among its inputs; "
                                   "tsdebug cannot run it")
            out = reader.new_value(f"{name}_written", "Tensor")
            root.ops.append(_Op(name=f"copy_{name}", kind="aten::copy_.default", ins=[dest_vid, vid], outs=[out],
                                attrs={"arguments": {}, "writes_back": kind.replace("_", " ")},
                                schema=str(torch.ops.aten.copy_.default._schema), stack=(),
                                target=torch.ops.aten.copy_.default, template=((Ref(0), Ref(1)), {}), writes=(0,)))
        elif kind in ("user_output", "loss_output"):
            user_returns.append(vid)
        else:
            raise ArchiveError(f"the program returns a {kind.replace('_', ' ')} ({name}); tsdebug runs inference "
                               "programs (export without the joint graph)")
    root.returns = user_returns
    _expand_blocks(root)
    return root, reader.values, signature


def _expand_pending(ops: list[_Op]) -> list[_Op]:
    out: list[_Op] = []
    for op in ops:
        out.extend(getattr(op, "_before", ()))
        out.append(op)
    return out


def _expand_blocks(block: _Block) -> None:
    block.ops = _expand_pending(block.ops)
    for op in block.ops:
        for b in op.blocks:
            _expand_blocks(b)


# -------------------------------------------------------------- second pass

class _Numbering:
    """Dense value indices of one ir.Graph (a frame's environment)."""

    def __init__(self, infos: list[_ValueInfo]):
        self.infos = infos
        self.index: dict[int, Value] = {}

    def value(self, vid: int) -> Value:
        got = self.index.get(vid)
        if got is None:
            info = self.infos[vid]
            got = self.index[vid] = Value(index=len(self.index), name=info.name, type=info.type)
        return got


@dataclass
class Built:
    """The graphs of one view, and what the program needs to run them."""

    root: Graph
    callees: dict[Node, Graph]
    module_types: dict[str, str]  # module path -> class name


class GraphBuilder:
    """Second pass: ``ir.Graph`` objects from the ``_Op`` records, flat or as a call tree.

    ``state`` maps the value ids of the program's own placeholders
    (parameters, buffers, constants) to their values: each graph that reads
    one holds it as a ``prim::Constant`` (named by its place in the module,
    ``layers.0.conv.weight``), as an archive's graph reads its weights from
    ``self``, so module calls pass activations only and the root graph's
    inputs are the user's.
    """

    def __init__(self, root: _Block, infos: list[_ValueInfo], state: dict[int, Any] | None = None,
                 method: str = "forward"):
        self.root = root
        self.infos = infos
        self.state = state or {}
        self.method = method
        self.module_types: dict[str, str] = {}

    def build(self, inlined: bool) -> Built:
        self.callees: dict[Node, Graph] = {}
        self.call_counts: dict[str, int] = {}  # how often each call id was made: reused modules' calls numbered
        self.inlined = inlined
        numbering = _Numbering(self.infos)
        name = f"{self.method}[inlined]" if inlined else self.method
        body = self._block(self.root, numbering, name, self.method, base=(), graph_body=True)
        graph = Graph(name=name, qualname=self.method, inputs=body.params, outputs=body.returns, body=body,
                      num_values=len(numbering.index), inlined=inlined)
        graph.origin = "exported"
        return Built(graph, self.callees, self.module_types)

    def _node(self, op: _Op, numbering: _Numbering, node_id: str, blocks: tuple[Block, ...] = ()) -> Node:
        inputs = tuple(numbering.value(v) for v in op.ins)
        outputs = tuple(numbering.value(v) for v in op.outs)
        module_path = op.stack[-1][1] if op.stack else ""
        for _key, path, ty in op.stack:
            self.module_types.setdefault(path, ty)
        attrs = dict(op.attrs)
        if op.source_fn:
            attrs.setdefault("source_fn", op.source_fn)
        return Node(id=node_id, kind=op.kind, inputs=inputs, outputs=outputs, attrs=attrs, blocks=blocks,
                    schema=op.schema, source_cell=[UNREAD, _read_source], module_path=module_path, callee=None,
                    in_idx=tuple(v.index for v in inputs), out_idx=tuple(v.index for v in outputs), handle=op)

    def _leaf_or_hop(self, op: _Op, numbering: _Numbering, prefix: str, base: tuple) -> Node:
        node_id = f"{prefix}/{op.name}"
        blocks = tuple(self._block(b, numbering, f"{node_id}/{b.name}", f"{node_id}/{b.name}", base=base)
                       for b in op.blocks)
        return self._node(op, numbering, node_id, blocks)

    def _state_reads(self, ops: list[_Op], numbering: _Numbering, prefix: str) -> list[Node]:
        """A ``prim::Constant`` for each of the program's own values these ops read (see the class)."""
        out = []
        seen: set[int] = set()
        for op in ops:
            for v in _reads(op):
                if v in self.state and v not in seen:
                    seen.add(v)
                    value = numbering.value(v)
                    out.append(Node(id=f"{prefix}/{value.name}", kind="prim::Constant", inputs=(), outputs=(value,),
                                    attrs={"value": self.state[v], "state": True}, blocks=(), schema=None,
                                    source_cell=[None], module_path="", callee=None, in_idx=(),
                                    out_idx=(value.index,), handle=None))
        return out

    def _block(self, block: _Block, numbering: _Numbering, block_id: str, prefix: str, base: tuple,
               graph_body: bool = False) -> Block:
        params = tuple(numbering.value(v) for v in block.params if v not in self.state)
        state = self._state_reads(block.ops, numbering, prefix) if graph_body else []
        if self.inlined:
            nodes = tuple(state) + tuple(self._leaf_or_hop(op, numbering, prefix, base) for op in block.ops)
        else:
            nodes = tuple(state) + tuple(self._scoped(block.ops, numbering, prefix, base, set(block.returns)))
        returns = tuple(numbering.value(v) for v in block.returns)
        return Block(id=block_id, params=params, nodes=nodes, returns=returns,
                     frees=last_uses(params, nodes, returns))

    # -- the call tree

    def _scoped(self, ops: list[_Op], numbering: _Numbering, prefix: str, base: tuple,
                used_after: set[int]) -> list[Node]:
        """``ops`` in one block, grouped into module calls below the scope ``base``."""
        depth = len(base)
        out: list[Node] = []
        i = 0
        while i < len(ops):
            op = ops[i]
            scope = _scope_key(op, depth)
            if op.kind == "prim::Constant" or scope is None:
                out.append(self._leaf_or_hop(op, numbering, prefix, base))
                i += 1
                continue
            j = i + 1
            while j < len(ops) and (_scope_key(ops[j], depth) == scope or
                                    (ops[j].kind == "prim::Constant" and j + 1 < len(ops)
                                     and _scope_key(ops[j + 1], depth) == scope)):
                j += 1
            later = set(used_after)
            for later_op in ops[j:]:
                later.update(_reads(later_op))
            out.append(self._call(ops[i:j], numbering, prefix, base + (scope,), later))
            i = j
        return out

    def _call(self, ops: list[_Op], numbering: _Numbering, prefix: str, scope: tuple, used_after: set[int]) -> Node:
        key, path, ty = scope[-1]
        self.module_types.setdefault(path, ty)
        defined: set[int] = set()
        reads: list[int] = []
        for op in ops:
            for v in _reads(op):
                if v not in defined and v not in reads and v not in self.state:
                    reads.append(v)
            defined.update(_defines(op))
        results = [v for v in _ordered_defines(ops) if v in used_after]
        inner = _Numbering(self.infos)
        graph_name = f"{short_type(ty) or path}.{self.method}"
        node_id = f"{prefix}/@{path}"
        # a module called twice (one pooling layer reused) gets its calls numbered: ids stay unique
        calls = self.call_counts
        calls[node_id] = calls.get(node_id, 0) + 1
        if calls[node_id] > 1:
            node_id = f"{node_id}#{calls[node_id]}"
        body_ops = list(ops)
        params = tuple(inner.value(v) for v in reads)
        nodes = tuple(self._state_reads(body_ops, inner, prefix)) + \
            tuple(self._scoped(body_ops, inner, prefix, scope, set(results)))
        returns = tuple(inner.value(v) for v in results)
        body = Block(id=f"{node_id}:{graph_name}", params=params, nodes=nodes, returns=returns,
                     frees=last_uses(params, nodes, returns))
        callee = Graph(name=graph_name, qualname=f"{ty}.{self.method}", inputs=params, outputs=returns, body=body,
                       num_values=len(inner.index), inlined=False)
        callee.origin = "exported"
        inputs = tuple(numbering.value(v) for v in reads)
        outputs = tuple(numbering.value(v) for v in results)
        first = next((op for op in ops if op.kind != "prim::Constant"), ops[0])
        call_op = _Op(name=f"@{path}", kind=CALL_MODULE, ins=list(reads), outs=list(results),
                      attrs={"module": path, "type": ty}, schema=None, stack=scope, call_of=first)
        attrs: dict = {"module": path, "type": ty}
        if len(results) == 1:
            # the call's result is its last producer's: its symbolic shape too
            made = next((op for op in reversed(ops) if results[0] in _defines(op)), None)
            if made is not None and len(_defines(made)) == 1 and made.attrs.get("symbolic_shape"):
                attrs["symbolic_shape"] = made.attrs["symbolic_shape"]
        node = Node(id=node_id, kind=CALL_MODULE, inputs=inputs, outputs=outputs,
                    attrs=attrs, blocks=(), schema=None,
                    source_cell=[UNREAD, _read_source], module_path=path, callee=graph_name,
                    in_idx=tuple(v.index for v in inputs), out_idx=tuple(v.index for v in outputs), handle=call_op)
        self.callees[node] = callee
        return node


def _scope_key(op: _Op, depth: int) -> tuple[str, str, str] | None:
    return op.stack[depth] if len(op.stack) > depth else None


def _reads(op: _Op) -> list[int]:
    out = list(op.ins)
    for b in op.blocks:
        inner_defined = set(b.params)
        for o in b.ops:
            inner_defined.update(_defines(o))
        for o in b.ops:
            out.extend(v for v in _reads(o) if v not in inner_defined)
        out.extend(v for v in b.returns if v not in inner_defined)
    return out


def _defines(op: _Op) -> list[int]:
    return list(op.outs)


def _ordered_defines(ops: list[_Op]) -> list[int]:
    out: list[int] = []
    for op in ops:
        out.extend(op.outs)
    return out


def _call_site(first: _Op, scope: tuple) -> SourceLoc | None:
    """The line that calls the module ``scope[-1]``, from the stack trace of the call's first op.

    The trace holds every frame from the root ``forward`` down to the op.
    torch's own modules (``nn.Sequential``, ``nn.Conv2d``) add no user frame;
    each user module above this one enters through its ``forward``, and may
    go on through helpers of its own (torchvision's ``ResNet._forward_impl``).
    So the call is the last user frame before the ``forward`` of the next
    user module down, counted from the root; or the innermost user frame
    where no user module lies below.
    """
    loc = parse_stack_trace(first.stack_trace)
    if loc is None:
        return parse_stack_trace(first.fallback_trace)
    user = [f for f in reversed(loc.stack) if is_user_file(f[0])]  # outermost first
    if not user:
        return loc
    callers = sum(1 for _k, _p, ty in scope[:-1] if not str(ty).startswith("torch."))
    entries = [i for i, f in enumerate(user) if f[2] == "forward"]
    if not entries or entries[0] != 0:
        entries.insert(0, 0)  # the root's own entry, whatever its name
    below = callers + 1
    file, line, func = user[entries[below] - 1] if below < len(entries) else user[-1]
    text = None
    try:
        from engine.sources import source_line  # not linecache: it reads /dev/zero to the end

        text = source_line(file, line).strip() or None
    except Exception:
        pass
    return SourceLoc(file=file, line=line, origin="exported", text=text, stack=loc.stack, function=func)


__all__ = ["CALL_MODULE", "COND", "WHILE_LOOP", "MAP", "SET_GRAD", "AUTOCAST", "INVOKE_SUBGRAPH", "Built",
           "GraphBuilder", "Ref", "Signature", "module_path_of", "named_constants", "parse_stack_trace",
           "read_program", "short_type"]

