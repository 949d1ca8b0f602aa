"""Summaries and previews of runtime values, shared by the UI and ``--json``."""

from __future__ import annotations

import enum
import itertools
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from engine.run import moments

#: Elements above which previews show the corners only.
PREVIEW_EDGE = 3


# Not frozen: every tensor a run drops is summarized, and a frozen dataclass
# sets each of its 13 fields through object.__setattr__ (1.2 µs a summary).
# Treat summaries as read-only all the same.
@dataclass(slots=True)
class TensorSummary:
    shape: tuple[int, ...]
    dtype: str
    device: str
    numel: int
    nbytes: int
    min: float | None = None
    max: float | None = None
    mean: float | None = None
    std: float | None = None
    nan: int = 0
    inf: int = 0
    layout: str = "strided"
    requires_grad: bool = False

    def short(self) -> str:
        dims = ",".join(str(d) for d in self.shape)
        return f"{self.dtype}[{dims}]"

    def stats_line(self) -> str:
        if self.min is None:
            # no finite element: the NaN and Inf counts are all there is to say, and they matter most
            bad = [f"NaN {self.nan}" if self.nan else "", f"Inf {self.inf}" if self.inf else ""]
            bad = [b for b in bad if b]
            return ("no finite values  " + "  ".join(bad)) if bad else ""
        parts = [f"min {fmt_float(self.min)}", f"max {fmt_float(self.max)}", f"mean {fmt_float(self.mean)}"]
        if self.std is not None:
            parts.append(f"std {fmt_float(self.std)}")
        if self.nan:
            parts.append(f"NaN {self.nan}")
        if self.inf:
            parts.append(f"Inf {self.inf}")
        return "  ".join(parts)

    def to_json(self) -> dict:
        d = asdict(self)
        d["kind"] = "tensor"
        d["shape"] = list(self.shape)
        for k in ("min", "max", "mean", "std"):
            if d[k] is not None and not math.isfinite(d[k]):
                d[k] = str(d[k])
        return d


@dataclass(slots=True)  # read-only in use; not frozen, for the reason TensorSummary is not
class Dropped:
    """A recorded tensor that was not kept: over the memory budget, or overwritten and not remade.

    ``summary`` is its ``TensorSummary`` (shape, dtype, statistics), taken
    when it was recorded; ``reason`` says why the tensor itself is gone.
    """

    summary: TensorSummary
    reason: str = "over the record budget"


class NotRecorded:
    """A value of a step whose detail the timeline thinned out to stay within the record budget.

    The step itself (its node, frame, place in the run) is still recorded;
    what it read and wrote is not, and nothing pretends otherwise.
    """

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def __repr__(self) -> str:
        return f"(not recorded: {self.reason})"


#: The one marker every thinned value is.
THINNED = NotRecorded("thinned out past the record budget")


@dataclass(frozen=True)
class ValueSummary:
    """Any value: ``kind`` is tensor, int, float, bool, str, none, list, tuple, dict, object, device, dtype."""

    kind: str
    text: str
    tensor: TensorSummary | None = None
    items: tuple["ValueSummary", ...] = field(default=())
    length: int | None = None
    keys: tuple[str, ...] = field(default=())  # a dict's keys (repr), one per item

    def short(self) -> str:
        if self.tensor is not None:
            return self.tensor.short()
        return self.text

    def to_json(self) -> dict:
        if self.tensor is not None:
            return self.tensor.to_json()
        d: dict[str, Any] = {"kind": self.kind, "text": self.text}
        if self.length is not None:
            d["length"] = self.length
            d["items"] = [i.to_json() for i in self.items]
            if self.kind == "dict":
                d["keys"] = list(self.keys)
        return d


def short_text(value: Any, limit: int = 32) -> str:
    """A cheap one-word description (no statistics): ``float32[1,3,8,8]``, ``3``, ``[…4]``."""
    if isinstance(value, torch.Tensor):
        dt = _DTYPE_NAMES.get(value.dtype) or str(value.dtype).replace("torch.", "")
        dev = "" if value.device.type == "cpu" else f"@{value.device}"
        return f"{dt}[{','.join(str(d) for d in value.shape)}]{dev}"
    if isinstance(value, Dropped):
        return short_text(value.summary, limit) + "*"
    if isinstance(value, NotRecorded):
        return "(not recorded)"
    if isinstance(value, ValueSummary):
        return value.short()
    if isinstance(value, TensorSummary):
        return value.short()
    if isinstance(value, torch._C.Future):
        return f"Future[{short_text(value.value(), limit)}]" if value.done() else "Future (pending)"
    if isinstance(value, torch._C.Graph):  # a node's subgraph (prim::fork)
        return f"<graph of {len(list(value.nodes()))} nodes>"
    if isinstance(value, (list, tuple)):
        if value and all(isinstance(v, torch.Tensor) for v in value[:4]):
            inner = short_text(value[0], limit)
            return f"{'[' if isinstance(value, list) else '('}{inner}…×{len(value)}{']' if isinstance(value, list) else ')'}"
        if len(value) <= 8:
            inner = ", ".join(short_text(v, limit) for v in value)
            text = f"[{inner}]" if isinstance(value, list) else f"({inner}{',' if len(value) == 1 else ''})"
        else:
            text = f"{type(value).__name__}[{len(value)}]"
    elif isinstance(value, (torch._C.ScriptModule,)):
        text = f"<{value._type().name()}>"
    elif isinstance(value, torch._C.ScriptObject):
        text = "<object>"
    elif isinstance(value, dict):
        if len(value) <= 4:
            text = "{" + ", ".join(f"{k!r}: {short_text(v, limit)}" for k, v in value.items()) + "}"
        else:
            text = f"dict[{len(value)}]"
    else:
        text = repr(value)
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


def human_bytes(n: float) -> str:
    """``1536`` -> ``1.5 KiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def fmt_float(x: float | None) -> str:
    if x is None:
        return "-"
    if math.isnan(x) or math.isinf(x):
        return str(x)
    if x == 0:
        return "0"
    if abs(x) >= 1e5 or abs(x) < 1e-3:
        return f"{x:.4e}"
    return f"{x:.5g}"


def _stats_source(t: torch.Tensor) -> torch.Tensor | None:
    """A real floating view of ``t`` for statistics, or None when it has none."""
    if t.layout != torch.strided:
        if t.is_sparse and t.numel() <= 1 << 22:
            t = t.to_dense()
        else:
            return None
    if t.is_quantized:
        t = t.dequantize()
    if t.is_complex():
        t = t.abs()
    if t.dtype == torch.bool:
        t = t.to(torch.uint8)
    if t.device.type == "meta":
        return None
    if not t.is_floating_point():
        return t.to(torch.float64)
    if t.dtype in (torch.float16, torch.bfloat16) or t.dtype.itemsize == 1:
        return t.to(torch.float32)
    return t


def summarize_tensor(t: torch.Tensor, stats: bool = True) -> TensorSummary:
    if (type(t) is torch.Tensor and t.dtype in _FAST_DTYPES and t.is_cpu and t.layout == torch.strided
            and not t.requires_grad and not torch.is_grad_enabled()):
        # The common case, and the one a run pays for every value it drops over the record budget
        # or overwrites in place: every check and attribute read below costs a little after a big
        # kernel has evicted the caches.
        numel = t.numel()
        found = ()
        if stats and numel:
            found = (_contiguous_stats(t) if moments.AVAILABLE and t.is_contiguous() else _tensor_stats(t)) or ()
        return TensorSummary(tuple(t.shape), _DTYPE_NAMES[t.dtype], "cpu", numel, numel * t.element_size(), *found)
    numel = t.numel()
    shape = tuple(t.shape)
    dtype = _DTYPE_NAMES.get(t.dtype) or str(t.dtype).replace("torch.", "")
    device = "cpu" if t.device.type == "cpu" else str(t.device)
    layout = "strided" if t.layout == torch.strided else str(t.layout).replace("torch.", "")
    nbytes = numel * t.element_size()
    found = None
    if stats and numel:
        if torch.is_grad_enabled():  # entering no_grad costs more than the stats of a small tensor
            with torch.no_grad():
                found = _tensor_stats(t.detach())
        else:
            found = _tensor_stats(t)
    if found is None:
        return TensorSummary(shape, dtype, device, numel, nbytes, layout=layout, requires_grad=t.requires_grad)
    return TensorSummary(shape, dtype, device, numel, nbytes, *found, layout, t.requires_grad)


def _tensor_stats(t: torch.Tensor) -> tuple | None:
    """(min, max, mean, std, nan, inf) of ``t``'s finite elements, or None when it has no numbers.

    This runs for every recorded tensor, so it is written for speed.  On the
    CPU one pass of ``engine.run._moments`` gives min, max, sum and sum of
    squares; without it, three reductions (aminmax, sum, and a dot product
    for the squares: BLAS, one pass, no temporary; var_mean and vector_norm
    are several times slower on CPU), each read back with ``item()``.  Finite
    extremes and sums mean the counting passes can be skipped.  The centred
    form, in double, is used only when the mean dwarfs the spread or the
    squares overflow.
    """
    if t.dtype not in _FAST_DTYPES or t.layout != torch.strided:
        t = _stats_source(t)
        if t is None:
            return None
    flat = t.reshape(-1)
    if moments.AVAILABLE and flat.device.type == "cpu":
        return _contiguous_stats(flat.contiguous())
    lo, hi = torch.aminmax(flat)
    return _stats_from_sums(flat, lo.item(), hi.item(), flat.sum().item(), torch.dot(flat, flat).item())


def _contiguous_stats(t: torch.Tensor) -> tuple | None:
    """``_tensor_stats`` of a contiguous float32/float64 CPU tensor: one pass over it as it lies."""
    return _stats_from_sums(t, *moments.one_pass(t))


def _stats_from_sums(flat: torch.Tensor, lo_f: float, hi_f: float, total: float, squares: float) -> tuple:
    """``_tensor_stats`` from the min, max, sum and sum of squares of ``flat``.

    A NaN or an infinity (or a sum past float32's range) shows in them: the
    elements are then counted and the four taken again over the finite ones.
    """
    if not (math.isfinite(lo_f) and math.isfinite(hi_f) and math.isfinite(total)):
        flat = flat.reshape(-1)
        finite = torch.isfinite(flat)
        nan = int(torch.isnan(flat).sum())
        inf = int((~finite).sum()) - nan
        flat = flat[finite]
        n = flat.numel()
        if n == 0:
            return None, None, None, None, nan, inf
        lo_f, hi_f, total, squares = torch.stack([flat.min(), flat.max(), flat.sum(), torch.dot(flat, flat)]).tolist()
        return _mean_and_spread(lo_f, hi_f, total, squares, n, flat, nan, inf)
    return _mean_and_spread(lo_f, hi_f, total, squares, flat.numel(), flat)


def _mean_and_spread(lo_f: float, hi_f: float, total: float, squares: float, n: int, flat: torch.Tensor,
                     nan: int = 0, inf: int = 0) -> tuple:
    """The summary's statistics from the four sums over ``n`` finite elements (``flat``: for the exact form)."""
    mean = total / n
    var = max(squares - n * mean * mean, 0.0) / max(n - 1, 1)
    if lo_f == hi_f:
        mean, var = lo_f, 0.0
    elif n > 1 and (mean * mean > 1e2 * var or not math.isfinite(squares)):
        exact = flat.reshape(-1).double()
        mean = min(max(float(exact.mean()), lo_f), hi_f)
        centred = exact - mean
        var = float(torch.dot(centred, centred)) / (n - 1)
    return lo_f, hi_f, mean, math.sqrt(var), nan, inf


_FAST_DTYPES = frozenset({torch.float32, torch.float64})
_DTYPE_NAMES = {d: str(d).replace("torch.", "") for d in (
    torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int16,
    torch.int8, torch.uint8, torch.bool, torch.complex64, torch.complex128)}


def summarize(value: Any, depth: int = 0) -> ValueSummary:
    """Describe any runtime value without keeping it alive."""
    if isinstance(value, Dropped):
        return summarize(value.summary, depth)
    if isinstance(value, NotRecorded):
        return ValueSummary(kind="object", text=repr(value))
    if isinstance(value, ValueSummary):
        return value
    if isinstance(value, TensorSummary):
        return ValueSummary(kind="tensor", text=value.short(), tensor=value)
    if isinstance(value, torch.Tensor):
        ts = summarize_tensor(value)
        return ValueSummary(kind="tensor", text=ts.short(), tensor=ts)
    if value is None:
        return ValueSummary(kind="none", text="None")
    if isinstance(value, bool):
        return ValueSummary(kind="bool", text=str(value))
    if isinstance(value, int):
        return ValueSummary(kind="int", text=str(value))
    if isinstance(value, float):
        return ValueSummary(kind="float", text=repr(value))
    if isinstance(value, str):
        text = value if len(value) <= 60 else value[:59] + "…"
        return ValueSummary(kind="str", text=repr(text))
    if isinstance(value, (list, tuple)):
        kind = "list" if isinstance(value, list) else "tuple"
        items = tuple(summarize(v, depth + 1) for v in value[:16]) if depth < 3 else ()
        inner = ", ".join(i.short() for i in items[:4])
        more = ", …" if len(value) > 4 else ""
        brackets = "[]" if kind == "list" else "()"
        return ValueSummary(
            kind=kind,
            text=f"{brackets[0]}{inner}{more}{brackets[1]}",
            items=items,
            length=len(value),
        )
    if isinstance(value, dict):
        names = list(itertools.islice(value, 16))
        items = tuple(summarize(value[k], depth + 1) for k in names) if depth < 3 else ()
        # keys with their values' short forms: keys alone would read as a set
        pairs = ", ".join(f"{k!r}: {items[i].short() if i < len(items) else '…'}" for i, k in enumerate(names[:4]))
        more = ", …" if len(value) > 4 else ""
        keys = tuple(repr(k) for k in names[: len(items)])
        return ValueSummary(kind="dict", text=f"{{{pairs}{more}}}", items=items, length=len(value), keys=keys)
    if isinstance(value, torch.device):
        return ValueSummary(kind="device", text=str(value))
    if isinstance(value, torch.dtype):
        return ValueSummary(kind="dtype", text=str(value).replace("torch.", ""))
    from engine.formats.torchscript.program import ClassInstance, EnumMember, ObjectRef

    if isinstance(value, (ClassInstance, ObjectRef)):
        return ValueSummary(kind="object", text=f"<{value.short_name}>")
    if isinstance(value, (EnumMember, enum.Enum)):
        return ValueSummary(kind="enum", text=f"{type(value).__name__}.{value.name}"
                            if isinstance(value, enum.Enum) else repr(value))
    if isinstance(value, torch._C.Future):
        if not value.done():
            return ValueSummary(kind="object", text="Future (pending)")
        return ValueSummary(kind="object", text=f"Future[{summarize(value.value(), depth + 1).short()}]")
    if isinstance(value, torch._C.ScriptObject):
        try:
            name = value._type().name()
        except Exception:
            name = "object"
        return ValueSummary(kind="object", text=f"<{name}>")
    return ValueSummary(kind="object", text=f"<{type(value).__name__}>")


def preview(t: torch.Tensor, edgeitems: int = PREVIEW_EDGE, linewidth: int = 100) -> str:
    """A numpy-formatted preview of a tensor, corners only when large."""
    src = t.detach()
    if src.layout != torch.strided:
        src = src.to_dense() if src.is_sparse else src
    if src.is_quantized:
        src = src.dequantize()
    if src.device.type != "cpu":
        src = src.cpu()
    if src.dtype in (torch.bfloat16,) or src.dtype.itemsize == 1 and src.is_floating_point():
        src = src.float()
    arr = src.numpy()
    return np.array2string(
        arr,
        threshold=64,
        edgeitems=edgeitems,
        max_line_width=linewidth,
        precision=4,
        suppress_small=False,
    )


def histogram(t: torch.Tensor, bins: int = 20) -> tuple[list[int], float, float] | None:
    """Counts of the finite values in ``bins`` equal bins, with the range."""
    src = _stats_source(t.detach())
    if src is None or src.numel() == 0:
        return None
    src = src[torch.isfinite(src)].double()
    if src.numel() == 0:
        return None
    lo, hi = float(src.min()), float(src.max())
    if lo == hi:
        counts = [0] * bins
        counts[bins // 2] = src.numel()
        return counts, lo, hi
    counts = torch.histc(src, bins=bins, min=lo, max=hi)
    return [int(c) for c in counts], lo, hi


def storage_key(t: torch.Tensor) -> tuple[str, int] | None:
    """Identifies the memory a tensor lives in, so views are counted once."""
    try:
        st = t.untyped_storage()
        return (str(t.device), st.data_ptr())
    except Exception:
        return None


def storage_nbytes(t: torch.Tensor) -> int:
    try:
        return t.untyped_storage().nbytes()
    except Exception:
        return t.numel() * t.element_size()


def values_equal(a: Any, b: Any) -> bool:
    """Bitwise equality of two values of any structure (``torch.equal`` on tensors)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            return False
        if a.shape != b.shape or a.dtype != b.dtype:
            return False
        if a.device != b.device:
            b = b.to(a.device)
        if torch.equal(a, b):
            return True
        if a.is_floating_point() or a.is_complex():
            # NaN == NaN for our purposes: same bits, same place.
            an, bn = torch.isnan(a), torch.isnan(b)
            if not torch.equal(an, bn):
                return False
            return torch.equal(torch.where(an, torch.zeros_like(a), a), torch.where(bn, torch.zeros_like(b), b))
        return False
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(values_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(values_equal(a[k], b[k]) for k in a)
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    try:
        return bool(a == b)
    except Exception:
        return a is b


def max_abs_diff(a: Any, b: Any) -> float | None:
    """Largest absolute difference over all tensors of two same-shaped structures."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        if a.shape != b.shape:
            return math.inf
        if a.numel() == 0:
            return 0.0
        if a.is_floating_point() or a.is_complex() or b.is_floating_point():
            d = (a.detach().double() - b.detach().to(a.device).double()).abs()
            d = torch.where(torch.isnan(a) & torch.isnan(b.to(a.device)), torch.zeros_like(d), d)
            return float(d.max())
        return float((a.long() - b.to(a.device).long()).abs().max())
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        diffs = [max_abs_diff(x, y) for x, y in zip(a, b)]
        diffs = [d for d in diffs if d is not None]
        return max(diffs) if diffs else None
    if isinstance(a, dict) and isinstance(b, dict):
        diffs = [max_abs_diff(a[k], b[k]) for k in a if k in b]
        diffs = [d for d in diffs if d is not None]
        return max(diffs) if diffs else None
    return None


def iter_tensors(value: Any):
    """Tensors directly inside a value: itself, or one level of list/tuple/dict."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            if isinstance(v, torch.Tensor):
                yield v
    elif isinstance(value, dict):
        for v in value.values():
            if isinstance(v, torch.Tensor):
                yield v


def _tensors_in(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors_in(v)]
    return []


def nan_outputs_note(outputs: Any) -> str:
    """A line for ``tsdebug run`` when outputs are NaN through and through ('' otherwise):
    a model that computes only NaN still "matches" its native run bit for bit."""
    tensors = [t for t in _tensors_in(outputs) if t.numel() and (t.is_floating_point() or t.is_complex())]
    if not tensors:
        return ""
    all_nan = [bool(torch.isnan(t.detach()).all()) for t in tensors]
    if all(all_nan):
        what = "the output is" if len(tensors) == 1 else f"every output ({len(tensors)} tensors) is"
        return f"{what} all NaN: the model computes nothing finite (break on the first NaN in the debugger: w then c)"
    if any(all_nan):
        return f"{sum(all_nan)} of {len(tensors)} output tensors are all NaN"
    return ""
