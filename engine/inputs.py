"""Model inputs: files, specs, a traced archive's stored shapes, inference from the graph.

Specs, one per model input (``--input``):

* ``float32[1,3,224,224]``, ``int64[2,8]``, with an optional value range
  ``int64[2,8]:0..1000`` or ``float32[4]:-1..1`` (floats default to a normal
  distribution, integers to ``0..10``);
* ``1x3x224x224`` (float32);
* ``int:3``, ``float:0.5``, ``bool:true``, ``str:hello``, ``none``;
* ``[SPEC,SPEC]`` a list and ``(SPEC,SPEC)`` a tuple of specs (detection
  models take ``[float32[3,320,320]]``);
* a file: ``.pt``/``.pth`` (one value, ``torch.load(weights_only=True)``),
  ``.npy``, ``.npz`` (one array).

``--inputs FILE.pt`` holds the whole argument tuple (or a dict by parameter
name).  Random values are drawn from a generator seeded per input, so the same
specs and ``--seed`` give the same tensors.
"""

from __future__ import annotations

import os
import re
import zipfile
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from engine.errors import InputError

DTYPES = {
    "float32": torch.float32, "float": torch.float32, "f32": torch.float32,
    "float64": torch.float64, "double": torch.float64, "f64": torch.float64,
    "float16": torch.float16, "half": torch.float16, "f16": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "int64": torch.int64, "long": torch.int64, "i64": torch.int64,
    "int32": torch.int32, "int": torch.int32, "i32": torch.int32,
    "int16": torch.int16, "int8": torch.int8, "uint8": torch.uint8, "bool": torch.bool,
    "complex64": torch.complex64,
}

_TENSOR_SPEC = re.compile(r"^(?P<dtype>[a-z0-9]+)\[(?P<dims>[0-9,\s]*)\](?::(?P<lo>-?[\d.e+-]+)\.\.(?P<hi>-?[\d.e+-]+))?$")
_DIMS_SPEC = re.compile(r"^\d+(x\d+)*$")


@dataclass(frozen=True)
class Param:
    """One parameter of a method's signature."""

    name: str
    type: str
    has_default: bool
    default: Any = None

    def __str__(self) -> str:
        return f"{self.name}: {self.type}"

    def default_value(self) -> Any:
        """The default, or an ``InputError`` when Python cannot hold it."""
        if isinstance(self.default, _Unreadable):
            if self.type.startswith("__torch__."):
                module, _, cls = self.type[len("__torch__."):].rpartition(".")
                where = f"import {module} (it defines {cls})" if module else f"import the script that defines {cls}"
                raise InputError(
                    f"the default of parameter {self.name!r} is a member of the TorchScript enum or class "
                    f"{self.type}, which torch hands to Python only where its class is imported: {where} "
                    "and run the model from Python with engine.Session (see the README)"
                )
            raise InputError(
                f"the default of parameter {self.name!r} ({self.type}) cannot be handed to Python "
                f"({self.default.reason}); tsdebug cannot run a method with such a parameter yet"
            )
        return self.default


@dataclass(frozen=True)
class _Unreadable:
    """A default torch cannot convert to Python (a TorchScript enum whose class is not imported)."""

    reason: str


def signature(method: Any) -> list[Param]:
    """Parameters of a ``torch._C.ScriptMethod`` after ``self``."""
    params = []
    for arg in list(method.schema.arguments)[1:]:
        has_default = bool(arg.has_default_value())
        try:
            default = arg.default_value
        except Exception as exc:
            default = _Unreadable(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
        params.append(Param(arg.name, str(arg.type), has_default, default))
    return params


def describe_signature(method_name: str, params: list[Param]) -> str:
    return f"{method_name}({', '.join(str(p) for p in params)})"


_EXAMPLE_SPECS = {"Tensor": "float32[1,3,224,224]", "int": "int:1", "float": "float:1.0", "bool": "bool:true",
                  "str": "str:text", "Tensor[]": "'[float32[3,224,224]]'", "List[Tensor]": "'[float32[3,224,224]]'"}


def example_arguments(params: list[Param]) -> str:
    """``--input`` flags of the right kinds for the parameters without defaults (for messages)."""
    specs = []
    for p in params:
        if p.has_default:
            break
        t = p.type[len("Optional["):-1] if p.type.startswith("Optional[") else p.type
        specs.append(_EXAMPLE_SPECS.get(t, "FILE.pt"))
    return " ".join(f"--input {s}" for s in specs) or "--input float32[1,3,224,224]"


SEED_RANGE = (-(1 << 63), (1 << 64) - 1)  # what torch.Generator.manual_seed takes


def _generator(seed: int, index: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1000003 + index) % (1 << 64))


def memory_bytes() -> int | None:
    """This machine's physical memory, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def check_allocatable(shape: tuple[int, ...], dtype: torch.dtype, what: str) -> None:
    """A tensor of ``shape`` can exist here: no negative size, not more bytes than the machine has."""
    text = f"{_dtype_name(dtype)}[{','.join(map(str, shape))}]"
    if any(not isinstance(d, int) or d < 0 for d in shape):
        raise InputError(f"{what} {text} has a negative size; every dimension must be 0 or more")
    numel = 1
    for d in shape:
        numel *= d
    size = numel * torch.empty((), dtype=dtype).element_size()
    have = memory_bytes()
    if have is not None and size > have:
        from engine.run.values import human_bytes

        raise InputError(f"{what} {text} needs {human_bytes(size)}, more than this machine's memory "
                         f"({human_bytes(have)}); give a smaller shape")


def random_tensor(shape: tuple[int, ...], dtype: torch.dtype, seed: int, index: int,
                  lo: float | None = None, hi: float | None = None, what: str | None = None) -> torch.Tensor:
    what = what or f"input {index + 1}"
    check_allocatable(tuple(shape), dtype, what)
    try:
        return _random_tensor(tuple(shape), dtype, seed, index, lo, hi)
    except RuntimeError as exc:
        if "allocate" not in str(exc) and "out of memory" not in str(exc).lower():
            raise
        from engine.run.values import human_bytes

        numel = 1
        for d in shape:
            numel *= d
        raise InputError(f"{what} {_dtype_name(dtype)}[{','.join(map(str, shape))}] cannot be allocated "
                         f"({human_bytes(numel * torch.empty((), dtype=dtype).element_size())}: not enough "
                         "free memory); give a smaller shape") from None


def _random_tensor(shape: tuple[int, ...], dtype: torch.dtype, seed: int, index: int,
                   lo: float | None, hi: float | None) -> torch.Tensor:
    gen = _generator(seed, index)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=gen).bool()
    if dtype.is_floating_point or dtype.is_complex:
        if lo is not None and hi is not None:
            return (torch.rand(shape, generator=gen, dtype=torch.float64) * (hi - lo) + lo).to(dtype)
        return torch.randn(shape, generator=gen, dtype=torch.float32).to(dtype)
    lo_i = int(lo) if lo is not None else 0
    hi_i = int(hi) if hi is not None else 10
    if hi_i <= lo_i:
        raise InputError(f"empty value range {lo_i}..{hi_i}")
    return torch.randint(lo_i, hi_i, shape, generator=gen, dtype=torch.int64).to(dtype)


def _load_file(path: str) -> Any:
    from engine import paths

    if not os.path.exists(path):
        raise InputError(f"input file {path}: no such file")
    try:
        paths.read_regular(path, "input file")  # a FIFO would block the read forever
    except InputError:
        raise
    except Exception as exc:
        raise InputError(str(exc)) from None
    lower = path.lower()
    if lower.endswith(".npy"):
        try:
            return torch.from_numpy(np.load(path, allow_pickle=False))
        except Exception as exc:
            raise InputError(f"input file {path}: not a numpy array without pickles ({exc})") from None
    if lower.endswith(".npz"):
        try:
            with np.load(path, allow_pickle=False) as z:
                keys = list(z.keys())
                if len(keys) != 1:
                    raise InputError(
                        f"input file {path} holds {len(keys)} arrays ({', '.join(keys)}); give one file per input"
                    )
                return torch.from_numpy(z[keys[0]])
        except InputError:
            raise
        except Exception as exc:
            raise InputError(f"input file {path}: not a numpy .npz without pickles ({exc})") from None
    if not zipfile.is_zipfile(path):
        raise InputError(f"input file {path}: not a torch.save file (.pt) nor .npy/.npz")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "Weights only load failed" in str(exc):
            raise InputError(
                f"input file {path} holds Python objects that a weights-only load refuses; "
                "save plain tensors, lists, tuples, dicts and scalars"
            ) from None
        raise InputError(f"input file {path}: cannot load ({first})") from None


def split_top_level(text: str) -> list[str]:
    """Split at commas outside brackets: ``float32[2,3],int:1`` -> two specs."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    tail = text[start:]
    if tail.strip():
        parts.append(tail)
    return [p.strip() for p in parts]


def _value_range(spec: str, dtype: torch.dtype, lo_text: str | None,
                 hi_text: str | None) -> tuple[float | None, float | None]:
    """A spec's ``LO..HI``: two numbers, LO below HI, both within what ``dtype`` holds."""
    if lo_text is None or hi_text is None:
        return None, None
    try:
        lo, hi = float(lo_text), float(hi_text)
    except ValueError:
        bad = lo_text if not _is_number(lo_text) else hi_text
        raise InputError(f"--input {spec!r}: the range {lo_text}..{hi_text} is not two numbers "
                         f"({bad!r}); write e.g. 0..1000 or -1..1") from None
    if dtype == torch.bool:
        raise InputError(f"--input {spec!r}: a bool tensor takes no value range")
    if dtype.is_floating_point or dtype.is_complex:
        info = torch.finfo(torch.float32 if dtype.is_complex else dtype)
        low, high = float(info.min), float(info.max)
    else:
        info = torch.iinfo(dtype)
        low, high = float(info.min), float(info.max) + 1  # the high end is exclusive
    if not (low <= lo <= high and low <= hi <= high):
        raise InputError(f"--input {spec!r}: the range {lo_text}..{hi_text} does not fit "
                         f"{_dtype_name(dtype)} ({info.min:g}..{info.max:g})")
    if hi <= lo:
        raise InputError(f"--input {spec!r}: empty value range {lo_text}..{hi_text}; the second number "
                         "must be larger")
    return lo, hi


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def parse_spec(spec: str, seed: int = 0, index: int = 0) -> Any:
    """One ``--input`` value; ``[A,B]`` and ``(A,B)`` make a list or tuple of specs."""
    s = spec.strip()
    if len(s) >= 2 and ((s[0], s[-1]) in (("[", "]"), ("(", ")"))):
        items = [parse_spec(p, seed, index * 1000 + k + 1) for k, p in enumerate(split_top_level(s[1:-1]))]
        return items if s[0] == "[" else tuple(items)
    low = s.lower()
    if low in ("none", "null"):
        return None
    if ":" in s and low.split(":", 1)[0] in ("int", "float", "bool", "str"):
        kind, _, text = s.partition(":")
        kind = kind.lower()
        try:
            if kind == "int":
                return int(text)
            if kind == "float":
                return float(text)
            if kind == "bool":
                if text.lower() in ("true", "1", "yes"):
                    return True
                if text.lower() in ("false", "0", "no"):
                    return False
                raise ValueError(text)
            return text
        except ValueError:
            raise InputError(f"--input {spec!r}: {text!r} is not a {kind}") from None
    m = _TENSOR_SPEC.match(low.replace(" ", ""))
    if m:
        dtype = DTYPES.get(m["dtype"])
        if dtype is None:
            raise InputError(
                f"--input {spec!r}: unknown dtype {m['dtype']!r} (use one of float32, float64, float16, bfloat16, int64, int32, uint8, bool)"
            )
        dims = tuple(int(d) for d in m["dims"].split(",") if d.strip()) if m["dims"].strip() else ()
        lo, hi = _value_range(spec, dtype, m["lo"], m["hi"])
        return random_tensor(dims, dtype, seed, index, lo, hi, what=f"--input {spec!r}:")
    if _DIMS_SPEC.match(low):
        return random_tensor(tuple(int(d) for d in low.split("x")), torch.float32, seed, index,
                             what=f"--input {spec!r}:")
    if os.path.sep in s or "." in s:
        return _load_file(s)
    raise InputError(
        f"--input {spec!r} is neither a file nor a spec; write e.g. float32[1,3,224,224], 1x3x224x224, "
        "int64[2,8]:0..1000, int:3 or bool:true"
    )


def load_inputs_file(path: str, params: list[Param]) -> tuple:
    """``--inputs FILE.pt``: the whole argument tuple, or a dict by parameter name."""
    value = _load_file(path)
    if isinstance(value, (tuple, list)) and not (
        len(params) == 1 and isinstance(value, list) and params[0].type.endswith("[]")
    ):
        return tuple(value)
    if isinstance(value, dict) and value and all(isinstance(k, str) for k in value):
        names = [p.name for p in params]
        unknown = [k for k in value if k not in names]
        if unknown:
            raise InputError(
                f"--inputs {path}: no parameter named {', '.join(unknown)}; the method takes {', '.join(names)}"
            )
        args = []
        for p in params:
            if p.name in value:
                args.append(value[p.name])
            elif p.has_default:
                args.append(p.default_value())
            else:
                raise InputError(f"--inputs {path}: no value for parameter {p.name!r}")
        return tuple(args)
    return (value,)


def fill_defaults(args: tuple, params: list[Param], method: str) -> tuple:
    if len(args) > len(params):
        raise InputError(
            f"{len(args)} inputs given but {describe_signature(method, params)} takes {len(params)}"
        )
    out = list(args)
    for p in params[len(args):]:
        if not p.has_default:
            raise InputError(
                f"no input for {p.name!r}: {describe_signature(method, params)} needs {len(params)}; "
                "give one --input per parameter"
            )
        out.append(p.default_value())
    return tuple(out)


def _type_ok(value: Any, type_str: str) -> bool:
    t = type_str
    if t.startswith("Optional[") and value is None:
        return True
    if t.startswith("Optional["):
        t = t[len("Optional["):-1]
    if t == "Tensor":
        return isinstance(value, torch.Tensor)
    if t == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if t == "float":
        return isinstance(value, (float, int)) and not isinstance(value, bool)
    if t == "bool":
        return isinstance(value, bool)
    if t == "str":
        return isinstance(value, str)
    if t.endswith("[]") or t.startswith("List["):
        return isinstance(value, list)
    if t.startswith("Tuple[") or t.startswith("("):
        return isinstance(value, tuple)
    if t.startswith("Dict["):
        return isinstance(value, dict)
    return True


def check_types(args: tuple, params: list[Param], method: str) -> None:
    from engine.run.values import summarize

    for i, (value, p) in enumerate(zip(args, params)):
        if not _type_ok(value, p.type):
            raise InputError(
                f"input {i + 1} ({p.name}) must be {p.type}, got {summarize(value).short()} "
                f"({type(value).__name__}); {describe_signature(method, params)}"
            )


def from_specs(specs: list[Any], seed: int) -> tuple:
    """Turn traced-input specs (``TensorSpec`` or plain values) into values."""
    from engine.formats.torchscript.archive import TensorSpec

    out = []
    for i, s in enumerate(specs):
        if isinstance(s, TensorSpec):
            t = random_tensor(s.shape, s.dtype, seed, i,
                              what=f"the example input {i + 1} the archive stores (traced on)")
            out.append(t)
        elif isinstance(s, (list, tuple)):
            out.append(type(s)(from_specs(list(s), seed + i + 1)))
        elif isinstance(s, dict):
            out.append({k: from_specs([v], seed + i + 1)[0] for k, v in s.items()})
        else:
            out.append(s)
    return tuple(out)


# --------------------------------------------------------------- inference

_SHAPE_RULES = ("aten::_convolution", "aten::conv1d", "aten::conv2d", "aten::conv3d", "aten::linear",
                "aten::embedding", "aten::lstm", "aten::gru", "aten::rnn_tanh", "aten::layer_norm", "aten::matmul")


def _static_value(graph, value, module) -> Any:
    """Resolve a value that is a chain of GetAttr from ``self`` (a parameter)."""
    chain = []
    v = value
    n = graph.producer(v)
    while n is not None and n.kind == "prim::GetAttr":
        chain.append(n.attrs["name"])
        v = n.inputs[0]
        n = graph.producer(v)
    if v.index != graph.inputs[0].index:
        return None
    obj = module
    for name in reversed(chain):
        obj = obj.getattr(name)
    return obj


# Ops whose output has the shape of one of their tensor inputs (the slot): a weight
# standardized or scaled before use (timm's ScaledStdConv2d, weight norm) has its
# parameter's shape.
_SAME_SHAPE_AS = {"aten::reshape_as": 1, "aten::view_as": 1, "aten::expand_as": 1}
_SAME_SHAPE = frozenset({"aten::mul", "aten::div", "aten::add", "aten::sub", "aten::neg", "aten::clone",
                         "aten::contiguous", "aten::detach", "aten::to", "aten::type_as"})


def _static_weight(graph, value, module, depth: int = 0) -> torch.Tensor | None:
    """A parameter with the shape and dtype ``value`` will have, when ``value`` is
    a parameter or made from one by shape-preserving ops; None otherwise."""
    w = _static_value(graph, value, module)
    if isinstance(w, torch.Tensor):
        return w
    n = graph.producer(value)
    if n is None or depth > 8:
        return None
    if n.kind in _SAME_SHAPE_AS:
        return _static_weight(graph, n.inputs[_SAME_SHAPE_AS[n.kind]], module, depth + 1)
    if n.kind in _SAME_SHAPE and n.inputs:
        return _static_weight(graph, n.inputs[0], module, depth + 1)
    return None


def infer_inputs(program, method: str, params: list[Param], seed: int) -> tuple | None:
    """Guess one input per tensor parameter from the first op that consumes it."""
    graph = program.root_graph(method, inlined=True)
    uses: dict[int, list] = {}
    flows: dict[int, list] = {}  # a value returned by a block flows into its node's output
    for n in graph.walk():
        for i, v in enumerate(n.inputs):
            uses.setdefault(v.index, []).append((n, i))
        if n.kind == "prim::If":
            for b in n.blocks:
                for r, o in zip(b.returns, n.outputs):
                    flows.setdefault(r.index, []).append(o)
    passthrough = {"aten::contiguous", "aten::to", "aten::float", "aten::type_as", "aten::detach",
                   "aten::transpose", "aten::permute", "aten::unsqueeze",
                   "aten::quantize_per_tensor", "aten::quantize_per_channel"}  # a quantized model's float input
    out = []
    for k, (p, v) in enumerate(zip(params, graph.inputs[1:])):
        if p.type != "Tensor":
            if p.has_default:
                out.append(p.default_value())
                continue
            return None
        guess = None
        frontier, seen = [v], set()
        while frontier and guess is None and len(seen) < 200:
            value = frontier.pop(0)
            if value.index in seen:
                continue
            seen.add(value.index)
            frontier.extend(flows.get(value.index, []))
            for node, slot in uses.get(value.index, []):
                if node.kind in passthrough and node.outputs:
                    frontier.append(node.outputs[0])
                    continue
                if node.kind == "prim::TupleConstruct":
                    # ``return x, n`` from a helper, then ``[0]``: follow the item out of the tuple
                    for user, _ in uses.get(node.outputs[0].index, []):
                        if user.kind == "prim::TupleUnpack":
                            frontier.append(user.outputs[slot])
                        elif user.kind == "prim::TupleIndex" and _constant_of(graph, user.inputs[1]) == slot:
                            frontier.append(user.outputs[0])
                    continue
                guess = _guess_from_use(graph, node, slot, program.module, seed, k)
                if guess is not None:
                    break
        if guess is None:
            return None
        out.append(guess)
    return tuple(out)


def _spatial(c_in: int, dims: int) -> tuple[int, ...]:
    """The size a conv's input most likely has: RGB images at 224, RGB clips of 16 frames."""
    if c_in == 3 and dims == 2:
        return (224, 224)
    if c_in == 3 and dims == 3:
        return (16, 224, 224)
    return (32,) * dims


def _quantized_weight(graph, node, module) -> tuple[torch.Tensor, int] | None:
    """The (weight, groups) a quantized conv or linear holds in its packed parameters."""
    packed = _static_value(graph, node.inputs[1], module)
    if not isinstance(packed, torch._C.ScriptObject):
        return None
    try:
        if node.kind.startswith("quantized::conv"):
            return packed.unpack()[0], int(packed.groups())
        return torch.ops.quantized.linear_unpack(packed)[0], 1
    except Exception:
        return None


def _guess_from_use(graph, node, slot, module, seed, k) -> torch.Tensor | None:
    kind = node.kind
    if slot == 0 and kind.startswith(("quantized::conv1d", "quantized::conv2d", "quantized::conv3d",
                                      "quantized::linear")):
        found = _quantized_weight(graph, node, module)
        if found is None:
            return None
        w, groups = found
        if kind.startswith("quantized::linear"):
            return random_tensor((1, w.shape[1]), torch.float32, seed, k)
        c_in, spatial_dims = w.shape[1] * groups, w.dim() - 2
        return random_tensor((1, c_in) + _spatial(c_in, spatial_dims), torch.float32, seed, k)
    if kind in ("aten::_convolution", "aten::conv1d", "aten::conv2d", "aten::conv3d") and slot == 0:
        w = _static_weight(graph, node.inputs[1], module)
        if not isinstance(w, torch.Tensor):
            return None
        groups = 1
        if kind == "aten::_convolution":
            gnode = node.inputs[8]
        else:
            gnode = node.inputs[6]
        groups_val = _constant_of(graph, gnode)
        if isinstance(groups_val, int):
            groups = groups_val
        transposed = _constant_of(graph, node.inputs[6]) if kind == "aten::_convolution" else False
        c_in = w.shape[0] if transposed else w.shape[1] * groups
        spatial_dims = w.dim() - 2
        return random_tensor((1, c_in) + _spatial(c_in, spatial_dims), w.dtype, seed, k)
    if kind == "aten::linear" and slot == 0:
        w = _static_weight(graph, node.inputs[1], module)
        if isinstance(w, torch.Tensor):
            return random_tensor((1, w.shape[1]), w.dtype, seed, k)
    if kind == "aten::layer_norm" and slot == 0:
        shape = _constant_of(graph, node.inputs[1])
        if isinstance(shape, list):
            return random_tensor((1, 8) + tuple(shape), torch.float32, seed, k)
    if kind == "aten::embedding" and slot == 1:
        w = _static_value(graph, node.inputs[0], module)
        if isinstance(w, torch.Tensor):
            return random_tensor((1, 8), torch.int64, seed, k, 0, w.shape[0])
    if kind in ("aten::lstm", "aten::gru", "aten::rnn_tanh") and slot == 0:
        params = node.inputs[2] if kind == "aten::lstm" else node.inputs[2]
        weights = _static_value(graph, params, module)
        if weights is None:
            weights = _list_of_params(graph, params, module)
        if weights:
            w = weights[0]
            return random_tensor((1, 8, w.shape[1]), w.dtype, seed, k)
    return None


def _constant_of(graph, value) -> Any:
    n = graph.producer(value)
    if n is None:
        return None
    if n.kind == "prim::Constant":
        return n.attrs.get("value")
    if n.kind == "prim::ListConstruct":
        vals = [_constant_of(graph, i) for i in n.inputs]
        return vals if all(isinstance(x, int) for x in vals) else None
    return None


def _list_of_params(graph, value, module) -> list | None:
    n = graph.producer(value)
    if n is not None and n.kind == "prim::ListConstruct":
        vals = [_static_value(graph, i, module) for i in n.inputs]
        return [v for v in vals if isinstance(v, torch.Tensor)] or None
    return None
