"""With the Python model (``--eager``): inputs that disagree, conversions seen, torch's own warnings.

These add evidence and findings of their own (``trace-warning``); they never
change the confidence of a finding lint made from the archive alone.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from typing import Any

import torch

from engine.sources import is_torch_frame
from engine.check.lint.report import Finding, LintReport
from engine.check.lint.source import _parse

def _perturbations(session: Any) -> list[tuple[str, tuple]]:
    """Other inputs to try: sign flips, zeros, other sizes, other random draws."""
    from engine.session import clone_value

    base = session.inputs
    out: list[tuple[str, tuple]] = []

    def each(fn, label):
        try:
            out.append((label, tuple(fn(x) for x in clone_value(base))))
        except Exception:
            pass

    def map_tensors(f):
        # one result per tensor of an argument tuple, however often it appears (``mha(x, x, x)``
        # perturbed stays self-attention); a memo per tuple, since each() maps its items one by one
        memo: dict[int, Any] = {}

        def g(x):
            if isinstance(x, torch.Tensor) and x.is_floating_point():
                if id(x) not in memo:
                    memo[id(x)] = (x, f(x))
                return memo[id(x)][1]
            if isinstance(x, list):
                return [g(v) for v in x]
            if isinstance(x, tuple):
                return tuple(g(v) for v in x)
            return x
        return g

    each(map_tensors(lambda t: -t), "the inputs with their signs flipped")
    each(map_tensors(lambda t: t.abs() + 0.5), "positive inputs (|x| + 0.5)")
    each(map_tensors(lambda t: torch.zeros_like(t)), "zeros")
    each(map_tensors(lambda t: t * 10), "the inputs × 10")
    each(map_tensors(lambda t: torch.cat([t, t], 0) if t.dim() else t), "twice the batch (dim 0 doubled)")
    each(map_tensors(lambda t: t[: max(1, t.shape[0] - 1)] if t.dim() and t.shape[0] > 1 else t),
         "one fewer along dim 0")
    each(map_tensors(lambda t: torch.cat([t, t], -1) if t.dim() else t), "the last dim doubled")
    each(map_tensors(lambda t: t.unsqueeze(0)), "one more leading dim")
    each(map_tensors(lambda t: t[0] if t.dim() > 1 else t), "one dim fewer")
    for k in range(3):
        g = torch.Generator().manual_seed(1234 + k)
        each(map_tensors(lambda t, g=g: torch.randn(t.shape, generator=g, dtype=t.dtype)), f"random draw {k + 1}")
    base_lists = [x for x in base if isinstance(x, list)]
    if base_lists:
        each(lambda x: x[:-1] if isinstance(x, list) and len(x) > 1 else x, "a list one item shorter")
        each(lambda x: x + x[-1:] if isinstance(x, list) else x, "a list one item longer")
    return out


def counterexamples(session: Any, report: LintReport, eager_spec: str, eager_args: dict | None,
                    eager_weights: str | None, specs: list[str] | None, rtol: float, atol: float) -> None:
    """With the Python model: find inputs on which the archive and the Python disagree.

    Each perturbed input runs through the engine and the eager model (as
    ``tsdebug diff``); the first one that disagrees is attached to the
    findings, with the first divergent node.
    """
    if not report.findings:
        return
    if session.inputs is None:
        session.start(specs=specs)
    original = session.inputs
    found: tuple[str, Any, tuple] | None = None
    python_raised: tuple[str, Any, tuple] | None = None  # kept in case no input disagrees otherwise
    try:
        for label, args in _perturbations(session):
            try:
                session.inputs = args
                session.machine = None
                session.restart(args)
                result = session.diff(eager_spec, eager_args, eager_weights, rtol, atol)
            except Exception:
                continue  # this input fits neither the archive nor the Python (or the trace): try another
            r = result.report
            if r.outputs_close:
                continue
            if r.archive_error is not None:
                # the archive fails where the Python does not: that is a disagreement too
                node = r.error_record.node if r.error_record is not None else getattr(r.archive_error, "node", None)
                found = (label, f"the archive raising at {node.kind} {node.id} while the Python ran"
                         if node is not None else "the archive raising while the Python ran", args)
                break
            if r.eager_error is not None:
                if python_raised is None:
                    python_raised = (label, f"the Python raising {r.eager_error.kind} at {r.eager_error.where} "
                                            "while the archive ran", args)
                continue
            first = r.first
            where = f"{first.record.node.kind} {first.record.node.id}" if first else "the outputs"
            found = (label, where, args)
            break
    finally:
        session.inputs = original
        session.restart(original)
    found = found or python_raised
    if found is None:
        report.notes.append("with --eager: no tried input made the archive and the Python disagree")
        return
    label, where, args = found
    shapes = ", ".join(_describe(x) for x in args)
    # saved, so that `tsdebug diff --inputs FILE` reproduces it
    # beside the model (where the user keeps their files), never at a fixed name in the shared
    # temporary directory, where another user's planted symlink would redirect the write
    from engine import paths

    base = os.path.splitext(os.path.basename(session.path))[0]
    folder = os.path.dirname(session.path)
    saved = os.path.join(folder, f"{base}-counterexample.pt")
    if paths.read_file_of(saved) is not None or os.path.islink(saved) or not os.access(folder or ".", os.W_OK):
        import tempfile

        saved = os.path.join(tempfile.mkdtemp(prefix="tsdebug-"), f"{base}-counterexample.pt")  # private, 0700
    paths.atomic_write(saved, lambda tmp: torch.save(tuple(args), tmp), "the counterexample")
    report.counterexample_file = saved
    report.reproduce = f"tsdebug diff {session.path} --eager {eager_spec} --inputs {saved}"
    for f in report.findings:
        f.counterexample = f"{label} ({shapes}), saved to {saved}; first divergence at {where}"
        f.first_divergence = where


def _describe(x: Any) -> str:
    from engine.run.values import short_text

    return short_text(x, 40)


def conversion_evidence(session: Any, report: LintReport, eager_spec: str, eager_args: dict | None,
                        eager_weights: str | None) -> None:
    """Rerun the Python, recording every tensor-to-Python conversion with its line.

    A finding on a line where the Python converts a tensor (``__bool__``,
    ``item``, ``__len__``, ``size``/``shape``…) is confirmed: its evidence
    says so.  Its confidence stays what lint gave it, so that one finding
    reads the same in ``lint``, ``lint --eager`` and the UI's ``L``.
    """
    from engine.check import eager as eager_mod
    from engine.session import clone_value

    try:
        model = eager_mod.build_eager(eager_spec, eager_args)
        if eager_weights is None:
            eager_mod.load_weights(model, dict(session.archive.module.state_dict()), session.path)
        if session.inputs is None:
            session.start()
        seen = eager_mod.record_conversions(model, clone_value(session.inputs), session.grad)
    except Exception as exc:
        report.notes.append(f"recording the Python's conversions failed: {str(exc).splitlines()[0]}")
        return
    by_line: dict[tuple, list[str]] = defaultdict(list)
    for name, file, line in seen:
        if file and line and name not in by_line[(file, line)]:
            by_line[(file, line)].append(name)
    report.conversions = [{"conversion": n, "file": f, "line": ln} for (f, ln), names in by_line.items() for n in names]
    for f in report.findings:
        names = by_line.get((f.file, f.line))
        if names:
            # evidence only: a finding's confidence is lint's own, the same with or without --eager and in the UI
            f.evidence += f"; confirmed: the Python converts a tensor here ({', '.join(names)})"


def trace_warnings(session: Any, report: LintReport, eager_spec: str, eager_args: dict | None,
                   eager_weights: str | None) -> None:
    """Retrace the Python model on the session's inputs and keep torch's TracerWarnings.

    Each warning names the line where a tensor became a Python value; lines
    not already reported become ``trace-warning`` findings.
    """
    import warnings

    from engine.check import eager as eager_mod
    from engine.session import clone_value

    try:
        model = eager_mod.build_eager(eager_spec, eager_args)
        if eager_weights is None:
            eager_mod.load_weights(model, dict(session.archive.module.state_dict()), session.path)
        model.eval()
        if session.inputs is None:
            session.start()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.jit.trace(model, clone_value(session.inputs), check_trace=False)
    except Exception as exc:
        report.notes.append(f"retracing the Python model failed: {type(exc).__name__}: {str(exc).splitlines()[0]}")
        return
    known = {(f.file, f.line) for f in report.findings}
    added = set()
    for w in caught:
        if not issubclass(w.category, torch.jit.TracerWarning):
            continue
        key = (w.filename, w.lineno)
        if key in known or key in added or is_torch_frame(w.filename or ""):
            continue
        added.add(key)
        message = re.split(r"\.(?:\s|$)", str(w.message).strip(), maxsplit=1)[0]  # its first sentence
        _, lines = _parse(w.filename) if w.filename and os.path.exists(w.filename) else (None, [])
        text = lines[w.lineno - 1].strip() if lines and w.lineno <= len(lines) else None
        report.findings.append(Finding("trace-warning", w.filename, w.lineno, text, message,
                                       f"torch.jit.trace warned when retracing the Python: {str(w.message)[:200]}",
                                       "medium", [], "", session.method))
