"""A loaded ExportedProgram as the interpreter sees it: graphs, leaf ops, inputs and outputs.

The same interface as ``engine.formats.torchscript.program.Program``
(``root_graph``, ``leaf``, ``callee_graph``, ``bind``, ``outputs_of``), so
the machine runs either without knowing which it holds.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.utils._pytree as pytree

from engine.errors import ModelError, TsdebugError
from engine.formats.exported.convert import (CALL_MODULE, GraphBuilder, Ref, Signature, _Op, _ValueInfo,
                                             read_program)
from engine.ir import Graph, Node
from engine.run.leaf import LeafOp, Messages


def _code_for(value: Any, consts: list) -> str:
    """Python source that rebuilds one argument from the inputs ``v`` and the constants ``c``."""
    if isinstance(value, Ref):
        return f"v[{value.index}]"
    if isinstance(value, list):
        return "[" + ", ".join(_code_for(x, consts) for x in value) + "]"
    if isinstance(value, tuple):
        inner = ", ".join(_code_for(x, consts) for x in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    if isinstance(value, dict) and all(isinstance(k, str) and k.isidentifier() for k in value):
        return "dict(" + ", ".join(f"{k}={_code_for(x, consts)}" for k, x in value.items()) + ")"
    consts.append(value)
    return f"c[{len(consts) - 1}]"


def make_runner(op: _Op):
    """``run(values) -> outputs`` for a leaf: one generated call of the op's target with its arguments.

    The code is made from argument positions and constant indices only,
    never from text in the archive; rebuilding the arguments from a
    template at each call (as ``fx.Interpreter`` does) costs more than the
    op on small tensors.
    """
    args, kwargs = op.template
    consts: list = []
    arg_code = ", ".join(_code_for(a, consts) for a in args)
    kw_names = [k for k in kwargs if isinstance(k, str) and k.isidentifier()]
    if len(kw_names) != len(kwargs):
        raise TsdebugError(f"{op.kind} ({op.name}) has keyword arguments tsdebug cannot pass")
    kw_code = ", ".join(f"{k}={_code_for(kwargs[k], consts)}" for k in kw_names)
    call = f"f({', '.join(p for p in (arg_code, kw_code) if p)})"
    if op.picks is not None:
        body = f"r = {call}\n    return [" + ", ".join(f"r[{i}]" for i in op.picks) + "]"
    else:
        body = f"return [{call}]"
    source = f"def run(v):\n    {body}\n"
    namespace: dict[str, Any] = {"f": op.target, "c": consts}
    exec(compile(source, f"<tsdebug {op.kind}>", "exec"), namespace)
    return namespace["run"]


def bound_int(x: Any) -> int | None:
    """A range bound as an int; None for torch's and sympy's infinities."""
    try:
        v = int(x)
    except Exception:
        return None
    return v if abs(v) < 2 ** 62 else None


class ExportedProgramCode:
    """The code of one ExportedProgram: its graph in both views, its state, its calling convention."""

    format = "exported"

    def __init__(self, ep: Any):
        self.ep = ep
        self.root_block, self.value_infos, self.signature = read_program(ep)
        self._state = self._state_values()
        state_by_value = {}
        for (name, kind, target), vid in zip(self.signature.inputs, self.root_block.params):
            if name in self._state:
                state_by_value[vid] = self._state[name]
                if target:
                    self.value_infos[vid].name = target  # layers.0.conv.weight, not p_layers_0_conv_weight
        self._builder = GraphBuilder(self.root_block, self.value_infos, state_by_value)
        self._built: dict[bool, Any] = {}
        self.leaf_ops: dict[Node, LeafOp] = {}
        self.messages = Messages()
        self.attr_chains: dict = {}
        self.traced_methods: frozenset[str] = frozenset()
        self.in_spec = ep.call_spec.in_spec
        self.out_spec = ep.call_spec.out_spec

    def symbol_ranges(self) -> dict[str, tuple[int | None, int | None]]:
        """Each size symbol of the program (``s0``, ``u1``) and its range; None where unbounded."""
        out = {}
        for sym, vr in (self.ep.range_constraints or {}).items():
            out[str(sym)] = (bound_int(vr.lower), bound_int(vr.upper))
        return out

    # -- graphs

    def method_names(self) -> list[str]:
        return ["forward"]

    def _view(self, inlined: bool):
        got = self._built.get(inlined)
        if got is None:
            got = self._built[inlined] = self._builder.build(inlined)
        return got

    def root_graph(self, method: str = "forward", inlined: bool = False) -> Graph:
        if method != "forward":
            raise ModelError(f"an exported program has one method, forward (not {method!r})")
        return self._view(inlined).root

    @property
    def module_types(self) -> dict[str, str]:
        return self._view(False).module_types

    def callee_graph(self, node: Node, obj: Any = None) -> Graph:
        for built in self._built.values():
            got = built.callees.get(node)
            if got is not None:
                return got
        raise ModelError(f"{node.kind} (node {node.id}) has no callee graph")

    def cached_graphs(self) -> list[Graph]:
        out = []
        for built in self._built.values():
            out.append(built.root)
            out.extend(built.callees.values())
        return out

    def graph_of(self, node_id: str) -> Graph | None:
        for g in self.cached_graphs():
            if g.find(node_id) is not None:
                return g
        return None

    def method_graph(self, obj: Any, method: str, **_kw) -> Graph:
        raise ModelError(f"an exported program has no objects with methods ({method!r})")

    def function_graph(self, qualname: str) -> Graph:
        raise ModelError(f"an exported program calls no functions ({qualname})")

    def fork_graph(self, node: Node, module_path: str = "") -> Graph:
        raise ModelError("an exported program has no forks")

    # -- leaf ops

    def leaf(self, node: Node) -> LeafOp:
        got = self.leaf_ops.get(node)
        if got is None:
            op = node.handle
            if not isinstance(op, _Op) or op.target is None:
                raise ModelError(f"{node.kind} (node {node.id}) is not an op tsdebug can run")
            tags = getattr(op.target, "tags", ()) or ()
            deterministic = not any(t in tags for t in (torch.Tag.nondeterministic_seeded,
                                                        torch.Tag.nondeterministic_bitwise))
            got = self.leaf_ops[node] = LeafOp(make_runner(op), op.writes, deterministic=deterministic)
        return got

    # -- state and calling convention

    def _state_values(self) -> dict[str, Any]:
        """The placeholder values that are not user inputs: parameters, buffers, constants."""
        ep = self.ep
        out: dict[str, Any] = {}
        for name, kind, target in self.signature.inputs:
            if kind in ("parameter", "buffer"):
                if target in ep.state_dict:
                    out[name] = ep.state_dict[target]
                elif target in ep.constants:  # a non-persistent buffer
                    out[name] = ep.constants[target]
                else:
                    raise ModelError(f"the program's {kind} {target!r} is missing from the archive")
            elif kind in ("constant", "object"):
                if target not in ep.constants:
                    raise ModelError(f"the program's constant {target!r} is missing from the archive")
                out[name] = ep.constants[target]
            elif kind == "token":
                out[name] = torch.empty(0)
        return out

    def state_tensors(self) -> list[torch.Tensor]:
        """The module's own tensors (parameters, buffers, constants): what a run may write and must put back."""
        return [v for v in self._state.values() if isinstance(v, torch.Tensor)]

    def flatten_inputs(self, method: str, inputs: tuple, params: list) -> list:
        """The user inputs as the graph's placeholders take them (the pytree leaves of args and kwargs)."""
        args, kwargs = split_call(inputs, params, self.in_spec)
        leaves, spec = pytree.tree_flatten((args, kwargs))
        if spec != self.in_spec:
            raise TsdebugError(f"the inputs do not have the structure the program was exported with: "
                               f"expected {_describe_spec(self.in_spec)}, got {_describe_spec(spec)}")
        return leaves

    def bind(self, method: str, graph: Graph, inputs: tuple, params: list | None = None) -> list:
        """Values for ``graph.inputs``: the flattened user inputs (the graphs hold the program's state)."""
        leaves = self.flatten_inputs(method, inputs, params or [])
        if len(leaves) != len(graph.inputs):
            raise TsdebugError(f"the program takes {len(graph.inputs)} input value(s), got {len(leaves)}")
        return leaves

    def outputs_of(self, method: str, returns: list) -> Any:
        try:
            return pytree.tree_unflatten(list(returns), self.out_spec)
        except Exception:
            return returns[0] if len(returns) == 1 else tuple(returns)


def split_call(inputs: tuple, params: list, in_spec: Any) -> tuple[tuple, dict]:
    """The session's inputs (one per parameter, positional then keyword) as ``(args, kwargs)``."""
    n_args = in_spec.child(0).num_children if in_spec.num_children == 2 else len(inputs)
    keys = list(in_spec.child(1).context) if in_spec.num_children == 2 else []
    args = tuple(inputs[:n_args])
    kwargs = {k: v for k, v in zip(keys, inputs[n_args:])}
    return args, kwargs


def _describe_spec(spec: Any) -> str:
    text = str(spec).replace("\n", " ")
    text = " ".join(text.split())
    return text if len(text) < 200 else text[:199] + "…"


__all__ = ["ExportedProgramCode", "CALL_MODULE", "make_runner", "split_call", "Signature", "_ValueInfo"]
