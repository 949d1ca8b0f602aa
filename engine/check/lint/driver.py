"""``lint_session``: every detector over every traced method of an archive."""

from __future__ import annotations

import ast
import os
from typing import Any

from engine.check.lint.dependence import _local_names, _rank_locals, _shape_locals, _static_loop_names
from engine.check.lint.detectors import (
    _branch_findings, _device_findings, _loop_findings, _scalar_findings, _shape_findings, _stack_only_loops,
)
from engine.check.lint.events import _collect, _unbound_rows
from engine.check.lint.report import Finding, LintReport
from engine.check.lint.source import _functions, _literal_arguments, _parse

def _weigh_training_mode(findings: list[Finding], module: Any) -> None:
    """A branch on ``self.training`` traced in eval mode froze what inference wants: low.
    Traced in training mode, dropout and batch statistics as in training are in the
    archive for good, which is rarely meant: high."""
    for f in findings:
        if f.kind != "python-state":
            continue
        mod = module
        try:
            for part in filter(None, f.module_path.split(".")):
                mod = getattr(mod, part)
            training = bool(mod.training)
        except Exception:
            training = bool(getattr(module, "training", False))  # a path lint could not follow: the model's mode
        if training:
            f.evidence = ("the test reads self.training and the model was traced in training mode: dropout and "
                          "batch statistics as in training are in the archive for good; trace after model.eval()")
            f.confidence = "high"
        else:
            f.evidence = ("the test reads self.training and the model was traced in eval mode: the archive "
                          "always runs as after model.eval() and cannot be trained")
            f.confidence = "low"


def lint_session(session: Any) -> LintReport:
    """Findings for every traced method of the session's archive (or of its exported program)."""
    if getattr(session, "format", "torchscript") == "exported":
        from engine.check.lint_exported import lint_exported

        return lint_exported(session)
    report = LintReport(methods=session.method_kinds())
    program = session.program
    for method, origin in report.methods.items():
        if origin == "scripted":
            report.notes.append(f"{method} is scripted: its control flow is in the archive, no branch was fixed by tracing")
            continue
        graph = program.root_graph(method, inlined=True)
        findings: list[Finding] = []
        dims: set[int] = set()
        traced = list(session.archive.traced_inputs.get(method, []) or [])
        for spec in traced:
            dims.update(getattr(spec, "shape", ()) or ())
        findings += _device_findings(graph, method)
        findings += _shape_findings(graph, method, dims)
        events = _collect(graph)
        rows = _unbound_rows(graph)
        constants = [n for n in graph.walk() if n.kind == "prim::Constant"]
        missing_files = set()
        # one analysis of a function serves all its module instances: (run-dependent names,
        # locals holding a rank, names bound by loops over static iterables)
        facts: dict[ast.AST, tuple[set[str], set[str], set[str]]] = {}
        for (file, func, path), ops in events.items():
            tree, lines = _parse(file) if os.path.exists(file) else (None, [])
            if tree is None:
                missing_files.add(file)
                findings += _stack_only_loops(file, func, path, ops, method)
                continue
            used = {o.line for o in ops}
            for fn in _functions(tree):
                if fn.name != func:
                    continue
                end = getattr(fn, "end_lineno", fn.lineno)
                if not any(fn.lineno <= l <= end for l in used):
                    continue
                if fn not in facts:
                    facts[fn] = (_local_names(fn, _literal_arguments(file).get(fn.name, set())), _rank_locals(fn),
                                 _shape_locals(fn), _static_loop_names(fn))
                local, ranks, shapes, static = facts[fn]
                findings += _branch_findings(fn, local, ranks, shapes, ops, lines, file, path, method)
                findings += _loop_findings(fn, local, static, ops, lines, file, path, method, rows,
                                           _argument_rows(fn, traced) if path == "" and func == method else None)
                findings += _scalar_findings(fn, local, ops, lines, file, path, method, constants)
        for f in sorted(missing_files):
            report.notes.append(f"{f} is not on disk: branches cannot be seen there, loops only from repeats")
        report.findings += _dedupe(findings)
    _weigh_training_mode(report.findings, session.archive.module)
    report.findings.sort(key=lambda f: (f.method, f.file or "", f.line or 0, f.module_path, f.kind))
    return report


def _argument_rows(fn: ast.FunctionDef, traced: list) -> dict[str, int]:
    """The traced method's tensor arguments -> their rows in the example the trace stored."""
    params = [a.arg for a in fn.args.posonlyargs + fn.args.args][1:]
    return {name: spec.shape[0] for name, spec in zip(params, traced)
            if getattr(spec, "shape", None)}


def _dedupe(findings: list[Finding]) -> list[Finding]:
    seen, out = set(), []
    for f in findings:
        key = (f.kind, f.file, f.line, f.module_path)
        if key not in seen:
            seen.add(key)
            out.append(f)
    return out
