"""``tsdebug export``: turn an archive into a torch.export program, and prove the two agree.

Two ways to a program:

* from the archive alone (the Python may be gone): torch's converter
  (``torch._export.converter.TS2EPConverter``, private, so guarded), then,
  where it fails, the same on a ``torch.jit.freeze``-d copy (attributes and
  the branches on them folded into the graph); where both fail, the node
  that blocks it, with its kind, line and module, and what to do instead;
* from the Python (``--eager``): ``torch.export.export`` (non-strict) on the
  archive's weights; on a failure, ``torch.export.draft_export`` names what
  blocks it at the user's lines, beside what ``lint`` found frozen there.

Then, always, the verification: the archive and the new program run
through the engine on the same inputs (and at a second size where the new
program has a dynamic dimension), compared node by node.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from engine.errors import ArchiveError, TsdebugError, first_error_line
from engine.run.values import max_abs_diff, summarize, values_equal


@dataclass
class Blocker:
    """What stops the conversion: one node of the archive's graph, or one construct of the Python."""

    kind: str
    file: str | None
    line: int | None
    text: str | None
    module_path: str
    cause: str
    advice: str

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}" if self.file else "(no source line)"

    def one_line(self) -> str:
        text = f" ({self.text.strip()})" if self.text else ""
        module = f" in module {self.module_path}" if self.module_path else ""
        at = f" at {self.where}" if self.file else ""
        return f"{self.kind}{at}{text}{module} blocks the conversion: {self.cause}; {self.advice}"

    def to_json(self) -> dict:
        return {"kind": self.kind, "file": self.file, "line": self.line, "text": self.text,
                "module_path": self.module_path, "cause": self.cause, "advice": self.advice}


@dataclass
class Verification:
    """The archive and the new program on the same inputs, node by node."""

    inputs: str
    verdict: str  # "bit-identical", "within tolerance", "differs", "failed"
    max_abs_diff: float | None = None
    aligned: int = 0
    comparable: int = 0
    worst: dict | None = None
    first_divergence: dict | None = None
    error: str | None = None

    def to_json(self) -> dict:
        return dict(self.__dict__)


@dataclass
class ExportReport:
    model: str
    output: str
    route: str = ""  # "converter", "converter after torch.jit.freeze", "torch.export.export (non-strict)"
    written: bool = False
    blocker: Blocker | None = None
    error: str | None = None
    issues: list[dict] = field(default_factory=list)  # draft_export's, each with its line
    notes: list[str] = field(default_factory=list)
    verifications: list[Verification] = field(default_factory=list)

    @property
    def verified(self) -> bool:
        return self.written and bool(self.verifications) and all(
            v.verdict in ("bit-identical", "within tolerance") for v in self.verifications)

    @property
    def exit_code(self) -> int:
        if not self.written:
            return 2
        return 0 if self.verified else 1

    def to_json(self) -> dict:
        return {
            "command": "export",
            "model": self.model,
            "output": self.output,
            "route": self.route,
            "written": self.written,
            "verified": self.verified,
            "blocker": self.blocker.to_json() if self.blocker else None,
            "error": self.error,
            "issues": self.issues,
            "notes": self.notes,
            "verifications": [v.to_json() for v in self.verifications],
        }


# ------------------------------------------------------------ the converter

def _converter():
    """torch's TorchScript-to-export converter, or one line saying what this torch lacks."""
    try:
        from torch._export.converter import TS2EPConverter, TS2FXGraphConverter
    except Exception as exc:
        raise TsdebugError(
            f"this torch ({torch.__version__.split('+')[0]}) has no torch._export.converter ({exc}); "
            "export from the Python instead: tsdebug export MODEL --eager package.module:Model") from None
    return TS2EPConverter, TS2FXGraphConverter


@contextlib.contextmanager
def _quiet(logs_off: bool = True):
    """The converter and export log and warn a great deal; the terminal belongs to tsdebug.

    ``logs_off=False`` for ``draft_export``, which reads its own structured
    logs to build its report (file names among them).
    """
    previous = logging.root.manager.disable
    if logs_off:
        logging.disable(logging.CRITICAL)
    # torch's console handlers hold the terminal's stream itself, which redirect_stderr does not reach:
    # mute them, and leave the structured-trace handlers draft_export reads alone
    muted = []
    for name in ["torch", *[n for n in list(logging.root.manager.loggerDict) if n.startswith("torch.")]]:
        for handler in logging.getLogger(name).handlers:
            if type(handler) is logging.StreamHandler:
                muted.append((handler, handler.level))
                handler.setLevel(logging.CRITICAL + 1)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)
        for handler, level in muted:
            handler.setLevel(level)


@contextlib.contextmanager
def _watch_nodes(converter_class: Any, failing: list):
    """Note the innermost TorchScript node whose conversion raised (the converter names only its kind)."""
    original = converter_class.convert_node

    def convert_node(self, node):
        try:
            return original(self, node)
        except Exception:
            if not failing:
                failing.append(node)
            raise

    converter_class.convert_node = convert_node
    try:
        yield
    finally:
        converter_class.convert_node = original


def _root_cause(exc: BaseException) -> str:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return first_error_line(exc)


_ADVICE = {
    "prim::Loop": "rewrite that loop with torch._higher_order_ops.while_loop, or export from the Python "
                  "with --eager SPEC",
    "prim::If": "rewrite that branch with torch.cond, or export from the Python with --eager SPEC",
    "prim::CallMethod": "export from the Python with --eager SPEC",
    "prim::CallFunction": "export from the Python with --eager SPEC",
}


def _blocker_of(node: Any, exc: BaseException) -> Blocker:
    from engine.formats.torchscript.convert import module_path_from_hierarchy, parse_source_range

    kind = node.kind() if node is not None else "the graph"
    loc = None
    module = ""
    if node is not None:
        try:
            loc = parse_source_range(node.sourceRange())
        except Exception:
            loc = None
        try:
            module = module_path_from_hierarchy(node.getModuleHierarchy())
        except Exception:
            module = ""
    advice = _ADVICE.get(kind, f"torch's converter has no rule for {kind} here; export from the Python with "
                               "--eager SPEC")
    return Blocker(kind=kind, file=loc.file if loc else None, line=loc.line if loc else None,
                   text=loc.text if loc else None, module_path=module, cause=_root_cause(exc), advice=advice)


def _non_tensor_inputs(inputs: tuple, params: list) -> Blocker | None:
    """The converter traces with tensors only (``Expected Tensor but got InvalidTag``)."""
    def tensors_only(v: Any) -> bool:
        if isinstance(v, torch.Tensor):
            return True
        if isinstance(v, (list, tuple)):
            return all(tensors_only(x) for x in v)
        if isinstance(v, dict):
            return all(tensors_only(x) for x in v.values())
        return False

    for i, v in enumerate(inputs):
        if not tensors_only(v):
            name = params[i].name if i < len(params) else f"input {i + 1}"
            return Blocker(kind="a non-tensor input", file=None, line=None, text=None, module_path="",
                           cause=f"{name} is {summarize(v).short()} ({type(v).__name__}), and torch's converter "
                                 "takes tensors only",
                           advice="export from the Python with --eager SPEC, where torch.export specializes "
                                  "such inputs")
    return None


#: The ways tried to convert an archive, in order, each with what it changes (said when it is the one that works).
ROUTES = {
    "converter": "",
    "converter after torch.jit.freeze": "after torch.jit.freeze folded the module's attributes (and the branches "
                                        "on them) into the graph",
    "converter after specializing sizes": "after the inputs' sizes were written into the graph as constants "
                                          "(x.size(0), x.dim(): the program torch's converter makes takes inputs "
                                          "of these sizes only, so nothing it accepts changes meaning) and folded",
    "converter after torch.jit.freeze and specializing sizes": "after torch.jit.freeze and the inputs' sizes were "
                                                               "written into the graph as constants and folded",
}


def specialize_sizes(module: Any, inputs: tuple) -> int:
    """Write the example inputs' sizes into ``module.forward``'s inlined graph as constants, then fold.

    ``x.size(0)``, ``x.size()`` and ``x.dim()`` of a graph input become
    constants, so loops over ``range(x.size(0))`` get a constant trip count
    and branches on ``x.dim()`` fold away: what torch's converter can take.
    The program it makes has static shapes anyway (it accepts inputs of
    these sizes only), so no input it accepts is computed differently.
    Returns how many reads were replaced.
    """
    graph = module.forward.graph
    torch._C._jit_pass_inline(graph)
    shapes = {}
    for value, x in zip(list(graph.inputs())[1:], inputs):
        if isinstance(x, torch.Tensor):
            shapes[value.debugName()] = tuple(x.shape)
    replaced = 0
    for kind in ("aten::size", "aten::dim"):
        for n in graph.findAllNodes(kind):
            shape = shapes.get(n.inputsAt(0).debugName())
            if shape is None:
                continue
            if kind == "aten::dim":
                value = len(shape)
            elif n.inputsSize() == 1:
                value = list(shape)
            else:
                dim = n.inputsAt(1).toIValue()
                if not isinstance(dim, int) or not -len(shape) <= dim < len(shape):
                    continue
                value = shape[dim]
            constant = graph.insertConstant(value)
            constant.node().moveBefore(n)
            n.output().replaceAllUsesWith(constant)
            replaced += 1
    torch._C._jit_pass_constant_propagation(graph)
    torch._C._jit_pass_dce(graph)
    return replaced


def convert_archive(session: Any, inputs: tuple, notes: list[str]) -> tuple[Any, str]:
    """An ExportedProgram from the archive alone; ``ExportBlocked`` naming the node where it cannot be."""
    TS2EPConverter, TS2FXGraphConverter = _converter()
    blocked = _non_tensor_inputs(inputs, session.params)
    if blocked is not None:
        raise ExportBlocked(blocked)
    from engine.formats.torchscript.archive import load_native_copy

    if session.method != "forward":
        raise TsdebugError("torch's converter converts forward only; give --method forward")
    first: Blocker | None = None
    for route in ROUTES:
        module = load_native_copy(session.archive)
        try:
            with _quiet():
                if "freeze" in route:
                    module = torch.jit.freeze(module.eval())
                if "specializing" in route:
                    specialize_sizes(module, inputs)
        except Exception as exc:
            notes.append(f"the {route} could not prepare the archive ({first_error_line(exc)})")
            continue
        failing: list = []
        try:
            with _quiet(), _watch_nodes(TS2FXGraphConverter, failing), _static_sizes("sizes" in route):
                ep = TS2EPConverter(module, _clone(inputs)).convert()
        except Exception as exc:
            blocker = _blocker_of(failing[0] if failing else None, exc)
            if first is None:
                first = blocker
            continue
        if route != "converter" and first is not None:
            at = f"{first.kind} at {first.where}" if first.file else first.kind
            notes.append(f"torch's converter stopped at {at} ({first.cause}); "
                         f"{ROUTES[route]}, it converted: the verification below checks that the meaning did "
                         "not change")
        return ep, route
    raise ExportBlocked(first)


@contextlib.contextmanager
def _static_sizes(on: bool):
    """Make torch's converter export every size static.

    It marks each input dimension ``Dim.AUTO``; after the sizes were written into
    the graph (a loop unrolled for 3 rows) a program that accepts 4 rows would
    compute something else, so it must refuse them as the archive's sizes did.
    """
    import torch._export.converter as converter

    mapper = getattr(converter, "_tree_map_with_path", None)
    if not on or mapper is None:
        yield
        return
    converter._tree_map_with_path = lambda fn, tree: mapper(lambda path, x: None, tree)
    try:
        yield
    finally:
        converter._tree_map_with_path = mapper


class ExportBlocked(TsdebugError):
    """The conversion stops at one node or construct."""

    def __init__(self, blocker: Blocker, issues: list[dict] | None = None):
        super().__init__(blocker.one_line())
        self.blocker = blocker
        self.issues = issues or []


def _clone(value: Any) -> Any:
    from engine.session import clone_value

    return clone_value(value)


# ------------------------------------------------------------- from the Python

def _frame_of(stack: Any, str_to_filename: dict) -> tuple[str | None, int | None, str | None]:
    """The innermost user frame of a draft_export stack (frames are dicts or objects)."""
    from engine.sources import is_user_file

    frames = list(stack or [])
    for f in reversed(frames):
        get = f.get if isinstance(f, dict) else (lambda k, f=f: getattr(f, k, None))
        filename = get("filename")
        if isinstance(filename, int):
            filename = str_to_filename.get(filename)
        line = get("line") or get("lineno")
        if filename and is_user_file(filename):
            text = get("loc")
            if not text:
                from engine.sources import source_line  # not linecache: it reads /dev/zero to the end

                text = source_line(filename, int(line or 0)).strip() or None
            return filename, int(line) if line else None, text
    return None, None, None


def draft_issues(model: Any, args: tuple, kwargs: dict) -> tuple[list[dict], Any]:
    """What ``torch.export.draft_export`` had to assume, each at the user's line."""
    try:
        with _quiet(logs_off=False):
            ep = torch.export.draft_export(model, args, kwargs)
    except Exception as exc:
        return [{"kind": "draft_export failed", "expr": first_error_line(exc), "file": None, "line": None,
                 "text": None}], None
    report = getattr(ep, "_report", None)
    # file names are interned once per process: a report made after an earlier export lacks them
    names = dict(getattr(report, "str_to_filename", {}) or {})
    try:
        from torch._logging.structured import INTERN_TABLE

        names.update({v: k for k, v in INTERN_TABLE.items()})
    except Exception:
        pass
    issues = []
    for failure in getattr(report, "failures", []) or []:
        data = failure.data or {}
        file, line, text = _frame_of(data.get("user_stack"), names)
        issues.append({"kind": str(failure.failure_type).replace("_", " ").lower(),
                       "expr": str(data.get("expr") or data.get("op") or ""), "file": file, "line": line,
                       "text": text})
    return issues, ep


def export_eager(session: Any, spec: str, eager_args: dict | None, eager_weights: str | None,
                 inputs: tuple, notes: list[str]) -> tuple[Any, str, list[dict]]:
    """``torch.export.export`` of the Python model on the archive's weights and these inputs."""
    from engine.check import eager as eager_mod
    from engine.formats.exported.program import split_call

    model = eager_mod.build_eager(spec, eager_args)
    if eager_weights:
        from engine.inputs import _load_file

        state = _load_file(eager_weights)
        if not isinstance(state, dict):
            raise TsdebugError(f"--eager-weights {eager_weights}: not a state dict")
        eager_mod.load_weights(model, state, eager_weights)
    else:
        eager_mod.load_weights(model, session.loaded.state_dict(), session.path)
    model = model.eval()
    args, kwargs = tuple(_clone(inputs)), {}
    try:
        with _quiet():
            ep = torch.export.export(model, args, kwargs, strict=False)
        return ep, "torch.export.export (non-strict)", []
    except Exception as exc:
        cause = first_error_line(exc)
    issues, _draft = draft_issues(model, tuple(_clone(inputs)), {})
    located = [i for i in issues if i.get("file")]
    where = located[0] if located else None
    blocker = Blocker(kind="torch.export.export", file=where["file"] if where else None,
                      line=where["line"] if where else None, text=where["text"] if where else None,
                      module_path="", cause=cause,
                      advice="make that line export-friendly (torch.cond for a branch on data, torch._check "
                             "for a size, Dim for a dynamic size)")
    raise ExportBlocked(blocker, issues)


# ------------------------------------------------------------- verification

def verify(session: Any, output: str, inputs: tuple, rtol: float, atol: float) -> Verification:
    """Run the archive and the program at ``output`` on ``inputs``, compare node by node."""
    text = ", ".join(summarize(x).short() for x in inputs)
    try:
        session.start(values=inputs)
        result = session.diff_against(output, rtol, atol)
    except TsdebugError as exc:
        return Verification(text, "failed", error=exc.message)
    report = result.report
    ours = result.machine.outputs
    theirs = getattr(result, "other_outputs", None)
    identical = report.outputs_close and (theirs is None or values_equal(ours, theirs))
    metrics = report.outputs_metrics
    diff = metrics.max_abs if metrics is not None else None
    if theirs is not None:
        diff = max_abs_diff(ours, theirs)
        identical = values_equal(ours, theirs)
    worst = report.worst(1)
    verdict = "bit-identical" if identical else ("within tolerance" if report.outputs_close else "differs")
    return Verification(
        inputs=text, verdict=verdict, max_abs_diff=diff, aligned=len(report.aligned), comparable=report.comparable,
        worst=worst[0].to_json() if worst else None,
        first_divergence=report.first.to_json() if report.first and not report.outputs_close else None)


# ------------------------------------------------------------------ the command

def write_atomically(ep: Any, output: str, forbidden: list[str]) -> None:
    """``torch.export.save`` into a private temporary file beside ``output``, then a rename
    (``engine.paths.atomic_write``); never onto a file tsdebug read."""
    from engine import paths

    for path in forbidden:
        if path and os.path.exists(path):
            paths.note_read(path)

    def save(tmp: str) -> None:
        with _quiet():
            torch.export.save(ep, tmp)

    paths.atomic_write(output, save, "-o")


def export_program(session: Any, output: str, *, eager: str | None = None, eager_args: dict | None = None,
                   eager_weights: str | None = None, rtol: float = 1e-5, atol: float = 1e-5,
                   stage: Callable[[str], None] = lambda text: None) -> ExportReport:
    """``tsdebug export``: convert or export, write, verify (see the module's docstring)."""
    report = ExportReport(model=session.path, output=output)
    if session.format != "torchscript":
        raise TsdebugError(f"{session.path} is already a torch.export program; "
                           f"tsdebug diff {session.path} --against OTHER compares it with an archive")
    if session.machine is None:
        session.start()
    inputs = session.inputs
    try:
        if eager:
            stage(f"exporting {eager} with torch.export…")
            ep, report.route, report.issues = export_eager(session, eager, eager_args, eager_weights, inputs,
                                                           report.notes)
        else:
            stage("converting the archive with torch's converter…")
            ep, report.route = convert_archive(session, inputs, report.notes)
    except ExportBlocked as blocked:
        report.blocker = blocked.blocker
        report.issues = blocked.issues
        report.error = blocked.message
        _lint_meets(session, report)
        return report
    forbidden = [session.path, eager.split(":")[0] if eager and ":" in eager else None, eager_weights]
    write_atomically(ep, output, [p for p in forbidden if p])
    report.written = True
    if not eager:
        _frozen_carried(session, report)
    fixed = _specialized_inputs(ep)
    if fixed:
        report.notes.append("the program takes only " + ", ".join(f"{k}={v!r}" for k, v in fixed.items())
                            + ": torch.export fixes non-tensor inputs to the example's value (tsdebug lint "
                            f"{output} lists what else it fixed)")
    stage("verifying: the archive and the new program, node by node…")
    report.verifications.append(verify(session, output, inputs, rtol, atol))
    other = second_size(ep, inputs)
    if other is not None:
        try:
            session.run_native(other)
        except Exception as exc:
            report.notes.append(f"the program's dynamic sizes were not checked at a second size: the archive itself "
                                f"does not run on {', '.join(summarize(x).short() for x in other)} "
                                f"({first_error_line(exc)})")
        else:
            stage("verifying at a second size of the dynamic dimensions…")
            report.verifications.append(verify(session, output, other, rtol, atol))
        session.start(values=inputs)
    return report


def _finite(bound: Any, default: int) -> int:
    """A range bound as an int; torch's int_oo and sympy's oo (no bound) as ``default``."""
    from engine.formats.exported.program import bound_int

    value = bound_int(bound)
    return default if value is None else value


def second_size(ep: Any, inputs: tuple) -> tuple | None:
    """``inputs`` with every dynamic dimension of the program moved off its example size (within its range),
    the values drawn anew: what a dynamic program must also get right.  None: no dynamic dimension."""
    import sympy

    user = [spec.arg.name for spec in ep.graph_signature.input_specs if spec.kind.name == "USER_INPUT"]
    vals = {n.name: n.meta.get("val") for n in ep.graph.nodes if n.op == "placeholder"}
    flat = [x for x in inputs]
    if len(flat) != len(user):
        return None
    symbols: dict[Any, int] = {}
    for name, x in zip(user, flat):
        val = vals.get(name)
        if not isinstance(val, torch.Tensor) or not isinstance(x, torch.Tensor):
            continue
        for d, size in zip(val.shape, x.shape):
            if isinstance(d, torch.SymInt) and isinstance(d.node.expr, sympy.Symbol):
                symbols.setdefault(d.node.expr, int(size))
    if not symbols:
        return None
    chosen = {}
    for sym, hint in symbols.items():
        rng = (ep.range_constraints or {}).get(sym)
        lo, hi = _finite(rng.lower if rng is not None else None, 2), _finite(rng.upper if rng else None, 1 << 20)
        pick = next((v for v in (hint + 1, hint - 1, hint * 2) if max(lo, 2) <= v <= hi and v != hint), None)
        if pick is None:
            return None
        chosen[sym] = pick
    gen = torch.Generator().manual_seed(1)
    out = []
    for name, x in zip(user, flat):
        val = vals.get(name)
        if not isinstance(val, torch.Tensor) or not isinstance(x, torch.Tensor):
            out.append(x)
            continue
        shape = []
        for d, size in zip(val.shape, x.shape):
            shape.append(int(d.node.expr.subs(chosen)) if isinstance(d, torch.SymInt) else int(size))
        if x.dtype.is_floating_point:
            new = torch.randn(shape, generator=gen).to(x.dtype)
        elif x.dtype == torch.bool:
            new = torch.rand(shape, generator=gen) > 0.5
        else:
            lo_v, hi_v = (int(x.min()), int(x.max())) if x.numel() else (0, 1)
            new = torch.randint(lo_v, hi_v + 1, shape, generator=gen).to(x.dtype)
        out.append(new)
    return tuple(out)


def _frozen_carried(session: Any, report: ExportReport) -> None:
    """A converted traced archive keeps what tracing froze: say so, with the lines lint finds."""
    if "traced" not in session.method_kinds().values():
        return
    try:
        from engine.check.lint import lint_session

        findings = [f for f in lint_session(session).findings if f.confidence in ("high", "medium")]
    except Exception:
        return
    if findings:
        lines = ", ".join(sorted({f.where for f in findings}))
        report.notes.append(f"the program keeps what tracing froze in the archive ({lines}: tsdebug lint "
                            f"{session.path}); export from the Python with --eager SPEC to keep that control flow")


def _specialized_inputs(ep: Any) -> dict[str, Any]:
    """The user inputs the export turned into constants (ints, floats, bools, strings), by name."""
    from torch.export.graph_signature import ConstantArgument, InputKind

    return {spec.arg.name: spec.arg.value for spec in ep.graph_signature.input_specs
            if spec.kind == InputKind.USER_INPUT and isinstance(spec.arg, ConstantArgument)}


def _lint_meets(session: Any, report: ExportReport) -> None:
    """Where the archive is traced, what lint found frozen at the lines the export stops at."""
    lines = {(i.get("file"), i.get("line")) for i in report.issues if i.get("file")}
    if report.blocker is not None and report.blocker.file:
        lines.add((report.blocker.file, report.blocker.line))
    if not lines or session.format != "torchscript":
        return
    try:
        from engine.check.lint import lint_session

        findings = lint_session(session).findings
    except Exception:
        return
    for f in findings:
        if (f.file, f.line) in lines:
            report.notes.append(f"lint found the same line frozen in the traced archive: {f.kind} at {f.where} "
                                f"({f.frozen})")


__all__ = ["ExportReport", "Blocker", "Verification", "export_program", "convert_archive", "draft_issues",
           "ArchiveError"]
