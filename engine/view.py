"""Nodes as a person reads them: the program pane's rows, the inspector's title, the goto finder.

``describe(node, graph)`` writes a node in the model's terms: constants inline
with their values, arguments named from the op's schema, calls named by the
module they run (``enc1 = Block.forward(x)``), mangled class names dropped::

    %x.3 = max_pool2d(%18, kernel_size=[2, 2], stride=[2, 2], padding=[0, 0], dilation=[1, 1], ceil_mode=False)

``is_plumbing(node, graph)`` says which nodes are TorchScript's plumbing
rather than the user's computation (attribute reads, lists of constants,
``prim::Uninitialized``, the ``If`` a scripted ``break`` or ``return``
leaves behind): the UI folds them, and ``n`` steps past them.

Built from the IR alone, so TorchScript archives and torch.export programs
(constants in ``node.attrs["arguments"]``, calls as ``prim::CallModule``)
read the same.  No UI library is imported here.
"""

from __future__ import annotations

import re
import weakref
from functools import lru_cache
from typing import Any, Iterator

from engine.ir import CALL_MODULE, Graph, Node, SourceLoc, Value

#: A constant that is not there.
MISSING = object()

_SUFFIX = re.compile(r"\.\d+$")
_MANGLE = re.compile(r"___torch_mangle_\d+\.?")
_ARG = re.compile(r"^(?P<type>.+?)\s+(?P<name>\w+)(?:=(?P<default>.+))?$")

#: Node kinds that only move values around for TorchScript's sake.
PLUMBING_KINDS = frozenset({"prim::Constant", "prim::GetAttr", "prim::Uninitialized"})

#: List and tuple builders: plumbing when every item is a constant (the consumer shows the list inline).
_BUILDERS = frozenset({"prim::ListConstruct", "prim::TupleConstruct"})


# ------------------------------------------------------------ names


def value_name(v: Value) -> str:
    """``x.1`` -> ``x``; TorchScript's numbered temporaries (``22``) have no name: ''."""
    name = _SUFFIX.sub("", v.name)
    return "" if name.isdigit() or not name else name


def class_name(type_text: str) -> str:
    """``__torch__.___torch_mangle_7.Block`` -> ``Block``; ``torch.nn.modules.conv.Conv2d`` -> ``Conv2d``."""
    text = _MANGLE.sub("", type_text or "").rstrip(".")
    return text.rsplit(".", 1)[-1] if text else ""


def unmangle(text: str) -> str:
    """Drop TorchScript's ``___torch_mangle_N.`` from a qualified name or a type."""
    return _MANGLE.sub("", text or "")


def base_kind(kind: str) -> str:
    """``aten::convolution.default`` -> ``convolution``; ``aten::relu_`` -> ``relu_``."""
    name = kind.split("::", 1)[-1]
    return name.split(".", 1)[0]


def op_display_name(kind: str) -> str:
    """What a row calls an op: ``aten::`` and the overload dropped, other namespaces kept (``torchvision::nms``)."""
    ns, _, name = kind.partition("::")
    if not name:
        return kind
    name = name.split(".", 1)[0]
    return name if ns == "aten" else f"{ns}::{name}"


@lru_cache(maxsize=4096)
def schema_args(schema: str | None) -> tuple[tuple[str, str, str | None], ...]:
    """``(type, name, default)`` of each argument of a schema string, in order (``*`` dropped)."""
    if not schema or "(" not in schema:
        return ()
    inner = schema[schema.index("(") + 1:]
    depth, out, cur = 0, [], ""
    for ch in inner:
        if ch in "([":
            depth += 1
        elif ch in ")]":
            if depth == 0:
                break
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
            continue
        cur += ch
    if cur.strip():
        out.append(cur.strip())
    args = []
    for part in out:
        if part == "*":
            continue
        m = _ARG.match(part)
        if m:
            args.append((m["type"], m["name"], m["default"]))
    return tuple(args)


# ------------------------------------------------------------ per-graph facts


class _GraphFacts:
    """What describing a graph's nodes needs, worked out once per graph: producers, uses, names."""

    def __init__(self, graph: Graph):
        self.producers: dict[int, Node] = {}
        self.uses: dict[int, list[Node]] = {}
        counts: dict[str, set[str]] = {}
        for n in graph.walk():
            for o in n.outputs:
                self.producers[o.index] = n
            for i in n.inputs:
                self.uses.setdefault(i.index, []).append(n)
            for b in n.blocks:
                for r in b.returns:
                    self.uses.setdefault(r.index, []).append(n)
        for v in _all_values(graph):
            base = value_name(v)
            if base:
                counts.setdefault(base, set()).add(v.name)
        # a name shown without its ``.N`` only where no other value of the graph shares it
        self.unique = {next(iter(full)) for base, full in counts.items() if len(full) == 1}
        self.graph_outputs = {v.index for v in graph.outputs}


def _all_values(graph: Graph) -> Iterator[Value]:
    yield from graph.inputs
    for n in graph.walk():
        yield from n.outputs
        for b in n.blocks:
            yield from b.params


_FACTS: "weakref.WeakKeyDictionary[Graph, _GraphFacts]" = weakref.WeakKeyDictionary()


def _facts(graph: Graph) -> _GraphFacts:
    got = _FACTS.get(graph)
    if got is None:
        got = _GraphFacts(graph)
        _FACTS[graph] = got
    return got


def show_value(v: Value, graph: Graph | None) -> str:
    """A value as a row names it: ``x`` for a graph's only ``x.1``, else ``%x.3``, ``%22``."""
    if graph is not None and v.name in _facts(graph).unique:
        return value_name(v)
    return f"%{v.name}"


def constant_of(v: Value, graph: Graph | None) -> Any:
    """The constant ``v`` holds (lists and tuples of constants too), else ``MISSING``."""
    if graph is None:
        return MISSING
    n = _facts(graph).producers.get(v.index)
    if n is None:
        return MISSING
    if n.kind == "prim::Constant":
        if n.attrs.get("state"):
            return MISSING  # a weight of an exported program: shown by its name, not its contents
        return n.attrs.get("value", None)
    if n.kind in _BUILDERS:
        if not _list_folds(n, graph):
            return MISSING  # a list the program changes (``outs = []``) is a value, not a constant
        items = [constant_of(i, graph) for i in n.inputs]
        if any(i is MISSING for i in items):
            return MISSING
        return items if n.kind == "prim::ListConstruct" else tuple(items)
    return MISSING


def constant_text(value: Any, limit: int = 40) -> str:
    """A constant as Python would write it: ``[2, 2]``, ``False``, ``'{}: {}'``, ``Tensor[3x3]``."""
    try:
        import torch

        if isinstance(value, torch.Tensor):
            if value.numel() == 1:
                return f"tensor({value.item()!r})"
            return f"Tensor[{'x'.join(str(d) for d in value.shape) or 'scalar'}]"
        if isinstance(value, torch.dtype):
            return str(value)
    except Exception:  # pragma: no cover - torch always importable in the engine
        pass
    if isinstance(value, list):
        text = "[" + ", ".join(constant_text(x, limit) for x in value) + "]"
    elif isinstance(value, tuple):
        text = "(" + ", ".join(constant_text(x, limit) for x in value) + ("," if len(value) == 1 else "") + ")"
    elif isinstance(value, float):
        text = repr(value)
    else:
        text = repr(value)
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


# ------------------------------------------------------------ arguments


def named_args(node: Node, graph: Graph | None) -> list[tuple[str, Any]]:
    """The node's arguments in schema order: ``(name, value)`` where value is a constant or a ``Value``
    (``arg_types`` gives the schema's types and defaults).

    Names are '' where the node has no schema (prims, calls).  Exported
    programs keep their constant arguments in ``attrs["arguments"]`` by
    name; TorchScript passes every argument as an input, constants from
    ``prim::Constant`` nodes.
    """
    named = node.attrs.get("arguments")
    params = schema_args(node.schema)
    inputs = list(node.inputs)
    out: list[tuple[str, Any]] = []
    i = 0
    if params and (isinstance(named, dict) or len(params) >= len(inputs) or _varargs(node.schema)):
        for k, (ty, name, _default) in enumerate(params):
            if isinstance(named, dict) and name in named:
                out.append((name, named[name]))
                continue
            if isinstance(named, dict) and ty.startswith("Tensor") and ty.endswith("[]"):
                # an exported program passes a list of tensors as one input each (``cat``'s ``tensors``)
                later = sum(1 for _t, nm, _d in params[k + 1:] if nm not in named)
                end = max(i, len(inputs) - later)
                out.append((name, TensorList(tuple(inputs[i:end]))))
                i = end
                continue
            if i < len(inputs):
                v = inputs[i]
                i += 1
                c = constant_of(v, graph)
                out.append((name, v if c is MISSING else c))
    for v in inputs[i:]:  # no schema, or varargs past it
        c = constant_of(v, graph)
        out.append(("", v if c is MISSING else c))
    return out


class TensorList(tuple):
    """The values an exported program passes for one ``Tensor[]`` argument."""


def _varargs(schema: str | None) -> bool:
    return bool(schema) and "..." in schema


#: c10's ScalarType and MemoryFormat numbering: TorchScript passes ``dtype=torch.int64`` as the int 4.
_SCALAR_TYPES = ("torch.uint8", "torch.int8", "torch.int16", "torch.int32", "torch.int64", "torch.float16",
                 "torch.float32", "torch.float64", "torch.complex32", "torch.complex64", "torch.complex128",
                 "torch.bool", "torch.qint8", "torch.quint8", "torch.qint32", "torch.bfloat16")
_MEMORY_FORMATS = ("torch.contiguous_format", "torch.preserve_format", "torch.channels_last",
                   "torch.channels_last_3d")


def _typed_constant(val: Any, ty: str) -> str:
    if isinstance(val, int) and not isinstance(val, bool):
        if "ScalarType" in ty and 0 <= val < len(_SCALAR_TYPES):
            return _SCALAR_TYPES[val]
        if "MemoryFormat" in ty and 0 <= val < len(_MEMORY_FORMATS):
            return _MEMORY_FORMATS[val]
    return constant_text(val)


def args_text(node: Node, graph: Graph | None, skip: int = 0) -> str:
    """``%18, kernel_size=[2, 2], stride=[2, 2]``: values positional while they lead, constants by name
    (an argument left at a default of None is not shown)."""
    types = {name: (ty, default) for ty, name, default in schema_args(node.schema)}
    parts = []
    positional = True
    for k, (name, val) in enumerate(named_args(node, graph)[skip:]):
        ty, default = types.get(name, ("", None))
        if isinstance(val, Value):
            p = _folded_list(val, graph)
            text = p if p is not None else show_value(val, graph)
        elif isinstance(val, TensorList):
            text = "[" + ", ".join(show_value(v, graph) for v in val) + "]"
        else:
            if val is None and default == "None":
                positional = positional and k == 0
                continue
            text = _typed_constant(val, ty)
            if k > 0 and name:
                positional = False
        parts.append(text if positional or not name else f"{name}={text}")
    return ", ".join(parts)


def _folded_list(v: Value, graph: Graph | None) -> str | None:
    """``[%a, %b]`` for a list built only to be handed to this op (``cat([...])``)."""
    if graph is None:
        return None
    n = _facts(graph).producers.get(v.index)
    if n is None or n.kind not in _BUILDERS or not _list_folds(n, graph):
        return None
    items = []
    for i in n.inputs:
        c = constant_of(i, graph)
        items.append(show_value(i, graph) if c is MISSING else constant_text(c))
    return ("[" + ", ".join(items) + "]") if n.kind == "prim::ListConstruct" else ("(" + ", ".join(items) + ")")


def _list_folds(node: Node, graph: Graph) -> bool:
    """A list or tuple builder shown inside its one consumer: all constants, or read once by an op
    that takes it as an argument (``cat``, ``stack``; not a list the program goes on changing)."""
    if not node.outputs:
        return False
    facts = _facts(graph)
    out = node.outputs[0].index
    if out in facts.graph_outputs:
        return False
    users = facts.uses.get(out, [])
    if not users:
        return False
    if all(constant_of(i, graph) is not MISSING for i in node.inputs):
        # built afresh each time for its one reader: ``kernel_size=[2, 2]``; an accumulator
        # (``outs = []`` then ``append``) is the user's own
        return all(u.kind == "prim::CallFunction" or _reads_only(u) for u in users)
    return len(users) == 1 and _reads_only(users[0])


def _reads_only(user: Node) -> bool:
    """An op that takes a list as an argument and leaves it as it was (no ``(a!)`` in its schema)."""
    if "arguments" in user.attrs:
        return not user.blocks
    return bool(user.schema) and "!" not in user.schema and not user.blocks and not user.kind.startswith("prim::")


# ------------------------------------------------------------ plumbing


def is_plumbing(node: Node, graph: Graph | None) -> bool:
    """A node TorchScript needs and the user never wrote: folded by default, stepped past by ``n``."""
    kind = node.kind
    if kind in PLUMBING_KINDS:
        return True
    if kind in _BUILDERS:
        return graph is not None and _list_folds(node, graph)
    return False


def flag_outputs(node: Node, graph: Graph | None) -> frozenset[int]:
    """Positions of an ``If``'s outputs that are the flags a scripted ``break`` or ``return`` sets:
    a constant bool in every branch.  They are TorchScript's, not the user's: rows leave them out."""
    if node.kind != "prim::If" or not node.blocks or graph is None:
        return frozenset()
    flags = set()
    for k in range(len(node.outputs)):
        vals = [constant_of(b.returns[k], graph) if k < len(b.returns) else MISSING for b in node.blocks]
        if all(isinstance(v, bool) for v in vals):
            flags.add(k)
    return frozenset(flags)


# ------------------------------------------------------------ calls


def call_target(node: Node, graph: Graph | None) -> tuple[str, str, str]:
    """(module name, class name, method) of a module call: ``("enc1", "Block", "forward")``."""
    if node.kind == CALL_MODULE:
        return str(node.attrs.get("module", "")), class_name(str(node.attrs.get("type", ""))), "forward"
    if node.kind != "prim::CallMethod" or not node.inputs:
        return "", "", ""
    recv = node.inputs[0]
    method = str(node.attrs.get("name", node.callee or "forward"))
    if re.fullmatch(r"forward\d+", method):
        method = "forward"  # a traced module called twice gets forward1, forward2...
    return _receiver_path(recv, graph), class_name(recv.type), method


def _receiver_path(v: Value, graph: Graph | None) -> str:
    """``enc1`` for ``self.enc1``, ``layer1.0`` for ``self.layer1.0``; the value's name otherwise."""
    names: list[str] = []
    cur = v
    facts = _facts(graph) if graph is not None else None
    for _ in range(32):
        n = facts.producers.get(cur.index) if facts is not None else None
        if n is None or n.kind != "prim::GetAttr" or not n.inputs:
            break
        names.append(str(n.attrs.get("name", "")))
        cur = n.inputs[0]
    if names and (cur.name.startswith("self") or cur.type.startswith("__torch__.")):
        return ".".join(reversed(names))
    return value_name(v) or v.name


def call_label(node: Node, graph: Graph | None) -> str:
    """``enc1 = Block.forward(x)``: the module called, its class and method, the arguments."""
    path, cls, method = call_target(node, graph)
    skip = 0 if node.kind == CALL_MODULE else 1
    args = ", ".join(show_value(v, graph) if constant_of(v, graph) is MISSING else constant_text(constant_of(v, graph))
                     for v in node.inputs[skip:])
    target = f"{cls}.{method}" if cls else method
    return f"{path} = {target}({args})" if path else f"{target}({args})"


# ------------------------------------------------------------ rows


def outputs_text(node: Node, graph: Graph | None) -> str:
    """The outputs a row names (an ``If``'s break and return flags left out)."""
    flags = flag_outputs(node, graph) if node.kind == "prim::If" else frozenset()
    return ", ".join(show_value(v, graph) for k, v in enumerate(node.outputs) if k not in flags)


def describe(node: Node, graph: Graph | None, program: Any = None) -> str:
    """One line in the model's terms (see the module's docstring).  ``program`` (optional) names
    the parameters of scripted functions a ``prim::CallFunction`` calls."""
    outs = outputs_text(node, graph)
    kind = node.kind
    if kind in ("prim::CallMethod", CALL_MODULE):
        text = call_label(node, graph)
        return f"{text} → {outs}" if outs else text
    head = f"{outs} = " if outs else ""
    if kind == "prim::GetAttr":
        base = node.inputs[0] if node.inputs else None
        owner = "self" if base is None or base.name.startswith("self") else show_value(base, graph)
        return f"{head}{owner}.{node.attrs.get('name', '')}"
    if kind == "prim::SetAttr":
        owner = "self" if not node.inputs or node.inputs[0].name.startswith("self") else show_value(node.inputs[0], graph)
        val = show_value(node.inputs[1], graph) if len(node.inputs) > 1 else ""
        return f"{owner}.{node.attrs.get('name', '')} = {val}"
    if kind == "prim::Constant":
        return f"{head}{constant_text(node.attrs.get('value'))}"
    if kind == "prim::CallFunction":
        name = unmangle(node.callee or "").rsplit(".", 1)[-1]
        params = function_params(node, program)
        parts = []
        for k, v in enumerate(node.inputs[1:]):
            c = constant_of(v, graph)
            text = show_value(v, graph) if c is MISSING else constant_text(c)
            if c is not MISSING and k > 0 and k < len(params):
                text = f"{params[k]}={text}"
            parts.append(text)
        return f"{head}{name}({', '.join(parts)})"
    if kind in _BUILDERS:
        items = [show_value(v, graph) if constant_of(v, graph) is MISSING else constant_text(constant_of(v, graph))
                 for v in node.inputs]
        body = "[" + ", ".join(items) + "]" if kind == "prim::ListConstruct" else \
            "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"
        return f"{head}{body}"
    if kind == "prim::DictConstruct":
        items = [show_value(v, graph) if constant_of(v, graph) is MISSING else constant_text(constant_of(v, graph))
                 for v in node.inputs]
        pairs = ", ".join(f"{items[i]}: {items[i + 1]}" for i in range(0, len(items) - 1, 2))
        return f"{head}{{{pairs}}}"
    if kind == "prim::If":
        kept = outs
        text = statement_text(node, ("if ", "elif "))
        cond = text or f"if {show_value(node.inputs[0], graph) if node.inputs else '?'}"
        return f"{kept} = {cond}" if kept else cond
    if kind == "prim::Loop":
        text = statement_text(node)
        if text:
            return f"{head}{text}"
        trip = constant_of(node.inputs[0], graph) if node.inputs else MISSING
        cond = show_value(node.inputs[1], graph) if len(node.inputs) > 1 else ""
        if trip == 2 ** 63 - 1:
            return f"{head}while {cond}"
        count = constant_text(trip) if trip is not MISSING else (show_value(node.inputs[0], graph) if node.inputs else "?")
        return f"{head}loop {count} times" + (f" while {cond}" if cond and constant_of(node.inputs[1], graph) is not True else "")
    name = op_display_name(kind)
    return f"{head}{name}({args_text(node, graph)})"


def statement_text(node: Node, starts: tuple[str, ...] = ("for ", "while ")) -> str:
    """``for i in range(steps)`` for a loop (``if …`` for an If) from scripted source, when it starts with
    one of ``starts``; '' when none."""
    try:
        src = node.source
    except Exception:  # a source range torch cannot give
        return ""
    text = (src.text or "").strip() if src is not None else ""
    if text.endswith(":"):
        text = text[:-1]
    return text if text.startswith(starts) else ""


def function_params(node: Node, program: Any) -> list[str]:
    """The parameter names of the scripted function a ``prim::CallFunction`` calls ([] when unknown)."""
    finder = getattr(program, "function_graph", None)
    if finder is None or not node.callee:
        return []
    try:
        return [value_name(v) or v.name for v in finder(node.callee).inputs]
    except Exception:  # a function the archive does not hold: positions still say it
        return []


def input_params(node: Node, graph: Graph | None, program: Any = None) -> list[str]:
    """The name each input of ``node`` is passed as: the schema's parameter name, else the value's own."""
    if node.kind in ("prim::CallMethod",) and node.inputs:
        finder = getattr(program, "call_params", None)
        try:
            params = finder(node) if finder is not None else []
        except Exception:  # names are a help; the values are what matter
            params = []
        if len(params) == len(node.inputs):
            # torch.jit.trace names a module's parameters argument_1, argument_2: the value's own name says more
            return ["self"] + [p if not re.fullmatch(r"argument_\d+", p) else (value_name(v) or f"%{v.name}")
                               for p, v in zip(params[1:], node.inputs[1:])]
        return ["self"] + [value_name(v) or f"%{v.name}" for v in node.inputs[1:]]
    if node.kind == "prim::CallFunction":
        params = function_params(node, program)
        return ["function"] + [params[k] if k < len(params) else "" for k in range(len(node.inputs) - 1)]
    params = schema_args(node.schema)
    named = node.attrs.get("arguments")
    names = []
    k = 0
    for _ty, name, _d in params:
        if isinstance(named, dict) and name in named:
            continue
        names.append(name)
        k += 1
    out = []
    for i, v in enumerate(node.inputs):
        out.append(names[i] if i < len(names) and not _varargs(node.schema) else (value_name(v) or f"%{v.name}"))
    return out


# ------------------------------------------------------------ sources


def user_source(node: Node, program: Any = None) -> SourceLoc | None:
    """The line of the user's Python a node came from: the archive's own code only when nothing better
    is known (a traced call names its line through the ops it ran; the format's ``call_site`` finds it)."""
    src = node.source
    if src is not None and src.origin == "archive-code" and program is not None:
        finder = getattr(program, "call_site", None)
        if finder is not None:
            try:
                better = finder(node)
            except Exception:  # advice only: the archive's line is still right
                better = None
            if better is not None:
                return better
    return src


# ------------------------------------------------------------ stepping


def step_past_plumbing(machine: Any, program: Any, stop: str, backward: bool = False, limit: int = 100_000) -> str:
    """After a move that stopped on plumbing, go on to the next node the user wrote.

    The machine still executes every node; this only moves the stop.  A
    node with a breakpoint (by id or kind) is a stop even when it is
    plumbing.  ``backward``: a ``p`` in the recorded history goes on back.
    """
    from engine.run.machine import Stop

    for _ in range(limit):
        if stop not in (Stop.STEP, Stop.HISTORY) or machine.error is not None or machine.finished:
            return stop
        if machine.view is not None:
            node = machine.timeline[machine.view].node
            graph = program.graph_of(node.id) if program is not None else None
        else:
            node = machine.live_node
            frame = machine.current_frame
            graph = frame.graph if frame is not None else None
        if node is None or not is_plumbing(node, graph):
            return stop
        bps = machine.breakpoints
        if node.id in bps.nodes or node.kind in bps.kinds:
            return stop
        if backward:
            before = machine.view
            stop = machine.back()
            if machine.view == before:
                return stop
        else:
            stop = machine.step_over()
    return stop


def symbolic_note(node: Node, program: Any) -> str | None:
    """An exported node's output shape with its size symbols and their ranges
    (``float32[s0, 8, 32, 32]  s0 in [1, 16]``); None where every size is fixed."""
    shape = node.attrs.get("symbolic_shape") if isinstance(node.attrs, dict) else None
    if not shape:
        return None
    ranges = program.symbol_ranges() if hasattr(program, "symbol_ranges") else {}
    said = []
    for sym in dict.fromkeys(re.findall(r"\b[su]\d+\b", shape)):
        lo, hi = ranges.get(sym, (None, None))
        if sym.startswith("u") and sym not in ranges:
            said.append(f"{sym} from data")
        else:
            said.append(f"{sym} in [{'?' if lo is None else lo}, {'inf' if hi is None else hi}]")
    return f"{shape}  {', '.join(said)}" if said else shape
