"""Run one leaf node with TorchScript's own semantics.

Most nodes run as a one-node TorchScript function: the node is cloned into a
fresh graph and compiled, so overload resolution, type-variable schemas,
varargs and prims without a schema behave exactly as in torch's interpreter.
The function is compiled on first use and cached per node.

That path converts lists and dicts to fresh copies at each call, which would
break aliasing (``b = a[0]; b.append(x)`` must change ``a``), so operations
on containers run here in Python on the very objects the program holds.  An
op that writes to a container and has no Python version here runs compiled
and its result is copied back into the caller's object.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable

import torch

from engine.ir import Node
from engine.run.leaf import LeafOp, Messages

#: Takes the node's input values, returns its outputs as a fresh list.
Runner = Callable[[list], list]


class ModelRaised(Exception):
    """``prim::RaiseException`` executed: the model's own error."""


@dataclass(frozen=True)
class SchemaInfo:
    """What an operator writes to, read from its alias annotations."""

    tensor_writes: tuple[int, ...]  # inputs whose tensor data the op overwrites
    container_writes: tuple[int, ...]  # inputs whose list/dict the op mutates


_NO_WRITES = SchemaInfo((), ())


@lru_cache(maxsize=None)
def schema_info(schema: str | None) -> SchemaInfo:
    if not schema:
        return _NO_WRITES
    try:
        parsed = torch._C.parse_schema(schema)
    except Exception:
        return _NO_WRITES
    tensor_writes, container_writes = [], []
    for i, arg in enumerate(parsed.arguments):
        ty = arg.type
        alias = arg.alias_info
        writes = alias is not None and alias.is_write
        kind = ty.kind()
        if kind == "OptionalType":
            ty = ty.getElementType()
            kind = ty.kind()
        if kind == "ListType":
            elem = ty.getElementType()
            elem_alias = getattr(alias, "contained_types", None) if alias is not None else None
            elem_writes = bool(elem_alias) and any(a.is_write for a in elem_alias)
            if elem.kind() in ("TensorType", "OptionalType") and (elem_writes or writes):
                if elem_writes:
                    tensor_writes.append(i)
                    continue
            if writes:
                container_writes.append(i)
        elif kind == "DictType":
            if writes:
                container_writes.append(i)
        elif kind == "TensorType" and writes:
            tensor_writes.append(i)
    return SchemaInfo(tuple(tensor_writes), tuple(container_writes))


def overload_name(schema: str | None) -> str | None:
    """``aten::append.t(t[](a!) self, ...)`` -> ``aten::append.t``."""
    if not schema:
        return None
    return schema.split("(", 1)[0]


# --------------------------------------------------------------------------
# Compiled one-node functions


def return_none(g: torch._C.Graph) -> None:
    """End a graph with ``return None``: a function must return something."""
    none = g.create("prim::Constant", [], 1)
    g.insertNode(none)
    none.output().setType(torch._C.NoneType.get())
    g.registerOutput(none.output())


def compile_node(handle: torch._C.Node, extra_returns: tuple[int, ...] = ()) -> Callable:
    """A TorchScript function running just ``handle``.

    Its outputs come back as one value, a tuple (several outputs or
    ``extra_returns``, the inputs to hand back after the call) or ``None``.
    """
    g = torch._C.Graph()
    new_inputs = []
    for v in handle.inputs():
        nv = g.addInput()
        nv.setType(v.type())
        new_inputs.append(nv)
    mapping = dict(zip([v.unique() for v in handle.inputs()], new_inputs))
    clone = g.createClone(handle, lambda v: mapping[v.unique()])
    g.insertNode(clone)
    outs = list(clone.outputs()) + [new_inputs[i] for i in extra_returns]
    if len(outs) == 1:
        g.registerOutput(outs[0])
    elif len(outs) == 0:
        return_none(g)
    elif all(o.type().kind() == "TensorType" for o in outs):
        # Several tensors come back as a list of optional tensors: a tuple
        # holding an undefined tensor (``need_weights=False`` in attention)
        # fails in the interpreter, a list of Optional[Tensor] does not.
        lst = g.create("prim::ListConstruct", outs, 1)
        g.insertNode(lst)
        lst.output().setType(torch._C.ListType(torch._C.OptionalType(torch._C.TensorType.get())))
        g.registerOutput(lst.output())
    else:
        tup = g.create("prim::TupleConstruct", outs, 1)
        g.insertNode(tup)
        tup.output().setType(torch._C.TupleType([v.type() for v in outs]))
        g.registerOutput(tup.output())
    return torch._C._create_function_from_graph("tsdebug_op", g)


def _compiled_runner(node: Node) -> Runner:
    fn = compile_node(node.handle)
    n_out = len(node.outputs)
    if n_out == 0:

        def run0(args: list) -> list:
            fn(*args)
            return []

        return run0
    if n_out == 1:
        return lambda args: [fn(*args)]
    return lambda args: list(fn(*args))


def _write_back_runner(node: Node, containers: tuple[int, ...]) -> Runner:
    """Compiled op that mutates lists or dicts: copy the result back in place."""
    fn = compile_node(node.handle, extra_returns=containers)
    n_out = len(node.outputs)

    def run(args: list) -> list:
        result = fn(*args)
        if (n_out + len(containers)) == 1:
            result = (result,)
        for slot, new in zip(containers, result[n_out:]):
            old = args[slot]
            if isinstance(old, list):
                old[:] = new
            elif isinstance(old, dict):
                old.clear()
                old.update(new)
        outs = result[:n_out]
        # An output that is the written container itself keeps its identity.
        return [
            args[containers[0]] if (containers and isinstance(o, (list, dict)) and o == args[containers[0]]) else o
            for o in outs
        ]

    return run


# --------------------------------------------------------------------------
# Containers and prims, in Python, on the program's own objects


def _slice_list(lst: list, start: int | None = None, end: int | None = None, step: int = 1) -> list:
    return lst[start:end:step]


def _set_item(container, key, value):
    container[key] = value
    return container if isinstance(container, list) else None


def _pop(container, *args):
    if isinstance(container, dict):
        return container.pop(*args)
    return container.pop(*args) if args else container.pop()


def _extend(lst: list, other: list) -> None:
    lst.extend(other)


def _add_inplace(lst: list, other: list) -> list:
    lst.extend(other)
    return lst


def _append(lst: list, el) -> list:
    lst.append(el)
    return lst


def _insert(lst: list, idx: int, el) -> None:
    lst.insert(idx, el)


def _getitem(container, key):
    try:
        return container[key]
    except IndexError:
        raise IndexError("list index out of range") from None
    except KeyError:
        raise KeyError(f"KeyError: {key!r}") from None


def _items(d: dict) -> list:
    return list(d.items())


def _get(d: dict, key, default=None):
    return d.get(key, default)


def _delete(container, key) -> None:
    del container[key]


#: Python versions of container ops, by base kind; used when the first
#: argument is a list or dict.
CONTAINER_OPS: dict[str, Callable] = {
    "aten::__getitem__": _getitem,
    "aten::append": _append,
    "aten::len": len,
    "aten::_set_item": _set_item,
    "aten::__setitem__": _set_item,
    "aten::insert": _insert,
    "aten::pop": _pop,
    "aten::extend": _extend,
    "aten::add_": _add_inplace,
    "aten::clear": lambda c: c.clear(),
    "aten::reverse": lambda lst: lst.reverse(),
    "aten::slice": _slice_list,
    "aten::copy": lambda c: c.copy(),
    "aten::list": list,
    "aten::dict": dict,
    "aten::add": lambda a, b: a + b,
    "aten::keys": lambda d: list(d.keys()),
    "aten::values": lambda d: list(d.values()),
    "aten::items": _items,
    "aten::get": _get,
    "aten::setdefault": lambda d, k, v: d.setdefault(k, v),
    "aten::update": lambda d, other: d.update(other),
    "aten::Delete": _delete,
}


def _raise_exception(msg: str, cls: str | None = None) -> None:
    name = (cls or "Exception").rsplit(".", 1)[-1]
    raise ModelRaised(f"{name}: {msg}")


PRIM_OPS: dict[str, Callable[[list], Any]] = {
    "prim::ListConstruct": list,
    "prim::TupleConstruct": tuple,
    "prim::DictConstruct": lambda args: dict(zip(args[0::2], args[1::2])),
    "prim::unchecked_cast": lambda args: args[0],
    "prim::Uninitialized": lambda args: None,
    "prim::TupleIndex": lambda args: args[0][args[1]],
}


#: What the interpreter does itself with an enum member torch could not hand over (``EnumMember``).
ENUM_OPS: dict[str, Callable] = {
    "prim::EnumName": lambda a: a[0].name,
    "prim::EnumValue": lambda a: a[0].value,
    "aten::eq": lambda a: a[0] == a[1],
    "aten::ne": lambda a: a[0] != a[1],
}


def _enum_runner(node: Node) -> Runner:
    """Enum ops: on ``EnumMember`` values here; on members of an imported class, compiled."""
    from engine.formats.torchscript.program import EnumMember

    ours = ENUM_OPS[node.kind]
    compiled: list[Runner] = []

    def run(args: list) -> list:
        if any(isinstance(a, EnumMember) for a in args):
            return [ours(args)]
        if not compiled:
            compiled.append(_compiled_runner(node))
        return compiled[0](args)

    return run


def _is_object(x: Any) -> bool:
    from engine.formats.torchscript.program import ClassInstance, ObjectRef

    return isinstance(x, (list, dict, torch._C.ScriptObject, ClassInstance, ObjectRef))


def _ObjectRefType():
    from engine.formats.torchscript.program import ObjectRef

    return ObjectRef


def _isinstance_runner(node: Node, compiled_run: Runner) -> Runner:
    """``prim::isinstance`` on the interpreter's own class objects is answered here."""
    from engine.formats.torchscript.program import ClassInstance, ObjectRef

    names = {str(t) for t in node.attrs.get("types", [])}

    def run(args: list) -> list:
        obj = args[0]
        if isinstance(obj, (ClassInstance, ObjectRef)):
            return [obj.qualname in names]
        return compiled_run(args)

    return run


def _overload_runner(node: Node, info: SchemaInfo, compiled_run: Runner, leaf: "LeafOp") -> Runner | None:
    """Call the dispatcher's ``OpOverload`` directly for plain functional aten ops.

    It skips the interpreter's stack (about half the cost of a one-node
    function).  Used only where it provably gives the same result: the first
    call runs both and compares them bit for bit (an op that writes to its
    inputs writes into copies for the compiled run); ops that draw random
    numbers, mutate containers or take type variables always run compiled.
    """
    kind, schema = node.kind, node.schema
    if not kind.startswith(("aten::", "prim::")) or not schema or info.container_writes:
        return None
    writes = info.tensor_writes
    # the first call runs the op twice (compiled, direct): a norm in training mode would update
    # its running statistics twice, so the compiled run writes into copies of them
    check_writes = writes or leaf.training_writes
    handle = node.handle
    try:
        if handle is None or handle.isNondeterministic():
            return None
        parsed = torch._C.parse_schema(schema)
    except Exception:
        return None
    # views (non-writing aliases) are fine; type variables and containers of
    # anything but tensors and numbers need the interpreter (and our aliasing)
    for a in list(parsed.arguments) + list(parsed.returns):
        ty = str(a.type)
        if re.search(r"\bt\d*\b|Any|Dict|\(|Tuple", ty):
            return None
    namespace, name = parsed.name.split("::", 1)
    overload = parsed.overload_name or "default"
    if kind in CONTAINER_OPS and any(re.search(r"\[|Dict", str(a.type)) for a in parsed.arguments):
        return None  # the Python version keeps the program's own lists and dicts
    try:
        op = getattr(getattr(getattr(torch.ops, namespace), name), overload)
    except Exception:
        return None
    op = getattr(op, "_op", op)  # the builtin behind OpOverload.__call__: one Python frame less per call
    kw_names = [a.name for a in parsed.arguments if a.kwarg_only]
    n_pos = len(parsed.arguments) - len(kw_names)
    if len(node.inputs) != len(parsed.arguments):
        return None
    n_out = len(node.outputs)

    if kw_names:

        def direct(args: list) -> list:
            out = op(*args[:n_pos], **dict(zip(kw_names, args[n_pos:])))
            return [out] if n_out == 1 else (list(out) if n_out else [])
    elif n_out == 1:

        def direct(args: list) -> list:
            return [op(*args)]
    else:

        def direct(args: list) -> list:
            out = op(*args)  # called whatever it returns: an op without outputs acts by its effect
            return list(out) if n_out else []

    # What runs once checked.  A direct call that raises hands over to the
    # compiled function: the model's own error, worded as torch's interpreter
    # words it.  Not for in-place ops: one that failed half-way cannot run again.
    if writes:
        call = direct
    elif n_out == 1 and not kw_names:

        def call(args: list) -> list:  # the common case, in one frame
            try:
                return [op(*args)]
            except Exception:
                return compiled_run(args)
    else:

        def call(args: list) -> list:
            try:
                return direct(args)
            except Exception:
                return compiled_run(args)

    # One check per overload and types serves every node that has them: the
    # compiled function and the direct call get the same argument values, so
    # what could tell them apart is the schema and the types, not the node.
    key = (schema, tuple(v.type for v in node.inputs), tuple(v.type for v in node.outputs))
    known = _VERDICTS.get(key)
    if known is not None:
        return call if known else None

    def check(args: list) -> list:
        # The first call runs both; from then on ``leaf.run`` is the winner.
        expected = compiled_run(args)
        try:
            got = direct(list(args))
        except Exception:
            got = None
        same = got is not None and _same_results(got, expected)
        _VERDICTS[key] = same
        leaf.run = call if same else compiled_run
        return expected

    def check_in_place(args: list) -> list:
        # The compiled function writes into copies, the overload into the
        # program's own tensors; they must agree on the outputs and on what
        # was written, aliasing included.
        if not all(isinstance(args[i], torch.Tensor) for i in check_writes):
            if not writes:
                return check(args)  # a norm without running statistics writes nothing
            leaf.run = compiled_run
            return compiled_run(args)
        trial = list(args)
        for i in check_writes:
            trial[i] = args[i].clone()
        raw = compiled_run(trial)
        own = {id(trial[i]): args[i] for i in check_writes}
        expected = [own.get(id(o), o) for o in raw]  # outputs that are written inputs: the program's own
        try:
            got = call(args)
        except Exception:
            got = None
        same = got is not None and _same_results(got, expected) \
            and all(a is b for a, b, r in zip(got, expected, raw) if id(r) in own) \
            and _same_results([args[i] for i in check_writes], [trial[i] for i in check_writes])
        _VERDICTS[key] = same
        if same:
            leaf.run = call
        else:
            for i in check_writes:
                args[i].copy_(trial[i])  # what the compiled function wrote
            leaf.run = compiled_run
        return expected

    return check_in_place if check_writes else check


#: (schema, input types, output types) -> whether the direct overload call
#: gave the compiled function's bits when it was checked.
_VERDICTS: dict[tuple, bool] = {}


def _same_results(got: list, expected: list) -> bool:
    """Bit for bit: same types, values, dtypes and strides."""
    from engine.run.values import values_equal

    return len(got) == len(expected) and all(
        type(a) is type(b) and values_equal(a, b) and (not isinstance(a, torch.Tensor) or
                                                     (a.dtype == b.dtype and a.stride() == b.stride()))
        for a, b in zip(got, expected)
    )


def leaf_op(node: Node, messages: Messages | None = None) -> LeafOp:
    """How the interpreter runs one TorchScript leaf node."""
    info = schema_info(node.schema)
    # inputs it writes when its ``training`` input is True, which its schema does not say
    training_writes = RUNNING_STATS if node.kind in UPDATES_RUNNING_STATS else ()
    deterministic = node.handle is not None and not node.handle.isNondeterministic()
    leaf = LeafOp(_not_built, info.tensor_writes, info.container_writes, training_writes, deterministic)
    leaf.run = runner_for(node, messages, leaf)
    return leaf


def _not_built(args: list) -> list:  # pragma: no cover - replaced before the op is handed out
    raise RuntimeError("leaf op not built")


#: Norms that, with input 5 (``training``/``use_input_stats``) True, update their running
#: statistics (inputs 3 and 4) in place: their schemas do not mark those inputs written.
UPDATES_RUNNING_STATS = frozenset({"aten::batch_norm", "aten::instance_norm", "aten::_batch_norm_impl_index",
                                   "aten::native_batch_norm"})
RUNNING_STATS = (3, 4)


def runner_for(node: Node, messages: Messages | None, leaf: LeafOp) -> Runner:
    """A callable taking the node's input values and returning its outputs as a list.

    ``aten::warn`` and ``prim::Print`` write to ``messages`` instead of the
    terminal, which belongs to the debugger.  ``leaf`` is the ``LeafOp`` the
    runner is for: a checked direct call replaces its ``run``.
    """
    kind = node.kind
    n_out = len(node.outputs)
    if messages is not None and kind == "aten::warn":
        return lambda args: (messages.warn(*args), [])[1]
    if messages is not None and kind == "prim::Print":
        return lambda args: (messages.print(*args), [])[1]

    if kind == "prim::ListUnpack":
        # a traced ``for b in boxes:`` unpacks the example's rows: another count raises, as in torch
        def unpack(args: list) -> list:
            if len(args[0]) != n_out:
                raise RuntimeError(f"Expected {n_out} elements in a list but found {len(args[0])}")
            return list(args[0])

        return unpack
    if kind == "prim::TupleUnpack":
        return lambda args: list(args[0])
    if kind in ENUM_OPS and (kind.startswith("prim::") or "AnyEnumType" in (node.schema or "")):
        return _enum_runner(node)
    prim = PRIM_OPS.get(kind)
    if prim is not None:
        return lambda args: [prim(args)]
    if kind == "prim::RaiseException":

        def run_raise(args: list) -> list:
            _raise_exception(*args)
            return []

        return run_raise

    info = schema_info(node.schema)
    py_container = CONTAINER_OPS.get(kind)
    compiled: list[Runner] = []  # built on first need: compiling costs ~50 us

    def compiled_run(args: list) -> list:
        if not compiled:
            if info.container_writes:
                compiled.append(_write_back_runner(node, info.container_writes))
            else:
                compiled.append(_compiled_runner(node))
        return compiled[0](args)

    if kind == "prim::CreateObject":
        from engine.formats.torchscript.program import ClassInstance

        qualname = node.outputs[0].type
        ty = node.handle.output().type()
        return lambda args: [ClassInstance(qualname, ty)]
    if kind == "prim::isinstance":
        return _isinstance_runner(node, compiled_run)
    if kind in ("aten::__is__", "aten::__isnot__"):
        negate = kind == "aten::__isnot__"

        def run_is(args: list) -> list:
            a, b = args
            if a is None or b is None or _is_object(a) or _is_object(b):
                same = (a == b) if isinstance(a, _ObjectRefType()) else (a is b)
                return [(not same) if negate else same]
            return compiled_run(args)

        return run_is

    fast = _overload_runner(node, info, compiled_run, leaf)
    if fast is not None:
        return fast

    if py_container is not None:

        def run_container(args: list) -> list:
            if args and isinstance(args[0], (list, dict)):
                result = py_container(*args)
                if n_out == 0:
                    return []
                return [result]
            return compiled_run(args)

        return run_container
    return compiled_run
