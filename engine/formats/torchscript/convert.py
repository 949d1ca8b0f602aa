"""Convert ``torch._C.Graph`` objects into ``engine.ir``.

This module and ``engine.formats.torchscript.ops`` are the only places that walk torch's graph
objects.  Walking them is slow (tens of microseconds per call), so each graph
is converted once and the interpreter executes the converted form.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

import torch

from engine.ir import UNREAD, Block, Graph, Node, SourceLoc, Value, last_uses
from engine.sources import is_torch_frame

_TRACED_FRAME = re.compile(r"^(?P<file>.+?)\((?P<line>\d+)\): (?P<func>.+)$")
_SCRIPTED_HEAD = re.compile(r'^\s*File "(?P<file>[^"]+)", line (?P<line>\d+)')
_HIERARCHY_PART = re.compile(r"([^.()]+)\([^()]*\)")

@lru_cache(maxsize=65536)
def parse_source_range(text: str) -> SourceLoc | None:
    """Read the text of ``Node.sourceRange()``.

    Scripted nodes give ``File "x.py", line N`` and the lines around it, the
    range underlined with ``~``; traced nodes give the Python stack of the op,
    one ``file(line): function`` per line, innermost first.  Either may be
    followed by a ``Serialized`` location in the archive's own code.
    """
    if not text or not text.strip():
        return None
    original, _, serialized = text.partition("Serialized")
    lines = original.splitlines()
    head = _SCRIPTED_HEAD.match(lines[0]) if lines else None
    if head:
        context_lines = lines[1:]
        line_text = None
        for i, ln in enumerate(context_lines):
            if ln.strip().startswith("~") and i > 0:
                line_text = context_lines[i - 1].strip()
                break
        context = "\n".join(ln for ln in context_lines if not ln.strip().startswith("~"))
        return SourceLoc(
            file=head["file"],
            line=int(head["line"]),
            origin="scripted",
            text=line_text,
            context=context.rstrip() or None,
        )
    frames = []
    for ln in lines:
        m = _TRACED_FRAME.match(ln.strip())
        if m:
            frames.append((m["file"], int(m["line"]), m["func"]))
    if frames:
        user = next((f for f in frames if not is_torch_frame(f[0])), frames[0])
        return SourceLoc(
            file=user[0], line=user[1], origin="traced", stack=tuple(frames), function=user[2]
        )
    if serialized:
        sub = parse_source_range(serialized.lstrip())
        if sub is not None:
            return SourceLoc(
                file=sub.file,
                line=sub.line,
                origin="archive-code",
                text=sub.text,
                context=sub.context,
            )
    return None


def module_path_from_hierarchy(hierarchy: str) -> str:
    """``layer1(Sequential).0(BasicBlock).conv1(Conv2d)`` -> ``layer1.0.conv1``.

    Scripted graphs name the module a method was called on ``SELF`` when it
    is the caller's own module: the root's (``SELF(Net)``), and a method that
    calls another method of its module (``inner(Inner).SELF(Inner).lin``):
    neither adds to the path.
    """
    parts = []
    for name in _HIERARCHY_PART.findall(hierarchy):
        if name == "UNKNOWN_INSTANCE":
            break
        if name != "SELF":
            parts.append(name)
    return ".".join(parts)


def short_graph_name(qualname: str) -> str:
    """``__torch__.torch.nn.modules.conv.Conv2d.forward`` -> ``torch.nn.modules.conv.Conv2d.forward``."""
    return qualname[len("__torch__.") :] if qualname.startswith("__torch__.") else qualname


def _attr_value(n: torch._C.Node, name: str) -> Any:
    kind = n.kindOf(name)
    try:
        return getattr(n, kind)(name)
    except Exception:  # an attribute kind python cannot read (graphs, etc.)
        return f"<{kind}>"


_BLOCK_KINDS = frozenset({"prim::If", "prim::Loop", "prim::With", "prim::Closure"})
def read_source(node: "Node") -> SourceLoc | None:
    """``Node.source`` of a TorchScript node: parsed from torch's source range on first use."""
    return parse_source_range(node.handle.sourceRange()) if node.handle is not None else None


class _Converter:
    def __init__(self, graph_name: str, inlined: bool, module_prefix: str = ""):
        self.graph_name = graph_name
        self.inlined = inlined
        self.module_prefix = module_prefix
        self.values: dict[int, Value] = {}

    def value(self, v: torch._C.Value) -> Value:
        key = v.unique()
        got = self.values.get(key)
        if got is None:
            got = Value(index=len(self.values), name=v.debugName(), type=str(v.type()))
            self.values[key] = got
        return got

    def block(self, b: torch._C.Block, block_id: str, node_prefix: str) -> Block:
        params = tuple(self.value(v) for v in b.inputs())
        nodes = tuple(self.node(n, f"{node_prefix}{i}") for i, n in enumerate(b.nodes()))
        returns = tuple(self.value(v) for v in b.outputs())
        return Block(id=block_id, params=params, nodes=nodes, returns=returns,
                     frees=last_uses(params, nodes, returns))

    def node(self, n: torch._C.Node, node_id: str) -> Node:
        kind = n.kind()
        inputs = tuple(self.value(v) for v in n.inputs())
        outputs = tuple(self.value(v) for v in n.outputs())
        attrs: dict[str, Any] = {}
        callee = None
        if n.hasAttributes():
            for name in n.attributeNames():
                attrs[name] = _attr_value(n, name)
        if kind == "prim::Constant":
            out_type = n.output().type()
            if "value" in attrs:
                try:
                    attrs["value"] = n.output().toIValue()
                except Exception:
                    if out_type.kind() == "EnumType":  # its Python class is not imported
                        from engine.formats.torchscript.program import enum_constant

                        attrs["value"] = enum_constant(n)
            elif out_type.kind() == "FunctionType":
                attrs["function"] = str(out_type)
            else:
                attrs["value"] = None
        elif kind == "prim::CallMethod":
            callee = attrs.get("name")
        elif kind == "prim::CallFunction":
            callee = str(n.inputsAt(0).type())
        schema = n.schema()
        if schema == "(no schema)":
            schema = None
        # Source text is formatted by torch on request (slow): read lazily.
        src_cell = [UNREAD, read_source]
        module_path = ""
        if self.inlined:
            module_path = module_path_from_hierarchy(n.getModuleHierarchy())
            if self.module_prefix:
                module_path = f"{self.module_prefix}.{module_path}" if module_path else self.module_prefix
        blocks = ()
        if kind in _BLOCK_KINDS:
            blocks = tuple(
                self.block(b, f"{node_id}/b{j}", f"{node_id}/b{j}/") for j, b in enumerate(n.blocks())
            )
        return Node(
            id=node_id,
            kind=kind,
            inputs=inputs,
            outputs=outputs,
            attrs=attrs,
            blocks=blocks,
            schema=schema,
            source_cell=src_cell,
            module_path=module_path,
            callee=callee,
            in_idx=tuple(v.index for v in inputs),
            out_idx=tuple(v.index for v in outputs),
            handle=n,
        )


def convert_graph(
    tgraph: torch._C.Graph, name: str, qualname: str, *, inlined: bool = False, module_prefix: str = ""
) -> Graph:
    """Convert one method or function graph.  ``tgraph`` is kept alive by the result.

    ``module_prefix``: the module path the inlined graph's own module has (a forked
    graph's nodes name their modules from the module it was handed).
    """
    conv = _Converter(name, inlined, module_prefix)
    body = conv.block(tgraph.block() if hasattr(tgraph, "block") else tgraph, name, f"{name}/")
    return Graph(
        name=name,
        qualname=qualname,
        inputs=body.params,
        outputs=body.returns,
        body=body,
        num_values=len(conv.values),
        inlined=inlined,
        handle=tgraph,
    )
