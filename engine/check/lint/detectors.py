"""The detectors: each puts a function's traced ops beside its source and says what was frozen."""

from __future__ import annotations

import ast
import re
from collections import defaultdict

import torch

from engine.sources import is_torch_frame
from engine.ir import Graph, Node
from engine.check.lint.dependence import (
    _SCALAR_TEXT, _SHAPE_TEXT, _deciding_guard, _depends_on_data, _fixed_length_helpers, _fixed_length_iterable,
    _names, _only_checks, _reads_only_rank, _static_iterable, _unreached,
)
from engine.check.lint.events import _Op, _model_frames
from engine.check.lint.report import Finding
from engine.check.lint.source import _in, _line_text, _span, _src

SHAPE_CONSUMERS = frozenset({
    "aten::view", "aten::reshape", "aten::expand", "aten::zeros", "aten::ones", "aten::empty", "aten::full",
    "aten::arange", "aten::new_zeros", "aten::new_ones", "aten::new_empty", "aten::new_full", "aten::repeat",
    "aten::narrow", "aten::split", "aten::chunk", "aten::slice", "aten::select", "aten::randn", "aten::rand",
    "aten::zeros_like", "aten::unflatten", "aten::broadcast_to", "aten::tile",
})


def _branch_findings(fn: ast.FunctionDef, local: set[str], ranks: set[str], shapes: set[str], ops: list[_Op],
                     lines: list[str], file: str, path: str, method: str) -> list[Finding]:
    out = []
    op_lines = {o.line for o in ops}
    for stmt in ast.walk(fn):
        if not isinstance(stmt, (ast.If, ast.IfExp)):
            continue
        if _unreached(fn, stmt, op_lines):
            continue  # inside a branch the trace never entered: that outer `if` is the finding
        test = _src(stmt.test, lines)
        why = _depends_on_data(stmt.test, test, local, ranks, shapes)
        test_line = stmt.test.lineno
        test_ops = [o for o in ops if o.line == test_line and test_line != getattr(stmt.body, "lineno", -1)]
        if isinstance(stmt, ast.If):
            body, orelse = _span(stmt.body), _span(stmt.orelse)
        else:
            body, orelse = (stmt.body.lineno, stmt.body.lineno), (stmt.orelse.lineno, stmt.orelse.lineno)
        in_body = [o for o in ops if _in(body, o.line) and o.line != test_line]
        in_else = [o for o in ops if _in(orelse, o.line) and o.line != test_line]
        if why is None and not (test_ops and any(o.node.kind.startswith("aten::") for o in test_ops)):
            continue  # a configuration branch: tracing keeps it right
        if not test_ops and isinstance(stmt, ast.If) and _only_checks(stmt.body) and _only_checks(stmt.orelse):
            continue  # a check of Python values that did not fail: the graph lacks only the raise
        if in_body and in_else:
            continue  # both sides ran (a loop around it): nothing frozen
        end = getattr(stmt, "end_lineno", stmt.lineno)
        if not in_body and not in_else and not test_ops and not any(o.line > end for o in ops):
            continue  # nothing after it ran either: no sign the `if` was reached
        taken = "the if branch" if in_body else ("the else branch" if in_else else
                                                   "neither: the branch was skipped")
        frozen = f"took {taken}"
        if not in_body and not in_else and isinstance(stmt, ast.If) and _makes_no_ops(stmt.body) \
                and _makes_no_ops(stmt.orelse):
            # ``if b[4] > 0.5: keep.append(b)``: the side taken shows only in what the list holds later
            frozen = (f"which side ran is not in the graph: neither makes ops of its own "
                      f"({_src(stmt.body[0], lines)})")
        kind = "python-state" if why == "python-state" else "frozen-branch"
        if why == "python-state":
            evidence = "the test reads self.training, a Python attribute: the trace keeps the mode it was made in"
            confidence = "high"
        elif test_ops:
            kinds = ", ".join(sorted({o.node.kind for o in test_ops}))
            evidence = f"the test computed tensors ({kinds}) and became a Python bool"
            confidence = "high"
        elif why == "rank":
            evidence = (f"the test reads the rank of a tensor ({test}): the trace keeps its example's ranks, "
                        "only a caller passing another rank would take the other side")
            confidence = "low"
        else:
            what = "tensor data" if why == "tensor data" else f"a {why}"
            evidence = f"the test reads {what} ({test})"
            confidence = "medium"
        if why != "python-state":
            evidence += ("; ops came from one side only" if (in_body or in_else)
                         else "; the code after it ran, the branch produced no ops")
        guard = _deciding_guard(stmt.test, bool(in_body), lines, local, ranks) if confidence == "medium" else None
        if guard:
            # ``if is_cross_attention and past is not None and is_updated:`` traced without a cache
            evidence += (f"; but {guard} is the same on every run and the trace took the side it decides "
                         "alone: the data may never have been read")
            confidence = "low"
        nodes = [o.node.id for o in (in_body or in_else or test_ops)][:20]
        out.append(Finding(kind, file, test_line, lines[test_line - 1].strip() if test_line <= len(lines) else None,
                           frozen, evidence, confidence, nodes, path, method))
    return out


def _makes_no_ops(body: list[ast.stmt]) -> bool:
    """Statements that only move Python values (``keep.append(b)``, ``n = m``, ``break``): no ops."""
    def plain(e: ast.AST) -> bool:
        return isinstance(e, (ast.Name, ast.Constant))

    for s in body:
        if isinstance(s, (ast.Pass, ast.Break, ast.Continue)):
            continue
        if isinstance(s, ast.Expr) and isinstance(s.value, ast.Call) and isinstance(s.value.func, ast.Attribute) \
                and plain(s.value.func.value) and all(plain(a) for a in s.value.args) and not s.value.keywords:
            continue
        if isinstance(s, ast.Assign) and all(isinstance(t, ast.Name) for t in s.targets) and plain(s.value):
            continue
        return False
    return True


def _loop_findings(fn: ast.FunctionDef, local: set[str], static: set[str], ops: list[_Op], lines: list[str],
                   file: str, path: str, method: str, rows: dict[str, int],
                   argument_rows: dict[str, int] | None = None) -> list[Finding]:
    """Loops whose trip count the run decides, unrolled. ``rows``: how many rows each
    ``aten::unbind`` of the graph was unpacked into (``for b in boxes:`` iterates over those);
    ``argument_rows``: for the traced method itself, the rows of each tensor argument in the
    example the trace stored."""
    out = []
    for stmt in ast.walk(fn):
        if not isinstance(stmt, (ast.For, ast.While)):
            continue
        body = _span(stmt.body)
        in_body = [o for o in ops if _in(body, o.line)]
        head_span = (stmt.lineno, getattr(stmt.iter if isinstance(stmt, ast.For) else stmt.test, "end_lineno",
                                          stmt.lineno))
        # iterating over a tensor unbinds it on the loop's line: one row per iteration, even
        # where the body left no ops (indexing and comparisons that only decide a Python list)
        unbinds = [o for o in ops if o.node.kind == "aten::unbind" and _in(head_span, o.line)
                   and o.node.id in rows] if isinstance(stmt, ast.For) else []
        if not in_body and not unbinds:
            # a body of indexing and comparisons whose rows nothing used: the trace dropped even
            # the unbind, and only the code after the loop shows it ran
            ran_after = any(o.line > getattr(stmt, "end_lineno", stmt.lineno) for o in ops)
            if isinstance(stmt, ast.For) and ran_after and _tests_its_items(stmt) \
                    and _names(stmt.iter) & local and not _static_iterable(stmt.iter, static):
                out.append(_loop_without_ops(stmt, lines, file, path, method, argument_rows or {}))
            continue
        if isinstance(stmt, ast.For):
            head = _src(stmt.iter, lines)
            if _static_iterable(stmt.iter, static) or not _names(stmt.iter) & local:
                continue  # a module list, a fixed count, a configuration list: the same every run
            if _fixed_length_iterable(stmt.iter, fn, _fixed_length_helpers(file)):
                continue  # a list a helper of this file builds one item per fixed iteration
            if unbinds:
                n_rows = rows[unbinds[0].node.id]
                why, confidence = (f"the loop iterates over the rows of a tensor ({head}): the trace unbinds it "
                                   f"into the example's {n_rows} row{'s' if n_rows != 1 else ''}"), "high"
            elif _reads_only_rank(stmt.iter, local):
                # ``range(x.dim())``: the trace keeps its example's ranks
                why, confidence = f"the trip count comes from the rank of a tensor ({head})", "low"
            else:
                why = "the trip count comes from " + ("a shape" if _SHAPE_TEXT.search(head) else
                                                      "tensor data" if _SCALAR_TEXT.search(head) else
                                                      f"the Python value {head}")
                confidence = "high" if _SHAPE_TEXT.search(head) or _SCALAR_TEXT.search(head) else "medium"
        else:
            head = _src(stmt.test, lines)
            why = f"a while loop on {head}"
            confidence = "high"
        if in_body:
            trips = _iterations(stmt, in_body)
            evidence = f"{why}; the body's ops repeat {trips}× in the graph"
        else:
            trips = rows[unbinds[0].node.id]
            evidence = f"{why}; the body left no ops of its own (it only decides Python values)"
        out.append(Finding("unrolled-loop", file, stmt.lineno,
                           lines[stmt.lineno - 1].strip() if stmt.lineno <= len(lines) else None,
                           f"unrolled {trips} time{'s' if trips != 1 else ''}", evidence, confidence,
                           [o.node.id for o in unbinds[:1] + in_body][:20], path, method))
    out += _comprehension_findings(fn, local, static, ops, lines, file, path, method, rows)
    return out


def _tests_its_items(loop: ast.For) -> bool:
    """The body indexes the loop's items or compares them with numbers (``b[4] > 0.5``)."""
    targets = {n.id for n in ast.walk(loop.target) if isinstance(n, ast.Name)}
    for n in ast.walk(ast.Module(body=loop.body, type_ignores=[])):
        if isinstance(n, ast.Subscript) and isinstance(n.value, ast.Name) and n.value.id in targets:
            return True
        if isinstance(n, ast.Compare) and any(isinstance(c, ast.Name) and c.id in targets
                                              for c in [n.left, *n.comparators]) \
                and any(isinstance(c, ast.Constant) and isinstance(c.value, (int, float))
                        for c in [n.left, *n.comparators]):
            return True
    return False


def _iterated_arguments(expr: ast.AST) -> list[str]:
    """The names a loop iterates over directly: ``boxes``, ``enumerate(zip(boxes, scores))``."""
    if isinstance(expr, ast.Name):
        return [expr.id]
    if isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name) and expr.func.id in ("enumerate", "zip",
                                                                                           "reversed"):
        return [n for a in expr.args for n in _iterated_arguments(a)]
    return []


def _loop_without_ops(stmt: ast.For, lines: list[str], file: str, path: str, method: str,
                      argument_rows: dict[str, int]) -> Finding:
    head = _src(stmt.iter, lines)
    named = _iterated_arguments(stmt.iter)
    counts = [argument_rows[n] for n in named if n in argument_rows]
    if counts and len(counts) == len(named):
        trips = min(counts)
        frozen = f"unrolled {trips} time{'s' if trips != 1 else ''}"
        why = (f"the loop iterates over the rows of the traced input{'s' if len(named) > 1 else ''} "
               f"{', '.join(named)} ({trips} in the example)")
        confidence = "high"
    else:
        frozen = "unrolled (its body left no ops: the trip count is not in the graph)"
        why = f"the trip count comes from {head}, which the run decides"
        confidence = "medium"
    return Finding("unrolled-loop", file, stmt.lineno, lines[stmt.lineno - 1].strip() if stmt.lineno <= len(lines)
                   else None, frozen,
                   f"{why}; its body only indexes and compares, so no op of it reached the graph, and the code "
                   "after it ran: what the loop decided is fixed to the example", confidence, [], path, method)


def _comprehension_findings(fn: ast.FunctionDef, local: set[str], static: set[str], ops: list[_Op],
                            lines: list[str], file: str, path: str, method: str,
                            rows: dict[str, int]) -> list[Finding]:
    """``[b for b in boxes if b[4] > 0.5]``: a comprehension over a tensor's rows, unrolled."""
    out = []
    for node in ast.walk(fn):
        if not isinstance(node, (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)):
            continue
        for gen in node.generators:
            if _static_iterable(gen.iter, static) or not _names(gen.iter) & local:
                continue
            span = (gen.iter.lineno, getattr(gen.iter, "end_lineno", gen.iter.lineno))
            unbinds = [o for o in ops if o.node.kind == "aten::unbind" and _in(span, o.line) and o.node.id in rows]
            if not unbinds:
                continue
            n_rows = rows[unbinds[0].node.id]
            line = node.lineno
            out.append(Finding(
                "unrolled-loop", file, line, lines[line - 1].strip() if line <= len(lines) else None,
                f"unrolled {n_rows} time{'s' if n_rows != 1 else ''}",
                f"the comprehension iterates over the rows of a tensor ({_src(gen.iter, lines)}): the trace unbinds "
                f"it into the example's {n_rows} row{'s' if n_rows != 1 else ''}", "high",
                [unbinds[0].node.id], path, method))
    return out


def _iterations(loop: ast.For | ast.While, in_body: list[_Op]) -> int:
    """How many times the traced body ran.

    Within one iteration the body's ops move down its lines (a call or a
    comprehension keeps them on one line); each jump back up starts the next
    iteration, unless it stays inside a loop nested in the body. A body
    whose ops all sit on one line repeats its pattern of calls instead.
    """
    nested = [(n.lineno, getattr(n, "end_lineno", n.lineno)) for n in ast.walk(loop)
              if n is not loop and isinstance(n, (ast.For, ast.While, ast.AsyncFor))]
    # a statement over several lines runs its ops in any order of those lines: one line per statement
    statements = sorted(((n.lineno, getattr(n, "end_lineno", n.lineno)) for n in ast.walk(loop)
                         if n is not loop and isinstance(n, ast.stmt)), key=lambda sp: sp[1] - sp[0])

    def statement_line(line: int) -> int:
        return next((sp[0] for sp in statements if _in(sp, line)), line)

    lines = [statement_line(o.line) for o in in_body]
    trips = 1
    for prev, line in zip(lines, lines[1:]):
        if line < prev and not any(_in(span, line) and _in(span, prev) for span in nested):
            trips += 1
    if trips == 1 and len({o.line for o in in_body}) == 1:
        # the pattern of its computing ops; a line of shape reads alone (``x.shape[-2:]``: two
        # aten::size) is told apart from iterations by their constant arguments
        computing = [o for o in in_body if o.node.kind not in _SHAPE_READS]
        signature = ([(o.inner, o.node.kind) for o in computing] if computing else
                     [(o.inner, o.node.kind, _constant_inputs(o.node)) for o in in_body])
        n = len(signature)
        period = next(p for p in range(1, n + 1) if n % p == 0 and signature == signature[:p] * (n // p))
        trips = n // period
    return trips


_SHAPE_READS = frozenset({"aten::size", "aten::dim", "aten::len", "aten::numel", "prim::shape"})


def _constant_inputs(node: Node) -> tuple:
    """The op's constant arguments (``x.shape[-2]`` and ``x.shape[-1]`` are two ops, not two iterations)."""
    if node.handle is None:
        return ()
    out = []
    for v in node.handle.inputs():
        value = v.toIValue() if v.node().kind() == "prim::Constant" else None
        out.append(value if isinstance(value, (int, float, bool, str, type(None))) else type(value).__name__)
    return tuple(out)


def _scalar_findings(fn: ast.FunctionDef, local: set[str], ops: list[_Op], lines: list[str], file: str, path: str,
                     method: str, constants: list[Node]) -> list[Finding]:
    out = []
    ran = {o.line for o in ops}
    last = getattr(fn, "end_lineno", fn.lineno)
    # ``x.to(torch.int64) if torch.jit.is_tracing() else int(x)`` (Hugging Face's torch_int):
    # written for tracing, the trace takes the side its authors meant it to
    for_tracing = {id(n) for branch in ast.walk(fn) if isinstance(branch, (ast.If, ast.IfExp))
                   and "is_tracing" in ast.unparse(branch.test) for n in ast.walk(branch)}
    for stmt in ast.walk(fn):
        if not isinstance(stmt, ast.Call) or id(stmt) in for_tracing:
            continue
        name = stmt.func.attr if isinstance(stmt.func, ast.Attribute) else (
            stmt.func.id if isinstance(stmt.func, ast.Name) else "")
        if name not in ("item", "tolist", "int", "float", "bool", "len"):
            continue
        if name in ("int", "float", "bool", "len") and not stmt.args:
            continue
        # what is converted: ``float(-100.0)`` or ``int(self.n)`` hold no value of this run
        converted = stmt.args if name in ("int", "float", "bool", "len") else [stmt.func.value]
        if not any(isinstance(n, ast.Name) and n.id in local for a in converted for n in ast.walk(a)):
            continue
        line = stmt.lineno
        text = lines[line - 1].strip() if line <= len(lines) else ""
        # the frozen value: a constant on this or a later line of this function,
        # on the line itself or where the name it was assigned to is used
        target = re.match(r"\s*(\w+)\s*=", text)
        var = target.group(1) if target else None
        consts = []
        for n in constants:
            v = n.attrs.get("value")
            if isinstance(v, torch.Tensor) and v.numel() == 1:
                v = v.item()
            elif not isinstance(v, (int, float)) or isinstance(v, bool) or v in (-1, 0, 1):
                continue
            src = n.source
            if src is None or src.file != file or not (line <= (src.line or 0) <= last):
                continue
            use = lines[src.line - 1] if src.line <= len(lines) else ""
            if src.line == line or (var and re.search(rf"\b{var}\b", use)):
                consts.append((n, v))
        if name == "len":
            arg = _src(stmt.args[0], lines)
            if not (line in ran or consts):
                continue
            value = f" = {consts[0][1]!r}" if consts else ""
            if _built_list(fn, stmt.args[0]):
                # ``keep = []`` grown in ``for b in boxes:``: its length is the example's
                evidence = (f"{arg} is a Python list whose length the run decides (it grows in a loop or branch "
                            "on the inputs); its len() is a Python int to the tracer")
            else:
                evidence = "len() of a tensor is a Python int to the tracer"
            if consts:
                evidence += f" (constant at line {consts[0][0].source.line})"
            out.append(Finding("baked-shape", file, line, text, f"len({arg}){value} became a constant",
                               evidence, "high" if consts else "medium",
                               [c[0].id for c in consts][:5], path, method))
            continue
        if not consts and line not in ran:
            continue
        value = f" = {consts[0][1]!r}" if consts else ""
        out.append(Finding("baked-scalar", file, line, text, f"{_src(stmt, lines)}{value} became a constant",
                           "a tensor converted to a Python number is a constant in the trace"
                           + (f" (tensor constant at line {consts[0][0].source.line})" if consts else ""),
                           "high" if consts else "medium", [c[0].id for c in consts][:5], path, method))
    return out


def _built_list(fn: ast.FunctionDef, expr: ast.AST) -> bool:
    """``expr`` names a local made as a Python list (``keep = []``, ``[b for b in boxes]``)."""
    if not isinstance(expr, ast.Name):
        return False
    return any(isinstance(n, ast.Assign) and any(isinstance(t, ast.Name) and t.id == expr.id for t in n.targets)
               and isinstance(n.value, (ast.List, ast.ListComp)) for n in ast.walk(fn))


def _device_findings(graph: Graph, method: str) -> list[Finding]:
    out = []
    for n in graph.walk():
        if n.kind != "prim::Constant":
            continue
        v = n.attrs.get("value")
        dev = None
        if isinstance(v, torch.device) and v.type == "cuda":
            dev = str(v)
        elif isinstance(v, torch.Tensor) and v.device.type == "cuda":
            dev = f"a tensor on {v.device}"
        if dev is None:
            continue
        src = n.source
        if src is None or not src.file:
            # the constant itself carries no line: its first consumer's line
            for m in graph.walk():
                if any(v in n.outputs for v in m.inputs) and m.source is not None and m.source.file:
                    src = m.source
                    break
        out.append(Finding("baked-device", src.file if src else None, src.line if src else None,
                           _line_text(src), f"device {dev}",
                           "device=x.device (or .to(x.device), .cuda()) was recorded as a constant: the archive "
                           "needs that GPU on every machine, map_location does not change it",
                           "high", [n.id], n.module_path, method))
    return out


def _axis_arguments(node: Node) -> set[int]:
    """Positions of the op's ``dim`` arguments (``aten::slice(self, dim, start, end, step)``)."""
    try:
        args = torch._C.parse_schema(node.schema).arguments if node.schema else []
    except Exception:
        return set()
    return {i for i, a in enumerate(args) if a.name in ("dim", "dims")}


def _shape_findings(graph: Graph, method: str, example_dims: set[int]) -> list[Finding]:
    out = []
    seen = set()
    for n in graph.walk():
        if n.kind not in SHAPE_CONSUMERS:
            continue
        frames = _model_frames(n)
        if not frames or is_torch_frame(frames[0][0]):
            continue  # torch's own shape logic
        axes = _axis_arguments(n)
        for k, v in enumerate(n.inputs):
            if k in axes:
                continue  # which dimension, not how big: a rank, which a trace may keep
            p = graph.producer(v)
            vals = []
            if p is not None and p.kind == "prim::Constant" and isinstance(p.attrs.get("value"), int):
                vals = [p.attrs["value"]]
            elif p is not None and p.kind == "prim::ListConstruct":
                for i in p.inputs:
                    q = graph.producer(i)
                    if q is not None and q.kind == "prim::Constant" and isinstance(q.attrs.get("value"), int):
                        vals.append(q.attrs["value"])
            hits = [x for x in vals if x not in (-1, 0, 1) and x in example_dims]
            if not hits:
                continue
            src = n.source
            key = (src.file, src.line, tuple(hits))
            if key in seen:
                continue
            seen.add(key)
            text = _line_text(src)
            confidence = "high" if text and _SHAPE_TEXT.search(text) else "low"
            if confidence == "low" and text and all(re.search(rf"(?<![\w.]){x}(?![\w.])", text) for x in hits):
                continue  # the number is written on the line (``boxes[:, 3]``), not read from a shape
            out.append(Finding("baked-shape", src.file, src.line, text,
                               f"{', '.join(map(str, hits))} in {n.kind}",
                               f"a constant equal to a dimension of the example inputs feeds a shape argument "
                               f"of {n.kind}; another input size would not change it", confidence,
                               [n.id], n.module_path, method))
    return out


def _stack_only_loops(file: str, func: str, path: str, ops: list[_Op], method: str) -> list[Finding]:
    """Without the source: a line whose ops are one pattern repeated is an unrolled loop body."""
    by_line: dict[int, list[_Op]] = defaultdict(list)
    for o in ops:
        by_line[o.line].append(o)
    out = []
    for line in sorted(by_line):
        seq = [o.node.kind for o in by_line[line]]
        k = seq.count(seq[0])
        if k < 2 or len(seq) % k or seq != seq[: len(seq) // k] * k:
            continue
        out.append(Finding("unrolled-loop", file, line, None, f"unrolled {k} times",
                           f"line {line} of {func} produced the same {len(seq) // k} op(s) {k}× "
                           "(the source file is not on disk: the loop's head is not known)", "low",
                           [o.node.id for o in by_line[line]][:20], path, method))
        break
    return out
