"""A loaded archive's code: method and function graphs converted on first use."""

from __future__ import annotations

import enum
from typing import Any

import torch

from engine.formats.torchscript.convert import convert_graph, short_graph_name
from engine.errors import ModelError, TsdebugError
from engine.ir import Graph, Node, SourceLoc
from engine.sources import is_user_file
from engine.formats.torchscript.ops import leaf_op, return_none
from engine.run.leaf import LeafOp, Messages


class ClassInstance:
    """An object of a TorchScript class, created by ``prim::CreateObject``.

    The interpreter keeps these itself: handing them to torch and back would
    turn them into copies (a Python class instance when the class's package is
    imported), and the program must see its own object mutate.
    """

    __slots__ = ("qualname", "attrs", "type")

    def __init__(self, qualname: str, ty: Any = None):
        self.qualname = qualname
        self.type = ty  # the torch ClassType, to build a real object when one is needed
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


_PLAIN_TYPES = (torch.Tensor, int, float, bool, str, list, tuple, dict, type(None), torch._C.ScriptObject,
                torch._C.ScriptModule)
# exact types first (parameters are most of what modules hold): isinstance on torch.Tensor is slow for non-tensors
_PLAIN_TYPE_SET = frozenset(_PLAIN_TYPES + (torch.nn.Parameter,))


def is_script_class_copy(value: Any) -> bool:
    """A Python object torch built as a *copy* of a TorchScript class object."""
    if type(value) in _PLAIN_TYPE_SET or isinstance(value, _PLAIN_TYPES):
        return False
    if isinstance(value, enum.Enum):
        return False  # enum members are values: the same member, not a copy
    try:
        import torch.jit._state as state

        return state._get_script_class(type(value)) is not None
    except Exception:
        return False


def _inlined_copy(graph: torch._C.Graph) -> torch._C.Graph:
    """A copy of ``graph`` with its calls inlined, all the way down.

    One pass of torch's inliner can leave the calls inside what it inlined (a
    forked graph's, once a run had compiled its callee); another pass takes
    them.  Calls on interfaces cannot be inlined and stay.
    """
    graph = graph.copy()
    calls = -1
    while True:
        torch._C._jit_pass_inline(graph)
        left = len(graph.findAllNodes("prim::CallMethod")) + len(graph.findAllNodes("prim::CallFunction"))
        if left == 0 or left == calls:  # all inlined, or what is left cannot be
            return graph
        calls = left


class ObjectRef:
    """A TorchScript class object held by a module (``self.box_coder``).

    torch cannot hand such objects to Python (it asserts, or builds a copy
    when the class's package is imported), so the interpreter refers to them
    by their attribute path from a module it can hold, and reads and writes
    their attributes with small compiled functions along that path.
    """

    __slots__ = ("root", "steps", "qualname")

    def __init__(self, root: Any, steps: tuple, qualname: str):
        self.root = root  # a torch._C.ScriptModule
        self.steps = steps  # ((attribute name, torch type), ...)
        self.qualname = qualname

    @property
    def short_name(self) -> str:
        return self.qualname.rsplit(".", 1)[-1]

    def extend(self, name: str, ty: Any) -> "ObjectRef":
        qualname = str(ty)
        if qualname.startswith("Optional[") and qualname.endswith("]"):
            qualname = qualname[len("Optional["):-1]
        return ObjectRef(self.root, self.steps + ((name, ty),), qualname)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectRef) and other.root == self.root and \
            [n for n, _ in other.steps] == [n for n, _ in self.steps]

    def __hash__(self) -> int:
        return hash((hash(self.root), tuple(n for n, _ in self.steps)))

    def __repr__(self) -> str:
        return f"<{self.short_name} object at self.{'.'.join(n for n, _ in self.steps)}>"


class EnumMember:
    """A TorchScript enum value whose Python class is not imported.

    torch hands an enum to Python only as a member of its Python class; a
    loaded archive does not bring the class along.  The interpreter then
    holds the member's class name, name and value, read by a small compiled
    function (``prim::EnumName``, ``prim::EnumValue``), and runs the enum
    ops itself (``ops.ENUM_OPS``).
    """

    __slots__ = ("qualname", "name", "value")

    def __init__(self, qualname: str, name: str, value: Any):
        self.qualname = qualname
        self.name = name
        self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EnumMember) and other.qualname == self.qualname and other.name == self.name

    def __hash__(self) -> int:
        return hash((self.qualname, self.name))

    def __repr__(self) -> str:
        return f"{self.qualname.rsplit('.', 1)[-1]}.{self.name}"


def _unwrap_optional(ty: Any) -> Any:
    return ty.getElementType() if ty.kind() == "OptionalType" else ty


def _getattr_path(g: Any, v: Any, steps: Any) -> Any:
    """Append ``v.a.b…`` to graph ``g`` for ``steps`` ((name, torch type), ...); the path only
    goes through objects that exist, so no Optional on the way."""
    for name, ty in steps:
        n = g.create("prim::GetAttr", [v], 1)
        n.s_("name", name)
        g.insertNode(n)
        n.output().setType(_unwrap_optional(ty))
        v = n.output()
    return v


def _enum_function(g: Any, value: Any) -> Any:
    """Finish graph ``g`` to return (name, value) of the enum ``value``, and compile it."""
    value_type = _unwrap_optional(value.type()).containedTypes()[0]
    name = g.create("prim::EnumName", [value], 1)
    g.insertNode(name)
    name.output().setType(torch._C.StringType.get())
    val = g.create("prim::EnumValue", [value], 1)
    g.insertNode(val)
    val.output().setType(value_type)
    tup = g.create("prim::TupleConstruct", [name.output(), val.output()], 1)
    g.insertNode(tup)
    tup.output().setType(torch._C.TupleType([torch._C.StringType.get(), value_type]))
    g.registerOutput(tup.output())
    return torch._C._create_function_from_graph("tsdebug_enum", g)


def enum_constant(node: Any) -> EnumMember:
    """The value of a ``prim::Constant`` of enum type (a torch node)."""
    g = torch._C.Graph()
    const = g.createClone(node, lambda v: v)
    g.insertNode(const)
    name, value = _enum_function(g, const.output())()
    return EnumMember(node.output().type().annotation_str, name, value)


def is_enum_type(ty: Any) -> bool:
    return _unwrap_optional(ty).kind() == "EnumType"


def read_enum_attr(cache: dict, root: Any, steps: tuple, name: str, ty: Any) -> EnumMember | None:
    """``root.a.b.name`` where it holds an enum member (None where it holds None)."""
    key = ("enum", root._type().qualified_name(), tuple(n for n, _ in steps), name)
    fn = cache.get(key)
    if fn is None:
        g = torch._C.Graph()
        v = g.addInput()
        v.setType(root._type())
        fn = cache[key] = _enum_function(g, _getattr_path(g, v, list(steps) + [(name, ty)]))
    member_name, value = fn(root)
    return EnumMember(_unwrap_optional(ty).annotation_str, member_name, value)


def _chain_function(cache: dict, root: Any, steps: tuple, final: tuple, write_type: Any = None):
    """Compile ``root.a.b.final`` (read), or ``root.a.b.final = v`` (write when ``write_type``).

    ``cache`` belongs to one program: types of the same name from two
    archives are different types.
    """
    key = (root._type().qualified_name(), tuple(n for n, _ in steps), final[0], write_type is not None)
    fn = cache.get(key)
    if fn is not None:
        return fn
    g = torch._C.Graph()
    v = g.addInput()
    v.setType(root._type())
    value_in = None
    if write_type is not None:
        value_in = g.addInput()
        value_in.setType(write_type)
    v = _getattr_path(g, v, steps)
    name, ty = final
    if write_type is not None:
        n = g.create("prim::SetAttr", [v, value_in], 0)
        n.s_("name", name)
        g.insertNode(n)
        return_none(g)
    else:
        n = g.create("prim::GetAttr", [v], 1)
        n.s_("name", name)
        g.insertNode(n)
        n.output().setType(ty)
        g.registerOutput(n.output())
    fn = torch._C._create_function_from_graph("tsdebug_attr", g)
    cache[key] = fn
    return fn


def read_object_attr(cache: dict, ref: ObjectRef, name: str, ty: Any) -> Any:
    if is_enum_type(ty):
        try:
            fn = _chain_function(cache, ref.root, ref.steps, (name, ty))
            return fn(ref.root)  # the class is imported: torch hands over its member
        except RuntimeError:
            return read_enum_attr(cache, ref.root, ref.steps, name, ty)
    fn = _chain_function(cache, ref.root, ref.steps, (name, ty))
    try:
        value = fn(ref.root)
    except RuntimeError:
        if "__torch__." not in str(ty):
            raise
        return ref.extend(name, ty)  # another class object: keep the path
    if is_script_class_copy(value):
        return ref.extend(name, ty)
    return value


def write_object_attr(cache: dict, ref: ObjectRef, name: str, value: Any, ty: Any) -> None:
    fn = _chain_function(cache, ref.root, ref.steps, (name, None), write_type=ty)
    fn(ref.root, value)


def store_instance(module: Any, name: str, instance: ClassInstance) -> None:
    """``module.name = instance``: build the real TorchScript object inside torch.

    A module can only hold real objects; one compiled function creates the
    object (and any it holds), sets its attributes and stores it.
    """
    g = torch._C.Graph()
    target = g.addInput()
    target.setType(module._type())
    leaves: list[Any] = []

    def build(inst: ClassInstance):
        if inst.type is None:
            raise TypeError(f"cannot store a {inst.short_name} object into a module")
        n = g.create("prim::CreateObject", [], 1)
        g.insertNode(n)
        n.output().setType(inst.type)
        for attr, val in inst.attrs.items():
            if isinstance(val, ClassInstance):
                v = build(val)
            else:
                inferred = torch._C._jit_try_infer_type(val)
                if not inferred.success():
                    raise TypeError(f"cannot store attribute {attr!r} of a {inst.short_name} object into a module")
                v = g.addInput()
                v.setType(inferred.type())
                leaves.append(val)
            setter = g.create("prim::SetAttr", [n.output(), v], 0)
            setter.s_("name", attr)
            g.insertNode(setter)
        return n.output()

    obj = build(instance)
    store = g.create("prim::SetAttr", [target, obj], 0)
    store.s_("name", name)
    g.insertNode(store)
    return_none(g)
    torch._C._create_function_from_graph("tsdebug_store", g)(module, *leaves)


def type_name(obj: Any) -> str:
    if isinstance(obj, (ClassInstance, ObjectRef)):
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
        self.leaf_ops: dict[Node, LeafOp] = {}
        self._callees: dict[Node, Graph] = {}
        self.messages = Messages()
        self.attr_chains: dict[tuple, Any] = {}  # compiled reads/writes of class-object attributes
        self.root_type = type_name(module)

    # -- graphs -------------------------------------------------------------

    def method_names(self) -> list[str]:
        return list(self.module._method_names())

    def root_graph(self, method: str = "forward", inlined: bool = False) -> Graph:
        return self.method_graph(self.module, method, inlined=inlined, root=True)

    def method_graph(self, obj: Any, method: str, *, inlined: bool = False, root: bool = False) -> Graph:
        tname = type_name(obj)
        if isinstance(obj, (ClassInstance, ObjectRef)):
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
                tgraph = _inlined_copy(m.graph)
                name = f"{name}[inlined]"
            else:
                tgraph = m.graph
            graph = convert_graph(tgraph, name, qualname, inlined=inlined)
            if root and graph.origin == "unknown" and method in self.traced_methods:
                graph.origin = "traced"
            self._graphs[key] = graph
        return graph

    def callee_graph(self, node: Node, obj: Any) -> Graph:
        """The graph a ``prim::CallMethod`` node runs on ``obj``.

        Cached per node when the receiver's static type is a class (modules
        are): TorchScript classes are nominal, so that type is the object's
        own.  Interface-typed receivers are resolved on each call.
        """
        graph = self._callees.get(node)
        if graph is None:
            graph = self.method_graph(obj, node.callee)
            if node.handle is not None and isinstance(node.handle.inputsAt(0).type(), torch._C.ClassType) \
                    and not isinstance(obj, (ClassInstance, ObjectRef)):
                self._callees[node] = graph
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

    def fork_graph(self, node: Node, module_path: str = "") -> Graph:
        """The graph a ``prim::fork`` node runs (its ``Subgraph``), named after the node.

        A fork in the inlined view forks an inlined graph too (torch's inliner
        leaves subgraphs alone); its nodes' module paths are relative to the
        module handed to the fork, whose path is ``module_path``.
        """
        key = ("fork", node.id)
        graph = self._graphs.get(key)
        if graph is None:
            sub = node.attrs.get("Subgraph")
            if not isinstance(sub, torch._C.Graph):
                raise ModelError(f"{node.kind} (node {node.id}) has no subgraph torch hands over")
            # no "/" in a graph's name (a node id is the graph's name, "/", the node's path):
            # ``forward/5`` forks ``forward.fork@5``
            graph_name, _, where = node.id.partition("/")
            name = f"{graph_name}.fork@{where.replace('/', '-')}"
            parent = self.graph_of(node.id)
            if parent is not None and parent.inlined:
                sub = _inlined_copy(sub)
                graph = convert_graph(sub, name, name, inlined=True, module_prefix=module_path)
            else:
                graph = convert_graph(sub, name, name)
            self._graphs[key] = graph
        return graph

    # -- where a traced call came from ----------------------------------------

    def call_site(self, node: Node) -> SourceLoc | None:
        """The user's line of a traced ``prim::CallMethod`` (``e1 = self.enc1(x)``), on disk.

        torch.jit.trace records a Python stack for each op but none for a call:
        its source range is a line of the archive's own code.  The ops the call
        ran hold it: in their stack the call site is the user's frame just
        outside the user-written modules between the op and the call (a module
        of torch's own adds no frame of the user's).
        """
        if node.kind != "prim::CallMethod" or not node.inputs or node.callee is None:
            return None
        caller = self.graph_of(node.id)
        if caller is None or caller.inlined:
            return None
        obj = self._receiver(caller, node)
        if obj is None:
            return None
        found = self._first_traced_stack(self.method_graph(obj, node.callee), obj, 0)
        if found is None:
            return None
        stack, levels = found
        user = [f for f in stack if is_user_file(f[0])]
        if levels >= len(user):
            return None
        file, line, function = user[levels]
        return SourceLoc(file=file, line=line, origin="traced", stack=stack, function=function)

    def call_params(self, node: Node) -> list[str]:
        """The parameter names of the method a ``prim::CallMethod`` calls (``self``, ``x``), [] when unknown."""
        if node.kind != "prim::CallMethod" or not node.inputs or node.callee is None:
            return []
        caller = self.graph_of(node.id)
        obj = self._receiver(caller, node) if caller is not None else None
        if obj is None:
            return []
        try:
            callee = self.method_graph(obj, node.callee)
        except TsdebugError:
            return []
        return [v.name.rsplit(".", 1)[0] if v.name.rsplit(".", 1)[-1].isdigit() else v.name for v in callee.inputs]

    def _instance_of(self, graph: Graph) -> Any:
        """A module object whose method ``graph`` is: the root, or one found through the calls from it."""
        tname = graph.qualname.rsplit(".", 1)[0]
        known = self.__dict__.setdefault("_instances", {type_name(self.module): self.module})
        if tname in known:
            return known[tname]
        todo = [self.root_graph()]
        seen: set[int] = set()
        while todo and tname not in known:
            g = todo.pop()
            if id(g) in seen or len(seen) > 2000:
                continue
            seen.add(id(g))
            owner = known.get(g.qualname.rsplit(".", 1)[0])
            if owner is None:
                continue
            for n in g.walk():
                if n.kind != "prim::CallMethod" or n.callee is None:
                    continue
                obj = self._receiver(g, n, owner)
                if obj is None or isinstance(obj, (ClassInstance, ObjectRef)):
                    continue
                known.setdefault(type_name(obj), obj)
                try:
                    todo.append(self.method_graph(obj, n.callee))
                except TsdebugError:
                    continue
        return known.get(tname)

    def _receiver(self, graph: Graph, node: Node, owner: Any = None) -> Any:
        """The module a call runs on, read through the ``GetAttr`` chain from the graph's ``self``."""
        names = []
        cur = node.inputs[0]
        for _ in range(64):
            if cur.index == graph.inputs[0].index if graph.inputs else False:
                break
            prod = graph.producer(cur)
            if prod is None or prod.kind != "prim::GetAttr" or not prod.inputs:
                return None
            names.append(str(prod.attrs.get("name", "")))
            cur = prod.inputs[0]
        else:
            return None
        obj = owner if owner is not None else self._instance_of(graph)
        try:
            for name in reversed(names):
                obj = obj.getattr(name)
        except Exception:  # an attribute only set at run time
            return None
        return obj if hasattr(obj, "_get_method") else None

    def _first_traced_stack(self, graph: Graph, obj: Any, levels: int, depth: int = 0):
        """(stack, levels): the Python stack of the first traced op the call runs, and how many
        user-written modules lie between it and the call."""
        if depth > 16:
            return None
        if not graph.qualname.startswith("__torch__.torch."):
            levels += 1  # the user's own module: its forward is a frame of the user's file
        for n in graph.walk():
            if n.kind == "prim::Constant":
                continue
            if n.kind == "prim::CallMethod" and n.callee is not None:
                inner = self._receiver(graph, n, obj)
                if inner is None:
                    continue
                try:
                    got = self._first_traced_stack(self.method_graph(inner, n.callee), inner, levels, depth + 1)
                except TsdebugError:
                    got = None
                if got is not None:
                    return got
                continue
            src = n.source
            if src is not None and src.origin == "traced" and src.stack:
                return src.stack, levels
        return None

    def cached_graphs(self) -> list[Graph]:
        return list(self._graphs.values())

    def graph_of(self, node_id: str) -> Graph | None:
        """The converted graph a node id belongs to (its name is the id's first part)."""
        name = node_id.split("/", 1)[0]
        for g in self._graphs.values():
            if g.name == name:
                return g
        return None

    # -- calling convention -------------------------------------------------

    def bind(self, method: str, graph: Graph, inputs: tuple, params: list | None = None) -> list:
        """Values for the root graph's inputs: the module (``self``), then the inputs."""
        n_params = len(graph.inputs) - 1
        if len(inputs) != n_params:
            names = ", ".join(v.name.split(".")[0] for v in graph.inputs[1:])
            raise TsdebugError(f"{method} takes {n_params} input(s) ({names}), got {len(inputs)}")
        return [self.module, *inputs]

    def outputs_of(self, method: str, returns: list) -> Any:
        """What the method returns, from its graph's returned values."""
        return returns[0] if len(returns) == 1 else tuple(returns)

    def state_tensors(self) -> list:
        """Tensors the machine must treat as the module's before any GetAttr reads them (none here:
        an archive's method reads its parameters and buffers through GetAttr)."""
        return []

    # -- leaf ops -----------------------------------------------------------

    def leaf(self, node: Node) -> LeafOp:
        """How to run a leaf node (built on first use, then cached)."""
        got = self.leaf_ops.get(node)
        if got is None:
            got = self.leaf_ops[node] = leaf_op(node, self.messages)
        return got
