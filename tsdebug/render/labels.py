"""What a box in the graph says, for a person: ``conv 3→16, 3x3, s1``, ``enc1 · Block``, ``x``.

Built from the IR alone (kind, schema, constant inputs or ``attrs["arguments"]``,
module paths), so TorchScript archives and torch.export programs read the same.
Weight shapes come from the program's state dict, looked up by the attribute
path a ``prim::GetAttr`` chain reads (TorchScript) or from the tensor a
``prim::Constant`` holds (exported programs).
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping

from engine.ir import CALL_MODULE, Graph, Node, Value

#: Nodes never drawn on their own: their edges pass through to the values they carry.
HIDDEN = frozenset({"prim::Constant", "prim::GetAttr", "prim::ListConstruct", "prim::TupleConstruct",
                    "prim::ListUnpack", "prim::TupleUnpack", "prim::NumToTensor", "aten::Int",
                    "prim::Uninitialized", "prim::unchecked_cast", "aten::ScalarImplicit", "aten::Float",
                    "aten::Bool", "prim::TupleIndex", "prim::dtype", "prim::device"})

#: A constant that is not there.
MISSING = object()

INT64_MAX = 2 ** 63 - 1

# Names and schemas are read as the program pane reads them (one place: engine/view.py).
from engine.view import base_kind, class_name, schema_args, statement_text, value_name  # noqa: E402,F401


def short_number(x: Any) -> str:
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, float):
        return f"{x:g}"
    return str(x)


def dims_text(v: Any, sep: str = "x") -> str:
    """``[3, 3]`` -> ``3x3``; ``[2, 1]`` -> ``2x1``; ``3`` -> ``3``."""
    if isinstance(v, (list, tuple)):
        if not v:
            return ""
        return sep.join(short_number(d) for d in v)
    return short_number(v)


def _same(v: Any) -> Any:
    """One number when every dimension has it (``[1, 1]`` -> 1), else the list."""
    if isinstance(v, (list, tuple)) and v and all(d == v[0] for d in v):
        return v[0]
    return v


class Labeler:
    """Labels for the nodes of one graph.

    ``state`` maps attribute paths from the root module (``enc1.conv1.weight``)
    to tensors; ``receiver`` is the path of the module the graph runs on
    (``""`` for the root).  ``shape_of`` (optional) gives a value's shape once
    run, for weights the state dict does not hold.
    """

    def __init__(self, graph: Graph, state: Mapping[str, Any] | None = None, receiver: str = "",
                 shape_of: Callable[[Value], tuple | None] | None = None):
        self.graph = graph
        self.state = state or {}
        self.receiver = receiver
        self.shape_of = shape_of
        self._producers = {}
        for n in graph.walk():
            for v in n.outputs:
                self._producers[v.index] = n
        self.self_index = {v.index for v in graph.inputs if v.type.startswith("__torch__.") or v.name.startswith("self")}

    # ------------------------------------------------------------ values

    def producer(self, v: Value) -> Node | None:
        return self._producers.get(v.index)

    def constant(self, v: Value) -> Any:
        """The constant value ``v`` holds (lists of constants too), else ``MISSING``."""
        n = self.producer(v)
        if n is None:
            return MISSING
        if n.kind == "prim::Constant":
            return n.attrs.get("value", None)
        if n.kind == "prim::ListConstruct":
            items = [self.constant(i) for i in n.inputs]
            return MISSING if any(i is MISSING for i in items) else items
        return MISSING

    def attr_path(self, v: Value) -> str | None:
        """The attribute path (from the graph's ``self``) a ``prim::GetAttr`` chain reads, else None."""
        names = []
        cur = v
        for _ in range(32):
            if cur.index in self.self_index:
                return ".".join(reversed(names))
            n = self.producer(cur)
            if n is None or n.kind != "prim::GetAttr" or not n.inputs:
                return None
            names.append(str(n.attrs.get("name", "")))
            cur = n.inputs[0]
        return None

    def full_path(self, rel: str) -> str:
        return f"{self.receiver}.{rel}" if self.receiver and rel else (rel or self.receiver)

    def tensor_shape(self, v: Value) -> tuple | None:
        """A parameter's shape, known without running: the state dict, a constant tensor, or the run."""
        n = self.producer(v)
        if n is not None and n.kind == "prim::Constant":
            t = n.attrs.get("value")
            if hasattr(t, "shape"):
                return tuple(t.shape)
        rel = self.attr_path(v)
        if rel:
            t = self.state.get(self.full_path(rel))
            if hasattr(t, "shape"):
                return tuple(t.shape)
        if self.shape_of is not None:
            return self.shape_of(v)
        return None

    def args(self, node: Node) -> dict[str, Any]:
        """The node's arguments by schema name: constants as their values, other inputs as ``Value``s."""
        named = node.attrs.get("arguments")
        out: dict[str, Any] = {}
        inputs = list(node.inputs)
        i = 0
        for _ty, name, _default in schema_args(node.schema):
            if isinstance(named, dict) and name in named:
                out[name] = named[name]
                continue
            if i < len(inputs):
                v = inputs[i]
                i += 1
                c = self.constant(v)
                out[name] = v if c is MISSING else c
        return out

    # ------------------------------------------------------------ labels

    def call_target(self, node: Node) -> tuple[str, str]:
        """(module path relative to this graph's module, class name) of a module call."""
        if node.kind == CALL_MODULE:
            path = str(node.attrs.get("module", ""))
            if self.receiver and path.startswith(self.receiver + "."):
                path = path[len(self.receiver) + 1:]
            return path, class_name(str(node.attrs.get("type", "")))
        recv = node.inputs[0] if node.inputs else None
        if recv is None:
            return "", ""
        rel = self.attr_path(recv)
        method = str(node.attrs.get("name", node.callee or "forward"))
        if re.fullmatch(r"forward\d*", method):
            method = ""  # traced calls of a reused module are forward1, forward2...
        path = rel if rel is not None else value_name(recv)
        if method:
            path = f"{path}.{method}" if path else method
        return path, class_name(recv.type)

    def module_detail(self, path: str, cls: str) -> str:
        """Key sizes of a called module from its weights: ``3→16, 3x3``, ``512→10``."""
        full = self.full_path(path)
        w = self.state.get(f"{full}.weight")
        shape = tuple(w.shape) if hasattr(w, "shape") else None
        low = cls.lower()
        if shape is None:
            ih = self.state.get(f"{full}.weight_ih_l0", self.state.get(f"{full}.weight_ih"))
            if hasattr(ih, "shape") and len(ih.shape) == 2:
                gates = {"lstm": 4, "gru": 3}.get(low.replace("cell", ""), 1)
                return f"{ih.shape[1]}→{ih.shape[0] // gates}"
            return ""
        if "conv" in low and len(shape) >= 3:
            if "transpose" in low:
                return f"{shape[0]}→{shape[1]}, {dims_text(shape[2:])}"
            return f"{shape[1]}→{shape[0]}, {dims_text(shape[2:])}"
        if low in ("linear", "lazylinear", "bilinear") and len(shape) == 2:
            return f"{shape[1]}→{shape[0]}"
        if low.startswith("embedding") and len(shape) == 2:
            return f"{shape[0]}×{shape[1]}"
        if len(shape) == 1 and ("norm" in low):
            return f"{shape[0]}"
        return ""

    def title(self, node: Node) -> str:
        """One line naming what the node does."""
        kind = node.kind
        if kind in ("prim::CallMethod", CALL_MODULE):
            path, cls = self.call_target(node)
            return f"{path} · {cls}" if path and cls else (path or cls or "call")
        if kind == "prim::CallFunction":
            name = (node.callee or "").rsplit(".", 1)[-1]
            return f"{name}()"
        if kind == "prim::If":
            text = statement_text(node, _HEADERS)
            return text or "if"
        if kind == "prim::Loop":
            text = statement_text(node, _HEADERS)
            if text:
                return text
            trip = self.constant(node.inputs[0]) if node.inputs else MISSING
            return "while" if trip == INT64_MAX else "loop"
        if kind.startswith("prim::") or not node.schema and "arguments" not in node.attrs:
            name = base_kind(kind)
            if "name" in node.attrs and kind in ("prim::SetAttr",):
                return f"self.{node.attrs['name']} ="
            return name
        return op_text(node, self)

    def lines(self, node: Node) -> list[str]:
        """The box's text: the title, and for module calls the module's key sizes under it."""
        title = self.title(node)
        if node.kind in ("prim::CallMethod", CALL_MODULE):
            path, cls = self.call_target(node)
            detail = self.module_detail(path.split(".forward")[0], cls)
            if detail:
                return [title, detail]
        return [title]

#: the statements a control-flow box is named by
_HEADERS = ("if ", "for ", "while ", "elif ")


# ------------------------------------------------------------ op texts

_CONV = ("convolution", "_convolution", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
         "conv_transpose3d", "cudnn_convolution", "mkldnn_convolution", "_convolution_mode", "conv_tbc")
_POOL = {"max_pool1d": "maxpool", "max_pool2d": "maxpool", "max_pool3d": "maxpool",
         "max_pool2d_with_indices": "maxpool", "avg_pool1d": "avgpool", "avg_pool2d": "avgpool",
         "avg_pool3d": "avgpool"}
_NORMS = {"batch_norm": "batchnorm", "native_batch_norm": "batchnorm", "_native_batch_norm_legit_no_training":
          "batchnorm", "_native_batch_norm_legit": "batchnorm", "instance_norm": "instancenorm"}
_SCALAR_OPS = {"add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "pow", "rsub", "clamp", "clamp_",
               "hardtanh", "hardtanh_", "leaky_relu", "leaky_relu_", "remainder", "floor_divide", "eq", "ne", "lt",
               "le", "gt", "ge"}


def op_text(node: Node, lab: Labeler) -> str:
    name = base_kind(node.kind)
    args = lab.args(node)
    try:
        text = _op_text(name, args, node, lab)
    except Exception:  # an unusual argument layout: the plain name is still right
        text = None
    return text or _generic(name, args, node)


def _shape(x: Any, lab: Labeler) -> tuple | None:
    """The shape of an argument: a value's (known without running, or once run), a constant tensor's."""
    if isinstance(x, Value):
        return lab.tensor_shape(x)
    return tuple(x.shape) if hasattr(x, "shape") else None


def _op_text(name: str, args: dict, node: Node, lab: Labeler) -> str | None:
    if name in _CONV:
        shape = _shape(args.get("weight"), lab)
        transposed = bool(args.get("transposed", False)) or "transpose" in name
        groups = args.get("groups", 1)
        groups = groups if isinstance(groups, int) else 1
        parts = []
        if shape is not None and len(shape) >= 3:
            cin, cout = (shape[0], shape[1] * groups) if transposed else (shape[1] * groups, shape[0])
            parts.append(f"{cin}→{cout}")
            parts.append(dims_text(shape[2:]))
        stride = _same(args.get("stride", 1))
        if not isinstance(stride, Value) and stride is not None:
            parts.append(f"s{dims_text(stride)}")
        dil = _same(args.get("dilation", 1))
        if isinstance(dil, int) and dil > 1:
            parts.append(f"d{dil}")
        if groups > 1:
            parts.append("dw" if shape is not None and not transposed and groups == shape[0] and shape[1] == 1
                         else f"g{groups}")
        head = "convT" if transposed else "conv"
        return f"{head} {', '.join(parts)}" if parts else head
    if name in ("linear", "addmm") and "weight" in args or name == "linear":
        shape = _shape(args.get("weight"), lab)
        if shape is not None and len(shape) == 2:
            return f"linear {shape[1]}→{shape[0]}"
        return "linear"
    if name in _NORMS:
        for key in ("weight", "running_mean", "bias"):
            shape = _shape(args.get(key), lab)
            if shape:
                return f"{_NORMS[name]} {shape[0]}"
        return _NORMS[name]
    if name == "layer_norm":
        ns = args.get("normalized_shape")
        return f"layernorm {dims_text(ns)}" if isinstance(ns, (list, tuple)) else "layernorm"
    if name == "group_norm":
        g = args.get("num_groups")
        return f"groupnorm {g}" if isinstance(g, int) else "groupnorm"
    if name in _POOL:
        parts = []
        k = args.get("kernel_size")
        if k is not None and not isinstance(k, Value):
            parts.append(dims_text(k))
        s = _same(args.get("stride"))
        if isinstance(s, (list, tuple)) and not s:
            s = k  # stride=[] means the kernel size
        if s is not None and not isinstance(s, Value):
            parts.append(f"s{dims_text(s)}")
        return f"{_POOL[name]} {', '.join(parts)}" if parts else _POOL[name]
    if name.startswith("adaptive_") and "pool" in name:
        size = args.get("output_size")
        kind = "adaptive " + ("maxpool" if "max" in name else "avgpool")
        return f"{kind} {dims_text(size)}" if isinstance(size, (list, tuple, int)) else kind
    if name in ("embedding", "embedding_bag"):
        shape = _shape(args.get("weight"), lab)
        return f"embedding {shape[0]}×{shape[1]}" if shape and len(shape) == 2 else "embedding"
    if name in ("cat", "concat", "concatenate", "stack"):
        d = args.get("dim", 0)
        return f"{name} dim={d}" if isinstance(d, int) else name
    if name in ("softmax", "log_softmax", "_softmax", "_log_softmax"):
        d = args.get("dim")
        return f"{name.lstrip('_')} dim={d}" if isinstance(d, int) else name.lstrip("_")
    if name in ("dropout", "dropout_", "feature_dropout", "alpha_dropout"):
        p = args.get("p")
        return f"dropout p={short_number(p)}" if isinstance(p, (int, float)) else "dropout"
    if name in _SCALAR_OPS:
        other = args.get("other", args.get("exponent", args.get("scalar")))
        if hasattr(other, "dim") and not isinstance(other, Value) and other.dim() == 0 and other.numel() == 1:
            other = other.item()  # a traced Python number is a 0-dim tensor constant
        if other is not None and not isinstance(other, Value) and isinstance(other, (int, float)):
            return f"{name} {short_number(other)}"
        return name
    return None


def _generic(name: str, args: dict, node: Node) -> str:
    """The op's name, and its first one or two short constant arguments that differ from their defaults."""
    defaults = {n: d for _t, n, d in schema_args(node.schema)}
    shown = []
    for key, val in args.items():
        if isinstance(val, Value) or val is None or key in ("self", "input", "out", "memory_format", "layout",
                                                            "device", "pin_memory", "dtype", "non_blocking"):
            continue
        if hasattr(val, "shape"):
            continue
        text = dims_text(val, ",") if isinstance(val, (list, tuple)) else short_number(val)
        default = defaults.get(key)
        if default is not None and default.strip("[]") == text.replace("x", ","):
            continue
        if isinstance(val, (list, tuple)):
            text = f"[{', '.join(short_number(d) for d in val)}]"
        if len(text) > 14:
            continue
        shown.append(f"{key}={text}")
        if len(shown) == 2:
            break
    return f"{name} {' '.join(shown)}" if shown else name


def input_label(v: Value, shape: str = "") -> str:
    """A graph input: its parameter name, and its type when it is not a tensor."""
    name = value_name(v) or v.name
    ty = v.type
    if ty in ("Tensor", "") or shape:
        return name
    return f"{name} : {ty}"


def shape_text(value: Any) -> str:
    """What an edge says about the value it carries: ``1×16×32×32`` for a tensor (kept, dropped or
    summarized), the number for a scalar, ``[3 tensors]`` for a list of tensors; else ''."""
    if hasattr(value, "summary") and hasattr(value.summary, "shape"):  # a dropped tensor
        value = value.summary
    shape = getattr(value, "shape", None)
    if shape is not None and not isinstance(value, (str, bytes)):
        try:
            dims = tuple(int(d) for d in shape)
        except (TypeError, ValueError):  # symbolic sizes
            dims = tuple(shape)
        return "×".join(str(d) for d in dims) if dims else "scalar"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, float)):
        return short_number(value)
    if isinstance(value, (list, tuple)) and value and all(hasattr(v, "shape") for v in value):
        return f"[{len(value)} tensors]"
    return ""
