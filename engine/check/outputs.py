"""Comparing values of two runs: tensors (``compare``) and whole outputs (``output_differences``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from engine.run.timeline import StepRecord

@dataclass
class Metrics:
    shape_ok: bool
    dtype_ok: bool
    max_abs: float
    max_rel: float
    mean_abs: float
    cosine: float | None
    nan_mismatch: int
    close: bool

    def to_json(self) -> dict:
        d = self.__dict__.copy()
        for k in ("max_abs", "max_rel", "mean_abs", "cosine"):
            if d[k] is not None and not math.isfinite(d[k]):
                d[k] = str(d[k])
        return d


def compare(a: torch.Tensor, b: torch.Tensor, rtol: float, atol: float) -> Metrics:
    """``a``: the TorchScript value, ``b``: the reference."""
    if tuple(a.shape) != tuple(b.shape):
        return Metrics(False, a.dtype == b.dtype, math.inf, math.inf, math.inf, None, 0, False)
    if a.numel() == 0:
        return Metrics(True, a.dtype == b.dtype, 0.0, 0.0, 0.0, None, 0, True)
    x, y = a.detach().double().cpu(), b.detach().double().cpu()
    if a.is_complex() or b.is_complex():
        x, y = x.abs(), y.abs()
    nx, ny = torch.isnan(x), torch.isnan(y)
    nan_mismatch = int((nx ^ ny).sum())
    both = (nx & ny) | (x == y)  # equal values, equal infinities, NaN against NaN
    diff = (x - y).abs()
    diff = torch.where(both, torch.zeros_like(diff), diff)
    diff = torch.where(torch.isnan(diff), torch.full_like(diff, math.inf), diff)
    finite = torch.isfinite(diff)
    max_abs = float(diff.max()) if bool(finite.all()) else math.inf
    rel = diff / y.abs().clamp_min(1e-12)
    rel = torch.where(diff == 0, torch.zeros_like(rel), rel)
    rel = torch.nan_to_num(rel, nan=math.inf)
    max_rel = float(rel.max())
    mean_abs = float(diff[finite].mean()) if bool(finite.any()) else math.inf
    fx, fy = torch.nan_to_num(x).flatten(), torch.nan_to_num(y).flatten()
    denom = float(fx.norm() * fy.norm())
    cosine = float(fx @ fy) / denom if denom > 0 else None
    close = nan_mismatch == 0 and bool(torch.isclose(x, y, rtol=rtol, atol=atol, equal_nan=True).all())
    return Metrics(True, a.dtype == b.dtype, max_abs, max_rel, mean_abs, cosine, nan_mismatch, close)


@dataclass
class OutputDifference:
    """One place where the two runs' outputs differ: ``where`` (``output``, ``output[1]``,
    ``output['boxes']``), ``kind`` (shape, dtype, value, structure) and what, in words."""

    where: str
    kind: str
    what: str
    metrics: Metrics | None = None
    ours: Any = None  # the engine's value there (to find the node that made it)
    record: StepRecord | None = None  # that node's record, where found

    def to_json(self) -> dict:
        node = self.record.node if self.record is not None else None
        return {"where": self.where, "kind": self.kind, "what": self.what,
                "metrics": self.metrics.to_json() if self.metrics else None,
                "node": node.id if node else None, "node_kind": node.kind if node else None,
                "source": str(node.source) if node and node.source and node.source.file else None}


def flat_tensors(value: Any) -> list:
    """Every tensor in a nested output, in order (tuples, lists, dict values)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in flat_tensors(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in flat_tensors(v)]
    return []


def compare_outputs(ours: Any, reference: Any, rtol: float, atol: float) -> tuple[bool, Metrics | None]:
    """Whether two runs' outputs agree (every tensor close, with its shape and dtype, every other
    value equal), and the tensor metrics of the worst pair."""
    diffs, worst = output_differences(ours, reference, rtol, atol)
    return not diffs, worst


def output_differences(ours: Any, reference: Any, rtol: float, atol: float,
                       where: str = "output") -> tuple[list[OutputDifference], Metrics | None]:
    """Each place the outputs differ, and the metrics of the worst tensor pair compared.

    Containers are walked together; where one side is a dict and the other a sequence (a
    Python model's ``ModelOutput`` against an archive's tuple) their leaves are compared in order.
    """
    out: list[OutputDifference] = []
    worst: list[Metrics | None] = [None]

    def keep(m: Metrics) -> None:
        if worst[0] is None or m.max_abs > worst[0].max_abs or (not m.shape_ok and worst[0].shape_ok):
            worst[0] = m

    def walk(a: Any, b: Any, at: str) -> None:
        if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
            m = compare(a, b, rtol, atol)
            keep(m)
            if not m.shape_ok:
                out.append(OutputDifference(at, "shape", f"shape {list(a.shape)} vs {list(b.shape)}"
                                            + ("" if m.dtype_ok else f", dtype {_dt(a)} vs {_dt(b)}"), m, a))
            elif not m.dtype_ok:
                agree = "values agree" if m.close else f"max abs {m.max_abs:.3g}"
                out.append(OutputDifference(at, "dtype", f"dtype {_dt(a)} vs {_dt(b)} ({agree})", m, a))
            elif not m.close:
                out.append(OutputDifference(at, "value", f"max abs {_num(m.max_abs)}, max rel {_num(m.max_rel)}"
                                            + (f", {m.nan_mismatch} NaN mismatches" if m.nan_mismatch else ""), m, a))
            return
        if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
            out.append(OutputDifference(at, "structure", f"{_kind(a)} vs {_kind(b)}", None, a))
            return
        if isinstance(a, dict) and isinstance(b, dict):
            only_a, only_b = [k for k in a if k not in b], [k for k in b if k not in a]
            if only_a or only_b:
                out.append(OutputDifference(at, "structure", "keys " + "; ".join(
                    p for p in (f"only in the archive: {', '.join(map(repr, only_a))}" if only_a else "",
                                f"only in the reference: {', '.join(map(repr, only_b))}" if only_b else "") if p),
                    None, a))
            for k in a:
                if k in b:
                    walk(a[k], b[k], f"{at}[{k!r}]")
            return
        if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
            if len(a) != len(b):
                out.append(OutputDifference(at, "structure", f"{len(a)} items vs {len(b)}", None, a))
                return
            for i, (x, y) in enumerate(zip(a, b)):
                walk(x, y, f"{at}[{i}]")
            return
        if isinstance(a, (list, tuple, dict)) and isinstance(b, (list, tuple, dict)):
            xs, ys = _flat_values(a), _flat_values(b)
            if len(xs) != len(ys):
                out.append(OutputDifference(at, "structure", f"{_kind(a)} of {len(xs)} values vs {_kind(b)} of "
                                            f"{len(ys)}", None, a))
                return
            for i, (x, y) in enumerate(zip(xs, ys)):
                walk(x, y, f"{at}[{i}]")
            return
        if not _same_value(a, b, rtol, atol):
            out.append(OutputDifference(at, "value" if type(a) is type(b) or _number(a) and _number(b)
                                        else "structure", f"{_short(a)} vs {_short(b)}", None, a))

    walk(ours, reference, where)
    return out, worst[0]


def _dt(t: torch.Tensor) -> str:
    return str(t.dtype).replace("torch.", "")


def _num(x: float) -> str:
    return f"{x:.3g}" if math.isfinite(x) else str(x)


def _kind(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        return f"a tensor {_dt(x)}{list(x.shape)}"
    if x is None:
        return "None"
    return f"a {type(x).__name__}"


def _short(x: Any) -> str:
    text = repr(x)
    return text if len(text) <= 80 else text[:77] + "..."


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


#: Values compared as the user would: what else an output holds (a TorchScript class object, an
#: enum the engine holds by name) has no Python counterpart to compare with.
_PLAIN = (str, bytes, bool, int, float, complex, type(None), torch.dtype, torch.device)


def _same_value(a: Any, b: Any, rtol: float, atol: float) -> bool:
    """Python values as the user compares them: numbers within the tolerances (``2.0`` is ``2``)."""
    if not (isinstance(a, _PLAIN) and isinstance(b, _PLAIN)):
        return True
    if _number(a) and _number(b):
        if math.isnan(a) and math.isnan(b):
            return True
        return math.isclose(a, b, rel_tol=rtol, abs_tol=atol) or a == b
    if type(a) is not type(b) and not (isinstance(a, str) and isinstance(b, str)):
        return False
    try:
        return bool(a == b)
    except Exception:
        return True  # values that cannot be compared (a module, a class object): nothing to say


def _flat_values(value: Any) -> list:
    """The leaves of a nested output in order: tensors and Python values."""
    if isinstance(value, (list, tuple)):
        return [x for v in value for x in _flat_values(v)]
    if isinstance(value, dict):
        return [x for v in value.values() for x in _flat_values(v)]
    return [value]
