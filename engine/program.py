"""A loaded archive's code: method and function graphs converted on first use."""

from __future__ import annotations

from typing import Any

import torch

from engine.convert import convert_graph, short_graph_name
from engine.errors import ModelError
from engine.ir import Graph, Node
from engine.ops import Messages, Runner, runner_for


class ClassInstance:
    """An object of a TorchScript class, created by ``prim::CreateObject``.

    The interpreter keeps these itself: handing them to torch and back would
    turn them into copies (a Python class instance when the class's package is
    imported), and the program must see its own object mutate.
    """

    __slots__ = ("qualname", "attrs")

    def __init__(self, qualname: str):
        self.qualname = qualname
        self.attrs: dict[str, Any] = {}

    def getattr(self, name: str) -> Any:
        try:
            return self.attrs[name]
        except KeyError:
            raise AttributeError(f"{self.qualname} object has no attribute {name!r} (not set yet)") from None

    def setattr(self, name: str, value: Any) -> None:
        self.attrs[name] = value

    @property
    def short_name(self) -> str:
        return self.qualname.rsplit(".", 1)[-1]

    def __repr__(self) -> str:
        return f"<{self.short_name} object>"


def type_name(obj: Any) -> str:
    if isinstance(obj, ClassInstance):
        return obj.qualname
    return obj._type().qualified_name()


class Program:
    """The code of one loaded module, as the interpreter sees it.

    ``module`` is the ``torch._C.ScriptModule``; ``cu`` the compilation unit it
    was imported into, kept alive so that ``prim::CallFunction`` callees can be
    found.  Graphs are cached per (type, method) since every instance of a
    module type shares its code.
    """

    def __init__(self, module: torch._C.ScriptModule, cu: torch._C.CompilationUnit | None,
                 traced_methods: frozenset[str] = frozenset()):
        self.module = module
        self.cu = cu
        # Methods whose example inputs torch.jit.trace stored: traced, even
        # when their own nodes carry no source to tell (only calls).
        self.traced_methods = traced_methods
        self._graphs: dict[tuple, Graph] = {}
        self._runners: dict[Node, Runner] = {}
        self.messages = Messages()
        self.root_type = type_name(module)

    # -- graphs -------------------------------------------------------------

    def method_names(self) -> list[str]:
        return list(self.module._method_names())

    def root_graph(self, method: str = "forward", inlined: bool = False) -> Graph:
        return self.method_graph(self.module, method, inlined=inlined, root=True)

    def method_graph(self, obj: Any, method: str, *, inlined: bool = False, root: bool = False) -> Graph:
        tname = type_name(obj)
        if isinstance(obj, ClassInstance):
            return self.function_graph(f"{tname}.{method}")
        key = ("method", tname, method, inlined)
        graph = self._graphs.get(key)
        if graph is None:
            try:
                m = obj._get_method(method)
            except Exception:
                raise ModelError(f"{short_graph_name(tname)} has no method {method!r}") from None
            qualname = f"{tname}.{method}"
            if root and tname == self.root_type:
                name = method
            else:
                name = f"{short_graph_name(tname)}.{method}"
            if inlined:
                tgraph = m.graph.copy()
                torch._C._jit_pass_inline(tgraph)
                name = f"{name}[inlined]"
            else:
                tgraph = m.graph
            graph = convert_graph(tgraph, name, qualname, inlined=inlined)
            if root and graph.origin == "unknown" and method in self.traced_methods:
                graph.origin = "traced"
            self._graphs[key] = graph
        return graph

    def function_graph(self, qualname: str) -> Graph:
        key = ("function", qualname)
        graph = self._graphs.get(key)
        if graph is None:
            fn = self.cu.find_function(qualname) if self.cu is not None else None
            if fn is None:
                raise ModelError(f"function {qualname} is not in the archive's compilation unit")
            graph = convert_graph(fn.graph, short_graph_name(qualname), qualname)
            self._graphs[key] = graph
        return graph

    def cached_graphs(self) -> list[Graph]:
        return list(self._graphs.values())

    def graph_of(self, node_id: str) -> Graph | None:
        """The converted graph a node id belongs to (its name is the id's first part)."""
        name = node_id.split("/", 1)[0]
        for g in self._graphs.values():
            if g.name == name:
                return g
        return None

    # -- leaf ops -----------------------------------------------------------

    def runner(self, node: Node) -> Runner:
        run = self._runners.get(node)
        if run is None:
            run = runner_for(node, self.messages)
            self._runners[node] = run
        return run
