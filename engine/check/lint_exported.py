"""Findings for a torch.export program: what the export fixed for good that the user's Python computes.

An ExportedProgram keeps no Python control flow either: branches on shapes
were decided at export time (they became guards), sizes the export did not
mark dynamic are constants, and data-dependent sizes (``.item()``,
``nonzero``) became unbacked symbols with runtime checks.  From the graph
alone (each node's ``val`` and ``stack_trace``) this finds:

* ``baked-shape``: a shape argument holding a constant equal to a static
  dimension of an input (``x.view(x.size(0), -1)`` exported at batch 2 is
  ``view(x, [2, -1])``): other sizes are refused;
* ``data-dependent``: the first node whose output size is an unbacked symbol
  (``u0``), with the user's line;
* ``runtime-check``: each ``_assert_scalar`` the export added, with its
  expression and line: inputs that break it fail at run time;
* ``specialized-input``: an int, float, bool or str input, which the export
  fixed to the example's value;
* the range of each dynamic dimension, as a note.
"""

from __future__ import annotations

import re
from typing import Any

from engine.check.lint import Finding, LintReport

#: Arguments that are shapes or sizes (by schema name), where a baked batch size shows.
_SHAPE_ARGS = frozenset({"size", "shape", "sizes", "split_size", "split_sizes", "repeats", "output_size",
                         "chunks"})
_SHAPE_OPS = ("view", "reshape", "expand", "new_zeros", "new_ones", "new_empty", "new_full", "zeros", "ones",
              "empty", "full", "randn", "rand", "arange", "repeat", "split", "unflatten", "_unsafe_view",
              "broadcast_to", "tile")


def _op_base(kind: str) -> str:
    return kind.split("::", 1)[-1].split(".", 1)[0]


def _ints(value: Any) -> list[int]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, (list, tuple)):
        out = []
        for v in value:
            out.extend(_ints(v))
        return out
    return []


def _finding(node: Any, kind: str, frozen: str, evidence: str, confidence: str) -> Finding:
    src = node.source
    return Finding(kind=kind, file=src.file if src else None, line=src.line if src else None,
                   text=src.text if src else None, frozen=frozen, evidence=evidence, confidence=confidence,
                   nodes=[node.id], module_path=node.module_path, method="forward")


def lint_exported(session: Any) -> LintReport:
    """Findings for the session's ExportedProgram (see the module's docstring)."""
    report = LintReport(methods=session.method_kinds())
    loaded = session.loaded
    graph = session.program.root_graph("forward", inlined=True)
    nodes = list(graph.walk())
    # the static sizes of the user's inputs
    static_dims: dict[int, list[str]] = {}
    shapes = loaded.symbolic_shapes()
    for name, dims in shapes["inputs"].items():
        for axis, d in enumerate(dims):
            if isinstance(d, int) and d > 1:
                static_dims.setdefault(d, []).append(f"{name}.size({axis})")
    findings: list[Finding] = []
    checked_shape_args = 0
    for n in nodes:
        args = n.attrs.get("arguments") if isinstance(n.attrs.get("arguments"), dict) else {}
        if _op_base(n.kind) in _SHAPE_OPS:
            for name, value in args.items():
                if name not in _SHAPE_ARGS:
                    continue
                checked_shape_args += 1
                hits = [v for v in _ints(value) if v in static_dims]
                if not hits:
                    continue
                src = n.source
                text = (src.text or "") if src else ""
                reads_size = any(k in text for k in (".size(", ".shape", "len("))
                dims = " or ".join(sorted({d for v in hits for d in static_dims[v]}))
                findings.append(_finding(
                    n, "baked-shape", f"{name}={value} holds {', '.join(map(str, hits))}, the static {dims}",
                    f"{n.kind} takes the constant {value}; the input was exported with {dims} static, so a "
                    "different size is refused (export with dynamic_shapes to keep it a symbol)",
                    "medium" if reads_size else "low"))
    seen_symbols: dict[str, Finding] = {}
    for n in nodes:
        shape = n.attrs.get("symbolic_shape")
        if shape:
            unbacked = sorted({tok for tok in _tokens(shape) if tok.startswith("u") and tok[1:].isdigit()})
            new = [u for u in unbacked if u not in seen_symbols]
            if new:
                f = _finding(n, "data-dependent", f"{', '.join(new)}: a size only the data knows ({shape})",
                             f"{n.kind} makes a size from tensor data (.item(), nonzero, a mask); the program "
                             "checks it at run time instead of fixing it", "low")
                findings.append(f)
                for u in new:
                    seen_symbols[u] = f
        if _op_base(n.kind) == "_assert_scalar":
            message = n.attrs.get("arguments", {}).get("assert_msg") if isinstance(n.attrs.get("arguments"), dict) \
                else None
            expr = str(message or "").replace("Runtime assertion failed for expression ", "").split(" on node")[0]
            made_by = next((seen_symbols[tok] for tok in _tokens(expr) if tok in seen_symbols), None)
            src = n.source
            intrinsic = re.fullmatch(r"u\d+ >= 0|u\d+ <= \d+", expr.strip()) is not None
            if made_by is not None and intrinsic:
                # a bound torch itself knows (a count is at least 0, nonzero's at most numel)
                made_by.evidence += f"; checked at run time: {expr}"
                continue
            findings.append(_finding(
                n, "runtime-check", expr or "a runtime check",
                "the export turned a condition of the Python on a data-dependent size (a torch._check, an if on "
                "it) into this check: inputs that break it fail at run time", "low"))
    for name, value in shapes.get("constants", {}).items():
        # torch.export specializes every non-tensor input: the Python takes any value, the program one
        findings.append(Finding(
            kind="specialized-input", file=None, line=None, text=None,
            frozen=f"{name}={value!r}: the program accepts this value only",
            evidence=f"{name} is {'an' if type(value).__name__[0] in 'aeiou' else 'a'} {type(value).__name__} input; torch.export fixed it to the example's value and "
                     "refuses any other (make it a tensor, or export once per value)",
            confidence="high", nodes=[], module_path="", method="forward"))
    for sym, (lo, hi) in sorted(shapes["ranges"].items()):
        users = [f"{name}.size({axis})" for name, dims in shapes["inputs"].items()
                 for axis, d in enumerate(dims) if d == sym]
        where = f" ({', '.join(users)})" if users else ""
        report.notes.append(f"{sym}{where} may range over [{lo}, {'inf' if hi is None else hi}]")
    n_inputs = len(shapes["inputs"])
    report.notes.append(
        f"checked {len(nodes)} nodes of the exported graph: {checked_shape_args} shape arguments against the "
        f"static sizes of {n_inputs} input{'s' if n_inputs != 1 else ''}, data-dependent sizes and runtime checks")
    report.findings = sorted(findings, key=lambda f: (f.file or "", f.line or 0, f.kind))
    return report


def _tokens(text: str) -> list[str]:
    return re.findall(r"[A-Za-z_]\w*", text)


__all__ = ["lint_exported"]

