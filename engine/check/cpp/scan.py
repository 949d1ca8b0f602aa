"""What a C++ deployment of an archive must provide, read from the IR before anything is built.

Operators outside torch's own namespaces need their library in the C++ process; an operator
registered from Python (``torch.library``) has no library at all; custom classes
(``__torch__.torch.classes.ns.Name``) need the library that registers them; ``prim::PythonOp``
is a call back into Python, which a C++ program does not have.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import re
from dataclasses import dataclass, field
from typing import Any

import torch

from engine.ir import Node

#: Namespaces libtorch itself registers (a C++ program linked against libtorch has them).
TORCH_NAMESPACES = frozenset({
    "aten", "prim", "prims", "quantized", "_quantized", "quantized_decomposed", "_caffe2", "mkldnn",
    "mkldnn_prepacked", "_mkldnn", "onednn", "profiler", "_test", "cuda", "sparse", "_nested", "attr", "onnx",
    "debug", "fused", "tensorexpr", "static", "torch", "c10", "cudnn", "miopen", "xnnpack", "_prepacked",
    "inductor", "uninitialized", "upgraders", "custom", "rngprims", "_c10d_functional", "c10d", "_dtensor",
})

_CUSTOM_CLASS = re.compile(r"__torch__\.torch\.classes\.([A-Za-z_]\w*)\.([A-Za-z_]\w*)")


@dataclass
class Requirement:
    """One thing the C++ program must provide.

    ``kind``: ``operator`` (a namespace's operators), ``class`` (a custom class), ``python`` (a call
    into Python, which C++ cannot make).  ``provider``: where it comes from here (``library``: a
    compiled library, in ``library``; ``python``: registered from Python, no library exists;
    ``missing``: not loaded in this Python either).  ``nodes``: IR node ids that use it.
    """

    kind: str
    name: str
    provider: str
    what: str
    library: str | None = None
    nodes: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)

    @property
    def blocks_cpp(self) -> bool:
        """Whether a C++ program cannot provide it at all (only a rewrite helps)."""
        return self.provider in ("python", "missing") or self.kind == "python"

    def to_json(self) -> dict:
        return {"kind": self.kind, "name": self.name, "provider": self.provider, "what": self.what,
                "library": self.library, "nodes": self.nodes, "sources": self.sources}


def _registered_at(qualified: str) -> str | None:
    """Where torch says the schema of ``ns::op`` was registered (a file:line), None when it is not."""
    try:
        dump = torch._C._dispatch_dump(qualified)
    except Exception:
        return None
    for line in dump.splitlines():
        if line.startswith("debug: registered at "):
            return line[len("debug: registered at "):].strip()
    return None


def _is_python_file(where: str | None) -> bool:
    return bool(where) and bool(re.search(r"\.py:\d+$", where))


def package_libraries(namespace: str) -> list[str]:
    """Compiled libraries of the installed Python package named like the namespace
    (``torchvision`` -> ``.../torchvision/_C.so``), most likely first."""
    try:
        spec = importlib.util.find_spec(namespace)
    except (ImportError, ValueError):
        return []
    if spec is None or not spec.submodule_search_locations:
        return []
    found: list[str] = []
    for folder in spec.submodule_search_locations:
        for pattern in ("_C*.so", "*.so", "lib/*.so"):
            for path in sorted(glob.glob(os.path.join(folder, pattern))):
                if path not in found:
                    found.append(path)
    return found


def needs_python(library: str) -> bool:
    """Whether a compiled library is a Python extension: it links ``libtorch_python.so``, which needs a
    Python interpreter, so no C++ program can load it (torchvision's wheel ships its ops so)."""
    needle = b"libtorch_python.so"
    try:
        if not os.path.isfile(library) or os.path.getsize(library) > 1 << 30:
            return False
        with open(library, "rb") as f:
            tail = b""
            while chunk := f.read(1 << 20):  # a chunk at a time: these libraries run to hundreds of MB
                if needle in tail + chunk:
                    return True
                tail = chunk[-len(needle):]
    except OSError:
        return False
    return False


def _from_library(namespace: str, names: str, lib: str) -> "Requirement":
    if needs_python(lib):
        return Requirement("operator", namespace, "python",
                           f"{names}: from {lib}, a Python extension (it links libtorch_python.so): a C++ program "
                           f"cannot load it; build {namespace}'s C++ library from its source with CMake "
                           f"(for torchvision: libtorchvision.so) and pass it with --library", lib)
    return Requirement("operator", namespace, "library", f"{names}: from {lib} (load it with --library {lib})", lib)


def _loaded_library_for(namespace: str) -> str | None:
    """A library loaded with ``torch.ops.load_library`` (``--library``) whose name says the namespace."""
    loaded = sorted(getattr(torch.ops, "loaded_libraries", set()))
    for path in loaded:
        if namespace in os.path.basename(path):
            return path
    return loaded[0] if len(loaded) == 1 else None


def _operator_requirement(namespace: str, ops: set[str]) -> Requirement:
    names = ", ".join(f"{namespace}::{op}" for op in sorted(ops))
    where = next((w for w in (_registered_at(f"{namespace}::{op}") for op in sorted(ops)) if w), None)
    if where is None:
        libs = package_libraries(namespace)
        if libs:
            return _from_library(namespace, names, libs[0])
        return Requirement("operator", namespace, "missing",
                           f"{names}: not registered here either; C++ needs the library that defines it")
    if _is_python_file(where):
        return Requirement("operator", namespace, "python",
                           f"{names}: registered from Python ({where}); a C++ program cannot see it: "
                           "define it in C++ (TORCH_LIBRARY) and load that library with --library")
    lib = _loaded_library_for(namespace) or next(iter(package_libraries(namespace)), None)
    if lib:
        return _from_library(namespace, names, lib)
    return Requirement("operator", namespace, "library",
                       f"{names}: a compiled library registers it ({where}); C++ must load that library "
                       "with --library")


def _python_op_name(node: Node) -> str:
    """The Python callable a ``prim::PythonOp`` calls (``F`` of ``F.apply``), where torch says."""
    try:
        return node.handle.pyname()
    except Exception:
        return str(node.attrs.get("name") or "?")


def _node_types(node: Node) -> list[str]:
    return [v.type for v in (*node.inputs, *node.outputs)]


def scan_graphs(graphs: list[Any]) -> list[Requirement]:
    """Requirements of the given IR graphs (inlined method graphs: calls are in them)."""
    ops: dict[str, set[str]] = {}
    op_nodes: dict[str, list[Node]] = {}
    classes: dict[str, list[Node]] = {}
    python: dict[str, list[Node]] = {}
    for graph in graphs:
        for node in graph.walk():
            ns, _, op = node.kind.partition("::")
            if node.kind == "prim::PythonOp":
                python.setdefault(_python_op_name(node), []).append(node)
            elif op and ns not in TORCH_NAMESPACES:
                ops.setdefault(ns, set()).add(op)
                op_nodes.setdefault(ns, []).append(node)
            for t in _node_types(node):
                for m in _CUSTOM_CLASS.finditer(t):
                    classes.setdefault(f"{m.group(1)}.{m.group(2)}", []).append(node)
    found: list[Requirement] = []
    for ns in sorted(ops):
        req = _operator_requirement(ns, ops[ns])
        _add_nodes(req, op_nodes[ns])
        found.append(req)
    for qualname in sorted(classes):
        ns = qualname.split(".", 1)[0]
        lib = _loaded_library_for(ns) or next(iter(package_libraries(ns)), None)
        req = Requirement("class", qualname, "library" if lib else "missing",
                          f"custom class torch.classes.{qualname}: "
                          + (f"from {lib} (load it with --library {lib})" if lib else
                             "C++ must load the library that registers it with --library"), lib)
        _add_nodes(req, classes[qualname])
        found.append(req)
    for name in sorted(python):
        req = Requirement("python", name, "python",
                          f"prim::PythonOp {name}: a call into Python (tracing through a Python function, "
                          "or @torch.jit.ignore); C++ has no Python to call: script or rewrite it in TorchScript")
        _add_nodes(req, python[name])
        found.append(req)
    return found


def _add_nodes(req: Requirement, nodes: list[Node]) -> None:
    for n in nodes:
        if n.id not in req.nodes:
            req.nodes.append(n.id)
            src = n.source
            if src is not None and src.file:
                req.sources.append(f"{src.file}:{src.line}")


def requirements(program: Any) -> list[Requirement]:
    """What the archive's methods need from a C++ program (all methods of the root module, calls inlined)."""
    graphs = []
    for name in sorted(program.method_names()):
        try:
            graphs.append(program.root_graph(name, inlined=True))
        except Exception:  # a method the converter cannot read is the run's business, not the scan's
            continue
    return scan_graphs(graphs)
